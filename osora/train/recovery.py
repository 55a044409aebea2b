"""Auto-recovery (docs/recipe.md §6, paper §6): notice what goes wrong in a long run and get back on
track without a person.

- NaN/inf loss, or a loss spike (above mean + k·std of the recent accepted losses): the loop
  restores the newest checkpoint, marks the step's batch to be skipped and goes on, at most
  `max_recoveries` times per process. The check runs on the device and every rank takes the
  same decision (the fault flags are max-reduced over ranks there); the loop reads the flags a
  step later, or before a log or a checkpoint (osora.train.loss_checks), so the faulty update
  is applied first and undone by the restore, and a checkpoint never holds it.
- Slowdown: a step slower than `slow_factor` × the median of the recent steps is an event;
  `slow_patience` of them in a row raise `RestartRequired` (a slow node is fixed by restarting,
  which the supervisor does).
- Hang: no step for `hang_seconds` (a stuck collective, a dead data source). The stuck thread
  cannot be interrupted from inside, so the watchdog thread reports the event, dumps every
  thread's stack to stderr and exits the process with `HANG_EXIT_CODE`; `torchrun
  --max-restarts N` restarts the workers and they resume from the newest checkpoint. Launch
  with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: with the store shared between torchrun and the
  workers (torch's default), a restarted worker can read the dead attempt's addresses and fail
  to connect (pytorch/pytorch#135712; seen here with gloo on torch 2.13).

Every event goes to the loop's `on_event` callback (the pipelines log it to MLflow).
"""

from __future__ import annotations

import faulthandler
import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from osora.train.recovery_settings import RecoverySettings

HANG_EXIT_CODE = 75  # EX_TEMPFAIL: "try again", what a supervisor restarts on


@dataclass(frozen=True)
class Fault:
    """A step that must be undone: kind "nan" or "spike", and what was seen."""

    kind: str
    step: int
    detail: str


class RestartRequired(RuntimeError):
    """The run should be restarted by its supervisor (exit with HANG_EXIT_CODE)."""


class LossMonitor:
    """Flags a non-finite loss, or a spike against the recent accepted losses, without leaving
    the loss's device: it returns flags as tensors for the loop to read later, so no step
    waits for its own loss."""

    def __init__(self, settings: RecoverySettings):
        self.sigma = settings.spike_sigma
        self.size = max(2, settings.spike_window)
        self.recent: torch.Tensor | None = None  # (size,) float64: accepted losses, newest last
        self.count: torch.Tensor | None = None  # () int64: how many of `recent` are losses

    def check(self, loss: torch.Tensor, record: torch.Tensor) -> torch.Tensor:
        """[non-finite, spike, loss, mean, std] (5,) float64 on `loss`'s device: the flags 0 or 1,
        mean and std those of the recent losses. `loss` (a scalar) joins them when neither flag
        is set and `record` (a bool scalar on the same device) holds."""
        value = loss.detach().to(torch.float64).reshape(())
        nonfinite = ~torch.isfinite(value)
        if self.sigma <= 0:  # spikes off: nothing to remember
            zero = torch.zeros((), dtype=torch.float64, device=value.device)
            return torch.stack([nonfinite.to(torch.float64), zero, value, zero, zero])
        if self.recent is None:
            self.recent = torch.zeros(self.size, dtype=torch.float64, device=value.device)
            self.count = torch.zeros((), dtype=torch.int64, device=value.device)
        mean, std = self.recent.mean(), self.recent.std(correction=0)
        full = self.count == self.size  # statistics only over a full window
        spike = full & (value > mean + self.sigma * std.clamp_min(1e-12))
        keep = record & ~nonfinite & ~spike
        self.recent = torch.where(keep, torch.cat([self.recent[1:], value[None]]), self.recent)
        self.count = torch.clamp(self.count + keep.to(torch.int64), max=self.size)
        return torch.stack([nonfinite.to(torch.float64), spike.to(torch.float64), value, mean,
                            std])

    def spike_detail(self, value: float, mean: float, std: float) -> str:
        return (f"loss {value:.4g} > mean {mean:.4g} + {self.sigma:g} × std {std:.4g} of the "
                f"last {self.size} steps")


class StepTimer:
    """Flags slow steps against the median of the recent ones."""

    def __init__(self, settings: RecoverySettings):
        self.factor, self.patience = settings.slow_factor, settings.slow_patience
        self.recent: deque[float] = deque(maxlen=max(2, settings.slow_window))
        self.in_a_row = 0

    def slow(self, seconds: float) -> str | None:
        """A detail string when this step was slow (RestartRequired after `patience`)."""
        detail = None
        if self.factor > 0 and len(self.recent) == self.recent.maxlen:
            median = statistics.median(self.recent)
            if seconds > self.factor * median:
                detail = f"step took {seconds:.3g} s, {seconds / median:.1f}× the median"
        self.in_a_row = self.in_a_row + 1 if detail else 0
        if detail is None:
            self.recent.append(seconds)
        return detail


class Watchdog:
    """A daemon thread that ends the process when no `beat()` came for `seconds`."""

    def __init__(self, seconds: float, on_event: Callable[[dict], None] | None,
                 exit_process: Callable[[int], None] = os._exit):
        self.seconds, self.on_event, self.exit_process = seconds, on_event, exit_process
        self.last, self.step = time.monotonic(), None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="osora-watchdog", daemon=True)
        self._thread.start()

    def beat(self, step: int) -> None:
        self.last, self.step = time.monotonic(), step

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.seconds / 4)):
            idle = time.monotonic() - self.last
            if idle > self.seconds:
                event = {"kind": "hang", "step": self.step,
                         "detail": f"no step for {idle:.1f} s (limit {self.seconds:g} s)"}
                if self.on_event is not None:
                    self.on_event(event)
                print(f"osora watchdog: {event['detail']} after step {self.step}; stacks:",
                      file=sys.stderr, flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                self.exit_process(HANG_EXIT_CODE)
                return
