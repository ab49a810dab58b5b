"""Exact binomial power, one-sided: how many retest pairs a lab needs before its discrepancy rate
can be told from the baseline.

H0: the lab's discrepancy rate is p0 (the baseline); H1: it is p1 > p0. The exact test rejects
H0 when the discrepancies X among n pairs reach the critical count c, the least c with
P(X ≥ c | p0) ≤ α (no normal approximation: with p0 = 5 % and tens of pairs it is far off). Its
power is P(X ≥ c | p1). Because c moves in whole steps, power is saw-toothed in n (52 pairs give
0.81 against 15 %, 54 only 0.72); the pairs needed are the smallest n that reaches the power,
which is what a planner asks ("from how many pairs on can the test first see it").

Pure (scipy.stats.binom); no I/O.
"""

from __future__ import annotations

from scipy.stats import binom

__all__ = ["critical_count", "power", "required_pairs"]

# Far beyond any retest programme: needing more means the two rates are practically equal.
MAX_PAIRS = 100_000


def _check(p0: float, p1: float, alpha: float) -> None:
    if not (0.0 < p0 < 1.0 and 0.0 < p1 < 1.0 and 0.0 < alpha < 1.0):
        raise ValueError(f"rates and alpha must lie in (0, 1): p0={p0}, p1={p1}, alpha={alpha}")
    if p1 <= p0:
        raise ValueError(f"the rate to detect ({p1}) must exceed the baseline ({p0})")


def critical_count(n: int, p0: float, alpha: float) -> int:
    """The least c with P(X ≥ c | n, p0) ≤ alpha (n + 1 when even X = n is not rare enough)."""
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    # isf gives the least k with P(X > k) ≤ alpha, so c = k + 1; binom.sf(k) = P(X > k).
    c = int(binom.isf(alpha, n, p0)) + 1
    # isf is computed in floating point: step to the exact boundary on either side.
    while c > 0 and binom.sf(c - 2, n, p0) <= alpha:
        c -= 1
    while c <= n and binom.sf(c - 1, n, p0) > alpha:
        c += 1
    return c


def power(n: int, p0: float, p1: float, alpha: float) -> float:
    """Power of the one-sided exact test of p0 at level alpha with n pairs when the rate is p1."""
    _check(p0, p1, alpha)
    c = critical_count(n, p0, alpha)
    return float(binom.sf(c - 1, n, p1)) if c <= n else 0.0


def required_pairs(p0: float, p1: float, alpha: float, target_power: float) -> int:
    """The smallest n whose exact one-sided test of p0 at alpha detects p1 with the power."""
    _check(p0, p1, alpha)
    if not 0.0 < target_power < 1.0:
        raise ValueError(f"power must lie in (0, 1), got {target_power}")
    # A walk, not a bisection: power is not monotone in n, and the first n that reaches it is wanted.
    n = 1
    while n <= MAX_PAIRS:
        if power(n, p0, p1, alpha) >= target_power:
            return n
        n += 1
    raise ValueError(f"more than {MAX_PAIRS} pairs needed to tell {p1} from {p0}")
