"""Fused elementwise kernels (osora.kernels) at MMDiT shapes: the Triton op against the torch
reference, eager and under torch.compile, forward and forward+backward.

    .venv/bin/python bench/bench_kernels.py [--dtype bf16] [--repeats 50] [--json out.json]

Shapes (Open-Sora 2.0 MMDiT, B=1): N = 8448 video + 512 text tokens, hidden 3072, 24 heads ×
128. rms_norm: the QK norm of q (B, H, N, 128); apply_rope: q (B, H, N, 128) in both layouts
with float32 tables (N, 64); modulate: LayerNorm + adaLN of x (B, N, 3072).

Each timing is the median over --repeats calls, each between two CUDA events after an L2 flush.
GB/s counts the bytes an ideal fused kernel moves (every input read once, every output written
once; forward+backward adds dy and x read and dx written), so it reads as a fraction of the
GPU's memory bandwidth (H100 SXM ≈ 3.35 TB/s, H200 ≈ 4.8 TB/s). On a machine without CUDA it
says so and exits 0. Imports torch only (triton, where present, loads at the first launch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # osora from a plain checkout

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def time_cuda(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median milliseconds of fn() between CUDA events, L2 flushed before each call."""
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # > any L2 (H200: 60 MB)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        flush.zero_()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def cases(dtype: torch.dtype, bsz: int, tokens: int, hidden: int, heads: int, head_dim: int):
    """(name, op, reference, inputs, differentiable input indices, forward bytes, backward
    bytes) per benchmarked op."""
    from osora.kernels.modulate import modulate_reference
    from osora.kernels.rms_norm import rms_norm_reference
    from osora.kernels.rope import apply_rope_reference

    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(bsz, heads, tokens, head_dim, device=dev, dtype=dtype, generator=g)
    w = 1 + 0.1 * torch.randn(head_dim, device=dev, dtype=dtype, generator=g)
    angles = torch.rand(tokens, head_dim // 2, device=dev, generator=g) * 6.28
    cos, sin = angles.cos(), angles.sin()  # float32 tables, as the model keeps them
    x = torch.randn(bsz, tokens, hidden, device=dev, dtype=dtype, generator=g)
    shift = torch.randn(bsz, 1, hidden, device=dev, dtype=dtype, generator=g)
    scale = 0.1 * torch.randn(bsz, 1, hidden, device=dev, dtype=dtype, generator=g)

    out = [(f"rms_norm (q, D={head_dim})",
            lambda a, b: torch.ops.osora.rms_norm(a, b, 1e-6),
            lambda a, b: rms_norm_reference(a, b, 1e-6),
            (q, w), (0, 1), nbytes(q, w, q), nbytes(q, q, w, q, w))]
    for layout in ("interleaved", "rotate_half"):
        out.append((f"apply_rope ({layout})",
                    lambda a, c, s, layout=layout: torch.ops.osora.apply_rope(a, c, s, layout),
                    lambda a, c, s, layout=layout: apply_rope_reference(a, c, s, layout),
                    (q, cos, sin), (0,), nbytes(q, cos, sin, q), nbytes(q, cos, sin, q)))
    out.append((f"modulate (LN + adaLN, D={hidden})",
                lambda a, b, c: torch.ops.osora.modulate(a, b, c, 1e-6),
                lambda a, b, c: modulate_reference(a, b, c, 1e-6),
                (x, shift, scale), (0, 1, 2), nbytes(x, shift, scale, x),
                nbytes(x, x, scale, x, shift, scale)))
    return out


def forward_backward(fn, inputs, grad_idx):
    """A closure running fn forward and backward (grads of the inputs in grad_idx)."""
    leaves = [t.detach().requires_grad_(i in grad_idx) for i, t in enumerate(inputs)]
    wrt = [leaves[i] for i in grad_idx]
    dy = torch.randn_like(fn(*leaves))

    def run():
        torch.autograd.grad(fn(*leaves), wrt, dy)

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=8448 + 512)
    ap.add_argument("--hidden", type=int, default=3072)
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU (times Triton kernels with CUDA events); "
              "nothing to do on this machine.")
        return 0

    from osora.kernels import _triton

    if not _triton.available():
        print("bench_kernels: triton does not import here; the ops would only run their torch "
              "references. Install the triton that matches this torch.")
        return 0
    import triton

    dtype = DTYPES[args.dtype]
    print(f"# {torch.cuda.get_device_name()} · torch {torch.__version__} · triton "
          f"{triton.__version__} · {args.dtype} · B={args.batch} N={args.tokens} "
          f"hidden={args.hidden} heads={args.heads}×{args.head_dim} · median of {args.repeats}")
    rows = []
    for name, op, ref, inputs, grad_idx, fwd_bytes, bwd_bytes in cases(
            dtype, args.batch, args.tokens, args.hidden, args.heads, args.head_dim):
        with torch.no_grad():
            err = (op(*inputs).float() - ref(*inputs).float()).abs().max().item()
        compiled = torch.compile(ref, fullgraph=True)
        for direction, total_bytes in (("fwd", fwd_bytes), ("fwd+bwd", fwd_bytes + bwd_bytes)):
            for impl, fn in (("triton", op), ("torch", ref), ("torch.compile", compiled)):
                if direction == "fwd":
                    def run(fn=fn, inputs=inputs):
                        with torch.no_grad():
                            fn(*inputs)
                else:
                    run = forward_backward(fn, inputs, grad_idx)
                ms = time_cuda(run, args.repeats, args.warmup)
                rows.append({"op": name, "direction": direction, "impl": impl, "ms": ms,
                             "gbps": total_bytes / (ms * 1e-3) / 1e9, "max_abs_err": err})
    print("| op | pass | impl | median ms | GB/s |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['op']} | {r['direction']} | {r['impl']} | {r['ms']:.3f} | {r['gbps']:.0f} |")
    errs = {r["op"]: r["max_abs_err"] for r in rows}
    print("\nmax |triton − reference| (forward): "
          + ", ".join(f"{k}: {v:.2e}" for k, v in errs.items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
