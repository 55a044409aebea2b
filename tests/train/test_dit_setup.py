"""Where a DiT stage starts and how its schedule follows params."""

from pathlib import Path

import pytest
import torch

from osora.config import load_settings
from osora.train.dit_setup import initial_model, loop_settings, stage_weights
from osora.weights.mmdit import save_mmdit

REPO = Path(__file__).resolve().parents[2]
DIT = load_settings(params_dir=REPO / "params").dit


def test_a_stage_starts_from_the_earlier_stages_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro dit_stage1"):
        initial_model(DIT, "stage2", tmp_path)
    first = initial_model(DIT, "stage1", tmp_path)
    assert first.training
    with torch.no_grad():
        for p in first.parameters():
            p.add_(1.0)
    save_mmdit(first, stage_weights(tmp_path, "stage1"))
    second = initial_model(DIT, "stage2", tmp_path)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert second.training


def test_another_architecture_is_refused(tmp_path):
    import dataclasses

    from osora.models.mmdit import MMDiT

    other = MMDiT(dataclasses.replace(initial_model(DIT, "stage1", tmp_path).config,
                                      depth_single=3))
    save_mmdit(other, stage_weights(tmp_path, "stage1"))
    with pytest.raises(ValueError, match="another MMDiT"):
        initial_model(DIT, "stage2", tmp_path)


def test_lr_drop_becomes_the_loops_factor():
    s = loop_settings(DIT, "stage1", "cpu")
    step, lr = DIT.train.stages["stage1"].lr_drop
    assert s.lr_drops == ((step, pytest.approx(lr / DIT.train.stages["stage1"].lr)),)
    assert s.steps == DIT.train.stages["stage1"].steps
    assert loop_settings(DIT, "stage2", "cpu").lr_drops == ()
