"""Prompt following on real synth videos: encoded by the project's generator, decoded with PyAV,
then scored. Perfect on the real videos, wrong where the video is altered to contradict its
prompt (reversed, shuffled, recoloured), and at chance on noise."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from osora.config import load_settings
from osora.config.data import SynthParams
from osora.data import synth
from osora.data.synth_shapes import AREA_PER_R2, coverage
from osora.eval.prompt_following import (
    COLOURS,
    DIRECTIONS,
    SECTOR_COS,
    SHAPES,
    chance_levels,
    follow_rates,
    motion_direction,
    parse_prompt,
    score_video,
    shape_colour,
)
from osora.media.ffmpeg import encode_frames
from osora.media.frames import read_video
from osora.prompts import conditioned_text

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"
SEEDS = (0, 1)  # two seeds × 8 clean videos: every colour and every direction, paired twice


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[tuple[synth.SynthVideo, np.ndarray]]:
    """Real synth clean videos, small (96×64, 34 frames): (truth, decoded frames (F, H, W, 3))."""
    out = tmp_path_factory.mktemp("prompt_following")
    found = []
    for seed in SEEDS:
        params = SynthParams(seed=seed, num_clean=8, width=96, height=64, fps=16,
                             duration_s=2.1, crf=26)
        for video in synth.plan(params):
            if not video.stem.startswith("clean_"):
                continue
            path = encode_frames(synth.render_frames(video, seed), out / f"{seed}_{video.file}",
                                 video.fps, crf=video.crf, keyint=video.fps)
            found.append((video, read_video(path)))
    return found


def _accuracy(scores: list[dict], key: str) -> float:
    return float(np.mean([s[key] for s in scores]))


def _failures(pairs, scores: list[dict]) -> list[str]:
    return [f"{v.caption[:70]}… → {s}" for (v, _), s in zip(pairs, scores)
            if not (s["colour_correct"] and s["direction_correct"])]


# ---------------------------------------------------------------------------------------------
# Prompts.


def test_parse_prompt_reads_the_synth_captions():
    videos = synth.plan(load_settings(params_dir=PARAMS_DIR).data.synth)
    single = [v for v in videos if len(v.shots) == 1]
    assert len(single) >= 10
    for video in single:
        shot = video.shots[0]
        for prompt in (video.caption, conditioned_text(video.caption, video.fps, 3.0)):
            facts = parse_prompt(prompt)
            assert (facts.colour, facts.shape, facts.direction_name) == (
                shot.colour, shot.shape, shot.direction), prompt
            assert (facts.background_colour, facts.background) == (
                shot.background_colour, shot.background), prompt
            assert math.hypot(*facts.direction) == pytest.approx(1.0)
            assert facts.direction == pytest.approx(shot.velocity / np.hypot(*shot.velocity))


def test_parse_prompt_examples():
    facts = parse_prompt("A cyan circle moves steadily diagonally up and to the right across a "
                         "background of diagonal purple stripes. The camera is static.")
    assert (facts.colour, facts.shape, facts.background_colour) == ("cyan", "circle", "purple")
    assert facts.direction == pytest.approx((math.sqrt(0.5), -math.sqrt(0.5)))
    # Hand-written variants: any case and spacing, no background.
    facts = parse_prompt("an  Orange square moves from the top\ndownwards.")
    assert (facts.colour, facts.direction, facts.background) == ("orange", (0.0, 1.0), None)


@pytest.mark.parametrize("prompt", [
    "A dog runs through a park.",
    "A purple circle moves steadily from left to right.",  # purple is a tint, not a shape colour
    "A red circle moves steadily in circles.",
])
def test_parse_prompt_names_an_unparsable_prompt(prompt):
    with pytest.raises(ValueError, match=re.escape(repr(prompt))):
        parse_prompt(prompt)


def test_parse_prompt_refuses_a_multi_shot_caption():
    cuts = next(v for v in synth.plan(load_settings(params_dir=PARAMS_DIR).data.synth)
                if len(v.shots) > 1)
    with pytest.raises(ValueError, match=f"describes {len(cuts.shots)} shots"):
        parse_prompt(cuts.caption)


# ---------------------------------------------------------------------------------------------
# Real synth videos, and the same videos made to contradict their prompts.


def test_real_synth_videos_follow_their_prompts(videos):
    assert {v.shots[0].colour for v, _ in videos} == set(COLOURS)
    assert {v.shots[0].direction for v, _ in videos} == set(DIRECTIONS)
    scores = [score_video(frames, v.caption) for v, frames in videos]
    assert _accuracy(scores, "colour_correct") == 1.0, _failures(videos, scores)
    assert _accuracy(scores, "direction_correct") == 1.0, _failures(videos, scores)
    assert min(s["direction_cosine"] for s in scores) > 0.99
    assert {v.shots[0].shape for v, _ in videos} == set(SHAPES)
    assert [s["predicted_shape"] for s in scores] == [v.shots[0].shape for v, _ in videos]


def test_a_prompt_naming_another_shape_is_caught(videos):
    for video, frames in videos:
        shape = video.shots[0].shape
        for other in set(SHAPES) - {shape}:
            score = score_video(frames, re.sub(rf"\b{shape}\b", other, video.caption, count=1))
            assert not score["shape_correct"] and score["predicted_shape"] == shape


def test_shape_areas_match_the_drawn_shapes():
    # AREA_PER_R2 (by hand from the distance fields) against the rasterised coverage, r = 40 px.
    yy, xx = np.mgrid[-128:128, -128:128].astype(np.float64) + 0.5
    for shape, k in AREA_PER_R2.items():
        assert coverage(shape, xx, yy, 40.0).sum() == pytest.approx(k * 40.0**2, rel=2e-3)


def test_reversed_frames_move_against_the_prompt(videos):
    scores = [score_video(frames[::-1], v.caption) for v, frames in videos]
    assert max(s["direction_cosine"] for s in scores) < -0.99
    assert _accuracy(scores, "direction_correct") == 0.0
    # The flicker-corrected variance ignores the direction of time: the colour is still right.
    assert _accuracy(scores, "colour_correct") == 1.0


def test_shuffled_frames_lose_the_direction(videos):
    # A shuffled straight track still lies on the prompt's axis: its least-squares velocity is
    # ± the true one, the sign a coin toss. So about half land in the sector, not all.
    rng = np.random.default_rng(0)
    scores = [score_video(frames[rng.permutation(len(frames))], v.caption)
              for v, frames in videos]
    cosines = np.array([s["direction_cosine"] for s in scores])
    assert _accuracy(scores, "direction_correct") <= 0.6
    assert np.mean(cosines < -0.9) >= 0.4
    assert abs(cosines.mean()) < 0.5


def _recoloured(frames: np.ndarray, old: str, new: str) -> np.ndarray:
    """The frames with every pixel near colour `old` painted `new` (F, H, W, 3) uint8."""
    rgb = frames.astype(np.float32)
    near = np.linalg.norm(rgb - np.array(COLOURS[old], np.float32), axis=-1) < 100  # (F, H, W)
    out = frames.copy()
    out[near] = COLOURS[new]
    return out


def _other_colour(video: synth.SynthVideo) -> str:
    """Another shape colour that synth would also allow on this background."""
    shot = video.shots[0]
    tint = np.array(synth.TINTS[shot.background_colour], float)
    return next(c for c in COLOURS if c != shot.colour
                and np.linalg.norm(np.array(COLOURS[c], float) - tint) >= 150)


def test_recoloured_shape_is_caught(videos):
    for video, frames in videos:
        new = _other_colour(video)
        score = score_video(_recoloured(frames, video.shots[0].colour, new), video.caption)
        assert score["predicted_colour"] == new, (video.caption, new, score)
        assert not score["colour_correct"]
        # The prompt's colour is gone, so its motion cannot be measured.
        assert score["direction_cosine"] == 0.0 and not score["direction_correct"]


def test_swapped_colour_channels_change_the_colour(videos):
    chromatic = [(v, f) for v, f in videos if v.shots[0].colour not in ("white", "black")]
    scores = [score_video(frames[..., [2, 0, 1]], v.caption) for v, frames in chromatic]
    assert _accuracy(scores, "colour_correct") == 0.0, _failures(chromatic, scores)


# ---------------------------------------------------------------------------------------------
# Chance, and the edge cases.


def test_noise_videos_score_about_chance():
    rng = np.random.default_rng(0)
    prompts = [f"A {c} square moves steadily {words} across a plain grey background."
               for c in COLOURS for _, words in DIRECTIONS.values()]  # 64: every pair once
    scores = [score_video(rng.integers(0, 256, (8, 24, 32, 3), np.uint8), p) for p in prompts]
    chance = chance_levels()
    assert abs(_accuracy(scores, "colour_correct") - chance["colour"]) < 0.1
    assert abs(_accuracy(scores, "direction_correct") - chance["direction"]) < 0.15
    # Noise has no coherent moving outline of the colour: rarely the prompt's square.
    assert _accuracy(scores, "shape_correct") <= chance["shape"] + 0.15


def test_chance_levels():
    assert chance_levels() == {"colour": 1 / 8, "direction": 1 / 8, "shape": 1 / 4}
    assert chance_levels(palette_size=4, num_directions=2, num_shapes=2) == {
        "colour": 0.25, "direction": 0.5, "shape": 0.5}
    # The sector test is 45° wide: 1/8 of the circle.
    assert SECTOR_COS == pytest.approx(math.cos(math.pi / 8))
    with pytest.raises(ValueError, match="palette_size"):
        chance_levels(palette_size=0)


def _square_video(colour: str, velocity: tuple[float, float], frames: int = 12) -> np.ndarray:
    """A 10-px square of a palette colour on a plain grey background, (F, 48, 64, 3) uint8."""
    video = np.full((frames, 48, 64, 3), synth.TINTS["grey"], np.uint8)
    for t in range(frames):
        x, y = round(20 + velocity[0] * t), round(18 + velocity[1] * t)
        video[t, y : y + 10, x : x + 10] = COLOURS[colour]
    return video


def test_motion_direction_of_a_drawn_square():
    video = _square_video("orange", (2.0, -1.0))
    dx, dy = motion_direction(video, COLOURS["orange"])
    assert (dx, dy) == pytest.approx((2 / math.sqrt(5), -1 / math.sqrt(5)), abs=0.02)
    assert motion_direction(video, COLOURS["cyan"]) is None  # absent
    assert shape_colour(video) == "orange"


def test_a_static_shape_has_its_colour_but_no_direction():
    video = _square_video("magenta", (0.0, 0.0))
    assert motion_direction(video, COLOURS["magenta"]) is None
    assert shape_colour(video) == "magenta"  # nothing moves: the most abundant palette colour
    score = score_video(video, "A magenta square moves steadily from left to right.")
    assert score["colour_correct"] and score["direction_cosine"] == 0.0


def test_frames_must_be_rgb_video():
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\).*\(4, 8, 8\)"):
        shape_colour(np.zeros((4, 8, 8), np.uint8))


def test_follow_rates_reads_the_files_and_leaves_multi_shot_prompts_unscored(videos, tmp_path):
    pairs = []
    for i, (video, frames) in enumerate(videos[:3]):
        path = encode_frames(list(frames), tmp_path / f"{i}.mp4", video.fps, crf=18)
        pairs.append((path, video.caption))
    pairs.append((pairs[0][0], "A red circle moves right. Then the scene cuts. A shot of 3 shots."))
    rates = follow_rates(pairs)
    assert rates["scored"] == 3 and rates["unscored"] == 1
    assert rates["colour_accuracy"] == 1.0 and rates["direction_accuracy"] == 1.0
    assert rates["colour_chance"] == rates["direction_chance"] == 1 / 8


@pytest.fixture(scope="module")
def grid_videos(tmp_path_factory) -> list[tuple[synth.SynthVideo, np.ndarray]]:
    """Real synth grid videos at every grid speed, decoded and downscaled to the DiT's 64 px
    (the shapes overlap themselves in every frame at the slow speed and leave the picture at
    the fast one)."""
    import torch

    params = load_settings(params_dir=PARAMS_DIR).data.synth
    params = params.model_copy(update={"grid": params.grid.model_copy(update={"count": 12}),
                                       "num_clean": 1})
    out = tmp_path_factory.mktemp("grid")
    found = []
    for video in synth.plan(params):
        if video.stem.startswith("grid_"):
            path = encode_frames(synth.render_frames(video, params.seed), out / video.file,
                                 video.fps, crf=video.crf)
            frames = torch.from_numpy(read_video(path)[:16]).permute(0, 3, 1, 2).float()
            small = torch.nn.functional.interpolate(frames, size=(64, 64), mode="bicubic",
                                                    antialias=True)
            found.append((video, small.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()))
    return found


def test_grid_shapes_are_judged_right_whether_slow_or_leaving_the_picture(grid_videos):
    scores = [score_video(frames, v.caption) for v, frames in grid_videos]
    assert _accuracy(scores, "shape_correct") == 1.0, _failures(grid_videos, scores)
    assert _accuracy(scores, "direction_correct") == 1.0, _failures(grid_videos, scores)


def test_a_shape_cut_by_the_border_is_not_judged():
    """A square whose blob touches the frame edge on every frame has no outline to judge."""
    frames = np.full((4, 32, 32, 3), 125, np.uint8)  # (F, H, W, 3) grey
    for t in range(4):
        frames[t, 0:10, t:t + 12] = COLOURS["red"]  # touches the top edge
    assert score_video(frames, "A red square moves steadily from left to right across a "
                       "plain grey background.")["predicted_shape"] is None
