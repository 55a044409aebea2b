"""Clips from the synthetic set via the shot analysis: the cutting rules (RECIPE §1), the files
themselves (decoded with PyAV: frames, rate, size, no black bars, frame-exact bounds), and the
store (local folder and S3)."""

from __future__ import annotations

import pickle
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import SecretStr

from osora.config import load_settings
from osora.config.data import ClipsParams
from osora.config.store import S3Settings, StoreSettings
from osora.data.clips import (
    CLIP_INPUT,
    ClipCutter,
    clip_format,
    clip_inputs,
    plan_spans,
    scaled_size,
)
from osora.data.operator import OperatorError
from osora.data.shots import ShotDetector
from osora.data.synth import SynthVideo
from osora.media.ffmpeg import encode_frames
from osora.schemas import schema_of
from osora.store import Store

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"
SETTINGS = load_settings(params_dir=PARAMS_DIR).data


def clips_params(**changes) -> ClipsParams:
    return SETTINGS.clips.model_copy(update=changes)


def settings_of(store: Store) -> StoreSettings:
    """StoreSettings that rebuild `store` (the fixture hands out Stores; the cutter takes the
    settings, as a spawn worker would)."""
    opts = store.storage_options
    if not opts:
        return StoreSettings(uri=store.root)
    return StoreSettings(uri=store.root, s3=S3Settings(
        endpoint_url=opts["aws_endpoint"], region=opts["aws_region"],
        access_key_id=SecretStr(opts["aws_access_key_id"]),
        secret_access_key=SecretStr(opts["aws_secret_access_key"]),
        allow_http=opts.get("allow_http") == "true",
    ))


def analyse(paths: dict[str, tuple[Path, int, int]]) -> tuple[pa.Table, pa.Table]:
    """(videos, shots) tables for {id: (path, width, height)} through the shot analysis."""
    detector = ShotDetector(SETTINGS.shots)
    videos = [{"id": k, "uri": str(p), "width": w, "height": h} for k, (p, w, h) in paths.items()]
    shots = [row for video in videos for row in detector.process(video)]
    return pa.Table.from_pylist(videos), pa.Table.from_pylist(shots, schema=schema_of("shots"))


def cut(videos: pa.Table, shots: pa.Table, params: ClipsParams, store: StoreSettings) -> dict:
    """video id -> its clip rows, through clip_inputs and a cutter that crossed a pickle (as
    to a spawn worker)."""
    cutter = pickle.loads(pickle.dumps(ClipCutter(params, store)))
    cutter.setup()
    rows = clip_inputs(videos, shots).to_pylist()
    return {row["id"]: cutter.process(row) for row in rows}


def decode(store: Store, uri: str) -> tuple[np.ndarray, float]:
    """All frames of a stored clip (T, H, W, 3) uint8 and its frame rate."""
    import av

    with store.local_path(uri) as path, av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate)


def source_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two frames."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (..., H, W)


@pytest.fixture(scope="module")
def synth_shots(synth_set) -> tuple[pa.Table, pa.Table, dict[str, SynthVideo]]:
    folder, videos = synth_set
    wanted = {v.stem: v for v in videos
              if v.stem in ("scene_cuts", "long_take", "black_borders", "too_short")}
    tables = analyse({k: (folder / v.file, v.width, v.height) for k, v in wanted.items()})
    return *tables, wanted


# -- the rules, without ffmpeg ---------------------------------------------------------------


def test_shots_are_spans_between_cuts_and_short_ones_are_dropped():
    params = clips_params(min_duration_s=2.0, max_duration_s=8.0)
    # 24 fps: shots of 2.5 s, 1.5 s (dropped), 2.0 s (kept: not shorter than 2 s)
    assert plan_spans(156, 24.0, [60, 96], params) == [(0, 60), (96, 156)]
    assert plan_spans(40, 24.0, [], params) == []  # a 1.7 s video has no clip


def test_long_shots_split_into_max_duration_pieces_and_short_remainders_drop():
    params = clips_params(min_duration_s=2.0, max_duration_s=8.0)
    assert plan_spans(240, 24.0, [], params) == [(0, 192), (192, 240)]  # 10 s: 8 s + 2 s
    assert plan_spans(238, 24.0, [], params) == [(0, 192)]  # 9.9 s: the 1.9 s remainder drops
    assert plan_spans(410, 24.0, [], params) == [(0, 192), (192, 384)]  # 17.1 s: 8 + 8 (+1.1)
    # Pieces start at their shot's first frame, not at a global 8 s grid.
    assert plan_spans(300, 24.0, [60], params) == [(0, 60), (60, 252), (252, 300)]


def test_frame_rates_above_max_keep_every_kth_frame():
    params = clips_params(max_fps=30)
    row = {"width": 320, "height": 180, "crop_x": 0, "crop_y": 0, "crop_w": 320, "crop_h": 180}
    for fps, step, out in [(60, 2, 30), (50, 2, 25), (120, 4, 30), (30, 1, 30), (24, 1, 24),
                           (30000 / 1001, 1, 30000 / 1001), (60000 / 1001, 2, 30000 / 1001)]:
        fmt = clip_format({**row, "fps": fps}, params)
        assert (fmt.step, float(fmt.fps)) == (step, pytest.approx(out)), fps


def test_longer_side_scaled_down_keeping_aspect_with_even_sides():
    assert scaled_size(1920, 1080, 1080) == (1080, 608)
    assert scaled_size(1080, 1920, 1080) == (608, 1080)  # portrait
    assert scaled_size(320, 180, 1080) == (320, 180)  # never upscaled
    assert scaled_size(1921, 1081, 4096) == (1920, 1080)  # even sides


def test_clip_inputs_join_videos_and_shots_by_id(synth_shots):
    videos, shots, _ = synth_shots
    extra = pa.Table.from_pylist([{"id": "gone", "num_frames": 10, "fps": 24.0}],
                                 schema=schema_of("shots"))
    table = clip_inputs(videos.sort_by([("id", "descending")]), pa.concat_tables([shots, extra]))
    assert table.schema == CLIP_INPUT
    assert table.column("id").to_pylist() == shots.column("id").to_pylist()  # "gone": no video
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert by_id["scene_cuts"]["uri"].endswith("scene_cuts.mp4")
    assert by_id["scene_cuts"]["cut_frames"] == [60, 114]


# -- clip files ------------------------------------------------------------------------------


def test_synth_clips_in_the_store(synth_set, synth_shots, store):
    folder, _ = synth_set
    videos, shots, truth = synth_shots
    params = SETTINGS.clips
    clips = cut(videos, shots, params, settings_of(store))

    # Every row fits the clips table and every file decodes as its row says.
    rows = [row for rows in clips.values() for row in rows]
    store.write("clips", pa.Table.from_pylist(rows, schema=schema_of("clips")))
    for row in rows:
        assert row["uri"] == store.file_uri(f"clips/{row['video_id']}/{row['id']}.mp4")
        frames, fps = decode(store, row["uri"])
        assert frames.shape == (row["num_frames"], row["height"], row["width"], 3), row["id"]
        assert fps == pytest.approx(row["fps"]) and row["fps"] <= params.max_fps
        assert row["duration_s"] == pytest.approx(row["num_frames"] / row["fps"])
        assert params.min_duration_s <= row["duration_s"] <= params.max_duration_s

    # scene_cuts: one clip per shot, bounded by the truth cuts to the frame.
    video = truth["scene_cuts"]
    bounds = [0, *video.cuts, video.num_frames]
    assert [(r["start_frame"], r["end_frame"]) for r in clips["scene_cuts"]] == list(
        zip(bounds[:-1], bounds[1:]))
    assert [r["id"] for r in clips["scene_cuts"]] == [f"scene_cuts-{i:03d}" for i in range(3)]
    source = source_frames(folder / video.file)  # (T, H, W, 3)
    for row in clips["scene_cuts"]:
        frames, _ = decode(store, row["uri"])
        first, last = row["start_frame"], row["end_frame"] - 1
        if first > 0:  # the first frame is the new shot's, not the old one's
            assert mad(frames[0], source[first]) < mad(frames[0], source[first - 1])
        if last + 1 < len(source):
            assert mad(frames[-1], source[last]) < mad(frames[-1], source[last + 1])

    # long_take (10 s): exactly one 8 s clip; the 2 s remainder is a clip (≥ min_duration_s).
    long_take = clips["long_take"]
    assert [r["duration_s"] for r in long_take] == [pytest.approx(8.0), pytest.approx(2.0)]
    assert [(r["start_frame"], r["end_frame"]) for r in long_take] == [(0, 192), (192, 240)]

    # too_short (1.25 s): its one shot is dropped.
    assert clips["too_short"] == []

    # black_borders: the clip is the picture, cropped, with no black rows or columns left.
    (row,) = clips["black_borders"]
    box = truth["black_borders"].crop
    assert np.allclose([row["width"], row["height"]], [box.w, box.h], atol=4)
    frames, _ = decode(store, row["uri"])
    y = luma(frames)  # (T, H, W)
    edges = [y[:, 0, :], y[:, -1, :], y[:, :, 0], y[:, :, -1]]
    assert min(e.mean(axis=-1).min() for e in edges) > SETTINGS.shots.border_limit


def test_all_clips_of_a_video_come_from_one_ffmpeg_process(synth_shots, tmp_path,
                                                          monkeypatch):
    import osora.data.clips

    videos, shots, _ = synth_shots
    spy = mock.MagicMock(wraps=osora.data.clips.run_ffmpeg)
    monkeypatch.setattr(osora.data.clips, "run_ffmpeg", spy)
    scene_cuts = videos.filter(pc.equal(videos.column("id"), "scene_cuts"))
    clips = cut(scene_cuts, shots, SETTINGS.clips, StoreSettings(uri=str(tmp_path / "store")))
    assert len(clips["scene_cuts"]) == 3 and spy.call_count == 1


def test_a_shorter_min_duration_keeps_more_and_a_longer_one_drops(synth_shots, tmp_path):
    videos, shots, _ = synth_shots
    store = StoreSettings(uri=str(tmp_path / "store"))
    strict = cut(videos, shots, clips_params(min_duration_s=2.4), store)["scene_cuts"]
    assert [(r["start_frame"], r["end_frame"]) for r in strict] == [(0, 60)]  # 2.25 s shots go
    loose = cut(videos, shots, clips_params(min_duration_s=1.0), store)
    assert len(loose["too_short"]) == 1 and loose["too_short"][0]["num_frames"] == 30


def moving_square(num_frames: int, height: int, width: int):
    """Frames (H, W, 3) uint8: a grey field with a white square moving one step per frame, so
    every frame differs from its neighbours (which frame a clip holds is checkable)."""
    side = max(8, height // 6)
    for t in range(num_frames):
        frame = np.full((height, width, 3), 110, np.uint8)
        x = (t * 3) % (width - side)
        frame[height // 3 : height // 3 + side, x : x + side] = 240
        yield frame


def test_high_frame_rate_comes_out_at_most_max_fps(tmp_path):
    path = encode_frames(moving_square(150, 180, 320), tmp_path / "fast.mp4", 60, crf=18,
                         keyint=60, preset="ultrafast")
    videos, shots = analyse({"fast": (path, 320, 180)})
    store = Store(str(tmp_path / "store"))
    (row,) = cut(videos, shots, clips_params(max_fps=30), settings_of(store))["fast"]
    frames, fps = decode(store, row["uri"])
    assert (row["fps"], fps, row["num_frames"], len(frames)) == (30.0, 30.0, 75, 75)
    assert row["duration_s"] == pytest.approx(2.5)
    source = source_frames(path)  # (150, H, W, 3): clip frame j is source frame 2j
    for j in (0, 1, 37, 74):
        nearest = min(range(len(source)), key=lambda i: mad(frames[j], source[i]))
        assert nearest == 2 * j, (j, nearest)


def test_a_large_frame_is_scaled_down_to_max_side(tmp_path):
    path = encode_frames(moving_square(48, 1080, 1920), tmp_path / "wide.mp4", 24, crf=35,
                         keyint=24, preset="ultrafast")
    videos, shots = analyse({"wide": (path, 1920, 1080)})
    store = Store(str(tmp_path / "store"))
    (row,) = cut(videos, shots, clips_params(max_side=256), settings_of(store))["wide"]
    frames, _ = decode(store, row["uri"])
    assert (row["width"], row["height"]) == (256, 144) and frames.shape[1:3] == (144, 256)
    assert (row["crop_w"], row["crop_h"]) == (1920, 1080)


def test_a_failing_ffmpeg_run_is_quarantined_with_its_reason(synth_set, tmp_path):
    folder, videos = synth_set
    broken = next(v for v in videos if v.truncated_to_bytes is not None)
    row = {"id": "broken", "uri": str(folder / broken.file), "width": 320, "height": 180,
           "fps": 24.0, "num_frames": 96, "cut_frames": [], "crop_x": 0, "crop_y": 0,
           "crop_w": 320, "crop_h": 180}
    cutter = ClipCutter(SETTINGS.clips, StoreSettings(uri=str(tmp_path / "store")))
    with pytest.raises(OperatorError, match="video broken: ffmpeg could not cut clips"):
        cutter.process(row)
    with pytest.raises(OperatorError, match="no fps"):
        cutter.process({**row, "fps": None})
