"""Flow matching: the resolution shift (docs/recipe.md §4), timesteps, x_t, the loss against
hand-computed values and float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from diffusion_standin import TinyVelocity

from osora.diffusion.flow import (
    flow_inputs,
    flow_loss,
    latent_shift,
    noisy,
    resolution_shift,
    sample_train_t,
    shift_time,
    velocity_target,
)
from osora.diffusion.sampler import sample


def latent_size(frames: int, height: int, width: int, down=(4, 8, 8)) -> tuple[int, int, int]:
    """Causal AE latent size: 1 + (frames − 1)/4 frames, pixels / 8 spatially."""
    return 1 + (frames - 1) // down[0], height // down[1], width // down[2]


def test_recipe_examples():
    # 256px 1:1, 129 frames, HunyuanVAE 4×8×8, patch 2: latent 33×32×32, L = 16·16 = 256 tokens
    # per frame → spatial α = 256/1920 + 13/15 = 1 exactly, α = √33.
    assert latent_size(129, 256, 256) == (33, 32, 32)
    alpha = resolution_shift(33, 32, 32, 2)
    assert alpha == pytest.approx(math.sqrt(33), rel=1e-12)
    assert round(alpha, 2) == 5.74
    # 768px 16:9 bucket is 576×1024: latent 33×72×128, L = 36·64 = 2304 → 2304/1920 = 1.2,
    # (1.2 + 0.86667)·√33 = 2.06667·5.74456 = 11.872.
    assert latent_size(129, 576, 1024) == (33, 72, 128)
    alpha = resolution_shift(33, 72, 128, 2)
    assert alpha == pytest.approx((1.2 + 13 / 15) * math.sqrt(33), rel=1e-12)
    assert round(alpha, 2) == 11.87


def test_line_through_reference_points_and_images():
    # the reference's get_res_lin_function: (256 tokens, 1) and (4096 tokens, 3); images: no √T
    assert resolution_shift(1, 32, 32, 2) == pytest.approx(1.0)  # 256px image
    assert resolution_shift(1, 128, 128, 2) == pytest.approx(3.0)  # 1024px image: 4096 tokens
    assert 1 / 1920 + 0.8667 == pytest.approx(resolution_shift(1, 2, 2, 2), abs=1e-4)  # L = 1
    # patch 1 (DC-AE 4×32×32): 768px 16:9 → latent 18×32 = 576 tokens
    assert resolution_shift(33, 18, 32, 1) == pytest.approx((0.3 + 13 / 15) * math.sqrt(33))
    assert latent_shift((2, 16, 33, 72, 128), 2) == resolution_shift(33, 72, 128, 2)


@pytest.mark.parametrize("args", [(0, 32, 32, 2), (33, 31, 32, 2), (33, 32, 32, 0),
                                  (2.5, 32, 32, 2), (33, 32, 30, 4)])
def test_resolution_shift_rejects_bad_shapes(args):
    with pytest.raises(ValueError):
        resolution_shift(*args)


@pytest.mark.parametrize("patch", [1, 2])
def test_training_and_sampling_use_the_same_shift(patch):
    """The reference trains with L = H·W // 4 (patch 2 hard-coded) but samples with
    L = H·W // p²; here both go through resolution_shift, so a patch-1 model gets one α."""
    x0 = torch.randn(1, 3, 3, 8, 8)
    train = flow_inputs(x0, patch_size=patch, generator=torch.Generator().manual_seed(0))
    seen = []
    model = TinyVelocity(channels=3)
    sample(model, torch.randn_like(x0), torch.randn(1, 2, 8), torch.randn(1, 6),
           neg_text=torch.zeros(2, 8), neg_pooled=torch.zeros(6), steps=1, patch_size=patch,
           progress=lambda info: seen.append(info.shift))
    expected = ((8 // patch) ** 2 / 1920 + 13 / 15) * math.sqrt(3)
    assert train.shift == seen[0] == pytest.approx(expected)
    reference_training = ((8 * 8 // 4) / 1920 + 13 / 15) * math.sqrt(3)
    assert (reference_training == pytest.approx(train.shift)) == (patch == 2)


def test_shift_time():
    assert shift_time(0.5, 3.0) == 0.75  # 1.5 / 2
    assert shift_time(0.25, 3.0) == 0.5  # 0.75 / 1.5
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    shifted = shift_time(t, 5.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert bool((shifted[1:-1] > t[1:-1]).all())  # α > 1 moves towards noise
    assert torch.equal(shift_time(t, 1.0), t)
    torch.testing.assert_close(shift_time(shifted, 1 / 5.0), t)  # the inverse shift is 1/α
    with pytest.raises(ValueError):
        shift_time(t, 0.0)


def test_sample_train_t_is_shifted_logit_normal():
    t = sample_train_t(5, 3.0, torch.Generator().manual_seed(7))
    n = torch.randn(5, generator=torch.Generator().manual_seed(7))
    by_hand = 3.0 * torch.sigmoid(n) / (1 + 2.0 * torch.sigmoid(n))
    torch.testing.assert_close(t, by_hand)
    assert t.shape == (5,) and t.dtype == torch.float32
    big = sample_train_t(20000, 3.0, torch.Generator().manual_seed(1))
    assert bool(((big > 0) & (big < 1)).all())
    # the median of sigmoid(n) is 1/2, so the shifted median is α/(1 + α) = 0.75
    assert big.median().item() == pytest.approx(0.75, abs=0.01)
    with pytest.raises(ValueError):
        sample_train_t(0, 3.0, torch.Generator())


def test_noisy_by_hand():
    x0 = torch.tensor([[2.0, -4.0]])
    noise = torch.tensor([[-1.0, 1.0]])
    t = torch.tensor([0.25])
    # (1 − t)·x0 + t·noise = 0.75·[2, −4] + 0.25·[−1, 1] = [1.25, −2.75]
    assert noisy(x0, noise, t).tolist() == [[1.25, -2.75]]
    assert torch.equal(noisy(x0, noise, torch.zeros(1)), x0)
    assert torch.equal(noisy(x0, noise, torch.ones(1)), noise)
    # σ_min (reference): (1 − t)·x0 + (1 − (1 − σ)(1 − t))·noise
    s = 0.1
    expected = [0.75 * 2 + (1 - 0.9 * 0.75) * -1, 0.75 * -4 + (1 - 0.9 * 0.75) * 1]
    assert noisy(x0, noise, t, sigma_min=s)[0].tolist() == pytest.approx(expected)
    assert velocity_target(x0, noise, s)[0].tolist() == pytest.approx([-0.9 - 2, 0.9 + 4])
    with pytest.raises(ValueError):
        noisy(x0, noise, torch.tensor([0.1, 0.2]))


def test_velocity_is_the_time_derivative_of_x_t():
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64), \
        torch.randn(2, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    t, dt = torch.tensor([0.3, 0.8], dtype=torch.float64), 1e-6
    for s in (0.0, 1e-5):
        deriv = (noisy(x0, noise, t + dt, s) - noisy(x0, noise, t - dt, s)) / (2 * dt)
        torch.testing.assert_close(deriv, velocity_target(x0, noise, s))


def test_flow_loss_without_mask_is_the_mse():
    g = torch.Generator().manual_seed(4)
    out, x0, noise = (torch.randn(2, 3, 4, 2, 2, generator=g) for _ in range(3))
    ref = ((out.double() - (noise.double() - x0.double())) ** 2).mean()
    assert flow_loss(out, x0, noise).item() == pytest.approx(ref.item(), rel=1e-6)
    # bf16 model output: the loss is computed in float32
    assert flow_loss(out.bfloat16(), x0, noise).dtype == torch.float32
    # by hand: one element, out 1, x0 2, noise 0 → target −2, error 9
    one = torch.ones(1, 1, 1, 1, 1)
    assert flow_loss(one, 2 * one, 0 * one).item() == 9.0


def test_flow_loss_mask_excludes_conditioned_frames():
    g = torch.Generator().manual_seed(5)
    out, x0, noise = (torch.randn(2, 3, 4, 2, 2, generator=g, dtype=torch.float64)
                      for _ in range(3))
    mask = torch.tensor([[False, True, True, True], [False, True, True, False]])
    err = (out - (noise - x0)) ** 2  # (B, C, T, H, W)
    by_sample = [err[0, :, 1:].mean(), err[1, :, 1:3].mean()]  # each sample's included mean
    expected = (by_sample[0] + by_sample[1]) / 2
    assert flow_loss(out, x0, noise, mask).item() == pytest.approx(expected.item(), rel=1e-12)
    # what the model outputs on a conditioned frame does not matter
    out2 = out.clone()
    out2[0, :, 0] += 100.0
    out2[1, :, 3] -= 50.0
    assert flow_loss(out2, x0, noise, mask).item() == pytest.approx(expected.item(), rel=1e-12)
    all_in = torch.ones(2, 4, dtype=torch.bool)
    assert flow_loss(out, x0, noise, all_in).item() == pytest.approx(err.mean().item())
    # a sample with no frame to learn from: NaN, for the loop's checks (build_cond refuses it)
    assert flow_loss(out, x0, noise, torch.tensor([[False] * 4, [True] * 4])).isnan()
    with pytest.raises(ValueError, match="loss_mask"):
        flow_loss(out, x0, noise, torch.ones(2, 3, dtype=torch.bool))


def test_flow_loss_reads_no_values_on_the_host():
    """No value of the batch is read on the host (a GPU sync each step): on meta tensors, which
    hold no values, any such read (bool, item, a data-dependent shape) raises."""
    out, x0, noise = (torch.empty(2, 3, 4, 2, 2, device="meta") for _ in range(3))
    mask = torch.empty(2, 4, dtype=torch.bool, device="meta")
    with pytest.raises(RuntimeError, match="meta"):
        bool(mask.any())  # what the guard catches
    assert flow_loss(out, x0, noise, mask, sigma_min=1e-5).shape == ()


def test_flow_inputs_reproducible_and_consistent():
    x0 = torch.randn(3, 2, 2, 4, 4)
    a = flow_inputs(x0, patch_size=2, generator=torch.Generator().manual_seed(9))
    b = flow_inputs(x0, patch_size=2, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a.t, b.t) and torch.equal(a.noise, b.noise)
    torch.testing.assert_close(a.x_t, noisy(x0, a.noise, a.t))
    assert a.t.shape == (3,) and a.shift == latent_shift(x0.shape, 2)
    # draw order: t first (B normals), then the noise
    g = torch.Generator().manual_seed(9)
    torch.testing.assert_close(a.t, sample_train_t(3, a.shift, g))
    torch.testing.assert_close(a.noise, torch.randn(x0.shape, generator=g))
