"""The one training loop: every model osora trains (the Video DC-AE now, the MMDiT next) steps
through `train`.

A step takes the batch for that step and applies the objective's updates in order. An `Update`
is one optimizer stepping on one loss: AE training yields the autoencoder's update and, in its
adversarial phase, the discriminator's; DiT training yields one. The loop owns what every run
shares: mixed precision, gradient clipping, the EMA, NaN checks, metric logging, resumable
checkpoints every `checkpoint_every` steps and resuming from the newest one.

Batches are a function of the step (`batch_for(step)`), not a stateful iterator, and the global
RNG is reseeded from (seed, rank, step) at each step, so a resumed run sees exactly the batches
and random draws the uninterrupted run would have seen.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from osora.progress import Progress
from osora.train import checkpoint
from osora.train.ema import EMA
from osora.train.parallel import max_over_ranks, mean_over_ranks
from osora.train.recovery import (
    Fault,
    LossMonitor,
    RecoverySettings,
    RestartRequired,
    StepTimer,
    Watchdog,
)
from osora.train.throughput import memory_metrics, peak_tflops, window_metrics

LossFn = Callable[[], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Update:
    """One optimizer step: `loss()` is evaluated, backpropagated, and the gradients of
    `parameters` are clipped to the loop's max norm before `optimizer.step()`."""

    name: str
    optimizer: torch.optim.Optimizer
    parameters: list[nn.Parameter]
    loss: LossFn
    ema: EMA | None = None  # averaged after this update's step


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
    device: str = "cpu"
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
    progress_bar, desc=stage)`), started at the resumed step and advanced by every step with
    its loss (this rank's, unaveraged)."""
    rec = settings.recovery
    if rec.max_recoveries and checkpoint_dir is None:
        raise ValueError("recovery restores checkpoints: give checkpoint_dir")
    # The steps skipped after a fault travel in the checkpoints, so a resumed run skips them too
    loop_state = checkpoint.ValueState({"skipped": ()})
    state = {**objective.state(), "_loop": loop_state}
    for value in state.values():  # base learning rates, so every checkpoint has the same keys
        for optimizer in getattr(value, "optimizers", {}).values():
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
    start, resumed = 0, None
    if checkpoint_dir is not None and (found := checkpoint.latest(checkpoint_dir)) is not None:
        start = resumed = checkpoint.load(found, state)

    autocast = (
        torch.autocast(torch.device(settings.device).type, dtype=torch.bfloat16)
        if settings.precision == "bf16" else nullcontext()
    )
    saver = (checkpoint.AsyncSaver(checkpoint_dir)
             if checkpoint_dir is not None and settings.async_checkpoint else None)

    def save(step: int) -> None:
        if saver is not None:
            saver.save(step, state)
        else:
            checkpoint.save(checkpoint_dir, step, state)

    def event(kind: str, step: int, detail: str) -> None:
        if on_event is not None:
            on_event({"kind": kind, "step": step, "detail": detail})

    # With recovery on, a fresh run also saves after its first step: something to go back to
    # before the first periodic checkpoint. (Not before it: saving a fresh optimizer makes
    # torch's state-dict API take a zero-lr step, which would count in Adam's bias correction.)
    first_save = start + 1 if rec.max_recoveries and resumed is None else None
    monitors: dict[str, LossMonitor] = {}  # one per update: the AE's and the critic's differ
    timer = StepTimer(rec)
    watchdog = Watchdog(rec.hang_seconds, on_event) if rec.hang_seconds > 0 else None
    recoveries = 0
    began = time.perf_counter()
    window: dict[str, list[float]] = {}
    window_start, window_steps = time.perf_counter(), 0
    last: dict[str, float] = {}
    step = start
    bar = (progress(total=settings.steps, initial=start) if progress is not None and rank == 0
           else Progress())
    if settings.gc_every:
        gc.disable()
    try:
        while step < settings.steps:
            if watchdog is not None:
                watchdog.beat(step)
            step_start = time.perf_counter()
            metrics = {}
            if step not in loop_state["skipped"]:
                try:
                    metrics = _step(objective, batch_for, settings, step,
                                    rank if data_rank is None else data_rank, autocast,
                                    monitors)
                except Fault as fault:
                    if saver is not None:
                        saver.wait()
                    found = checkpoint.latest(checkpoint_dir) if checkpoint_dir else None
                    if recoveries >= rec.max_recoveries or found is None:
                        why = "" if found or not rec.max_recoveries else " (no checkpoint yet)"
                        raise NonFiniteLoss(f"{fault.detail} at step {step}{why}; lower the "
                                            "learning rate, or check the batch (a NaN "
                                            "input?)") from None
                    recoveries += 1
                    event(fault.kind, step, fault.detail)
                    back = checkpoint.load(found, state)
                    loop_state["skipped"] = (*loop_state["skipped"], step)
                    event("restored", step, f"from the checkpoint of step {back}; step {step}'s "
                          f"batch is skipped ({recoveries} of {rec.max_recoveries} recoveries)")
                    bar.update(back - step)
                    step = back
                    continue
                for key, value in metrics.items():
                    window.setdefault(key, []).append(float(value))
            slow = timer.slow(time.perf_counter() - step_start)
            if slow is not None:
                event("slow", step, slow)
                if timer.in_a_row >= rec.slow_patience:
                    raise RestartRequired(f"{timer.in_a_row} slow steps in a row up to step "
                                          f"{step}; restart the run (it resumes)")

            done, window_steps = step + 1, window_steps + 1
            loss = _main_loss(metrics)
            bar.update(1, **({"loss": metrics[loss]} if loss else {}))
            if done % settings.log_every == 0 or done == settings.steps:
                last = _window_metrics(window, time.perf_counter() - window_start,
                                       window_steps, settings.device)
                if log is not None and rank == 0:
                    log(last, done)
                window, window_start, window_steps = {}, time.perf_counter(), 0
            if checkpoint_dir is not None and (
                done % settings.checkpoint_every == 0 or done == settings.steps
                or done == first_save
            ):
                save(done)
            step = done
            if settings.gc_every and done % settings.gc_every == 0:
                gc.collect(1)  # the young generations: cheap, and where cycles are born
        if saver is not None:
            saver.wait()  # the last checkpoint is complete before the run reports done
    finally:
        bar.close()
        if watchdog is not None:
            watchdog.close()
        if settings.gc_every:
            gc.enable()
    return LoopResult(
        steps_run=settings.steps - start,
        resumed_from=resumed,
        seconds=time.perf_counter() - began,
        last=last,
    )


def _step(objective: Objective, batch_for: Callable[[int], Any], settings: LoopSettings,
          step: int, data_rank: int, autocast, monitors: dict[str, LossMonitor]
          ) -> dict[str, float]:
    """One step's updates; their metrics, plus the batch's making time and work as _data_s,
    _tokens, _flops (when the objective reports it: `work(batch)`). Raises Fault when an
    update's loss is NaN or a spike on any rank, before that update is applied (an earlier
    update of the step may have been: recovery restores a checkpoint, so that is harmless)."""
    # Randomness inside the step (dropout, noise draws) depends only on (seed, rank, step),
    # so a resumed run repeats the uninterrupted one without saving generator states.
    torch.manual_seed(hash((settings.seed, data_rank, step)) % 2**63)
    data_start = time.perf_counter()
    batch = batch_for(step)
    tokens, flops = objective.work(batch) if hasattr(objective, "work") else (0, 0.0)
    out: dict[str, float] = {"_data_s": time.perf_counter() - data_start, "_tokens": tokens,
                             "_flops": flops}
    factor = lr_factor(step, settings)
    for update in objective.updates(batch, step):
        for group in update.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
        update.optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, metrics = update.loss()
        value = loss.item()
        monitor = monitors.setdefault(update.name, LossMonitor(settings.recovery))
        fault = _agreed(monitor.fault(value))
        if fault is not None:
            raise Fault(fault[0], step, f"{update.name} {fault[1]}")
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(update.parameters, settings.grad_clip)
        update.optimizer.step()
        if update.ema is not None:
            update.ema.update()
        out.update({f"{update.name}/loss": value, f"{update.name}/grad_norm": _full(norm),
                    **metrics})
    return out


def _window_metrics(window: dict[str, list[float]], seconds: float, steps: int,
                    device: str) -> dict[str, float]:
    """A logging window's metrics, averaged over ranks: the updates' own ("dit/loss", …,
    step_time_s) and torchtitan's names (osora.train.throughput) for the same numbers."""
    work = {k: sum(window.pop(k, [])) for k in ("_data_s", "_tokens", "_flops")}
    means = {k: sum(v) / len(v) for k, v in window.items()}
    means["step_time_s"] = seconds / max(1, steps)
    means.update(window_metrics(seconds=seconds, steps=steps, data_seconds=work["_data_s"],
                                tokens=int(work["_tokens"]), flops=work["_flops"],
                                peak=peak_tflops(device)))
    means.update(memory_metrics(device))
    loss = _main_loss(means)
    if loss:
        means["loss_metrics/global_avg_loss"] = means[loss]
        means["grad_norm"] = means[loss.replace("/loss", "/grad_norm")]
    out = mean_over_ranks(means)
    if loss:
        out["loss_metrics/global_max_loss"] = max_over_ranks(means[loss])
    return out


def _main_loss(metrics: dict[str, float]) -> str | None:
    """The key of the run's loss: the first update's (the AE's, not its critic's)."""
    return next((k for k in metrics if k.endswith("/loss")), None)


def _agreed(fault: tuple[str, str] | None) -> tuple[str, str] | None:
    """The fault if any rank has one (every rank then takes the same branch)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return fault
    flags = torch.tensor([fault is not None and fault[0] == "nan",
                          fault is not None and fault[0] == "spike"], dtype=torch.int32)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    if fault is None and bool(flags.any()):
        kind = "nan" if flags[0] else "spike"
        return kind, "on another rank"
    return fault


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


def _full(norm: torch.Tensor) -> float:
    """A gradient norm as a float (FSDP2 returns a replicated DTensor)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
