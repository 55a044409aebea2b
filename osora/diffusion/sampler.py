"""Euler sampling of the flow with decoupled guidance (docs/recipe.md §5).

The schedule is linspace(1, 0, N+1) shifted by α (`flow.resolution_shift`, the same α training
used); each step runs the model once on the guidance passes concatenated along the batch:

    passes (reference order)   text       condition
    v(txt,img)                 prompt     cond
    v(∅,img)                   negative   cond
    v(∅,∅)                     negative   zeros

then x ← x + (t_next − t)·v with v from `guidance.decoupled_guidance`. The negative prompt is
the "∅" text (the empty prompt's embedding when there is none).

t2v: the reference always runs the three passes, with a zero condition for t2v, so v(∅,img) and
v(∅,∅) are the same computation and its update is classic CFG, v(∅) + g_txt·(v(txt) − v(∅)).
Here a condition that is None or all zeros runs only the two distinct passes: the same update,
a third less compute; with g_txt = 1 as well (a guidance-distilled model such as FLUX-dev) the
update is v(txt) and one pass runs. A batch that mixes conditioned and t2v samples runs three
passes (for its t2v samples the result is still classic CFG).

Conditioned frames: like the reference, the loop does not touch them — the model sees the
condition through `cond` and denoises every frame. After the loop the conditioned latent frames
are replaced by the condition latent (`replace_conditioned`); the reference does this for i2v
kinds (for the first sample only); here for every sample and kind, v2v included.

Randomness: none inside; the result is a function of the noise. `make_noise` draws it from
per-sample seeds on the CPU, so a seed gives the same sample on any device and in any batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from osora.diffusion.flow import latent_shift, shift_time
from osora.diffusion.guidance import decoupled_guidance, step_scales


@dataclass(frozen=True)
class StepInfo:
    """What one sampling step did (given to the progress callback)."""

    step: int  # 0-based, from the noisy end
    num_steps: int
    t: float  # shifted time of the step's input (1 = noise)
    t_next: float
    shift: float  # α
    text_scale: float
    image_scale: torch.Tensor  # (T,) float64, per latent frame
    passes: int  # 3 (decoupled guidance), 2 (t2v: classic CFG) or 1 (t2v with g_txt 1)


def sampling_timesteps(num_steps: int, shift: float) -> torch.Tensor:
    """linspace(1, 0, N+1) shifted by α: (N+1,) float64, from 1 (noise) down to 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
    return shift_time(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


def make_noise(latent_shape: Sequence[int], seeds: int | Sequence[int], *,
               device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Initial noise (B, C, T, H, W) for latents of (C, T, H, W): sample i from a CPU generator
    seeded seeds[i] (an int: one sample), so it does not depend on the device or the batch."""
    if len(latent_shape) != 4:
        raise ValueError(f"latent_shape must be (C, T, H, W), got {tuple(latent_shape)}")
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    out = [torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(int(s)))
           for s in seeds]
    return torch.stack(out).to(device=device, dtype=dtype)  # (B, C, T, H, W)


def _batch(x: torch.Tensor, b: int, name: str, tail: tuple[int, ...]) -> torch.Tensor:
    """x as (b, *tail), broadcasting a missing or size-1 batch dimension."""
    if x.ndim == len(tail):
        x = x[None]
    if x.ndim != len(tail) + 1 or x.shape[0] not in (1, b) or tuple(x.shape[1:]) != tail:
        raise ValueError(f"{name} must have shape ({b}, {', '.join(map(str, tail))}) "
                         f"(or a batch of 1), got {tuple(x.shape)}")
    return x.expand(b, *tail)


@torch.no_grad()
def sample(
    model: nn.Module | Callable[..., torch.Tensor],
    noise: torch.Tensor,
    text: torch.Tensor,
    pooled: torch.Tensor,
    *,
    neg_text: torch.Tensor,
    neg_pooled: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    neg_text_mask: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    steps: int = 50,
    g_img: float = 3.0,
    g_txt: float = 7.5,
    oscillation: bool = True,
    dynamic_image: bool = True,
    patch_size: int | None = None,
    shift: float | None = None,
    replace_conditioned: bool = True,
    progress: Callable[[StepInfo], None] | None = None,
) -> torch.Tensor:
    """Generate latents from `noise` by Euler steps on the guided velocity.

    model: model(x, t, text, pooled, text_mask=None, cond=None) → v, all batched alike.
    noise: (B, C, T, H, W), the initial state (t = 1); the state stays in its dtype.
    text: (B, L, D_txt), pooled: (B, D_vec); neg_text (L, D_txt) or (1|B, L, D_txt), neg_pooled
    (D_vec,) or (1|B, D_vec): the negative prompt, encoded with the prompt's padding (same L).
    text_mask / neg_text_mask: (B, L) / (L,) or (1|B, L) bool, True = real token; None = no
    padding (if only one is given the other is taken as all True).
    cond: (B, C+1, T, H, W) from `conditioning.build_cond`, or None (t2v; passed to the model
    as None — give `conditioning.zero_cond(...)` for a model that needs a condition input).
    g_img, g_txt: guidance scales; oscillation and dynamic_image as in `guidance.step_scales`
    (the reference ramps the image scale for i2v kinds only: pass dynamic_image=False for v2v).
    patch_size: the model's spatial patch, to compute α = `flow.latent_shift(noise.shape, p)`;
    or give `shift` (α) directly. progress: called with a `StepInfo` after every step.
    Returns the latents (B, C, T, H, W) at t = 0.
    """
    if noise.ndim != 5:
        raise ValueError(f"noise must be (B, C, T, H, W), got {tuple(noise.shape)}")
    b, c, t_lat, h, w = noise.shape
    if shift is None:
        if patch_size is None:
            raise ValueError("give patch_size (to compute the shift α from the latent shape) "
                             "or shift")
        shift = latent_shift(noise.shape, patch_size)
    if text.ndim != 3 or text.shape[0] != b:
        raise ValueError(f"text must be (B, L, D) with B = {b}, got {tuple(text.shape)}")
    if pooled.ndim != 2 or pooled.shape[0] != b:
        raise ValueError(f"pooled must be (B, D) with B = {b}, got {tuple(pooled.shape)}")
    neg_text = _batch(neg_text, b, "neg_text (encode it with the prompt's max_length)",
                      tuple(text.shape[1:]))
    neg_pooled = _batch(neg_pooled, b, "neg_pooled", tuple(pooled.shape[1:]))
    if text_mask is not None or neg_text_mask is not None:
        ones = torch.ones(b, text.shape[1], dtype=torch.bool, device=text.device)
        text_mask = ones if text_mask is None else _batch(text_mask, b, "text_mask",
                                                          tuple(text.shape[1:2]))
        neg_text_mask = ones if neg_text_mask is None else _batch(
            neg_text_mask, b, "neg_text_mask", tuple(text.shape[1:2]))
    if cond is not None and (cond.ndim != 5 or cond.shape != (b, c + 1, t_lat, h, w)):
        raise ValueError(f"cond must be (B, C+1, T, H, W) = {(b, c + 1, t_lat, h, w)}, "
                         f"got {tuple(cond.shape)}")

    # batch the passes: (txt, img)[, (∅, img)[, (∅, ∅)]]
    decoupled = cond is not None and bool(cond.any())
    passes = 3 if decoupled else 2 if g_txt != 1.0 else 1  # g_txt 1 without a condition: v(txt)
    text_in = torch.cat([text] + [neg_text] * (passes - 1))  # (P·B, L, D_txt)
    pooled_in = torch.cat([pooled] + [neg_pooled] * (passes - 1))  # (P·B, D_vec)
    mask_in = None
    if text_mask is not None:
        mask_in = torch.cat([text_mask] + [neg_text_mask] * (passes - 1))
    cond_in = None
    if cond is not None:
        cond_in = torch.cat([cond, cond, torch.zeros_like(cond)] if decoupled else [cond] * passes)

    timesteps = sampling_timesteps(steps, shift)  # (N+1,) float64
    x = noise.clone()  # (B, C, T, H, W)
    for i in range(steps):
        t_cur, t_next = float(timesteps[i]), float(timesteps[i + 1])
        img_scale, txt_scale = step_scales(i, steps, g_img=g_img, g_txt=g_txt,
                                           num_frames=t_lat, oscillation=oscillation,
                                           dynamic_image=dynamic_image)
        x_in = torch.cat([x] * passes)  # (P·B, C, T, H, W)
        t_in = torch.full((passes * b,), t_cur, device=x.device, dtype=x.dtype)  # (P·B,)
        v = model(x_in, t_in, text_in, pooled_in, text_mask=mask_in, cond=cond_in)
        if v.shape != x_in.shape:
            raise ValueError(f"model returned {tuple(v.shape)}, expected the velocity of its "
                             f"input {tuple(x_in.shape)}")
        v = v.to(x.dtype)
        if passes == 3:
            v_full, v_img, v_null = v.chunk(3)  # (B, C, T, H, W) each
        elif passes == 2:
            v_full, v_null = v.chunk(2)
            v_img = v_null
        else:
            v_full = v_img = v_null = v
        v = decoupled_guidance(v_null, v_img, v_full, g_img=img_scale, g_txt=txt_scale)
        x = x + (t_next - t_cur) * v
        if progress is not None:
            progress(StepInfo(i, steps, t_cur, t_next, shift, txt_scale, img_scale, passes))

    if replace_conditioned and cond is not None:
        given = cond[:, :1] > 0.5  # (B, 1, T, H, W)
        x = torch.where(given, cond[:, 1:].to(x.dtype), x)
    return x
