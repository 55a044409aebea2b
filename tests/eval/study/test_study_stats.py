"""Fleiss' kappa and the item bootstrap against worked examples."""

import numpy as np
import pytest

from osora.eval.study.stats import bootstrap_rates, fleiss_kappa


def test_fleiss_kappa_equals_the_wikipedia_worked_example():
    # en.wikipedia.org/wiki/Fleiss'_kappa: 10 subjects, 14 raters, 5 categories;
    # category totals 20, 28, 39, 21, 32 of 140; P̄ = 0.378, P_e = 0.213,
    # κ = (0.378 − 0.213) / (1 − 0.213) = 0.210
    table = np.array([
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ])
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_with_different_numbers_of_raters_per_subject():
    # P_i = (Σ n_ij² − n_i) / (n_i (n_i − 1)): [2,0,1] → (5 − 3)/6 = 1/3 (twice), [1,1,0] → 0
    # (twice); P̄ = 1/6. p = (6, 2, 2)/10, P_e = 0.44; κ = (1/6 − 0.44)/0.56 = −41/84
    table = [[2, 0, 1], [2, 0, 1], [1, 1, 0], [1, 1, 0]]
    assert fleiss_kappa(table) == pytest.approx(-41 / 84)


def test_fleiss_kappa_is_nan_when_all_ratings_agree_on_one_category():
    assert np.isnan(fleiss_kappa([[3, 0, 0], [2, 0, 0]]))


def test_fleiss_kappa_refuses_a_subject_with_one_rating():
    with pytest.raises(ValueError, match="at least 2 ratings"):
        fleiss_kappa([[1, 0, 0], [2, 0, 0]])


def test_bootstrap_ci_contains_the_rates_and_is_deterministic_for_a_seed():
    table = np.array([[2, 0, 1], [2, 0, 1], [1, 1, 0], [1, 1, 0], [0, 1, 1], [3, 0, 0]])
    rates, low, high = bootstrap_rates(table, n_boot=500, seed=7)
    # (2+2+1+1+0+3, 0+0+1+1+1+0, 1+1+0+0+1+0) / 15 ratings
    np.testing.assert_allclose(rates, [9 / 15, 3 / 15, 3 / 15])
    assert ((low <= rates) & (rates <= high)).all() and (low < high).all()
    again = bootstrap_rates(table, n_boot=500, seed=7)
    np.testing.assert_array_equal(again[1], low)
    np.testing.assert_array_equal(again[2], high)
    other = bootstrap_rates(table, n_boot=500, seed=8)
    assert not np.array_equal(other[1:], (low, high))
