"""The MMDiT's flow-matching objective (docs/recipe.md §4), as the update of a training-loop step.

A batch holds clean latents of one bucket with their text features (and optionally an image /
video condition built by osora.diffusion.conditioning). The step draws t (logit-normal, shifted
by the bucket's α) and the noise, predicts the velocity and takes the MSE to noise − data over
the generated frames; conditioned frames are left out of the loss, unless
`loss_on_conditioned` (params/dit.yaml conditioning.loss_on_conditioned) keeps every frame in it.

Gradient accumulation (`micro_batches` N): the step's batch holds N micro-batches' samples
(osora.train.dit_batches builds it N× as large). t and the noise are drawn for the whole batch,
as without accumulation, then the batch is split along dim 0 and each micro-batch's loss runs
and backpropagates in turn, weighted by its share of the samples: the update equals one step on
the whole batch. Under FSDP2 the gradients are reduced over ranks only in the last micro-batch's
backward; before it they accumulate unsharded on each rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from osora.diffusion.conditioning import generated_frames
from osora.diffusion.flow import FlowInputs, flow_inputs, flow_loss
from osora.models.mmdit import train_step_flops
from osora.train.checkpoint import ModelOptimState
from osora.train.ema import EMA
from osora.train.loop import Update
from osora.train.parallel import ContextLayout


@dataclass
class LatentBatch:
    latent: torch.Tensor  # (B, C, T, H, W) clean latents, the DiT's scale
    text: torch.Tensor  # (B, L, D_seq)
    pooled: torch.Tensor  # (B, D_vec)
    text_mask: torch.Tensor | None = None  # (B, L) bool
    cond: torch.Tensor | None = None  # (B, C + 1, T, H, W): [mask, mask · latent]

    def split(self, n: int) -> list[LatentBatch]:
        """The batch as n micro-batches of B / n samples, in order (views along dim 0)."""
        b = self.latent.shape[0]
        if b % n:
            raise ValueError(f"a batch of {b} samples does not split into {n} micro-batches: "
                             f"make the step's batch {n}× the bucket's batch size (LatentBatches"
                             f" micro_batches={n}, the stage's grad_accum)")
        parts = {f.name: (None,) * n if getattr(self, f.name) is None
                 else getattr(self, f.name).tensor_split(n) for f in fields(self)}
        return [LatentBatch(**{k: v[i] for k, v in parts.items()}) for i in range(n)]


class FlowObjective:
    """context: the job's context-parallel layout (None: each rank runs whole sequences); its
    group runs the MMDiT with the sequence split, through the attention the parallelize step
    bound to the group (osora.train.context_parallel). micro_batches: gradient accumulation's N
    (module doc); every step's batch must hold a multiple of N samples. loss_on_conditioned:
    the frames a condition gives count in the loss too (False: only the generated frames)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, patch_size: int,
                 sigma_min: float = 0.0, ema: EMA | None = None,
                 context: ContextLayout | None = None, micro_batches: int = 1,
                 loss_on_conditioned: bool = False):
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be ≥ 1 (the stage's grad_accum), got "
                             f"{micro_batches}")
        self.model, self.optimizer, self.patch_size = model, optimizer, patch_size
        self.sigma_min, self.ema, self.micro_batches = sigma_min, ema, micro_batches
        self.loss_on_conditioned = loss_on_conditioned
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.cp = 1 if context is None else context.cp
        self.forward = model
        if self.cp > 1:
            from osora.train.context_parallel import context_parallel_forward

            self.forward = partial(context_parallel_forward, model)

    def updates(self, batch: LatentBatch, step: int) -> Iterator[Update]:
        # The loop reseeds the global RNG per step; a CPU generator drawn from it keeps t and the
        # noise identical on any device.
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        # the whole step's draws (t for every sample, then the noise), however it is split
        x = flow_inputs(batch.latent, patch_size=self.patch_size, generator=generator,
                        sigma_min=self.sigma_min)
        n = self.micro_batches
        if n == 1:
            yield Update("dit", self.optimizer, self.params, partial(self._loss, batch, x),
                         ema=self.ema)
            return
        # FSDP2 reduce-scatters the accumulated gradients in the last micro-batch's backward
        fsdp = isinstance(self.model, FSDPModule)
        total = batch.latent.shape[0]
        micro = [(part.latent.shape[0] / total,
                  partial(self._loss, part, inputs, sync=k == n - 1 if fsdp else None))
                 for k, (part, inputs) in enumerate(zip(batch.split(n), _split(x, n)))]
        yield Update("dit", self.optimizer, self.params, None, ema=self.ema, micro=micro)

    def _loss(self, batch: LatentBatch, x: FlowInputs, sync: bool | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The flow loss of `batch` at the drawn inputs `x`; `sync`: FSDP2 reduces gradients
        over ranks in the backward that follows (None: left as it is)."""
        if sync is not None:
            self.model.set_requires_gradient_sync(sync)
        v = self.forward(x.x_t, x.t, batch.text, batch.pooled, text_mask=batch.text_mask,
                         cond=batch.cond)  # (B, C, T, H, W)
        # (B, T) True for the frames in the loss; None: every frame
        leave_out = batch.cond is not None and not self.loss_on_conditioned
        mask = generated_frames(batch.cond) if leave_out else None
        value = flow_loss(v, batch.latent, x.noise, mask, self.sigma_min)
        return value, {"shift": x.shift, "t_mean": x.t.mean().detach()}  # no host read

    def work(self, batch: LatentBatch) -> tuple[int, float]:
        """(tokens, FLOPs) of this rank's part of one step on `batch` (all its micro-batches),
        for throughput and MFU (a context-parallel rank does 1/cp of its group's)."""
        cfg = self.model.config
        b, _, t, h, w = batch.latent.shape
        video = t * (h // cfg.patch_size) * (w // cfg.patch_size)
        tokens = b * (video + batch.text.shape[1])
        return tokens // self.cp, train_step_flops(cfg, b, video, batch.text.shape[1]) / self.cp

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"dit": ModelOptimState(self.model, {"dit": self.optimizer})}
        if self.ema is not None:
            state["ema"] = self.ema
        return state


def _split(x: FlowInputs, n: int) -> list[FlowInputs]:
    """The step's drawn inputs as n micro-batches' (views along dim 0, as LatentBatch.split)."""
    return [FlowInputs(x_t, t, noise, x.shift) for x_t, t, noise in
            zip(x.x_t.tensor_split(n), x.t.tensor_split(n), x.noise.tensor_split(n))]
