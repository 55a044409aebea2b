"""DINOv2 distillation: a tiny random DINOv2 saved locally, loaded through `load_dinov2`, patch
features against the Hugging Face model called directly, LatentDistillation on the DC-AE."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from osora.models.dcae import DCAE, DCAE_F32T4C128, DCAE_TINY
from osora.models.dinov2 import (
    LatentDistillation,
    dinov2_patch_features,
    encoder_stage_channels,
    load_dinov2,
)

PATCH = 8
HIDDEN = 32
TINY = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=2,
    num_attention_heads=2,
    mlp_ratio=2,
    patch_size=PATCH,
    image_size=32,
)


@pytest.fixture(scope="module")
def transformers():
    """transformers, imported when a test needs it (not at collection, in every worker)."""
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory, transformers):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dinov2-tiny")
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher(dinov2_dir):
    return load_dinov2(dinov2_dir)


def _reference_patch_grid(model, frames: torch.Tensor, skip: int) -> torch.Tensor:
    """The HF model called directly: [-1, 1] → [0, 1] → ImageNet mean/std, tokens → grid."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = ((frames + 1) / 2 - mean) / std
    with torch.no_grad():
        tokens = model(pixel_values=pixels).last_hidden_state  # (N, skip + h·w, D)
    n, h, w = frames.shape[0], frames.shape[2] // PATCH, frames.shape[3] // PATCH
    return tokens[:, skip:].reshape(n, h, w, -1).permute(0, 3, 1, 2)  # (N, D, h, w)


# --------------------------------------------------------------------------------------------
# Loading


def test_load_dinov2_gives_a_frozen_eval_teacher(teacher, transformers):
    assert isinstance(teacher, transformers.Dinov2Model)
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_missing_folder_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "no-such-dinov2"
    with pytest.raises(FileNotFoundError, match=r"no folder at .*no-such-dinov2.*save_pretrained"):
        load_dinov2(missing)


def test_folder_that_is_not_dinov2_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no config\.json.*Dinov2Model"):
        load_dinov2(tmp_path)  # an empty folder
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ValueError, match=r"'clip_vision_model' model, not one of"):
        load_dinov2(tmp_path)


def test_config_without_weights_is_refused(tmp_path, transformers):
    transformers.Dinov2Config(**TINY).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"cannot load weights from"):
        load_dinov2(tmp_path)


# --------------------------------------------------------------------------------------------
# Patch features


def test_patch_features_equal_the_hf_model_called_directly(teacher, dinov2_dir, transformers):
    reference = transformers.Dinov2Model.from_pretrained(dinov2_dir).eval()
    frames = torch.rand(3, 3, 32, 48) * 2 - 1  # multiples of the patch: no resize
    feats = dinov2_patch_features(teacher, frames)
    assert feats.shape == (3, HIDDEN, 4, 6)
    torch.testing.assert_close(feats, _reference_patch_grid(reference, frames, skip=1))


def test_register_tokens_are_dropped(tmp_path, transformers):
    cfg = transformers.Dinov2WithRegistersConfig(**TINY, num_register_tokens=3)
    transformers.Dinov2WithRegistersModel(cfg).save_pretrained(tmp_path)
    teacher = load_dinov2(tmp_path)
    assert isinstance(teacher, transformers.Dinov2WithRegistersModel)
    frames = torch.rand(2, 3, 16, 24) * 2 - 1
    feats = dinov2_patch_features(teacher, frames)
    assert feats.shape == (2, HIDDEN, 2, 3)
    torch.testing.assert_close(feats, _reference_patch_grid(teacher, frames, skip=1 + 3))


def test_default_size_rounds_to_the_nearest_patch_multiple(teacher):
    frames = torch.rand(2, 3, 30, 45) * 2 - 1  # 30/8 = 3.75 → 32; 45/8 = 5.6 → 48
    assert dinov2_patch_features(teacher, frames).shape == (2, HIDDEN, 4, 6)
    tiny = torch.rand(1, 3, 3, 70) * 2 - 1  # at least one patch
    assert dinov2_patch_features(teacher, tiny).shape == (1, HIDDEN, 1, 9)
    assert dinov2_patch_features(teacher, frames, size=(16, 24)).shape == (2, HIDDEN, 2, 3)
    with pytest.raises(ValueError, match="multiples of the teacher's patch size 8"):
        dinov2_patch_features(teacher, frames, size=(20, 24))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        dinov2_patch_features(teacher, torch.zeros(1, 3, 2, 32, 32))


# --------------------------------------------------------------------------------------------
# LatentDistillation


def test_loss_is_a_scalar_in_0_2(teacher):
    torch.manual_seed(1)
    distill = LatentDistillation(16, HIDDEN)
    feats = torch.randn(2, 16, 4, 4, 4)
    video = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    loss = distill(feats, video, teacher)
    assert loss.ndim == 0 and 0.0 <= loss.item() <= 2.0


def _identity_distill() -> LatentDistillation:
    distill = LatentDistillation(HIDDEN, HIDDEN)
    with torch.no_grad():
        distill.proj.weight.copy_(torch.eye(HIDDEN).view(HIDDEN, HIDDEN, 1, 1, 1))
        distill.proj.bias.zero_()
    return distill


def test_loss_is_zero_on_the_teachers_own_features_and_two_on_their_negation(teacher):
    video = torch.rand(2, 3, 4, 32, 48) * 2 - 1  # (B, 3, T, H, W)
    frames = video.transpose(1, 2).flatten(0, 1)  # (B·T, 3, H, W)
    grid = dinov2_patch_features(teacher, frames)  # (B·T, D, 4, 6)
    student = grid.unflatten(0, (2, 4)).transpose(1, 2)  # (B, D, T, 4, 6)
    distill = _identity_distill()
    assert distill(student, video, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert distill(-student, video, teacher).item() == pytest.approx(2.0, abs=1e-6)


def test_time_alignment_uses_the_frames_at_stride_t_over_t_prime(teacher):
    torch.manual_seed(2)
    distill = LatentDistillation(8, HIDDEN)
    feats = torch.randn(1, 8, 2, 4, 4)  # T' = 2 for T = 4: frames 0 and 2
    video = torch.rand(1, 3, 4, 32, 32) * 2 - 1
    other = video.clone()
    other[:, :, 1::2] = torch.rand(1, 3, 2, 32, 32) * 2 - 1  # frames 1 and 3 changed
    torch.testing.assert_close(distill(feats, other, teacher), distill(feats, video, teacher))
    other[:, :, 2] = -video[:, :, 2]  # frame 2 matters
    assert distill(feats, other, teacher) != distill(feats, video, teacher)
    assert LatentDistillation.frame_indices(2, 4).tolist() == [0, 2]
    assert LatentDistillation.frame_indices(4, 4).tolist() == [0, 1, 2, 3]
    assert LatentDistillation.frame_indices(1, 1).tolist() == [0]


def test_teacher_grid_is_resized_bilinearly_to_the_student_grid(teacher):
    video = torch.rand(1, 3, 1, 64, 64) * 2 - 1  # teacher grid 8×8, student grid 4×4
    grid = dinov2_patch_features(teacher, video[:, :, 0])  # (1, D, 8, 8)
    small = F.interpolate(grid, size=(4, 4), mode="bilinear", align_corners=False)
    distill = _identity_distill()
    assert distill(small[:, :, None], video, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_errors_are_clear(teacher):
    distill = LatentDistillation(8, HIDDEN)
    video = torch.zeros(1, 3, 4, 32, 32)
    with pytest.raises(ValueError, match=r"expected stage features \(B, 8"):
        distill(torch.zeros(1, 7, 4, 4, 4), video, teacher)
    with pytest.raises(ValueError, match="more steps than frames"):
        distill(torch.zeros(1, 8, 8, 4, 4), video, teacher)
    with pytest.raises(ValueError, match="the video"):
        distill(torch.zeros(2, 8, 4, 4, 4), video, teacher)
    with pytest.raises(ValueError, match="teacher_channels=32"):
        LatentDistillation(8, 64)(torch.zeros(1, 8, 4, 4, 4), video, teacher)


# --------------------------------------------------------------------------------------------
# DC-AE: encode_with_features, and the loss's gradient into the encoder


def test_encode_with_features_returns_encodes_latent_exactly():
    torch.manual_seed(3)
    ae = DCAE(DCAE_TINY).eval()
    x = torch.rand(1, 3, 4, 64, 64) * 2 - 1
    with torch.no_grad():
        z, feats = ae.encode_with_features(x, stage=2)
        assert torch.equal(z, ae.encode(x))
        # stage 2 ends with the third down block: widths[3] channels at H/8, time not yet halved
        assert feats.shape == (1, DCAE_TINY.widths[3], 4, 8, 8)
        _, last = ae.encode_with_features(x, stage=len(DCAE_TINY.widths) - 1)
        assert last.shape == (1, DCAE_TINY.widths[-1], 1, 2, 2)
        for stage in range(len(DCAE_TINY.widths)):  # the helper sizing the projection agrees
            _, f = ae.encode_with_features(x, stage)
            assert f.shape[1] == encoder_stage_channels(DCAE_TINY.widths, stage), stage
    assert encoder_stage_channels(DCAE_F32T4C128.widths, 2) == 512
    with pytest.raises(ValueError, match=r"stage must be in \[0, 5\]"):
        encoder_stage_channels(DCAE_TINY.widths, 6)
    with pytest.raises(ValueError, match=r"stage must be in \[0, 5\]"):
        ae.encode_with_features(x, stage=6)
    with pytest.raises(ValueError, match="multiple of 4"):
        ae.encode_with_features(x[:, :, :3], stage=2)


def test_distillation_gradient_reaches_the_encoder_not_the_teacher(teacher):
    torch.manual_seed(4)
    ae = DCAE(DCAE_TINY)
    x = torch.rand(1, 3, 4, 64, 64) * 2 - 1
    _, feats = ae.encode_with_features(x, stage=2)  # (1, 32, 4, 8, 8); teacher grid 8×8
    distill = LatentDistillation(
        encoder_stage_channels(DCAE_TINY.widths, 2), teacher.config.hidden_size
    )
    loss = distill(feats, x, teacher)
    loss.backward()
    assert 0.0 <= loss.item() <= 2.0
    for i in range(3):  # stages 0..2 (and conv_in) feed the aligned features
        grads = [p.grad for p in ae.encoder.stages[i].parameters()]
        assert grads and all(g is not None for g in grads), i
        assert sum(g.abs().sum() for g in grads) > 0, i
    assert ae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ae.encoder.stages[3].parameters())  # after the stage
    assert all(p.grad is None for p in ae.decoder.parameters())
    assert distill.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


# --------------------------------------------------------------------------------------------
# Light imports


def test_modules_import_without_transformers():
    code = (
        "import sys\n"
        "import osora.models.dinov2, osora.models.discriminator, osora.models.losses\n"
        "print('transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
