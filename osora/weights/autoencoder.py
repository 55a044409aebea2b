"""The autoencoder the latent stages use, built from params: the DC-AE that `ae_train` wrote,
or released weights (the HunyuanVideo VAE through its key-mapped importer)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from osora.models.dcae import DCAE, DCAEConfig
from osora.weights.safetensors_io import load_weights, read_metadata, save_weights

CONFIG_KEY = "dcae_config"  # safetensors metadata: the DCAEConfig the weights belong to


def save_dcae(weights: DCAE | Mapping[str, torch.Tensor], path: str | os.PathLike,
              config: DCAEConfig | None = None) -> Path:
    """A DC-AE's weights (the model, or its full state dict with `config`) plus the
    architecture they fit, so a reader can check before loading."""
    if config is None:
        if not isinstance(weights, DCAE):
            raise ValueError("save_dcae: a state dict needs its config")
        config = weights.config
    return save_weights(weights, path,
                        metadata={CONFIG_KEY: json.dumps(vars(config), sort_keys=True)})


def load_dcae(path: str | os.PathLike, config: DCAEConfig, device: str = "cpu") -> DCAE:
    """DCAE(config) with the weights at `path`; a clear error when they were trained for
    another architecture (params/ae.yaml:dcae changed since ae_train ran)."""
    saved = read_metadata(path).get(CONFIG_KEY)
    if saved is not None:
        saved_config = DCAEConfig(**json.loads(saved))
        if saved_config != config:
            diff = {k: (v, getattr(config, k)) for k, v in vars(saved_config).items()
                    if getattr(config, k) != v}
            raise ValueError(
                f"{path}: weights of another DC-AE architecture (saved vs params: {diff}); "
                "rerun ae_train (dvc repro ae_train) or restore params/ae.yaml:dcae"
            )
    model = DCAE(config)
    load_weights(path, model)
    return model.to(device).eval()


def load_autoencoder(ae_params, trained: str | os.PathLike, device: str = "cpu") -> torch.nn.Module:
    """The AE that params/ae.yaml:autoencoder chooses, in eval mode on `device`.

    `trained` is the DC-AE checkpoint of the ae_train stage, used when no weights are given."""
    choice = ae_params.autoencoder
    if choice.kind == "hunyuan_vae":
        from osora.weights.hunyuan_vae import load_hunyuan_vae

        return load_hunyuan_vae(choice.weights, device=device)
    return load_dcae(choice.weights or trained, ae_params.dcae, device)
