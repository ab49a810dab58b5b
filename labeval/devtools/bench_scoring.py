"""Benchmark target ``scoring``: scoring.pairs.score_pairs against a bare polars floor.

``measure(n)`` takes ``n`` pairs of the national data set (labeval.devtools.national), times
``score_pairs(df.lazy(), policy).collect()`` and, in the same process over the same frame, the
floor: a bare polars pass computing per pair d = value_1 − value_2, σR at the level (the item's
sd, times the level for a relative model), s = d / (√2 σR) and |d| > CD with CD = 2.8 σR, i.e.
the three numbers every pair score starts from, without the conventions (censoring, Horwitz,
replicates, uncertainty, verdicts, outcomes, arbitration) that score_pairs adds. Both best of 3.
Goal (issue 13): score_pairs within 8× its floor.

``run(pairs, seed)`` / ``render(result)`` time the same on ``generate_pairs`` (a random frame of
mixed cases that the pair tests also use).
"""

from __future__ import annotations

import datetime as dt
import math
import time

import numpy as np
import polars as pl

from labeval.devtools.bench_types import Measurement
from labeval.devtools.national import NationalConfig, build_national
from scoring.pairs import score_pairs
from scoring.policy import Policy
from scoring.schema import PAIR_INPUT_SCHEMA

__all__ = ["DEFAULT_N", "GOAL", "QUICK_N", "generate_pairs", "measure", "passed", "render", "run"]

DEFAULT_N = 1_000_000
QUICK_N = 20_000
RATIO_GOAL = 8.0
GOAL = f"ratio <= {RATIO_GOAL:g}"


def _horwitz(c: np.ndarray) -> np.ndarray:
    # Thompson's (2000) modification of the Horwitz function (as in scoring.pairs); c is a mass fraction.
    return np.where(
        c < 1.2e-7, 0.22 * c, np.where(c <= 0.138, 0.02 * c**0.8495, 0.01 * np.sqrt(c))
    )


def _verdict(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    # Simple acceptance (ILAC-G8): a result on the limit conforms; NaN limits do not constrain.
    fail = (x < lower) | (x > upper)
    return np.where(np.isnan(x), None, np.where(fail, "fail", "pass")).astype(object)


def generate_pairs(n: int, seed: int = 0) -> pl.DataFrame:
    """A random frame of ``n`` pairs with ``PAIR_INPUT_SCHEMA``, shaped like supervision data.

    Mix (per row): 8 % qualitative items; precision models absolute/relative/horwitz
    (25/60/15 %); upper limit only (70 %), two-sided (12 %), lower only (10 %), none (8 %);
    an LOD on 25 % of items with results below it reported censored ("<LOD", 10 % of those as a
    bare ND without limit); U on 75 % of results (k = 2, 3 or missing); 1-3 replicates or null;
    a biased lab on 5 % of sides; results near the limit so verdict reversals occur; an
    arbitration lab on 3 % of pairs. Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    nan = np.nan
    qual = rng.random(n) < 0.08
    model = rng.choice(np.array(["absolute", "relative", "horwitz"]), n, p=[0.25, 0.60, 0.15])
    limit = np.exp(rng.normal(1.0, 2.0, n))  # mg/kg-like spread of magnitudes
    rel = rng.uniform(0.02, 0.2, n)
    scale = np.full(n, 1e-6)  # mg/kg -> mass fraction
    spec = rng.choice(4, n, p=[0.70, 0.12, 0.10, 0.08])
    upper = np.where((spec == 0) | (spec == 1), limit, nan)
    lower = np.where(spec == 1, limit * 0.5, np.where(spec == 2, limit, nan))
    # sigma_R at the limit places the true values: mostly a few sigma_R inside the conforming
    # side, sometimes right at the limit.
    sR_lim = np.where(model == "horwitz", _horwitz(limit * scale) / scale, rel * limit)
    offset = np.abs(rng.normal(0.0, 4.0, n)) * sR_lim
    mu = np.where(spec == 2, limit + offset, np.where(spec == 1, limit * 0.75, limit - offset))
    mu = np.where(rng.random(n) < 0.05, limit * rng.uniform(0.9, 1.1, n), mu)
    mu = np.maximum(mu, 0.05 * limit)  # contents are positive
    # the item's precision data, and sigma_R at the true value for the simulated results
    R_sd = np.where(model == "absolute", sR_lim, np.where(model == "relative", rel, nan))
    r_sd = R_sd * rng.uniform(0.3, 0.8, n)
    sR_mu = np.where(
        model == "horwitz",
        _horwitz(mu * scale) / scale,
        np.where(model == "relative", rel * mu, sR_lim),
    )
    lod = np.where(rng.random(n) < 0.25, np.abs(mu) * rng.uniform(0.2, 1.5, n), nan)

    cols: dict[str, object] = {
        "pair_id": np.arange(n, dtype=np.int64),
        "sample_code": None,
        "item_code": None,
        "category_code": None,
        "kind": np.where(qual, "qualitative", "quantitative"),
        "precision_model": np.where(qual, None, model).astype(object),
        "repeatability_sd": np.where(qual, nan, r_sd),
        "reproducibility_sd": np.where(qual, nan, R_sd),
        "horwitz_scale": np.where(model == "horwitz", scale, nan),
        "lower_limit": np.where(qual, nan, lower),
        "upper_limit": np.where(qual, nan, upper),
        "lod": np.where(qual, nan, lod),
    }
    n_items = 400
    item = rng.integers(0, n_items, n)
    cols["item_code"] = np.char.add("I", item.astype("U4")).astype(object)
    cols["category_code"] = np.char.add("C", (item % 40).astype("U3")).astype(object)
    cols["sample_code"] = np.char.add("S", np.arange(n).astype("U9")).astype(object)
    base = dt.date(2024, 1, 1)
    present3 = rng.random(n) < 0.03
    for j in ("1", "2", "3"):
        present = present3 if j == "3" else np.ones(n, dtype=bool)
        bias = np.where(rng.random(n) < 0.05, rng.normal(0.0, 3.0, n), 0.0) * sR_mu
        reps = rng.choice(np.array([1, 2, 3, -1]), n, p=[0.6, 0.2, 0.1, 0.1])
        x = mu + bias + rng.normal(0.0, 1.0, n) * sR_mu
        cens = ~np.isnan(lod) & (x < lod) & ~qual
        climit = np.where(rng.random(n) < 0.1, nan, lod)
        value = np.where(cens | qual, nan, x)
        U = np.where(rng.random(n) < 0.75, 2.0 * sR_mu * rng.uniform(0.5, 1.5, n), nan)
        k = rng.choice(np.array([2.0, 3.0, nan]), n, p=[0.8, 0.1, 0.1])
        verdict = _verdict(np.where(cens, np.minimum(lod, x), x), lower, upper)
        qv = np.where(rng.random(n) < 0.9, "pass", "fail").astype(object)
        qv = np.where(rng.random(n) < 0.05, np.where(qv == "pass", "fail", "pass"), qv)
        verdict = np.where(qual, qv, verdict)
        lab = np.char.add("L", rng.integers(0, 500, n).astype("U3")).astype(object)
        days = rng.integers(0, 365, n)
        side = {
            "lab": lab,
            "value": value,
            "censored": cens,
            "censor_limit": np.where(cens, climit, nan),
            "expanded_uncertainty": np.where(qual, nan, U),
            "coverage_k": np.where(qual | np.isnan(U), nan, k),
            "replicates": np.where(reps < 0, -1, reps),
            "verdict": verdict,
            "decision_rule": np.where(rng.random(n) < 0.8, "simple", "guard_band").astype(object),
            "reported_on": days,
        }
        for name, arr in side.items():
            cols[f"{name}_{j}"] = (arr, present)

    series = []
    for name, dtype in PAIR_INPUT_SCHEMA.items():
        spec_val = cols[name]
        present = None
        if isinstance(spec_val, tuple):
            spec_val, present = spec_val
        if spec_val is None:
            s = pl.Series(name, [None] * n, dtype=dtype)
        elif name.startswith("reported_on"):
            s = pl.Series(name, spec_val, dtype=pl.Int32).cast(pl.Int64)
            s = (pl.lit(base) + pl.duration(days=pl.lit(s))).alias(name)
            s = pl.select(s).to_series()
        elif name.startswith("replicates"):
            s = pl.Series(name, spec_val, dtype=pl.Int32)
            s = pl.select(pl.when(s >= 0).then(s)).to_series().alias(name)
        elif dtype == pl.Float64:
            s = pl.Series(name, spec_val, dtype=pl.Float64, nan_to_null=True)
        elif spec_val.dtype == object:
            # numpy object arrays with None confuse polars' inference; go through a list
            s = pl.Series(name, spec_val.tolist(), dtype=dtype)
        else:
            s = pl.Series(name, spec_val, dtype=dtype)
        if present is not None:
            s = pl.select(pl.when(pl.lit(pl.Series(present))).then(s)).to_series().alias(name)
        series.append(s.cast(dtype))
    return pl.DataFrame(series)


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _floor_query(df: pl.DataFrame) -> pl.LazyFrame:
    x1, x2 = pl.col("value_1"), pl.col("value_2")
    d = x1 - x2
    sigma = pl.col("reproducibility_sd") * pl.when(pl.col("precision_model") == "relative").then(
        ((x1 + x2) * 0.5).abs()
    ).otherwise(1.0)
    return df.lazy().select(
        d=d, s=d / (math.sqrt(2.0) * sigma), exceeds_cd=d.abs() > 2.8 * sigma
    )


def measure(n: int, *, seed: int = 0, database_url: str | None = None) -> Measurement:
    """score_pairs on ``n`` national pairs against the bare d / s / |d| > CD pass (no database)."""
    del database_url
    df = build_national(NationalConfig(n_pairs=n, seed=seed)).pairs
    policy = Policy()
    seconds = _best_of(lambda: score_pairs(df.lazy(), policy).collect(), 3)
    floor = _best_of(_floor_query(df).collect, 3)
    return Measurement(
        seconds=seconds,
        floor_seconds=floor,
        details={"repeats": "best of 3 (both)", "pairs_per_second": round(n / seconds) if seconds > 0 else 0},
    )


def passed(m: Measurement) -> bool:
    return m.floor_seconds > 0 and m.seconds / m.floor_seconds <= RATIO_GOAL


def run(pairs: int = 1_000_000, seed: int = 0, repeats: int = 3) -> dict:
    """Time score_pairs on ``pairs`` generated pairs (best of ``repeats``) against the floor."""
    df = generate_pairs(pairs, seed)
    policy = Policy()
    seconds = _best_of(lambda: score_pairs(df.lazy(), policy).collect(), repeats)
    floor = _best_of(_floor_query(df).collect, repeats)
    return {
        "pairs": pairs,
        "seconds": seconds,
        "pairs_per_second": pairs / seconds if seconds > 0 else float("inf"),
        "floor_seconds": floor,
        "ratio": seconds / floor if floor > 0 else float("inf"),
    }


def render(result: dict) -> str:
    return (
        f"score_pairs: {result['pairs']:,} pairs in {result['seconds']:.3f} s "
        f"({result['pairs_per_second']:,.0f} pairs/s); "
        f"floor (d, s, |d| > CD) {result['floor_seconds']:.4f} s; ratio {result['ratio']:.1f}x"
    )
