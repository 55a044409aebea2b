"""The Video DC-AE's training objective (docs/recipe.md §2), as updates of the one training loop.

Phase 1 (steps < phase1_steps): L1 + w_p · LPIPS (+ w_d · DINOv2 distillation).
Phase 2: the same plus w_a · hinge generator loss from a 3D discriminator, which then takes its
own AdamW step on hinge_d(real, detached reconstruction). No KL term: the DC-AE is not
variational.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from osora.models.dcae import DCAE
from osora.models.losses import hinge_d_loss, hinge_g_loss
from osora.train.checkpoint import ModelOptimState, full_state_dict
from osora.train.ema import EMA
from osora.train.loop import Update


@dataclass(frozen=True)
class AELossWeights:
    perceptual: float  # paper 0.5
    adversarial: float  # paper 0.05
    distill: float
    phase1_steps: int  # the discriminator joins after these


def adamw(params, lr: float, betas: tuple[float, float], eps: float, weight_decay: float):
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class AEObjective:
    """Updates for one AE step. Optional parts are None when off: `perceptual` (an LPIPS),
    `discriminator` with `disc_optimizer`, `distill` (a LatentDistillation head, trained with the
    AE) with its frozen `teacher` and the encoder `distill_stage` it aligns."""

    def __init__(
        self,
        ae: DCAE,
        optimizer: torch.optim.Optimizer,
        weights: AELossWeights,
        *,
        perceptual: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        disc_optimizer: torch.optim.Optimizer | None = None,
        distill: nn.Module | None = None,
        teacher: nn.Module | None = None,
        distill_stage: int = 2,
        ema: EMA | None = None,
    ):
        if (discriminator is None) != (disc_optimizer is None):
            raise ValueError("a discriminator needs its own optimizer, and vice versa")
        if (distill is None) != (teacher is None):
            raise ValueError("distillation needs both the student head and the teacher")
        self.ae, self.optimizer, self.w = ae, optimizer, weights
        self.perceptual, self.discriminator, self.disc_optimizer = (
            perceptual, discriminator, disc_optimizer)
        self.distill, self.teacher, self.distill_stage = distill, teacher, distill_stage
        self.ema = ema
        self.ae_params = [p for p in ae.parameters() if p.requires_grad]
        if distill is not None:
            self.ae_params += list(distill.parameters())

    def adversarial(self, step: int) -> bool:
        return (self.discriminator is not None and self.w.adversarial > 0
                and step >= self.w.phase1_steps)

    def updates(self, batch: torch.Tensor, step: int) -> Iterator[Update]:
        x = batch  # (B, 3, T, H, W) in [-1, 1]
        adversarial = self.adversarial(step)
        out: dict[str, torch.Tensor] = {}

        def ae_loss() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            if self.distill is not None:
                z, features = self.ae.encode_with_features(x, self.distill_stage)
            else:
                z, features = self.ae.encode(x), None
            recon = self.ae.decode(z)  # (B, 3, T, H, W)
            out["recon"] = recon.detach()
            l1 = (recon - x).abs().mean()
            loss, metrics = l1, {"l1": l1.detach()}  # read at logging steps only
            if self.perceptual is not None and self.w.perceptual > 0:
                p = self.perceptual(recon, x).mean()  # per-frame LPIPS, averaged
                loss = loss + self.w.perceptual * p
                metrics["lpips"] = p.detach()
            if features is not None:
                d = self.distill(features, x, self.teacher)
                loss = loss + self.w.distill * d
                metrics["distill"] = d.detach()
            if adversarial:
                # This also leaves gradients on the discriminator; its own update zeroes them
                # first. (Toggling requires_grad instead does not reach FSDP2's gathered
                # parameters.)
                g = hinge_g_loss(self.discriminator(recon))
                loss = loss + self.w.adversarial * g
                metrics["g_hinge"] = g.detach()
            return loss, metrics

        yield Update("ae", self.optimizer, self.ae_params, ae_loss, ema=self.ema)
        if adversarial:
            def disc_loss() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                real = self.discriminator(x)
                fake = self.discriminator(out["recon"])
                return hinge_d_loss(real, fake), {
                    "d_real": real.mean().detach(), "d_fake": fake.mean().detach()}

            yield Update("disc", self.disc_optimizer, list(self.discriminator.parameters()),
                         disc_loss)

    def exported_weights(self) -> dict[str, torch.Tensor]:
        """The AE's full weights to export (the EMA's when on), on rank 0 (a collective)."""
        if self.ema is None:
            return full_state_dict(self.ae)
        with self.ema.swapped_in():
            return full_state_dict(self.ae)

    def state(self) -> dict[str, Any]:
        ae_modules = nn.ModuleDict({"ae": self.ae})
        if self.distill is not None:
            ae_modules["distill"] = self.distill
        state: dict[str, Any] = {"ae": ModelOptimState(ae_modules, {"ae": self.optimizer})}
        if self.discriminator is not None:
            state["disc"] = ModelOptimState(self.discriminator, {"disc": self.disc_optimizer})
        if self.ema is not None:
            state["ema"] = self.ema
        return state
