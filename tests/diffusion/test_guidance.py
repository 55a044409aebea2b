"""Guidance: oscillation table, dynamic image scale and the decoupled formula by hand."""

from __future__ import annotations

import pytest
import torch

from osora.diffusion.guidance import (
    decoupled_guidance,
    dynamic_image_scale,
    oscillation_scale,
    step_scales,
)

# Oscillation for 50 steps, written out: S = the scale, 1 = no guidance. Steps 0–9 always S;
# from 10 on, even steps S, odd steps 1 (reference get_oscillation_gs, force_num=10).
TABLE_50 = (
    "SSSSSSSSSS"  # 0–9
    "S1S1S1S1S1"  # 10–19
    "S1S1S1S1S1"  # 20–29
    "S1S1S1S1S1"  # 30–39
    "S1S1S1S1S1"  # 40–49
)


def test_oscillation_table_50_steps():
    got = "".join("S" if oscillation_scale(7.5, i) == 7.5 else "1" for i in range(50))
    assert got == TABLE_50
    assert [oscillation_scale(7.5, i) for i in (9, 10, 11, 48, 49)] == [7.5, 7.5, 1.0, 7.5, 1.0]
    with pytest.raises(ValueError):
        oscillation_scale(7.5, -1)


def test_dynamic_image_scale_by_hand():
    # g = 3, N = 50: upper_i = 3 − 2·i/50; frames ramp from 1 to upper
    assert dynamic_image_scale(3.0, 0, 50, 5).tolist() == pytest.approx([1, 1.5, 2, 2.5, 3])
    assert dynamic_image_scale(3.0, 25, 50, 5).tolist() == pytest.approx(
        [1, 1.25, 1.5, 1.75, 2])
    assert dynamic_image_scale(3.0, 49, 50, 5).tolist() == pytest.approx(
        [1, 1.01, 1.02, 1.03, 1.04])
    assert dynamic_image_scale(3.0, 10, 50, 1).tolist() == [1.0]  # a single frame gets 1
    # matches the reference's torch expression
    ref = torch.linspace(1.0, float(torch.linspace(3.0, 1.0, 51, dtype=torch.float64)[17]), 7,
                         dtype=torch.float64)
    torch.testing.assert_close(dynamic_image_scale(3.0, 17, 50, 7), ref)
    with pytest.raises(ValueError):
        dynamic_image_scale(3.0, 50, 50, 5)


def test_step_scales_oscillation_then_ramp():
    kw = dict(g_img=3.0, g_txt=7.5, num_frames=3)
    img, txt = step_scales(11, 50, **kw)  # odd step ≥ 10: both 1, no ramp
    assert txt == 1.0 and img.tolist() == [1.0, 1.0, 1.0]
    img, txt = step_scales(12, 50, **kw)  # upper = 3 − 24/50 = 2.52
    assert txt == 7.5 and img.tolist() == pytest.approx([1.0, 1.76, 2.52])
    img, txt = step_scales(11, 50, oscillation=False, **kw)  # upper 3 − 22/50 = 2.56
    assert txt == 7.5 and img.tolist() == pytest.approx([1.0, 1.78, 2.56])
    img, txt = step_scales(12, 50, dynamic_image=False, **kw)
    assert txt == 7.5 and img.tolist() == [3.0, 3.0, 3.0]
    img, _ = step_scales(0, 50, g_img=0.5, g_txt=1.0, num_frames=2)  # g ≤ 1: no ramp
    assert img.tolist() == [0.5, 0.5]


def test_decoupled_guidance_by_hand():
    v_null, v_img, v_full = (torch.full((1, 1, 2, 1, 1), v) for v in (1.0, 3.0, 4.0))
    # 1 + 2·(3 − 1) + 7.5·(4 − 3) = 12.5
    out = decoupled_guidance(v_null, v_img, v_full, g_img=2.0, g_txt=7.5)
    assert out.flatten().tolist() == [12.5, 12.5]
    # per frame: g_img = [1, 3] → [1 + 2 + 7.5, 1 + 6 + 7.5]
    out = decoupled_guidance(v_null, v_img, v_full, g_img=torch.tensor([1.0, 3.0]), g_txt=7.5)
    assert out.flatten().tolist() == [10.5, 14.5]
    assert torch.equal(decoupled_guidance(v_null, v_img, v_full, g_img=1.0, g_txt=1.0), v_full)
    assert torch.equal(decoupled_guidance(v_null, v_img, v_full, g_img=0.0, g_txt=0.0), v_null)
    # no image condition (v_img = v_null): classic CFG v∅ + g·(v_txt − v∅) = 1 + 7.5·3
    out = decoupled_guidance(v_null, v_null, v_full, g_img=3.0, g_txt=7.5)
    assert out.flatten().tolist() == [23.5, 23.5]
    with pytest.raises(ValueError, match="per-frame"):
        decoupled_guidance(v_null, v_img, v_full, g_img=torch.ones(3), g_txt=1.0)
