"""The one training loop: every model osora trains (the Video DC-AE now, the MMDiT next) steps
through `train`.

A step takes the batch for that step and applies the objective's updates in order. An `Update`
is one optimizer stepping on one loss: AE training yields the autoencoder's update and, in its
adversarial phase, the discriminator's; DiT training yields one. With gradient accumulation the
update's loss comes as weighted micro-batch losses, each run and backpropagated in turn (only
one micro-batch's activations live at a time); their gradients add up to the whole batch's
before the one clip and optimizer step. The loop owns what every run
shares: mixed precision, gradient clipping, the EMA, NaN/spike recovery, metric logging,
resumable checkpoints every `checkpoint_every` steps and resuming from the newest one.

Batches are a function of the step (`batch_for(step)`), not a stateful iterator, and the global
RNG is reseeded from (seed, rank, step) at each step, so a resumed run sees exactly the batches
and random draws the uninterrupted run would have seen.

A step reads nothing back from the device: losses, gradient norms and the objectives' metrics
stay device tensors until the logging step (osora.train.metrics_window), and the NaN/spike
checks are read a step late or before a log or checkpoint (osora.train.loss_checks). Every
collective takes tensors on the compute device (nccl has no CPU tensors).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from osora.progress import Progress
from osora.train import checkpoint
from osora.train.ema import EMA
from osora.train.loop_checkpoints import LoopCheckpoints
from osora.train.loss_checks import LossChecks
from osora.train.metrics_window import MetricsWindow, main_loss
from osora.train.recovery import (
    Fault,
    RecoverySettings,
    RestartRequired,
    StepTimer,
    Watchdog,
)

# The loss (a device scalar) and the objective's own metrics: detached device tensors, read
# only at logging steps, or host floats
LossFn = Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor | float]]]
# A micro-batch's share of the update's samples and its loss (gradient accumulation)
MicroLoss = tuple[float, LossFn]


@dataclass
class Update:
    """One optimizer step: `loss()` is evaluated, backpropagated, and the gradients of
    `parameters` are clipped to the loop's max norm before `optimizer.step()`.

    Gradient accumulation gives `micro` instead of `loss`: (weight, loss) per micro-batch, each
    loss evaluated and weight · loss backpropagated in turn, so the gradients add up before the
    one clip and step. The update's loss (logged, checked) is Σ weight · loss: with per-sample
    mean losses and weights b_k / B, the loss of the whole batch of B samples; its metrics are
    the micro-batches' weighted likewise."""

    name: str
    optimizer: torch.optim.Optimizer
    parameters: list[nn.Parameter]
    loss: LossFn | None
    ema: EMA | None = None  # averaged after this update's step
    micro: Sequence[MicroLoss] = ()

    def __post_init__(self) -> None:
        if (self.loss is None) == (not self.micro):
            raise ValueError(f"update {self.name!r}: give either loss or micro (weighted "
                             "micro-batch losses), not both or neither")

    def weighted_losses(self) -> Sequence[MicroLoss]:
        return self.micro or ((1.0, self.loss),)


class Objective(Protocol):
    def updates(self, batch: Any, step: int) -> Iterator[Update]:
        """The updates of one step, in order (a generator: later ones may use what earlier
        ones computed, e.g. the discriminator the generator's reconstruction)."""
        ...

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint must hold to resume (torch Stateful values)."""
        ...


@dataclass(frozen=True)
class LoopSettings:
    steps: int  # total steps of the run (a resumed run stops at the same step)
    grad_clip: float  # max global gradient norm per update
    log_every: int
    checkpoint_every: int
    precision: str = "fp32"  # "bf16": autocast to bfloat16
    device: str = "cpu"  # the model's: the metrics and the loop's collectives run there
    seed: int = 0  # with the rank and step, seeds the step's randomness (dropout etc.)
    warmup_steps: int = 0  # learning rates rise linearly from 0 over these steps
    schedule: str = "constant"  # after warm-up: "constant", or "cosine" decay to 0 at `steps`
    # piecewise-constant drops on top: ((step, factor), ...), the factor from that step on
    # (Open-Sora's 5e-5 → 3e-5 at 40k is ((40000, 0.6),))
    lr_drops: tuple[tuple[int, float], ...] = ()
    async_checkpoint: bool = False  # write checkpoints in the background (checkpoint.AsyncSaver)
    recovery: RecoverySettings = RecoverySettings()  # NaN/spike/slow/hang handling (recovery.py)
    # Python's cyclic GC off during the run, collected every this many steps (0: left alone):
    # a collection of the whole heap mid-step stalls every rank's collectives
    gc_every: int = 0


@dataclass
class LoopResult:
    steps_run: int  # in this process (fewer than settings.steps after a resume)
    resumed_from: int | None
    seconds: float
    last: dict[str, float] = field(default_factory=dict)  # the last logged metrics

    def summary(self) -> dict[str, float]:
        """What a stage reports (DVC metrics, MLflow): steps done in all, where it resumed,
        seconds in this process, and the last logged window ("/" → "_" for flat keys)."""
        return {
            "steps": self.steps_run + (self.resumed_from or 0),
            "resumed_from": self.resumed_from or 0,
            "train_seconds": round(self.seconds, 2),
            **{k.replace("/", "_"): round(v, 6) for k, v in self.last.items()},
        }


class NonFiniteLoss(FloatingPointError):
    pass


def train(
    objective: Objective,
    batch_for: Callable[[int], Any],
    settings: LoopSettings,
    *,
    checkpoint_dir: Path | None = None,
    log: Callable[[dict[str, float], int], None] | None = None,
    rank: int = 0,
    data_rank: int | None = None,
    on_event: Callable[[dict], None] | None = None,
    progress: Callable[..., Progress] | None = None,
) -> LoopResult:
    """Run steps up to `settings.steps`, resuming from the newest checkpoint in
    `checkpoint_dir` if there is one; `log(metrics, step)` gets rank-averaged metrics on
    rank 0 every `log_every` steps and at the last step; `on_event(event)` gets every
    recovery event (osora.train.recovery) on every rank. `data_rank` (default: `rank`) seeds
    the step's random draws: the ranks of a context-parallel group pass the same one.
    `progress(total=, initial=)` opens a display on rank 0 (e.g. `partial(osora.progress.
    progress_bar, desc=stage)`), started at the resumed step and advanced by every step; it
    shows the loss at logging steps (the logged one: the window's, averaged over ranks)."""
    rec = settings.recovery
    if rec.max_recoveries and checkpoint_dir is None:
        raise ValueError("recovery restores checkpoints: give checkpoint_dir")
    run = _Run(objective, batch_for, settings, checkpoint_dir,
               rank if data_rank is None else data_rank, on_event)
    bar = (progress(total=settings.steps, initial=run.start) if progress is not None and rank == 0
           else Progress())
    watchdog = Watchdog(rec.hang_seconds, on_event) if rec.hang_seconds > 0 else None
    began = time.perf_counter()
    if settings.gc_every:
        gc.disable()
    try:
        last = run.all_steps(bar, watchdog, log if rank == 0 else None)
        run.checkpoints.wait()  # the last checkpoint is complete before the run reports done
    finally:
        bar.close()
        if watchdog is not None:
            watchdog.close()
        if settings.gc_every:
            gc.enable()
    return LoopResult(steps_run=settings.steps - run.start, resumed_from=run.resumed,
                      seconds=time.perf_counter() - began, last=last)


class _Run:
    """One `train` call's state between steps: the checkpoints, the logging window, the loss
    checks not read yet, the recoveries made."""

    def __init__(self, objective: Objective, batch_for: Callable[[int], Any],
                 settings: LoopSettings, checkpoint_dir: Path | None, data_rank: int,
                 on_event: Callable[[dict], None] | None):
        self.objective, self.batch_for, self.settings = objective, batch_for, settings
        self.data_rank, self.on_event = data_rank, on_event
        self.device = torch.device(settings.device)
        # The steps skipped after a fault travel in the checkpoints, so a resumed run skips them
        self.loop_state = checkpoint.ValueState({"skipped": ()})
        state = {**objective.state(), "_loop": self.loop_state}
        _set_initial_lrs(state)
        self.checkpoints = LoopCheckpoints(checkpoint_dir, state, every=settings.checkpoint_every,
                                           last=settings.steps,
                                           background=settings.async_checkpoint)
        self.resumed = self.checkpoints.resume()
        self.start = self.resumed or 0
        # With recovery on, a fresh run also saves after its first step: something to go back
        # to before the first periodic checkpoint. (Not before it: saving a fresh optimizer makes
        # torch's state-dict API take a zero-lr step, which would count in Adam's bias correction.)
        if settings.recovery.max_recoveries and self.resumed is None:
            self.checkpoints.first_save = self.start + 1
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if settings.precision == "bf16" else nullcontext()
        )
        self.checks = LossChecks(settings.recovery)
        self.timer = StepTimer(settings.recovery)
        self.window = MetricsWindow(self.device)
        self.recoveries = 0

    def all_steps(self, bar: Progress, watchdog: Watchdog | None,
                  log: Callable[[dict[str, float], int], None] | None) -> dict[str, float]:
        """Every step from the start on; the last logged metrics."""
        s, step, last = self.settings, self.start, {}
        while step < s.steps:
            if watchdog is not None:
                watchdog.beat(step)
            began = time.perf_counter()
            self.window.add(step, self._take(step))
            done = step + 1
            log_due = done % s.log_every == 0 or done == s.steps
            save_due = self.checkpoints.due(done)
            # Read a step late (never waiting for the step just queued), and all before a log or
            # a checkpoint: a checkpoint never holds a faulty update.
            fault = self.checks.first_fault(before=done if log_due or save_due else step)
            if fault is not None:
                back = self._recover(fault)
                bar.update(back - step)
                step = back
                continue
            self._time(step, time.perf_counter() - began)
            shown = {}
            if log_due:
                last, self.window = self.window.report(), MetricsWindow(self.device)
                if log is not None:
                    log(last, done)
                shown = {"loss": last[key]} if (key := main_loss(last)) else {}
            bar.update(1, **shown)
            if save_due:
                self.checkpoints.save(done)
            step = done
            if s.gc_every and done % s.gc_every == 0:
                gc.collect(1)  # the young generations: cheap, and where cycles are born
        return last

    def _take(self, step: int) -> dict[str, torch.Tensor | float]:
        """Queue step `step`'s updates: its metrics, with the batch's making time and work as
        _data_s, _tokens, _flops (when the objective reports it: `work(batch)`); {} when the
        step's batch is skipped."""
        if step in self.loop_state["skipped"]:
            return {}
        # Randomness inside the step (dropout, noise draws) depends only on (seed, rank, step),
        # so a resumed run repeats the uninterrupted one without saving generator states.
        torch.manual_seed(hash((self.settings.seed, self.data_rank, step)) % 2**63)
        began = time.perf_counter()
        batch = self.batch_for(step)
        data_s = time.perf_counter() - began
        work = getattr(self.objective, "work", None)
        tokens, flops = work(batch) if work is not None else (0, 0.0)
        return {"_data_s": data_s, "_tokens": tokens, "_flops": flops,
                **self._updates(batch, step)}

    def _updates(self, batch: Any, step: int) -> dict[str, torch.Tensor | float]:
        """Apply the step's updates, each loss checked but not read (`LossChecks`)."""
        out: dict[str, torch.Tensor | float] = {}
        factor = lr_factor(step, self.settings)
        for update in self.objective.updates(batch, step):
            for group in update.optimizer.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
            update.optimizer.zero_grad(set_to_none=True)
            loss, metrics = self._backward(update)
            # Checked once per update, not per micro-batch: the spike statistics stay those of
            # the whole batch's loss (and a non-finite micro-loss makes the sum non-finite).
            self.checks.check(step, update.name, loss)
            norm = torch.nn.utils.clip_grad_norm_(update.parameters, self.settings.grad_clip)
            update.optimizer.step()
            if update.ema is not None:
                update.ema.update()
            out.update({f"{update.name}/loss": loss,
                        f"{update.name}/grad_norm": _full(norm, self.device), **metrics})
        return out

    def _backward(self, update: Update) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Evaluate and backpropagate the update's weighted losses in turn, gradients adding
        up; their weighted sum (detached, unread) and the metrics weighted likewise."""
        total: torch.Tensor | None = None
        metrics: dict[str, torch.Tensor | float] = {}
        for weight, loss_fn in update.weighted_losses():
            with self.autocast:
                loss, part = loss_fn()
            if loss.device.type != self.device.type:
                raise ValueError(f"{update.name}'s loss is on {loss.device} but LoopSettings."
                                 f"device is {self.settings.device!r}: set it to the model's "
                                 "device, where the loop's metrics and collectives run")
            (weight * loss).backward()  # weight 1.0 (no accumulation) is exact
            total = _add_weighted(total, weight, loss.detach())
            for key, value in part.items():
                metrics[key] = _add_weighted(metrics.get(key), weight, value)
        return total, metrics

    def _recover(self, fault: Fault) -> int:
        """Undo the faulty step and all after it: load the newest checkpoint (older than the
        fault: checks are read before every save) and skip the step's batch from then on.
        Returns the step to go on from; NonFiniteLoss when out of recoveries or checkpoints."""
        rec = self.settings.recovery
        found = self.checkpoints.newest()
        if self.recoveries >= rec.max_recoveries or found is None:
            why = "" if found or not rec.max_recoveries else " (no checkpoint yet)"
            raise NonFiniteLoss(f"{fault.detail} at step {fault.step}{why}; lower the learning "
                                "rate, or check the batch (a NaN input?)")
        self.recoveries += 1
        self._event(fault.kind, fault.step, fault.detail)
        back = self.checkpoints.load(found)
        self.loop_state["skipped"] = (*self.loop_state["skipped"], fault.step)
        self._event("restored", fault.step, f"from the checkpoint of step {back}; step "
                    f"{fault.step}'s batch is skipped ({self.recoveries} of "
                    f"{rec.max_recoveries} recoveries)")
        self.checks.discard()
        self.window.discard_from(back)
        return back

    def _time(self, step: int, seconds: float) -> None:
        """Report a slow step; RestartRequired after `slow_patience` in a row."""
        slow = self.timer.slow(seconds)
        if slow is not None:
            self._event("slow", step, slow)
            if self.timer.in_a_row >= self.settings.recovery.slow_patience:
                raise RestartRequired(f"{self.timer.in_a_row} slow steps in a row up to step "
                                      f"{step}; restart the run (it resumes)")

    def _event(self, kind: str, step: int, detail: str) -> None:
        if self.on_event is not None:
            self.on_event({"kind": kind, "step": step, "detail": detail})


def _set_initial_lrs(state: dict[str, Any]) -> None:
    """Record every optimizer's base learning rates, so every checkpoint has the same keys."""
    for value in state.values():
        for optimizer in getattr(value, "optimizers", {}).values():
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])


def lr_factor(step: int, settings: LoopSettings) -> float:
    """The multiplier of every optimizer's base learning rate at `step` (0-based)."""
    drop = 1.0
    for start, factor in sorted(settings.lr_drops):
        if step >= start:
            drop = factor
    if step < settings.warmup_steps:
        return drop * (step + 1) / settings.warmup_steps
    if settings.schedule == "constant":
        return drop
    if settings.schedule == "cosine":
        span = max(1, settings.steps - settings.warmup_steps)
        return drop * 0.5 * (1.0 + math.cos(math.pi * (step - settings.warmup_steps) / span))
    raise ValueError(f"unknown schedule {settings.schedule!r}; use 'constant' or 'cosine'")


def _add_weighted(acc: torch.Tensor | float | None, weight: float,
                  value: torch.Tensor | float) -> torch.Tensor | float:
    """acc + weight · value, or weight · value when acc is None (tensors stay unread)."""
    return weight * value if acc is None else acc + weight * value


def _full(norm: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A gradient norm as a plain tensor on the loop's device: FSDP2 returns a replicated
    DTensor, on the CPU when it offloads the gradients there (the metrics' all-reduce runs on
    the compute device: nccl takes no CPU tensors)."""
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return norm.detach().to(device)
