"""Rectified flow of Open-Sora 2.0 (docs/recipe.md §4): timesteps, the resolution shift, the loss.

Convention (the reference code's): t = 1 is pure noise, t = 0 is data.

    X_t = (1 − t)·X_0 + t·X_1,  X_1 ~ N(0, I)      the noisy latent
    v   = dX_t/dt = X_1 − X_0                      what the model predicts (velocity)

so sampling integrates from t = 1 down to 0: x ← x + (t_next − t)·v. The paper writes the
velocity as X_0 − X_1 (time running the other way); the two are the same up to sign. The
reference adds σ_min = 1e-5: X_t = (1 − t)·X_0 + (1 − (1 − σ_min)(1 − t))·X_1 with target
(1 − σ_min)·X_1 − X_0; `sigma_min` reproduces it (default 0, the paper's form).

Time shift (SD3-style): t ← α·t / (1 + (α − 1)·t) moves probability mass towards the noisy end,
more for larger videos, whose many correlated tokens keep more signal at a given noise level.
The reference fits α linearly in the number of tokens per latent frame L through (256, 1) and
(4096, 3) — `get_res_lin_function(x1=256, y1=1, x2=4096, y2=3)` in hpcaitech/Open-Sora
`opensora/utils/sampling.py`, i.e. α = L/1920 + 13/15 (≈ 0.8667) — times √T_lat for videos:

    α = (L/1920 + 13/15)·√T_lat,   L = (H_lat/p)·(W_lat/p)

The reference computes L as H_lat·W_lat // 4 in training (`scripts/diffusion/train.py`: patch 2
hard-coded) but H_lat·W_lat // p² at inference (`api_fn` in `sampling.py`), so a patch-1 model
(DC-AE) trains and samples with different shifts. Here one function serves both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# The reference's line through (tokens, α) = (256, 1) and (4096, 3): slope 1/1920, intercept 13/15.
_TOKENS_LO, _ALPHA_LO = 256, 1.0
_TOKENS_HI, _ALPHA_HI = 4096, 3.0


def resolution_shift(
    latent_frames: int, latent_height: int, latent_width: int, patch_size: int
) -> float:
    """The time-shift α for a latent of T×H×W and a spatial patch size p (docs/recipe.md §4).

    α = (L/1920 + 13/15)·√T with L = (H/p)·(W/p) tokens per latent frame; for images (T = 1) the
    √T factor is 1. The same value is used to shift training timesteps and the sampling schedule.
    Example: 256px 1:1, 129 frames, HunyuanVAE 4×8×8, patch 2 → latent 33×32×32, L = 256,
    α = √33 ≈ 5.74.
    """
    for name, value in (("latent_frames", latent_frames), ("latent_height", latent_height),
                        ("latent_width", latent_width), ("patch_size", patch_size)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if latent_height % patch_size or latent_width % patch_size:
        raise ValueError(
            f"latent {latent_height}×{latent_width} is not divisible by patch_size {patch_size}: "
            "choose a bucket whose latent size is a multiple of the patch"
        )
    tokens = (latent_height // patch_size) * (latent_width // patch_size)  # per latent frame
    slope = (_ALPHA_HI - _ALPHA_LO) / (_TOKENS_HI - _TOKENS_LO)
    spatial = _ALPHA_LO + slope * (tokens - _TOKENS_LO)
    return spatial * math.sqrt(latent_frames)


def latent_shift(latent_shape: Sequence[int], patch_size: int) -> float:
    """`resolution_shift` for a latent tensor's shape (..., T, H, W), e.g. (B, C, T, H, W)."""
    if len(latent_shape) < 3:
        raise ValueError(f"latent shape must end in (T, H, W), got {tuple(latent_shape)}")
    t, h, w = latent_shape[-3:]
    return resolution_shift(t, h, w, patch_size)


def shift_time(t: torch.Tensor | float, alpha: float) -> torch.Tensor | float:
    """t ← α·t / (1 + (α − 1)·t): monotone, fixes 0 and 1; α > 1 pushes t towards 1 (noise)."""
    if not alpha > 0:
        raise ValueError(f"shift alpha must be positive, got {alpha}")
    return alpha * t / (1 + (alpha - 1) * t)


def sample_train_t(batch: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Training timesteps: logit-normal t = sigmoid(n), n ~ N(0, 1), then shifted by α.

    Returns (batch,) float32 on the generator's device (move it where the batch lives).
    """
    if batch < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    n = torch.randn(batch, generator=generator, device=generator.device)  # (B,)
    return shift_time(torch.sigmoid(n), alpha)


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape ({x.shape[0]},) (one time per sample), "
                         f"got {tuple(t.shape)}")
    return t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1, 1)


def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
          sigma_min: float = 0.0) -> torch.Tensor:
    """X_t = (1 − t)·x0 + (1 − (1 − σ_min)(1 − t))·noise; with σ_min = 0: (1 − t)·x0 + t·noise.

    x0, noise: (B, ...) of one shape; t: (B,). Returns (B, ...) in x0's dtype.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    s = 1 - _per_sample(t, x0)  # (B, 1, ...)
    return s * x0 + (1 - (1 - sigma_min) * s) * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor, sigma_min: float = 0.0) -> torch.Tensor:
    """dX_t/dt = (1 − σ_min)·noise − x0: what the model regresses."""
    return (1 - sigma_min) * noise - x0


def flow_loss(
    model_out: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    sigma_min: float = 0.0,
) -> torch.Tensor:
    """MSE between the model's velocity and the target (1 − σ_min)·noise − x0, in float32 at least.

    model_out, x0, noise: (B, C, T, H, W). loss_mask: (B, T) bool, True for frames that count —
    pass False for conditioned frames (`conditioning.generated_frames`), whose answer the model is
    given. Each sample's loss is the mean over its included elements, then samples are averaged,
    so a sample weighs the same however many of its frames are conditioned (the reference's
    `get_batch_loss` in `opensora/utils/train.py`). Without a mask: the plain mean.

    A sample whose mask excludes every frame has nothing to learn from and makes the loss NaN
    (0/0), which the loop's loss checks catch; refusing it here would read the mask on the host
    every step, so `conditioning.build_cond` refuses such masks where they are made.
    """
    if model_out.shape != x0.shape:
        raise ValueError(f"model output {tuple(model_out.shape)} and x0 {tuple(x0.shape)} "
                         "differ in shape")
    dtype = torch.promote_types(model_out.dtype, torch.float32)
    err = (model_out.to(dtype) - velocity_target(x0, noise, sigma_min).to(dtype)).square()
    if loss_mask is None:
        return err.mean()
    if x0.ndim != 5:
        raise ValueError(f"a loss_mask needs (B, C, T, H, W) latents, got {tuple(x0.shape)}")
    b, c, t, h, w = x0.shape
    if loss_mask.shape != (b, t):
        raise ValueError(f"loss_mask must have shape (B, T) = ({b}, {t}), "
                         f"got {tuple(loss_mask.shape)}")
    keep = loss_mask.to(device=err.device, dtype=torch.bool)  # (B, T)
    frames = keep.sum(dim=1)  # (B,)
    per_frame = err.sum(dim=(1, 3, 4))  # (B, T)
    per_sample = (per_frame * keep).sum(dim=1) / (frames * c * h * w)  # (B,)
    return per_sample.mean()


@dataclass(frozen=True)
class FlowInputs:
    """One training step's inputs: x_t = noisy(x0, noise, t), with the shift α that drew t."""

    x_t: torch.Tensor  # (B, C, T, H, W)
    t: torch.Tensor  # (B,) float32, 1 = noise
    noise: torch.Tensor  # (B, C, T, H, W)
    shift: float


def flow_inputs(x0: torch.Tensor, *, patch_size: int, generator: torch.Generator,
                sigma_min: float = 0.0) -> FlowInputs:
    """Draw t (logit-normal, shifted by `latent_shift(x0.shape, patch_size)`) and the noise, and
    build x_t — everything a training step needs besides the model. Draws happen on the
    generator's device (so a CPU generator gives the same batch on any device) in the order t,
    noise. x0: (B, C, T, H, W) clean latents of one bucket."""
    if x0.ndim != 5:
        raise ValueError(f"x0 must be (B, C, T, H, W) latents, got {tuple(x0.shape)}")
    alpha = latent_shift(x0.shape, patch_size)
    t = sample_train_t(x0.shape[0], alpha, generator).to(x0.device)  # (B,)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device)
    noise = noise.to(device=x0.device, dtype=x0.dtype)  # (B, C, T, H, W)
    return FlowInputs(noisy(x0, noise, t, sigma_min), t, noise, alpha)
