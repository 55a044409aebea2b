"""The synth set's training grid: held-out combinations are never shown, every word still is,
and the rendered frames show the motion and contrast the truth says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osora.config import load_settings
from osora.data.synth import HELD_OUT_FILE, generate, held_out, plan
from osora.data.synth_grid import LUMA_CONTRAST, Combo, all_combos
from osora.data.synth_vocab import COLOURS, DIRECTIONS, SHAPES, TINTS
from osora.eval.prompt_following import parse_prompt
from osora.media.frames import read_video

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"


@pytest.fixture(scope="module")
def params():
    return load_settings(params_dir=PARAMS_DIR).data.synth


def _combo(video) -> Combo:
    shot = video.shots[0]
    return Combo(shot.colour, shot.shape, shot.direction)


def test_held_out_combinations_are_never_shown(params):
    videos, held = plan(params), held_out(params)
    shown = {Combo(s.colour, s.shape, s.direction) for v in videos for s in v.shots}
    grid = [v for v in videos if v.stem.startswith("grid_")]
    assert len(grid) == params.grid.count and len(held) == params.grid.held_out
    assert not shown & {_combo(v) for v in held}
    assert len({_combo(v) for v in grid}) == len(grid)  # 160 of 244 free: no repeats
    # every word of a held-out prompt is learned from other videos
    for attr, words in (("colour", COLOURS), ("shape", SHAPES), ("direction", DIRECTIONS)):
        assert {getattr(_combo(v), attr) for v in grid} == set(words), attr
    assert len(all_combos()) == len(COLOURS) * len(SHAPES) * len(DIRECTIONS)


def test_grid_speeds_cycle_and_contrast_stays_in_the_luma_band(params):
    grid = [v for v in plan(params) if v.stem.startswith("grid_")]
    speeds = [v.shots[0].speed_px_per_frame for v in grid]
    assert speeds[:6] == params.grid.speeds * 2
    luma = np.array([0.299, 0.587, 0.114])
    for v in grid:
        shot = v.shots[0]
        contrast = abs(luma @ np.subtract(COLOURS[shot.colour], TINTS[shot.background_colour]))
        assert LUMA_CONTRAST[0] <= contrast <= LUMA_CONTRAST[1], v.file
        assert shot.background == "flat" and v.width == v.height == params.grid.size


def test_held_out_file_lists_parseable_prompts(params, tmp_path):
    small = params.model_copy(update={"grid": params.grid.model_copy(update={"count": 3})})
    generate(small, tmp_path)
    lines = (tmp_path / HELD_OUT_FILE).read_text().splitlines()
    assert lines == [v.caption for v in held_out(small)]
    assert not list(tmp_path.glob("held_out_*"))  # planned, never rendered
    facts = [parse_prompt(line) for line in lines]
    assert {(f.colour, f.shape, f.direction_name) for f in facts} == {
        (c.colour, c.shape, c.direction) for c in map(_combo, held_out(small))}


def test_grid_frames_move_as_truth_says(params, tmp_path):
    """The colour's centroid on frames where the whole shape is inside moves at the truth's
    velocity (decoded by PyAV, located by colour distance)."""
    small = params.model_copy(update={"grid": params.grid.model_copy(update={"count": 3})})
    for v in [v for v in generate(small, tmp_path) if v.stem.startswith("grid_")]:
        shot = v.shots[0]
        frames = read_video(tmp_path / v.file).astype(float)  # (T, H, W, 3)
        near = np.linalg.norm(frames - COLOURS[shot.colour], axis=-1) < 45  # (T, H, W)
        reach = 0.65 * shot.size_px
        t = np.arange(v.num_frames)
        cx = shot.start_xy[0] + shot.velocity[0] * t
        cy = shot.start_xy[1] + shot.velocity[1] * t
        inside = (np.minimum(cx, cy) > reach) & (np.maximum(cx, cy) < v.width - reach)
        assert inside.sum() >= 2, v.file
        ys, xs = zip(*(np.nonzero(m) for m in near[inside]), strict=True)
        centres = np.array([(x.mean() + 0.5, y.mean() + 0.5) for x, y in zip(xs, ys)])
        fitted = np.polyfit(t[inside], centres, 1)[0]  # (2,) px per frame
        assert np.allclose(fitted, shot.velocity, atol=0.05), (v.file, fitted, shot.velocity)


def test_a_speed_the_picture_cannot_hold_is_refused(params):
    fast = params.model_copy(update={"grid": params.grid.model_copy(update={"speeds": [9.0]})})
    with pytest.raises(ValueError, match="synth.grid.speeds"):
        plan(fast)
