"""Reconstruction quality of a video AE on held-out clips: the columns of docs/recipe.md Table 1.

Each clip is cut to what the AE accepts (its frame rule, sides a multiple of its spatial
factor, centred), encoded and decoded (tiled when asked) and compared frame by frame.
"""

from __future__ import annotations

import torch

from osora.eval.recon import recon_metrics, summarize
from osora.models.autoencoder import d_info, d_token
from osora.models.tiling import TileSpec, tiled_decode, tiled_encode


def fit_to_ae(video: torch.Tensor, ae) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (1, 3, T', H', W') in [-1, 1]: the most frames the AE's rule
    allows (causal 1 + k·td, else k·td; an image's one frame for both), sides cut to multiples
    of its spatial factor."""
    t, h, w = video.shape[:3]
    td, sd = ae.temporal_down, ae.spatial_down
    frames = 1 + (t - 1) // td * td if ae.causal or t == 1 else t // td * td
    hh, ww = h // sd * sd, w // sd * sd
    if frames < 1 or hh < sd or ww < sd:
        raise ValueError(
            f"a {t}×{h}×{w} clip is too small for this AE (needs ≥ {td} frames and sides ≥ "
            f"{sd} px); raise ae.eval.short_side or ae.eval.frames"
        )
    y0, x0 = (h - hh) // 2, (w - ww) // 2
    clip = video[:frames, y0:y0 + hh, x0:x0 + ww]  # (T', H', W', 3)
    return clip.permute(3, 0, 1, 2)[None].float().div(127.5).sub(1.0)


@torch.no_grad()
def reconstruct(ae, x: torch.Tensor, tile: TileSpec | None) -> torch.Tensor:
    if tile is None:
        return ae.decode(ae.encode(x)).clamp(-1, 1)
    return tiled_decode(ae, tiled_encode(ae, x, tile), tile).clamp(-1, 1)


def compression(ae, dit_patch: int) -> dict[str, float]:
    """D_info (input values per latent value) and D_token (pixels per DiT token: the DiT's
    patch is 1 × dit_patch × dit_patch) of an AE: docs/recipe.md Table 1 and §2."""
    return {
        "d_info": d_info(ae.temporal_down, ae.spatial_down, ae.latent_channels),
        "d_token": d_token(ae.temporal_down, ae.spatial_down, 1, dit_patch),
    }


def evaluate(ae, videos: list[torch.Tensor], *, tile: TileSpec | None = None, lpips=None,
             dit_patch: int = 1, device: str = "cpu") -> dict[str, float]:
    """Mean PSNR / SSIM (/ LPIPS) over `videos`, with the AE's D_info and D_token."""
    per_video: dict[str, list[torch.Tensor]] = {}
    for video in videos:
        x = fit_to_ae(video, ae).to(device)
        scores = recon_metrics(x, reconstruct(ae, x, tile), lpips)
        for name, value in scores.items():
            per_video.setdefault(name, []).append(value.cpu())
    means = summarize({k: torch.cat(v) for k, v in per_video.items()})
    return {**means, "clips": len(videos), **compression(ae, dit_patch)}
