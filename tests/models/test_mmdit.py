"""MMDiT (docs/recipe.md §3, §5): the paper's parameter count, shapes, text mask, condition input,
gradients, init, RoPE-layout conversion, errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from osora.models.mmdit import (
    MMDIT_11B,
    MMDIT_TINY,
    MMDiT,
    MMDiTConfig,
    convert_rope_layout,
    patchify,
    timestep_embedding,
    unpatchify,
)

F64 = torch.float64


def randomise(model: MMDiT, seed: int = 0, std: float = 0.1) -> MMDiT:
    """Random weights everywhere (init_weights zeroes the modulations and the output)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * std
            p.copy_(1 + noise if "_norm." in name else noise)  # QK-norm scales around 1
    return model


def inputs(cfg: MMDiTConfig, b=2, t=2, h=4, w=4, n_txt=5, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, t, h, w, generator=gen, dtype=dtype)
    times = torch.rand(b, generator=gen, dtype=dtype)
    text = torch.randn(b, n_txt, cfg.text_dim, generator=gen, dtype=dtype)
    pooled = torch.randn(b, cfg.vec_dim, generator=gen, dtype=dtype)
    return x, times, text, pooled


# --------------------------------------------------------------------------------------------
# Parameter counts (meta device)


def reference_counts() -> tuple[int, int, int]:
    """Open-Sora v2 `MMDiTModel` at the 256px inference config, layer by layer (in_channels 64
    = 16·2², cond_in 68 = 17·2², FLUX-dev shape without guidance_in)."""
    h, m, hd = 3072, 4 * 3072, 128

    def lin(i, o):
        return i * o + o

    attn = lin(h, 3 * h) + 2 * hd + lin(h, h)  # qkv (bias), QK norm scales, proj
    double = 2 * (lin(h, 6 * h) + attn + lin(h, m) + lin(m, h))  # img + txt streams
    single = lin(h, 3 * h + m) + lin(h + m, h) + 2 * hd + lin(h, 3 * h)
    embed = lin(64, h) + lin(68, h) + 2 * lin(h, h) + lin(256, h) + lin(768, h) + lin(4096, h)
    final = lin(h, 64) + lin(h, 2 * h)
    return 19 * double + 38 * single + embed + final, 19 * double, 38 * single


def test_param_count_11b_matches_reference():
    with torch.device("meta"):
        model = MMDiT(MMDIT_11B)
    total = sum(p.numel() for p in model.parameters())
    double = sum(p.numel() for p in model.double_blocks.parameters())
    single = sum(p.numel() for p in model.single_blocks.parameters())
    ref_total, ref_double, ref_single = reference_counts()
    # docs/recipe.md §3: 11.891B on the meta device; double 6.457B, single 5.380B.
    assert ref_total == 11_891_390_528
    assert total == pytest.approx(11.891e9, rel=0.005)
    assert double == pytest.approx(6.457e9, rel=0.005) and double == ref_double
    assert single == pytest.approx(5.380e9, rel=0.005) and single == ref_single
    # One img_in over [latent; condition] instead of img_in + cond_in: one bias (3072) fewer.
    assert ref_total - total == 3072
    assert (total, double, single) == (11_891_387_456, 6_456_794_624, 5_380_488_704)


# --------------------------------------------------------------------------------------------
# Forward


@pytest.mark.parametrize("patch", [1, 2])
def test_forward_shapes_and_gradients(patch):
    cfg = dataclasses.replace(MMDIT_TINY, patch_size=patch)
    model = randomise(MMDiT(cfg))
    x, t, text, pooled = inputs(cfg, h=4, w=6)
    cond = torch.randn(2, cfg.cond_channels, 2, 4, 6)
    v = model(x, t, text, pooled, cond=cond)
    assert v.shape == x.shape and v.dtype == x.dtype
    v.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []


def test_text_mask_hides_padding():
    cfg = MMDIT_TINY
    model = randomise(MMDiT(cfg).double(), seed=1)
    x, t, text, pooled = inputs(cfg, n_txt=6, dtype=F64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False  # sample 0 has 4 real tokens
    mask[1, 2:] = False
    v = model(x, t, text, pooled, text_mask=mask)
    garbage = text.clone()
    garbage[~mask] = 100 * torch.randn(int((~mask).sum()), cfg.text_dim, dtype=F64)
    torch.testing.assert_close(model(x, t, garbage, pooled, text_mask=mask), v, rtol=0, atol=1e-12)
    # Masking equals dropping the padded tokens.
    alone = model(x[:1], t[:1], text[:1, :4], pooled[:1])
    torch.testing.assert_close(v[:1], alone, rtol=0, atol=1e-10)
    # Without the mask the padding does change the output.
    assert not torch.allclose(model(x, t, garbage, pooled), model(x, t, text, pooled))


def test_cond_none_equals_zero_condition():
    cfg = MMDIT_TINY
    model = randomise(MMDiT(cfg), seed=2)
    x, t, text, pooled = inputs(cfg)
    zeros = torch.zeros(2, cfg.cond_channels, *x.shape[2:])
    torch.testing.assert_close(model(x, t, text, pooled), model(x, t, text, pooled, cond=zeros))
    cond = torch.randn_like(zeros)
    assert not torch.allclose(model(x, t, text, pooled, cond=cond), model(x, t, text, pooled))
    # The condition enters only through img_in's extra columns (the reference's cond_in).
    with torch.no_grad():
        model.img_in.weight[:, cfg.latent_features :] = 0
    torch.testing.assert_close(model(x, t, text, pooled, cond=cond), model(x, t, text, pooled))


def test_init_weights_start_at_zero_velocity_with_zero_condition_columns():
    cfg = MMDIT_TINY
    model = MMDiT(cfg)
    x, t, text, pooled = inputs(cfg)
    cond = torch.randn(2, cfg.cond_channels, *x.shape[2:])
    assert torch.equal(model(x, t, text, pooled, cond=cond), torch.zeros_like(x))
    assert not model.img_in.weight[:, cfg.latent_features :].any()
    assert model.img_in.weight[:, : cfg.latent_features].any()


@pytest.mark.parametrize(
    "src,dst", [("interleaved", "rotate_half"), ("rotate_half", "interleaved")]
)
def test_converted_rope_layout_gives_the_same_model(src, dst):
    cfg_a = dataclasses.replace(MMDIT_TINY, rope_layout=src, depth_double=2)
    cfg_b = dataclasses.replace(cfg_a, rope_layout=dst)
    model_a = randomise(MMDiT(cfg_a).double(), seed=3)  # QK-norm scales ≠ 1: permuted too
    model_b = MMDiT(cfg_b).double()
    model_b.load_state_dict(convert_rope_layout(model_a.state_dict(), cfg_a, src, dst))
    x, t, text, pooled = inputs(cfg_a, t=3, h=4, w=5, dtype=F64)
    cond = torch.randn(2, cfg_a.cond_channels, 3, 4, 5, dtype=F64)
    out_a = model_a(x, t, text, pooled, cond=cond)
    torch.testing.assert_close(model_b(x, t, text, pooled, cond=cond), out_a, rtol=0, atol=1e-10)
    # Loading the unconverted weights into the other layout is a different model.
    model_b.load_state_dict(model_a.state_dict())
    assert not torch.allclose(model_b(x, t, text, pooled, cond=cond), out_a, atol=1e-4)


def test_bf16_model_takes_float32_inputs():
    cfg = MMDIT_TINY
    model = randomise(MMDiT(cfg), seed=4).to(torch.bfloat16)
    x, t, text, pooled = inputs(cfg)
    mask = torch.ones(2, 5, dtype=torch.bool)
    v = model(x, t, text, pooled, text_mask=mask)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()


def test_guidance_embedding():
    cfg = dataclasses.replace(MMDIT_TINY, guidance_embed=True)
    model = randomise(MMDiT(cfg), seed=5)
    x, t, text, pooled = inputs(cfg)
    g = torch.full((2,), 3.5)
    assert not torch.allclose(
        model(x, t, text, pooled, guidance=g), model(x, t, text, pooled, guidance=2 * g)
    )
    with pytest.raises(ValueError, match="guidance"):
        model(x, t, text, pooled)
    with pytest.raises(ValueError, match="guidance_embed=False"):
        MMDiT(MMDIT_TINY)(x, t, text, pooled, guidance=g)


# --------------------------------------------------------------------------------------------
# Pieces


def test_patchify_layout_and_round_trip():
    x = torch.randn(2, 3, 2, 4, 6)
    tokens = patchify(x, 2)  # (B, T·2·3, C·4)
    assert tokens.shape == (2, 12, 12)
    # token (t, h, w) row-major; feature (c, ph, pw) as the reference's `pack`
    b, c, t, h, w, i, j = 1, 2, 1, 1, 2, 1, 0
    assert tokens[b, t * 6 + h * 3 + w, c * 4 + i * 2 + j] == x[b, c, t, 2 * h + i, 2 * w + j]
    assert torch.equal(unpatchify(tokens, 2, 2, 3, 2), x)


def test_timestep_embedding_is_fluxs_sinusoid():
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = timestep_embedding(t)
    assert emb.shape == (3, 256)
    for col in (0, 5, 127):
        freq = math.exp(-math.log(10_000) * col / 128)
        torch.testing.assert_close(emb[:, col], torch.cos(1000 * t * freq))
        torch.testing.assert_close(emb[:, 128 + col], torch.sin(1000 * t * freq))


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="sum to"):
        MMDiTConfig(hidden_size=64, num_heads=4, axes_dims=(4, 4, 4))
    with pytest.raises(ValueError, match="patch_size"):
        MMDiTConfig(patch_size=4)
    with pytest.raises(ValueError, match="rope_layout"):
        dataclasses.replace(MMDIT_TINY, rope_layout="neox")
    model = MMDiT(MMDIT_TINY)
    x, t, text, pooled = inputs(MMDIT_TINY)
    with pytest.raises(ValueError, match="latent"):
        model(x[:, :3], t, text, pooled)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        MMDiT(dataclasses.replace(MMDIT_TINY, patch_size=2))(x[..., :3], t, text, pooled)
    with pytest.raises(ValueError, match="text_mask"):
        model(x, t, text, pooled, text_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="cond must be"):
        model(x, t, text, pooled, cond=torch.zeros(2, 16, *x.shape[2:]))
    with pytest.raises(ValueError, match="cond_channels = 0"):
        MMDiT(dataclasses.replace(MMDIT_TINY, cond_channels=0))(
            x, t, text, pooled, cond=torch.zeros(2, 17, *x.shape[2:])
        )
    with pytest.raises(ValueError, match="pooled"):
        model(x, t, text, pooled[:, :4])
