"""Motion control: does a generated video move as much as its prompt's motion score asks?

Training captions state each clip's motion score, the clip's mean VMAF motion rounded
(osora.data.scores.motion, docs/recipe.md §1). A generated video is measured alike, so the score
asked for and the score measured are in the same units, and the Spearman rank correlation
between them says whether more asked gives more (osora.eval.sample_eval reports it with its
interval). numpy only.
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
