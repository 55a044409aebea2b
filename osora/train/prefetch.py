"""Making the next steps' batches while the current step computes (a data loader with
pre-allocated pinned buffers and prefetch overlapping compute).

`Prefetcher(batch_for, device=…, ahead=n)` is itself a `batch_for`: after handing out step s
it has steps s + 1 … s + n made by n background threads (reads from the store overlap each
other and the step); a request for any other step (a resume, a recovery that goes back) is
made on the spot. For a CUDA device one more thread copies each made batch's tensors, in step
order, into pinned host buffers that are allocated once per (shape, dtype) and reused
(`PinnedBuffers`, a ring of n + 1), and the step copies them to the GPU asynchronously. A
buffer is refilled only after the GPU copy that read it has finished (an event per copy), and
staging in step order means the ring never refills a buffer whose batch is still waiting.

`batch_for` must not use the global RNG (the threads would race the training step for it):
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
    PinnedBuffers, else it is handed over as made (moved with `.to` if the device differs).
    ahead: how many steps are made in advance, each by its own thread."""

    def __init__(self, batch_for: Callable[[int], Any], *, device: str | torch.device = "cpu",
                 buffers: PinnedBuffers | None = None, ahead: int = 1):
        if not isinstance(ahead, int) or ahead < 1:
            raise ValueError(f"ahead must be an int ≥ 1 (steps made in advance), got {ahead!r}")
        if buffers is not None and buffers.depth < ahead + 1:
            raise ValueError(f"PinnedBuffers depth {buffers.depth} < ahead + 1 = {ahead + 1}: "
                             "a waiting batch's buffer would be refilled")
        self.batch_for, self.device, self.ahead = batch_for, torch.device(device), ahead
        staged = self.device.type == "cuda" or buffers is not None
        self.buffers = (buffers or PinnedBuffers(depth=ahead + 1)) if staged else None
        self._makers = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="osora-prefetch")
        # one thread, so batches are staged in the order of their steps (module doc)
        self._stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osora-prefetch")
        self._pending: dict[int, tuple[Future, Future]] = {}  # step → (made, staged)

    def _stage(self, batch: Any) -> Any:
        return batch if self.buffers is None else map_tensors(batch, self.buffers.stage)

    def _start(self, step: int) -> tuple[Future, Future]:
        made = self._makers.submit(self.batch_for, step)
        return made, self._stager.submit(lambda: self._stage(made.result()))

    def _discard(self, steps: list[int]) -> None:
        """Drop the batches made ahead for `steps`, waiting for any under way (a staging
        that finishes later would take a buffer out of turn)."""
        for step in steps:
            for future in self._pending.pop(step):
                if not future.cancel():
                    future.exception()

    def __call__(self, step: int) -> Any:
        window = range(step, step + self.ahead + 1)
        if step in self._pending:
            self._discard([s for s in self._pending if s not in window])  # skipped steps
            batch = self._pending.pop(step)[1].result()
        else:  # a jump: nothing made ahead is staged after it
            self._discard(list(self._pending))
            batch = self._stage(self.batch_for(step))
        for s in window[1:]:
            if s not in self._pending:
                self._pending[s] = self._start(s)
        if self.buffers is None:
            return map_tensors(batch, lambda x: x.to(self.device))
        return map_tensors(batch, lambda x: self.buffers.to_device(x, self.device))

    def close(self) -> None:
        for pool in (self._makers, self._stager):
            pool.shutdown(wait=True, cancel_futures=True)
