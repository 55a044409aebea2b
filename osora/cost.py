"""What a stage cost: device-hours and USD from the price table in params/cost.yaml.

GPU stages are charged per GPU-hour, one GPU per rank (the instance's CPUs are part of that
price, as in the paper's $2/GPU-hour); CPU-only stages per allotted core-hour, on every node of
the job.
"""

import os
from dataclasses import dataclass

from osora.config.cost import CostParams
from osora.job import current_job


@dataclass(frozen=True)
class Resources:
    """The devices one stage run holds for its whole wall time: every rank's, on every node."""

    device_kind: str  # "cpu", or the GPU's name, e.g. "NVIDIA H200"
    device_count: int  # GPUs across all ranks (one per rank); 0 for CPU-only stages
    cpu_cores: int  # cores across the job's nodes


def detect_resources(device: str) -> Resources:
    """Resources of the job this process is a rank of (osora.job), computing on `device`
    ("cpu", "cuda", "cuda:1")."""
    job = current_job()
    node_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    # torchrun's ranks on a node share its cores: count them once per node
    cores = (node_cores or os.cpu_count() or 1) * job.nodes
    if not device.startswith("cuda"):
        return Resources("cpu", 0, cores)
    import torch  # only GPU stages pay for the import

    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    return Resources(torch.cuda.get_device_name(torch.device(device)), job.world_size, cores)


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
