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

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from osora.train import checkpoint
from osora.train.ema import EMA
from osora.train.parallel import mean_over_ranks

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


@dataclass
class LoopResult:
    steps_run: int  # in this process (fewer than settings.steps after a resume)
    resumed_from: int | None
    seconds: float
    last: dict[str, float] = field(default_factory=dict)  # the last logged metrics


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
) -> LoopResult:
    """Run steps up to `settings.steps`, resuming from the newest checkpoint in
    `checkpoint_dir` if there is one; `log(metrics, step)` gets rank-averaged metrics on
    rank 0 every `log_every` steps and at the last step."""
    state = objective.state()
    start, resumed = 0, None
    if checkpoint_dir is not None and (found := checkpoint.latest(checkpoint_dir)) is not None:
        start = resumed = checkpoint.load(found, state)

    autocast = (
        torch.autocast(torch.device(settings.device).type, dtype=torch.bfloat16)
        if settings.precision == "bf16" else nullcontext()
    )
    saver = (checkpoint.AsyncSaver(checkpoint_dir)
             if checkpoint_dir is not None and settings.async_checkpoint else None)
    began = time.perf_counter()
    window: dict[str, list[float]] = {}
    window_start, window_steps = time.perf_counter(), 0
    last: dict[str, float] = {}
    for step in range(start, settings.steps):
        # Randomness inside the step (dropout, noise draws) depends only on (seed, rank, step),
        # so a resumed run repeats the uninterrupted one without saving generator states.
        torch.manual_seed(hash((settings.seed, rank, step)) % 2**63)
        batch = batch_for(step)
        factor = lr_factor(step, settings)
        for update in objective.updates(batch, step):
            for group in update.optimizer.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
            update.optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss, metrics = update.loss()
            if not torch.isfinite(loss.detach()):
                raise NonFiniteLoss(
                    f"{update.name} loss is {loss.item()} at step {step}; lower the learning "
                    "rate, or check the batch (a NaN input?)"
                )
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(update.parameters, settings.grad_clip)
            update.optimizer.step()
            if update.ema is not None:
                update.ema.update()
            metrics = {f"{update.name}/loss": loss.item(),
                       f"{update.name}/grad_norm": _full(norm), **metrics}
            for key, value in metrics.items():
                window.setdefault(key, []).append(float(value))

        done, window_steps = step + 1, window_steps + 1
        if done % settings.log_every == 0 or done == settings.steps:
            means = {k: sum(v) / len(v) for k, v in window.items()}
            means["step_time_s"] = (time.perf_counter() - window_start) / window_steps
            last = mean_over_ranks(means)
            if log is not None and rank == 0:
                log(last, done)
            window, window_start, window_steps = {}, time.perf_counter(), 0
        if checkpoint_dir is not None and (
            done % settings.checkpoint_every == 0 or done == settings.steps
        ):
            if saver is not None:
                saver.save(done, state)
            else:
                checkpoint.save(checkpoint_dir, done, state)
    if saver is not None:
        saver.wait()  # the last checkpoint is complete before the run reports done
    return LoopResult(
        steps_run=settings.steps - start,
        resumed_from=resumed,
        seconds=time.perf_counter() - began,
        last=last,
    )


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
