"""Risk-adjusted Bernoulli CUSUM (Steiner, Cook, Farewell, Treasure 2000) and its control limit.

A lab's pairs in completion order, each with an in-control probability p of being a discrepancy
against it and an observation y (1 for a discrepancy, or the lab's attributed share of one):
W_t = y_t ln R − ln(1 − p_t + R p_t), C_t = max(0, C_{t−1} + W_t). The chart rises when the lab's
discrepancies come R times as often (in odds) as expected. The limit h is calibrated by simulating
in-control charts until their average run length is the policy's arl0 (seeded, cached), so a
grading run is reproducible. Calibration is kept apart from evaluation: :func:`cusum_limit`
calibrates, :func:`lab_cusum` evaluates.
"""

from __future__ import annotations

import functools

import numpy as np
import polars as pl

from scoring.policy import CusumPolicy

__all__ = [
    "charts_of_contiguous",
    "cusum_grid",
    "cusum_limit",
    "cusum_limit_of_grid",
    "cusum_paths",
    "cusum_weights",
    "lab_cusum",
    "risk_adjusted_cusum",
]


def _chart(weight: pl.Expr, group: str | None) -> pl.Expr:
    """C_t from the weights, without a loop: C_t = S_t − min(0, min_{j≤t} S_j), S = cumsum(W).

    The floor at 0 of the recursion is a reflection at the running minimum of the cumulative sum.
    """
    cs = weight.cum_sum() if group is None else weight.cum_sum().over(group)
    run_min = cs.cum_min() if group is None else cs.cum_min().over(group)
    return cs - pl.min_horizontal(run_min, pl.lit(0.0))


def _weight(y: pl.Expr, p: pl.Expr, odds_ratio: float) -> pl.Expr:
    return y * float(np.log(odds_ratio)) - (1.0 + (odds_ratio - 1.0) * p).log()


def risk_adjusted_cusum(y: np.ndarray, p: np.ndarray, odds_ratio: float) -> np.ndarray:
    """One chart's path C_1..C_n from y (0/1 or a share in [0, 1]) and p; empty in, empty out."""
    frame = pl.DataFrame({"y": np.asarray(y, dtype=float), "p": np.asarray(p, dtype=float)})
    path = frame.select(c=_chart(_weight(pl.col("y"), pl.col("p"), odds_ratio), None))
    return path.get_column("c").to_numpy()


def cusum_paths(rows: pl.DataFrame, *, odds_ratio: float) -> pl.DataFrame:
    """``rows`` (idx, y, p, …; sorted in chart order within idx) with each chart's value C_t
    after the row added as column ``c``."""
    return rows.with_columns(c=_chart(_weight(pl.col("y"), pl.col("p"), odds_ratio), "idx"))


def lab_cusum(
    rows: pl.DataFrame, *, odds_ratio: float, limit: float
) -> pl.DataFrame:
    """Each lab's chart over its rows, already sorted in chart order within ``idx``.

    rows: idx (lab), y, p, completed_on. Returns idx, cusum_current (the chart's value after the
    last row), cusum_max, cusum_signal_on (completion date of the first row at which C ≥ limit
    with C > 0; null if never).

    When each lab's rows are contiguous (as the evidence orders them), the charts are run lab by
    lab on numpy slices: the same sequential sums as the window expressions, without hashing
    millions of rows by lab three times (bit-identical; a test compares both).
    """
    idx = rows.get_column("idx").to_numpy()
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]]) if idx.size else np.zeros(0, dtype=np.int64)
    if starts.size != np.unique(idx).size:
        return _lab_cusum_frame(rows, odds_ratio=odds_ratio, limit=limit)
    w = cusum_weights(rows.get_column("y"), rows.get_column("p"), odds_ratio)
    current, cmax, signal_row = charts_of_contiguous(starts, w, limit)
    dates = rows.get_column("completed_on")
    signal_on = dates.gather(np.where(signal_row >= 0, signal_row, 0)).set(
        pl.Series(signal_row < 0), None
    ) if starts.size else dates.clear()
    return pl.DataFrame({
        "idx": rows.get_column("idx").gather(starts),
        "cusum_current": current,
        "cusum_max": cmax,
        "cusum_signal_on": signal_on,
    })


def cusum_weights(y: pl.Series, p: pl.Series, odds_ratio: float) -> np.ndarray:
    """Each row's chart weight W = y ln R − ln(1 − p + R p), by the same expression the charts'
    window form uses (so the same doubles)."""
    frame = pl.DataFrame({"y": y, "p": p})
    return frame.select(w=_weight(pl.col("y"), pl.col("p"), odds_ratio)).get_column("w").to_numpy()


def charts_of_contiguous(
    starts: np.ndarray, w: np.ndarray, limit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Charts over consecutive runs of ``w`` (run g from starts[g] to the next start): each
    chart's value after its last row, its maximum, and the first row (an index into ``w``) at
    which C ≥ limit with C > 0 (−1 if never)."""
    ends = np.r_[starts[1:], w.size]
    current = np.empty(starts.size)
    cmax = np.empty(starts.size)
    signal_row = np.full(starts.size, -1, dtype=np.int64)
    for g, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        cs = np.cumsum(w[s:e])
        c = cs - np.minimum(np.minimum.accumulate(cs), 0.0)
        current[g] = c[-1]
        cmax[g] = c.max()
        hit = np.flatnonzero((c > 0) & (c >= limit))
        if hit.size:
            signal_row[g] = s + hit[0]
    return current, cmax, signal_row


def _lab_cusum_frame(rows: pl.DataFrame, *, odds_ratio: float, limit: float) -> pl.DataFrame:
    """:func:`lab_cusum` by window expressions (any row order within a lab's rows)."""
    return (
        cusum_paths(rows, odds_ratio=odds_ratio)
        .group_by("idx", maintain_order=True)
        .agg(
            cusum_current=pl.col("c").last(),
            cusum_max=pl.col("c").max(),
            cusum_signal_on=pl.col("completed_on")
            .filter((pl.col("c") > 0) & (pl.col("c") >= limit))
            .first(),
        )
    )


def _simulate_max_paths(
    p_grid: tuple[float, ...], odds_ratio: float, n_sim: int, steps: int, seed: int
) -> np.ndarray:
    """Running maximum (n_sim × steps, float32) of in-control chart paths.

    Simulated in blocks of paths so that memory stays near n_sim × steps × 4 bytes however long
    the runs are (arl0 of several thousand pairs is realistic for busy labs).
    """
    rng = np.random.default_rng(seed)
    grid = np.asarray(p_grid)
    grid32 = grid.astype(np.float32)
    w_fail = -np.log1p((odds_ratio - 1.0) * grid)
    w_disc = np.log(odds_ratio) + w_fail
    # one table of weights: entry j a pair at grid[j] without a discrepancy, len(grid) + j with
    # one (a single gather per step instead of two and a select)
    weights = np.r_[w_fail, w_disc]
    n_grid = np.int32(len(grid))
    out = np.empty((n_sim, steps), dtype=np.float32)
    block = max(1, min(n_sim, 4_000_000 // max(steps, 1)))
    for start in range(0, n_sim, block):
        m = min(block, n_sim - start)
        k = rng.integers(0, len(grid), (m, steps), dtype=np.int32)
        y = rng.random((m, steps), dtype=np.float32) < grid32[k]
        k += y * n_grid
        del y
        cs = np.cumsum(weights[k], axis=1)
        del k
        floor = np.minimum.accumulate(cs, axis=1)
        np.minimum(floor, 0.0, out=floor)
        cs -= floor
        del floor
        # the running maximum of float32 values is that of the doubles, rounded (rounding is
        # monotone), so the chart is rounded first and the maximum taken in place
        block_out = out[start : start + m]
        block_out[...] = cs
        np.maximum.accumulate(block_out, axis=1, out=block_out)
    return out


@functools.lru_cache(maxsize=32)
def _cusum_limit_cached(
    p_grid: tuple[float, ...], odds_ratio: float, arl0: int, n_sim: int, seed: int, factor: int
) -> float:
    steps = arl0 * factor
    paths = _simulate_max_paths(p_grid, odds_ratio, n_sim, steps, seed)
    # A path's running maximum is flat between its records (the steps where it rises), so the
    # first step at or above h is a record: keeping the records alone (value, step, path) turns
    # each ARL evaluation of the bisection into a count over records instead of a binary search
    # per path. records_before[i] counts the records of paths before path i.
    rises = np.empty(paths.shape, dtype=bool)
    rises[:, 0] = True
    np.greater(paths[:, 1:], paths[:, :-1], out=rises[:, 1:])
    path, step = np.nonzero(rises)
    value = paths[path, step].astype(np.float64)
    del paths, rises
    records_before = np.r_[0, np.cumsum(np.bincount(path, minlength=n_sim))]
    # a sentinel step per path: never reaching h is a run truncated at `steps`
    step_or_end = np.r_[step, steps]

    def arl(h: float) -> float:
        # run length = first t with max-so-far >= h; truncated runs count as `steps`. The float32
        # values are compared with h in double precision, as a binary search of the paths does.
        below = np.bincount(path[value < h], minlength=n_sim)
        first = np.where(
            below < np.diff(records_before), step_or_end[records_before[:-1] + below], steps
        )
        return float(np.mean(np.minimum(first + 1, steps)))

    lo, hi = 0.0, 1.0
    while arl(hi) < arl0 and hi < 1e3:
        hi *= 2.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if arl(mid) >= arl0:
            hi = mid
        else:
            lo = mid
    return round(hi, 6)


def cusum_limit(p: np.ndarray, cp: CusumPolicy) -> float:
    """Control limit h giving an in-control average run length of cp.arl0 pairs.

    In-control sequences draw each pair's probability from the 101 percentiles (rounded to 1e-4)
    of the run's own in-control probabilities p, and y ~ Bernoulli(p). h is the smallest value
    (bisection, 1e-6) whose simulated ARL (runs truncated at max_steps_factor × arl0, which can
    only make h larger) reaches arl0. Attributed y are fractions in [0, 1] with the same mean but
    less variance than Bernoulli, so the true in-control ARL is at least arl0. Seeded and cached
    on its inputs. Empty p: NaN.
    """
    return cusum_limit_of_grid(cusum_grid(p), cp)


def cusum_grid(p: np.ndarray) -> tuple[float, ...]:
    """The probabilities :func:`cusum_limit` simulates from: the 101 percentiles of the finite
    p, rounded to 1e-4 (empty when there are none)."""
    p = np.asarray(p, dtype=float)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return ()
    quantiles = np.clip(np.percentile(p, np.arange(101)), 1e-4, 0.9999)
    return tuple(float(v) for v in np.round(quantiles, 4))


def cusum_limit_of_grid(grid: tuple[float, ...], cp: CusumPolicy) -> float:
    """:func:`cusum_limit` from its :func:`cusum_grid` (NaN for an empty grid): the simulation
    alone, which needs none of the pairs."""
    if not grid:
        return float("nan")
    return _cusum_limit_cached(
        grid, float(cp.odds_ratio), int(cp.arl0), int(cp.n_sim), int(cp.seed),
        int(cp.max_steps_factor),
    )
