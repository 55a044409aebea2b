"""Pyramid levels: nesting, thresholds against a direct computation, filters that are off."""

import numpy as np
import pyarrow as pa
import pytest

from osora.config.data import PyramidLevel
from osora.data.pyramid import build_levels
from osora.prompts import conditioned_text
from osora.schemas import schema_of

RNG = np.random.default_rng(0)
N = 200


def tables(aesthetic_evaluated: bool = True):
    ids = [f"c{i:03d}" for i in range(N)]
    clips = pa.Table.from_pylist(
        [{"id": i, "video_id": "v", "uri": f"/clips/{i}.mp4", "fps": 24.0,
          "width": int(RNG.choice([256, 320])), "height": int(RNG.choice([144, 256])),
          "num_frames": 48, "duration_s": float(RNG.uniform(2, 8))} for i in ids],
        schema=schema_of("clips"))

    def score(table, column, values):
        return pa.Table.from_pylist([{"id": i, column: v} for i, v in zip(ids, values)],
                                    schema=schema_of(table))

    aesthetic = RNG.uniform(3, 7, N) if aesthetic_evaluated else [None] * N
    laplacian = [list(RNG.uniform(0, 100, 5)) for _ in ids]
    scores = {
        "score_aesthetic": score("score_aesthetic", "aesthetic", aesthetic),
        "score_motion": score("score_motion", "motion", RNG.uniform(0, 10, N)),
        "score_ocr": score("score_ocr", "text_area", RNG.uniform(0, 0.2, N)),
        "score_jitter": score("score_jitter", "jitter", RNG.uniform(0, 10, N)),
        "score_blur": score("score_blur", "laplacian_var", laplacian),
    }
    # One clip quarantined by the motion scorer: no row at all.
    scores["score_motion"] = scores["score_motion"].slice(1)
    captions = pa.Table.from_pylist(
        [{"id": i, "caption": f"clip {i} of a thing"} for i in ids[: N // 2]],
        schema=schema_of("captions"))
    return clips, scores, captions


LEVELS = {
    "all": PyramidLevel(),
    "mid": PyramidLevel(min_motion=2.0, max_motion=9.0, min_laplacian_var=30.0,
                        max_text_area=0.1),
    "strict": PyramidLevel(min_aesthetic=5.0, max_jitter=6.0, min_side=200,
                           min_duration_s=3.0, require_caption=True),
}


def ids(table: pa.Table) -> set[str]:
    return set(table.column("id").to_pylist())


def test_levels_nest_and_match_a_direct_filter():
    clips, scores, captions = tables()
    levels = build_levels(clips, scores, captions, LEVELS)
    all_, mid, strict = (ids(levels.tables[n]) for n in ("all", "mid", "strict"))
    assert all_ == ids(clips)
    assert strict <= mid <= all_

    # The same filter written out row by row.
    s = {t: {r["id"]: r for r in scores[t].to_pylist()} for t in scores}
    caption = {r["id"] for r in captions.to_pylist()}
    expect_mid, expect_strict = set(), set()
    for c in clips.to_pylist():
        i = c["id"]
        m = s["score_motion"].get(i, {}).get("motion")
        lap = s["score_blur"][i]["laplacian_var"]
        if (m is not None and 2.0 <= m <= 9.0 and sum(v < 30.0 for v in lap) * 2 < len(lap)
                and s["score_ocr"][i]["text_area"] <= 0.1):
            expect_mid.add(i)
            if (s["score_aesthetic"][i]["aesthetic"] >= 5.0
                    and s["score_jitter"][i]["jitter"] <= 6.0
                    and min(c["width"], c["height"]) >= 200 and c["duration_s"] >= 3.0
                    and i in caption):
                expect_strict.add(i)
    assert mid == expect_mid and strict == expect_strict
    assert "c000" not in mid  # quarantined by the motion scorer: fails the motion limits
    assert 0 < len(strict) < len(mid) < len(all_)
    assert levels.notes == []


def test_training_text_carries_fps_and_motion():
    clips, scores, captions = tables()
    row = build_levels(clips, scores, captions, LEVELS).tables["strict"].to_pylist()[0]
    assert row["text"] == conditioned_text(row["caption"], row["fps"], row["motion"])
    assert row["text"].endswith("motion score.")


def test_unevaluated_score_turns_its_filter_off_and_says_so():
    clips, scores, captions = tables(aesthetic_evaluated=False)
    levels = build_levels(clips, scores, captions, LEVELS)
    assert levels.notes == [
        "aesthetic: not evaluated (its scorer had no weights), its limits are off"
    ]
    strict = levels.tables["strict"]
    assert strict.num_rows > 0
    assert strict.column("aesthetic").null_count == strict.num_rows


def test_level_names_must_be_plain():
    from osora.config.data import PyramidParams

    with pytest.raises(ValueError, match="lower-case"):
        PyramidParams(levels={"Stage 1": PyramidLevel()})
