"""Tests of scoring.precision (sigma_pt, Horwitz, critical differences, item precision)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import msgspec
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from scoring.precision import (
    CD_FACTOR_95,
    critical_difference,
    critical_difference_factor,
    horwitz,
    horwitz_expr,
    repeatability_at,
    reproducibility_at,
    sigma_pt_from_precision,
)

sd = st.floats(min_value=1e-6, max_value=1e3, allow_nan=False, allow_infinity=False)
frac = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


# --- sigma_pt (ISO 13528:2022 8.5) ------------------------------------------------------------


def test_sigma_pt_hand():
    # hand computation: sqrt(0.5^2 - 0.3^2 * (1 - 1/2)) = sqrt(0.25 - 0.045) = sqrt(0.205) = 0.452769...
    assert sigma_pt_from_precision(0.5, 0.3, 2) == pytest.approx(math.sqrt(0.205), rel=1e-12)
    assert sigma_pt_from_precision(0.5, 0.3, 2) == pytest.approx(0.4527693, abs=1e-7)
    # m = 1: a single result per participant, sigma_pt = sigma_R
    assert sigma_pt_from_precision(0.5, 0.3, 1) == pytest.approx(0.5, rel=1e-12)


def test_sigma_pt_vectorised_and_errors():
    out = sigma_pt_from_precision(np.array([0.5, 1.0]), 0.3, np.array([1, 4]))
    # hand computation: [0.5, sqrt(1 - 0.09 * 0.75)] = [0.5, sqrt(0.9325)]
    np.testing.assert_allclose(out, [0.5, math.sqrt(0.9325)])
    with pytest.raises(ValueError, match="inconsistent"):
        sigma_pt_from_precision(0.3, 0.5, 2)
    with pytest.raises(ValueError, match="m"):
        sigma_pt_from_precision(0.5, 0.3, 0)
    with pytest.raises(ValueError, match="non-negative"):
        sigma_pt_from_precision(-0.5, 0.3, 1)


# --- Horwitz (Thompson 2000 modification) -----------------------------------------------------


def test_horwitz_one_ppm_is_16_percent():
    # Horwitz: at 1 mg/kg (c = 1e-6) the predicted RSD_R is 2^(1 - 0.5 log10 c) % = 2^4 % = 16 %;
    # 0.02 * (1e-6)^0.8495 / 1e-6 = 0.02 * 10^0.903 = 0.15997
    assert horwitz(1e-6) / 1e-6 == pytest.approx(0.16, abs=5e-4)


def test_horwitz_branches_hand():
    # hand computation, low branch: 0.22 * 1e-8 = 2.2e-9
    assert horwitz(1e-8) == pytest.approx(2.2e-9, rel=1e-12)
    # high branch: 0.01 * sqrt(0.5) = 0.0070711
    assert horwitz(0.5) == pytest.approx(0.01 * math.sqrt(0.5), rel=1e-12)
    # c = 1 (pure substance): 0.01
    assert horwitz(1.0) == pytest.approx(0.01, rel=1e-12)
    # the breakpoints belong to the middle branch: 0.02 * (1.2e-7)^0.8495 = 2.64116e-8
    assert horwitz(1.2e-7) == pytest.approx(0.02 * 1.2e-7**0.8495, rel=1e-12)
    assert horwitz(0.138) == pytest.approx(0.02 * 0.138**0.8495, rel=1e-12)
    assert horwitz(0.0) == 0.0


@pytest.mark.parametrize("c", [1e-5, 1e-4, 1e-3, 1e-2, 0.1])
def test_horwitz_middle_matches_classic_form(c):
    # Horwitz (1982): RSD_R(%) = 2^(1 - 0.5 log10 c); 0.8495 is 1 - 0.5 log10(2) = 0.849485
    # rounded, so the two differ by c^(1.5e-5): at most 10^(-5 * 1.5e-5) - 1 = -1.7e-4 here.
    classic = c * 2 ** (1 - 0.5 * math.log10(c)) / 100
    assert horwitz(c) == pytest.approx(classic, rel=2.5e-4)


@pytest.mark.parametrize("breakpoint", [1.2e-7, 0.138])
def test_horwitz_nearly_continuous_at_breakpoints(breakpoint):
    below = horwitz(breakpoint * (1 - 1e-12))
    above = horwitz(breakpoint * (1 + 1e-12))
    # hand computation: 0.22 * 1.2e-7 = 2.640e-8 vs 2.6412e-8 (0.04 %); at 0.138:
    # 3.7184e-3 vs 0.01 * sqrt(0.138) = 3.7148e-3 (0.1 %): close but, with rounded constants, not equal.
    assert abs(above - below) / below < 1.5e-3
    assert above != below


def test_horwitz_vectorised_nan_and_errors():
    out = horwitz(np.array([1e-8, 1e-6, math.nan]))
    assert out.shape == (3,)
    assert math.isnan(out[2])
    with pytest.raises(ValueError, match="non-negative"):
        horwitz(-1e-6)
    with pytest.raises(ValueError, match="<= 1"):
        horwitz(2.0)


def test_horwitz_expr_on_columns_never_raises():
    # the polars form used on whole pair frames: hand values as in test_horwitz_branches_hand,
    # null stays null, and values horwitz() rejects are evaluated rather than raising
    # (0.01 * sqrt(4) = 0.02; 0.22 * -1e-6 = -2.2e-7).
    c = pl.Series("c", [1e-8, 0.5, None, 4.0, -1e-6], dtype=pl.Float64)
    out = c.to_frame().select(horwitz_expr(pl.col("c"))).to_series().to_list()
    assert out[0] == pytest.approx(2.2e-9, rel=1e-12)
    assert out[1] == pytest.approx(0.01 * math.sqrt(0.5), rel=1e-12)
    assert out[2] is None
    assert out[3] == pytest.approx(0.02, rel=1e-12)
    assert out[4] == pytest.approx(-2.2e-7, rel=1e-12)
    # 2-D input keeps its shape through the column round trip
    grid = np.array([[1e-6, 1e-3], [0.2, 1e-9]])
    assert horwitz(grid).shape == (2, 2)
    assert horwitz(grid)[1, 0] == pytest.approx(0.01 * math.sqrt(0.2), rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1.0), st.floats(min_value=1e-12, max_value=1.0))
def test_horwitz_monotone(c1, c2):
    lo, hi = sorted((c1, c2))
    assert horwitz(lo) <= horwitz(hi)


# --- critical difference (ISO 5725-6:1994 §5.3) ------------------------------------------------


def test_cd_hand():
    # hand computation: n1 = n2 = 2, sigma_R = 1, sigma_r = 0.5:
    # 2.8 * sqrt(1 - 0.25 * (1 - 1/4 - 1/4)) = 2.8 * sqrt(0.875) = 2.8 * 0.935414 = 2.619160
    assert critical_difference(1.0, 0.5, 2, 2) == pytest.approx(2.8 * math.sqrt(0.875), rel=1e-12)
    assert critical_difference(1.0, 0.5, 2, 2) == pytest.approx(2.619160, abs=1e-6)
    # single results: the reproducibility limit R = 2.8 sigma_R
    assert critical_difference(0.7, 0.3) == pytest.approx(1.96, rel=1e-12)
    # unequal replicates, n1 = 1, n2 = 3: 2.8 * sqrt(1 - 0.25 * (1 - 1/2 - 1/6)) = 2.8 * sqrt(11/12)
    assert critical_difference(1.0, 0.5, 1, 3) == pytest.approx(2.8 * math.sqrt(11 / 12), rel=1e-12)


def test_cd_factor():
    # ISO 5725-6 uses the rounded 2.8 at 95 %, not 1.96 * sqrt(2) = 2.7719
    assert critical_difference_factor(0.95) == CD_FACTOR_95 == 2.8
    # other probabilities: z_(1+P)/2 * sqrt(2); 99 %: 2.5758 * 1.41421 = 3.6428
    assert critical_difference_factor(0.99) == pytest.approx(3.6428, abs=1e-4)
    assert critical_difference(1.0, 0.5, prob=0.99) == pytest.approx(norm.ppf(0.995) * math.sqrt(2), rel=1e-12)
    for bad in (0.0, 1.0, 1.5, math.nan):
        with pytest.raises(ValueError):
            critical_difference_factor(bad)


@settings(max_examples=200, deadline=None)
@given(sd, frac)
def test_cd_single_results_is_2_8_sigma_R(sigma_R, ratio):
    assert critical_difference(sigma_R, ratio * sigma_R) == pytest.approx(2.8 * sigma_R, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(sd, st.floats(min_value=0.01, max_value=1.0), st.integers(1, 20), st.integers(1, 20))
def test_cd_decreases_with_replicates(sigma_R, ratio, n1, n2):
    sigma_r = ratio * sigma_R
    base = critical_difference(sigma_R, sigma_r, n1, n2)
    assert critical_difference(sigma_R, sigma_r, n1 + 1, n2) < base
    assert critical_difference(sigma_R, sigma_r, n1, n2 + 1) < base
    # bounded below by the limit for infinitely many replicates
    assert base >= 2.8 * math.sqrt(sigma_R**2 - sigma_r**2) * (1 - 1e-12)
    # symmetric in the two labs
    assert critical_difference(sigma_R, sigma_r, n2, n1) == pytest.approx(base, rel=1e-12)


def test_cd_vectorised_and_errors():
    out = critical_difference(np.array([1.0, 2.0]), np.array([0.5, 1.0]), np.array([1, 2]), 2)
    # hand computation: [2.8 * sqrt(1 - 0.25 * 0.25), 2.8 * sqrt(4 - 1 * 0.5)]
    np.testing.assert_allclose(out, [2.8 * math.sqrt(0.9375), 2.8 * math.sqrt(3.5)])
    assert math.isnan(critical_difference(math.nan, 0.5))
    # single results need no sigma_r: a missing one must not poison the result
    assert critical_difference(1.0, math.nan) == pytest.approx(2.8)
    assert sigma_pt_from_precision(1.0, math.nan, 1) == pytest.approx(1.0)
    assert math.isnan(critical_difference(1.0, math.nan, 2, 1))
    with pytest.raises(ValueError, match="inconsistent"):
        critical_difference(0.5, 1.0, 10, 10)
    with pytest.raises(ValueError, match=">= 1"):
        critical_difference(1.0, 0.5, 0, 1)
    with pytest.raises(ValueError, match="non-negative"):
        critical_difference(1.0, -0.5)


# --- precision of an item at a level ----------------------------------------------------------


def test_absolute_and_relative_items():
    absolute = {"precision_model": "absolute", "reproducibility_sd": 0.2, "repeatability_sd": 0.1}
    assert reproducibility_at(5.0, absolute) == pytest.approx(0.2)
    np.testing.assert_allclose(reproducibility_at(np.array([1.0, 50.0]), absolute), [0.2, 0.2])
    assert repeatability_at(5.0, absolute) == pytest.approx(0.1)
    relative = SimpleNamespace(
        precision_model="relative", reproducibility_sd=0.05, repeatability_sd=0.02, horwitz_scale=None
    )
    # hand computation: 0.05 * |-40| = 2.0 and 0.02 * 40 = 0.8
    assert reproducibility_at(-40.0, relative) == pytest.approx(2.0)
    assert repeatability_at(40.0, relative) == pytest.approx(0.8)


def test_horwitz_item():
    class Item(msgspec.Struct, frozen=True):
        precision_model: str
        repeatability_sd: float | None
        reproducibility_sd: float | None
        horwitz_scale: float | None

    # level in mg/kg, 1 mg/kg = 1e-6 mass fraction
    item = Item("horwitz", 99.0, 99.0, 1e-6)
    # hand computation: sigma_R(1 mg/kg) = 0.02 * (1e-6)^0.8495 / 1e-6 = 0.15997 mg/kg; the item's
    # own SDs (99) are ignored for the Horwitz model.
    assert reproducibility_at(1.0, item) == pytest.approx(0.02 * 1e-6**0.8495 / 1e-6, rel=1e-12)
    assert reproducibility_at(1.0, item) == pytest.approx(0.15997, abs=1e-5)
    assert repeatability_at(1.0, item) == pytest.approx(0.5 * reproducibility_at(1.0, item), rel=1e-12)
    assert repeatability_at(1.0, item, horwitz_r_ratio=0.66) == pytest.approx(
        0.66 * reproducibility_at(1.0, item), rel=1e-12
    )
    np.testing.assert_allclose(
        reproducibility_at(np.array([1.0, 100.0]), item), horwitz(np.array([1e-6, 1e-4])) / 1e-6
    )


def test_column_wise_items():
    # Whole columns of the pair frame at once, nulls included.
    item = {
        "precision_model": np.array(["absolute", "relative", "horwitz", "relative"], dtype=object),
        "reproducibility_sd": np.array([0.1, 0.05, np.nan, np.nan]),
        "repeatability_sd": [0.05, None, None, 0.01],
        "horwitz_scale": np.array([np.nan, np.nan, 1e-6, np.nan]),
    }
    level = np.array([2.0, 2.0, 2.0, 2.0])
    sR = reproducibility_at(level, item)
    sr = repeatability_at(level, item)
    np.testing.assert_allclose(sR[:3], [0.1, 0.1, horwitz(2e-6) / 1e-6])
    assert math.isnan(sR[3])
    np.testing.assert_allclose(sr[[0, 2, 3]], [0.05, 0.5 * horwitz(2e-6) / 1e-6, 0.02])
    assert math.isnan(sr[1])


def test_item_errors():
    with pytest.raises(ValueError, match="unknown precision_model"):
        reproducibility_at(1.0, {"precision_model": "magic", "reproducibility_sd": 1.0})
    with pytest.raises(ValueError, match="no precision_model"):
        reproducibility_at(1.0, {"reproducibility_sd": 1.0})
    with pytest.raises(ValueError, match="horwitz_scale"):
        reproducibility_at(1.0, {"precision_model": "horwitz"})
    with pytest.raises(ValueError, match="horwitz_r_ratio"):
        repeatability_at(1.0, {"precision_model": "absolute", "repeatability_sd": 1.0}, horwitz_r_ratio=2.0)
