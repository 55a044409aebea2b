"""Prompts → videos: the text encoder, the MMDiT sampler (`osora.diffusion.sampler.sample`) and
the AE decoder glued together (docs/recipe.md §5).

Each prompt is stated in the training format (`osora.prompts.conditioned_text`: fps and motion
score appended), encoded with the negative prompt padded alike, sampled from the noise of its
seed (`make_noise`: the same video for a seed on any device and in any batch) and decoded,
in tiles when `decode_tile` is given (osora.models.tiling). Which component is on the device
when is `osora.sample.placement`'s business (`offload`); the output does not depend on it.
One frame is an image (T2I, the first frame of text→image→video): one latent frame for either AE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from osora.diffusion.sampler import StepInfo, make_noise, sample
from osora.models.autoencoder import latent_shape, latent_size
from osora.models.text import EmbeddingCache, TextEncoder, encode_cached
from osora.models.tiling import TileSpec, tiled_decode
from osora.prompts import conditioned_text
from osora.sample.placement import ComponentPlacement, OffloadMode


@dataclass(frozen=True)
class Guidance:
    """How to sample: Euler steps and guidance (docs/recipe.md §5) (`sampler.sample`'s knobs)."""

    steps: int = 50
    g_img: float = 3.0
    g_txt: float = 7.5
    oscillation: bool = True
    dynamic_image: bool = True
    negative_prompt: str = ""


def video_latent_shape(ae, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(C, T, h, w) of the latent the AE decodes to frames × height × width; one frame is an
    image: one latent frame, for a causal and a non-causal AE alike."""
    if frames == 1:
        return (ae.latent_channels, 1, latent_size(height, ae.spatial_down, "height"),
                latent_size(width, ae.spatial_down, "width"))
    return latent_shape(frames, height, width, ae)


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] → (B, F, H, W, 3) uint8, rounded as the AE stages do."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(
        0, 2, 3, 4, 1).cpu()


class VideoSampler:
    """An MMDiT, its AE and its text encoder, ready to turn prompts into pixels.

    model: the MMDiT (eval mode); ae: a `VideoAutoencoder`; both on `device` for offload
    "none", anywhere for "model" / "sequential" (their weights move to CPU memory and visit the
    device per phase: `ComponentPlacement`). precision "bf16" autocasts the MMDiT and the AE on
    CUDA (the state keeps its dtype). decode_tile: decode in these tiles (None: one pass).
    """

    def __init__(self, model: torch.nn.Module, ae, text_encoder: TextEncoder, *,
                 device: str | torch.device = "cpu", precision: str = "fp32",
                 cache: EmbeddingCache | None = None, offload: OffloadMode = "none",
                 decode_tile: TileSpec | None = None):
        cfg = model.config
        if cfg.in_channels != ae.latent_channels:
            raise ValueError(f"the MMDiT takes {cfg.in_channels}-channel latents but the AE "
                             f"makes {ae.latent_channels}: give the AE the checkpoint was "
                             "trained on (params/ae.yaml:autoencoder, or --autoencoder)")
        if (cfg.text_dim, cfg.vec_dim) != (text_encoder.seq_dim, text_encoder.vec_dim):
            raise ValueError(f"the MMDiT takes text ({cfg.text_dim}, {cfg.vec_dim}) but the "
                             f"encoder {text_encoder!r} gives ({text_encoder.seq_dim}, "
                             f"{text_encoder.vec_dim}): set params/dit.yaml:text to the encoder "
                             "the checkpoint was trained with")
        self.model, self.ae, self.text_encoder = model, ae, text_encoder
        self.device = torch.device(device)
        self.precision = precision
        self.cache = cache or EmbeddingCache()
        self.decode_tile = decode_tile
        self.placement = ComponentPlacement(offload, self.device, text_encoder=text_encoder,
                                            model=model, ae=ae)

    def _autocast(self):
        if self.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def latents(self, prompts: Sequence[str], seeds: Sequence[int] | None = None, *,
                frames: int, height: int, width: int, fps: float, motion_score: float | None,
                guidance: Guidance, cond: torch.Tensor | None = None,
                noise: torch.Tensor | None = None,
                progress: Callable[[StepInfo], None] | None = None) -> torch.Tensor:
        """Sampled latents (B, C, T, h, w) in the DiT's scale, from each seed's noise
        (`make_noise`) or the given `noise` (B, C, T, h, w) (a diffusers pipeline's, drawn from
        its generators); cond (1|B, C+1, T, h, w)."""
        shape = video_latent_shape(self.ae, frames, height, width)
        if noise is None:
            if seeds is None or len(prompts) != len(seeds):
                raise ValueError(f"give one seed per prompt: {len(prompts)} prompts, "
                                 f"{0 if seeds is None else len(seeds)} seeds")
            noise = make_noise(shape, list(seeds), device=self.device)  # (B, C, T, h, w)
        elif tuple(noise.shape) != (len(prompts), *shape):
            raise ValueError(f"noise must have shape {(len(prompts), *shape)} (prompts, then "
                             f"the latent of {frames}×{height}×{width}), got "
                             f"{tuple(noise.shape)}")
        noise = noise.to(self.device)
        texts = [conditioned_text(p, fps, motion_score) for p in prompts]
        with self.placement.text_phase():
            emb = encode_cached(self.text_encoder, texts, self.cache).to(self.device,
                                                                          torch.float32)
            neg = encode_cached(self.text_encoder, [guidance.negative_prompt], self.cache).to(
                self.device, torch.float32)
        if cond is not None:
            cond = cond.to(self.device, torch.float32).expand(len(prompts), *cond.shape[1:])
        with self.placement.denoise_phase(), self._autocast():
            return sample(self.model, noise, emb.seq, emb.pooled, neg_text=neg.seq,
                          neg_pooled=neg.pooled, text_mask=emb.mask, neg_text_mask=neg.mask,
                          cond=cond, steps=guidance.steps, g_img=guidance.g_img,
                          g_txt=guidance.g_txt, oscillation=guidance.oscillation,
                          dynamic_image=guidance.dynamic_image,
                          patch_size=self.model.config.patch_size, progress=progress)

    def encode_ahead(self, texts: Sequence[str], batch_size: int) -> None:
        """Encode texts as the model sees them (`conditioned_text`, and the negative prompt)
        into the cache now, `batch_size` at a time, so the text encoder visits the device once
        per run (offload)."""
        with self.placement.text_phase():
            encode_cached(self.text_encoder, list(texts), self.cache, batch_size=batch_size)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """DiT-scale latents (B, C, T, h, w) → pixels (B, 3, F, H, W) in [-1, 1], one at a time
        (decoding is the memory peak), in tiles when decode_tile is given."""
        out = []
        # an image (one latent frame) is small and follows no video frame rule: one pass
        tile = self.decode_tile if latents.shape[2] > 1 else None
        with self.placement.ae_phase(), self._autocast():
            for z in latents:
                raw = self.ae.from_dit(z[None].to(self.device))  # (1, C, T, h, w)
                video = self.ae.decode(raw) if tile is None else tiled_decode(self.ae, raw, tile)
                out.append(video.float())
        return torch.cat(out)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (1, 3, F, H, W) → DiT-scale latent, for conditions."""
        with torch.no_grad(), self.placement.ae_phase(), self._autocast():
            return self.ae.to_dit(self.ae.encode(pixels.to(self.device))).float()
