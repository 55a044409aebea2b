"""osora's MMDiT checkpoint (config in the metadata) and `osora weights import`."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from osora.cli import main
from osora.config import load_settings
from osora.models.mmdit import MMDiT
from osora.weights.mmdit import load_mmdit, save_mmdit, saved_config
from osora.weights.opensora_v2 import load_opensora_v2, opensora_v2_reference_names
from osora.weights.safetensors_io import load_weights

REPO = Path(__file__).resolve().parents[2]
TINY = load_settings(params_dir=REPO / "params").dit.model


def test_round_trip_keeps_config_weights_and_dtype(tmp_path):
    torch.manual_seed(0)
    model = MMDiT(TINY)
    path = save_mmdit(model, tmp_path / "dit.safetensors", text_encoder="minilm(x)")
    assert saved_config(path) == TINY
    loaded = load_mmdit(path)
    assert not loaded.training
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert next(load_mmdit(path, dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16


def test_weights_import_writes_a_checkpoint_equal_to_the_importer(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    src = tmp_path / "Open_Sora_v2.safetensors"
    save_file({name: torch.randn(shape, generator=gen)
               for name, shape in opensora_v2_reference_names(TINY).items()}, str(src))
    dst = tmp_path / "osora.safetensors"
    assert main(["weights", "import", "opensora_v2", str(src), str(dst)]) == 0
    expected = load_opensora_v2(src, TINY).state_dict()
    got = load_weights(dst)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert saved_config(dst) == TINY


def test_not_an_osora_checkpoint_says_to_import_it(tmp_path):
    path = tmp_path / "flux1-dev.safetensors"
    save_file({"img_in.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError, match="osora weights import"):
        load_mmdit(path)
