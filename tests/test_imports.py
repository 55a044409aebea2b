"""Light imports (docs/architecture.md): the model and training-loop modules need only
torch/numpy/einops, so a GPU machine with bare torch can run them; and no osora module imports
torchvision, whose registry wheel is a CUDA build that breaks CPU torch."""

import subprocess
import sys

LIGHT = ("osora.models.dcae", "osora.models.hunyuan_vae", "osora.models.discriminator",
         "osora.models.losses", "osora.models.dinov2", "osora.models.lpips",
         "osora.models.tiling", "osora.train.loop", "osora.train.parallel",
         "osora.train.checkpoint", "osora.train.ema", "osora.train.ae_objective",
         "osora.train.clip_windows", "osora.train.buckets", "osora.models.mmdit",
         "osora.models.rope", "osora.models.attention", "osora.diffusion.flow",
         "osora.diffusion.conditioning", "osora.diffusion.guidance", "osora.diffusion.sampler",
         "osora.models.text", "osora.train.flow_objective", "osora.kernels",
         "osora.sample.generate", "osora.sample.first_frame", "osora.sample.conditions",
         "osora.weights.mmdit", "osora.train.bucket_batches", "osora.train.throughput",
         "osora.train.recovery", "osora.train.prefetch", "osora.train.activation_checkpoint",
         "osora.train.context_parallel", "osora.progress")
HEAVY = ("lance", "pyarrow", "mlflow", "dvc", "av", "transformers", "cv2", "pydantic", "yaml",
         "ray", "s3fs", "boto3", "scenedetect", "PIL", "optuna", "torchvision", "triton",
         "safetensors", "sentence_transformers")


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_model_and_loop_modules_import_only_torch():
    out = run(
        "import importlib, sys\n"
        f"for name in {LIGHT!r}: importlib.import_module(name)\n"
        f"print(sorted(set({HEAVY!r}) & {{m.split('.')[0] for m in sys.modules}}))\n"
    )
    assert out == "[]", out


def test_no_osora_module_imports_torchvision():
    out = run(
        "import importlib, pkgutil, sys\n"
        "sys.modules['torchvision'] = None  # any `import torchvision` now raises\n"
        "import osora\n"
        "names = [m.name for m in pkgutil.walk_packages(osora.__path__, 'osora.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    assert int(out) > 50
