"""torchtitan 0.2.2 on a machine without an accelerator: CPU tensors and the gloo backend.

torchtitan picks its device once, at import, in `torchtitan.tools.utils.get_device_info`:
`torch._utils._get_available_device_type() or "cuda"`. With no accelerator that is "cuda",
so on a CPU-only machine its Trainer fails at `torch.cuda.set_device` ("Torch not compiled
with CUDA enabled"); past that it would pick the nccl backend, build "cuda" device meshes and
ask `torch.cuda` for memory statistics. 0.2.2 has no config option for the device (its
`comm.mode = "fake_backend"` is a dry run without collectives, not CPU training).

`use_cpu_without_accelerator()` rebinds the two module-level names (`device_type`,
`device_module`) in each torchtitan module that imported them, to "cpu" and `CpuDeviceModule`
(torch.cpu plus the few memory-statistics calls torch.cpu lacks). Everything downstream then
takes torchtitan's own CPU paths: `Backend.default_device_backend_map["cpu"]` = gloo,
`init_device_mesh("cpu", ...)`, `torch.autocast("cpu", ...)`. It does nothing where an
accelerator exists, so a GPU run is untouched. It is a patch of torchtitan internals, pinned
to 0.2.2: every name it rebinds must exist, or it raises naming the one that moved.
"""

from __future__ import annotations

import importlib
import os
from types import SimpleNamespace

import torch

# torchtitan 0.2.2 modules holding `from torchtitan.tools.utils import device_type/module`
# (or defining them), with the names each holds.
_BINDINGS: dict[str, tuple[str, ...]] = {
    "torchtitan.tools.utils": ("device_type", "device_module"),
    "torchtitan.distributed.utils": ("device_type", "device_module"),
    "torchtitan.distributed.parallel_dims": ("device_type",),
    "torchtitan.components.metrics": ("device_type", "device_module"),
    "torchtitan.tools.profiling": ("device_module",),
}


def _physical_memory() -> int:
    """Bytes of RAM (the 'device capacity' torchtitan reports); 0 where unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


class CpuDeviceModule:
    """What torchtitan calls on `device_module` (torch.cuda's API), answered for the CPU.

    Memory statistics are empty: torchtitan then logs −1 for peak memory (it already treats
    missing keys so).
    """

    @staticmethod
    def set_device(device) -> None:
        """No-op: CPU processes share the one device (torch.cpu.set_device is one too)."""

    @staticmethod
    def current_device() -> int:
        """0, an index `torch.distributed.barrier(device_ids=[...])` accepts on gloo."""
        return 0

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def synchronize(device=None) -> None:
        """CPU work is synchronous."""

    @staticmethod
    def get_device_name(device=None) -> str:
        return "cpu"

    @staticmethod
    def get_device_properties(device=None) -> SimpleNamespace:
        return SimpleNamespace(total_memory=max(_physical_memory(), 1), name="cpu")

    @staticmethod
    def memory_stats(device=None) -> dict:
        return {}

    @staticmethod
    def reset_peak_memory_stats(device=None) -> None:
        pass

    @staticmethod
    def empty_cache() -> None:
        pass

    @staticmethod
    def is_available() -> bool:
        return True

    class memory:  # noqa: N801 - mirrors torch.cuda.memory, used by the memory profiler
        @staticmethod
        def _record_memory_history(*args, **kwargs) -> None:
            raise NotImplementedError("torchtitan's memory snapshots need CUDA: set "
                                      "profiling.enable_memory_snapshot = false on CPU")

        @staticmethod
        def _snapshot(*args, **kwargs):
            raise NotImplementedError("memory snapshots need CUDA")


def has_accelerator() -> bool:
    """Whether torch sees a CUDA (or other) accelerator."""
    return torch.accelerator.is_available()


def use_cpu_without_accelerator() -> bool:
    """Point torchtitan at the CPU when torch has no accelerator (module doc); returns whether
    it did. Idempotent; call it before torchtitan's Trainer is constructed."""
    if has_accelerator():
        return False
    for name, attrs in _BINDINGS.items():
        module = importlib.import_module(name)
        for attr in attrs:
            if not hasattr(module, attr):
                raise RuntimeError(
                    f"{name} has no {attr}: this torchtitan ({_version()}) differs from the "
                    "0.2.2 that osora.titan.device patches for CPU runs"
                )
            setattr(module, attr, "cpu" if attr == "device_type" else CpuDeviceModule)
    return True


def _version() -> str:
    import torchtitan

    return getattr(torchtitan, "__version__", "unknown")
