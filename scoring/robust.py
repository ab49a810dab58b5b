"""Robust location and scale estimators of ISO 13528:2022 Annex C.

Input rules shared by every estimator here:

* the data are a 1-D array-like of at least 3 values (p >= 3); fewer raise ValueError;
* NaN or +-inf raise ValueError. Missing values are NOT dropped silently: a NaN usually means a
  result that was censored or failed to parse, and quietly shrinking p would hide it. Drop or
  impute them explicitly before calling.

Estimators: ``made``, ``niqr``, ``qn`` (scale); ``algorithm_a`` (joint location/scale) and
``algorithm_a_groups`` (the same for many groups at once, e.g. every item of a round),
``algorithm_s`` (pooled SD), ``hampel`` (location with a given scale); ``u_robust`` (standard
uncertainty of a robust mean).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import msgspec
import numpy as np
import polars as pl
from scipy.stats import chi2, norm

__all__ = [
    "ALGORITHM_A_FACTOR",
    "ALGORITHM_A_FACTOR_EXACT",
    "AlgorithmAResult",
    "AlgorithmSResult",
    "algorithm_a",
    "algorithm_a_groups",
    "algorithm_s",
    "algorithm_s_factors",
    "hampel",
    "huber_consistency_factor",
    "made",
    "niqr",
    "qn",
    "qn_correction",
    "u_robust",
]

MADE_FACTOR = 1.483  # ISO 13528:2022 Annex C (1/Phi^-1(0.75) = 1.4826, rounded)
NIQR_FACTOR = 0.7413  # ISO 13528:2022 Annex C (1/(2 Phi^-1(0.75)) = 0.74130)
# 1/(sqrt(2) Phi^-1(5/8)) = 2.21914; ISO 13528 Amd 1 prints 2.2191. (Many programs carry 2.2219,
# a transposition in Rousseeuw & Croux 1993 that later corrections fixed.)
QN_FACTOR = 2.2191
# Finite-sample factors b_p of Qn as in robustbase Qn(), finite.corr (robustbase >= 0.91,
# M. Maechler's simulations, 2^27 samples per p): a table for p <= 12 (p = 2 is exact,
# sqrt(pi) / (2 * 2.21914), from E|X - Y| = 2/sqrt(pi) for standard normals) and
# b_p = 1 / (1 + (a + (b + c/p)/p)/p) with the cubic/quartic coefficients below for p > 12. They
# replace the factors of Croux & Rousseeuw (1992) (table to p = 9, then p/(p + 1.4) or
# p/(p + 3.8)), which robustbase keeps only as Qn.old().
_QN_SMALL = {
    2: 0.399356, 3: 0.99365, 4: 0.51321, 5: 0.84401, 6: 0.61220, 7: 0.85877,
    8: 0.66993, 9: 0.87344, 10: 0.72014, 11: 0.88906, 12: 0.75743,
}
# Algorithm A clips at 1.5 s*: Huber's psi with c = 1.5. ISO 13528 C.3 prints the factor 1.134;
# the exact consistency factor is ALGORITHM_A_FACTOR_EXACT = 1.13339 (``huber_consistency_factor``),
# so ISO's constant is 0.054 % high (not the exact value rounded, which would be 1.133).
ALGORITHM_A_FACTOR = 1.134
_ALGORITHM_A_CLIP = 1.5
# ISO 13528:2022 C.5.3 Hampel psi breakpoints (in units of the scale).
_HAMPEL = (1.5, 3.0, 4.5)

# Quartile definitions by Hyndman & Fan (1996) type, as numpy names them.
_QUANTILE_METHODS = {
    "type4": "interpolated_inverted_cdf",
    "type5": "hazen",
    "type6": "weibull",
    "type7": "linear",
    "type8": "median_unbiased",
    "type9": "normal_unbiased",
}


class AlgorithmAResult(msgspec.Struct, frozen=True, kw_only=True):
    """Result of ``algorithm_a``.

    location, scale: x* and s*; iterations: update steps performed (see ``algorithm_a``);
    converged: False when max_iter was reached first; p: number of values; uncertainty:
    u(x*) = 1.25 s* / sqrt(p) (ISO 13528:2022 7.7.3); start: "made" (usual), "sd" (MADe was 0)
    or "degenerate" (all values equal).
    """

    location: float
    scale: float
    iterations: int
    converged: bool
    p: int
    uncertainty: float
    start: str


class AlgorithmSResult(msgspec.Struct, frozen=True, kw_only=True):
    """Result of ``algorithm_s``: robust pooled SD ``scale`` and the factors used."""

    scale: float
    iterations: int
    converged: bool
    p: int
    nu: float
    eta: float
    xi: float


def _data(x: Any, what: str = "x") -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size < 3:
        raise ValueError(f"{what} needs at least 3 values (p >= 3), got {arr.size}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(
            f"{what} contains {bad} NaN/inf value(s); robust estimators do not drop them silently"
        )
    return arr


def u_robust(scale: Any, p: Any) -> float | np.ndarray:
    """Standard uncertainty of a robust mean: 1.25 * scale / sqrt(p) (ISO 13528:2022 7.7.3)."""
    s = np.asarray(scale, dtype=float)
    n = np.asarray(p, dtype=float)
    if np.any(n < 1):
        raise ValueError("p must be >= 1")
    if np.any(s < 0):
        raise ValueError("scale must be non-negative")
    out = 1.25 * s / np.sqrt(n)
    return float(out) if out.ndim == 0 else out


def made(x: Any) -> float:
    """Scaled median absolute deviation MADe = 1.483 * median|x_i - median(x)| (ISO 13528 Annex C)."""
    arr = _data(x)
    return float(MADE_FACTOR * np.median(np.abs(arr - np.median(arr))))


def niqr(x: Any, method: str = "type7") -> float:
    """Normalised interquartile range nIQR = 0.7413 * (Q3 - Q1) (ISO 13528 Annex C).

    ``method`` names the quartile definition by its Hyndman & Fan / R type: "type7" (linear
    interpolation between order statistics, numpy's and R's default, used in ISO 13528's worked
    examples), "type6" (p(n+1) rule, Minitab/SPSS), or "type4", "type5", "type8", "type9".
    """
    try:
        np_method = _QUANTILE_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown quartile method {method!r}; expected one of {sorted(_QUANTILE_METHODS)}") from None
    arr = _data(x)
    q1, q3 = np.quantile(arr, [0.25, 0.75], method=np_method)
    return float(NIQR_FACTOR * (q3 - q1))


def qn_correction(p: int) -> float:
    """Finite-sample factor b_p of Qn, as in robustbase Qn(), finite.corr (module constants)."""
    if p < 2:
        raise ValueError("Qn needs p >= 2")
    if p in _QN_SMALL:
        return _QN_SMALL[p]
    if p % 2:
        return 1.0 / (1.0 + (1.60188 + (-2.1284 - 5.172 / p) / p) / p)
    return 1.0 / (1.0 + (3.67561 + (1.9654 + (6.987 - 77.0 / p) / p) / p) / p)


def qn(x: Any) -> float:
    """Rousseeuw-Croux Qn scale (ISO 13528:2022/Amd 1): 2.2191 * d_(k) * b_p.

    d_(k) is the k-th smallest of the p(p-1)/2 pairwise distances |x_i - x_j| (i < j), with
    h = floor(p/2) + 1 and k = h(h-1)/2; b_p is the small-sample factor of current robustbase
    (``qn_correction``), which makes Qn unbiased for sigma at the normal. Uses O(p^2) memory
    (fine for the few hundred results of a round). Returns 0 when more than half of the values
    coincide.
    """
    arr = np.sort(_data(x))
    p = arr.size
    h = p // 2 + 1
    k = h * (h - 1) // 2
    i, j = np.triu_indices(p, k=1)
    d = np.abs(arr[j] - arr[i])
    dk = np.partition(d, k - 1)[k - 1]
    return float(QN_FACTOR * dk * qn_correction(p))


def huber_consistency_factor(c: float) -> float:
    """1 / sqrt(E[min(Z^2, c^2)]) for standard normal Z: the factor that makes the SD of values
    clipped at +-c sigma consistent for sigma (Huber 1981). E[min(Z^2, c^2)] =
    (2 Phi(c) - 1) - 2 c phi(c) + 2 c^2 (1 - Phi(c)); c = 1.5 gives 1/sqrt(0.778465) = 1.13339."""
    if not (c > 0) or not math.isfinite(c):
        raise ValueError("c must be positive and finite")
    second_moment = (2.0 * norm.cdf(c) - 1.0) - 2.0 * c * norm.pdf(c) + 2.0 * c * c * norm.sf(c)
    return float(1.0 / math.sqrt(second_moment))


ALGORITHM_A_FACTOR_EXACT = huber_consistency_factor(_ALGORITHM_A_CLIP)


def _sig3_decimals(scale: float) -> int:
    # Decimal place of the third significant figure of the scale.
    return 2 - math.floor(math.log10(abs(scale)))


def _same_to_third_figure(x_old: float, x_new: float, s_old: float, s_new: float) -> bool:
    # ISO 13528 C.3.1: "no change ... in the third significant figure of the robust standard
    # deviation and of the equivalent figure in the robust average": both are compared at the
    # decimal place of s*'s third significant figure.
    d = _sig3_decimals(s_new)
    return round(s_old, d) == round(s_new, d) and round(x_old, d) == round(x_new, d)


def algorithm_a(
    x: Any, *, factor: float = ALGORITHM_A_FACTOR, tol: float | None = None, max_iter: int = 100
) -> AlgorithmAResult:
    """ISO 13528:2022 C.3 Algorithm A: robust mean x* and robust SD s*.

    Start: x* = median(x), s* = MADe(x). If MADe = 0 (more than half the values equal) s* starts
    from the sample SD instead (as ISO 13528 C.3 directs); if that is 0 too (all values equal) the
    result is location = median, scale = 0, iterations = 0, start = "degenerate".

    One iteration (update step): delta = 1.5 s*; x_i* = clip(x_i, x* - delta, x* + delta);
    x* = mean(x_i*); s* = factor * sqrt(sum((x_i* - x*)^2) / (p - 1)).

    If more than half of the values are equal, s* may shrink geometrically towards 0 and x*
    towards the tied value (that is the fixed point); the ISO rule then runs to ``max_iter`` and
    returns converged=False.

    Stopping:
    * tol=None (ISO rule): stop after the first update step whose x* and s* equal the previous
      step's values when both are rounded at the decimal place of the third significant figure
      of s* ("the equivalent figure in the robust average", C.3.1);
    * tol=float: stop when |change of x*| <= tol * s* and |change of s*| <= tol * s* (relative to
      the scale, so the rule is invariant under shifting and rescaling the data).

    The ISO rule stops once a step changes neither estimate in that figure; when the estimates
    creep slowly (small p, data in the clipping zone) this can leave them a few units of the
    third figure short of the exact fixed point. Use ``tol`` when the exact solution matters.

    ``iterations`` counts update steps, the initial median/MADe not included, and the step that
    showed no change included (so the step count matches an ISO iteration table whose first
    row after the start values is iteration 1). Reaching ``max_iter`` is not an error: the last
    values are returned with converged=False.

    ``factor`` defaults to ISO 13528's printed 1.134 (``ALGORITHM_A_FACTOR``), so results match
    the standard's worked examples. The exact consistency factor for delta = 1.5 s* is
    1/sqrt(E[min(Z^2, 1.5^2)]) = 1.13339 (``ALGORITHM_A_FACTOR_EXACT``), 0.054 % below ISO's
    constant; pass it for s* consistent at the normal beyond the third figure.
    """
    # Sorted so that summation order, and so the result to the last bit, does not depend on the
    # order of the input.
    arr = np.sort(_data(x))
    if tol is not None and not (tol > 0):
        raise ValueError("tol must be positive (or None for ISO's third-significant-figure rule)")
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    if not (factor > 0):
        raise ValueError("factor must be positive")
    p = arr.size
    lowest, highest = float(arr[0]), float(arr[-1])
    loc = float(np.median(arr))
    if lowest == highest:
        # Tested on the range, not on a computed SD that rounding can leave a hair above 0.
        return AlgorithmAResult(
            location=loc, scale=0.0, iterations=0, converged=True, p=p, uncertainty=0.0, start="degenerate"
        )
    scale = MADE_FACTOR * float(np.median(np.abs(arr - loc)))
    start = "made"
    if scale == 0.0:
        scale = float(np.std(arr, ddof=1))
        start = "sd"

    converged = False
    iterations = 0
    for iterations in range(1, max_iter + 1):
        delta = _ALGORITHM_A_CLIP * scale
        clipped = np.clip(arr, loc - delta, loc + delta)
        # The mean of values in [min, max] lies in [min, max]; clamp the last-bit rounding of the sum.
        new_loc = min(max(float(np.mean(clipped)), lowest), highest)
        new_scale = factor * float(np.sqrt(np.sum((clipped - new_loc) ** 2) / (p - 1)))
        if new_scale == 0.0:
            # Cannot happen with scale > 0 (the clipped values straddle their mean), kept as a guard.
            loc, scale, converged = new_loc, new_scale, True
            break
        if tol is None:
            done = _same_to_third_figure(loc, new_loc, scale, new_scale)
        else:
            done = abs(new_loc - loc) <= tol * new_scale and abs(new_scale - scale) <= tol * new_scale
        loc, scale = new_loc, new_scale
        if done:
            converged = True
            break
    return AlgorithmAResult(
        location=loc,
        scale=scale,
        iterations=iterations,
        converged=converged,
        p=p,
        uncertainty=1.25 * scale / math.sqrt(p),
        start=start,
    )


def algorithm_a_groups(
    values: Any, groups: Any, *, factor: float = ALGORITHM_A_FACTOR, tol: float = 1e-10, max_iter: int = 1000
) -> pl.DataFrame:
    """``algorithm_a`` for every group of ``values`` at once (ISO 13528:2022 C.3).

    ``values`` and ``groups`` are 1-D and of one length; ``groups`` holds any keys polars can
    group by (item codes, integers). Returns one row per group, sorted by group: ``group`` and
    the fields of ``AlgorithmAResult``. Each group gets what ``algorithm_a(values of the group,
    factor=factor, tol=tol, max_iter=max_iter)`` returns, to the rounding of the sums: the same
    start (median and MADe; the SD when MADe = 0; "degenerate" when all values are equal), the
    same update step and the same relative stopping rule. ISO's third-significant-figure rule is
    not offered: it stops short of the fixed point by an amount that depends on the unit, no
    basis for scoring thousands of items alike.

    Unlike the one-group function, a group of fewer than 3 values is a row with NaN location,
    scale and uncertainty and start "too_few", not an error; NaN or infinite values still raise
    ValueError (nothing is dropped silently).

    How: each group's values are sorted once, centred on the group's median, and their prefix
    sums of c and c^2 are kept. An update step clips at x* -+ 1.5 s*, so it only needs, per
    group, how many values lie below and above the clipping points and the prefix sums between
    them: an iteration costs a few operations per group, not per value. The counts move by a
    value or two per step (or not at all); the values either side of each clipping point are
    kept, so a step reads the sorted data only where a count moves. Converged groups leave the
    working set, and the last few groups (a tail of slow ones can run hundreds of steps longer
    than the rest) finish in a plain loop each, where a vector step would cost its overhead for
    a handful of values.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values contain NaN/inf; robust estimators do not drop them silently")
    if not (tol > 0):
        raise ValueError("tol must be positive")
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    if not (factor > 0):
        raise ValueError("factor must be positive")
    keys = pl.Series("group", groups)
    if keys.len() != x.size:
        raise ValueError("values and groups must have the same length")
    if not keys.is_sorted():
        # The order of values within a group does not matter (each group is sorted below).
        order = keys.arg_sort()
        keys = keys.gather(order)
        x = x[order.to_numpy()]
    p = np.bincount(keys.rle_id().to_numpy()).astype(np.int64)
    firsts = np.zeros(p.size, dtype=np.int64)
    np.cumsum(p[:-1], out=firsts[1:])
    rows = _sorted_rows(x, p)
    base, med, xv = rows.base, rows.median, rows.centred
    n_groups = p.size
    lowest, highest = xv[base + 1], xv[base + p]

    loc = np.zeros(n_groups)
    scale = rows.made.copy()
    start = np.full(n_groups, "made", dtype=object)
    iterations = np.zeros(n_groups, dtype=np.int32)
    converged = np.zeros(n_groups, dtype=bool)
    too_few = p < 3
    degenerate = ~too_few & (lowest == highest)
    sd_start = ~too_few & ~degenerate & (scale == 0.0)
    if sd_start.any():
        total, total_sq = rows.s1[base + p], rows.s2[base + p]
        var = (total_sq - total**2 / p) / np.maximum(p - 1, 1)
        scale = np.where(sd_start, np.sqrt(np.maximum(var, 0.0)), scale)
        start[sd_start] = "sd"
    start[degenerate] = "degenerate"
    start[too_few] = "too_few"
    scale[degenerate] = 0.0
    converged[degenerate] = True
    loc[too_few] = scale[too_few] = np.nan

    active = np.flatnonzero(~too_few & ~degenerate)
    state = _AlgorithmAState(loc=loc, scale=scale, iterations=iterations, converged=converged)
    active, done_steps = _iterate_vector(rows, p, active, state, factor, tol, max_iter)
    for g in active.tolist():
        # The tail: the groups still running when few were left.
        _iterate_one(rows, int(g), int(p[g]), float(lowest[g]), float(highest[g]), done_steps, state,
                     factor, tol, max_iter)

    with np.errstate(invalid="ignore"):
        uncertainty = 1.25 * scale / np.sqrt(p)
    return pl.DataFrame({
        "group": keys.gather(firsts),
        "location": med + loc,
        "scale": scale,
        "iterations": pl.Series(iterations, dtype=pl.Int32),
        "converged": converged,
        "p": pl.Series(p, dtype=pl.Int32),
        "uncertainty": uncertainty,
        "start": pl.Series(start.tolist(), dtype=pl.String),
    })


# Below this many unconverged groups, a vector step (some 50 numpy calls) costs more than a
# plain-Python step per group; measured on the bench's 8 838 groups (8 to 16 were best).
_SCALAR_TAIL = 12


class _SortedRows(msgspec.Struct, frozen=True, kw_only=True):
    # Per group g, one row of the flat arrays starting at base[g]: centred[base] = -inf, the
    # group's values sorted and centred on its median at base + 1 ... base + p, then +inf
    # (at least one); s1[base + k], s2[base + k] = sum of the first k centred values and of
    # their squares.
    base: np.ndarray
    median: np.ndarray
    made: np.ndarray
    centred: np.ndarray
    s1: np.ndarray
    s2: np.ndarray


class _AlgorithmAState(msgspec.Struct, frozen=True, kw_only=True):
    # Per-group results, written as groups finish (arrays shared, filled in place).
    loc: np.ndarray
    scale: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray


def _sorted_rows(x: np.ndarray, p: np.ndarray) -> _SortedRows:
    # x holds the groups one after another (p[g] values each). Groups are sorted as rows of
    # 2-D blocks (numpy sorts each row), one block per row width: p rounded up to a multiple of
    # 2^(floor(log2 p) - 3), so padding adds at most an eighth and there are at most eight
    # widths per doubling of p. This is several times faster than a sort of all values by
    # (group, value), and it leaves each group's median and MADe at fixed offsets.
    n_groups = p.size
    firsts = np.zeros(n_groups, dtype=np.int64)
    np.cumsum(p[:-1], out=firsts[1:])
    q = np.maximum(p, 1)
    unit = np.left_shift(1, np.maximum(np.floor(np.log2(q)).astype(np.int64) - 3, 0))
    # Two more columns for the sentinels either side of the values.
    width = -(-q // unit) * unit + 2
    by_width = np.argsort(width, kind="stable")
    widths = width[by_width]
    ends = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(widths, out=ends[1:])
    base = np.empty(n_groups, dtype=np.int64)
    base[by_width] = ends[:-1]
    flat = np.full(int(ends[-1]), np.inf)
    flat[base] = -np.inf
    # (Arrays of the data's size are reused where they can be: fresh ones cost page faults.)
    at = np.repeat(base + 1 - firsts, p)
    at += np.arange(x.size)
    flat[at] = x
    del at
    kinds, first_row, n_rows = np.unique(widths, return_index=True, return_counts=True)
    blocks = [(int(ends[f]), int(r), int(w)) for w, f, r in zip(kinds, first_row, n_rows, strict=True)]

    def block(a: np.ndarray, off: int, r: int, w: int) -> np.ndarray:
        return a[off: off + r * w].reshape(r, w)

    for off, r, w in blocks:
        block(flat, off, r, w).sort(axis=1)
    median = 0.5 * (flat[base + 1 + (p - 1) // 2] + flat[base + 1 + p // 2])
    # Centred on each group's median: the prefix sums then carry no large level to cancel.
    work = np.repeat(median[by_width], widths)
    flat -= work
    dev = np.abs(flat, out=work)
    for off, r, w in blocks:
        block(dev, off, r, w).sort(axis=1)
    # The -inf sentinel's deviation is +inf and sorts to the end: a row's p deviations come first.
    made_ = MADE_FACTOR * (0.5 * (dev[base + (p - 1) // 2] + dev[base + p // 2]))
    s1 = flat.copy()
    s1[base] = 0.0
    # Past a row's values s1 and s2 hold inf/NaN; nothing reads them there.
    s2 = np.multiply(s1, s1, out=work)
    for off, r, w in blocks:
        np.cumsum(block(s1, off, r, w), axis=1, out=block(s1, off, r, w))
        np.cumsum(block(s2, off, r, w), axis=1, out=block(s2, off, r, w))
    return _SortedRows(base=base, median=median, made=made_, centred=flat, s1=s1, s2=s2)


def _count_below(xv: np.ndarray, base: np.ndarray, p: np.ndarray, bound: np.ndarray) -> np.ndarray:
    # Per row, the number of its values < bound, by bisection over 0 ... p.
    lo = np.zeros(base.size, dtype=np.int64)
    hi = p.copy()
    while True:
        open_ = lo < hi
        if not open_.any():
            return lo
        mid = (lo + hi) // 2
        less = (xv[base + 1 + np.minimum(mid, p - 1)] < bound) & open_
        lo = np.where(less, mid + 1, lo)
        hi = np.where(less | ~open_, hi, mid)


def _iterate_vector(
    rows: _SortedRows, p: np.ndarray, active: np.ndarray, state: _AlgorithmAState,
    factor: float, tol: float, max_iter: int,
) -> tuple[np.ndarray, int]:
    """Update steps for all active groups at once until at most _SCALAR_TAIL are left (or
    max_iter). Returns the groups still running and the number of steps done."""
    if active.size <= _SCALAR_TAIL:
        return active, 0
    xv, s1, s2 = rows.centred, rows.s1, rows.s2
    m = active.size
    b0 = rows.base[active]
    pa = p[active]
    end = b0 + pa
    paf = pa.astype(float)
    pm1 = paf - 1.0
    low_a, high_a = xv[b0 + 1], xv[end]
    ma = rows.median[active]
    la, sa = state.loc[active], state.scale[active]
    # pos[:m] = base + (number of values < x* - 1.5 s*), pos[m:] = base + (number <= x* + 1.5 s*);
    # x <= hi is x < nextafter(hi, +inf), so both halves are strict counts.
    d = _ALGORITHM_A_CLIP * sa
    bound = np.concatenate((la - d, np.nextafter(la + d, np.inf)))
    pos = np.concatenate((b0, b0)) + _count_below(xv, np.concatenate((b0, b0)), np.concatenate((pa, pa)), bound)
    # The values either side of each clipping point and the prefix sums at each count.
    prev, nxt, c1, c2 = xv[pos], xv[pos + 1], s1[pos], s2[pos]
    # 2^-46: 64 units in the last place (see the collapse test below).
    tiny = 2.0**-46 * (np.abs(ma) + np.maximum(np.abs(low_a), np.abs(high_a)))
    alive = np.ones(m, dtype=bool)
    stale = True
    step = 0
    for step in range(1, max_iter + 1):
        if m <= _SCALAR_TAIL:
            rest = active[alive]
            state.loc[rest], state.scale[rest] = la[alive], sa[alive]
            return rest, step - 1
        d = _ALGORITHM_A_CLIP * sa
        lo, hi = la - d, la + d
        bound[:m] = lo
        np.nextafter(hi, np.inf, out=bound[m:])
        off = nxt < bound
        off |= prev >= bound
        moved = np.flatnonzero(off)
        if moved.size:
            # Move each count a value at a time (the sentinels stop it at 0 and p); a step
            # seldom passes more than one or two values.
            mv = moved
            bd = bound[mv]
            by = (nxt[mv] < bd).astype(np.int64) - (prev[mv] >= bd)
            while True:
                at = pos[mv] + by
                pos[mv] = at
                before, after = xv[at], xv[at + 1]
                prev[mv], nxt[mv] = before, after
                more_up, more_down = after < bd, before >= bd
                more = more_up | more_down
                if not more.any():
                    break
                mv, bd, by = mv[more], bd[more], more_up[more].astype(np.int64) - more_down[more]
            at = pos[moved]
            c1[moved], c2[moved] = s1[at], s2[at]
            stale = True
        if stale:
            pb, pu = pos[:m], pos[m:]
            mid1, mid2 = c1[m:] - c1[:m], c2[m:] - c2[:m]
            n_lo, n_hi, n_mid = (pb - b0).astype(float), (end - pu).astype(float), (pu - pb).astype(float)
            stale = False
        # The update step, in place to spare the allocations (the same operations in the same
        # order as _iterate_one):
        # x* = clip((n_lo lo + mid1 + n_hi hi) / p, lowest, highest);
        # s* = factor sqrt(max(n_lo (lo - x*)^2 + n_hi (hi - x*)^2 + mid2 - 2 x* mid1 + n_mid x*^2, 0) / (p - 1)).
        new_loc = n_lo * lo
        new_loc += mid1
        t = n_hi * hi
        new_loc += t
        new_loc /= paf
        np.maximum(new_loc, low_a, out=new_loc)
        np.minimum(new_loc, high_a, out=new_loc)
        sq = np.subtract(lo, new_loc)
        np.square(sq, out=sq)
        sq *= n_lo
        np.subtract(hi, new_loc, out=t)
        np.square(t, out=t)
        t *= n_hi
        sq += t
        sq += mid2
        np.multiply(2.0, new_loc, out=t)
        t *= mid1
        sq -= t
        np.square(new_loc, out=t)
        t *= n_mid
        sq += t
        np.maximum(sq, 0.0, out=sq)
        sq /= pm1
        new_scale = np.sqrt(sq, out=sq)
        new_scale *= factor
        # When more than half the values are tied, s* shrinks geometrically; algorithm_a stops
        # once x* -+ 1.5 s* are the same number in the data's own coordinates (every clipped
        # value then equals x* and s* is exactly 0). The centred values here would carry on
        # into subnormals: stop at the same point. That needs s* within a few units in the
        # last place of |median| + |x*| + 1.5 s*, so only groups with s* below tiny (far above
        # that) are tested.
        if (sa <= tiny).any():
            collapsed = (ma + lo) == (ma + hi)
            new_loc = np.where(collapsed, la, new_loc)
            new_scale = np.where(collapsed, 0.0, new_scale)
        tl = tol * new_scale
        np.subtract(new_loc, la, out=t)
        np.abs(t, out=t)
        np.subtract(new_scale, sa, out=d)
        np.abs(d, out=d)
        np.maximum(t, d, out=t)
        done = t <= tl
        if not new_scale.all():
            done |= new_scale == 0.0
        # Finished groups stay in the arrays (stepping on, unread) until a fifth of them have
        # finished: compacting a dozen arrays every step would cost more than the steps.
        done &= alive
        la, sa = new_loc, new_scale
        if done.any():
            fin = active[done]
            state.loc[fin], state.scale[fin] = la[done], sa[done]
            state.iterations[fin] = step
            state.converged[fin] = True
            alive &= ~done
            left = int(np.count_nonzero(alive))
            if left < 0.8 * m:
                keep = alive
                both = np.concatenate((keep, keep))
                active, pos, prev, nxt, c1, c2 = active[keep], pos[both], prev[both], nxt[both], c1[both], c2[both]
                b0, end, paf, pm1 = b0[keep], end[keep], paf[keep], pm1[keep]
                low_a, high_a, ma, la, sa = low_a[keep], high_a[keep], ma[keep], la[keep], sa[keep]
                tiny = tiny[keep]
                m = left
                alive = np.ones(m, dtype=bool)
                bound = np.empty(2 * m)
                stale = True
    # max_iter reached: what is left did not converge.
    rest = active[alive]
    state.loc[rest], state.scale[rest] = la[alive], sa[alive]
    state.iterations[rest] = max_iter
    return rest[:0], max_iter


def _iterate_one(
    rows: _SortedRows, g: int, p: int, lowest: float, highest: float, done_steps: int,
    state: _AlgorithmAState, factor: float, tol: float, max_iter: int,
) -> None:
    # The vector step for one group in plain Python: the same formulas in the same order.
    b = int(rows.base[g])
    values = rows.centred[b + 1: b + 1 + p].tolist()
    c1 = rows.s1[b: b + p + 1].tolist()
    c2 = rows.s2[b: b + p + 1].tolist()
    median = float(rows.median[g])
    loc, scale = float(state.loc[g]), float(state.scale[g])
    for step in range(done_steps + 1, max_iter + 1):
        d = _ALGORITHM_A_CLIP * scale
        lo, hi = loc - d, loc + d
        below, upto = bisect.bisect_left(values, lo), bisect.bisect_right(values, hi)
        mid1, mid2 = c1[upto] - c1[below], c2[upto] - c2[below]
        n_lo, n_hi, n_mid = below, p - upto, upto - below
        new_loc = min(max((n_lo * lo + mid1 + n_hi * hi) / p, lowest), highest)
        # a * a, not a ** 2: numpy squares by multiplying, Python's ** calls pow().
        a_lo, a_hi = lo - new_loc, hi - new_loc
        sq = n_lo * (a_lo * a_lo) + n_hi * (a_hi * a_hi) + mid2 - 2.0 * new_loc * mid1 + n_mid * (new_loc * new_loc)
        new_scale = factor * math.sqrt(max(sq, 0.0) / (p - 1))
        if (median + lo) == (median + hi):
            new_loc, new_scale = loc, 0.0
        done = new_scale == 0.0 or (abs(new_loc - loc) <= tol * new_scale and abs(new_scale - scale) <= tol * new_scale)
        loc, scale = new_loc, new_scale
        if done:
            state.loc[g], state.scale[g], state.iterations[g], state.converged[g] = loc, scale, step, True
            return
    state.loc[g], state.scale[g], state.iterations[g] = loc, scale, max_iter


def algorithm_s_factors(nu: float) -> tuple[float, float]:
    """Limit factor eta and adjustment factor xi of Algorithm S for nu degrees of freedom.

    ISO 13528:2022 C.4 (from ISO 5725-5): eta = sqrt(chi2_0.9(nu) / nu) and
    xi = 1 / sqrt(F_chi2(nu * eta^2; nu + 2) + 0.1 * eta^2), the 0.1 being 1 - 0.9 (the same
    formula is in the documentation of R metRology::algS). Reproduces Table C.2, e.g. nu = 1:
    eta = 1.645, xi = 1.097.
    """
    if not (nu > 0) or not math.isfinite(nu):
        raise ValueError("nu (degrees of freedom) must be positive and finite")
    eta = math.sqrt(chi2.ppf(0.9, nu) / nu)
    xi = 1.0 / math.sqrt(chi2.cdf(nu * eta**2, nu + 2) + 0.1 * eta**2)
    return eta, xi


def algorithm_s(w: Any, nu: float, *, max_iter: int = 100, tol: float | None = None) -> AlgorithmSResult:
    """ISO 13528:2022 C.4 Algorithm S: robust pooled standard deviation.

    ``w`` holds p >= 3 standard deviations (or ranges), each with ``nu`` degrees of freedom.
    Start w* = median(w); one iteration: psi = eta w*; w* = xi * sqrt(mean(min(w_i, psi)^2)).
    Stops like ``algorithm_a``: tol=None compares w* rounded to 3 significant figures between
    successive iterations (``iterations`` counts update steps); tol=float stops at a relative
    change <= tol. If median(w) = 0 (more than half the groups show no spread) the result is 0
    with iterations = 0: the robust pooled SD of such data is 0. Negative w raise ValueError.
    """
    arr = np.sort(_data(w, "w"))
    if np.any(arr < 0):
        raise ValueError("w are standard deviations or ranges and must be non-negative")
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    if tol is not None and not (tol > 0):
        raise ValueError("tol must be positive (or None)")
    eta, xi = algorithm_s_factors(float(nu))
    p = arr.size
    s = float(np.median(arr))
    if s == 0.0:
        return AlgorithmSResult(scale=0.0, iterations=0, converged=True, p=p, nu=float(nu), eta=eta, xi=xi)
    converged = False
    iterations = 0
    for iterations in range(1, max_iter + 1):
        clipped = np.minimum(arr, eta * s)
        new_s = xi * float(np.sqrt(np.mean(clipped**2)))
        if tol is None:
            d = _sig3_decimals(new_s)
            done = round(s, d) == round(new_s, d)
        else:
            done = abs(new_s - s) <= tol * new_s
        s = new_s
        if done:
            converged = True
            break
    return AlgorithmSResult(scale=s, iterations=iterations, converged=converged, p=p, nu=float(nu), eta=eta, xi=xi)


def _hampel_psi(u: np.ndarray) -> np.ndarray:
    a, b, c = _HAMPEL
    au = np.abs(u)
    mag = np.where(au <= a, au, np.where(au <= b, a, np.where(au < c, a * (c - au) / (c - b), 0.0)))
    return np.sign(u) * mag


def hampel(x: Any, scale: float | None = None) -> float:
    """Hampel M-estimator of location with a fixed scale (ISO 13528:2022 C.5.3).

    Solves sum_i psi((x_i - m) / s) = 0 for m, where psi is Hampel's three-part redescending
    function with knots 1.5, 3 and 4.5 (psi(u) = u for |u| <= 1.5, +-1.5 up to 3, falling
    linearly to 0 at 4.5, 0 beyond). The left-hand side is piecewise linear in m, so every root
    is found exactly; as in ISO 13528 C.5.3, the root closest to the median is returned. Roots
    with no value within 4.5 s (where every weight is 0) are ignored; where the equation holds on
    a whole interval (contributions cancelling exactly), the interval's point nearest the median
    is taken.

    ``scale`` is the robust SD s (ISO pairs this with the Q-method scale, which needs the
    replicate structure of a round and so is not computed here); None uses ``qn(x)``.
    scale = 0 (more than half the values equal) returns the median.
    """
    arr = _data(x)
    s = qn(arr) if scale is None else float(scale)
    if not math.isfinite(s) or s < 0:
        raise ValueError("scale must be finite and non-negative")
    med = float(np.median(arr))
    if s == 0.0:
        return med

    def total(m: np.ndarray) -> np.ndarray:
        return _hampel_psi((arr[None, :] - m[:, None]) / s).sum(axis=1)

    knots = np.unique(np.concatenate([arr + k * s for k in (-4.5, -3.0, -1.5, 1.5, 3.0, 4.5)] + [arr]))
    vals = total(knots)
    # psi values are O(1): anything this small is a zero blurred by rounding.
    zero = np.abs(vals) <= 1e-10 * arr.size
    vals = np.where(zero, 0.0, vals)
    roots = list(knots[zero])
    lo, hi = knots[:-1], knots[1:]
    vlo, vhi = vals[:-1], vals[1:]
    cross = (vlo * vhi) < 0
    # Linear between knots: interpolate the zero exactly.
    roots.extend(lo[cross] - vlo[cross] * (hi[cross] - lo[cross]) / (vhi[cross] - vlo[cross]))
    # Zero at both ends of a linear piece: the whole piece solves the equation, and its point
    # closest to the median is the candidate.
    flat = zero[:-1] & zero[1:]
    roots.extend(np.clip(med, lo[flat], hi[flat]))
    if not roots:
        return med
    roots_arr = np.asarray(roots)
    # A root where no value lies within 4.5 s is spurious (all weights zero there); the margin
    # keeps a value sitting on the 4.5 s knot (weight 0) from counting through rounding.
    reach = 4.5 * s * (1.0 - 1e-9)
    live = np.array([np.any(np.abs(arr - r) < reach) for r in roots_arr])
    if not np.any(live):
        return med
    roots_arr = roots_arr[live]
    return float(roots_arr[np.argmin(np.abs(roots_arr - med))])
