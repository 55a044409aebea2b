"""The synthetic demo set: its files must show what truth.json says, measured independently
(PyAV probe, ffmpeg's scdet and cropdetect, pixel statistics of decoded frames)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osora.config import load_settings
from osora.data.synth import (
    COLOURS,
    DIRECTIONS,
    HELD_OUT_FILE,
    REASONS,
    TRUTH_FILE,
    SynthVideo,
    generate,
    load_truth,
    plan,
)
from osora.media import ProbeError, bits_per_pixel, filter_metadata, probe

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"
PREPROCESS_REASONS = {"too_short", "low_fps", "aspect_ratio", "low_bpp", "constrained_baseline",
                      "unreadable"}


@pytest.fixture(scope="module")
def params():
    """The tiny profile's set with a 6-video grid (tests/data/test_synth_grid.py covers the
    grid at its full size)."""
    synth = load_settings(params_dir=PARAMS_DIR).data.synth
    return synth.model_copy(update={"grid": synth.grid.model_copy(update={"count": 6})})


@pytest.fixture(scope="module")
def synth(params, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SynthVideo]]:
    out = tmp_path_factory.mktemp("synth")
    return out, generate(params, out)


@pytest.fixture(scope="module")
def by_name(synth) -> dict[str, SynthVideo]:
    return {v.stem: v for v in synth[1]}


def _decode(path: Path, indices: list[int] | None = None) -> np.ndarray:
    """Decoded RGB frames (T, H, W, 3) uint8: all of them, or those at `indices`."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames if indices is None else [frames[i] for i in indices])


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (..., H, W)


def _clean(videos: list[SynthVideo]) -> list[SynthVideo]:
    return [v for v in videos if v.stem.startswith("clean_")]


def test_set_is_complete_and_small(synth, params):
    out, videos = synth
    reasons = {v.expected_reason for v in videos}
    assert reasons == PREPROCESS_REASONS | {"text", "blur", "jitter", None} == {*REASONS, None}
    grid = [v for v in videos if v.stem.startswith("grid_")]
    assert len(_clean(videos)) == params.num_clean and len(grid) == params.grid.count
    assert all(v.expected_reason is None for v in _clean(videos) + grid)
    total = sum(p.stat().st_size for p in out.iterdir())
    assert total < 3e6
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [TRUTH_FILE, HELD_OUT_FILE] + [v.file for v in videos] + [f"{v.stem}.txt" for v in videos]
    )


def test_generation_is_byte_deterministic(synth, params, tmp_path: Path):
    out, _ = synth
    generate(params, tmp_path)
    for first in sorted(out.iterdir()):
        assert (tmp_path / first.name).read_bytes() == first.read_bytes(), first.name


def test_truth_round_trips_and_matches_plan(synth, params):
    out, videos = synth
    assert load_truth(out) == videos == plan(params)


def test_caption_sidecars_describe_the_content(synth):
    out, videos = synth
    for v in videos:
        caption = (out / f"{v.stem}.txt").read_text().strip()
        assert caption == v.caption
        for shot in v.shots:
            assert f"{shot.colour} {shot.shape}" in caption
            assert DIRECTIONS[shot.direction][1] in caption
            assert shot.background_colour in caption
    assert "BIG SALE" in next(v.caption for v in videos if v.text)


def test_probe_matches_truth(synth):
    out, videos = synth
    for v in videos:
        if v.expected_reason == "unreadable":
            continue
        info = probe(out / v.file)
        assert (info.width, info.height) == (v.width, v.height), v.file
        assert info.fps == pytest.approx(v.fps), v.file
        assert info.num_frames == v.num_frames, v.file
        assert info.duration_s == pytest.approx(v.duration_s, abs=1 / v.fps), v.file


def test_each_video_fails_exactly_its_own_preprocessing_rule(synth):
    """The preprocessing rules (docs/recipe.md §1) on probed numbers: clean videos and those meant
    for later filters pass all of them; each defect video breaks only its own."""
    out, videos = synth
    for v in videos:
        try:
            info = probe(out / v.file)
        except ProbeError:
            broken = {"unreadable"}
        else:
            rules = {
                "too_short": info.duration_s < 2.0,
                "low_fps": info.fps < 16,
                "aspect_ratio": not 1 / 3 <= info.aspect_ratio <= 3,
                "low_bpp": bits_per_pixel(info) < 0.02,
                "constrained_baseline": info.profile == "Constrained Baseline",
            }
            broken = {name for name, hit in rules.items() if hit}
        expected = {v.expected_reason} & PREPROCESS_REASONS
        assert broken == expected, v.file


def test_bits_per_pixel_margins(synth, by_name):
    out, videos = synth
    assert bits_per_pixel(probe(out / by_name["low_bpp"].file)) < 0.02
    for v in videos:
        if v.expected_reason not in ("low_bpp", "unreadable"):
            assert bits_per_pixel(probe(out / v.file)) > 0.04, v.file


def test_profiles(synth, by_name):
    out, videos = synth
    assert probe(out / by_name["baseline_profile"].file).profile == "Constrained Baseline"
    assert probe(out / _clean(videos)[0].file).profile == "High"


def test_unreadable_raises_probe_error_naming_the_file(synth, by_name):
    out, _ = synth
    path = out / by_name["unreadable"].file
    with pytest.raises(ProbeError) as err:
        probe(path)
    assert str(path) in str(err.value)


def _scdet_cuts(path: Path) -> list[int]:
    frames = filter_metadata(path, "scdet=threshold=10")
    return [int(f["frame"]) for f in frames if "lavfi.scd.time" in f]


def test_scdet_finds_the_cuts(synth, by_name):
    out, videos = synth
    cuts = by_name["scene_cuts"].cuts
    assert len(cuts) == 2
    found = _scdet_cuts(out / by_name["scene_cuts"].file)
    assert len(found) == len(cuts)
    for want, got in zip(cuts, found, strict=True):
        assert abs(want - got) <= 1
    for v in [*_clean(videos), by_name["long_take"]]:
        assert _scdet_cuts(out / v.file) == [], v.file


def test_cropdetect_finds_the_borders(synth, by_name):
    out, _ = synth
    v = by_name["black_borders"]
    last = filter_metadata(out / v.file, "cropdetect=round=2:reset=0")[-1]
    found = [int(last[f"lavfi.cropdetect.{k}"]) for k in "xywh"]
    want = [v.crop.x, v.crop.y, v.crop.w, v.crop.h]
    assert np.allclose(found, want, atol=4), (found, want)


def test_clean_shapes_move_as_truth_says(synth):
    """Locate the shape by its colour in the first and last decoded frames: its centre and its
    velocity must match the truth."""
    out, videos = synth
    for v in _clean(videos):
        shot = v.shots[0]
        frames = _decode(out / v.file, [0, v.num_frames - 1])  # (2, H, W, 3) uint8
        dist = np.linalg.norm(frames.astype(float) - COLOURS[shot.colour], axis=-1)  # (2, H, W)
        centres = []
        for mask in dist < 45:
            ys, xs = np.nonzero(mask)
            assert len(xs) > 0.5 * shot.size_px**2 * 0.5, v.file  # the shape is visible
            centres.append((xs.mean() + 0.5, ys.mean() + 0.5))
        (x0, y0), (x1, y1) = centres
        velocity = ((x1 - x0) / (v.num_frames - 1), (y1 - y0) / (v.num_frames - 1))
        assert np.allclose(velocity, shot.velocity, atol=0.05), (v.file, velocity, shot.velocity)
        # Centroids of a triangle sit below its circumcentre: allow a few pixels.
        assert np.allclose((x0, y0), shot.start_xy, atol=0.15 * shot.size_px), v.file


def _laplacian_var(luma: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian, the blur score of docs/recipe.md §1."""
    lap = (luma[1:-1, :-2] + luma[1:-1, 2:] + luma[:-2, 1:-1] + luma[2:, 1:-1]
           - 4 * luma[1:-1, 1:-1])  # (H-2, W-2)
    return float(lap.var())


def test_blurred_video_is_much_blurrier(synth, by_name):
    out, videos = synth

    def sharpness(v: SynthVideo) -> float:
        return _laplacian_var(_luma(_decode(out / v.file, [v.num_frames // 2]))[0])

    assert sharpness(by_name["blurred"]) < 0.1 * min(sharpness(v) for v in _clean(videos))


def test_camera_shake_changes_every_frame(synth, by_name):
    out, videos = synth

    def mean_change(v: SynthVideo) -> float:
        luma = _luma(_decode(out / v.file))  # (T, H, W)
        return float(np.abs(np.diff(luma, axis=0)).mean())

    assert mean_change(by_name["camera_shake"]) > 5 * max(mean_change(v) for v in _clean(videos))


def test_burned_text_covers_a_large_area(synth, by_name):
    out, _ = synth
    v = by_name["burned_text"]
    frame = _decode(out / v.file, [v.num_frames // 2])[0]  # (H, W, 3) uint8
    white = (frame > 220).all(axis=-1)  # (H, W) bool
    area = sum(b.w * b.h for b in v.text_boxes)
    assert area / (v.width * v.height) > 0.25
    inside = sum(white[b.y : b.y + b.h, b.x : b.x + b.w].sum() for b in v.text_boxes)
    assert inside / area > 0.3  # block letters fill a good part of their boxes
    assert white.sum() - inside < 0.05 * inside  # and there is little white elsewhere


def test_long_take_is_longer_than_a_clip(synth, by_name):
    out, _ = synth
    v = by_name["long_take"]
    assert v.cuts == () and probe(out / v.file).duration_s > 8.0


def test_plan_rejects_bad_params(params):
    with pytest.raises(ValueError, match="multiple of 8"):
        plan(params.model_copy(update={"width": 324}))
    with pytest.raises(ValueError, match="landscape"):
        plan(params.model_copy(update={"width": 160, "height": 320}))
