"""What a stage cost: device-hours and USD from the price table in params/cost.yaml.

GPU stages are charged per GPU-hour (the instance's CPUs are part of that price, as in the
paper's $2/GPU-hour); CPU-only stages per allotted core-hour.
"""

import os
from dataclasses import dataclass

from osora.config.cost import CostParams


@dataclass(frozen=True)
class Resources:
    """The devices one stage run holds for its whole wall time."""

    device_kind: str  # "cpu", or the GPU's name, e.g. "NVIDIA H200"
    device_count: int  # GPUs across all ranks; 0 for CPU-only stages
    cpu_cores: int  # cores allotted to this process


def detect_resources(device: str) -> Resources:
    """Resources for a stage running on `device` ("cpu", "cuda", "cuda:1")."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not device.startswith("cuda"):
        return Resources("cpu", 0, cores or 1)
    import torch  # only GPU stages pay for the import

    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return Resources(torch.cuda.get_device_name(torch.device(device)), world, cores or 1)


def gpu_price(device_kind: str, cost: CostParams) -> float:
    """USD per GPU-hour for a device name, matched on the fragments in params/cost.yaml."""
    for fragment, usd in cost.gpu_hour_usd.items():
        if fragment.lower() in device_kind.lower():
            return usd
    raise ValueError(
        f"GPU {device_kind!r} has no price in params/cost.yaml gpu_hour_usd "
        f"(known: {', '.join(cost.gpu_hour_usd)}); "
        f"add a line such as `{device_kind.split()[-1]}: 2.0`"
    )


def cost_metrics(wall_s: float, res: Resources, cost: CostParams) -> dict[str, float]:
    """Metrics for MLflow: wall seconds, GPU-hours, CPU core-hours and USD."""
    hours = wall_s / 3600.0
    gpu_hours = hours * res.device_count
    cpu_hours = hours * res.cpu_cores
    if res.device_count:
        usd = gpu_hours * gpu_price(res.device_kind, cost)
    else:
        usd = cpu_hours * cost.cpu_core_hour_usd
    return {
        "cost.wall_seconds": wall_s,
        "cost.device_count": float(res.device_count),
        "cost.cpu_cores": float(res.cpu_cores),
        "cost.gpu_hours": gpu_hours,
        "cost.cpu_hours": cpu_hours,
        "cost.usd": usd,
    }
