"""Throughput, MFU and memory under torchtitan's metric names (docs/recipe.md §6 reports MFU), so a
dashboard built for torchtitan reads osora's runs unchanged:

    loss_metrics/global_avg_loss, loss_metrics/global_max_loss, grad_norm,
    throughput(tps), tflops, mfu(%),
    time_metrics/end_to_end(s), time_metrics/data_loading(s), time_metrics/data_loading(%),
    memory/max_active(GiB), memory/max_active(%), memory/max_reserved(GiB),
    memory/max_reserved(%), memory/num_alloc_retries, memory/num_ooms   (CUDA only)

tps is tokens per second per device, MFU = achieved FLOP/s over the device's dense bf16 peak
(PaLM's definition, as torchtitan and bench/). An objective reports its work through
`work(batch) -> (tokens, flops)`; without it only the time metrics are logged. Torch only.
"""

from __future__ import annotations

import torch

# Dense bf16 peak TFLOP/s by device-name fragment (H100/H200 SXM: 989).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
GIB = 1 << 30


def peak_tflops(device: torch.device | str) -> float | None:
    """The dense bf16 peak of a CUDA device we know; None elsewhere (no MFU on CPUs)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def window_metrics(*, seconds: float, steps: int, data_seconds: float, tokens: int,
                   flops: float, peak: float | None) -> dict[str, float]:
    """The throughput and time metrics of a logging window of `steps` steps."""
    out = {
        "time_metrics/end_to_end(s)": seconds / max(1, steps),
        "time_metrics/data_loading(s)": data_seconds / max(1, steps),
        "time_metrics/data_loading(%)": 100.0 * data_seconds / seconds if seconds else 0.0,
    }
    if tokens:
        out["throughput(tps)"] = tokens / seconds
        out["tflops"] = flops / seconds / 1e12
        if peak:
            out["mfu(%)"] = 100.0 * flops / seconds / 1e12 / peak
    return out


def memory_metrics(device: torch.device | str) -> dict[str, float]:
    """Peak CUDA memory since the last call (which resets the peaks); {} off CUDA."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return {}
    stats = torch.cuda.memory_stats(device)
    total = torch.cuda.get_device_properties(device).total_memory
    active, reserved = stats.get("active_bytes.all.peak", 0), stats.get(
        "reserved_bytes.all.peak", 0)
    torch.cuda.reset_peak_memory_stats(device)
    return {
        "memory/max_active(GiB)": active / GIB,
        "memory/max_active(%)": 100.0 * active / total,
        "memory/max_reserved(GiB)": reserved / GIB,
        "memory/max_reserved(%)": 100.0 * reserved / total,
        "memory/num_alloc_retries": float(stats.get("num_alloc_retries", 0)),
        "memory/num_ooms": float(stats.get("num_ooms", 0)),
    }
