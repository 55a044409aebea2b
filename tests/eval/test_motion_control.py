"""Motion control metrics against scipy's Spearman and hand-computed means, and generated
videos' VMAF motion against the speed they were drawn with (real ffmpeg)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from osora.data.scores.motion import vmaf_motion
from osora.eval.motion_control import average_ranks, rank_correlation
from osora.media.ffmpeg import encode_frames


def test_average_ranks_share_ties():
    assert list(average_ranks([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]


@pytest.mark.parametrize("seed", range(5))
def test_rank_correlation_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 30).astype(float)  # many ties, as rounded motion scores have
    b = a + rng.normal(0, 1.5, 30)
    assert rank_correlation(list(a), list(b)) == pytest.approx(spearmanr(a, b).statistic)


def test_rank_correlation_is_undefined_without_spread():
    assert rank_correlation([1, 1, 1], [0.2, 0.5, 0.9]) is None


def _moving_square(speed: float, tmp_path) -> float:
    """VMAF motion of a white 12-px square moving right at `speed` px/frame over grey."""
    frames = np.full((24, 64, 96, 3), 110, np.uint8)
    for t, frame in enumerate(frames):
        x = int(4 + speed * t)
        frame[26:38, x : x + 12] = 245
    path = encode_frames(list(frames), tmp_path / f"square_{speed}.mp4", 24, crf=18)
    return vmaf_motion(path, 320)


def test_faster_videos_measure_more_motion(tmp_path):
    speeds = [0.0, 1.0, 3.0]
    measured = [_moving_square(s, tmp_path) for s in speeds]
    assert measured[0] < 0.05 < measured[1] < measured[2]
    assert rank_correlation(speeds, measured) == pytest.approx(1.0)
