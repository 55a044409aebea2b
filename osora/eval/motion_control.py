"""Motion control: does a generated video move as much as its prompt's motion score asks?

Training captions state each clip's motion score, the clip's mean VMAF motion rounded
(osora.data.scores.motion, RECIPE §1). A generated video is measured the same way, so the score
asked for and the score measured are in the same units. Reported: the mean absolute error, the
Spearman rank correlation between asked and measured over all videos (is more asked, more
given?), and the mean measured motion at each asked score. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (as Spearman's ρ needs)."""
    x = np.asarray(values, np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):  # ties: the mean rank of the group
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's ρ: the Pearson correlation of the average ranks. None when either side has
    fewer than two distinct values (no order to agree with)."""
    if len(a) != len(b):
        raise ValueError(f"rank_correlation: {len(a)} values against {len(b)}")
    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def motion_control(requested: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Metrics of asked-for against measured motion, one entry per video in each list:
    motion_abs_error, motion_rank_correlation (left out when undefined) and motion_at_<score>,
    the mean measured motion of the videos that asked for <score>."""
    if len(requested) != len(measured) or not requested:
        raise ValueError(f"motion_control: need one measurement per requested score, got "
                         f"{len(requested)} requested and {len(measured)} measured")
    asked, got = np.asarray(requested, np.float64), np.asarray(measured, np.float64)
    metrics = {"motion_abs_error": float(np.abs(got - asked).mean())}
    rho = rank_correlation(list(asked), list(got))
    if rho is not None:
        metrics["motion_rank_correlation"] = rho
    for score in np.unique(asked):
        metrics[f"motion_at_{score:g}"] = float(got[asked == score].mean())
    return metrics
