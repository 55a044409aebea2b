"""Import the released HunyuanVideo VAE (or Open-Sora v2's copy of it) into osora's HunyuanVAE.

Checkpoints (local files only; nothing is downloaded):
- HunyuanVideo `hunyuan-video-t2v-720p/vae/pytorch_model.pt`: a torch file whose "state_dict"
  holds the VAE under a `vae.` prefix; read with `torch.load(weights_only=True)`.
- Open-Sora v2 `hunyuan_vae.safetensors` (and diffusers-style safetensors): the same names
  without the prefix.

The key map is explicit: `key_map(config)` lists every reference name of a config's layout
(the naming of hyvideo/vae and opensora/models/hunyuan_vae, e.g.
`encoder.down_blocks.0.resnets.0.conv1.conv.weight`) with its osora name. osora keeps the
reference module tree, so the map is the identity except for the attention output projection,
`mid_block.attentions.0.to_out.0.*` → `mid_block.attentions.0.to_out.*` (diffusers wraps it in
a ModuleList with a dropout). Older diffusers attention names (`query`, `key`, `value`,
`proj_attn`; see LEGACY_ATTENTION_NAMES) are accepted for the same tensors. A key that is
neither mapped nor in `ignore` is an error that lists it; so is a missing or misshapen tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from osora.models.hunyuan_vae import HUNYUAN_VAE, HunyuanVAE, HunyuanVAEConfig

# Old diffusers attention-block names → the names of the released checkpoints.
LEGACY_ATTENTION_NAMES = {
    "query": "to_q",
    "key": "to_k",
    "value": "to_v",
    "proj_attn": "to_out.0",
}
# The HunyuanVideo .pt file stores the VAE as `vae.<name>` (its loader strips the prefix).
CHECKPOINT_PREFIX = "vae."


def _conv(prefix: str) -> list[str]:
    """A reference CausalConv3d: the wrapped nn.Conv3d is `.conv`."""
    return [f"{prefix}.conv.weight", f"{prefix}.conv.bias"]


def _affine(prefix: str) -> list[str]:
    """GroupNorm / Linear / plain Conv3d."""
    return [f"{prefix}.weight", f"{prefix}.bias"]


def _resnet(prefix: str, cin: int, cout: int) -> list[str]:
    keys = _affine(f"{prefix}.norm1") + _conv(f"{prefix}.conv1")
    keys += _affine(f"{prefix}.norm2") + _conv(f"{prefix}.conv2")
    if cin != cout:
        keys += _conv(f"{prefix}.conv_shortcut")
    return keys


def _mid(prefix: str, width: int, attention: bool) -> list[str]:
    keys = _resnet(f"{prefix}.resnets.0", width, width)
    if attention:
        a = f"{prefix}.attentions.0"
        keys += _affine(f"{a}.group_norm")
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            keys += _affine(f"{a}.{name}")
    return keys + _resnet(f"{prefix}.resnets.1", width, width)


def reference_names(config: HunyuanVAEConfig = HUNYUAN_VAE) -> list[str]:
    """Every tensor name of the reference AutoencoderKLCausal3D for `config`, in module order."""
    w = config.widths
    factors = config.block_factors()
    keys = _conv("encoder.conv_in")
    for i, (ft, fs) in enumerate(factors):
        cin = w[max(i - 1, 0)]
        for j in range(config.layers_per_block):
            keys += _resnet(f"encoder.down_blocks.{i}.resnets.{j}", cin if j == 0 else w[i], w[i])
        if ft * fs > 1:
            keys += _conv(f"encoder.down_blocks.{i}.downsamplers.0.conv")
    keys += _mid("encoder.mid_block", w[-1], config.mid_attention)
    keys += _affine("encoder.conv_norm_out") + _conv("encoder.conv_out")

    r = w[::-1]
    keys += _conv("decoder.conv_in")
    keys += _mid("decoder.mid_block", r[0], config.mid_attention)
    for i, (ft, fs) in enumerate(factors):
        cin = r[max(i - 1, 0)]
        for j in range(config.layers_per_block + 1):
            keys += _resnet(f"decoder.up_blocks.{i}.resnets.{j}", cin if j == 0 else r[i], r[i])
        if ft * fs > 1:
            keys += _conv(f"decoder.up_blocks.{i}.upsamplers.0.conv")
    keys += _affine("decoder.conv_norm_out") + _conv("decoder.conv_out")
    return keys + _affine("quant_conv") + _affine("post_quant_conv")


def _osora_name(ref: str) -> str:
    """The one rename: diffusers' `to_out.0` (Linear + Dropout list) is osora's `to_out`."""
    return ref.replace(".attentions.0.to_out.0.", ".attentions.0.to_out.")


def key_map(config: HunyuanVAEConfig = HUNYUAN_VAE) -> dict[str, str]:
    """{reference name: osora name} for every tensor of `config`, legacy attention names too."""
    table = {ref: _osora_name(ref) for ref in reference_names(config)}
    for ref in list(table):
        for old, new in LEGACY_ATTENTION_NAMES.items():
            marker = f".attentions.0.{new}."
            if marker in ref:
                table[ref.replace(marker, f".attentions.0.{old}.")] = table[ref]
    return table


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: HunyuanVAEConfig = HUNYUAN_VAE,
    ignore: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """A reference state dict → osora's names, checked against `config`'s layout.

    `vae.`-prefixed names (HunyuanVideo's .pt) are read without the prefix. Keys listed in
    `ignore` (exact names, before prefix stripping) are dropped. Raises ValueError listing every
    unknown key, every missing tensor, every tensor given twice (new and legacy name) and every
    shape mismatch.
    """
    table = key_map(config)
    ignore = set(ignore)
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    unknown, duplicated = [], []
    for key, value in state_dict.items():
        if key in ignore:
            continue
        ref = key[len(CHECKPOINT_PREFIX):] if key.startswith(CHECKPOINT_PREFIX) else key
        name = table.get(ref)
        if name is None:
            unknown.append(key)
            continue
        if name in out:
            duplicated.append(f"{source[name]} and {key}")
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        out[name], source[name] = value, key

    with torch.device("meta"):
        expected = HunyuanVAE(config).state_dict()
    missing = [name for name in expected if name not in out]
    shapes = [
        f"{source[name]}: expected {tuple(t.shape)}, got {tuple(out[name].shape)}"
        for name, t in expected.items()
        if name in out and tuple(out[name].shape) != tuple(t.shape)
    ]
    problems = []
    if unknown:
        problems.append(f"unknown keys ({len(unknown)}; pass them in `ignore` to skip): "
                        + ", ".join(unknown))
    if missing:
        problems.append(f"missing tensors ({len(missing)}, osora names): " + ", ".join(missing))
    if duplicated:
        problems.append("tensors given twice: " + "; ".join(duplicated))
    if shapes:
        problems.append("shape mismatches (is the config right?): " + "; ".join(shapes))
    if problems:
        raise ValueError("HunyuanVideo VAE checkpoint does not fit HunyuanVAE(config):\n  "
                         + "\n  ".join(problems))
    return out


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local .safetensors file, or of a .pt/.pth/.ckpt via weights_only torch.load.

    A torch file may wrap the tensors in {"state_dict": ...} (HunyuanVideo) or {"module": ...}.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HunyuanVideo VAE checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from osora.weights.safetensors_io import load_weights

        return load_weights(path)
    if path.suffix not in (".pt", ".pth", ".ckpt", ".bin"):
        raise ValueError(
            f"{path}: unknown checkpoint type {path.suffix!r}; give a .safetensors file or a "
            f"torch file (.pt, .pth, .ckpt, .bin)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(
            f"{path} is not a weights-only torch checkpoint ({err}); osora never unpickles "
            f"arbitrary objects: convert it to safetensors"
        ) from None
    for wrapper in ("state_dict", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def load_hunyuan_vae(
    path: str | os.PathLike,
    config: HunyuanVAEConfig = HUNYUAN_VAE,
    ignore: Iterable[str] = (),
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> HunyuanVAE:
    """Build HunyuanVAE(config) and fill it from a reference checkpoint at `path`."""
    tensors = convert_state_dict(read_checkpoint(path), config, ignore)
    with torch.device("meta"):
        model = HunyuanVAE(config)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()
