"""Decoupled image/text guidance with oscillation and a dynamic image scale (docs/recipe.md §5).

Three velocities per step — v(∅,∅): negative text, no image; v(∅,img): negative text with the
image condition; v(txt,img): prompt and image — combine as

    v = v(∅,∅) + g_img·(v(∅,img) − v(∅,∅)) + g_txt·(v(txt,img) − v(∅,img)).

Schedules, as in the reference (`get_oscillation_gs` and `I2VDenoiser.denoise` in
hpcaitech/Open-Sora `opensora/utils/sampling.py`), with steps i = 0 … N−1 counted from the noisy
end:
- oscillation: steps i < 10 use the scale; from i = 10 on, even i use the scale and odd i use
  1.0 (for 50 steps: 0–9 scale, then 10 scale, 11 one, 12 scale, …, 49 one). Applied to the text
  and the image scale alike.
- dynamic image guidance: when the (oscillated) image scale g > 1, step i's upper bound is
  u_i = linspace(g, 1, N+1)[i] = g − (g − 1)·i/N, and latent frame τ of T gets
  1 + (u_i − 1)·τ/(T − 1): 1 at the first frame, u_i at the last. A single frame gets 1. The
  reference uses it for i2v kinds only (not t2v, not v2v).
"""

from __future__ import annotations

import torch

OSCILLATION_WARMUP = 10  # reference `force_num`: steps before oscillation starts


def oscillation_scale(scale: float, step: int, *, warmup: int = OSCILLATION_WARMUP) -> float:
    """Guidance scale at `step` (0-based) under oscillation: `scale` while step < warmup and on
    even steps after; 1.0 (no guidance) on odd steps ≥ warmup."""
    if step < 0:
        raise ValueError(f"step must be ≥ 0, got {step}")
    return float(scale) if step < warmup or step % 2 == 0 else 1.0


def dynamic_image_scale(g_img: float, step: int, num_steps: int,
                        num_frames: int) -> torch.Tensor:
    """Per-frame image scale at `step` of `num_steps`: (T,) float64, a linear ramp from 1 at the
    first latent frame to u = g_img − (g_img − 1)·step/num_steps at the last."""
    if num_steps < 1 or not 0 <= step < num_steps:
        raise ValueError(f"need 0 ≤ step < num_steps, got step {step} of {num_steps}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
    upper = g_img + (1.0 - g_img) * step / num_steps  # linspace(g_img, 1, N+1)[step]
    return torch.linspace(1.0, upper, num_frames, dtype=torch.float64)  # (T,)


def step_scales(step: int, num_steps: int, *, g_img: float, g_txt: float, num_frames: int,
                oscillation: bool = True, dynamic_image: bool = True,
                ) -> tuple[torch.Tensor, float]:
    """The scales a sampler uses at `step`: (image (T,) float64 per latent frame, text float).

    Oscillation first, then — if the image scale is still > 1 — the dynamic ramp (reference
    order: a step oscillated down to 1.0 gets no ramp)."""
    if not 0 <= step < num_steps:
        raise ValueError(f"need 0 ≤ step < num_steps, got step {step} of {num_steps}")
    s_txt = oscillation_scale(g_txt, step) if oscillation else float(g_txt)
    s_img = oscillation_scale(g_img, step) if oscillation else float(g_img)
    if dynamic_image and s_img > 1.0:
        return dynamic_image_scale(s_img, step, num_steps, num_frames), s_txt
    return torch.full((num_frames,), s_img, dtype=torch.float64), s_txt


def decoupled_guidance(v_null: torch.Tensor, v_img: torch.Tensor, v_full: torch.Tensor, *,
                       g_img: float | torch.Tensor, g_txt: float) -> torch.Tensor:
    """v(∅,∅) + g_img·(v(∅,img) − v(∅,∅)) + g_txt·(v(txt,img) − v(∅,img)).

    v_*: (B, C, T, H, W). g_img: a number or a (T,) per-frame scale, broadcast over B, C, H, W.
    With v_img = v_null (no image condition) this is classic classifier-free guidance.
    """
    if not v_null.shape == v_img.shape == v_full.shape:
        raise ValueError(f"velocities differ in shape: {tuple(v_null.shape)}, "
                         f"{tuple(v_img.shape)}, {tuple(v_full.shape)}")
    if isinstance(g_img, torch.Tensor):
        t = v_null.shape[2]
        if g_img.shape != (t,):
            raise ValueError(f"a per-frame g_img must have shape (T,) = ({t},), "
                             f"got {tuple(g_img.shape)}")
        g_img = g_img.to(device=v_null.device, dtype=v_null.dtype)[None, None, :, None, None]
    return v_null + g_img * (v_img - v_null) + g_txt * (v_full - v_img)
