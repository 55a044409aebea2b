"""PSNR and SSIM against independent references (numpy float64, scikit-image); LPIPS per video."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from osora.eval.recon import lpips_per_video, psnr, recon_metrics, ssim, summarize
from osora.models.lpips import LPIPS


def _videos(shape=(2, 3, 4, 32, 40), noise=0.1, seed=0):
    """Smooth-ish videos in [-1, 1] and noisy reconstructions (SSIM well away from 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    b, c, t, h, w = shape
    coarse = torch.rand(b * c * t, 1, h // 4, w // 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")
    x = (x.view(b, c, t, h, w) * 2 - 1).clamp(-1, 1)
    y = (x + noise * torch.randn(shape, generator=g)).clamp(-1, 1)
    return x, y


def numpy_psnr(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    """(B, C, T, H, W) → (B,): mean over frames of 20·log10(range / RMSE)."""
    out = np.zeros(x.shape[0])
    for b in range(x.shape[0]):
        frames = []
        for t in range(x.shape[2]):
            mse = np.mean((x[b, :, t].astype(np.float64) - y[b, :, t].astype(np.float64)) ** 2)
            frames.append(20 * math.log10(data_range / math.sqrt(mse)))
        out[b] = np.mean(frames)
    return out


def test_psnr_matches_numpy():
    x, y = _videos()
    got = psnr(x, y)
    ref = numpy_psnr(x.numpy(), y.numpy(), 2.0)
    assert got.shape == (2,) and got.dtype == torch.float64
    assert np.abs(got.numpy() - ref).max() < 1e-10
    # [0, 1] data with range 1 gives the same numbers.
    assert torch.allclose(psnr((x + 1) / 2, (y + 1) / 2, data_range=1.0), got, atol=1e-10)


def test_psnr_of_exact_frames_is_capped():
    x, y = _videos(shape=(2, 3, 4, 16, 16))
    assert torch.equal(psnr(x, x), torch.full((2,), 100.0, dtype=torch.float64))
    assert torch.isinf(psnr(x, x, max_db=None)).all()
    # One exact frame among noisy ones counts as 100 dB in the video's mean.
    y[:, :, 0] = x[:, :, 0]
    per_frame = [100.0] + [float(psnr(x[:1, :, t], y[:1, :, t])) for t in range(1, 4)]
    assert math.isclose(float(psnr(x[:1], y[:1])), sum(per_frame) / 4, abs_tol=1e-9)
    assert math.isfinite(summarize({"psnr": psnr(x, y)})["psnr"])


def test_ssim_matches_scikit_image():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    x, y = _videos(shape=(2, 3, 3, 36, 44))
    got = ssim(x, y)
    x01, y01 = ((x.double() + 1) / 2).numpy(), ((y.double() + 1) / 2).numpy()
    ref = np.zeros(2)
    for b in range(2):
        ref[b] = np.mean(
            [
                structural_similarity(
                    x01[b, :, t],
                    y01[b, :, t],
                    data_range=1.0,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    channel_axis=0,
                )
                for t in range(3)
            ]
        )
    assert 0.2 < ref.min() and ref.max() < 0.95  # a meaningful comparison
    assert np.abs(got.numpy() - ref).max() < 1e-4
    assert np.abs(got.numpy() - ref).max() < 1e-10  # in fact equal to float64 rounding


def scipy_ssim_frame(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. SSIM of one (C, H, W) frame in [0, 1], per channel, 'valid' region, averaged."""
    from scipy.ndimage import gaussian_filter

    pad = 5
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for ch in range(a.shape[0]):
        p, q = a[ch], b[ch]

        def blur(m):
            return gaussian_filter(m, sigma=1.5, truncate=3.5)[pad:-pad, pad:-pad]

        mp, mq = blur(p), blur(q)
        vp, vq, cov = blur(p * p) - mp**2, blur(q * q) - mq**2, blur(p * q) - mp * mq
        s = ((2 * mp * mq + c1) * (2 * cov + c2)) / ((mp**2 + mq**2 + c1) * (vp + vq + c2))
        values.append(s.mean())
    return float(np.mean(values))


def test_ssim_matches_scipy_reference_on_images():
    x, y = _videos(shape=(3, 3, 1, 24, 31), noise=0.2, seed=3)
    x, y = x[:, :, 0], y[:, :, 0]  # images (B, 3, H, W)
    got = ssim(x, y, value_range=(-1, 1))
    ref = [
        scipy_ssim_frame((x[i].double().numpy() + 1) / 2, (y[i].double().numpy() + 1) / 2)
        for i in range(3)
    ]
    assert np.abs(got.numpy() - np.array(ref)).max() < 1e-10


def test_ssim_identity_and_range():
    x, y = _videos(shape=(2, 3, 2, 16, 16))
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.allclose(ssim((x + 1) / 2, (y + 1) / 2, value_range=(0, 1)), ssim(x, y))
    assert torch.allclose(
        ssim((x + 1) * 127.5, (y + 1) * 127.5, value_range=(0, 255)), ssim(x, y), atol=1e-12
    )


def test_bad_inputs():
    x = torch.zeros(1, 3, 2, 16, 16)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(x, torch.zeros(1, 3, 2, 16, 15))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(1, 3, 2, 10, 16), torch.zeros(1, 3, 2, 10, 16))
    with pytest.raises(ValueError, match="videos"):
        psnr(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range=0)


def test_recon_metrics_with_lpips():
    torch.manual_seed(0)
    model = LPIPS(widths=(4, 8, 8, 16, 16))
    for head in model.heads:
        head.model[1].weight.abs_()  # released heads are non-negative
    x, y = _videos(shape=(2, 3, 5, 32, 32))
    out = recon_metrics(x, y, lpips=model)
    assert set(out) == {"psnr", "ssim", "lpips"} and all(v.shape == (2,) for v in out.values())
    expected = model(x, y).double().mean(dim=1)
    assert torch.allclose(out["lpips"], expected, atol=1e-7)
    assert torch.allclose(lpips_per_video(model, x, y, frames_per_chunk=2), expected, atol=1e-7)
    # Other value ranges are mapped for each metric.
    out01 = recon_metrics((x + 1) / 2, (y + 1) / 2, lpips=model, value_range=(0, 1))
    for name in out:
        assert torch.allclose(out01[name], out[name], atol=1e-6), name
    summary = summarize(out)
    assert set(summary) == {"psnr", "ssim", "lpips"}
    assert all(isinstance(v, float) for v in summary.values())
