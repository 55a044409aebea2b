"""One training step of the tiny profile's models on CPU: wall and CPU seconds, medians.

Why the tiny DC-AE moved from EfficientViT blocks to residual blocks: the depthwise 3D
convolutions of the ViT blocks have no fast CPU kernel for their backward pass. This times a
step (forward, L1 backward, AdamW) of the old and the new tiny DC-AE at ae_train's batch
(16 windows of 8 × 32 × 32), and a step of the tiny MMDiT at dit_stage1's batch, with 1 and 2
torch threads; `--profile` adds the share of conv3d backward in the old AE's step.

    .venv/bin/python bench/bench_tiny_steps.py [--repeats 7] [--profile]

Run it on an otherwise idle machine (results: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

# The tiny DC-AE before issue 16 (8× space, ViT blocks) and after (4× space, residual only).
OLD_AE = dict(latent_channels=16, widths=[16, 32, 64, 64], encoder_depths=[0, 1, 1, 1],
              decoder_depths=[0, 1, 1, 1], block_types=["res", "res", "vit", "vit"],
              temporal_down=[False, True, True], head_dim=8, attn_scales=[5], mlp_ratio=2.0)


def new_ae_config() -> dict:
    """The tiny DC-AE of params/ae.yaml."""
    from osora.config import load_settings

    return load_settings().ae.dcae.model_dump()


def ae_step(config: dict):
    from osora.models.dcae import DCAE, DCAEConfig

    model = DCAE(DCAEConfig(**config))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3, eps=1e-15)
    x = torch.rand(16, 3, 8, 32, 32) * 2 - 1  # (B, 3, T, H, W): ae_train's windows

    def step():
        loss = (model(x) - x).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def dit_step():
    from osora.config import load_settings
    from osora.models.mmdit import MMDiT, MMDiTConfig

    params = load_settings().dit
    model = MMDiT(MMDiTConfig(**params.model.model_dump()))
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3, eps=1e-15)
    cfg = model.config
    x = torch.randn(8, cfg.in_channels, 4, 16, 16)  # (B, C, T, h, w): 16 frames of 64², 4× AE
    text = torch.randn(8, params.text.max_length, cfg.text_dim)
    pooled = torch.randn(8, cfg.vec_dim)

    def step():
        v = model(x, torch.rand(8), text, pooled)
        optimizer.zero_grad()
        v.square().mean().backward()
        optimizer.step()
    return step


def timed(step, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of one step, after two warm-up steps."""
    for _ in range(2):
        step()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def conv3d_backward_share(step) -> float:
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    conv = sum(e.self_cpu_time_total for e in prof.key_averages()
               if "convolution_backward" in e.key)
    return conv / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available")
    print("| model | threads | step wall s | step CPU s |")
    print("|---|---|---|---|")
    for name, make in (("tiny DC-AE before (ViT blocks, 8×)", lambda: ae_step(OLD_AE)),
                       ("tiny DC-AE now (res blocks, 4×)", lambda: ae_step(new_ae_config())),
                       ("tiny MMDiT (dit_stage1 batch)", dit_step)):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            wall, cpu = timed(make(), args.repeats)
            print(f"| {name} | {threads} | {wall:.3f} | {cpu:.3f} |", flush=True)
    if args.profile:
        torch.set_num_threads(1)
        print(f"conv3d backward share of the old AE's step (1 thread): "
              f"{conv3d_backward_share(ae_step(OLD_AE)):.0%}")


if __name__ == "__main__":
    main()
