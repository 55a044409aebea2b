"""osora's own MMDiT checkpoint: safetensors weights plus the MMDiTConfig they belong to (and,
optionally, the text encoder they were trained with) in the file's metadata, so `osora sample
--checkpoint F` needs nothing else. The released Open-Sora v2 and FLUX weights come in through
their importers (`opensora_v2.py`, `flux.py`), and `save_mmdit` writes either in this format
(`osora weights import`)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from osora.models.mmdit import MMDiT, MMDiTConfig
from osora.weights.safetensors_io import load_weights, read_metadata, save_weights

CONFIG_KEY = "mmdit_config"  # safetensors metadata: the MMDiTConfig as JSON
TEXT_ENCODER_KEY = "text_encoder"  # safetensors metadata: TextEncoder.identity, when known


def save_mmdit(model: MMDiT, path: str | os.PathLike, *, text_encoder: str | None = None
               ) -> Path:
    """The model's weights in their dtype, its config and the text encoder's identity."""
    metadata = {CONFIG_KEY: json.dumps(dataclasses.asdict(model.config), sort_keys=True)}
    if text_encoder is not None:
        metadata[TEXT_ENCODER_KEY] = text_encoder
    return save_weights(model, path, metadata=metadata)


def saved_config(path: str | os.PathLike) -> MMDiTConfig:
    """The MMDiTConfig stored in an osora checkpoint; a clear error for any other file."""
    metadata = read_metadata(path)
    if CONFIG_KEY not in metadata:
        raise ValueError(
            f"{path}: not an osora MMDiT checkpoint (no {CONFIG_KEY!r} in its metadata). "
            "Released weights go through their importer first: "
            "`osora weights import opensora_v2|flux SRC DST` writes one"
        )
    return MMDiTConfig(**json.loads(metadata[CONFIG_KEY]))


def saved_text_encoder(path: str | os.PathLike) -> str | None:
    """The identity of the text encoder the checkpoint was trained with (None: not recorded)."""
    return read_metadata(path).get(TEXT_ENCODER_KEY)


def load_mmdit(path: str | os.PathLike, *, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> MMDiT:
    """The MMDiT of an osora checkpoint, in eval mode (built on the meta device: no wasted
    init; dtype None keeps the stored one)."""
    config = saved_config(path)
    with torch.device("meta"):
        model = MMDiT(config)
    state = load_weights(path, device=device)
    problems = [k for k in model.state_dict() if k not in state]
    if problems:
        raise ValueError(f"{path}: missing tensors for its own config: {problems[:5]}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()

