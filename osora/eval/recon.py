"""Reconstruction metrics of a video autoencoder: PSNR, SSIM, LPIPS (docs/recipe.md §2, Table 1).

Conventions, as in the video-AE papers' evaluation code (common_metrics_on_video_quality):
- every metric is computed per frame and averaged over the frames of a video, giving one value
  per video, shape (B,); the table reports the mean over videos;
- inputs are RGB videos (B, 3, T, H, W) or images (B, 3, H, W) (one frame), in [-1, 1] by
  default; the original and the reconstruction must have the same shape;
- PSNR of a frame is 10·log10(data_range² / MSE) with the MSE over its channels and pixels. An
  exact frame (MSE 0) has infinite PSNR: it is capped at `max_db` (100 dB by default, the value
  that code reports for MSE < 1e-10 on [0, 1] data) before averaging, so a video's PSNR stays
  finite; `max_db=None` leaves inf in place (and then in any mean that includes it);
- SSIM is Wang et al.'s: an 11×11 Gaussian window of σ 1.5, K1 0.01, K2 0.03, means over the
  'valid' window positions only (no padding), on each RGB channel separately, averaged over the
  channels. SSIM depends on where zero is (its luminance term), so frames are first mapped from
  `value_range` to [0, 1] and use L = 1, as the papers' [0, 1] (or [0, 255]) images do;
- both run in float64, whatever the input dtype, and return float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from osora.models.lpips import LPIPS

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PSNR_MAX_DB = 100.0


def _frames(x: torch.Tensor, y: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs as float64 videos (B, C, T, H, W)."""
    if x.shape != y.shape:
        raise ValueError(f"{name}: inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim == 4:
        x, y = x.unsqueeze(2), y.unsqueeze(2)  # (B, C, 1, H, W)
    if x.ndim != 5:
        raise ValueError(
            f"{name} expects videos (B, C, T, H, W) or images (B, C, H, W), got {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise ValueError(f"{name}: empty input {tuple(x.shape)}")
    return x.to(torch.float64), y.to(torch.float64)


def psnr(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 2.0,
    max_db: float | None = PSNR_MAX_DB,
) -> torch.Tensor:
    """Per-video PSNR in dB, (B,): the mean over frames of each frame's PSNR.

    `data_range` is max − min of the value range (2 for [-1, 1]). A frame whose MSE is 0 scores
    `max_db` (None: inf).
    """
    if data_range <= 0:
        raise ValueError(f"psnr: data_range must be > 0, got {data_range}")
    x, y = _frames(x, y, "psnr")
    mse = ((x - y) ** 2).mean(dim=(1, 3, 4))  # (B, T)
    db = 10.0 * torch.log10(data_range**2 / mse)  # (B, T); inf where mse == 0
    if max_db is not None:
        db = db.clamp(max=max_db)
    return db.mean(dim=1)  # (B,)


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()  # (size,)


def _blur_valid(maps: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian mean over every full window: (N, 1, H, W) → (N, 1, H−k+1, W−k+1)."""
    k = g.numel()
    maps = F.conv2d(maps, g.view(1, 1, 1, k))  # (N, 1, H, W−k+1)
    return F.conv2d(maps, g.view(1, 1, k, 1))  # (N, 1, H−k+1, W−k+1)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    value_range: Sequence[float] = (-1.0, 1.0),
) -> torch.Tensor:
    """Per-video SSIM, (B,): mean over frames of the per-channel SSIM averaged over channels.

    `value_range` (low, high) is mapped to [0, 1] first. Frames must be at least 11×11.
    """
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(
            f"ssim: value_range must be (low, high) with high > low, got {value_range}"
        )
    x, y = _frames(x, y, "ssim")
    b, c, t, h, w = x.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(
            f"ssim needs frames of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels (its Gaussian "
            f"window), got {h}×{w}"
        )
    x = (x - low) / (high - low)  # (B, C, T, H, W) in [0, 1]
    y = (y - low) / (high - low)
    x = x.permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)  # (B·T·C, 1, H, W)
    y = y.permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, x.device)
    n = x.shape[0]
    stats = _blur_valid(torch.cat([x, y, x * x, y * y, x * y]), g)  # (5N, 1, h', w')
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(n)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1 = SSIM_K1**2  # (K1·L)² with L = 1
    c2 = SSIM_K2**2
    s_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )  # (N, 1, h', w')
    per_plane = s_map.mean(dim=(1, 2, 3)).view(b, t, c)  # (B, T, C)
    return per_plane.mean(dim=(1, 2))  # (B,)


def lpips_per_video(
    model: LPIPS, x: torch.Tensor, y: torch.Tensor, frames_per_chunk: int = 16
) -> torch.Tensor:
    """Per-video LPIPS, (B,): the mean over frames, run `frames_per_chunk` frames at a time."""
    if frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be ≥ 1, got {frames_per_chunk}")
    if x.ndim == 4:
        x, y = x.unsqueeze(2), y.unsqueeze(2)  # (B, 3, 1, H, W)
    if x.shape != y.shape:
        raise ValueError(f"lpips: inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    with torch.no_grad():
        per_frame = [
            model(x[:, :, s : s + frames_per_chunk], y[:, :, s : s + frames_per_chunk])
            for s in range(0, x.shape[2], frames_per_chunk)
        ]  # [(B, t)]
    return torch.cat(per_frame, dim=1).to(torch.float64).mean(dim=1)  # (B,)


def recon_metrics(
    original: torch.Tensor,
    reconstruction: torch.Tensor,
    lpips: LPIPS | None = None,
    value_range: Sequence[float] = (-1.0, 1.0),
) -> dict[str, torch.Tensor]:
    """Per-video {"psnr", "ssim"[, "lpips"]}, each (B,), for videos in `value_range`.

    LPIPS expects [-1, 1]; other ranges are mapped there for it.
    """
    low, high = (float(v) for v in value_range)
    out = {
        "psnr": psnr(original, reconstruction, data_range=high - low),
        "ssim": ssim(original, reconstruction, value_range=(low, high)),
    }
    if lpips is not None:
        if (low, high) != (-1.0, 1.0):
            original = (original - low) / (high - low) * 2 - 1
            reconstruction = (reconstruction - low) / (high - low) * 2 - 1
        out["lpips"] = lpips_per_video(lpips, original, reconstruction)
    return out


def summarize(per_video: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means over videos, as the tables report them (a capped PSNR stays finite)."""
    return {name: float(values.to(torch.float64).mean()) for name, values in per_video.items()}


__all__ = ["lpips_per_video", "psnr", "recon_metrics", "ssim", "summarize"]
