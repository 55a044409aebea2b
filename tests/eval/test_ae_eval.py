"""AE evaluation: clips cut to what the AE accepts, metrics equal to the reference functions,
and D_info / D_token of the configured AEs equal to docs/recipe.md Table 1 and §2."""

from pathlib import Path

import pytest
import torch

from osora.config import load_settings
from osora.eval.ae_eval import compression, evaluate, fit_to_ae
from osora.eval.recon import psnr, ssim
from osora.models.dcae import DCAE
from osora.models.hunyuan_vae import HUNYUAN_VAE, HunyuanVAE
from osora.models.tiling import TileSpec

REPO = Path(__file__).resolve().parents[2]


def video(frames=18, height=70, width=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8, generator=g)


def test_clips_are_cut_to_the_ae_rules():
    dcae = DCAE(load_settings(params_dir=REPO / "params").ae.dcae)  # 4×, 4×
    x = fit_to_ae(video(), dcae)
    assert x.shape == (1, 3, 16, 68, 88)
    with torch.device("meta"):
        hunyuan = HunyuanVAE(HUNYUAN_VAE)  # causal 4×8×8: 1 + 4k frames
    assert fit_to_ae(video(), hunyuan).shape == (1, 3, 17, 64, 88)
    torch.testing.assert_close(x[0, :, 0, 0, 0], video()[0, 1, 1].float() / 127.5 - 1)
    with pytest.raises(ValueError, match="too small for this AE"):
        fit_to_ae(video(frames=3), dcae)
    # an image (a 1-frame clip) is one frame for either AE
    assert fit_to_ae(video(frames=1), dcae).shape == (1, 3, 1, 68, 88)
    assert fit_to_ae(video(frames=1), hunyuan).shape == (1, 3, 1, 64, 88)


def test_metrics_equal_the_reference_functions_tiled_or_not():
    torch.manual_seed(0)
    dcae = DCAE(load_settings(params_dir=REPO / "params").ae.dcae).eval()
    clips = [video(seed=1), video(seed=2)]
    got = evaluate(dcae, clips)
    with torch.no_grad():
        xs = [fit_to_ae(v, dcae) for v in clips]
        ys = [dcae(x).clamp(-1, 1) for x in xs]
    assert got["psnr"] == pytest.approx(
        sum(float(psnr(x, y, data_range=2.0)) for x, y in zip(xs, ys)) / 2, rel=1e-6)
    assert got["ssim"] == pytest.approx(sum(float(ssim(x, y)) for x, y in zip(xs, ys)) / 2,
                                        rel=1e-6)
    tiled = evaluate(dcae, clips, tile=TileSpec(spatial=32, temporal=16, overlap=0.25))
    assert tiled["psnr"] == pytest.approx(got["psnr"], abs=1.0)  # blending differs, a little


@pytest.mark.parametrize(("profile", "expected"), [
    ("tiny", {"d_info": 12, "d_token": 256}),  # the CPU DC-AE f4t4c16, its latents in 2×2 patches
    # the paper profile evaluates the released HunyuanVideo VAE with the DiT's patch 2
    ("paper", {"d_info": 48, "d_token": 1024}),
])
def test_compression_of_the_configured_autoencoder(profile, expected):
    ae = load_settings(profile, params_dir=REPO / "params").ae
    with torch.device("meta"):
        model = HunyuanVAE(HUNYUAN_VAE) if ae.autoencoder.kind == "hunyuan_vae" else DCAE(
            ae.dcae)
    assert compression(model, ae.autoencoder.dit_patch) == expected


def test_paper_dcae_compression_is_table_1s():
    """dc-ae-f32t4c128 (the paper profile's ae.dcae): D_info 96; with patch 1, D_token 4096."""
    ae = load_settings("paper", params_dir=REPO / "params").ae
    with torch.device("meta"):
        model = DCAE(ae.dcae)
    assert compression(model, 1) == {"d_info": 96, "d_token": 4096}
