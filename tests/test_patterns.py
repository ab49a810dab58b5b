"""scoring.patterns: data-problem pattern tests against hand computations."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import ndtr

import scoring.patterns as patterns_module
from labeval.devtools.national import NationalConfig, build_national
from scoring.pairs import score_pairs
from scoring.patterns import (
    _counts,
    _rate_counts,
    _tail_probabilities,
    outlier_counts,
    pattern_counts,
    pattern_counts_of,
    pattern_selection_of_pairs,
    pattern_sides,
    poisson_binomial_sf,
)
from scoring.policy import Policy


def frame(rows: list[dict]) -> pl.DataFrame:
    base = {
        "item_code": "I1", "kind": "quantitative", "lower_limit": None, "upper_limit": 10.0,
        "lod": 0.5, "sigma_R_at": 1.0, "value_1": None, "value_2": None, "censored_1": False,
        "censored_2": False, "censor_limit_1": None, "censor_limit_2": None,
        "verdict_contradicts_1": None, "verdict_contradicts_2": None,
    }
    return pl.DataFrame([{**base, **r} for r in rows], schema_overrides={
        "lower_limit": pl.Float64, "upper_limit": pl.Float64, "value_1": pl.Float64,
        "value_2": pl.Float64, "censor_limit_1": pl.Float64, "censor_limit_2": pl.Float64,
        "verdict_contradicts_1": pl.Boolean, "verdict_contradicts_2": pl.Boolean,
    })


def counts(rows: list[dict], bias=(0.0, 0.0), **kw):
    df = frame(rows)
    n = len(rows)
    sides = pattern_sides(df, np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64))
    opts = {"band": 0.5, "clear": 2.0, "contradiction_floor": 0.002, **kw}
    return pattern_counts(sides, np.array(bias), 2, **opts)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=0, max_size=12), st.integers(0, 6))
def test_poisson_binomial_matches_brute_force(probs, k):
    # enumerate every outcome of up to 12 Bernoulli trials
    p = np.array(probs)
    total = 0.0
    for mask in range(1 << len(p)):
        bits = np.array([(mask >> i) & 1 for i in range(len(p))], dtype=bool)
        if bits.sum() >= k:
            total += float(np.prod(np.where(bits, p, 1 - p)))
    assert poisson_binomial_sf(k, p) == pytest.approx(total, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.floats(0.0, 1.0)), min_size=0, max_size=80),
    st.lists(st.integers(0, 40), min_size=5, max_size=5),
)
def test_tail_probabilities_of_all_labs_at_once_match_the_recursion(rows, observed):
    # The vectorised pairwise combination is the one-lab recursion above, lab by lab, down to
    # tails far below 1e-12 (relative error, not absolute).
    idx = np.array([r[0] for r in rows], dtype=np.int64)
    probs = np.array([r[1] for r in rows], dtype=float)
    obs = np.array(observed, dtype=float)
    got = _tail_probabilities(idx, probs, obs, 5)
    for lab in range(5):
        want = poisson_binomial_sf(int(obs[lab]), probs[idx == lab])
        assert got[lab] == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_poisson_binomial_equals_binomial_for_equal_probabilities():
    assert poisson_binomial_sf(3, np.full(5, 0.04)) == pytest.approx(stats.binom.sf(2, 5, 0.04))


def test_shading_hand():
    # Upper limit 10, σ = 1. Lab 0 reads 9.8 (0.2 σ inside, within the 0.5 σ band) where the
    # partner reads 11.0 (D_p = -1): P(honest lab lands in [9.5, 10]) with δ = 0
    # = Φ(-1/√2) − Φ(-1.5/√2) = 0.239750 − 0.144422 = 0.095328 (hand, normal table).
    # A second pair: partner 10.5 (D_p = -0.5), lab 9.0 (outside the band): P = Φ(-0.5/√2) −
    # Φ(-1/√2) = 0.361837 − 0.239750 = 0.122087. A third pair has the partner inside the limit
    # and is not examined.
    out = counts([
        {"value_1": 9.8, "value_2": 11.0},
        {"value_1": 9.0, "value_2": 10.5},
        {"value_1": 9.8, "value_2": 9.9},
    ])["shading"]
    # lab 1 is never examined: its partner (lab 0) is inside the limit in every pair
    assert out.n.tolist() == [2, 0]
    p1 = ndtr(-1 / math.sqrt(2)) - ndtr(-1.5 / math.sqrt(2))
    p2 = ndtr(-0.5 / math.sqrt(2)) - ndtr(-1 / math.sqrt(2))
    assert out.observed[0] == 1.0
    assert out.expected[0] == pytest.approx(p1 + p2)
    assert out.p[0] == pytest.approx(1 - (1 - p1) * (1 - p2))


def test_shading_expectation_follows_the_fitted_bias():
    # A lab that reads 1 σR low lands just inside the limit more often, honestly: its expected
    # count rises, so its low readings are not mistaken for shading.
    rows = [{"value_1": 9.8, "value_2": 11.0}]
    plain = counts(rows)["shading"].expected[0]
    low = counts(rows, bias=(-1.0, 0.0))["shading"].expected[0]
    assert low > plain


def test_nd_hiding_hand():
    # LOD 0.5, σ = 1 at the partner's level: partner reads 3.0 (2.5 σ above, a clear amount).
    # Lab 0 reported not detected. Honest P = Φ((0.5 − 3.0)/√2) = Φ(-1.767767) = 0.038550.
    out = counts([{"value_1": None, "censored_1": True, "censor_limit_1": 0.5, "value_2": 3.0}])["nd_hiding"]
    assert (out.n[0], out.observed[0]) == (1, 1.0)
    assert out.expected[0] == pytest.approx(ndtr(-2.5 / math.sqrt(2)))
    assert out.p[0] == pytest.approx(out.expected[0])
    # a partner 1 σ above the LOD is not a clear amount: nothing examined
    near = counts([{"value_1": None, "censored_1": True, "value_2": 1.5}])["nd_hiding"]
    assert near.n[0] == 0


def test_nd_limit_from_stated_limits_when_the_item_has_no_lod():
    # No LOD on the item: the median limit stated by labs reporting it censored (0.5 here).
    rows = [
        {"lod": None, "value_1": None, "censored_1": True, "censor_limit_1": 0.5, "value_2": 3.0},
        {"lod": None, "value_1": 4.0, "value_2": 3.8},
    ]
    out = counts(rows)["nd_hiding"]
    # lab 0: partner 3.0 and 3.8 are clear amounts; lab 1: only 4.0 (its other partner is
    # censored, not a number)
    assert out.n.tolist() == [2, 1]
    assert out.observed.tolist() == [1.0, 0.0]


def test_verdict_contradiction_uses_the_pooled_rate_with_a_floor():
    # 50 pairs; lab 0 contradicts its own number on 4, lab 1 never: pooled rate 4/100 = 0.04.
    rows = [{"value_1": 5.0, "value_2": 5.0, "verdict_contradicts_1": i < 4,
             "verdict_contradicts_2": False} for i in range(50)]
    out = counts(rows)["verdict_contradiction"]
    assert out.observed.tolist() == [4.0, 0.0]
    assert out.expected[0] == pytest.approx(50 * 0.04)
    assert out.p[0] == pytest.approx(stats.binom.sf(3, 50, 0.04))
    # with no contradiction anywhere the floor keeps E positive
    clean = counts([{**r, "verdict_contradicts_1": False} for r in rows])["verdict_contradiction"]
    assert clean.expected[0] == pytest.approx(50 * 0.002)


def test_outliers_count_against_both_labs_with_the_pooled_rate():
    # Lab 0 slips three times, each time with another partner (1, 2, 3); 200 ordinary comparisons
    # among 1..4. Residuals in s units; the limit is 5.

    rng = np.random.default_rng(0)
    a = np.r_[[0, 0, 0], rng.integers(1, 5, 200), [0] * 17]
    b = np.r_[[1, 2, 3], (a[3:203] % 4) + 1, rng.integers(1, 5, 17)]
    b[3:203] = np.where(b[3:203] == a[3:203], (b[3:203] % 4) + 1, b[3:203])
    r = np.r_[[40.0, -9.0, 6.0], rng.normal(0, 1, 217)]
    out = outlier_counts(a, b, r, 5, limit=5.0, floor=0.002)
    assert out.observed[0] == 3.0 and out.n[0] == 20
    assert out.observed[1:4].tolist() == [1.0, 1.0, 1.0]
    rate = 6 / (2 * 220)  # 3 outlier comparisons, each counted for both labs
    assert out.expected[0] == pytest.approx(20 * rate)
    assert out.p[0] == pytest.approx(stats.binom.sf(2, 20, rate))
    # a partner that met the slip once is not a pattern: p of one outlier is unremarkable
    assert out.p[1] > 0.05


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_one_rate_counts_equal_the_counts_with_an_array_of_that_rate(seed):
    # The contradictions and outliers have one probability for every side; their counts come
    # from integer bincounts and a running sum of the rate. They must equal, to the last bit,
    # the general counts given that rate per side.
    rng = np.random.default_rng(seed)
    n_labs = int(rng.integers(1, 40))
    m = int(rng.integers(0, 3000))
    idx = rng.integers(0, n_labs, m).astype(np.int32)
    obs = rng.random(m) < rng.uniform(0.0, 0.3)
    rate = float(rng.choice([rng.uniform(1e-4, 0.3), 0.001, 1.0 / 3.0]))
    fast = _rate_counts(
        "x", n_labs, np.bincount(idx, minlength=n_labs), np.bincount(idx[obs], minlength=n_labs), rate
    )
    slow = _counts("x", n_labs, idx, obs, np.full(m, rate))
    for field in ("n", "observed", "expected", "p", "min_p"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(slow, field), err_msg=field)
    assert fast.n.dtype == slow.n.dtype


@pytest.mark.parametrize("slice_rows", [997, 1 << 20])
def test_selection_read_in_slices_gives_the_counts_of_the_whole_sides(monkeypatch, slice_rows):
    # The evidence selects the examined sides a slice of pairs at a time, before the biases
    # exist; with the biases the counts must equal pattern_counts on the whole window's sides,
    # to the last bit (the sides in the same order: side 1's in pair order, then side 2's).
    nat = build_national(NationalConfig(n_pairs=12_000, n_labs=200, n_categories=20, n_items=150, seed=4))
    pairs = score_pairs(nat.pairs.lazy(), Policy()).collect()
    codes = pl.concat([pairs.get_column("lab_1"), pairs.get_column("lab_2")]).unique().sort()
    pos = {c: i for i, c in enumerate(codes.to_list())}
    i1 = np.array([pos[c] for c in pairs.get_column("lab_1").to_list()], dtype=np.int32)
    i2 = np.array([pos[c] for c in pairs.get_column("lab_2").to_list()], dtype=np.int32)
    n_labs = len(codes)
    bias = np.random.default_rng(1).normal(0.0, 0.3, n_labs)
    ep = Policy().evidence
    args = {"band": ep.shading_band, "clear": ep.nd_clear, "contradiction_floor": ep.contradiction_floor}
    whole = pattern_counts(pattern_sides(pairs, i1, i2), bias, n_labs, **args)
    monkeypatch.setattr(patterns_module, "_SLICE", slice_rows)
    sliced = pattern_counts_of(
        pattern_selection_of_pairs(pairs, i1, i2, n_labs, **args), bias, n_labs, band=ep.shading_band
    )
    assert list(sliced) == list(whole)
    for name, pc in whole.items():
        assert pc.observed.sum() > 0 or name == "verdict_contradiction", name
        for field in ("n", "observed", "expected", "p", "min_p"):
            np.testing.assert_array_equal(getattr(sliced[name], field), getattr(pc, field), err_msg=f"{name}.{field}")
