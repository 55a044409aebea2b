"""95% intervals of the sample stage against scipy's, and the Spearman interval's coverage
measured by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from osora.eval.intervals import spearman_interval, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 10), (3, 11), (8, 10), (10, 10), (45, 72), (1, 1)])
def test_wilson_matches_scipy(k, n):
    expected = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="n ≥ 1"):
        wilson_interval(0, 0)


def test_spearman_interval_covers_the_true_rho_about_95_percent():
    """Bivariate normal pairs with a known rank correlation (Pearson r = 0.6 gives
    ρ_s = (6/π)·asin(r/2)); the interval computed from scipy's ρ of each draw of 30 pairs
    must cover it in ~95% of 2000 draws."""
    rng = np.random.default_rng(0)
    r = 0.6
    true_rho = 6 / np.pi * np.arcsin(r / 2)
    cov = [[1, r], [r, 1]]
    covered = 0
    draws = 2000
    for _ in range(draws):
        x, y = rng.multivariate_normal([0, 0], cov, size=30).T
        lo, hi = spearman_interval(stats.spearmanr(x, y).statistic, 30)
        covered += lo <= true_rho <= hi
    assert 0.93 <= covered / draws <= 0.97


def test_spearman_interval_needs_four_pairs_and_stays_finite_at_one():
    assert spearman_interval(0.5, 3) is None
    lo, hi = spearman_interval(1.0, 10)
    assert 0.9 < lo < hi <= 1.0
