"""Autoencoder speed and memory: Video DC-AE (f32t4c128) against the HunyuanVideo VAE, both
at paper size with random weights, encode and decode, in one run.

    .venv/bin/python bench/bench_ae.py [--device cuda] [--size 256 --frames 32] [--repeats 3]

Each (model, direction) runs in its own process, so peak memory is that process's own: on
CUDA torch.cuda.max_memory_allocated, on CPU the process's max resident set size (which
includes the weights and the Python runtime). Frames per second count input frames for
encode and output frames for decode. Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODELS = ("dcae_f32t4c128", "hunyuan_vae")


def build(name: str):
    from osora.models.dcae import DCAE, DCAE_F32T4C128
    from osora.models.hunyuan_vae import HUNYUAN_VAE, HunyuanVAE

    return DCAE(DCAE_F32T4C128) if name == "dcae_f32t4c128" else HunyuanVAE(HUNYUAN_VAE)


def measure(name: str, direction: str, device: str, size: int, frames: int,
            repeats: int) -> dict:
    """Runs in the child process: time `repeats` calls after one warm-up."""
    import torch

    torch.manual_seed(0)
    model = build(name).to(device).eval()
    # The causal VAE takes 1 + 4k frames; DC-AE takes 4k.
    t = frames + 1 if model.causal else frames
    x = torch.rand(1, 3, t, size, size, device=device) * 2 - 1  # (B, 3, T, H, W)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = model.to(dtype)
    x = x.to(dtype)
    with torch.no_grad():
        z = model.encode(x)  # (B, C, T', H', W')
        call = (lambda: model.encode(x)) if direction == "encode" else (lambda: model.decode(z))
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        runs = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            call()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    seconds = statistics.median(runs)
    return {"model": name, "direction": direction, "frames": t, "seconds": seconds,
            "fps": t / seconds, "peak_gib": peak_gib, "latent": list(z.shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "DIRECTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(*args.child, args.device, args.size, args.frames, args.repeats)
        print(json.dumps(result))
        return

    print(f"device {args.device}, {args.size}×{args.size}, {args.frames} frames "
          f"(+1 for the causal VAE), medians of {args.repeats}\n")
    print("| model | direction | frames | s per clip | frames per s | peak GiB | latent |")
    print("|---|---|---|---|---|---|---|")
    for name in MODELS:
        for direction in ("encode", "decode"):
            done = subprocess.run(
                [sys.executable, __file__, "--child", name, direction, "--device", args.device,
                 "--size", str(args.size), "--frames", str(args.frames),
                 "--repeats", str(args.repeats)],
                capture_output=True, text=True, check=True,
            )
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {r['model']} | {direction} | {r['frames']} | {r['seconds']:.2f} | "
                  f"{r['fps']:.2f} | {r['peak_gib']:.2f} | {tuple(r['latent'])} |")


if __name__ == "__main__":
    main()
