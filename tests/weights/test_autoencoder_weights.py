"""The trained DC-AE's export: safetensors with its architecture, back bit for bit, and a clear
refusal when params describe another architecture."""

import dataclasses
from pathlib import Path

import pytest
import torch

from osora.config import load_settings
from osora.models.dcae import DCAE
from osora.weights.autoencoder import load_autoencoder, load_dcae, save_dcae
from osora.weights.safetensors_io import load_weights, read_metadata

REPO = Path(__file__).resolve().parents[2]
AE = load_settings(params_dir=REPO / "params").ae


def test_export_round_trip_is_bit_exact_and_chosen_by_params(tmp_path):
    torch.manual_seed(0)
    model = DCAE(AE.dcae)
    path = save_dcae(model, tmp_path / "dcae.safetensors")
    loaded = load_autoencoder(AE, path)  # autoencoder.weights null: the trained DC-AE
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    from_state = save_dcae(model.state_dict(), tmp_path / "b.safetensors", model.config)
    assert read_metadata(from_state) == read_metadata(path)  # (header key order is not fixed)
    a, b = load_weights(from_state), load_weights(path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weights_of_another_architecture_are_refused_naming_the_fix(tmp_path):
    path = save_dcae(DCAE(AE.dcae), tmp_path / "dcae.safetensors")
    other = dataclasses.replace(AE.dcae, latent_channels=32)
    with pytest.raises(ValueError, match=r"latent_channels.*rerun ae_train"):
        load_dcae(path, other)
    with pytest.raises(ValueError, match="a state dict needs its config"):
        save_dcae({}, tmp_path / "x.safetensors")
