"""MMDiT throughput: forward+backward tokens/s and MFU at a 256px bucket, and seconds per sample.

    python bench/bench_mmdit.py train  [--device cuda] [--depth-double 4 --depth-single 8]
    python bench/bench_mmdit.py sample [--device cuda]   # the full 11B, random weights, 50 steps

`train` builds the paper-width model (hidden 3072, 24 heads, head dim 128, patch 2) with the
depth reduced to fit one GPU, in bf16, and times optimizer-free forward+backward steps on one
256px bucket (default: 129 frames → 33×16×16 = 8448 video tokens + 512 text tokens). MFU is the
model FLOPs (6 × parameters in blocks × tokens + attention 12 × layers × tokens² × hidden, i.e.
fwd + bwd) over the device's dense bf16 peak. `sample` times the sampler's 50 Euler steps with
decoupled guidance (three passes batched) for the whole 11B config with random weights.
Imports torch and einops only (osora.models.mmdit's one dependency beyond torch), so a GPU
machine without osora's other dependencies runs it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from osora.models.mmdit import MMDIT_11B, MMDiT, MMDiTConfig, train_step_flops  # noqa: E402
from osora.train.throughput import peak_tflops  # noqa: E402


def timer(device: torch.device):
    """Seconds of a callable, synchronised on CUDA."""
    def run(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    return run


def inputs(config: MMDiTConfig, batch: int, latent: tuple[int, int, int], text_len: int,
           device: torch.device, dtype: torch.dtype):
    t, h, w = latent
    x = torch.randn(batch, config.in_channels, t, h, w, device=device, dtype=dtype)
    cond = torch.zeros(batch, config.cond_channels, t, h, w, device=device, dtype=dtype) \
        if config.cond_channels else None
    text = torch.randn(batch, text_len, config.text_dim, device=device, dtype=dtype)
    pooled = torch.randn(batch, config.vec_dim, device=device, dtype=dtype)
    steps = torch.rand(batch, device=device)
    return x, steps, text, pooled, cond


def bench_train(args, device: torch.device, dtype: torch.dtype) -> dict:
    config = MMDiTConfig(**{**vars(MMDIT_11B), "depth_double": args.depth_double,
                            "depth_single": args.depth_single})
    with torch.device(device):  # initialised on the device, as bench_sample: no slow CPU init
        model = MMDiT(config).to(dtype=dtype)
    x, t, text, pooled, cond = inputs(config, args.batch, tuple(args.latent), args.text_len,
                                      device, dtype)
    step_fn = model
    if args.compile:
        step_fn = torch.compile(model)

    def step():
        v = step_fn(x, t, text, pooled, cond=cond)
        v.float().square().mean().backward()
        for p in model.parameters():
            p.grad = None

    run = timer(device)
    for _ in range(args.warmup):
        run(step)
    times = [run(step) for _ in range(args.iters)]
    median = statistics.median(times)
    video_tokens = args.latent[0] * (args.latent[1] // 2) * (args.latent[2] // 2)
    tokens = args.batch * (video_tokens + args.text_len)
    flops = train_step_flops(config, args.batch, video_tokens, args.text_len)
    peak = peak_tflops(device)
    return {
        "mode": "train", "device": str(device), "dtype": str(dtype), "batch": args.batch,
        "latent": args.latent, "text_len": args.text_len, "depth": [config.depth_double,
                                                                   config.depth_single],
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_s_median": round(median, 4), "tokens_per_s": round(tokens / median, 1),
        "tflops": round(flops / median / 1e12, 2),
        "mfu": round(flops / median / 1e12 / peak, 4) if peak else None,
    }


def bench_sample(args, device: torch.device, dtype: torch.dtype) -> dict:
    from osora.diffusion.sampler import sample

    config = MMDIT_11B if device.type == "cuda" else MMDiTConfig(
        **{**vars(MMDIT_11B), "depth_double": 1, "depth_single": 1, "hidden_size": 256,
           "num_heads": 2})
    with torch.device(device):
        model = MMDiT(config).to(dtype=dtype).eval()
    x, _, text, pooled, cond = inputs(config, 1, tuple(args.latent), args.text_len, device,
                                      dtype)
    run = timer(device)
    with torch.no_grad():
        seconds = run(lambda: sample(model, x, text, pooled, neg_text=torch.zeros_like(text),
                                     neg_pooled=torch.zeros_like(pooled), cond=cond,
                                     steps=args.steps, patch_size=config.patch_size))
    return {"mode": "sample", "device": str(device), "dtype": str(dtype), "steps": args.steps,
            "latent": args.latent, "parameters": sum(p.numel() for p in model.parameters()),
            "seconds_per_sample": round(seconds, 2),
            "note": None if device.type == "cuda" else "CPU: a 2-block 256-wide stand-in"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("train", "sample"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--latent", type=int, nargs=3, default=[33, 32, 32],
                        help="latent T H W (default: 256px 1:1, 129 frames, HunyuanVideo VAE)")
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--depth-double", type=int, default=4)
    parser.add_argument("--depth-single", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_mmdit: --device cuda but there is no CUDA device "
                         "(torch.cuda.is_available() is False); run on a GPU machine or pass "
                         "--device cpu")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    result = bench_train(args, device, dtype) if args.mode == "train" else bench_sample(
        args, device, dtype)
    result["torch"] = torch.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
