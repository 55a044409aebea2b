"""Shot analysis against the synthetic set's truth: scene cuts (precision/recall/F1 within one
frame), the black-border crop, frame counts, and bad input quarantined with a reason."""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from osora.config import load_settings
from osora.data.operator import OperatorError
from osora.data.shots import ShotDetector, cut_frames, robust_crop
from osora.data.synth import SynthVideo

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"
CUT_TOLERANCE = 1  # frames
CROP_TOLERANCE = 4  # pixels


def video_row(folder: Path, video: SynthVideo) -> dict:
    """The `videos` columns the detector reads, from the truth (no ingest needed)."""
    return {"id": video.stem, "uri": str(folder / video.file), "fps": float(video.fps),
            "width": video.width, "height": video.height, "num_frames": video.num_frames}


@pytest.fixture(scope="module")
def detector() -> ShotDetector:
    return ShotDetector(load_settings(params_dir=PARAMS_DIR).data.shots)


@pytest.fixture(scope="module")
def analysed(synth_set, detector) -> dict[str, tuple[SynthVideo, dict]]:
    """stem -> (truth, shots row) for every readable video of the set."""
    folder, videos = synth_set
    return {v.stem: (v, detector.process(video_row(folder, v))[0])
            for v in videos if v.truncated_to_bytes is None}


def matched_cuts(found: list[int], truth: list[int], tolerance: int) -> int:
    """True positives: found cuts paired one-to-one with truth cuts at most `tolerance` frames
    away (each truth cut takes the nearest unpaired found cut)."""
    unpaired = sorted(found)
    hits = 0
    for cut in truth:
        near = [f for f in unpaired if abs(f - cut) <= tolerance]
        if near:
            unpaired.remove(min(near, key=lambda f: abs(f - cut)))
            hits += 1
    return hits


def test_cuts_f1_over_the_whole_set(analysed):
    tp = fp = fn = 0
    for truth, row in analysed.values():
        hits = matched_cuts(row["cut_frames"], list(truth.cuts), CUT_TOLERANCE)
        tp += hits
        fp += len(row["cut_frames"]) - hits
        fn += len(truth.cuts) - hits
    assert tp + fn >= 2, "the set must hold cuts to find"
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    assert f1 >= 0.95, (precision, recall, {k: r["cut_frames"] for k, (_, r) in analysed.items()})


def test_single_shot_videos_have_no_cuts(analysed):
    """Clean videos, the long take and the shaking camera (large steady motion) are one shot."""
    singles = [k for k, (v, _) in analysed.items() if not v.cuts]
    assert {"camera_shake", "long_take", "clean_00"} <= set(singles)
    assert {k: analysed[k][1]["cut_frames"] for k in singles} == {k: [] for k in singles}


def test_crop_is_the_picture_inside_black_borders(analysed):
    for name, (truth, row) in analysed.items():
        found = (row["crop_x"], row["crop_y"], row["crop_w"], row["crop_h"])
        if truth.crop is None:
            assert found == (0, 0, truth.width, truth.height), name
        else:
            want = (truth.crop.x, truth.crop.y, truth.crop.w, truth.crop.h)
            assert np.allclose(found, want, atol=CROP_TOLERANCE), (name, found, want)
            assert all(v % 2 == 0 for v in found), found


def test_rows_count_every_decoded_frame(analysed):
    for name, (truth, row) in analysed.items():
        assert row["id"] == name
        assert row["num_frames"] == truth.num_frames, name
        assert row["fps"] == pytest.approx(truth.fps), name


def test_fps_is_measured_when_the_row_has_none(synth_set, detector):
    folder, videos = synth_set
    video = next(v for v in videos if v.stem == "low_fps")
    row = detector.process({"id": "x", "uri": str(folder / video.file)})[0]
    assert row["fps"] == pytest.approx(video.fps, rel=1e-3)
    assert (row["crop_w"], row["crop_h"]) == (video.width, video.height)


def test_bad_input_is_quarantined_with_its_reason(synth_set, detector, tmp_path):
    folder, videos = synth_set
    broken = next(v for v in videos if v.truncated_to_bytes is not None)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    cases = {
        str(folder / broken.file): "moov atom not found",
        str(text): "Invalid data",
        str(tmp_path / "missing.mp4"): "no such file",
    }
    for uri, reason in cases.items():
        with pytest.raises(OperatorError) as info:
            detector.process({"id": "bad", "uri": uri})
        assert reason in info.value.reason and "video bad" in info.value.reason, info.value.reason


def test_a_file_named_like_an_option_is_read_as_a_file(synth_set, detector, tmp_path,
                                                       monkeypatch):
    folder, videos = synth_set
    video = next(v for v in videos if v.stem == "scene_cuts")
    shutil.copyfile(folder / video.file, tmp_path / "-y.mp4")
    monkeypatch.chdir(tmp_path)
    row = detector.process({"id": "opt", "uri": "-y.mp4", "width": video.width})[0]
    assert row["num_frames"] == video.num_frames
    assert matched_cuts(row["cut_frames"], list(video.cuts), CUT_TOLERANCE) == len(video.cuts)


def test_cut_frames_are_frames_above_the_threshold():
    scores = np.array([0.0, 1.0, 12.0, 3.0, 10.0, 40.0])  # (T,)
    assert cut_frames(scores, 10.0) == [2, 5]
    assert cut_frames(np.array([50.0, 0.0]), 10.0) == []  # frame 0 starts the first shot


def _edges(box: tuple[int, int, int, int], n: int) -> np.ndarray:
    """(n, 4) per-frame inclusive x1, y1, x2, y2 of a picture box (x, y, w, h)."""
    x, y, w, h = box
    return np.tile([x, y, x + w - 1, y + h - 1], (n, 1))


def test_robust_crop_ignores_outliers_and_dark_frames():
    box = (16, 18, 288, 144)
    assert robust_crop(_edges(box, 40), 320, 180) == box
    # A subtitle in the bottom bar on one frame in 40 does not stop the crop.
    with_subtitle = np.concatenate([_edges(box, 39), _edges((16, 18, 288, 160), 1)])
    assert robust_crop(with_subtitle, 320, 180) == box
    # Dark scenes (the picture looks smaller) in 90% of the frames do not cut into the picture.
    dark = np.concatenate([_edges((60, 50, 200, 80), 90), _edges(box, 10)])
    assert robust_crop(dark, 320, 180) == box
    # All-black frames (no picture: x2 < x1) are ignored; an all-black video is not cropped.
    black = np.tile([319, 179, 0, 0], (5, 1))
    assert robust_crop(np.concatenate([black, _edges(box, 5)]), 320, 180) == box
    assert robust_crop(black, 320, 180) == (0, 0, 320, 180)


def test_robust_crop_rounds_inwards_to_even():
    edges = np.tile([15, 17, 304, 162], (3, 1))  # picture x 15..304, y 17..162 inclusive
    assert robust_crop(edges, 320, 180) == (16, 18, 288, 144)




def test_one_ffmpeg_decode_per_video(synth_set, detector, monkeypatch):
    """Cuts and crop come from one pass over the file."""
    import osora.data.shots

    spy = mock.MagicMock(wraps=osora.data.shots.run_ffmpeg)
    monkeypatch.setattr(osora.data.shots, "run_ffmpeg", spy)
    folder, videos = synth_set
    video = next(v for v in videos if v.stem == "scene_cuts")
    row = detector.process(video_row(folder, video))[0]
    assert row["cut_frames"] == list(video.cuts)
    assert spy.call_count == 1 and spy.call_args.args[0].count("-i") == 1
