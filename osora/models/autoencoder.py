"""What every video autoencoder exposes, and the compression arithmetic of docs/recipe.md §2.

A video AE maps pixels (B, 3, T, H, W) to latents (B, C, T', H', W') with H' = H / sd,
W' = W / sd and, in time, one of two rules:
- causal (HunyuanVideo VAE, Open-Sora 1.2, StepVideo): the first frame is encoded alone and every
  later group of td frames gives one latent frame, so T = 1 + k·td → T' = 1 + k (129 → 33);
- non-causal (Video DC-AE): every group of td frames gives one latent frame, T = k·td → T' = k.

The DiT then cuts the latent grid into patches (P_T × P_H × P_W); a token covers
D_token = D_T·D_H·D_W·P_T·P_H·P_W pixels, and a latent element carries D_info = D_T·D_H·D_W·3 / C
input values (docs/recipe.md §2). `tokens` turns a video size into the DiT's sequence length; it
reproduces the token counts of Tables 5–6 (docs/recipe.md §6; tests/models/test_autoencoder.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Compression(Protocol):
    """The compression geometry of an AE: enough to size latents and token sequences."""

    spatial_down: int  # D_H = D_W: pixels per latent along height and width
    temporal_down: int  # D_T: frames per latent frame (after the first, when causal)
    latent_channels: int  # C
    causal: bool  # True: T = 1 + k·td (first frame alone); False: T = k·td


@runtime_checkable
class VideoAutoencoder(Compression, Protocol):
    """A video AE: pixels (B, 3, T, H, W) ↔ latents (B, C, T', H', W').

    `encode` returns the AE's raw latent and `decode` takes it back. The DiT works on
    `to_dit(z)` and hands back `from_dit(z)`: the released models apply their scaling factor in
    opposite directions (Video DC-AE divides by 0.493, the HunyuanVideo VAE multiplies by
    0.476986), so each model says which, and nothing downstream needs to know. Tiling
    (osora.models.tiling) only needs encode/decode to be local enough that overlapping tiles
    agree.
    """

    scaling_factor: float

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, C, T', H', W')
        ...

    def to_dit(self, z: torch.Tensor) -> torch.Tensor:  # raw latent -> the DiT's scale
        ...

    def from_dit(self, z: torch.Tensor) -> torch.Tensor:  # the DiT's scale -> raw latent
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, C, T', H', W') -> (B, 3, T, H, W)
        ...


@dataclass(frozen=True)
class AutoencoderSpec:
    """One row of docs/recipe.md Table 1: an AE's compression, without its weights.

    It satisfies `Compression`, so `latent_shape` and `tokens` take it like a real AE.
    `scaling_factor` is None where the recipe gives none.
    """

    name: str
    temporal_down: int
    spatial_down: int
    latent_channels: int
    causal: bool
    scaling_factor: float | None = None

    def __post_init__(self) -> None:
        for field in ("temporal_down", "spatial_down", "latent_channels"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AutoencoderSpec {self.name!r}: {field} must be an int ≥ 1, "
                                 f"got {value!r}")

    @property
    def d_info(self) -> float:
        return d_info(self.temporal_down, self.spatial_down, self.latent_channels)


# docs/recipe.md Table 1 (paper §3.1). down = T×H×W.
OPEN_SORA_1_2 = AutoencoderSpec("Open-Sora 1.2", 4, 8, 4, causal=True)
STEP_VIDEO_VAE = AutoencoderSpec("StepVideo VAE", 8, 16, 64, causal=True)
HUNYUAN_VIDEO_VAE = AutoencoderSpec("HunyuanVideo VAE", 4, 8, 16, causal=True,
                                    scaling_factor=0.476986)
VIDEO_DC_AE = AutoencoderSpec("Video DC-AE", 4, 32, 128, causal=False, scaling_factor=0.493)
VIDEO_DC_AE_C256 = AutoencoderSpec("Video DC-AE c256", 4, 32, 256, causal=False)
TABLE_1 = (OPEN_SORA_1_2, STEP_VIDEO_VAE, HUNYUAN_VIDEO_VAE, VIDEO_DC_AE, VIDEO_DC_AE_C256)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int ≥ 1, got {value!r}")


def latent_frames(frames: int, temporal_down: int, causal: bool) -> int:
    """Latent frames T' of a T-frame video: causal 1 + (T−1)/td (129 → 33), else T/td; an
    image (T = 1) is one latent frame either way (the non-causal Video DC-AE skips its temporal
    halvings on a single frame, as the reference does).

    Raises ValueError when T does not fit the rule (causal: T = 1 + k·td; else T = k·td or 1).
    """
    _check_positive("frames", frames)
    _check_positive("temporal_down", temporal_down)
    if frames == 1:
        return 1
    if causal:
        if (frames - 1) % temporal_down:
            below = 1 + (frames - 1) // temporal_down * temporal_down
            raise ValueError(
                f"a causal AE with temporal_down={temporal_down} needs 1 + k·{temporal_down} "
                f"frames (e.g. {below} or {below + temporal_down}), got {frames}"
            )
        return 1 + (frames - 1) // temporal_down
    if frames % temporal_down:
        below = frames // temporal_down * temporal_down
        near = f"{below} or {below + temporal_down}" if below else f"{temporal_down}"
        raise ValueError(
            f"a non-causal AE with temporal_down={temporal_down} needs k·{temporal_down} frames "
            f"(e.g. {near}), got {frames}"
        )
    return frames // temporal_down


def pixel_frames(latent_frames: int, temporal_down: int, causal: bool) -> int:
    """The inverse of `latent_frames`: frames T decoded from T' latent frames."""
    _check_positive("latent_frames", latent_frames)
    _check_positive("temporal_down", temporal_down)
    return 1 + (latent_frames - 1) * temporal_down if causal else latent_frames * temporal_down


def latent_size(pixels: int, spatial_down: int, axis: str = "size") -> int:
    """Latent height or width of `pixels`; ValueError unless pixels is a multiple of sd."""
    _check_positive(axis, pixels)
    _check_positive("spatial_down", spatial_down)
    if pixels % spatial_down:
        raise ValueError(
            f"{axis} {pixels} px is not a multiple of the AE's spatial_down={spatial_down}; "
            f"resize or crop to {max(spatial_down, pixels // spatial_down * spatial_down)}"
        )
    return pixels // spatial_down


def latent_shape(frames: int, height: int, width: int,
                 ae: Compression) -> tuple[int, int, int, int]:
    """(C, T', H', W') of a (3, T, H, W) video under `ae` (an AE or an AutoencoderSpec)."""
    t = latent_frames(frames, ae.temporal_down, ae.causal)
    h = latent_size(height, ae.spatial_down, "height")
    w = latent_size(width, ae.spatial_down, "width")
    return ae.latent_channels, t, h, w


def d_info(temporal_down: int, spatial_down: int, channels: int) -> float:
    """Input values per latent value: D_T·D_H·D_W·3 / C (docs/recipe.md Table 1)."""
    _check_positive("temporal_down", temporal_down)
    _check_positive("spatial_down", spatial_down)
    _check_positive("channels", channels)
    return temporal_down * spatial_down * spatial_down * 3 / channels


def d_token(temporal_down: int, spatial_down: int, patch_t: int = 1, patch_s: int = 1) -> int:
    """Pixels (T·H·W) per DiT token: D_T·D_H·D_W·P_T·P_H·P_W (docs/recipe.md §2)."""
    for name, value in (("temporal_down", temporal_down), ("spatial_down", spatial_down),
                        ("patch_t", patch_t), ("patch_s", patch_s)):
        _check_positive(name, value)
    return temporal_down * spatial_down * spatial_down * patch_t * patch_s * patch_s


def _patch_dims(patch: int | tuple[int, int, int]) -> tuple[int, int, int]:
    """An int p means the DiT's 1×p×p (time unpatched, as in Open-Sora 2.0)."""
    dims = (1, patch, patch) if isinstance(patch, int) else tuple(patch)
    if len(dims) != 3:
        raise ValueError(f"patch must be an int p (1×p×p) or (P_T, P_H, P_W), got {patch!r}")
    for name, value in zip(("P_T", "P_H", "P_W"), dims):
        _check_positive(f"patch {name}", value)
    return dims  # type: ignore[return-value]


def tokens(frames: int, height: int, width: int, ae: Compression,
           patch: int | tuple[int, int, int] = 1) -> int:
    """DiT sequence length of a video: the latent grid (T', H', W') divided by the patch.

    e.g. HunyuanVideo VAE, patch 2, 129 frames at 576×1024: 33 × (72/2) × (128/2) = 76032.
    Raises ValueError when the latent grid is not a multiple of the patch.
    """
    pt, ph, pw = _patch_dims(patch)
    _, t, h, w = latent_shape(frames, height, width, ae)
    for axis, size, p in (("frames", t, pt), ("height", h, ph), ("width", w, pw)):
        if size % p:
            raise ValueError(
                f"latent {axis} {size} (from {frames}×{height}×{width}) is not a multiple of the "
                f"patch {p}; choose a size whose latent grid divides by the patch"
            )
    return (t // pt) * (h // ph) * (w // pw)
