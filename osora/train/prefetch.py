"""Making the next step's batch while the current step computes (RECIPE §6: a data loader with
pre-allocated pinned buffers and prefetch overlapping compute).

`Prefetcher(batch_for, device=…)` is itself a `batch_for`: after handing out step s it starts
step s + 1's batch in a background thread; a request for any other step (a resume, a recovery
that goes back) is made on the spot. For a CUDA device the thread copies the batch's tensors
into pinned host buffers that are allocated once per (shape, dtype) and reused
(`PinnedBuffers`), and the step copies them to the GPU asynchronously. A buffer is refilled
only after the GPU copy that read it has finished (an event per copy), so reuse never races a
transfer still in flight.

`batch_for` must not use the global RNG (the thread would race the training step for it):
`dit_batches.LatentBatches` seeds its own generator from (seed, rank, step).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """The batch with `fn` applied to every tensor (dataclasses, tuples, lists, dicts)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: map_tensors(getattr(batch, f.name), fn)
                                             for f in dataclasses.fields(batch)})
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(x, fn) for x in batch)
    if isinstance(batch, dict):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    return batch


class PinnedBuffers:
    """Host staging buffers allocated once and reused: per (shape, dtype) a ring of `depth`
    buffers (one being read by the GPU copy of step s, one being filled for step s + 1, …).

    `stage(x)` copies a CPU tensor into the ring's oldest buffer, first waiting for the event
    of the device copy that last read it; `to_device(buffer, device)` starts that copy and
    records its event. Buffers are pinned where CUDA exists (else plain memory: the tests).
    """

    def __init__(self, depth: int = 2):
        if depth < 2:
            raise ValueError(f"depth {depth}: at least 2 buffers, or filling one waits for "
                             "the copy of the step before")
        self.depth = depth
        self.pin = torch.cuda.is_available()
        self._rings: dict[tuple, list[torch.Tensor]] = {}
        self._turn: dict[tuple, int] = {}
        self._read: dict[int, torch.cuda.Event] = {}  # id(buffer) → its last device copy
        self._lock = threading.Lock()
        self.allocated = 0  # buffers made so far (the tests count reuse by it)

    def stage(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return x
        key = (tuple(x.shape), x.dtype)
        with self._lock:
            ring = self._rings.setdefault(key, [])
            if len(ring) < self.depth:
                ring.append(torch.empty(x.shape, dtype=x.dtype, pin_memory=self.pin))
                self.allocated += 1
            turn = self._turn.get(key, 0)
            self._turn[key] = turn + 1
            buffer = ring[turn % len(ring)]
            pending = self._read.pop(id(buffer), None)
        if pending is not None:
            pending.synchronize()  # the GPU has finished reading this buffer
        buffer.copy_(x)
        return buffer

    def to_device(self, buffer: torch.Tensor, device: torch.device) -> torch.Tensor:
        if device.type == "cpu":  # a copy all the same: the buffer will be refilled
            return buffer.clone()
        out = buffer.to(device, non_blocking=True)
        if device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
            with self._lock:
                self._read[id(buffer)] = event
        return out


class Prefetcher:
    """device: where the step wants the batch; for CUDA the batch is staged through
    PinnedBuffers, else it is handed over as made (moved with `.to` if the device differs)."""

    def __init__(self, batch_for: Callable[[int], Any], *, device: str | torch.device = "cpu",
                 buffers: PinnedBuffers | None = None):
        self.batch_for, self.device = batch_for, torch.device(device)
        staged = self.device.type == "cuda" or buffers is not None
        self.buffers = (buffers or PinnedBuffers()) if staged else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osora-prefetch")
        self._next: tuple[int, Future] | None = None

    def _make(self, step: int) -> Any:
        batch = self.batch_for(step)
        return batch if self.buffers is None else map_tensors(batch, self.buffers.stage)

    def __call__(self, step: int) -> Any:
        if self._next is not None and self._next[0] == step:
            batch = self._next[1].result()
        else:
            if self._next is not None and not self._next[1].cancel():
                self._next[1].exception()  # a make under way finishes before one starts anew
            batch = self._make(step)
        self._next = (step + 1, self._pool.submit(self._make, step + 1))
        if self.buffers is None:
            return map_tensors(batch, lambda x: x.to(self.device))
        return map_tensors(batch, lambda x: self.buffers.to_device(x, self.device))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
