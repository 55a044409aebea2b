"""3D PatchGAN discriminator (docs/recipe.md §2 phase 2): layout, shapes, errors, learning."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from osora.models.discriminator import (
    DISCRIMINATOR_F32T4,
    DISCRIMINATOR_TINY,
    Discriminator3D,
    Discriminator3DConfig,
)
from osora.models.losses import hinge_d_loss


def _count(cfg: Discriminator3DConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Discriminator3D(cfg).parameters())


def _reference_nlayer_3d(ndf: int = 64, n_layers: int = 5, dropout: float = 0.3) -> nn.Sequential:
    """Open-Sora v2's NLayerDiscriminator3D layer list, written out from its description: kernel 3,
    padding 1; conv stride 2 + LeakyReLU; then per n in 1..n_layers-1 a bias-free conv to
    ndf·min(2^n, 8) with stride 2 (n = 1) or (1, 2, 2), BatchNorm3d, LeakyReLU, Dropout; a
    stride-1 bias-free conv to ndf·min(2^n_layers, 8), BN, LeakyReLU, Dropout; a conv to 1."""
    seq: list[nn.Module] = [nn.Conv3d(3, ndf, 3, 2, 1), nn.LeakyReLU(0.2)]
    mult = 1
    for n in range(1, n_layers):
        prev, mult = mult, min(2**n, 8)
        stride = 2 if n == 1 else (1, 2, 2)
        seq += [
            nn.Conv3d(ndf * prev, ndf * mult, 3, stride, 1, bias=False),
            nn.BatchNorm3d(ndf * mult),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
        ]
    prev, mult = mult, min(2**n_layers, 8)
    seq += [
        nn.Conv3d(ndf * prev, ndf * mult, 3, 1, 1, bias=False),
        nn.BatchNorm3d(ndf * mult),
        nn.LeakyReLU(0.2),
        nn.Dropout(dropout),
        nn.Conv3d(ndf * mult, 1, 3, 1, 1),
    ]
    return nn.Sequential(*seq)


# --------------------------------------------------------------------------------------------
# Sizes and the reference layout


def test_param_counts():
    assert _count(DISCRIMINATOR_F32T4) == 18_823_553  # Open-Sora v2's n_layers=5, ndf=64
    assert _count(DISCRIMINATOR_TINY) == 74_321
    # the tiny default of params/ae.yaml (widths only): a few K
    assert _count(Discriminator3DConfig(widths=(16, 32, 32), norm="group")) < 100_000


def test_paper_config_is_the_reference_layer_for_layer():
    ref = _reference_nlayer_3d()
    disc = Discriminator3D(DISCRIMINATOR_F32T4)
    ref_state = {f"main.{k}": v for k, v in ref.state_dict().items()}
    ours = disc.state_dict()
    assert set(ours) == set(ref_state)
    assert all(ours[k].shape == v.shape for k, v in ref_state.items())
    assert [type(m) for m in disc.main] == [type(m) for m in ref]
    # same weights → same logits (eval mode: dropout off, BN on its initial running stats)
    disc.load_state_dict(ref_state)
    disc.eval()
    ref.eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(disc(x), ref(x))
        assert disc(x).shape == (1, 1, 1, 1, 1)


def test_paper_config_maps_a_training_clip_to_8x8x8_patches():
    with torch.device("meta"):
        disc = Discriminator3D(DISCRIMINATOR_F32T4)
    assert disc.output_size(32, 256, 256) == (8, 8, 8)  # 4× time, 32× space
    assert disc.output_size(1, 256, 256) == (1, 8, 8)  # an image stays one frame
    assert disc.min_size == 32


# --------------------------------------------------------------------------------------------
# Shapes for any T ≥ 1 and H, W ≥ min_size


@pytest.mark.parametrize(
    "thw",
    [(1, 16, 16), (2, 16, 16), (3, 17, 23), (4, 32, 16), (5, 16, 33), (8, 48, 40), (9, 16, 16)],
)
@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_output_shape_is_ceil_division(thw, norm):
    cfg = dataclasses.replace(DISCRIMINATOR_TINY, norm=norm)
    disc = Discriminator3D(cfg)
    t, h, w = thw
    out = disc(torch.rand(2, 3, t, h, w) * 2 - 1)
    # 4 strided convs (space 16×), the first two also halve time (4×); each rounds up
    want = (2, 1, math.ceil(t / 4), math.ceil(h / 16), math.ceil(w / 16))
    assert out.shape == want
    assert disc.output_size(t, h, w) == want[2:]
    assert torch.isfinite(out).all()


def test_temporal_down_is_configurable():
    cfg = dataclasses.replace(DISCRIMINATOR_TINY, temporal_down=(False, False, False, True))
    disc = Discriminator3D(cfg)
    assert disc(torch.zeros(1, 3, 5, 16, 16)).shape == (1, 1, 3, 1, 1)
    # None: the first two strided convs halve time
    assert Discriminator3DConfig(widths=(4, 4, 4)).temporal_down == (True, True, False)


def test_config_from_yaml_lists_equals_constant():
    cfg = Discriminator3DConfig(widths=[8, 16, 32, 32], norm="group", norm_groups=4, dropout=0)
    assert cfg == DISCRIMINATOR_TINY
    assert Discriminator3DConfig() == DISCRIMINATOR_F32T4  # the defaults are the paper's


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("shape", [(1, 3, 4, 15, 16), (1, 3, 4, 16, 8), (1, 3, 0, 16, 16)])
def test_too_small_input_raises_clearly(shape):
    disc = Discriminator3D(DISCRIMINATOR_TINY)
    with pytest.raises(ValueError, match=r"at least 16×16 pixels.*Fix"):
        disc(torch.zeros(shape))


def test_group_norm_over_a_single_value_raises():
    # 32 groups of the 32-channel layers at a 1×1×1 grid: each group would hold one value, which
    # normalises to 0 — a constant, gradient-free discriminator; refused instead
    disc = Discriminator3D(dataclasses.replace(DISCRIMINATOR_TINY, norm_groups=32))
    with pytest.raises(ValueError, match=r"single value.*norm_groups below 32"):
        disc(torch.zeros(1, 3, 4, 16, 16))
    assert disc(torch.zeros(1, 3, 4, 32, 32)).shape == (1, 1, 1, 2, 2)  # 1 channel × 4 positions


@pytest.mark.parametrize("shape", [(3, 4, 16, 16), (1, 1, 4, 16, 16)])
def test_wrong_rank_or_channels_raises(shape):
    with pytest.raises(ValueError, match=r"expected a video batch \(B, 3, T, H, W\)"):
        Discriminator3D(DISCRIMINATOR_TINY)(torch.zeros(shape))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"widths": ()}, "at least one"),
        ({"widths": (8, 0)}, "≥ 1"),
        ({"widths": (8, 16), "temporal_down": (True,)}, "one flag per strided conv"),
        ({"kernel_size": 4}, "odd"),
        ({"norm": "layer"}, "use one of"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Discriminator3DConfig(**kwargs)


# --------------------------------------------------------------------------------------------
# Training


def test_gradient_reaches_input_and_every_parameter():
    disc = Discriminator3D(DISCRIMINATOR_TINY)
    x = torch.randn(2, 3, 4, 16, 16, requires_grad=True)
    disc(x).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in disc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _smooth_videos(n: int, g: torch.Generator) -> torch.Tensor:
    """Low-frequency videos in [-1, 1]: random 2×3×3 grids upsampled trilinearly to 4×32×32."""
    coarse = torch.rand(n, 3, 2, 3, 3, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(4, 32, 32), mode="trilinear", align_corners=True)


def _noise(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 3, 4, 32, 32, generator=g) * 2 - 1


def test_learns_to_separate_smooth_videos_from_noise():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    disc = Discriminator3D(DISCRIMINATOR_TINY)
    opt = torch.optim.AdamW(disc.parameters(), lr=1e-3, betas=(0.5, 0.9), weight_decay=0.0)
    losses = []
    for _ in range(40):
        loss = hinge_d_loss(disc(_smooth_videos(4, g)), disc(_noise(4, g)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(1.0, abs=0.05)  # small init: logits ≈ 0, chance level
    assert sum(losses[-5:]) / 5 < 0.1, losses
    # it generalises to fresh samples: real logits above the margin, fake ones below
    with torch.no_grad():
        real_logits, fake_logits = disc(_smooth_videos(8, g)), disc(_noise(8, g))
    assert hinge_d_loss(real_logits, fake_logits) < 0.1
    assert real_logits.mean() > 0 > fake_logits.mean()
