"""Making the next step's batch while the current step computes (RECIPE §6: a data loader that
overlaps compute): `Prefetcher(batch_for)` is itself a `batch_for`. After handing out step s it
starts step s + 1's batch in a background thread; a request for any other step (a resume, a
recovery that goes back) is made on the spot. On CUDA the batch's tensors are copied into
pinned host memory in the thread, so the copy to the GPU can run asynchronously.

`batch_for` must not use the global RNG (the thread would race the training step for it):
`dit_batches.LatentBatches` seeds its own generator from (seed, rank, step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


def pinned(batch: Any) -> Any:
    """The batch with every CPU tensor in pinned memory (dataclasses, tuples, lists, dicts)."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory() if batch.device.type == "cpu" else batch
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: pinned(getattr(batch, f.name))
                                             for f in dataclasses.fields(batch)})
    if isinstance(batch, (tuple, list)):
        return type(batch)(pinned(x) for x in batch)
    if isinstance(batch, dict):
        return {k: pinned(v) for k, v in batch.items()}
    return batch


class Prefetcher:
    def __init__(self, batch_for: Callable[[int], Any], *, pin: bool = False):
        self.batch_for, self.pin = batch_for, pin
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osora-prefetch")
        self._next: tuple[int, Future] | None = None

    def _make(self, step: int) -> Any:
        batch = self.batch_for(step)
        return pinned(batch) if self.pin else batch

    def __call__(self, step: int) -> Any:
        if self._next is not None and self._next[0] == step:
            batch = self._next[1].result()
        else:
            if self._next is not None:
                self._next[1].cancel()
            batch = self._make(step)
        self._next = (step + 1, self._pool.submit(self._make, step + 1))
        return batch

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
