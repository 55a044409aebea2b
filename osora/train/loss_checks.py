"""The training loop's NaN/spike checks, kept off the host's critical path.

Each update's loss is checked on its device (osora.train.recovery.LossMonitor), the flags are
max-reduced over ranks there, and their copy to the host is queued behind them. The loop reads
them later: a step late, or all of them before a log or a checkpoint. So the host never waits
for the step it is queueing, and a checkpoint never holds a faulty update. An update is applied
before its check is read; a fault then restores a checkpoint, which undoes it and everything
after it.

A check that found a fault on any rank stops the later checks (of that step and the next) from
recording their losses in the spike statistics, so these hold what they held when the loop
stopped at the faulty update: the monitors need no undo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from osora.train.parallel import max_over_ranks
from osora.train.recovery import Fault, LossMonitor, RecoverySettings


class HostCopy:
    """A device tensor's values on their way to the host. The copy is queued behind the work
    that makes them, and `values()` waits for that copy alone, where a plain `.tolist()` would
    wait for everything queued on the device since."""

    def __init__(self, tensor: torch.Tensor):
        # a GPU tensor goes to pinned memory, asynchronously; a CPU tensor is the copy itself
        self.host = tensor.to("cpu", non_blocking=True)
        self.ready = None
        if tensor.device.type != "cpu":
            self.ready = torch.Event(device=tensor.device)
            self.ready.record()

    def values(self) -> list:
        if self.ready is not None:
            self.ready.synchronize()
        return self.host.tolist()


@dataclass
class _Check:
    step: int
    update: str
    row: HostCopy  # [non-finite, spike, loss, mean, std] on this rank, then the 2 flags of any


def agreed_check(monitor: LossMonitor, loss: torch.Tensor, record: torch.Tensor) -> torch.Tensor:
    """(7,) float64 on the loss's device: this rank's `monitor.check` (5,), then its two flags
    max-reduced over all ranks (a collective on that device)."""
    local = monitor.check(loss, record)
    return torch.cat([local, max_over_ranks(local[:2].clone())])


class LossChecks:
    """The checks of the updates the loop has queued and not read yet."""

    def __init__(self, settings: RecoverySettings):
        self.settings = settings
        self.monitors: dict[str, LossMonitor] = {}  # one per update: the AE's and critic's differ
        self.pending: list[_Check] = []
        self.clean: torch.Tensor | None = None  # () bool: no pending check found a fault

    def check(self, step: int, update: str, loss: torch.Tensor) -> None:
        """Queue the check of `update`'s loss at `step`; reads nothing."""
        monitor = self.monitors.setdefault(update, LossMonitor(self.settings))
        if self.clean is None:
            self.clean = torch.ones((), dtype=torch.bool, device=loss.device)
        row = agreed_check(monitor, loss, self.clean)
        self.clean = self.clean & (row[5:] == 0).all()
        self.pending.append(_Check(step, update, HostCopy(row)))

    def first_fault(self, before: int) -> Fault | None:
        """The first fault among the checks of steps before `before`, in the order queued; those
        checks are read (waiting for them alone) and dropped."""
        due = [c for c in self.pending if c.step < before]
        self.pending = [c for c in self.pending if c.step >= before]
        for check in due:
            fault = self._fault(check, check.row.values())
            if fault is not None:
                return fault
        return None

    def discard(self) -> None:
        """Forget every unread check (a checkpoint was restored: they were undone)."""
        self.pending, self.clean = [], None

    def _fault(self, check: _Check, row: list[float]) -> Fault | None:
        nan, spike, value, mean, std, any_nan, any_spike = row
        if not (any_nan or any_spike):
            return None
        if nan:
            kind, detail = "nan", f"loss is {value}"
        elif spike:
            kind, detail = "spike", self.monitors[check.update].spike_detail(value, mean, std)
        else:
            kind, detail = "nan" if any_nan else "spike", "on another rank"
        return Fault(kind, check.step, f"{check.update} {detail}")
