"""scoring.rates: FDR, exact Poisson intervals and tests, the beta-binomial prior, the funnel."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from scoring.rates import (
    Z95,
    Z998,
    baseline_probabilities,
    baseline_rate,
    benjamini_hochberg,
    fit_beta_binomial,
    funnel_band,
    funnel_limits,
    garwood_interval,
    poisson_excess_p,
    shrunk_rates,
)


def test_bh_hand_example():
    # hand computation: sorted p 0.005, 0.01, 0.03, 0.04 (m = 4) -> m p/rank = 0.02, 0.02, 0.04,
    # 0.04; running minimum from the top leaves them unchanged.
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    np.testing.assert_allclose(q[:4], [0.02, 0.04, 0.04, 0.02])
    assert math.isnan(q[4])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40))
def test_bh_matches_scipy(ps):
    p = np.array(ps)
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p), atol=1e-12)


def test_garwood_published_values():
    # Garwood (1936) exact 95 % limits as tabulated (e.g. Ulm 1990): O = 0 -> (0, 3.689);
    # O = 5 -> (1.6235, 11.668); O = 10 -> (4.7954, 18.390)
    lo, hi = garwood_interval(np.array([0.0, 5.0, 10.0]))
    np.testing.assert_allclose(lo, [0.0, 1.6235, 4.7954], atol=1e-3)
    np.testing.assert_allclose(hi, [3.6889, 11.6683, 18.3904], atol=1e-3)


def test_poisson_excess_p_hand():
    # P(X >= 5 | mean 1.5) = 1 - sum_{k<5} e^-1.5 1.5^k/k! = 0.0185759
    p = poisson_excess_p(np.array([5.0, 0.0, 2.0]), np.array([1.5, 1.5, 0.0]))
    assert p[0] == pytest.approx(0.0185759, abs=1e-6)
    assert p[1] == 1.0
    assert math.isnan(p[2])


def test_beta_binomial_ml_recovers_known_prior_spread():
    # Rates drawn from Beta(2, 38) (mean 0.05, strength 40) for 400 labs with unequal volumes;
    # the maximum-likelihood fit on the whole counts recovers the strength within 20 % and the
    # mean within 10 % in each of five worlds.
    for seed in range(5):
        rng = np.random.default_rng(seed)
        n = rng.integers(20, 400, 400)
        x = rng.binomial(n, rng.beta(2.0, 38.0, 400))
        prior = fit_beta_binomial(x, n)
        assert prior.method == "ml"
        assert prior.strength == pytest.approx(40.0, rel=0.2), seed
        assert prior.mean == pytest.approx(0.05, rel=0.1), seed
        assert prior.alpha + prior.beta == pytest.approx(prior.strength)


def test_beta_binomial_without_overdispersion_pools_completely():
    # Every lab binomial with the same rate: the likelihood rises towards complete pooling, so
    # the strength sits at the cap and says so.
    rng = np.random.default_rng(1)
    n = rng.integers(50, 200, 300)
    prior = fit_beta_binomial(rng.binomial(n, 0.08), n, max_strength=500.0)
    assert prior.method == "no_overdispersion"
    assert prior.strength == pytest.approx(500.0, rel=1e-6)


def test_beta_binomial_degenerate():
    prior = fit_beta_binomial(np.array([0.0, 0.0]), np.array([10.0, 0.0]), max_strength=100.0)
    assert prior.method == "degenerate" and prior.strength == 100.0
    assert prior.mean == pytest.approx(1e-6)


def test_shrunk_rates_hand():
    # Beta(1, 19) prior (mean 0.05, strength 20); 3 events in 12 -> posterior Beta(4, 28)
    out = shrunk_rates(np.array([3.0, 0.0]), np.array([12.0, 0.0]), 0.05, 20.0, level=0.95, target=0.05)
    post = stats.beta(4.0, 28.0)
    assert out.rate[0] == pytest.approx(4 / 32)
    assert (out.lower[0], out.upper[0]) == pytest.approx(tuple(post.ppf([0.025, 0.975])))
    assert out.p_above_target[0] == pytest.approx(post.sf(0.05))
    assert math.isnan(out.rate[1])


def test_funnel_no_overdispersion_hand():
    # hand computation: p0 = 0.05, s = sqrt(0.05*0.95/100) = 0.0217945; 1.959964 s = 0.0427164,
    # 3.090232 s = 0.0673500 -> 95 %: (0.0072836, 0.0927164); 99.8 %: (0 [clipped], 0.1173500)
    f = funnel_limits(np.array([5.0, 5.0, 5.0]), np.array([100.0, 100.0, 100.0]))
    assert f.target == pytest.approx(0.05)
    assert f.tau2 == 0.0
    np.testing.assert_allclose(f.lower_95, 0.0072836, atol=1e-6)
    np.testing.assert_allclose(f.upper_95, 0.0927164, atol=1e-6)
    np.testing.assert_allclose(f.lower_998, 0.0)
    np.testing.assert_allclose(f.upper_998, 0.1173500, atol=1e-6)


def test_funnel_overdispersion_hand():
    # hand computation (no winsorising): n = 100 x 4, O = 0, 10, 0, 10: p0 = 0.05,
    # s^2 = 0.000475, z = -+2.294157, phi = 0.0025/0.000475 = 5.263158; w = 2105.263 each;
    # tau^2 = (4*5.263158 - 3)/(4w - w) = 18.052632/6315.789 = 0.0028583
    f = funnel_limits(np.array([0.0, 10.0, 0.0, 10.0]), np.array([100.0] * 4), winsor=0.0)
    assert f.phi == pytest.approx(5.263158, rel=1e-6)
    assert f.tau2 == pytest.approx(0.0028583, rel=1e-4)
    sd = math.sqrt(0.000475 + 0.0028583)
    np.testing.assert_allclose(f.z, [-0.05 / sd, 0.05 / sd, -0.05 / sd, 0.05 / sd], rtol=1e-4)


def test_funnel_band_at_the_labs_sizes_is_their_limits():
    o = np.array([2.0, 10.0, 1.0, 30.0, 5.0, 0.0])
    n = np.array([20.0, 60.0, 15.0, 150.0, 40.0, 0.0])
    f = funnel_limits(o, n)
    lo95, hi95 = funnel_band(f.target, f.tau2, n, Z95)
    lo998, hi998 = funnel_band(f.target, f.tau2, n, Z998)
    np.testing.assert_array_equal(lo95, f.lower_95)
    np.testing.assert_array_equal(hi95, f.upper_95)
    np.testing.assert_array_equal(lo998, f.lower_998)
    np.testing.assert_array_equal(hi998, f.upper_998)
    # hand: target 0.1, τ² 0, n 100 → 0.1 ± 1.96 · 0.03
    lo, hi = funnel_band(0.1, 0.0, np.array([100.0]), 1.96)
    assert lo[0] == pytest.approx(0.1 - 0.0588) and hi[0] == pytest.approx(0.1 + 0.0588)
    # The band narrows as n grows and never leaves [0, 1].
    grid = np.geomspace(1, 1e4, 50)
    lo, hi = funnel_band(0.05, 0.001, grid, Z998)
    assert (np.diff(hi - lo) < 0).all() and (lo >= 0).all() and (hi <= 1).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["C1", "C2", "C3", None]), st.sampled_from(["I1", "I2", "I3", None]),
                  st.sampled_from([True, False, None])),
        min_size=1, max_size=60,
    ),
    st.sampled_from(["item", "category", "overall"]),
    st.sampled_from([0.0, 1.0, 20.0]),
)
def test_baseline_probabilities_equal_the_frame_expression(rows, level, prior):
    # The evidence computes the baseline from code ids by bincounts; the window expression is the
    # definition. Counts are whole numbers, so the rates must agree to the last bit.
    df = pl.DataFrame(
        {"category_code": [r[0] for r in rows], "item_code": [r[1] for r in rows],
         "event": [r[2] for r in rows]},
        schema={"category_code": pl.Categorical, "item_code": pl.Categorical, "event": pl.Boolean},
    )
    expected = df.select(
        p=pl.when(pl.col("event").is_not_null()).then(baseline_rate(df, "event", level, prior))
    ).get_column("p").to_numpy()

    def ids(name):
        phys = df.get_column(name).to_physical().cast(pl.Int64)
        return phys.fill_null(-1).to_numpy() + 1  # a missing code is one more id

    counted = df.get_column("event").is_not_null().to_numpy()
    got = baseline_probabilities(
        counted, df.get_column("event").fill_null(False).to_numpy(), ids("category_code"),
        ids("item_code"), level, prior,
    )
    np.testing.assert_array_equal(np.where(counted, got, np.nan), expected.astype(float))
