"""Import the released Open-Sora v2 diffusion transformer (hpcaitech/Open-Sora v2,
`Open_Sora_v2.safetensors`) into osora's MMDiT (docs/recipe.md §3).

Reference: `opensora/models/mmdit/model.py` (MMDiTModel), `layers.py` (SelfAttention,
DoubleStreamBlockProcessor, SingleStreamBlock, LigerEmbedND), `math.py` (liger_rope), config
`configs/diffusion/inference/256px.py`: FLUX-dev's shape with `fused_qkv=False`,
`use_liger_rope=True`, `cond_embed=True`, `guidance_embed=False`, in_channels 64 (16 latent
channels × 2²). Its names are FLUX's (see flux.py) except:
- double blocks project q, k and v separately: `double_blocks.i.{img,txt}_attn.{q,k,v}_proj`
  → osora's fused `…_attn.qkv` (rows q, k, v; weight and bias);
- single blocks: `single_blocks.i.{q_proj, k_proj, v_mlp}` (v_mlp = [v; MLP input]) → osora's
  `linear1` (rows q, k, v, MLP input);
- `cond_in` ((C + 1)·p² → hidden, applied to the packed [mask, mask·latent] condition and added
  to img_in's output; zero-initialised) → osora's img_in condition columns
  `img_in.weight[:, C·p²:]`, and img_in.bias = img_in.bias + cond_in.bias (summed in float32 at
  least): img_in([x, c]) = img_in_ref(x) + cond_in(c). osora's `cond` (B, C + 1, T, H, W) =
  [mask, mask·latent] is packed in the same (c, ph, pw) order as the reference's
  `pack(torch.cat((masks, masked_ref), dim=1))` (opensora/utils/sampling.py, I2VDenoiser);
- QK-norm `.scale` → `.weight`.
No RoPE permutation for osora's default rope_layout="rotate_half": the released weights were
trained with Liger's rotate-half RoPE (LigerEmbedND: per-axis cos/sin concatenated, then
repeated over both halves of the head). A checkpoint trained with `use_liger_rope=False`
(FLUX's interleaved EmbedND) is read with `rope_layout="interleaved"`; the q/k rows are then
permuted to the config's layout. Checkpoints saved with `fused_qkv=True` (FLUX's `qkv` /
`linear1` names plus cond_in) are recognised and read too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from osora.models.mmdit import MMDIT_11B, MMDiT, MMDiTConfig
from osora.weights.flux import (
    DIFFUSERS_PREFIXES,
    build_mmdit,
    check_names_and_shapes,
    check_target,
    combine_parts,
    key_map_of,
    rope_to_config,
    source_table,
    strip_and_ignore,
)
from osora.weights.safetensors_io import read_safetensors_checkpoint

OPENSORA_V2_ROPE_LAYOUT = "rotate_half"  # use_liger_rope=True in every released config
_FUSED = re.compile(r"^(double_blocks\.\d+\.(img|txt)_attn\.qkv|single_blocks\.\d+\.linear1)\.")


def _cond_features(config: MMDiTConfig) -> int:
    """The reference's cond_in width: in_channels·p² + p² (one mask channel), or 0."""
    if config.cond_channels == 0:
        return 0
    if config.cond_channels != config.in_channels + 1:
        raise ValueError(
            f"Open-Sora v2's cond_in takes [mask, mask·latent] = in_channels + 1 = "
            f"{config.in_channels + 1} channels, but the config has cond_channels = "
            f"{config.cond_channels}; use {config.in_channels + 1} (or 0 for a checkpoint "
            "without cond_in)"
        )
    return config.cond_channels * config.patch_size**2


def opensora_v2_reference_names(
    config: MMDiTConfig = MMDIT_11B, *, fused_qkv: bool = False
) -> dict[str, tuple[int, ...]]:
    """{name: shape} of an Open-Sora v2 `MMDiTModel` checkpoint of `config`'s shape: the
    reference's in_channels = C·p², cond_in (when config.cond_channels = C + 1, the
    reference's cond_embed=True) of width (C + 1)·p², guidance_in when guidance_embed,
    separate q/k/v projections unless fused_qkv."""
    return source_table(
        config,
        in_features=config.latent_features,
        out_features=config.latent_features,
        guidance_embed=config.guidance_embed,
        cond_features=_cond_features(config),
        split_qkv=not fused_qkv,
    )


def opensora_v2_key_map(
    config: MMDiTConfig = MMDIT_11B, *, fused_qkv: bool = False
) -> dict[str, tuple[str, ...]]:
    """{osora name: the Open-Sora v2 names it is made of, in order} for MMDiT(config), e.g.
    `double_blocks.0.img_attn.qkv.weight` ← (…q_proj.weight, …k_proj.weight, …v_proj.weight),
    `img_in.weight` ← (img_in.weight, cond_in.weight) side by side, `img_in.bias` ← their sum."""
    return key_map_of(opensora_v2_reference_names(config, fused_qkv=fused_qkv))


def _opensora_v2(
    state: Mapping[str, torch.Tensor],
    config: MMDiTConfig,
    *,
    ignore: Iterable[str] = (),
    rope_layout: str = OPENSORA_V2_ROPE_LAYOUT,
    source: str = "state dict",
    origin: Mapping[str, os.PathLike | str] | None = None,
) -> dict[str, torch.Tensor]:
    tensors, original, _, _ = strip_and_ignore(state, ignore)
    fused = any(_FUSED.match(k) for k in tensors)
    expected = opensora_v2_reference_names(config, fused_qkv=fused)
    hints = []
    if any(k.startswith(DIFFUSERS_PREFIXES) for k in tensors):
        hints.append("these are diffusers names, not Open-Sora v2's (FLUX-style) names")
    has_cond = any(k.startswith("cond_in.") for k in tensors)
    if config.cond_channels and not has_cond:
        hints.append(
            "the checkpoint has no cond_in (cond_embed=False, or a FLUX checkpoint: use "
            "load_flux); use a config with cond_channels=0"
        )
    if has_cond and not config.cond_channels:
        hints.append(
            f"the checkpoint has cond_in (cond_embed=True): use a config with cond_channels = "
            f"in_channels + 1 = {config.in_channels + 1}"
        )
    check_names_and_shapes(
        tensors,
        expected,
        what="Open-Sora v2 checkpoint",
        source=source,
        origin=origin,
        original=original,
        hints=hints,
    )
    # The reference's order (q, k, v; img_in, cond_in), not the file's (safetensors sorts names).
    out = {
        name: combine_parts(name, [tensors[s] for s in parts], config)
        for name, parts in key_map_of(expected).items()
    }
    out, _ = rope_to_config(out, config, rope_layout)
    check_target(out, config)
    return out


def convert_opensora_v2_state_dict(
    state: Mapping[str, torch.Tensor],
    config: MMDiTConfig = MMDIT_11B,
    *,
    ignore: Iterable[str] = (),
    rope_layout: str = OPENSORA_V2_ROPE_LAYOUT,
) -> dict[str, torch.Tensor]:
    """An Open-Sora v2 state dict → MMDiT(config)'s state dict.

    rope_layout: the layout the checkpoint was trained with ("rotate_half" for
    use_liger_rope=True, every released config; "interleaved" otherwise); the q/k rows are
    permuted when it differs from config.rope_layout. `ignore`: fnmatch patterns of names to
    skip. Raises ValueError listing every unknown, missing and misshapen tensor.
    """
    return _opensora_v2(state, config, ignore=ignore, rope_layout=rope_layout)


def load_opensora_v2(
    path: str | os.PathLike,
    config: MMDiTConfig = MMDIT_11B,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    ignore: Iterable[str] = (),
    rope_layout: str = OPENSORA_V2_ROPE_LAYOUT,
) -> MMDiT:
    """MMDiT(config) with the Open-Sora v2 weights at `path` (a .safetensors file, a shard
    index, or a folder with one). Tensors are read onto `device`; with `dtype` they are cast
    before conversion (so the merged img_in bias is summed in that precision); None keeps the
    checkpoint's (bf16 for the release)."""
    tensors, origin = read_safetensors_checkpoint(path, device)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    state = _opensora_v2(
        tensors,
        config,
        ignore=ignore,
        rope_layout=rope_layout,
        source=str(Path(path)),
        origin=origin,
    )
    return build_mmdit(state, config, device, dtype)
