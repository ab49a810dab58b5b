"""Tests of scoring.robust (ISO 13528:2022 Annex C robust statistics).

Reference values: the worked example E.3 of ISO 13528:2022 Annex E (data and printed figures
below), hand computations, the defining fixed-point equations, and an independent step-by-step
trace of Algorithm A.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from scoring import robust
from scoring.robust import (
    ALGORITHM_A_FACTOR,
    ALGORITHM_A_FACTOR_EXACT,
    QN_FACTOR,
    AlgorithmAResult,
    algorithm_a,
    algorithm_a_groups,
    algorithm_s,
    algorithm_s_factors,
    hampel,
    huber_consistency_factor,
    made,
    niqr,
    qn,
    qn_correction,
    u_robust,
)

# Values on a 0.001 grid: arbitrary floats let a*x + b swallow sub-ulp differences (1 + 1e-287 == 1),
# which changes the data rather than testing the estimator. Ties stay common, as in real rounds.
values = st.lists(st.integers(-1_000_000, 1_000_000).map(lambda k: k / 1000), min_size=3, max_size=40)
TIGHT = {"tol": 1e-11, "max_iter": 5000}


# --- Algorithm A: reference values ------------------------------------------------------------


def test_algorithm_a_first_iteration_hand():
    # hand computation, x = [1, 2, 3, 4, 100]: median 3, |x - 3| = [2, 1, 0, 1, 97], MADe = 1.483.
    # delta = 1.5 * 1.483 = 2.2245 -> clip to [0.7755, 5.2245] -> [1, 2, 3, 4, 5.2245];
    # x* = 15.2245 / 5 = 3.0449; squared deviations 4.18161601 + 1.09181601 + 0.00201601
    # + 0.91221601 + 4.75065616 = 10.9383202; s* = 1.134 * sqrt(10.9383202 / 4) = 1.8752465
    r = algorithm_a([1, 2, 3, 4, 100], max_iter=1)
    assert r.iterations == 1
    assert r.converged is False
    assert r.location == pytest.approx(3.0449, abs=1e-12)
    assert r.scale == pytest.approx(1.134 * math.sqrt(10.9383202 / 4), rel=1e-12)
    assert r.scale == pytest.approx(1.8752465, abs=1e-7)
    assert r.start == "made"
    assert r.p == 5


def test_algorithm_a_symmetric_hand():
    # hand computation, x = [-10, -1, 0, 1, 10]: median 0, MADe = 1.483 * 1 = 1.483; delta = 2.2245
    # clips +-10 to +-2.2245; symmetric so x* stays 0 for every iteration; s* fixed point:
    # s = 1.134 * sqrt((2 + 2 (1.5 s)^2) / 4) -> s^2 = 1.134^2 (0.5 + 1.125 s^2)
    # -> s^2 (1 - 1.446700) = 0.642978 has no positive root, so s* grows until 1.5 s* >= 10 and
    # then s* = 1.134 * sd([-10, -1, 0, 1, 10]) = 1.134 * sqrt(202 / 4) = 8.0586
    r = algorithm_a([-10, -1, 0, 1, 10], **TIGHT)
    assert r.converged
    assert r.location == pytest.approx(0.0, abs=1e-12)
    assert r.scale == pytest.approx(1.134 * math.sqrt(202 / 4), rel=1e-9)


def _reference_trace(x, factor=1.134, steps=200):
    """Independent plain-Python Algorithm A: [(x*, s*)] for step 0 (start) .. steps."""
    xs = sorted(float(v) for v in x)
    med = statistics.median(xs)
    s = 1.483 * statistics.median([abs(v - med) for v in xs])
    loc = med
    trace = [(loc, s)]
    for _ in range(steps):
        d = 1.5 * s
        c = [min(max(v, loc - d), loc + d) for v in xs]
        loc = sum(c) / len(c)
        s = factor * math.sqrt(sum((v - loc) ** 2 for v in c) / (len(c) - 1))
        trace.append((loc, s))
    return trace


def _third_figure(s):
    return 2 - math.floor(math.log10(s))


@pytest.mark.parametrize(
    "data",
    [
        [1, 2, 3, 4, 100],
        [0.251, 0.262, 0.249, 0.270, 0.231, 0.244, 0.258, 0.301, 0.190, 0.255, 0.266, 0.247],
        [10.1, 9.8, 10.0, 10.3, 9.9, 12.5, 10.2, 9.7, 7.9, 10.0, 10.1],
    ],
)
def test_algorithm_a_iso_stopping_rule_matches_trace(data):
    # ISO 13528:2022 C.3.1: stop at the first step whose s* and x* are unchanged at the decimal
    # place of s*'s third significant figure; iterations counts update steps (start = step 0).
    trace = _reference_trace(data)
    k = next(
        i
        for i in range(1, len(trace))
        if round(trace[i][1], _third_figure(trace[i][1])) == round(trace[i - 1][1], _third_figure(trace[i][1]))
        and round(trace[i][0], _third_figure(trace[i][1])) == round(trace[i - 1][0], _third_figure(trace[i][1]))
    )
    r = algorithm_a(data)
    assert r.converged
    assert r.iterations == k
    assert r.location == pytest.approx(trace[k][0], rel=1e-12)
    assert r.scale == pytest.approx(trace[k][1], rel=1e-12)
    # and the previous step did differ in that figure
    d = _third_figure(trace[k - 1][1])
    prev = trace[k - 2] if k >= 2 else None
    if prev is not None:
        assert (round(trace[k - 1][0], d), round(trace[k - 1][1], d)) != (round(prev[0], d), round(prev[1], d))


def test_algorithm_a_matches_reference_trace_when_tight():
    data = [0.251, 0.262, 0.249, 0.270, 0.231, 0.244, 0.258, 0.301, 0.190, 0.255, 0.266, 0.247]
    trace = _reference_trace(data, steps=400)
    r = algorithm_a(data, **TIGHT)
    assert r.location == pytest.approx(trace[-1][0], rel=1e-9)
    assert r.scale == pytest.approx(trace[-1][1], rel=1e-9)


# ISO 13528:2022 Annex E, example E.3: atrazine in drinking water, p = 34 results (µg/l).
ISO_E3 = [
    0.04, 0.055, 0.178, 0.202, 0.206, 0.227, 0.228, 0.23, 0.23, 0.235, 0.236, 0.237, 0.243,
    0.244, 0.245, 0.2555, 0.26, 0.264, 0.267, 0.27, 0.273, 0.274, 0.274, 0.278, 0.2811, 0.287,
    0.287, 0.288, 0.289, 0.295, 0.296, 0.311, 0.331, 0.4246,
]


def test_iso_13528_annex_e3_end_to_end():
    # Printed in ISO 13528:2022 Annex E, example E.3: median 0.262, nIQR 0.0402 (quartiles by
    # linear interpolation, R type 7), MADe 0.0386; Algorithm A x* = 0.257, s* = 0.0395,
    # u(x*) = 1.25 s*/sqrt(p) = 0.0085 after 6 iterations.
    assert len(ISO_E3) == 34
    assert round(float(np.median(ISO_E3)), 3) == 0.262
    assert round(niqr(ISO_E3, method="type7"), 4) == 0.0402
    assert round(made(ISO_E3), 4) == 0.0386
    r = algorithm_a(ISO_E3)
    assert r.converged and r.start == "made" and r.p == 34
    assert round(r.location, 3) == 0.257
    assert round(r.scale, 4) == 0.0395
    assert round(r.uncertainty, 4) == 0.0085
    assert r.iterations == 6
    # the other quartile rules do not reproduce the printed nIQR (type 6 gives 0.0423)
    assert round(niqr(ISO_E3, method="type6"), 4) != 0.0402


def test_algorithm_a_factor_iso_and_exact():
    # E[min(Z², 1.5²)] = (2·0.9331928 - 1) - 3·0.1295176 + 4.5·0.0668072 = 0.7784652;
    # 1/sqrt(0.7784652) = 1.133393. ISO 13528 C.3 prints 1.134, 0.05 % above the exact value
    # (which would round to 1.133).
    assert ALGORITHM_A_FACTOR == 1.134
    assert ALGORITHM_A_FACTOR_EXACT == pytest.approx(1.133393, abs=1e-6)
    assert ALGORITHM_A_FACTOR / ALGORITHM_A_FACTOR_EXACT - 1 == pytest.approx(5.36e-4, abs=1e-6)
    # independent check: the variance of a standard normal clipped at ±1.5 by quadrature
    z = np.linspace(-12, 12, 2_400_001)
    second = np.trapezoid(np.minimum(z**2, 2.25) * norm.pdf(z), z)
    assert huber_consistency_factor(1.5) == pytest.approx(1 / math.sqrt(second), rel=1e-9)
    # a large c clips nothing: the factor tends to 1
    assert huber_consistency_factor(8.0) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError):
        huber_consistency_factor(0.0)
    # the option changes s* by the ratio of the factors at the first step
    a = algorithm_a([1, 2, 3, 4, 100], max_iter=1)
    b = algorithm_a([1, 2, 3, 4, 100], max_iter=1, factor=ALGORITHM_A_FACTOR_EXACT)
    assert b.scale / a.scale == pytest.approx(ALGORITHM_A_FACTOR_EXACT / 1.134, rel=1e-12)


def test_u_robust_reproduces_iso_e3_uncertainty():
    # ISO 13528:2022 E.3 (atrazine, p = 34): s* = 0.0395 gives u(x*) = 1.25 * 0.0395 / sqrt(34)
    # = 0.008468, printed as 0.0085
    assert round(u_robust(0.0395, 34), 4) == 0.0085
    np.testing.assert_allclose(u_robust(np.array([1.0, 2.0]), 25), [0.25, 0.5])
    with pytest.raises(ValueError):
        u_robust(1.0, 0)


def test_algorithm_a_uncertainty_field():
    r = algorithm_a([0.251, 0.262, 0.249, 0.270, 0.231, 0.244, 0.258, 0.301, 0.190])
    assert r.uncertainty == pytest.approx(1.25 * r.scale / 3.0, rel=1e-12)


# --- Algorithm A: degenerate and invalid input ------------------------------------------------


def test_algorithm_a_all_equal_is_degenerate():
    r = algorithm_a([5.0, 5.0, 5.0, 5.0])
    assert r == AlgorithmAResult(
        location=5.0, scale=0.0, iterations=0, converged=True, p=4, uncertainty=0.0, start="degenerate"
    )


def test_algorithm_a_made_zero_starts_from_sd():
    # more than half equal: MADe = 0, so s* starts from the sample SD
    data = [5.0, 5.0, 5.0, 5.0, 6.0, 7.0]
    assert made(data) == 0.0
    r = algorithm_a(data, max_iter=1)
    sd = statistics.stdev(data)  # hand: mean 5.5, SS = 4 * 0.25 + 0.25 + 2.25 = 3.5, sd = sqrt(0.7)
    assert sd == pytest.approx(math.sqrt(0.7))
    # step 1: delta = 1.5 sqrt(0.7) = 1.2550 around 5 -> [5, 5, 5, 5, 6, 6.2550]
    clipped = [5, 5, 5, 5, 6, 5 + 1.5 * sd]
    assert r.start == "sd"
    assert r.location == pytest.approx(statistics.fmean(clipped), rel=1e-12)
    assert r.scale == pytest.approx(1.134 * statistics.stdev(clipped), rel=1e-12)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1.0, 2.0], "at least 3"),
        ([], "at least 3"),
        ([1.0, math.nan, 3.0, 4.0], "NaN"),
        ([1.0, math.inf, 3.0, 4.0], "NaN/inf"),
        ([[1.0, 2.0], [3.0, 4.0]], "one-dimensional"),
    ],
)
@pytest.mark.parametrize("func", [algorithm_a, made, niqr, qn, hampel])
def test_invalid_input_raises(func, data, match):
    with pytest.raises(ValueError, match=match):
        func(data)


def test_algorithm_a_majority_tie_collapses_towards_the_tie():
    # Four of five values equal: MADe = 0, the start is the SD, and s* then shrinks geometrically
    # towards 0 with x* towards the tied value; ISO's rule never sees the third figure settle, so
    # the default run stops at max_iter and says so.
    data = [0.003, 0.003, 0.003, 0.0, 0.003]
    r = algorithm_a(data)
    assert r.start == "sd"
    assert r.converged is False and r.iterations == 100
    assert r.scale < 1e-4 < statistics.stdev(data)
    assert r.location == pytest.approx(0.003, abs=1e-5)


def test_algorithm_a_invalid_options():
    with pytest.raises(ValueError, match="tol"):
        algorithm_a([1, 2, 3], tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        algorithm_a([1, 2, 3], max_iter=0)


# --- Algorithm A: properties ------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(values, st.floats(min_value=0.01, max_value=100), st.floats(min_value=-1e3, max_value=1e3))
def test_algorithm_a_equivariance(xs, a, b):
    x = np.asarray(xs)
    base = algorithm_a(x, **TIGHT)
    moved = algorithm_a(a * x + b, **TIGHT)
    spread = max(float(np.ptp(x)), 1e-300)
    # tolerance: the stopping rule (1e-11 of s*) plus rounding of a*x+b
    tol = 1e-7 * a * spread + 1e-9 * (abs(b) + a * float(np.max(np.abs(x))))
    assert moved.location == pytest.approx(a * base.location + b, abs=tol)
    assert moved.scale == pytest.approx(a * base.scale, abs=tol)


@settings(max_examples=150, deadline=None)
@given(values, st.randoms(use_true_random=False))
def test_algorithm_a_permutation_invariant(xs, rnd):
    shuffled = list(xs)
    rnd.shuffle(shuffled)
    assert algorithm_a(shuffled) == algorithm_a(xs)


@settings(max_examples=200, deadline=None)
@given(values)
def test_algorithm_a_bounds(xs):
    r = algorithm_a(xs)
    assert r.scale >= 0.0
    assert min(xs) <= r.location <= max(xs)
    assert 0 <= r.iterations <= 100


@settings(max_examples=100, deadline=None)
@given(values)
def test_algorithm_a_fixed_point(xs):
    # Converged x*, s* solve the defining equations of C.3 (Huber proposal 2 with 1.134).
    r = algorithm_a(xs, **TIGHT)
    assume(r.converged and r.scale > 0)
    x = np.asarray(xs)
    c = np.clip(x, r.location - 1.5 * r.scale, r.location + 1.5 * r.scale)
    # s* can collapse towards 0 when most values tie, so allow for the resolution of x too
    resolution = 1e-13 * float(np.max(np.abs(x)))
    assert r.location == pytest.approx(c.mean(), abs=1e-8 * r.scale + resolution)
    assert r.scale == pytest.approx(1.134 * c.std(ddof=1), abs=1e-8 * r.scale + resolution)


def test_algorithm_a_normal_consistency_and_robustness():
    rng = np.random.default_rng(20260101)
    x = rng.normal(0.0, 1.0, 2000)
    r = algorithm_a(x, **TIGHT)
    # SE(x*) ~ 1/sqrt(2000) = 0.022, SE(s*) ~ 0.017: 3.5 SE bounds
    assert abs(r.location) < 0.08
    assert abs(r.scale - 1.0) < 0.06
    # 10 % gross outliers at +50 move the mean by 5 but x* by well under 0.5
    y = np.concatenate([x[:180], np.full(20, 50.0)])
    ry = algorithm_a(y, **TIGHT)
    assert abs(ry.location) < 0.5
    assert ry.scale < 2.0
    assert float(np.mean(y)) > 4.0


# --- MADe, nIQR, Qn --------------------------------------------------------------------------


def test_made_hand():
    # hand computation: median 3, |x - 3| = [2, 1, 0, 1, 97], median 1 -> 1.483
    assert made([1, 2, 3, 4, 100]) == pytest.approx(1.483, rel=1e-12)


def test_niqr_hand():
    x = [1, 2, 3, 4, 5, 6, 7, 8]
    # type 7: Q1 at 1 + 0.25 * 7 = 2.75th order statistic -> 2.75; Q3 at 6.25 -> 6.25;
    # nIQR = 0.7413 * 3.5 = 2.59455
    assert niqr(x) == pytest.approx(0.7413 * 3.5, rel=1e-12)
    # type 6: Q1 at 0.25 * 9 = 2.25 -> 2.25; Q3 at 6.75 -> 6.75; nIQR = 0.7413 * 4.5 = 3.33585
    assert niqr(x, method="type6") == pytest.approx(0.7413 * 4.5, rel=1e-12)
    with pytest.raises(ValueError, match="quartile method"):
        niqr(x, method="excel")


def test_qn_hand():
    # hand computation, x = 1..5: h = 3, k = 3; distances 1 (x4), 2 (x3), 3 (x2), 4 (x1) ->
    # the 3rd smallest is 1; b_5 = 0.84401 (robustbase Qn(), finite.corr) -> 2.2191 * 0.84401
    assert qn([1, 2, 3, 4, 5]) == pytest.approx(2.2191 * 0.84401, rel=1e-12)
    # x = 1..10: h = 6, k = 15; 9 distances of 1 and 8 of 2 -> d_(15) = 2; b_10 = 0.72014
    assert qn(list(range(1, 11))) == pytest.approx(2.2191 * 2 * 0.72014, rel=1e-12)
    # x = 1..11: h = 6, k = 15 -> d_(15) = 2; b_11 = 0.88906
    assert qn(list(range(1, 12))) == pytest.approx(2.2191 * 2 * 0.88906, rel=1e-12)
    # x = 1..13: h = 7, k = 21; 12 distances of 1, 11 of 2 -> d_(21) = 2; b_13 from the odd
    # formula: 1/(1 + (1.60188 + (-2.1284 - 5.172/13)/13)/13) = 1/1.1082733 = 0.9023044
    assert qn(list(range(1, 14))) == pytest.approx(2.2191 * 2 * 0.9023044, rel=1e-6)


def test_qn_correction_factors():
    # p = 2 is exact: Q_2 = 2.21914·|X - Y| and E|X - Y| = 2/sqrt(pi) for standard normals, so
    # b_2 = sqrt(pi) / (2·2.21914) = 0.399356
    assert qn_correction(2) == pytest.approx(math.sqrt(math.pi) / (2 * 2.21914), abs=1e-6)
    # table values of robustbase Qn(), finite.corr (p <= 12)
    assert [qn_correction(p) for p in (3, 4, 9, 12)] == [0.99365, 0.51321, 0.87344, 0.75743]
    # p > 12, hand computation: even p = 14: 1/(1 + (3.67561 + (1.9654 + (6.987 - 77/14)/14)
    # /14)/14) = 1/(1 + 0.2731130) = 0.7854762
    assert qn_correction(14) == pytest.approx(0.7854762, abs=1e-7)
    # the fitted formulas continue the simulated table: at p = 11 and 12 within 0.1 %
    odd = 1 / (1 + (1.60188 + (-2.1284 - 5.172 / 11) / 11) / 11)
    even = 1 / (1 + (3.67561 + (1.9654 + (6.987 - 77 / 12) / 12) / 12) / 12)
    assert odd == pytest.approx(qn_correction(11), rel=1e-3)
    assert even == pytest.approx(qn_correction(12), rel=1e-3)
    # towards 1 as p grows, from below, for odd and even p alike
    for parity in (0, 1):
        f = [qn_correction(p) for p in range(14 + parity, 2000, 2)]
        assert all(a < b < 1 for a, b in itertools.pairwise(f))
    assert qn_correction(10**6) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        qn_correction(1)


@pytest.mark.parametrize("p", [10, 13])
def test_qn_is_unbiased_at_the_normal(p):
    # Monte Carlo, 200 000 normal samples of size p (seeded): the mean of Qn with the current
    # factors is 1 within 3 standard errors. At p = 10 the pre-2014 factor 10/13.8 is 0.6 % off,
    # about 9 standard errors, so this test tells the two tables apart.
    rng = np.random.default_rng(20240601 + p)
    n = 200_000
    x = rng.standard_normal((n, p))
    i, j = np.triu_indices(p, 1)
    h = p // 2 + 1
    k = h * (h - 1) // 2
    raw = QN_FACTOR * np.partition(np.abs(x[:, i] - x[:, j]), k - 1, axis=1)[:, k - 1]
    se = raw.std() / math.sqrt(n)
    assert abs(raw.mean() * qn_correction(p) - 1) < 3 * se * qn_correction(p)
    if p == 10:
        assert abs(raw.mean() * 10 / 13.8 - 1) > 6 * se
    # the vectorised raw value is qn's own d_(k) for one sample
    assert qn(x[0]) == pytest.approx(raw[0] * qn_correction(p), rel=1e-12)


def test_qn_constant_is_normal_consistency():
    # 2.2191 = 1 / (sqrt(2) * Phi^-1(5/8))
    assert 1 / (math.sqrt(2) * norm.ppf(5 / 8)) == pytest.approx(2.2191, abs=5e-5)


def test_scale_estimators_consistent_at_normal():
    rng = np.random.default_rng(7)
    x = rng.normal(10.0, 2.0, 2000)
    # each has SE below 0.06 at p = 2000 (MADe the worst, ~1.65/sqrt(2000) * 2 = 0.074 relative 3.7 %)
    for est in (made(x), niqr(x), qn(x)):
        assert est == pytest.approx(2.0, rel=0.1)


@settings(max_examples=100, deadline=None)
@given(values, st.floats(min_value=0.01, max_value=100), st.floats(min_value=-1e3, max_value=1e3))
def test_scale_estimators_equivariant(xs, a, b):
    x = np.asarray(xs)
    y = a * x + b
    tol = 1e-9 * (abs(b) + a * float(np.max(np.abs(x))) + 1.0)
    for f in (made, niqr, qn):
        assert f(y) == pytest.approx(a * f(x), abs=10 * tol)


# --- Algorithm S ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nu", "eta", "xi"),
    # ISO 13528:2022 Table C.2 (= ISO 5725-5:1998 Table 16), limit and adjustment factors
    [(1, 1.645, 1.097), (2, 1.517, 1.054), (3, 1.444, 1.039), (4, 1.395, 1.032), (5, 1.359, 1.027)],
)
def test_algorithm_s_factors_table(nu, eta, xi):
    e, x = algorithm_s_factors(nu)
    assert round(e, 3) == eta
    assert round(x, 3) == xi


def test_algorithm_s_hand():
    w = [1.0, 1.0, 1.0, 1.0, 10.0]
    eta, xi = algorithm_s_factors(1)
    # first step, hand computation: w* = 1, psi = eta = 1.64485 -> [1, 1, 1, 1, 1.64485];
    # xi * sqrt((4 + 2.70554) / 5) = 1.09680 * 1.15806 = 1.27017
    first = algorithm_s(w, 1, max_iter=1)
    assert first.scale == pytest.approx(xi * math.sqrt((4 + eta**2) / 5), rel=1e-12)
    assert first.scale == pytest.approx(1.27017, abs=1e-5)
    # fixed point while 10 stays clipped: s^2 = xi^2 (4 + eta^2 s^2) / 5
    # -> s = sqrt(4 xi^2 / (5 - xi^2 eta^2)) = sqrt(4.81193 / 1.74529) = 1.66045
    limit = math.sqrt(4 * xi**2 / (5 - xi**2 * eta**2))
    assert limit == pytest.approx(1.66045, abs=1e-5)
    tight = algorithm_s(w, 1, tol=1e-12, max_iter=1000)
    assert tight.converged
    assert tight.scale == pytest.approx(limit, rel=1e-9)
    # ISO's rule stops at the first step that leaves the third significant figure unchanged;
    # this slowly creeping sequence stops short of the fixed point (1.653 vs 1.660).
    iso = algorithm_s(w, 1)
    assert iso.converged and 1 < iso.iterations < 100
    before = algorithm_s(w, 1, max_iter=iso.iterations - 1).scale
    assert round(before, 2) == round(iso.scale, 2)  # third significant figure of 1.65
    assert abs(iso.scale - limit) < 0.01


def test_algorithm_s_degenerate_and_invalid():
    assert algorithm_s([0.0, 0.0, 0.0, 0.2], 2).scale == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        algorithm_s([0.1, -0.2, 0.3], 2)
    with pytest.raises(ValueError, match="nu"):
        algorithm_s([0.1, 0.2, 0.3], 0)
    with pytest.raises(ValueError, match="at least 3"):
        algorithm_s([0.1, 0.2], 1)
    with pytest.raises(ValueError, match="NaN"):
        algorithm_s([0.1, math.nan, 0.3], 1)


def test_algorithm_s_recovers_sigma_from_normal_sds():
    # SDs of 400 groups of 5 normal results (nu = 4) with sigma = 2
    rng = np.random.default_rng(11)
    groups = rng.normal(0.0, 2.0, (400, 5))
    w = groups.std(axis=1, ddof=1)
    r = algorithm_s(w, 4, tol=1e-10)
    assert r.scale == pytest.approx(2.0, rel=0.06)


# --- Hampel ----------------------------------------------------------------------------------


def test_hampel_hand():
    # hand computation, scale 1: at m = 3 the first five give psi = -1.5, -1, 0, 1, 1.5 (sum 0)
    # and 100 lies beyond 4.5 s, psi = 0; so m = 3 (median 3.5, mean 19.17)
    assert hampel([1, 2, 3, 4, 5, 100], scale=1.0) == pytest.approx(3.0, abs=1e-12)
    # x = [0, 0, 0, 4], scale 1: for m near 0, the 4 is in the descending part (3 < 4 - m < 4.5):
    # 3 * (-m) + (4.5 - (4 - m)) = 0 -> m = 0.25
    assert hampel([0, 0, 0, 4], scale=1.0) == pytest.approx(0.25, abs=1e-12)
    # scale 0 (more than half equal) returns the median
    assert hampel([1, 1, 1, 5], scale=0.0) == 1.0


@settings(max_examples=100, deadline=None)
@given(values, st.floats(min_value=0.01, max_value=100), st.floats(min_value=-1e3, max_value=1e3))
def test_hampel_equivariant_and_bounded(xs, a, b):
    x = np.asarray(xs)
    s = qn(x)
    assume(s > 0)
    m = hampel(x, scale=s)
    assert x.min() - 1e-9 <= m <= x.max() + 1e-9
    moved = hampel(a * x + b, scale=a * s)
    tol = 1e-7 * a * s + 1e-9 * (abs(b) + a * float(np.max(np.abs(x))))
    assert moved == pytest.approx(a * m + b, abs=tol)


def test_hampel_bimodal_takes_root_nearest_median():
    # hand computation: x = [0, 0, 0, 11.589, 11.589, 12.463]; Qn: h = 4, k = 6, the distances
    # sorted are 0, 0, 0, 0, 0.874, 0.874, ... -> s = 2.2191 * 0.874 * b_6 (0.61220) = 1.187358;
    # the median 5.7945 is more than 4.5 s = 5.343 from every value (no root there). Roots: 0
    # (the upper three are beyond 4.5 s, the zeros give psi = 0) and, between 11.589 and 12.463,
    # where the sum falls linearly from 0.7361 to -1.4722, (2 * 11.589 + 12.463) / 3 = 11.880.
    # 0 is nearer the median.
    x = [0.0, 0.0, 0.0, 11.589, 11.589, 12.463]
    assert qn(x) == pytest.approx(2.2191 * 0.874 * 0.61220, rel=1e-12)
    assert hampel(x) == 0.0
    assert hampel([3 * v for v in x]) == 0.0


def test_hampel_default_scale_and_errors():
    x = [9.8, 10.1, 10.0, 9.9, 10.2, 14.0]
    assert hampel(x) == pytest.approx(hampel(x, scale=qn(x)))
    with pytest.raises(ValueError, match="scale"):
        hampel(x, scale=-1.0)


# --- Algorithm A for many groups at once --------------------------------------------------------


def test_algorithm_a_groups_annex_e3_and_reference_trace():
    # ISO 13528:2022 Annex E, example E.3 (printed x* = 0.257, s* = 0.0395, u(x*) = 0.0085) as one
    # group beside the 12 results whose exact fixed point the independent trace gives.
    small = [0.251, 0.262, 0.249, 0.270, 0.231, 0.244, 0.258, 0.301, 0.190, 0.255, 0.266, 0.247]
    trace = _reference_trace(small, steps=400)
    r = algorithm_a_groups(ISO_E3 + small, ["E3"] * len(ISO_E3) + ["small"] * len(small), tol=1e-12)
    e3, sm = r.row(0, named=True), r.row(1, named=True)
    assert (e3["group"], e3["p"], e3["start"], e3["converged"]) == ("E3", 34, "made", True)
    assert round(e3["location"], 3) == 0.257
    assert round(e3["scale"], 4) == 0.0395
    assert round(e3["uncertainty"], 4) == 0.0085
    assert sm["location"] == pytest.approx(trace[-1][0], rel=1e-9)
    assert sm["scale"] == pytest.approx(trace[-1][1], rel=1e-9)


group_lists = st.lists(values, min_size=1, max_size=6)


@given(group_lists, st.randoms(use_true_random=False))
@settings(max_examples=150, deadline=None)
@example([[0.0, 0.001, 0.001, 0.001, 0.001, 0.001]], random.Random(0))
@pytest.mark.parametrize("tail", [0, robust._SCALAR_TAIL])
def test_algorithm_a_groups_is_algorithm_a_per_group(tail, groups, rnd):
    # Every group, in any input order, gets what the one-group function gives it: same start,
    # same number of update steps, same estimates (to the rounding of the sums). tail = 0 runs
    # every step as a vector step; the default leaves these few groups to the per-group loop.
    flat = [(f"g{i}", v) for i, g in enumerate(groups) for v in g]
    rnd.shuffle(flat)
    with mock.patch.object(robust, "_SCALAR_TAIL", tail):
        r = algorithm_a_groups([v for _, v in flat], [k for k, _ in flat], tol=1e-9, max_iter=400)
    assert r["group"].to_list() == sorted(f"g{i}" for i in range(len(groups)))
    for row in r.iter_rows(named=True):
        data = groups[int(row["group"][1:])]
        one = algorithm_a(data, tol=1e-9, max_iter=400)
        assert (row["p"], row["start"]) == (one.p, one.start)
        # The rounding of the data: a scale below it is zero for every purpose.
        tiny = 1e-12 * max(abs(v) for v in data)
        if one.scale > tiny:
            # Ties can leave a step's stopping test within rounding of its limit: one step apart.
            assert row["converged"] == one.converged
            assert abs(row["iterations"] - one.iterations) <= 1
        # else: more than half the values tied, s* shrank to the rounding of the data, where the
        # one-group function stops at a float's last bit and this one at exactly 0.
        assert abs(row["location"] - one.location) <= 1e-6 * one.scale + 1e-12 * abs(one.location) + tiny
        assert row["scale"] == pytest.approx(one.scale, rel=1e-6, abs=tiny)
        assert row["uncertainty"] == pytest.approx(one.uncertainty, rel=1e-6, abs=tiny)


def _many_groups(seed: int) -> list[list[float]]:
    # Groups like a national round's items: 3 to 70 results, levels over six orders of
    # magnitude, 2 % spread, a few gross outliers; some groups mostly tied (MADe = 0, the SD
    # start), one all equal (degenerate), one of two values (too few).
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(600):
        level = float(np.exp(rng.normal(0.0, 2.5)))
        v = level * (1.0 + rng.normal(0.0, 0.02, int(rng.integers(3, 71))))
        v = np.where(rng.random(v.size) < 0.05, v * rng.uniform(0.5, 1.6, v.size), v)
        out.append(v.tolist())
    for k in range(0, 600, 50):
        g = out[k]
        out[k] = [round(g[0], 6)] * (len(g) // 2 + 1) + g[len(g) // 2 + 1:]
    out[7] = [3.25] * 9
    out[8] = [1.0, 2.0]
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_algorithm_a_groups_vector_and_per_group_steps_agree(seed):
    # Many groups: the vector steps (with groups leaving as they converge), the per-group loop
    # and the one-group function all reach the same results. The vector and per-group steps
    # compute the same formulas in the same order, so they agree to the bit.
    groups = _many_groups(seed)
    keys = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    x = np.concatenate([np.asarray(g) for g in groups])
    order = np.random.default_rng(seed).permutation(x.size)
    runs = {}
    for tail in (0, robust._SCALAR_TAIL, 10**9):
        with mock.patch.object(robust, "_SCALAR_TAIL", tail):
            runs[tail] = algorithm_a_groups(x[order], keys[order], tol=1e-10, max_iter=2000)
    assert runs[0].equals(runs[robust._SCALAR_TAIL]) and runs[0].equals(runs[10**9])
    r = runs[0]
    assert r["group"].to_list() == list(range(len(groups)))
    assert r["start"].value_counts().sort("start").rows() == [
        ("degenerate", 1), ("made", 586), ("sd", 12), ("too_few", 1)]
    for row in r.iter_rows(named=True):
        if row["start"] == "too_few":
            continue
        one = algorithm_a(groups[row["group"]], tol=1e-10, max_iter=2000)
        assert (row["p"], row["start"], row["converged"]) == (one.p, one.start, one.converged)
        assert abs(row["iterations"] - one.iterations) <= 1
        tiny = 1e-12 * max(abs(v) for v in groups[row["group"]])
        assert abs(row["location"] - one.location) <= 1e-8 * one.scale + 1e-12 * abs(one.location) + tiny
        assert row["scale"] == pytest.approx(one.scale, rel=1e-8, abs=tiny)


def test_algorithm_a_groups_max_iter_and_empty():
    groups = _many_groups(2)[:40]
    keys = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    x = np.concatenate([np.asarray(g) for g in groups])
    for tail in (0, 10**9):
        with mock.patch.object(robust, "_SCALAR_TAIL", tail):
            r = algorithm_a_groups(x, keys, tol=1e-10, max_iter=3)
        stopped = 0
        for row in r.iter_rows(named=True):
            if row["start"] in ("too_few", "degenerate"):
                continue
            one = algorithm_a(groups[row["group"]], tol=1e-10, max_iter=3)
            assert (row["iterations"], row["converged"]) == (one.iterations, one.converged)
            stopped += (row["iterations"], row["converged"]) == (3, False)
            assert row["location"] == pytest.approx(one.location, rel=1e-12)
            assert row["scale"] == pytest.approx(one.scale, rel=1e-9)
        # Most groups need more than 3 steps: the limit, not convergence, stopped them.
        assert stopped > 30
    empty = algorithm_a_groups(np.array([]), np.array([], dtype=np.int64))
    assert empty.height == 0 and empty.columns[:3] == ["group", "location", "scale"]


def test_algorithm_a_groups_small_and_bad_input():
    r = algorithm_a_groups([1.0, 2.0, 5.0, 5.0, 5.0], [1, 1, 2, 2, 2])
    few, same = r.row(0, named=True), r.row(1, named=True)
    # Two values: no estimate, said so, not an error for the other groups.
    assert few["start"] == "too_few" and few["p"] == 2 and math.isnan(few["location"])
    assert (same["start"], same["location"], same["scale"], same["iterations"]) == ("degenerate", 5.0, 0.0, 0)
    with pytest.raises(ValueError, match="NaN"):
        algorithm_a_groups([1.0, float("nan"), 2.0], [1, 1, 1])
    with pytest.raises(ValueError, match="same length"):
        algorithm_a_groups([1.0, 2.0, 3.0], [1, 1])
