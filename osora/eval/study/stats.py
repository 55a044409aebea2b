"""The statistics of a preference study, on count tables (numpy only)."""

from __future__ import annotations

import numpy as np


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of a (subjects N, categories k) table: counts[i, j] raters put subject i
    in category j. Subjects may have different numbers of raters n_i (each ≥ 2): the agreement
    of subject i is P_i = (Σ_j n_ij² − n_i) / (n_i (n_i − 1)), P̄ their unweighted mean; the
    category shares p_j are taken over all ratings, P_e = Σ_j p_j²; κ = (P̄ − P_e) / (1 − P_e).
    With equal n_i this is Fleiss (1971). NaN when every rating is in one category (P_e = 1:
    agreement beyond chance is undefined)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or not len(counts):
        raise ValueError(f"fleiss_kappa needs a (subjects, categories) table, got shape "
                         f"{counts.shape}")
    n = counts.sum(axis=1)  # (N,) raters per subject
    if (n < 2).any():
        raise ValueError("fleiss_kappa: every subject needs at least 2 ratings; drop the others")
    agreement = ((counts**2).sum(axis=1) - n) / (n * (n - 1))  # (N,) P_i
    shares = counts.sum(axis=0) / n.sum()  # (k,) p_j
    chance = float((shares**2).sum())
    if np.isclose(chance, 1.0):
        return float("nan")
    return float((agreement.mean() - chance) / (1.0 - chance))


def bootstrap_rates(counts: np.ndarray, n_boot: int, seed: int, level: float = 0.95
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcome rates of a (items N, outcomes k) count table and their percentile bootstrap CIs.

    Rates are over all ratings (Σ_i counts[i] / Σ counts). The bootstrap resamples items with
    replacement, keeping each item's ratings together: the prompts are the sample that varies,
    and one prompt's raters are not independent of each other. Returns (rates, low, high), each
    (k,); deterministic for a seed.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or not len(counts) or (counts.sum(axis=1) == 0).any():
        raise ValueError("bootstrap_rates needs a non-empty (items, outcomes) table with at "
                         "least one rating per item")
    if n_boot < 1:
        raise ValueError(f"n_boot must be ≥ 1, got {n_boot}")
    rates = counts.sum(axis=0) / counts.sum()
    picks = np.random.default_rng(seed).integers(0, len(counts), size=(n_boot, len(counts)))
    totals = counts[picks].sum(axis=1)  # (n_boot, k)
    boot = totals / totals.sum(axis=1, keepdims=True)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boot, [tail, 100 - tail], axis=0)
    return rates, low, high
