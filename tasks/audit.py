"""Audit statistics: unbiased accuracy estimates from the random audit sample."""

from __future__ import annotations

import math


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n == 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible for tiny n and for
    proportions near 0 or 1, which is exactly the audit's situation.
    """
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson_interval(correct: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (conservative) binomial interval; coverage >= 1 - alpha for every true accuracy.

    Reported beside Wilson for tiny audits, where Wilson's coverage can fall below nominal.
    """
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    lo = 0.0 if correct == 0 else float(beta.ppf(alpha / 2, correct, n - correct + 1))
    hi = 1.0 if correct == n else float(beta.ppf(1 - alpha / 2, correct + 1, n - correct))
    return lo, hi
