"""The sampling tests' models: a random tiny-profile MMDiT checkpoint and DC-AE weights."""

from pathlib import Path

import pytest
import torch

from osora.config import load_settings
from osora.models.dcae import DCAE
from osora.models.mmdit import MMDiT
from osora.weights.autoencoder import save_dcae
from osora.weights.mmdit import save_mmdit

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(MMDiT checkpoint, DC-AE weights): random, with weights large enough that the MMDiT's
    output depends visibly on its text and condition inputs."""
    settings = load_settings(params_dir=REPO / "params")
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_dcae(DCAE(settings.ae.dcae), folder / "ae.safetensors")
    model = MMDiT(settings.dit.model)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    save_mmdit(model, folder / "dit.safetensors")
    return folder / "dit.safetensors", folder / "ae.safetensors"
