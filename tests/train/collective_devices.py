"""A guard for multi-rank tests: every torch.distributed tensor collective called through the
`torch.distributed` namespace (the loop's, FSDP2's, context parallelism's) must get tensors on
the model's device, as nccl requires. On gloo the device is the CPU, so the guard proves
coverage (the calls it saw) and the rule; tests/train/test_collective_devices.py shows it
catches a tensor elsewhere."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

# Collectives on tensors (object collectives pick their own device inside torch.distributed)
TENSOR_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_single", "all_gather_into_tensor",
                      "reduce_scatter_single", "reduce_scatter_tensor", "reduce_scatter",
                      "all_to_all_single", "all_to_all", "broadcast", "reduce",
                      "batch_isend_irecv")


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dist.P2POp):
        yield value.tensor


@contextmanager
def collectives_on(device: torch.device) -> Iterator[Counter]:
    """Within: a collective given a tensor off `device` raises AssertionError naming both;
    yields the calls seen, by name."""
    calls: Counter = Counter()
    saved = {name: getattr(dist, name) for name in TENSOR_COLLECTIVES if hasattr(dist, name)}

    def guarded(name, collective):
        def call(*args, **kwargs):
            for tensor in _tensors([*args, *kwargs.values()]):
                assert tensor.device == device, (f"{name} got a tensor on {tensor.device}; the "
                                                 f"model is on {device}")
            calls[name] += 1
            return collective(*args, **kwargs)
        return call

    for name, collective in saved.items():
        setattr(dist, name, guarded(name, collective))
    try:
        yield calls
    finally:
        for name, collective in saved.items():
            setattr(dist, name, collective)
