"""osora checkpoints ↔ diffusers folders (`osora weights export diffusers` / `import diffusers`).

export: an osora MMDiT checkpoint (osora.weights.mmdit), the AE it samples with and the text
encoder params become a folder `OsoraPipeline.from_pretrained` loads, written by diffusers'
own `save_pretrained`:

    model_index.json   OsoraPipeline; its components' [module, class]; text_encoder_params
    transformer/       OsoraTransformer: config.json (MMDiTConfig fields + text_encoder
                       identity) + diffusion_pytorch_model.safetensors (osora's tensor names
                       under `mmdit.`, in the checkpoint's dtype)
    vae/               OsoraDCAE, or diffusers' AutoencoderKLHunyuanVideo
    scheduler/         FlowMatchEulerDiscreteScheduler in osora's configuration

import: transformer/ back to an osora checkpoint. Its config holds everything the checkpoint's
metadata held (the MMDiTConfig and the text encoder identity) and the tensors keep their
dtype, so `save_mmdit` writes the original file again: the same header entries and tensor
bytes: the original file byte for byte (osora's writer sorts the metadata).
It reads the files itself (one safetensors file or diffusers' shards): no diffusers needed.

A merged LoRA fine-tune is an osora MMDiT checkpoint like any other: it exports the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from osora.models.dcae import DCAE
from osora.models.hunyuan_vae import HunyuanVAE
from osora.models.mmdit import MMDiT, MMDiTConfig
from osora.models.text import text_encoder_identity
from osora.sample.run import default_autoencoder
from osora.weights.autoencoder import load_autoencoder
from osora.weights.mmdit import load_mmdit, save_mmdit, saved_text_encoder
from osora.weights.safetensors_io import read_safetensors_checkpoint

TRANSFORMER = "transformer"  # the transformer's folder in a pipeline folder
MMDIT_PREFIX = "mmdit."  # where OsoraTransformer's state dict holds the MMDiT's tensors


def mmdit_config_fields(config: MMDiTConfig) -> dict:
    """MMDiTConfig as OsoraTransformer's config entries (tuples as lists, as JSON has them)."""
    fields = dataclasses.asdict(config)
    fields["axes_dims"] = list(fields["axes_dims"])
    return fields


def mmdit_config_from(config: dict) -> MMDiTConfig:
    """The MMDiTConfig in an OsoraTransformer config (config.json's dict)."""
    names = [f.name for f in dataclasses.fields(MMDiTConfig)]
    missing = [n for n in names if n not in config]
    if missing:
        raise ValueError(f"transformer config lacks MMDiTConfig fields {missing}: not an "
                         "OsoraTransformer config (`osora weights export diffusers` writes one)")
    return MMDiTConfig(**{n: config[n] for n in names})


def export_diffusers(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, settings, *,
                     autoencoder: str | os.PathLike | None = None,
                     root: str | os.PathLike = ".") -> Path:
    """Export `checkpoint` with the AE and text encoder `settings` (a profile's) give:
    params/ae.yaml:autoencoder, or the weights at `autoencoder` (default: as `osora sample`,
    the ae_train stage's DC-AE under `root`), and params/dit.yaml:text."""
    ae_path = autoencoder or default_autoencoder(settings, Path(root))
    ae = load_autoencoder(settings.ae, ae_path)
    return write_diffusers_folder(checkpoint, ae, settings.dit.text, out_dir)


def write_diffusers_folder(checkpoint: str | os.PathLike, ae: DCAE | HunyuanVAE, text_params,
                           out_dir: str | os.PathLike) -> Path:
    """The pipeline folder of `checkpoint` + `ae` (a loaded DCAE or HunyuanVAE) + the text
    encoder `text_params` (osora.config.dit.TextParams) refers to. Returns out_dir."""
    # diffusers is the pipeline extra's; only an export needs it
    from osora.diffusers import OsoraDCAE, OsoraPipeline, OsoraTransformer, osora_scheduler
    from osora.diffusers.autoencoders import to_diffusers_hunyuan_vae

    trained_with = saved_text_encoder(checkpoint)
    given = text_encoder_identity(text_params)
    if trained_with is not None and trained_with != given:
        raise ValueError(f"{checkpoint} was trained with text encoder {trained_with}; the "
                         f"profile's params/dit.yaml:text gives {given}: export with the "
                         "profile (--profile) that names that encoder")
    model = load_mmdit(checkpoint)  # the stored dtype
    if isinstance(ae, DCAE):
        vae = OsoraDCAE.from_dcae(ae)
    elif isinstance(ae, HunyuanVAE):
        vae = to_diffusers_hunyuan_vae(ae)
    else:
        raise ValueError(f"cannot export a {type(ae).__name__}: give a DCAE or a HunyuanVAE")
    if model.config.in_channels != ae.latent_channels:
        raise ValueError(f"{checkpoint} takes {model.config.in_channels}-channel latents but the "
                         f"AE makes {ae.latent_channels}: give the AE the checkpoint was trained "
                         "on (--autoencoder, or the profile's params/ae.yaml:autoencoder)")
    pipe = OsoraPipeline(OsoraTransformer.from_mmdit(model, text_encoder=trained_with), vae,
                         osora_scheduler(), text_encoder_params=text_params.model_dump())
    pipe.save_pretrained(out_dir)
    return Path(out_dir)


def import_diffusers(folder: str | os.PathLike, out_checkpoint: str | os.PathLike) -> Path:
    """The osora checkpoint of an exported pipeline folder (or of its transformer/ folder)."""
    folder = Path(folder)
    if (folder / TRANSFORMER).is_dir():
        folder = folder / TRANSFORMER
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: no such file; give a folder that `osora weights "
                                "export diffusers` wrote (or its transformer/ folder)")
    config = json.loads(config_file.read_text())
    tensors, _ = read_safetensors_checkpoint(folder)
    foreign = [k for k in tensors if not k.startswith(MMDIT_PREFIX)]
    if foreign:
        raise ValueError(f"{folder}: tensors outside the OsoraTransformer's {MMDIT_PREFIX!r} "
                         f"module: {foreign[:5]}")
    with torch.device("meta"):
        model = MMDiT(mmdit_config_from(config))
    model.load_state_dict({k[len(MMDIT_PREFIX):]: v for k, v in tensors.items()}, strict=True,
                          assign=True)  # keeps the stored dtype
    return save_mmdit(model, out_checkpoint, text_encoder=config.get("text_encoder"))
