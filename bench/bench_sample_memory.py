"""Minimum device memory of sampling per offload mode: the table of docs/benchmarks.md.

    python bench/bench_sample_memory.py                 # estimates (osora.sample.memory_plan)
    python bench/bench_sample_memory.py --measure       # on a CUDA machine: measured peaks too

Rows: 256px and 768px × 33 and 129 frames; columns: --offload none / model / sequential, for
the paper profile (11B MMDiT, T5-XXL + CLIP-L, the HunyuanVideo VAE, bf16, one video, decode
tiles of params/profiles/paper/dit.yaml). `--measure` builds every component with random
weights (no checkpoint needed), samples one Euler step of a conditioned kind (three guidance
passes, as the plan assumes) and decodes, through `VideoSampler` with each offload mode, and
reports torch.cuda.max_memory_allocated beside the estimate. Without a GPU it prints the
estimates only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from osora.config import load_settings  # noqa: E402
from osora.config.dit import SampleParams  # noqa: E402
from osora.models.text import TextEmbedding, TextEncoder  # noqa: E402
from osora.sample.memory_plan import (  # noqa: E402
    CLIP_L_TEXT,
    CLIP_TOKENS,
    DTYPES,
    T5_V1_1_XXL,
    hf_config,
    markdown_table,
    sampling_plan,
)
from osora.sample.placement import OFFLOAD_MODES  # noqa: E402
from osora.sample.run import decode_tile_spec  # noqa: E402

SIZES = ((256, 33), (256, 129), (768, 33), (768, 129))


class RandomT5CLIP(TextEncoder):
    """T5 + CLIP with random weights and no tokenizer (token ids 0): the paper encoder's
    shapes and memory, for measuring."""

    def __init__(self, text_params, dtype: torch.dtype):
        import transformers

        # built on the CPU as transformers initialises them (their position-id buffers)
        self.t5 = randomize(transformers.T5EncoderModel(hf_config(text_params.t5, T5_V1_1_XXL))
                            .to(dtype))
        self.clip = randomize(transformers.CLIPTextModel(hf_config(text_params.clip,
                                                                   CLIP_L_TEXT)).to(dtype))
        self.max_length, self.dtype = text_params.max_length, dtype
        self.device = torch.device("cpu")
        self.seq_dim, self.vec_dim = self.t5.config.d_model, self.clip.config.hidden_size

    @property
    def identity(self) -> str:
        return "random-t5clip"

    def _encode(self, prompts: list[str]) -> TextEmbedding:
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long, device=self.device)
        seq = self.t5(input_ids=ids).last_hidden_state  # (B, L, 4096)
        clip_ids = torch.zeros(len(prompts), CLIP_TOKENS, dtype=torch.long, device=self.device)
        pooled = self.clip(input_ids=clip_ids).pooler_output  # (B, 768)
        return TextEmbedding(seq, torch.ones(seq.shape[:2], dtype=torch.bool,
                                             device=self.device), pooled)


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Small random weights (the values do not matter for memory), eval mode, frozen."""
    module = module.eval().requires_grad_(False)
    for p in module.parameters():
        p.normal_(0.0, 0.02)
    return module


def random_on_cpu(build, dtype: torch.dtype) -> torch.nn.Module:
    """A module without buffers built on the meta device and given random weights in `dtype`
    on the CPU: no float32 copy of 11B parameters on the way."""
    with torch.device("meta"):
        module = build().to(dtype)
    return randomize(module.to_empty(device="cpu"))


def measure(settings, params: SampleParams, mode: str) -> int:
    """Peak bytes torch allocated on the GPU: one step of a conditioned kind, then decoding."""
    from osora.diffusion.conditioning import build_cond, condition_mask
    from osora.models.hunyuan_vae import HUNYUAN_VAE, HunyuanVAE
    from osora.models.mmdit import MMDiT
    from osora.sample.generate import Guidance, VideoSampler, video_latent_shape

    dtype = DTYPES[params.precision]
    device = torch.device("cuda")
    load = device if mode == "none" else torch.device("cpu")
    model = random_on_cpu(lambda: MMDiT(settings.dit.model), dtype).to(load)
    ae = random_on_cpu(lambda: HunyuanVAE(HUNYUAN_VAE), dtype).to(load)
    text = RandomT5CLIP(settings.dit.text, DTYPES[settings.dit.text.dtype])
    for m in (text.t5, text.clip):
        m.to(load)
    text.device = load
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    sampler = VideoSampler(model, ae, text, device=device, precision=params.precision,
                           offload=mode, decode_tile=decode_tile_spec(params))
    c, t, h, w = video_latent_shape(ae, params.frames, params.height, params.width)
    cond = build_cond(torch.zeros(1, c, t, h, w), condition_mask("i2v_head", t))
    z = sampler.latents(["a"] * params.batch_size, list(range(params.batch_size)),
                        frames=params.frames, height=params.height, width=params.width, fps=24,
                        motion_score=None, guidance=Guidance(steps=1), cond=cond)
    sampler.decode(z)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--measure", action="store_true", help="measure on the GPU as well")
    args = parser.parse_args()
    settings = load_settings(args.profile)
    base = settings.dit.sample
    plans, measured = [], {}
    for size, frames in SIZES:
        params = base.model_copy(update={"height": size, "width": size, "frames": frames})
        plans.append(sampling_plan(settings, params, settings.dit.model,
                                   decode_tile_spec(params)))
        if args.measure and torch.cuda.is_available():
            for mode in OFFLOAD_MODES:
                try:
                    measured[(size, frames, mode)] = measure(settings, params, mode)
                except torch.OutOfMemoryError:
                    measured[(size, frames, mode)] = float("inf")
                torch.cuda.empty_cache()
    if args.measure and not torch.cuda.is_available():
        print("no GPU: estimates only", file=sys.stderr)
    print(markdown_table(plans, measured))


if __name__ == "__main__":
    main()
