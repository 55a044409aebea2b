"""Held-out clips by source video: deterministic, never empty, never everything."""

import pytest

from osora.data.split import holdout_videos, split_rows


def test_whole_videos_are_held_out_and_the_choice_is_stable():
    rows = [{"id": f"v{v}-{c}", "video_id": f"v{v}"} for v in range(8) for c in range(3)]
    train, held = split_rows(rows, 0.25)
    held_videos = {r["video_id"] for r in held}
    assert len(held_videos) == 2 and len(held) == 6
    assert not held_videos & {r["video_id"] for r in train}
    assert split_rows(list(reversed(rows)), 0.25)[1] == sorted(
        held, key=lambda r: -rows.index(r))  # same videos whatever the row order
    # adding videos keeps earlier held-out videos held out when they still rank first
    assert holdout_videos([f"v{v}" for v in range(8)], 0.25) == held_videos


def test_at_least_one_and_never_all():
    assert len(holdout_videos(["a", "b", "c"], 0.01)) == 1
    assert len(holdout_videos(["a", "b", "c"], 0.99)) == 2


def test_one_video_cannot_be_split():
    with pytest.raises(ValueError, match="at least 2 distinct source videos"):
        holdout_videos(["a", "a"], 0.5)
