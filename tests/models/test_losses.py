"""Hinge GAN losses against values computed by hand with plain Python floats."""

from __future__ import annotations

import pytest
import torch

from osora.models.losses import hinge_d_loss, hinge_g_loss


def _relu(v: float) -> float:
    return v if v > 0 else 0.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


REAL = [1.5, 0.25, -0.5, 1.0, 2.0, -2.0]
FAKE = [-1.5, 0.5, -0.25, 3.0]


def test_hinge_d_loss_is_halved_sum_of_means():
    # by hand: real terms relu(1 - r) = 0, 0.75, 1.5, 0, 0, 3 → mean 5.25 / 6 = 0.875;
    # fake terms relu(1 + f) = 0, 1.5, 0.75, 4 → mean 6.25 / 4 = 1.5625; halved sum 1.21875
    expected = 0.5 * (_mean([_relu(1 - r) for r in REAL]) + _mean([_relu(1 + f) for f in FAKE]))
    assert expected == 1.21875
    real = torch.tensor(REAL).view(1, 1, 1, 2, 3)  # patch logits; shapes may differ
    fake = torch.tensor(FAKE).view(2, 1, 1, 1, 2)
    loss = hinge_d_loss(real, fake)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected, abs=1e-7)


def test_hinge_d_loss_reference_points():
    zeros = torch.zeros(3)
    assert hinge_d_loss(zeros, zeros).item() == 1.0  # chance: every logit 0
    assert hinge_d_loss(torch.full((3,), 1.0), torch.full((3,), -1.0)).item() == 0.0  # margin met
    assert hinge_d_loss(torch.full((3,), 5.0), torch.full((3,), -7.0)).item() == 0.0  # no reward
    # beyond the margin
    assert hinge_d_loss(torch.full((3,), -1.0), torch.full((3,), 1.0)).item() == 2.0


def test_hinge_g_loss_is_minus_the_mean():
    expected = -_mean(FAKE)  # -(−1.5 + 0.5 − 0.25 + 3.0) / 4 = −0.4375
    assert expected == -0.4375
    loss = hinge_g_loss(torch.tensor(FAKE).view(2, 1, 2))
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected, abs=1e-7)


def test_gradients_by_hand():
    real = torch.tensor(REAL, requires_grad=True)
    fake = torch.tensor(FAKE, requires_grad=True)
    hinge_d_loss(real, fake).backward()
    # d/dr 0.5·mean(relu(1 − r)) = −0.5 / n where 1 − r > 0, else 0; likewise +0.5 / m for fakes
    want_real = [-0.5 / len(REAL) if 1 - r > 0 else 0.0 for r in REAL]
    want_fake = [0.5 / len(FAKE) if 1 + f > 0 else 0.0 for f in FAKE]
    assert real.grad.tolist() == pytest.approx(want_real)
    assert fake.grad.tolist() == pytest.approx(want_fake)
    fake.grad = None
    hinge_g_loss(fake).backward()
    assert fake.grad.tolist() == pytest.approx([-1 / len(FAKE)] * len(FAKE))


def test_bf16_logits_give_a_float32_loss():
    real = torch.tensor(REAL, dtype=torch.bfloat16)
    fake = torch.tensor(FAKE, dtype=torch.bfloat16)
    assert hinge_d_loss(real, fake).dtype == torch.float32
    assert hinge_g_loss(fake).dtype == torch.float32
    assert hinge_d_loss(real, fake).item() == pytest.approx(1.21875)  # all exact in bf16
