"""Condition media (an image or a video file) → the MMDiT's condition tensor (docs/recipe.md §5).

The given frames are resized to cover the output size (aspect kept, bicubic with antialias) and
centre-cropped, encoded by the AE separately from anything generated (as in training), and put
into the latent frames the kind marks:
- i2v_head / i2v_tail: the media's first / last frame (an image: itself) → the first / last
  latent frame; i2v_loop: first and last (an image: a loop of itself);
- v2v_head / v2v_tail: the media's first / last K latent frames' worth of pixels (K·td frames
  for a non-causal AE, 1 + (K−1)·td for a causal one) → the first / last K latent frames.
An image goes through the AE as a one-frame video, which both AEs here encode to one latent
frame (the reference encodes an i2v image the same way).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from osora.diffusion.conditioning import build_cond, condition_mask
from osora.models.autoencoder import Compression, pixel_frames

IMAGE_KINDS = ("i2v_head", "i2v_tail", "i2v_loop")
VIDEO_KINDS = ("v2v_head", "v2v_tail")


def read_media(path: str | os.PathLike, height: int, width: int,
               max_frames: int | None = None) -> torch.Tensor:
    """An image or video file as (1, 3, T, height, width) float32 in [-1, 1] (T = 1 for an
    image; at most max_frames), covering the size and centre-cropped."""
    from osora.media.frames import read_video

    if not os.path.isfile(path):
        raise FileNotFoundError(f"condition media {path}: no such file; give an image "
                                "(png, jpg) or a video (mp4) that exists")
    try:
        frames = read_video(path, max_frames=max_frames)  # (T, h, w, 3) uint8
    except Exception as err:  # PyAV's errors name no fix
        raise ValueError(f"condition media {path}: cannot decode it ({err}); give an image "
                         "(png, jpg) or a video ffmpeg reads") from None
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, h, w) in [0, 255]
    scale = max(height / x.shape[2], width / x.shape[3])
    size = (max(height, round(x.shape[2] * scale)), max(width, round(x.shape[3] * scale)))
    if size != tuple(x.shape[2:]):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    y0, x0 = (size[0] - height) // 2, (size[1] - width) // 2
    x = x[:, :, y0:y0 + height, x0:x0 + width].clamp(0, 255)  # (T, 3, H, W)
    return (x / 127.5 - 1.0).permute(1, 0, 2, 3)[None].contiguous()  # (1, 3, T, H, W)


def media_condition(kind: str, pixels: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor],
                    ae: Compression, latent_shape: tuple[int, ...], *,
                    v2v_frames: int | None = None) -> torch.Tensor:
    """The condition (1, C+1, T, h, w), DiT scale, of `pixels` (1, 3, F, H, W) in [-1, 1] for a
    video whose latent is latent_shape = (C, T, h, w). encode: pixels → DiT-scale latent
    (`VideoSampler.encode_pixels`); ae: the AE's geometry (temporal_down, causal)."""
    c, t, h, w = latent_shape
    mask = condition_mask(kind, t, v2v_frames=v2v_frames)  # (T,)
    latent = torch.zeros(1, c, t, h, w)
    if kind in IMAGE_KINDS:
        if kind in ("i2v_head", "i2v_loop"):
            latent[:, :, :1] = encode(pixels[:, :, :1]).cpu()
        if kind in ("i2v_tail", "i2v_loop"):
            latent[:, :, -1:] = encode(pixels[:, :, -1:]).cpu()
    elif kind in VIDEO_KINDS:
        need = pixel_frames(v2v_frames, ae.temporal_down, ae.causal)
        if pixels.shape[2] < need:
            raise ValueError(f"{kind} with v2v_frames={v2v_frames} needs a video of at least "
                             f"{need} frames, got {pixels.shape[2]}; give a longer video or "
                             "fewer v2v_frames")
        part = pixels[:, :, :need] if kind == "v2v_head" else pixels[:, :, -need:]
        z = encode(part).cpu()  # (1, C, K, h, w)
        if kind == "v2v_head":
            latent[:, :, :v2v_frames] = z
        else:
            latent[:, :, t - v2v_frames:] = z
    else:
        raise ValueError(f"{kind!r} takes no condition media; media kinds: "
                         f"{IMAGE_KINDS + VIDEO_KINDS}")
    return build_cond(latent, mask)  # (1, C+1, T, h, w)
