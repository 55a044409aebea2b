"""Video DC-AE (docs/recipe.md §2): sizes vs the reference, shapes, shortcuts, gradients, errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from osora.models.dcae import (
    DCAE,
    DCAE_F32T4C128,
    DCAE_F32T4C256,
    DCAE_TINY,
    DCAEConfig,
    DownBlock,
    UpBlock,
    duplicate_shuffle,
    relu_linear_attention,
    unshuffle_average,
)


def _counts(cfg: DCAEConfig) -> tuple[int, int]:
    with torch.device("meta"):
        model = DCAE(cfg)
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.decoder.parameters())
    return enc, dec


# --------------------------------------------------------------------------------------------
# Parameter counts (meta device: no memory, no init cost)


def test_param_counts_f32t4c128_match_reference():
    enc, dec = _counts(DCAE_F32T4C128)
    # docs/recipe.md §2 / the paper: encoder 220M, decoder 239M.
    assert enc == pytest.approx(220e6, rel=0.01)
    assert dec == pytest.approx(239e6, rel=0.01)
    # Exact counts of this implementation of the reference layer list (regression pin).
    assert (enc, dec) == (220_439_936, 239_022_211)


def test_param_counts_f32t4c256_differ_only_by_the_latent_convs():
    enc128, dec128 = _counts(DCAE_F32T4C128)
    enc, dec = _counts(DCAE_F32T4C256)
    # Only encoder.conv_out (1024 → c) and decoder.conv_in (c → 1024) depend on c: 3×3×3 kernels.
    assert enc - enc128 == 27 * 1024 * (256 - 128) + (256 - 128)  # weight + bias
    assert dec - dec128 == 27 * 1024 * (256 - 128)
    assert (enc, dec) == (223_979_008, 242_561_155)


def test_paper_configs_describe_f32t4():
    for cfg, c in ((DCAE_F32T4C128, 128), (DCAE_F32T4C256, 256)):
        with torch.device("meta"):
            model = DCAE(cfg)
        assert (model.spatial_down, model.temporal_down, model.latent_channels) == (32, 4, c)
        assert model.causal is False
    assert DCAE_F32T4C128.scaling_factor == 0.493


# --------------------------------------------------------------------------------------------
# Shapes


@pytest.fixture(scope="module")
def tiny() -> DCAE:
    torch.manual_seed(0)
    return DCAE(DCAE_TINY)


def test_tiny_video_shapes(tiny):
    x = torch.randn(2, 3, 16, 64, 64)  # (B, C, T, H, W)
    with torch.no_grad():
        z = tiny.encode(x)
        assert z.shape == (2, DCAE_TINY.latent_channels, 4, 2, 2)
        y = tiny.decode(z)
        assert y.shape == x.shape
        assert torch.equal(tiny(x), y)  # deterministic: no sampling anywhere
    assert tiny.latent_size(16, 64, 64) == (4, 2, 2)
    assert (tiny.spatial_down, tiny.temporal_down, tiny.causal) == (32, 4, False)


def test_tiny_single_frame_is_an_image(tiny):
    x = torch.randn(1, 3, 1, 64, 32)
    with torch.no_grad():
        z = tiny.encode(x)
        assert z.shape == (1, DCAE_TINY.latent_channels, 1, 2, 1)
        assert tiny.decode(z).shape == x.shape


def test_gradient_reaches_every_parameter(tiny):
    tiny.zero_grad(set_to_none=True)
    x = torch.randn(1, 3, 8, 64, 64)
    tiny(x).square().mean().backward()
    missing = [
        n for n, p in tiny.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []
    tiny.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------------
# The parameter-free shortcuts against plain reshape/permute reimplementations (float64)


def _ref_unshuffle_average(x, out_channels, ft, fs):
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T // ft, ft, H // fs, fs, W // fs, fs)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, C, ft, fs, fs, T', H', W')
    x = x.reshape(B, C * ft * fs * fs, T // ft, H // fs, W // fs)
    g = C * ft * fs * fs // out_channels
    return x.reshape(B, out_channels, g, T // ft, H // fs, W // fs).mean(dim=2)


def _ref_duplicate_shuffle(x, out_channels, ft, fs):
    B, C, T, H, W = x.shape
    r = out_channels * ft * fs * fs // C
    x = x[:, :, None].expand(B, C, r, T, H, W).reshape(B, C * r, T, H, W)  # each channel r times
    x = x.reshape(B, out_channels, ft, fs, fs, T, H, W)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C', T, ft, H, fs, W, fs)
    return x.reshape(B, out_channels, T * ft, H * fs, W * fs)


@pytest.mark.parametrize(
    "cin,cout,ft", [(8, 16, 1), (16, 16, 1), (8, 32, 2), (16, 16, 2), (32, 8, 1)]
)
def test_down_shortcut_matches_plain_reimplementation(cin, cout, ft):
    x = torch.randn(2, cin, 4, 6, 8, dtype=torch.float64)
    out = unshuffle_average(x, cout, ft, 2)
    assert out.shape == (2, cout, 4 // ft, 3, 4)
    torch.testing.assert_close(out, _ref_unshuffle_average(x, cout, ft, 2), rtol=0, atol=1e-12)
    if ft == 1:  # per frame it is torch's pixel_unshuffle + group mean (the reference's 2D path)
        frames = F.pixel_unshuffle(x.transpose(1, 2), 2).transpose(1, 2)
        torch.testing.assert_close(out, frames.unflatten(1, (cout, -1)).mean(2), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "cin,cout,ft", [(16, 8, 1), (16, 16, 1), (32, 8, 2), (16, 16, 2), (8, 32, 1)]
)
def test_up_shortcut_matches_plain_reimplementation(cin, cout, ft):
    x = torch.randn(2, cin, 3, 4, 5, dtype=torch.float64)
    out = duplicate_shuffle(x, cout, ft, 2)
    assert out.shape == (2, cout, 3 * ft, 8, 10)
    torch.testing.assert_close(out, _ref_duplicate_shuffle(x, cout, ft, 2), rtol=0, atol=0)
    if ft == 1:
        r = cout * 4 // cin
        frames = F.pixel_shuffle(x.repeat_interleave(r, 1).transpose(1, 2), 2).transpose(1, 2)
        torch.testing.assert_close(out, frames, rtol=0, atol=0)


def test_down_then_up_shortcut_is_identity_on_equal_widths():
    # averaging copies gives back the copied value: up then down is the identity
    x = torch.randn(1, 8, 2, 3, 3, dtype=torch.float64)
    y = unshuffle_average(duplicate_shuffle(x, 8, 2, 2), 8, 2, 2)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("temporal", [False, True])
def test_blocks_carry_the_shortcut(temporal):
    """With the conv zeroed, a down/up block is exactly its parameter-free shortcut."""
    ft = 2 if temporal else 1
    down = DownBlock(8, 16, temporal).double()
    up = UpBlock(16, 8, temporal).double()
    for block in (down, up):
        torch.nn.init.zeros_(block.conv.weight)
        torch.nn.init.zeros_(block.conv.bias)
    x = torch.randn(1, 8, 4, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(down(x), _ref_unshuffle_average(x, 16, ft, 2), rtol=0, atol=1e-12)
    z = torch.randn(1, 16, 2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(up(z), _ref_duplicate_shuffle(z, 8, ft, 2), rtol=0, atol=0)
    # a single frame (an image) skips the temporal factor
    img = torch.randn(1, 8, 1, 8, 8, dtype=torch.float64)
    assert down(img).shape == (1, 16, 1, 4, 4)
    assert up(torch.randn(1, 16, 1, 4, 4, dtype=torch.float64)).shape == (1, 8, 1, 8, 8)


def test_relu_linear_attention_matches_quadratic_form():
    q, k, v = torch.randn(3, 2, 4, 8, 50, dtype=torch.float64).unbind(0)  # each (B, n, d, N)
    out = relu_linear_attention(q, k, v)
    scores = F.relu(k).transpose(-1, -2) @ F.relu(q)  # (B, n, N_k, N_q)
    expected = (v @ scores) / (scores.sum(dim=2, keepdim=True) + 1e-15)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert out.dtype == torch.float64
    # bf16 in, bf16 out, computed in float32
    low = relu_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.double(), expected, rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "shape,needle",
    [
        ((1, 3, 6, 64, 64), "6 frames"),
        ((1, 3, 16, 48, 64), "48×64"),
        ((1, 3, 16, 64, 40), "64×40"),
    ],
)
def test_bad_video_shape_names_shape_and_fix(tiny, shape, needle):
    with pytest.raises(ValueError) as err:
        tiny.encode(torch.zeros(shape))
    msg = str(err.value)
    assert needle in msg and "multiple of 4" in msg and "multiples of 32" in msg and "Fix" in msg


def test_bad_ranks_and_channels(tiny):
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\).*\(3, 16, 64, 64\)"):
        tiny.encode(torch.zeros(3, 16, 64, 64))
    with pytest.raises(ValueError, match=r"\(1, 4, 16, 64, 64\)"):
        tiny.encode(torch.zeros(1, 4, 16, 64, 64))
    with pytest.raises(ValueError, match=r"latent \(B, 16, t, h, w\)"):
        tiny.decode(torch.zeros(1, 8, 4, 2, 2))


def test_bad_configs():
    with pytest.raises(ValueError, match="encoder_depths"):
        DCAEConfig(encoder_depths=(2, 2))
    with pytest.raises(ValueError, match="temporal_down"):
        DCAEConfig(temporal_down=(True,))
    with pytest.raises(ValueError, match="block_types"):
        DCAEConfig(block_types=("res",) * 5 + ("mlp",))
    with pytest.raises(ValueError, match="head_dim"):
        dataclasses.replace(DCAE_TINY, head_dim=12)
    with pytest.raises(ValueError, match="latent_channels"):
        dataclasses.replace(DCAE_TINY, latent_channels=12)
    with pytest.raises(ValueError, match="channel-averaging"):
        DCAEConfig(widths=(128, 384, 512, 512, 1024, 1024))
    with pytest.raises(ValueError, match="≥ 1"):
        DCAEConfig(latent_channels=0)


def test_config_from_yaml_lists_equals_constant():
    fields = {f.name: getattr(DCAE_F32T4C128, f.name) for f in dataclasses.fields(DCAEConfig)}
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    assert DCAEConfig(**as_lists) == DCAE_F32T4C128


# --------------------------------------------------------------------------------------------
# Light imports


def test_model_file_imports_only_torch_numpy_einops():
    code = (
        "import sys, osora.models.dcae\n"
        "heavy = {'lance', 'pyarrow', 'mlflow', 'dvc', 'av', 'transformers', 'cv2', 'pydantic',\n"
        "         'pydantic_settings', 'ray', 's3fs', 'boto3', 'yaml', 'scenedetect', 'PIL'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_channel_rms_norm_is_the_reference_rms3d():
    from osora.models.layers import ChannelRMSNorm

    norm = ChannelRMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64)
    ref = x / torch.sqrt(x.square().mean(dim=1, keepdim=True) + 1e-5)
    ref = ref * norm.weight.view(1, -1, 1, 1, 1) + norm.bias.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(norm(x), ref)
    assert norm.to(torch.bfloat16)(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_dcae_is_a_video_autoencoder_that_tiling_can_drive():
    """The DC-AE meets the AE protocol; tiled encoding gives the untiled shape, and exactly the
    untiled latent when the clip fits in one tile. (How close tiles come to untiled on larger
    clips depends on training: linear attention is global within a tile.)"""
    import torch

    from osora.models.autoencoder import VideoAutoencoder
    from osora.models.dcae import DCAE, DCAE_TINY
    from osora.models.tiling import TileSpec, tiled_encode

    torch.manual_seed(0)
    model = DCAE(DCAE_TINY).eval()
    assert isinstance(model, VideoAutoencoder)
    x = torch.rand(1, 3, 8, 128, 128) * 2 - 1  # (B, 3, T, H, W)
    with torch.no_grad():
        whole = model.encode(x)
        tiled = tiled_encode(model, x, TileSpec(spatial=64, temporal=None,
                                                overlap=0.5))
        single = tiled_encode(model, x, TileSpec(spatial=128, temporal=16,
                                                 overlap=0.25))
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    assert torch.equal(single, whole)
