"""HunyuanVideo causal 3D VAE (docs/recipe.md §2): size, shapes, causality, importer."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from osora.models.autoencoder import HUNYUAN_VIDEO_VAE, VideoAutoencoder, latent_shape
from osora.models.hunyuan_vae import (
    HUNYUAN_VAE,
    HUNYUAN_VAE_TINY,
    HunyuanVAE,
    HunyuanVAEConfig,
    frame_causal_mask,
)
from osora.weights.hunyuan_vae import convert_state_dict, load_hunyuan_vae
from osora.weights.safetensors_io import save_weights

# --------------------------------------------------------------------------------------------
# The reference layout, written out here independently of osora.weights.hunyuan_vae: the tensor
# names and shapes of Tencent/HunyuanVideo's AutoencoderKLCausal3D (= Open-Sora v2's copy) for
# a config, following its __init__ (block_out_channels, layers_per_block, the
# time_compression_ratio == 4 rule for which blocks down/upsample).


def reference_layout(cfg: HunyuanVAEConfig) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def causal_conv(name, cin, cout, k=3):
        shapes[f"{name}.conv.weight"] = (cout, cin, k, k, k)
        shapes[f"{name}.conv.bias"] = (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"] = (c,)
        shapes[f"{name}.bias"] = (c,)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin)
        causal_conv(f"{name}.conv1", cin, cout)
        norm(f"{name}.norm2", cout)
        causal_conv(f"{name}.conv2", cout, cout)
        if cin != cout:
            causal_conv(f"{name}.conv_shortcut", cin, cout, k=1)

    def mid(name, c):
        resnet(f"{name}.resnets.0", c, c)
        norm(f"{name}.attentions.0.group_norm", c)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            shapes[f"{name}.attentions.0.{proj}.weight"] = (c, c)
            shapes[f"{name}.attentions.0.{proj}.bias"] = (c,)
        resnet(f"{name}.resnets.1", c, c)

    chans = list(cfg.widths)
    n = len(chans)
    n_space, n_time = int(math.log2(cfg.spatial_down)), int(math.log2(cfg.temporal_down))
    causal_conv("encoder.conv_in", cfg.in_channels, chans[0])
    out = chans[0]
    for i in range(n):
        cin, out = out, chans[i]
        for j in range(cfg.layers_per_block):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", cin if j == 0 else out, out)
        down = i < n_space or (i >= n - 1 - n_time and i != n - 1)
        if down:
            causal_conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", out, out)
    mid("encoder.mid_block", chans[-1])
    norm("encoder.conv_norm_out", chans[-1])
    causal_conv("encoder.conv_out", chans[-1], 2 * cfg.latent_channels)

    rev = chans[::-1]
    causal_conv("decoder.conv_in", cfg.latent_channels, rev[0])
    mid("decoder.mid_block", rev[0])
    out = rev[0]
    for i in range(n):
        cin, out = out, rev[i]
        for j in range(cfg.layers_per_block + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", cin if j == 0 else out, out)
        up = i < n_space or (i >= n - 1 - n_time and i != n - 1)
        if up:
            causal_conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", out, out)
    norm("decoder.conv_norm_out", chans[0])
    causal_conv("decoder.conv_out", chans[0], cfg.in_channels)

    c2 = 2 * cfg.latent_channels
    shapes["quant_conv.weight"], shapes["quant_conv.bias"] = (c2, c2, 1, 1, 1), (c2,)
    c = cfg.latent_channels
    shapes["post_quant_conv.weight"], shapes["post_quant_conv.bias"] = (c, c, 1, 1, 1), (c,)
    return shapes


def _count(cfg: HunyuanVAEConfig) -> int:
    with torch.device("meta"):
        model = HunyuanVAE(cfg)
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Size


def test_paper_param_count_matches_reference():
    # The released HunyuanVideo VAE (hunyuan-video-t2v-720p/vae, config: widths 128-256-512-512,
    # 2 layers per block, 16 latent channels): 246,478,803 parameters, counted from the reference
    # layout written out above (exact), and ~246M / a 493 MB bf16 file (within 1%).
    n = _count(HUNYUAN_VAE)
    reference = sum(math.prod(s) for s in reference_layout(HUNYUAN_VAE).values())
    assert n == reference == 246_478_803
    assert abs(n - 246e6) / 246e6 < 0.01
    with torch.device("meta"):
        model = HunyuanVAE(HUNYUAN_VAE)
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.decoder.parameters())
    assert (enc, dec) == (100_341_408, 146_136_067)


def test_geometry_and_protocol():
    model = HunyuanVAE(HUNYUAN_VAE_TINY)
    assert isinstance(model, VideoAutoencoder)
    for attr in ("spatial_down", "temporal_down", "latent_channels", "causal", "scaling_factor"):
        assert getattr(model, attr) == getattr(HUNYUAN_VIDEO_VAE, attr)
    assert HUNYUAN_VAE.block_factors() == [(1, 2), (2, 2), (2, 2), (1, 1)]


# --------------------------------------------------------------------------------------------
# Shapes and errors


def test_shapes_round_trip():
    torch.manual_seed(0)
    model = HunyuanVAE(HUNYUAN_VAE_TINY).eval()
    x = torch.randn(2, 3, 17, 64, 64)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 16, 5, 8, 8) == (2, *latent_shape(17, 64, 64, model))
        assert model.decode(z).shape == (2, 3, 17, 64, 64)
        # an image is one frame and one latent frame
        assert model.encode(x[:, :, :1]).shape == (2, 16, 1, 8, 8)
        assert model.decode(z[:, :, :1]).shape == (2, 3, 1, 64, 64)


def test_encode_mean_is_deterministic_and_sample_draws():
    torch.manual_seed(0)
    model = HunyuanVAE(HUNYUAN_VAE_TINY).eval()
    x = torch.randn(1, 3, 5, 16, 16)
    with torch.no_grad():
        mean, logvar = model.encode_moments(x)
        assert torch.equal(model.encode(x), mean)
        assert torch.equal(model.encode(x), model.encode(x))
        g = torch.Generator().manual_seed(1)
        s = model.encode(x, sample=True, generator=g)
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(s, mean + torch.exp(0.5 * logvar) * noise)
    assert logvar.min() >= -30 and logvar.max() <= 20


@pytest.mark.parametrize("frames", [2, 4, 16, 18])
def test_bad_frame_count_suggests_valid_counts(frames):
    model = HunyuanVAE(HUNYUAN_VAE_TINY)
    below = 1 + (frames - 1) // 4 * 4
    with pytest.raises(ValueError, match=rf"1 \+ k·4 frames \(e\.g\. {below} or {below + 4}\)"):
        model.encode(torch.zeros(1, 3, frames, 16, 16))


def test_bad_inputs_raise():
    model = HunyuanVAE(HUNYUAN_VAE_TINY)
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(torch.zeros(1, 3, 5, 20, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model.encode(torch.zeros(3, 5, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 16, t, h, w\)"):
        model.decode(torch.zeros(1, 8, 2, 2, 2))
    with pytest.raises(ValueError, match="norm_groups"):
        HunyuanVAEConfig(widths=(8, 12), norm_groups=8, spatial_down=4, temporal_down=2)
    with pytest.raises(ValueError, match="temporal_down"):
        HunyuanVAEConfig(temporal_down=16)


# --------------------------------------------------------------------------------------------
# Causality (float64, so "unchanged" means bit-for-bit-ish, not within float32 noise)


def _latent_index(frame: int) -> int:
    return 0 if frame == 0 else 1 + (frame - 1) // 4


def test_frame_causal_mask():
    m = frame_causal_mask(3, 2)
    assert m.shape == (6, 6)
    assert m[0, :2].all() and not m[0, 2:].any()  # frame 0 sees frame 0 only
    assert m[5].all()  # the last frame sees everything


@pytest.mark.parametrize("t", [0, 1, 4, 5, 9, 16])
def test_encoder_is_causal_with_frame_norm(t):
    torch.manual_seed(0)
    cfg = dataclasses.replace(HUNYUAN_VAE_TINY, frame_norm=True)
    model = HunyuanVAE(cfg).double().eval()
    x = torch.randn(1, 3, 17, 16, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :, t] += torch.randn_like(x2[:, :, t])
    with torch.no_grad():
        z, z2 = model.encode(x), model.encode(x2)
    k = _latent_index(t)
    torch.testing.assert_close(z2[:, :, :k], z[:, :, :k], rtol=0, atol=1e-12)
    assert (z2[:, :, k] - z[:, :, k]).abs().max() > 1e-6  # frame t does reach its latent


@pytest.mark.parametrize("k", [1, 2, 4])
def test_decoder_is_causal_with_frame_norm(k):
    torch.manual_seed(0)
    cfg = dataclasses.replace(HUNYUAN_VAE_TINY, frame_norm=True)
    model = HunyuanVAE(cfg).double().eval()
    z = torch.randn(1, 16, 5, 2, 2, dtype=torch.float64)
    z2 = z.clone()
    z2[:, :, k] += 1.0
    with torch.no_grad():
        y, y2 = model.decode(z), model.decode(z2)
    first = 1 + 4 * (k - 1)  # latent frame k covers frames 4k−3 … 4k
    torch.testing.assert_close(y2[:, :, :first], y[:, :, :first], rtol=0, atol=1e-12)
    assert (y2[:, :, first] - y[:, :, first]).abs().max() > 1e-6


def test_reference_norm_pools_time():
    # With the reference GroupNorm (statistics over the whole clip) only the convs and the
    # attention are causal: a later frame moves earlier latents through the norm statistics.
    torch.manual_seed(0)
    model = HunyuanVAE(HUNYUAN_VAE_TINY).double().eval()
    x = torch.randn(1, 3, 9, 16, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :, 8] += 3.0
    with torch.no_grad():
        assert (model.encode(x2)[:, :, 0] - model.encode(x)[:, :, 0]).abs().max() > 1e-9
    # ... but an image still encodes alone: the first latent of a 1-frame clip is the image's.
    cfg = dataclasses.replace(HUNYUAN_VAE_TINY, frame_norm=True)
    pf = HunyuanVAE(cfg).double().eval()
    pf.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(pf.encode(x)[:, :, :1], model.encode(x[:, :, :1]),
                                   rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Importer


def _random_reference_checkpoint(cfg: HunyuanVAEConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) for name, shape in
            reference_layout(cfg).items()}


def _osora_name(ref: str) -> str:
    return ref.replace("to_out.0.", "to_out.")


def test_importer_puts_every_tensor_in_place(tmp_path):
    ckpt = _random_reference_checkpoint(HUNYUAN_VAE_TINY)
    path = save_weights(ckpt, tmp_path / "hunyuan_vae.safetensors")
    model = load_hunyuan_vae(path, HUNYUAN_VAE_TINY)
    state = model.state_dict()
    assert len(state) == len(ckpt)
    for ref, value in ckpt.items():
        assert torch.equal(state[_osora_name(ref)], value), ref
    # and the imported model runs
    with torch.no_grad():
        assert model.encode(torch.zeros(1, 3, 5, 16, 16)).shape == (1, 16, 2, 2, 2)


def test_importer_reads_hunyuanvideo_pt_with_prefix(tmp_path):
    ckpt = _random_reference_checkpoint(HUNYUAN_VAE_TINY, seed=1)
    path = tmp_path / "pytorch_model.pt"
    torch.save({"state_dict": {f"vae.{k}": v for k, v in ckpt.items()}}, path)
    state = load_hunyuan_vae(path, HUNYUAN_VAE_TINY).state_dict()
    for ref, value in ckpt.items():
        assert torch.equal(state[_osora_name(ref)], value), ref


def test_importer_accepts_legacy_attention_names():
    ckpt = _random_reference_checkpoint(HUNYUAN_VAE_TINY, seed=2)
    legacy = {k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): v
              for k, v in ckpt.items()}
    out = convert_state_dict(legacy, HUNYUAN_VAE_TINY)
    a = "encoder.mid_block.attentions.0"
    assert torch.equal(out[f"{a}.to_q.weight"], ckpt[f"{a}.to_q.weight"])
    assert torch.equal(out[f"{a}.to_out.bias"], ckpt[f"{a}.to_out.0.bias"])


def test_importer_names_extra_missing_and_misshapen_keys(tmp_path):
    ckpt = _random_reference_checkpoint(HUNYUAN_VAE_TINY)
    extra = dict(ckpt, **{"encoder.bogus.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unknown keys \(1.*encoder\.bogus\.weight"):
        convert_state_dict(extra, HUNYUAN_VAE_TINY)
    assert len(convert_state_dict(extra, HUNYUAN_VAE_TINY,
                                  ignore=["encoder.bogus.weight"])) == len(ckpt)

    missing = dict(ckpt)
    del missing["decoder.up_blocks.1.upsamplers.0.conv.conv.weight"]
    path = save_weights(missing, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"missing.*decoder\.up_blocks\.1\.upsamplers\.0\.conv"):
        load_hunyuan_vae(path, HUNYUAN_VAE_TINY)

    bad = dict(ckpt, **{"quant_conv.weight": torch.zeros(4, 4, 1, 1, 1)})
    with pytest.raises(ValueError, match=r"shape mismatch.*quant_conv\.weight"):
        convert_state_dict(bad, HUNYUAN_VAE_TINY)

    with pytest.raises(ValueError, match="given twice"):
        convert_state_dict(dict(ckpt, **{"encoder.mid_block.attentions.0.query.weight":
                                         ckpt["encoder.mid_block.attentions.0.to_q.weight"]}),
                           HUNYUAN_VAE_TINY)


def test_importer_refuses_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_hunyuan_vae(tmp_path / "nope.safetensors", HUNYUAN_VAE_TINY)
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown checkpoint type"):
        load_hunyuan_vae(tmp_path / "w.npz", HUNYUAN_VAE_TINY)


def test_matches_diffusers_autoencoder_kl_hunyuan_video():
    # An independent implementation of the same reference: diffusers' AutoencoderKLHunyuanVideo
    # (same state-dict names). Runs only where diffusers is installed (it is no osora
    # dependency); checked with diffusers 0.42.1: equal in float64, paper config 246,478,803
    # parameters there too.
    diffusers = pytest.importorskip("diffusers")
    cfg = HUNYUAN_VAE_TINY
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLHunyuanVideo(
        block_out_channels=cfg.widths, layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_groups,
    ).double().eval()
    ref.use_framewise_encoding = ref.use_framewise_decoding = False  # no temporal tiling
    for p in ref.parameters():
        p.data.normal_(0, 0.2)
    model = HunyuanVAE(cfg).double().eval()
    model.load_state_dict(convert_state_dict(ref.state_dict(), cfg))
    x = torch.randn(1, 3, 9, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        post = ref.encode(x).latent_dist
        mean, logvar = model.encode_moments(x)
        torch.testing.assert_close(mean, post.mean)
        torch.testing.assert_close(logvar, post.logvar)
        torch.testing.assert_close(model.decode(mean), ref.decode(mean).sample)


def test_each_ae_applies_its_own_scale_direction_for_the_dit():
    """The released DC-AE divides by its factor, the HunyuanVideo VAE multiplies by its own;
    to_dit/from_dit hide that from the DiT and invert each other."""
    import torch

    from osora.models.dcae import DCAE, DCAE_TINY
    from osora.models.hunyuan_vae import HUNYUAN_VAE_TINY, HunyuanVAE

    z = torch.randn(2, 16, 3, 4, 4, dtype=torch.float64)
    hy, dc = HunyuanVAE(HUNYUAN_VAE_TINY), DCAE(DCAE_TINY)
    assert torch.equal(hy.to_dit(z), z * 0.476986)
    assert torch.equal(dc.to_dit(z), z / dc.scaling_factor)
    for ae in (hy, dc):
        assert torch.allclose(ae.from_dit(ae.to_dit(z)), z, rtol=0, atol=1e-15)
