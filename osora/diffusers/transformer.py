"""`OsoraTransformer`: osora's MMDiT as a diffusers model (`ModelMixin` + `ConfigMixin`).

Its config is the MMDiTConfig's fields plus `text_encoder`, the identity of the text encoder
the weights were trained with (what an osora checkpoint keeps in its safetensors metadata), so
transformer/config.json holds everything the checkpoint's metadata held.

The MMDiT is the submodule `mmdit`: diffusers' `save_pretrained` writes its tensors under
osora's names with the prefix `mmdit.` (`mmdit.double_blocks.0.img_attn.qkv.weight`), and
`from_pretrained` reads them back. Calling the model is calling the MMDiT (same arguments), so
osora's sampler takes an OsoraTransformer where it takes an MMDiT.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from osora.models.mmdit import MMDiT, MMDiTConfig
from osora.weights.diffusers_export import mmdit_config_fields


class OsoraTransformer(ModelMixin, ConfigMixin):
    """An osora MMDiT with a diffusers config; forward is `MMDiT.forward`."""

    # no defaults: every field comes from the checkpoint it was exported from (MMDiTConfig's
    # defaults are the paper model's and stay in one place)
    @register_to_config
    def __init__(self, *, in_channels: int, patch_size: int, cond_channels: int,
                 hidden_size: int, num_heads: int, depth_double: int, depth_single: int,
                 mlp_ratio: float, text_dim: int, vec_dim: int, axes_dims: list[int],
                 theta: float, qkv_bias: bool, guidance_embed: bool, rope_layout: str,
                 text_encoder: str | None):
        super().__init__()
        self.mmdit = MMDiT(MMDiTConfig(
            in_channels=in_channels, patch_size=patch_size, cond_channels=cond_channels,
            hidden_size=hidden_size, num_heads=num_heads, depth_double=depth_double,
            depth_single=depth_single, mlp_ratio=mlp_ratio, text_dim=text_dim,
            vec_dim=vec_dim, axes_dims=tuple(axes_dims), theta=theta, qkv_bias=qkv_bias,
            guidance_embed=guidance_embed, rope_layout=rope_layout))

    @classmethod
    def from_mmdit(cls, model: MMDiT, *, text_encoder: str | None) -> OsoraTransformer:
        """Wrap a loaded MMDiT (its weights and dtype as they are; nothing is copied)."""
        with torch.device("meta"):  # the wrapper's own MMDiT is replaced: build it without data
            wrapper = cls(**mmdit_config_fields(model.config), text_encoder=text_encoder)
        wrapper.mmdit = model
        return wrapper.eval()

    @property
    def mmdit_config(self) -> MMDiTConfig:
        return self.mmdit.config

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """`MMDiT.forward`: (x, t, text, pooled, text_mask=None, cond=None) → velocity."""
        return self.mmdit(*args, **kwargs)

