"""The sample stage's protocol: which prompts are rendered, at which motion scores, and how the
scores are summed up (counts and intervals checked by hand)."""

from __future__ import annotations

import pytest

from osora.eval.intervals import wilson_interval
from osora.eval.sample_eval import (
    common_motion_scores,
    evenly_spread,
    note,
    plan_jobs,
    summarise,
)


def _caption(colour: str, shape: str = "circle") -> str:
    return f"A {colour} {shape} moves steadily from left to right across a plain grey background."


TRAINED = {
    **{_caption(c): (16, 0) for c in ("red", "yellow", "white")},
    **{_caption(c, "square"): (16, 1) for c in ("red", "yellow", "white", "black")},
    _caption("cyan", "diamond"): (24, 2),
    "A video of 3 shots. A red circle moves ...": (16, 0),  # not scorable: never chosen
}
HELD = [_caption("magenta", "triangle"), _caption("green", "triangle")]


def test_held_out_prompts_are_asked_at_every_common_motion_score():
    jobs = plan_jobs(TRAINED, HELD, train_prompts=3, motion_scores=None)
    held = [j for j in jobs if j.group == "held_out"]
    assert [(j.motion, j.fps, j.folder) for j in held] == [
        (0, 16, "held_out/motion_0"), (1, 16, "held_out/motion_1"),
        (2, 16, "held_out/motion_2")]
    assert all(j.captions == tuple(HELD) for j in held)
    train = [c for j in jobs if j.group == "train" for c in j.captions]
    assert len(train) == 3 and all(c in TRAINED and "shots" not in c for c in train)
    for j in jobs:  # each training caption at the fps and motion it was trained with
        if j.group == "train":
            assert all(TRAINED[c] == (j.fps, j.motion) for c in j.captions)


def test_given_motion_scores_replace_the_training_ones():
    jobs = plan_jobs(TRAINED, HELD, train_prompts=0, motion_scores=[0, 5])
    assert [j.motion for j in jobs] == [0, 5]


def test_a_held_out_prompt_that_was_trained_on_is_refused():
    with pytest.raises(ValueError, match="training captions"):
        plan_jobs(TRAINED, [_caption("red")], train_prompts=2, motion_scores=None)


def test_no_held_out_file_scores_training_prompts_only():
    jobs = plan_jobs(TRAINED, [], train_prompts=2, motion_scores=None)
    assert {j.group for j in jobs} == {"train"}


def test_rare_motion_scores_are_not_asked():
    assert common_motion_scores([0] * 60 + [1] * 30 + [2] * 9 + [7] + [None] * 5) == [0, 1, 2]


def test_evenly_spread_keeps_both_ends():
    assert evenly_spread(list("edcba"), 3) == ["a", "c", "e"]
    assert evenly_spread(["b", "a"], 5) == ["a", "b"]


def test_summarise_counts_and_intervals():
    scores = [{"colour_correct": c, "shape_correct": s, "direction_correct": d}
              for c, s, d in [(1, 1, 0), (1, 0, 0), (1, 1, 1), (0, 0, 0), (1, 1, 1)]]
    asked, measured = [0, 0, 1, 1, 2], [0.1, 0.3, 0.9, 1.2, 2.0]
    m = summarise("held_out", scores, asked, measured)
    assert m["held_out/videos"] == 5 and m["held_out/colour"] == 0.8
    assert (m["held_out/colour_lo"], m["held_out/colour_hi"]) == wilson_interval(4, 5)
    assert m["held_out/shape"] == 0.6 and m["held_out/direction"] == 0.4
    assert m["held_out/motion_rho"] == pytest.approx(0.9486832980505138)  # scipy.stats.spearmanr
    assert m["held_out/motion_rho_lo"] < 0.9486 < m["held_out/motion_rho_hi"]
    assert m["held_out/motion_at_1"] == pytest.approx(1.05)
    assert note(scores[0]) == "colour ✓  shape ✓  direction ✗"


def test_summarise_without_videos_says_so():
    assert summarise("train", [], [], []) == {"train/videos": 0}
