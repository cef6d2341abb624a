"""Confidence intervals and tests for proportions (pure)."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95 %


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials ((0, 0) when n is 0).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 and n.
    """
    if n <= 0:
        return 0.0, 0.0
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # exactly 0 and 1 at the ends (rounding would leave 1 - 1e-16 below a rate of 1)
    return (0.0 if k <= 0 else max(0.0, centre - half)), (1.0 if k >= n else min(1.0, centre + half))


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test of `b` pairs that only A passed and `c` that only B
    passed: the binomial test of min(b, c) in b + c trials at 1/2 (1.0 without discordant
    pairs). The sum is exact (integers) and then divided once."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired_difference_ci(b: int, c: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % interval of the paired difference in success rates, (c - b) / n (B minus A), by
    the Wald interval of matched pairs, clipped to [-1, 1]."""
    if n <= 0:
        return 0.0, 0.0
    d = (c - b) / n
    se = math.sqrt(max(0.0, (b + c) / n - d * d) / n)
    return max(-1.0, d - z * se), min(1.0, d + z * se)


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test (None without data)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0  # both all successes or all failures: no difference to test
    z = (k1 / n1 - k2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


__all__ = ["mcnemar_exact_p", "paired_difference_ci", "two_proportion_p", "wilson", "Z95"]
