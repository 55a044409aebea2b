"""A LoRA adapter on disk: a folder peft and diffusers read, tied to the checkpoint it adapts.

    <folder>/adapter_model.safetensors   the adapter tensors alone (`...qkv.lora_A.weight`, …)
    <folder>/adapter_config.json         peft's LoraConfig (r, lora_alpha, target_modules, …)

The safetensors header also holds what osora needs to put the adapter back on the right model:
the MMDiTConfig (`mmdit_config`, as osora's own checkpoints), the base checkpoint's path and
sha256, and the text encoder it was trained with. `merge_lora` writes base + adapter as an
ordinary osora MMDiT checkpoint (osora/weights/mmdit.py), which `osora sample`, dit_sample and
the exporters take like any stage's weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from peft import LoraConfig

from osora.fileio import atomic_write_json, file_sha256
from osora.models.lora import (
    adapter_config,
    adapter_state_dict,
    add_lora,
    merge_into_base,
    set_adapter_state,
)
from osora.models.mmdit import MMDiT, MMDiTConfig
from osora.weights.mmdit import CONFIG_KEY, TEXT_ENCODER_KEY, load_mmdit, save_mmdit
from osora.weights.mmdit import saved_text_encoder as checkpoint_text_encoder
from osora.weights.safetensors_io import load_weights, read_metadata, save_weights

WEIGHTS_NAME = "adapter_model.safetensors"  # peft's / diffusers' file names
CONFIG_NAME = "adapter_config.json"
BASE_PATH_KEY = "base_checkpoint"  # safetensors metadata: the adapted checkpoint's path
BASE_SHA256_KEY = "base_sha256"  # … and its content hash


def save_lora(model: MMDiT, folder: str | os.PathLike, *, base: str | os.PathLike | None,
              text_encoder: str | None = None) -> Path:
    """Write the adapted `model`'s adapters to `folder` (module doc); `base` is the checkpoint
    it adapts (None: a base not on disk, e.g. a fresh init: nothing to check on load).
    Returns the folder."""
    folder = Path(folder)
    metadata = {CONFIG_KEY: json.dumps(dataclasses.asdict(model.config), sort_keys=True)}
    if base is not None:
        metadata[BASE_PATH_KEY] = str(base)
        metadata[BASE_SHA256_KEY] = file_sha256(base)
    if text_encoder is not None:
        metadata[TEXT_ENCODER_KEY] = text_encoder
    save_weights(adapter_state_dict(model), folder / WEIGHTS_NAME, metadata=metadata)
    config = adapter_config(model).to_dict()
    config["base_model_name_or_path"] = None if base is None else str(base)
    # peft's own writer (LoraConfig.save_pretrained) is not atomic; this is its JSON
    atomic_write_json(folder / CONFIG_NAME, {k: sorted(v) if isinstance(v, set) else v
                                            for k, v in config.items()})
    return folder


def adapter_metadata(folder: str | os.PathLike) -> dict[str, str]:
    """The osora metadata of an adapter folder (module doc); a clear error for other folders."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file() or not (Path(folder) / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder}: not a LoRA adapter folder (needs {WEIGHTS_NAME} "
                                f"and {CONFIG_NAME}; a LoRA stage writes models/dit/<stage>/lora)")
    metadata = read_metadata(path)
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path}: no {CONFIG_KEY!r} in its metadata: not an osora adapter "
                         "(save_lora writes one)")
    return metadata


def load_lora(base: MMDiT, folder: str | os.PathLike, *,
              base_path: str | os.PathLike | None = None) -> MMDiT:
    """`base` with the folder's adapters, in place. Refused when the adapter was trained on
    another MMDiT config, or, given the `base_path` the model was loaded from, on another
    checkpoint (sha256) than the one the adapter records."""
    metadata = adapter_metadata(folder)
    trained_on = MMDiTConfig(**json.loads(metadata[CONFIG_KEY]))
    if trained_on != base.config:
        raise ValueError(f"{folder} adapts another MMDiT: the adapter's config {trained_on} vs "
                         f"the base's {base.config}; load it onto the checkpoint it was "
                         f"trained on ({metadata.get(BASE_PATH_KEY, 'not recorded')})")
    recorded = metadata.get(BASE_SHA256_KEY)
    if base_path is not None and recorded is not None:
        digest = file_sha256(base_path)
        if digest != recorded:
            raise ValueError(f"{folder} was trained on {metadata[BASE_PATH_KEY]} (sha256 "
                             f"{recorded}), not on {base_path} (sha256 {digest}); give the "
                             "checkpoint the adapter was trained on")
    add_lora(base, LoraConfig.from_pretrained(str(folder)))
    state = load_weights(Path(folder) / WEIGHTS_NAME, device=base.img_in.weight.device)
    set_adapter_state(base, state)
    return base


def merge_lora(base_path: str | os.PathLike, folder: str | os.PathLike,
               out_path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """Base checkpoint + adapter folder → one osora MMDiT checkpoint at `out_path` (the
    merged weights: W + (alpha / r)·B·A), keeping the base's text encoder metadata (the
    adapter's when the base has none). dtype None: the base's stored dtype."""
    base = load_mmdit(base_path, dtype=dtype)
    merged = merge_into_base(load_lora(base, folder, base_path=base_path))
    text_encoder = checkpoint_text_encoder(base_path) or adapter_metadata(folder).get(
        TEXT_ENCODER_KEY)
    return save_mmdit(merged, out_path, text_encoder=text_encoder)
