"""Data-problem patterns (数据问题): named tests for reported data that cannot be trusted.

A biased or noisy lab shows in its standardised differences. The retest programme exists also to
find labs whose data are *shaped*: each pattern here counts, per lab, the pairs that show it (O)
and what an honest lab with the same fitted bias would show on the same pairs (E), with a
one-sided Poisson test of O against E. Every test conditions on what the *partner* found, never
on the value the lab chose to report, so a lab cannot lower its own expectation by shading.

Notation per pair side: x the lab's number, x_p the partner's, σ = σR at the pair's level, δ the
difference of the two labs' fitted biases (σR units, lab minus partner). For two honest labs
(x − x_p)/σ ~ N(δ, 2): the standardised difference s has variance 1 and d = √2 σ s.

* ``shading`` — values bunched just inside a limit where the partner finds them beyond it. Over
  the pairs where the partner's number lies beyond a limit, O = pairs where the lab's number is
  inside that limit by at most ``band`` σ; E = Σ P(an honest lab lands in that band | x_p, δ).
* ``nd_hiding`` — "not detected" reported where the partner finds clear amounts. Over the pairs
  where the partner's number exceeds the detection limit L (the item's LOD, else the median limit
  labs state for the item when they report it censored) by more than ``clear`` σ,
  O = pairs where the lab reported a censored value; E = Σ P(an honest lab reads below L | x_p, δ)
  = Φ(((L − x_p)/σ − δ)/√2).
* ``verdict_contradiction`` — a verdict that contradicts the lab's own number beyond its
  uncertainty (the pair scores' ``verdict_contradicts_j``). O = such pairs; E = decidable pairs ×
  the pooled rate of all labs (at least ``floor``): the rate of an honest clerical slip.
* ``outliers`` — gross errors (a unit slip, transposed digits): comparisons whose residual from
  the bias fit exceeds ``outlier_s`` in s units, far beyond what the method's precision allows.
  Each such comparison counts against both of its labs; the innocent partner of a slip meets it
  once, while a lab that slips meets it with many partners. E = the lab's comparisons × the pooled
  rate of all labs (at least ``floor``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.special import ndtr

__all__ = [
    "PATTERNS",
    "PatternCounts",
    "outlier_counts",
    "pattern_counts",
    "pattern_sides",
    "poisson_binomial_sf",
]

PATTERNS = ("shading", "nd_hiding", "verdict_contradiction", "outliers")
_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class PatternCounts:
    """Per lab (index 0..n_labs-1): pairs examined, observed, expected, one-sided p."""

    name: str
    n: np.ndarray
    observed: np.ndarray
    expected: np.ndarray
    p: np.ndarray
    # The smallest p the lab could reach (every examined pair showing the pattern). A lab that
    # cannot reach significance at all is left out of the false-discovery family (Tarone 1990;
    # Gilbert 2005 for the FDR), so a crowd of labs with one or two examined pairs does not
    # dilute the family.
    min_p: np.ndarray


def pattern_sides(pairs: pl.DataFrame, i1: np.ndarray, i2: np.ndarray) -> pl.DataFrame:
    """One row per pair side (original and retest) with the lab's and the partner's data."""
    def col(name: str, dtype: pl.DataType) -> pl.Expr:
        # Frames built by hand (tests, simulations) may leave out what a pattern needs: no column,
        # no test.
        return (pl.col(name) if name in pairs.columns else pl.lit(None)).cast(dtype)

    def side(j: str, k: str, lab: np.ndarray, partner: np.ndarray) -> pl.DataFrame:
        return pairs.select(
            col("item_code", pl.String()).alias("item_code"),
            col("kind", pl.String()).alias("kind"),
            col("lower_limit", pl.Float64()).alias("lower_limit"),
            col("upper_limit", pl.Float64()).alias("upper_limit"),
            col("lod", pl.Float64()).alias("lod"),
            col("sigma_R_at", pl.Float64()).alias("sigma"),
            col(f"value_{j}", pl.Float64()).alias("x"),
            col(f"value_{k}", pl.Float64()).alias("xp"),
            col(f"censored_{j}", pl.Boolean()).fill_null(False).alias("cens"),
            col(f"censored_{k}", pl.Boolean()).fill_null(False).alias("cens_p"),
            col(f"censor_limit_{j}", pl.Float64()).alias("censor_limit"),
            col(f"verdict_contradicts_{j}", pl.Boolean()).alias("contradicts"),
        ).with_columns(idx=pl.Series(lab, dtype=pl.Int64), partner=pl.Series(partner, dtype=pl.Int64))

    sides = pl.concat([side("1", "2", i1, i2), side("2", "1", i2, i1)])
    # The detection limit a not-detected result is judged against: the item's LOD, else the
    # median limit labs state when they report the item as censored (not this lab's own, which it
    # could choose).
    stated = sides.group_by("item_code").agg(stated_limit=pl.col("censor_limit").median())
    return sides.join(stated, on="item_code", how="left", maintain_order="left").with_columns(
        lod=pl.coalesce("lod", "stated_limit")
    )


def _per_lab(n_labs: int, idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.bincount(idx, weights=weights, minlength=n_labs)


def poisson_binomial_sf(observed: int, probs: np.ndarray) -> float:
    """P(X >= observed) for X a sum of independent Bernoulli(probs): exact, by recursion.

    The state is the count so far, capped at ``observed`` (everything at or above it is one
    absorbing state), so the cost is len(probs) × (observed + 1).
    """
    if observed <= 0:
        return 1.0
    dist = np.zeros(observed + 1)
    dist[0] = 1.0
    for p in np.clip(probs, 0.0, 1.0):
        moved = dist[:-1] * p
        dist[:-1] *= 1.0 - p
        dist[1:] += moved
    return float(min(1.0, max(0.0, dist[-1])))


def _counts(name: str, n_labs: int, idx: np.ndarray, obs: np.ndarray, exp: np.ndarray) -> PatternCounts:
    """Per-lab O, E and the exact one-sided p of O under independent pairs with the given P."""
    n = _per_lab(n_labs, idx, np.ones(len(idx)))
    o = _per_lab(n_labs, idx, obs.astype(float))
    e = _per_lab(n_labs, idx, exp)
    p = np.where(n > 0, 1.0, np.nan)
    min_p = np.where(n > 0, 1.0, np.nan)
    order = np.argsort(idx, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(idx, minlength=n_labs))]
    probs_sorted = np.asarray(exp, dtype=float)[order]
    for lab in np.flatnonzero(n > 0):
        probs = probs_sorted[bounds[lab] : bounds[lab + 1]]
        p[lab] = poisson_binomial_sf(int(round(o[lab])), probs)
        min_p[lab] = float(np.prod(np.clip(probs, 0.0, 1.0)))
    return PatternCounts(name=name, n=n.astype(np.int64), observed=o, expected=e, p=p, min_p=min_p)


def pattern_counts(
    sides: pl.DataFrame, bias: np.ndarray, n_labs: int, *, band: float, clear: float,
    contradiction_floor: float,
) -> dict[str, PatternCounts]:
    """The three pattern tests for every lab. ``bias`` in σR units per lab (NaN → 0)."""
    b = np.nan_to_num(np.asarray(bias, dtype=float), nan=0.0)
    quant = sides.filter(
        (pl.col("kind") != "qualitative") & pl.col("sigma").is_not_null() & (pl.col("sigma") > 0)
    )
    idx = quant.get_column("idx").to_numpy()
    partner = quant.get_column("partner").to_numpy()
    delta = b[idx] - b[partner] if len(idx) else np.zeros(0)
    sigma = quant.get_column("sigma").to_numpy()
    x = quant.get_column("x").to_numpy()
    xp = quant.get_column("xp").to_numpy()
    cens = quant.get_column("cens").to_numpy()
    cens_p = quant.get_column("cens_p").to_numpy()
    upper = quant.get_column("upper_limit").to_numpy()
    lower = quant.get_column("lower_limit").to_numpy()
    lod = quant.get_column("lod").to_numpy()
    out: dict[str, PatternCounts] = {}

    # shading: partner beyond a limit (a numeric partner value, not censored)
    with np.errstate(invalid="ignore"):
        p_num = np.isfinite(xp) & ~cens_p
        over = p_num & np.isfinite(upper) & (xp > upper)
        under = p_num & np.isfinite(lower) & (xp < lower) & ~over
        d_up = (upper - xp) / sigma  # < 0 where over
        d_lo = (xp - lower) / sigma  # < 0 where under
        p_up = ndtr((d_up - delta) / _SQRT2) - ndtr((d_up - band - delta) / _SQRT2)
        p_lo = ndtr((band - d_lo - delta) / _SQRT2) - ndtr((-d_lo - delta) / _SQRT2)
        lab_num = np.isfinite(x) & ~cens
        in_up = lab_num & ((upper - x) / sigma >= 0) & ((upper - x) / sigma <= band)
        in_lo = lab_num & ((x - lower) / sigma >= 0) & ((x - lower) / sigma <= band)
    use = over | under
    out["shading"] = _counts(
        "shading", n_labs, idx[use],
        np.where(over, in_up, in_lo)[use], np.where(over, p_up, p_lo)[use],
    )

    # not detected where the partner finds a clear amount
    with np.errstate(invalid="ignore"):
        clear_amount = p_num & np.isfinite(lod) & ((xp - lod) / sigma > clear)
        p_nd = ndtr(((lod - xp) / sigma - delta) / _SQRT2)
    out["nd_hiding"] = _counts(
        "nd_hiding", n_labs, idx[clear_amount], cens[clear_amount], p_nd[clear_amount]
    )

    # a verdict contradicting the lab's own number (over all decidable sides, any item kind)
    dec = sides.filter(pl.col("contradicts").is_not_null())
    c_idx = dec.get_column("idx").to_numpy()
    c_obs = dec.get_column("contradicts").to_numpy().astype(bool)
    pooled = float(c_obs.mean()) if len(c_obs) else 0.0
    rate = max(pooled, contradiction_floor)
    out["verdict_contradiction"] = _counts(
        "verdict_contradiction", n_labs, c_idx, c_obs, np.full(len(c_idx), rate)
    )
    return out


def outlier_counts(
    lab_a: np.ndarray, lab_b: np.ndarray, residual: np.ndarray, n_labs: int, *, limit: float,
    floor: float,
) -> PatternCounts:
    """The ``outliers`` pattern from the bias fit's comparisons (lab indices and residuals)."""
    idx = np.r_[lab_a, lab_b].astype(np.int64)
    far = np.abs(np.r_[residual, residual]) > limit
    rate = max(float(far.mean()) if len(far) else 0.0, floor)
    return _counts("outliers", n_labs, idx, far, np.full(len(idx), rate))
