"""VBench's Quality / Semantic / Total from given per-dimension scores, against a hand
computation of VBench's leaderboard formula (min–max constants, dynamic degree weight 0.5,
Total = (4·Quality + Semantic)/5), and missing dimensions reported, never filled in."""

import pytest

from osora.eval.vbench_score import DIMENSIONS, summarize

# per-dimension raw scores of a made-up model (fractions, as VBench's result JSON holds them)
SCORES = {
    "subject consistency": 0.95, "background consistency": 0.96,
    "temporal flickering": 0.98, "motion smoothness": 0.99, "dynamic degree": 0.70,
    "aesthetic quality": 0.62, "imaging quality": 0.68,
    "object class": 0.90, "multiple objects": 0.70, "human action": 0.95, "color": 0.88,
    "spatial relationship": 0.75, "scene": 0.50, "appearance style": 0.22,
    "temporal style": 0.25, "overall consistency": 0.27,
}


def test_summary_equals_the_leaderboard_formula_by_hand():
    s = summarize(SCORES)
    quality = ((0.95 - 0.1462) / (1 - 0.1462) + (0.96 - 0.2615) / (1 - 0.2615)
               + (0.98 - 0.6293) / (1 - 0.6293) + (0.99 - 0.706) / (0.9975 - 0.706)
               + 0.70 * 0.5 + 0.62 + 0.68) / 6.5
    semantic = (0.90 + 0.70 + 0.95 + 0.88 + 0.75 + 0.50 / 0.8222
                + (0.22 - 0.0009) / (0.2855 - 0.0009) + 0.25 / 0.364 + 0.27 / 0.364) / 9
    assert s.quality == pytest.approx(quality, rel=1e-12)
    assert s.semantic == pytest.approx(semantic, rel=1e-12)
    assert s.total == pytest.approx((4 * quality + semantic) / 5, rel=1e-12)
    assert s.not_evaluated == ()
    assert s.normalized["dynamic_degree"] == pytest.approx(0.35)  # weight 0.5


def test_a_missing_dimension_is_not_evaluated_never_zero():
    partial = {k: v for k, v in SCORES.items() if k != "scene"}
    s = summarize(partial)
    assert s.not_evaluated == ("scene",)
    assert s.semantic is None and s.total is None  # not computed with a 0 in its place
    assert s.quality == pytest.approx(summarize(SCORES).quality, rel=1e-12)  # unaffected
    only_quality = summarize({k: v for k, v in SCORES.items()
                              if DIMENSIONS[k.replace(" ", "_")].quality})
    assert only_quality.quality is not None and only_quality.semantic is None
    assert len(only_quality.not_evaluated) == 9


def test_unknown_dimensions_are_named():
    with pytest.raises(ValueError, match=r"unknown VBench dimensions \['sharpness'\]"):
        summarize({"sharpness": 0.5})
