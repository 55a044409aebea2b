"""Preprocessing (docs/recipe.md §1): the synthetic set's defects are dropped with their reason,
and every threshold keeps a video that sits exactly on it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from osora.config import load_settings
from osora.config.data import PreprocessParams
from osora.data.ingest import ingest
from osora.data.preprocess import preprocess_table, verdict
from osora.schemas import schema_of

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"
PREPROCESS_REASONS = {"too_short", "low_fps", "aspect_ratio", "low_bpp", "constrained_baseline",
                      "unreadable"}


@pytest.fixture(scope="module")
def settings():
    return load_settings(params_dir=PARAMS_DIR)


@pytest.fixture(scope="module")
def params(settings) -> PreprocessParams:
    return settings.data.preprocess


def _video(**overrides) -> dict:
    """A `videos` row that passes every rule: 4 s of 320x180 at 24 fps, bpp 0.05."""
    row = {"id": "v", "uri": "/raw/v.mp4", "duration_s": 4.0, "fps": 24.0, "width": 320,
           "height": 180, "bit_rate": 69_120, "profile": "High", "probe_error": None}
    return {**row, **overrides}


def test_synth_set_defects_are_dropped_with_their_reason(synth_set, settings, params):
    folder, videos = synth_set
    rows = ingest(folder, settings.data.ingest.extensions).rows
    table = preprocess_table(rows, params)
    verdicts = {Path(uri).name: v for uri, v in
                zip(rows.column("uri").to_pylist(), table.to_pylist(), strict=True)}
    assert set(verdicts) == {v.file for v in videos}
    for video in videos:
        got = verdicts[video.file]
        if video.expected_reason in PREPROCESS_REASONS:
            assert not got["keep"], video.file
            reason = got["reason"].split(":")[0] if video.expected_reason == "unreadable" \
                else got["reason"]
            assert reason == video.expected_reason, (video.file, got["reason"])
        else:  # clean, and the defects later filters catch (text, blur, jitter)
            assert got["keep"] and got["reason"] is None, (video.file, got["reason"])


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"duration_s": 2.0}, None),
        ({"duration_s": 1.999}, "too_short"),
        ({"fps": 16.0, "bit_rate": 46_080}, None),  # bpp stays 0.05
        ({"fps": 15.99, "bit_rate": 46_080}, "low_fps"),
        ({"width": 540, "bit_rate": 116_640}, None),  # w/h exactly 3
        ({"width": 542, "bit_rate": 116_640}, "aspect_ratio"),
        ({"width": 60, "bit_rate": 12_960}, None),  # w/h exactly 1/3
        ({"width": 58, "bit_rate": 12_960}, "aspect_ratio"),
        ({"bit_rate": 27_648}, None),  # bpp exactly 0.02
        ({"bit_rate": 27_647}, "low_bpp"),
        ({"bit_rate": 0}, "low_bpp"),
        ({"profile": "Constrained Baseline"}, "constrained_baseline"),
        ({"profile": "constrained baseline"}, "constrained_baseline"),
        ({"profile": "Baseline"}, None),
        ({"profile": None}, None),  # codecs without profiles (ffv1) are not judged on one
        ({"fps": 0.0}, "low_fps,low_bpp"),  # no pixel rate: bpp cannot be computed, fails
    ],
)
def test_thresholds_are_inclusive(params, overrides, reason):
    got = verdict(_video(**overrides), params)
    assert got["reason"] == reason
    assert got["keep"] is (reason is None)


def test_every_reason_is_listed_in_a_fixed_order(params):
    bad = _video(duration_s=1.0, fps=8.0, width=640, height=64, bit_rate=100,
                 profile="Constrained Baseline")
    got = verdict(bad, params)
    assert got["reason"] == "too_short,low_fps,aspect_ratio,low_bpp,constrained_baseline"
    assert got["bits_per_pixel"] == pytest.approx(100 / (640 * 64 * 8))
    assert got["aspect_ratio"] == pytest.approx(10.0)


def test_other_dropped_profiles_are_named(params):
    strict = params.model_copy(update={"drop_profiles": ["Constrained Baseline", "Main"]})
    assert verdict(_video(profile="Main"), strict)["reason"] == "profile:Main"
    assert verdict(_video(profile="Main"), params)["keep"]


def test_unreadable_is_the_only_reason(params):
    got = verdict(_video(probe_error="no video stream", duration_s=None, fps=None), params)
    assert got == {"id": "v", "keep": False, "reason": "unreadable: no video stream",
                   "bits_per_pixel": None, "aspect_ratio": None}
    missing = verdict(_video(fps=None, bit_rate=None), params)
    assert missing["reason"] == "unreadable: probe gave no fps, bit_rate"


def test_preprocess_table_matches_schema_and_order(params):
    rows = [_video(id="a"), _video(id="b", duration_s=1.0), _video(id="c", probe_error="x")]
    videos = pa.Table.from_pylist(
        [{**r, "ingested_at": None} for r in rows], schema=schema_of("videos")
    )
    table = preprocess_table(videos, params)
    assert table.schema == schema_of("preprocess")
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    assert table.column("keep").to_pylist() == [True, False, False]
    assert preprocess_table(videos.slice(0, 0), params).num_rows == 0


def test_params_reject_an_empty_aspect_range(params):
    with pytest.raises(ValidationError, match="max_aspect_ratio"):
        PreprocessParams(**{**params.model_dump(), "min_aspect_ratio": 3.0,
                            "max_aspect_ratio": 0.5})
