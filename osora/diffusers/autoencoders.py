"""The pipeline's `vae/`, in diffusers' format, and the one view of it osora's sampler needs.

- Video DC-AE: `OsoraDCAE` (`ModelMixin` + `ConfigMixin`, config = DCAEConfig's fields) holds
  osora's DCAE as the submodule `dcae` (tensors saved as `dcae.<osora name>`).
- HunyuanVideo VAE: diffusers' own `AutoencoderKLHunyuanVideo`. osora's HunyuanVAE keeps the
  reference tensor names, which are diffusers' except the attention output projection
  (`to_out` here, `to_out.0` there; osora.weights.hunyuan_vae), and diffusers builds the same
  layers for temporal_down 4 with GroupNorm eps 1e-6 and per-clip statistics — the only
  HunyuanVAE configs that export.

Both sides call the AE through osora's `VideoAutoencoder` protocol (osora.models.autoencoder):
encode/decode raw latents, `to_dit`/`from_dit` for the DiT's scale (the DC-AE divides by its
factor, the HunyuanVideo VAE multiplies). `OsoraDCAE` is one; `HunyuanVideoVAEView` makes
diffusers' model one.
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import AutoencoderKLHunyuanVideo, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from osora.models.dcae import DCAE, DCAEConfig
from osora.models.hunyuan_vae import HunyuanVAE, HunyuanVAEConfig
from osora.weights.hunyuan_vae import key_map, reference_names

DIFFUSERS_NORM_EPS = 1e-6  # AutoencoderKLHunyuanVideo's GroupNorm eps (fixed in its blocks)
DIFFUSERS_TEMPORAL_DOWN = 4  # its block rule equals HunyuanVAEConfig.block_factors only here


class OsoraDCAE(ModelMixin, ConfigMixin):
    """osora's Video DC-AE with a diffusers config; a `VideoAutoencoder` like the DCAE."""

    causal = False

    @register_to_config
    def __init__(self, *, in_channels: int, latent_channels: int, widths: list[int],
                 encoder_depths: list[int], decoder_depths: list[int], block_types: list[str],
                 temporal_down: list[bool], head_dim: int, attn_scales: list[int],
                 mlp_ratio: float, norm_eps: float, scaling_factor: float):
        super().__init__()
        self.dcae = DCAE(DCAEConfig(
            in_channels=in_channels, latent_channels=latent_channels, widths=widths,
            encoder_depths=encoder_depths, decoder_depths=decoder_depths,
            block_types=block_types, temporal_down=temporal_down, head_dim=head_dim,
            attn_scales=attn_scales, mlp_ratio=mlp_ratio, norm_eps=norm_eps,
            scaling_factor=scaling_factor))

    @classmethod
    def from_dcae(cls, model: DCAE) -> OsoraDCAE:
        """Wrap a loaded DCAE (its weights as they are)."""
        fields = {k: list(v) if isinstance(v, tuple) else v
                  for k, v in dataclasses.asdict(model.config).items()}
        with torch.device("meta"):  # replaced below: no data needed
            wrapper = cls(**fields)
        wrapper.dcae = model
        return wrapper.eval()

    @property
    def spatial_down(self) -> int:
        return self.dcae.spatial_down

    @property
    def temporal_down(self) -> int:  # the factor (the config's temporal_down are the flags)
        return self.dcae.temporal_down

    @property
    def latent_channels(self) -> int:
        return self.dcae.latent_channels

    @property
    def scaling_factor(self) -> float:
        return self.dcae.scaling_factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) → (B, c, t, h, w)
        return self.dcae.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, c, t, h, w) → (B, 3, T, H, W)
        return self.dcae.decode(z)

    def to_dit(self, z: torch.Tensor) -> torch.Tensor:
        return self.dcae.to_dit(z)

    def from_dit(self, z: torch.Tensor) -> torch.Tensor:
        return self.dcae.from_dit(z)


def hunyuan_vae_diffusers_config(config: HunyuanVAEConfig) -> dict:
    """AutoencoderKLHunyuanVideo's arguments for a HunyuanVAEConfig; ValueError for the configs
    diffusers' class cannot express."""
    if config.frame_norm:
        raise ValueError("a HunyuanVAE with frame_norm=True (per-frame GroupNorm) has no "
                         "diffusers equivalent; AutoencoderKLHunyuanVideo pools over the clip")
    if config.norm_eps != DIFFUSERS_NORM_EPS:
        raise ValueError(f"HunyuanVAE norm_eps {config.norm_eps}: AutoencoderKLHunyuanVideo "
                         f"fixes it at {DIFFUSERS_NORM_EPS}")
    if config.temporal_down != DIFFUSERS_TEMPORAL_DOWN:
        raise ValueError(f"HunyuanVAE temporal_down {config.temporal_down}: only "
                         f"{DIFFUSERS_TEMPORAL_DOWN} exports (AutoencoderKLHunyuanVideo places "
                         "other temporal factors in other blocks)")
    blocks = len(config.widths)
    return dict(in_channels=config.in_channels, out_channels=config.in_channels,
                latent_channels=config.latent_channels,
                down_block_types=("HunyuanVideoDownBlock3D",) * blocks,
                up_block_types=("HunyuanVideoUpBlock3D",) * blocks,
                block_out_channels=tuple(config.widths),
                layers_per_block=config.layers_per_block, norm_num_groups=config.norm_groups,
                scaling_factor=config.scaling_factor,
                spatial_compression_ratio=config.spatial_down,
                temporal_compression_ratio=config.temporal_down,
                mid_block_add_attention=config.mid_attention)


def to_diffusers_hunyuan_vae(model: HunyuanVAE) -> AutoencoderKLHunyuanVideo:
    """diffusers' AutoencoderKLHunyuanVideo holding `model`'s tensors (shared, not copied;
    `to_out` renamed `to_out.0`)."""
    config = model.config
    with torch.device("meta"):
        vae = AutoencoderKLHunyuanVideo(**hunyuan_vae_diffusers_config(config))
    ours = model.state_dict()
    osora_name = key_map(config)  # {reference (= diffusers) name: osora name}
    vae.load_state_dict({ref: ours[osora_name[ref]] for ref in reference_names(config)},
                        strict=True, assign=True)
    return vae.eval()


class HunyuanVideoVAEView:
    """diffusers' AutoencoderKLHunyuanVideo as an osora `VideoAutoencoder` (no weights of its
    own): encode gives the posterior mean, as osora's HunyuanVAE does."""

    causal = True

    def __init__(self, vae: AutoencoderKLHunyuanVideo):
        self.vae = vae
        self.spatial_down = vae.config.spatial_compression_ratio
        self.temporal_down = vae.config.temporal_compression_ratio
        self.latent_channels = vae.config.latent_channels
        self.scaling_factor = vae.config.scaling_factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) → (B, 16, t, h, w)
        return self.vae.encode(x).latent_dist.mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, 16, t, h, w) → (B, 3, T, H, W)
        return self.vae.decode(z).sample

    def to_dit(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scaling_factor  # the reference multiplies (osora.models.hunyuan_vae)

    def from_dit(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scaling_factor
