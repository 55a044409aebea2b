# osora on CUDA clusters. The base image brings CUDA, cuDNN, NCCL and a CUDA build of torch;
# osora declares torch>=2.11,<2.14, so pip keeps the image's torch. Choose a base matching your
# driver: docker build --build-arg BASE=pytorch/pytorch:<torch>-cuda<ver>-cudnn9-devel .
# (devel: Triton compiles kernels at run time and needs the CUDA toolchain.)
ARG BASE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-devel
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: DVC and the run tags need it. ffmpeg itself comes from the imageio-ffmpeg wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/osora
COPY pyproject.toml README.md ./
COPY osora ./osora
# ray: Ray Data, the runner's cluster backend (runner.backend: ray); every node runs this image.
RUN python -m pip install ".[pipeline,ray]" \
 && python -c "import torch, osora, ray; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# The project (dvc.yaml, params/, pipelines/) is mounted or cloned at run time, e.g.
#   docker run --gpus all -v $PWD:/work -w /work osora dvc repro
WORKDIR /work
CMD ["osora", "--help"]
