"""The image model of text→image→video (docs/recipe.md §5): it draws the first frame that the video
model then animates (i2v_head). Pluggable: anything with

    generate(prompts, seeds, height, width) → (B, 3, 1, height, width) in [-1, 1]

- `MMDiTFirstFrame`: the video MMDiT itself at one frame (t2v; trained on images too);
- `FluxFirstFrame`: a FLUX.1 checkpoint (black-forest-labs naming, through `load_flux`) and
  FLUX's autoencoder from a local diffusers `AutoencoderKL` folder (FLUX.1-dev's `vae/`).
  FLUX-dev is guidance-distilled: the guidance value goes in through its guidance embedding and
  one model pass runs per step (g_txt 1); its schedule is linspace(1, 0, N+1) shifted by
  exp(μ), μ linear in the image tokens from 0.5 at 256 to 1.15 at 4096 (FLUX's `get_schedule`),
  which is `flow.shift_time` with α = exp(μ). T5 runs unmasked, as in FLUX. With an offload
  mode its transformer and VAE take turns on the device as the video models do
  (osora.sample.placement).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Protocol

import torch

from osora.diffusion.sampler import make_noise, sample
from osora.models.text import EmbeddingCache, TextEncoder, encode_cached
from osora.sample.placement import ComponentPlacement, OffloadMode

# FLUX `get_schedule`: μ(tokens) on the line through these two points
FLUX_SHIFT_POINTS = ((256, 0.5), (4096, 1.15))


class FirstFrameModel(Protocol):
    def generate(self, prompts: Sequence[str], seeds: Sequence[int], height: int,
                 width: int) -> torch.Tensor:  # (B, 3, 1, H, W) in [-1, 1]
        ...


class MMDiTFirstFrame:
    """The first frame from an MMDiT at one frame, through a `VideoSampler` (text guidance only:
    there is no image condition)."""

    def __init__(self, sampler, guidance, *, fps: float, motion_score: float | None = None):
        self.sampler, self.guidance = sampler, guidance
        self.fps, self.motion_score = fps, motion_score

    def generate(self, prompts, seeds, height, width, progress=None) -> torch.Tensor:
        z = self.sampler.latents(prompts, seeds, frames=1, height=height, width=width,
                                 fps=self.fps, motion_score=self.motion_score,
                                 guidance=self.guidance, progress=progress)
        return self.sampler.decode(z)[:, :, :1]  # (B, 3, 1, H, W)


def flux_shift(image_tokens: int) -> float:
    """α = exp(μ) of FLUX's schedule for an image of `image_tokens` (2×2-patch) tokens."""
    (x1, y1), (x2, y2) = FLUX_SHIFT_POINTS
    mu = y1 + (y2 - y1) / (x2 - x1) * (image_tokens - x1)
    return math.exp(mu)


class FluxFirstFrame:
    """FLUX.1 text→image. transformer: an MMDiT with guidance_embed (`load_flux`); vae: a
    diffusers AutoencoderKL (its config's scaling_factor and shift_factor apply)."""

    def __init__(self, transformer: torch.nn.Module, vae, text_encoder: TextEncoder, *,
                 steps: int, guidance: float, device: str | torch.device = "cpu",
                 cache: EmbeddingCache | None = None, offload: OffloadMode = "none"):
        cfg = transformer.config
        if not cfg.guidance_embed:
            raise ValueError("FLUX first frame: the transformer has no guidance embedding; "
                             "give a FLUX-dev checkpoint (guidance-distilled)")
        if vae.config.latent_channels != cfg.in_channels:
            raise ValueError(f"FLUX first frame: the VAE has {vae.config.latent_channels} latent "
                             f"channels, the transformer takes {cfg.in_channels}")
        self.transformer, self.vae, self.text_encoder = transformer, vae, text_encoder
        self.steps, self.guidance = steps, guidance
        self.device = torch.device(device)
        self.cache = cache or EmbeddingCache()
        self.spatial_down = 2 ** (len(vae.config.block_out_channels) - 1)
        self.placement = ComponentPlacement(offload, self.device, text_encoder=text_encoder,
                                            model=transformer, ae=vae)

    @classmethod
    def from_paths(cls, checkpoint: str | os.PathLike, vae_folder: str | os.PathLike,
                   text_encoder: TextEncoder, config=None, *, steps: int, guidance: float,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   offload: OffloadMode = "none") -> FluxFirstFrame:
        """From a FLUX checkpoint (osora.weights.flux.FLUX_DEV's shape unless `config`) and a
        local diffusers AutoencoderKL folder; nothing is downloaded. Offloading loads them
        into CPU memory."""
        from osora.weights.flux import FLUX_DEV, load_flux

        load = device if offload == "none" else "cpu"
        transformer, _ = load_flux(checkpoint, config or FLUX_DEV, device=load, dtype=dtype)
        return cls(transformer.eval(), load_flux_vae(vae_folder, load, dtype), text_encoder,
                   steps=steps, guidance=guidance, device=device, offload=offload)

    def _velocity(self, x, t, text, pooled, text_mask=None, cond=None):
        g = torch.full_like(t, self.guidance)
        return self.transformer(x, t, text, pooled, None, None, guidance=g)

    @torch.no_grad()
    def generate(self, prompts, seeds, height, width, progress=None) -> torch.Tensor:
        p = self.transformer.config.patch_size
        step = self.spatial_down * p
        if height % step or width % step:
            raise ValueError(f"FLUX first frame: {height}×{width} must be multiples of {step} "
                             f"(VAE {self.spatial_down}× × patch {p})")
        h, w = height // self.spatial_down, width // self.spatial_down
        with self.placement.text_phase():
            emb = encode_cached(self.text_encoder, list(prompts), self.cache).to(
                self.device, torch.float32)
        noise = make_noise((self.transformer.config.in_channels, 1, h, w), list(seeds),
                           device=self.device)  # (B, 16, 1, h, w)
        with self.placement.denoise_phase():
            z = sample(self._velocity, noise, emb.seq, emb.pooled, neg_text=emb.seq,
                       neg_pooled=emb.pooled, steps=self.steps, g_txt=1.0, g_img=1.0,
                       oscillation=False, dynamic_image=False,
                       shift=flux_shift(h * w // p**2), progress=progress)
        cfg = self.vae.config
        z = z[:, :, 0] / cfg.scaling_factor + (cfg.shift_factor or 0.0)  # (B, 16, h, w)
        with self.placement.ae_phase():
            image = self.vae.decode(z.to(self.vae.dtype)).sample.float()  # (B, 3, H, W)
        return image.clamp(-1, 1)[:, :, None]  # (B, 3, 1, H, W)


def load_flux_vae(folder: str | os.PathLike, device="cpu", dtype=torch.float32):
    """A diffusers AutoencoderKL from a local folder (config.json + safetensors weights)."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"FLUX VAE {folder}: no config.json; give the local diffusers "
                                "AutoencoderKL folder (FLUX.1-dev's vae/); nothing is downloaded")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ImportError("the FLUX first frame needs diffusers for FLUX's AutoencoderKL: "
                          "pip install -e '.[pipeline]'") from None
    vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    return vae.to(device=device, dtype=dtype).eval()

