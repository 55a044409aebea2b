"""CPU offload of saved activations (docs/recipe.md §6, stage 3: "asynchronous CPU offload
of activations").

A tensor autograd saves for the backward is copied to pinned CPU memory on a side CUDA stream,
so the copy runs while the compute stream goes on with the next layers; the GPU copy is freed
once the transfer is done (`record_stream` keeps the caching allocator from reusing it before).
In the backward the tensor comes back with a non-blocking copy on the compute stream, after
the CPU side has waited for its own transfer only.

    forward:  compute ──▶ saved x ──(side stream: x → pinned CPU)──▶ GPU memory of x released
    backward: wait for x's copy event ──▶ CPU → GPU (compute stream) ──▶ gradient

`torch.autograd.graph.save_on_cpu` does the same synchronously: every saved tensor stalls the
step until it is in CPU memory. Small tensors (under `min_bytes`) stay where they are: their
copies cost more in latency than they free. CPU tensors are left alone unless `copy_cpu` (the
tests, which exercise the bookkeeping on machines without a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _Offloaded:
    device: torch.device
    host: torch.Tensor  # the CPU copy (pinned for CUDA tensors)
    done: torch.cuda.Event | None  # recorded on the side stream after the copy; None on CPU


class AsyncOffload(torch.autograd.graph.saved_tensors_hooks):
    """Within `with AsyncOffload():` the tensors autograd saves go to CPU memory (module
    doc). `pack` / `unpack` also serve tensors kept by hand (a checkpointed block's inputs)."""

    def __init__(self, min_bytes: int = 1 << 16, copy_cpu: bool = False):
        self.min_bytes, self.copy_cpu = min_bytes, copy_cpu
        self.stream = torch.cuda.Stream() if torch.cuda.is_available() else None
        super().__init__(self.pack, self.unpack)

    def pack(self, x):
        if not isinstance(x, torch.Tensor) or x.numel() * x.element_size() < self.min_bytes:
            return x
        if x.device.type == "cuda":
            self.stream.wait_stream(torch.cuda.current_stream(x.device))  # x is written
            with torch.cuda.stream(self.stream):
                host = torch.empty(x.shape, dtype=x.dtype, layout=x.layout, pin_memory=True)
                host.copy_(x, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.stream)
            x.record_stream(self.stream)  # x's memory is not reused before the copy ends
            return _Offloaded(x.device, host, done)
        if x.device.type == "cpu" and self.copy_cpu:
            return _Offloaded(x.device, x.detach().clone(), None)
        return x

    @staticmethod
    def unpack(packed):
        if not isinstance(packed, _Offloaded):
            return packed
        if packed.done is None:
            return packed.host
        packed.done.synchronize()  # this tensor's transfer only, not the whole side stream
        return packed.host.to(packed.device, non_blocking=True)
