"""Clips of the synthetic set via shot analysis: the cutting rules (docs/recipe.md §1), the files
themselves (decoded with PyAV: frames, rate, size, no black bars, frame-exact bounds), and the
store (local folder and S3)."""

from __future__ import annotations

import hashlib
import logging
import pickle
import random
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
    ClipPlan,
    NotCopyable,
    check_copy_format,
    clip_format,
    clip_inputs,
    copy_points,
    plan_clips,
    plan_spans,
    scaled_size,
)
from osora.data.operator import OperatorError
from osora.data.shots import ShotDetector
from osora.data.stream_copy import cut_points, nal_unit_types
from osora.data.synth import SynthVideo
from osora.media.ffmpeg import FFmpegError, encode_frames, run_ffmpeg
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


def frame_digests(path: Path) -> list[str]:
    """A checksum of each decoded frame's planes as stored (no colour conversion), in order."""
    import av

    with av.open(str(path)) as container:
        return [hashlib.sha256(b"".join(bytes(plane) for plane in frame.planes)).hexdigest()
                for frame in container.decode(video=0)]


def packet_bytes(path: Path) -> list[bytes]:
    """The video packets' payloads in decode order."""
    import av

    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(video=0) if p.size]


def idr_frames(path: Path) -> list[int]:
    """Frame numbers of the IDR pictures, read by decoding every frame (not the way the cutter
    finds them): a decoded key frame of picture type I."""
    import av

    with av.open(str(path)) as container:
        return [i for i, f in enumerate(container.decode(video=0))
                if f.key_frame and f.pict_type == av.video.frame.PictureType.I]


def is_stream_copy(store: Store, row: dict, source: Path) -> bool:
    """Whether a clip's file holds exactly the source's packets of its span (a re-encode
    cannot: x264 never reproduces another encoder's bytes). At a cut point a frame's decode
    position is its number, so the span's packets are the same slice in decode order."""
    with store.local_path(row["uri"]) as clip:
        return packet_bytes(Path(clip)) == \
            packet_bytes(source)[row["start_frame"]:row["end_frame"]]


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two frames."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (..., H, W)


@pytest.fixture(scope="module")
def synth_shots(synth_set) -> tuple[pa.Table, pa.Table, dict[str, SynthVideo]]:
    folder, videos = synth_set
    wanted = {v.stem: v for v in videos
              if v.stem in ("clean_00", "scene_cuts", "long_take", "black_borders", "too_short")}
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


# -- stream copy: planning and cut points, without ffmpeg --------------------------------------


def copies(plans: list[ClipPlan]) -> list[tuple[int, int, str]]:
    """Plans as (start, end, "copy" / "encode"), for readable asserts."""
    return [(p.start, p.end, "copy" if p.copy else "encode") for p in plans]


def test_without_cut_points_every_clip_is_re_encoded_as_plan_spans_says():
    params = clips_params(min_duration_s=2.0, max_duration_s=8.0)
    for none in (None, []):
        plans = plan_clips(300, 24.0, [60], params, none)
        assert copies(plans) == [(0, 60, "encode"), (60, 252, "encode"), (252, 300, "encode")]
        assert [p.span for p in plans] == plan_spans(300, 24.0, [60], params)


def test_a_copied_clip_runs_from_the_first_cut_point_to_the_last_one_in_its_shot():
    params = clips_params(min_duration_s=2.0, max_duration_s=8.0)
    # 24 fps, key frames every 24 frames: the shot 10..110 is snapped to 24..96 (3 s).
    plans = plan_clips(130, 24.0, [10, 110], params, list(range(0, 130, 24)))
    assert copies(plans) == [(24, 96, "copy")]
    # The video's end is a cut point too: 100..200 becomes 120..200.
    plans = plan_clips(200, 24.0, [100], params, list(range(0, 200, 24)))
    assert copies(plans) == [(0, 96, "copy"), (120, 200, "copy")]
    # Shots that start and end at key frames are copied whole.
    assert copies(plan_clips(168, 24.0, [60, 114], params, [0, 24, 48, 60, 84, 108, 114])) \
        == [(0, 60, "copy"), (60, 114, "copy"), (114, 168, "copy")]


def test_a_shot_whose_snapped_span_is_too_short_is_re_encoded_whole():
    params = clips_params(min_duration_s=2.0, max_duration_s=8.0)
    # The shot 100..160 (2.5 s) snaps to 120..144 (1 s): its original span is re-encoded.
    plans = plan_clips(240, 24.0, [100, 160], params, list(range(0, 240, 24)))
    assert copies(plans) == [(0, 96, "copy"), (100, 160, "encode"), (168, 240, "copy")]
    # A shot with no cut point in it is re-encoded; the video's end counts as one.
    assert copies(plan_clips(120, 24.0, [], params, [0])) == [(0, 120, "copy")]
    assert copies(plan_clips(120, 24.0, [10], params, [0])) == [(10, 120, "encode")]


def test_long_shots_are_split_at_the_last_cut_point_within_max_duration():
    params = clips_params(min_duration_s=2.0, max_duration_s=8.0)  # 48..192 frames at 24 fps
    # Key frames every 50 frames: 0..150 (the last ≤ 192), 150..300; 300..400 (4.2 s).
    plans = plan_clips(400, 24.0, [], params, list(range(0, 400, 50)))
    assert copies(plans) == [(0, 150, "copy"), (150, 300, "copy"), (300, 400, "copy")]
    # Key frames at 0 and 100 only: 0..100 is copied, the rest of the shot (no cut point
    # within 8 s of 100) is re-encoded by the plain rule from 100: 8 s, then 4.5 s.
    plans = plan_clips(400, 24.0, [], params, [0, 100])
    assert copies(plans) == [(0, 100, "copy"), (100, 292, "encode"), (292, 400, "encode")]
    # Key frames 10 s apart: no piece can be copied, the shot is re-encoded as without them.
    plans = plan_clips(600, 24.0, [], params, [0, 240, 480])
    assert [p.span for p in plans] == plan_spans(600, 24.0, [], params)
    assert not any(p.copy for p in plans)


def test_planned_clips_stay_in_their_shots_and_within_the_duration_limits():
    params = clips_params(min_duration_s=2.0, max_duration_s=8.0)
    rng = random.Random(7)
    for _ in range(500):
        fps = rng.choice([24.0, 25.0, 30000 / 1001])
        n = rng.randrange(1, 1500)
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randrange(0, 8)))) if n > 1 else []
        keys = sorted({0, *rng.sample(range(n), min(n, rng.randrange(0, 40)))})
        plans = plan_clips(n, fps, cuts, params, keys)
        lo, hi = _frame_limits(fps, params)
        bounds = [0, *cuts, n]
        for plan in plans:
            assert lo <= plan.end - plan.start <= hi, (n, cuts, keys, plan)
            shot = max(b for b in bounds if b <= plan.start)
            assert plan.end <= min(b for b in bounds if b > plan.start), (cuts, plan)
            if plan.copy:  # from a cut point to a cut point or the video's end
                assert plan.start in keys and (plan.end in keys or plan.end == n), plan
            assert plan.start >= shot
        ends = [0, *(p.end for p in plans)]
        assert all(a <= p.start for a, p in zip(ends, plans)), plans  # in order, disjoint


def _frame_limits(fps: float, params: ClipsParams) -> tuple[int, int]:
    """(min, max) frames per clip, computed here independently of the planner."""
    from fractions import Fraction

    from osora.data.shots import rational_fps

    rate = rational_fps(fps)
    return (int(-(-Fraction(params.min_duration_s).limit_denominator(1000) * rate // 1)),
            int(Fraction(params.max_duration_s).limit_denominator(1000) * rate // 1))


def test_cut_points_need_an_idr_frame_with_every_earlier_frame_decoded_before_it():
    # x264 order with B-frames (decode order; pts in frame units): I0 P4 B2 B1 B3 | I5 P7 B6
    pts = [0, 4, 2, 1, 3, 5, 7, 6]
    idr = [True, False, False, False, False, True, False, False]
    assert cut_points(pts, idr) == [0, 5]
    # An open GOP: the I frame at decode position 5 is followed by B frames shown before it
    # (4 and 5, referencing the previous GOP): cutting there would lose them.
    pts = [0, 3, 1, 2, 7, 5, 6, 8]
    idr = [True, False, False, False, True, False, False, False]
    assert cut_points(pts, idr) == [0]
    # A key frame that is not an IDR picture (a recovery point) is no cut point.
    assert cut_points([0, 1, 2, 3], [True, False, False, False]) == [0]
    assert cut_points([0, 1, 2, 3], [False, False, True, False]) == [2]


def test_nal_unit_types_in_length_prefixed_and_annex_b_packets():
    sei, idr, slice_ = b"\x06\x05\x10", b"\x65\x88\x84\x00\x21", b"\x41\x9a"
    avcc = b"".join(len(n).to_bytes(4, "big") + n for n in (sei, idr))
    assert nal_unit_types(avcc, 4) == {6, 5}
    assert nal_unit_types(len(slice_).to_bytes(2, "big") + slice_, 2) == {1}
    annex_b = b"\x00\x00\x00\x01" + sei + b"\x00\x00\x01" + idr
    assert nal_unit_types(annex_b, None) == {6, 5}


def test_clips_that_change_pixels_or_frames_are_not_copied():
    params = clips_params(max_fps=30, max_side=1080)
    full = {"width": 320, "height": 180, "fps": 24.0, "crop_x": 0, "crop_y": 0, "crop_w": 320,
            "crop_h": 180}
    check_copy_format(full, clip_format(full, params))  # no change: copyable
    cases = {
        "cropped": ({**full, "crop_y": 20, "crop_h": 140}, params),
        "scaled down": ({**full, "width": 1920, "height": 1080, "crop_w": 1920,
                         "crop_h": 1080}, params),
        "every 2th frame": ({**full, "fps": 60.0}, params),
        "cropped from 321x180": ({**full, "width": 321, "crop_w": 321}, params),  # odd side
    }
    for reason, (row, p) in cases.items():
        with pytest.raises(NotCopyable, match=reason):
            check_copy_format(row, clip_format(row, p))


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


def ffmpeg_kinds(spy: mock.MagicMock) -> list[str]:
    """"copy" or "encode" for each ffmpeg run the spy saw, in order."""
    return ["copy" if "copy" in call.args[0] else "encode" for call in spy.call_args_list]


@pytest.fixture
def ffmpeg_spy(monkeypatch) -> mock.MagicMock:
    """Counts the cutter's ffmpeg runs, encodes and copies (and still runs them)."""
    import osora.data.clips
    import osora.data.stream_copy

    spy = mock.MagicMock(wraps=osora.data.clips.run_ffmpeg)
    monkeypatch.setattr(osora.data.clips, "run_ffmpeg", spy)
    monkeypatch.setattr(osora.data.stream_copy, "run_ffmpeg", spy)
    return spy


def only(videos: pa.Table, video: str) -> pa.Table:
    return videos.filter(pc.equal(videos.column("id"), video))


def test_all_clips_of_a_video_come_from_one_ffmpeg_process_per_kind(synth_shots, tmp_path,
                                                                   ffmpeg_spy):
    videos, shots, _ = synth_shots
    store = StoreSettings(uri=str(tmp_path / "store"))
    for stream_copy, kind in ((False, "encode"), (True, "copy")):
        ffmpeg_spy.reset_mock()
        clips = cut(only(videos, "scene_cuts"), shots, clips_params(stream_copy=stream_copy),
                    store)
        assert len(clips["scene_cuts"]) == 3 and ffmpeg_kinds(ffmpeg_spy) == [kind]


# -- stream copy on real files ------------------------------------------------------------------


def test_clips_that_need_no_pixel_change_are_copies_identical_to_the_source(
    synth_set, synth_shots, tmp_path
):
    folder, _ = synth_set
    videos, shots, truth = synth_shots
    store = Store(str(tmp_path / "store"))
    clips = cut(videos, shots, SETTINGS.clips, settings_of(store))
    source = {k: folder / v.file for k, v in truth.items()}

    # The black-border video's clip is cropped, so re-encoded; every other clip is a copy.
    copied = {r["id"]: is_stream_copy(store, r, source[r["video_id"]])
              for rows in clips.values() for r in rows}
    assert copied == {r["id"]: r["video_id"] != "black_borders"
                      for rows in clips.values() for r in rows}
    assert {r["video_id"] for rows in clips.values() for r in rows} == {
        "clean_00", "scene_cuts", "long_take", "black_borders"}

    # Lossless: a copy decodes to exactly the source's frames of its span.
    for video in ("clean_00", "scene_cuts", "long_take"):
        digests = frame_digests(source[video])
        for row in clips[video]:
            with store.local_path(row["uri"]) as clip:
                assert frame_digests(Path(clip)) == \
                    digests[row["start_frame"]:row["end_frame"]], row["id"]

    # scene_cuts: each clip runs from its shot's first IDR frame to its shot's last one (or
    # the end). Found here by decoding; x264's scenecut put IDR frames at both truth cuts (and
    # every 24 frames after each), so the clips are exactly the shots.
    video = truth["scene_cuts"]
    keys = idr_frames(source["scene_cuts"])
    assert set(video.cuts) <= set(keys)
    bounds = [0, *video.cuts, video.num_frames]
    expected = [(min(k for k in keys if k >= a), max(k for k in [*keys, b] if k <= b))
                for a, b in zip(bounds[:-1], bounds[1:])]
    spans = [(r["start_frame"], r["end_frame"]) for r in clips["scene_cuts"]]
    assert spans == expected == list(zip(bounds[:-1], bounds[1:]))

    # Durations stay within the limits, rates and sizes are the source's.
    for row in (r for rows in clips.values() for r in rows if copied[r["id"]]):
        assert SETTINGS.clips.min_duration_s <= row["duration_s"] <= \
            SETTINGS.clips.max_duration_s
        assert (row["fps"], row["width"], row["height"]) == (24.0, 320, 180)


def test_with_stream_copy_off_every_clip_is_re_encoded(synth_set, synth_shots, tmp_path):
    folder, _ = synth_set
    videos, shots, truth = synth_shots
    store = Store(str(tmp_path / "store"))
    clips = cut(videos, shots, clips_params(stream_copy=False), settings_of(store))
    rows = {r["video_id"]: r for r in clips_input_rows(videos, shots)}
    for video, video_clips in clips.items():
        row = rows[video]
        assert [(r["start_frame"], r["end_frame"]) for r in video_clips] == \
            plan_spans(row["num_frames"], row["fps"], row["cut_frames"], SETTINGS.clips)
        assert not any(is_stream_copy(store, r, folder / truth[video].file)
                       for r in video_clips)


def clips_input_rows(videos: pa.Table, shots: pa.Table) -> list[dict]:
    """clip_inputs rows with "video_id" for their id, to index by video."""
    return [{**r, "video_id": r["id"]} for r in clip_inputs(videos, shots).to_pylist()]


def test_a_video_can_give_copied_and_re_encoded_clips(synth_set, synth_shots, tmp_path,
                                                       ffmpeg_spy):
    """long_take (10 s, IDR every 24 frames) with cuts at 100 and 160, not at key frames: the
    shot 100..160 snaps to 120..144 (1 s, too short), so it alone is re-encoded, whole."""
    folder, _ = synth_set
    videos, shots, truth = synth_shots
    (row,) = [r for r in clip_inputs(only(videos, "long_take"), shots).to_pylist()]
    store = Store(str(tmp_path / "store"))
    cutter = ClipCutter(SETTINGS.clips, settings_of(store))
    clips = cutter.process({**row, "cut_frames": [100, 160]})
    assert [(r["start_frame"], r["end_frame"]) for r in clips] == [(0, 96), (100, 160),
                                                                    (168, 240)]
    assert ffmpeg_kinds(ffmpeg_spy) == ["copy", "encode"]
    source = folder / truth["long_take"].file
    assert [is_stream_copy(store, r, source) for r in clips] == [True, False, True]
    assert [r["num_frames"] for r in clips] == [96, 60, 72]
    frames, _ = decode(store, clips[1]["uri"])  # the re-encoded one: frames 100..159
    original = source_frames(source)
    for j in (0, 59):
        nearest = min(range(len(original)), key=lambda i: mad(frames[j], original[i]))
        assert nearest == 100 + j


def test_a_failed_copy_falls_back_to_re_encoding_every_clip(synth_set, synth_shots, tmp_path,
                                                            monkeypatch, caplog):
    import osora.data.clips

    folder, _ = synth_set
    videos, shots, truth = synth_shots
    source = folder / truth["scene_cuts"].file
    store = Store(str(tmp_path / "store"))
    real_copy = osora.data.clips.copy_clips
    failures = {
        "ffmpeg": mock.MagicMock(side_effect=FFmpegError("input x", 1, "Invalid data found")),
        # The files in the wrong order: the first one has 54 frames where 60 were asked for.
        "check": lambda *args: real_copy(*args)[::-1],
    }
    for name, copy in failures.items():
        monkeypatch.setattr(osora.data.clips, "copy_clips", copy)
        with caplog.at_level(logging.WARNING, logger="osora.data.clips"):
            caplog.clear()
            clips = cut(only(videos, "scene_cuts"), shots, SETTINGS.clips,
                        settings_of(store))["scene_cuts"]
        assert "stream copy failed" in caplog.text and "re-encoding every clip" in caplog.text
        assert [(r["start_frame"], r["end_frame"], r["num_frames"]) for r in clips] == [
            (0, 60, 60), (60, 114, 54), (114, 168, 54)], name
        assert not any(is_stream_copy(store, r, source) for r in clips), name


def copy_row(path: Path, width: int, height: int) -> dict:
    """The clip input row of one file, through the shot analysis."""
    videos, shots = analyse({path.stem: (path, width, height)})
    (row,) = clip_inputs(videos, shots).to_pylist()
    return row


def test_sources_a_copy_cannot_keep_as_they_are_are_re_encoded(tmp_path):
    params = SETTINGS.clips
    ten_bit = tmp_path / "ten_bit.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=128x72:rate=24:duration=2.5",
                "-c:v", "libx264", "-pix_fmt", "yuv420p10le", "-threads", "1", ten_bit])
    upright = encode_frames(moving_square(60, 72, 128), tmp_path / "upright.mp4", 24, crf=30,
                            keyint=24)  # High profile (ultrafast would give Constrained Baseline)
    upside_down = tmp_path / "upside_down.mp4"
    run_ffmpeg(["-display_rotation", "180", "-i", upright, "-c", "copy", upside_down])

    row = copy_row(upright, 128, 72)
    assert copy_points(upright, row) == [0, 24, 48]
    for path, reason in ((ten_bit, "pixel format yuv420p10le"), (upside_down, "rotation")):
        row = copy_row(path, 128, 72)
        with pytest.raises(NotCopyable, match=reason):
            copy_points(path, row)
        store = Store(str(tmp_path / f"store-{path.stem}"))
        (clip,) = cut(*analyse({path.stem: (path, 128, 72)}), params,
                      settings_of(store))[path.stem]
        assert not is_stream_copy(store, clip, path) and clip["num_frames"] == 60


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
