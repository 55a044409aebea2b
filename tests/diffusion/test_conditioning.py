"""Condition masks, the condition tensor, the kind draw and the training dropouts."""

from __future__ import annotations

import math

import pytest
import torch

from osora.diffusion.conditioning import (
    CONDITION_KINDS,
    applicable_kinds,
    build_cond,
    condition_mask,
    conditioned_frames,
    drop_condition,
    drop_text,
    generated_frames,
    sample_condition_kind,
    zero_cond,
)

REFERENCE_WEIGHTS = {"t2v": 1, "i2v_head": 5, "i2v_loop": 1, "i2v_tail": 1}


@pytest.mark.parametrize("kind, expected", [
    ("t2v", "....."),
    ("i2v_head", "X...."),
    ("i2v_tail", "....X"),
    ("i2v_loop", "X...X"),
    ("v2v_head", "XX..."),
    ("v2v_tail", "...XX"),
])
def test_condition_masks(kind, expected):
    mask = condition_mask(kind, 5, v2v_frames=2)
    assert mask.dtype == torch.bool
    assert "".join("X" if m else "." for m in mask.tolist()) == expected


def test_condition_mask_errors():
    assert condition_mask("t2v", 1).tolist() == [False]  # images: t2v only
    with pytest.raises(ValueError, match="unknown condition kind"):
        condition_mask("i2v", 5)
    with pytest.raises(ValueError, match="v2v_frames"):
        condition_mask("v2v_head", 5)
    with pytest.raises(ValueError, match="nothing to generate"):
        condition_mask("v2v_tail", 5, v2v_frames=5)
    with pytest.raises(ValueError, match="nothing to generate"):
        condition_mask("i2v_head", 1)
    with pytest.raises(ValueError, match="nothing to generate"):
        condition_mask("i2v_loop", 2)
    with pytest.raises(ValueError, match="positive integer"):
        condition_mask("t2v", 0)


def test_applicable_kinds():
    assert applicable_kinds(CONDITION_KINDS, 1) == ["t2v"]
    assert applicable_kinds(CONDITION_KINDS, 2) == ["t2v", "i2v_head", "i2v_tail"]
    assert applicable_kinds(CONDITION_KINDS, 9, v2v_frames=9) == \
        ["t2v", "i2v_head", "i2v_tail", "i2v_loop"]
    assert applicable_kinds(CONDITION_KINDS, 10, v2v_frames=9) == list(CONDITION_KINDS)


def test_build_cond():
    latent = torch.arange(2 * 2 * 3 * 1 * 2, dtype=torch.float32).view(2, 2, 3, 1, 2) + 1
    cond = build_cond(latent, condition_mask("i2v_head", 3))
    assert cond.shape == (2, 3, 3, 1, 2) and cond.dtype == latent.dtype
    assert cond[:, 0, 0].eq(1).all() and cond[:, 0, 1:].eq(0).all()  # mask channel
    assert torch.equal(cond[:, 1:, 0], latent[:, :, 0])  # the given frame
    assert cond[:, 1:, 1:].eq(0).all()  # other frames zeroed
    # per-sample masks (B, T)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    cond = build_cond(latent, mask)
    assert torch.equal(conditioned_frames(cond), mask)
    assert torch.equal(generated_frames(cond), ~mask)
    assert torch.equal(cond[1, 1:, 2], latent[1, :, 2]) and cond[1, 1:, :2].eq(0).all()
    with pytest.raises(ValueError, match="mask must be"):
        build_cond(latent, torch.ones(4, dtype=torch.bool))
    # a sample with every frame given has no frame for the loss (flow_loss does not check)
    with pytest.raises(ValueError, match=r"every frame of samples \[1\], leaving nothing"):
        build_cond(latent, torch.tensor([[True, False, False], [True, True, True]]))
    assert zero_cond((2, 4, 3, 5, 6)).shape == (2, 5, 3, 5, 6)
    assert not conditioned_frames(zero_cond((2, 4, 3, 5, 6))).any()


def test_sample_condition_kind_reproducible_and_weighted():
    a = [sample_condition_kind(REFERENCE_WEIGHTS, g) for g in
         [torch.Generator().manual_seed(s) for s in range(20)]]
    b = [sample_condition_kind(REFERENCE_WEIGHTS, g) for g in
         [torch.Generator().manual_seed(s) for s in range(20)]]
    assert a == b
    g = torch.Generator().manual_seed(0)
    draws = [sample_condition_kind(REFERENCE_WEIGHTS, g) for _ in range(4000)]
    for kind, w in REFERENCE_WEIGHTS.items():  # t2v 1/8 = the paper's 12.5% condition dropout
        assert draws.count(kind) / len(draws) == pytest.approx(w / 8, abs=0.025)
    zero = {"t2v": 0, "i2v_head": 1, "i2v_tail": 0}
    assert {sample_condition_kind(zero, g) for _ in range(200)} == {"i2v_head"}


def test_sample_condition_kind_respects_clip_length():
    g = torch.Generator().manual_seed(1)
    assert {sample_condition_kind(REFERENCE_WEIGHTS, g, num_latent_frames=1)
            for _ in range(50)} == {"t2v"}
    weights = {"i2v_loop": 1, "v2v_head": 100}
    assert {sample_condition_kind(weights, g, num_latent_frames=5, v2v_frames=9)
            for _ in range(50)} == {"i2v_loop"}
    with pytest.raises(ValueError, match="fits"):
        sample_condition_kind({"i2v_loop": 1}, g, num_latent_frames=2)
    with pytest.raises(ValueError, match="unknown"):
        sample_condition_kind({"i2v": 1}, g)
    with pytest.raises(ValueError, match="≥ 0"):
        sample_condition_kind({"t2v": -1}, g)
    with pytest.raises(ValueError, match="empty"):
        sample_condition_kind({}, g)


def test_drop_condition():
    cond = torch.ones(2000, 2, 1, 1, 1)
    assert torch.equal(drop_condition(cond, 0.0, torch.Generator()), cond)
    assert not drop_condition(cond, 1.0, torch.Generator()).any()
    out = drop_condition(cond, 0.125, torch.Generator().manual_seed(3))
    expected = torch.rand(2000, generator=torch.Generator().manual_seed(3)) < 0.125
    assert torch.equal(out.flatten(1).eq(0).all(1), expected)  # one draw per sample
    assert expected.float().mean().item() == pytest.approx(0.125, abs=0.02)
    with pytest.raises(ValueError):
        drop_condition(cond, 1.5, torch.Generator())


def test_drop_text_independent_for_t5_and_clip():
    b, p = 20000, math.sqrt(0.1)
    text, pooled = torch.ones(b, 3, 2), torch.ones(b, 4)
    null_text, null_pooled = torch.zeros(3, 2), torch.zeros(4)
    mask, null_mask = torch.ones(b, 3, dtype=torch.bool), torch.tensor([True, False, False])
    t, v, m = drop_text(text, pooled, null_text=null_text, null_pooled=null_pooled, p_text=p,
                        p_pooled=p, generator=torch.Generator().manual_seed(2),
                        text_mask=mask, null_text_mask=null_mask)
    g = torch.Generator().manual_seed(2)
    drop_t, drop_p = torch.rand(b, generator=g) < p, torch.rand(b, generator=g) < p
    assert torch.equal(t.eq(0).flatten(1).all(1), drop_t)
    assert torch.equal(v.eq(0).all(1), drop_p)
    assert torch.equal(m[drop_t], null_mask.expand(int(drop_t.sum()), 3))
    assert m[~drop_t].all()
    # √0.1 each, independent: both dropped (the unconditional case) 10% of the time
    assert drop_t.float().mean().item() == pytest.approx(0.316, abs=0.01)
    assert (drop_t & drop_p).float().mean().item() == pytest.approx(0.1, abs=0.01)
    t0, v0, m0 = drop_text(text[:2], pooled[:2], null_text=null_text[None], null_pooled=null_pooled,
                           p_text=0.0, p_pooled=0.0, generator=torch.Generator())
    assert torch.equal(t0, text[:2]) and torch.equal(v0, pooled[:2]) and m0 is None


def test_drop_text_errors():
    text, pooled = torch.ones(2, 3, 2), torch.ones(2, 4)
    kw = dict(null_pooled=torch.zeros(4), p_text=0.3, p_pooled=0.3,
              generator=torch.Generator())
    with pytest.raises(ValueError, match="same max_length"):
        drop_text(text, pooled, null_text=torch.zeros(5, 2), **kw)
    with pytest.raises(ValueError, match="together"):
        drop_text(text, pooled, null_text=torch.zeros(3, 2),
                  text_mask=torch.ones(2, 3, dtype=torch.bool), **kw)
