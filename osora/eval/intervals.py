"""95% intervals for the sample stage's measures, so a result is read against its noise: a rate
of k successes in n videos (Wilson's score interval) and a Spearman rank correlation (Fisher's
z with Fieller, Hartley and Pearson's variance 1.06 / (n − 3)). numpy-free, standard library
only.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of a proportion's score interval: unlike the normal approximation it stays
    inside [0, 1] and is not zero-width at 0 or n successes."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 ≤ successes ≤ n and n ≥ 1, got "
                         f"{successes} of {n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def spearman_interval(rho: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """(low, high) of a Spearman ρ from n pairs; None below 4 pairs (no variance estimate)."""
    if n < 4:
        return None
    rho = max(-0.999999, min(0.999999, rho))  # atanh(±1) is infinite
    half = z * math.sqrt(1.06 / (n - 3))
    centre = math.atanh(rho)
    return math.tanh(centre - half), math.tanh(centre + half)
