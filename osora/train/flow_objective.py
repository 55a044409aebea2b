"""The MMDiT's flow-matching objective (RECIPE §4), as the one update of a training-loop step.

A batch holds clean latents of one bucket with their text features (and optionally an image /
video condition built by osora.diffusion.conditioning). The step draws t (logit-normal, shifted
by the bucket's α) and the noise, predicts the velocity and takes the MSE to noise − data over
the generated frames; conditioned frames are left out of the loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from osora.diffusion.conditioning import generated_frames
from osora.diffusion.flow import flow_inputs, flow_loss
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


class FlowObjective:
    """context: the job's context-parallel layout (None: each rank runs whole sequences); its
    group runs the MMDiT with the sequence split, through the attention the parallelize step
    bound to the group (osora.train.context_parallel)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, patch_size: int,
                 sigma_min: float = 0.0, ema: EMA | None = None,
                 context: ContextLayout | None = None):
        self.model, self.optimizer, self.patch_size = model, optimizer, patch_size
        self.sigma_min, self.ema = sigma_min, ema
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

        def loss() -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
            x = flow_inputs(batch.latent, patch_size=self.patch_size, generator=generator,
                            sigma_min=self.sigma_min)
            v = self.forward(x.x_t, x.t, batch.text, batch.pooled, text_mask=batch.text_mask,
                             cond=batch.cond)  # (B, C, T, H, W)
            mask = generated_frames(batch.cond) if batch.cond is not None else None
            value = flow_loss(v, batch.latent, x.noise, mask, self.sigma_min)
            return value, {"shift": x.shift, "t_mean": x.t.mean().detach()}  # no host read

        yield Update("dit", self.optimizer, self.params, loss, ema=self.ema)

    def work(self, batch: LatentBatch) -> tuple[int, float]:
        """(tokens, FLOPs) of this rank's part of one step on `batch`, for throughput and MFU
        (a context-parallel rank does 1/cp of its group's)."""
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
