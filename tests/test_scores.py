"""Tests of scoring.scores (ISO 13528:2022 clause 9 scores and their classification)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.scores import classify, en, z, z_prime, zeta

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


# --- reference values (hand computations) -------------------------------------------------


def test_z_hand():
    # hand computation: (10.5 - 10) / 0.25 = 2.0
    assert z(10.5, 10.0, 0.25) == pytest.approx(2.0, abs=1e-12)
    # (9.1 - 10) / 0.3 = -3.0
    assert z(9.1, 10.0, 0.3) == pytest.approx(-3.0, abs=1e-12)


def test_z_prime_hand():
    # hand computation: (11 - 10) / sqrt(0.3^2 + 0.4^2) = 1 / 0.5 = 2.0
    assert z_prime(11.0, 10.0, 0.3, 0.4) == pytest.approx(2.0, abs=1e-12)
    # u_pt = 0 reduces z' to z
    assert z_prime(10.7, 10.0, 0.35, 0.0) == pytest.approx(z(10.7, 10.0, 0.35), abs=1e-12)


def test_zeta_hand():
    # hand computation: (12 - 10) / sqrt(0.6^2 + 0.8^2) = 2 / 1 = 2.0
    assert zeta(12.0, 10.0, 0.6, 0.8) == pytest.approx(2.0, abs=1e-12)


def test_en_hand():
    # hand computation: (1.3 - 1.0) / sqrt(0.3^2 + 0.4^2) = 0.3 / 0.5 = 0.6
    assert en(1.3, 1.0, 0.3, 0.4) == pytest.approx(0.6, abs=1e-12)
    # expanded U = 2u gives En = zeta / 2
    assert en(12.0, 10.0, 1.2, 1.6) == pytest.approx(zeta(12.0, 10.0, 0.6, 0.8) / 2, abs=1e-12)


# --- shapes and types --------------------------------------------------------------------------


def test_scalar_in_python_float_out():
    for value in (z(1.0, 0.0, 1.0), z_prime(1, 0, 1, 1), zeta(1, 0, 1, 1), en(1, 0, 1, 1)):
        assert type(value) is float


def test_broadcasting_shapes():
    x = np.array([[1.0], [2.0]])  # (2, 1)
    x_pt = np.array([0.0, 0.5, 1.0])  # (3,)
    out = z(x, x_pt, 0.5)
    assert out.shape == (2, 3)
    # row x = 1: (1 - 0, 1 - 0.5, 1 - 1) / 0.5; row x = 2: (2, 1.5, 1) / 0.5
    np.testing.assert_allclose(out, [[2.0, 1.0, 0.0], [4.0, 3.0, 2.0]])
    out = en(np.array([1.0, 2.0, 3.0]), 2.0, np.array([0.3, 0.3, 0.3]), 0.4)
    np.testing.assert_allclose(out, [-2.0, 0.0, 2.0])


def test_zero_denominator_follows_ieee_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert z(1.0, 0.0, 0.0) == math.inf
        assert z(-1.0, 0.0, 0.0) == -math.inf
        assert math.isnan(z(0.0, 0.0, 0.0))
        out = en(np.array([1.0, 0.0, -1.0]), 0.0, 0.0, 0.0)
        assert out[0] == math.inf and math.isnan(out[1]) and out[2] == -math.inf
        assert zeta(2.0, 1.0, 0.0, 0.0) == math.inf
        assert z_prime(2.0, 1.0, 0.0, 0.0) == math.inf


def test_nan_propagates():
    assert math.isnan(en(math.nan, 1.0, 0.1, 0.1))
    assert math.isnan(zeta(1.0, 1.0, math.nan, 0.1))


@pytest.mark.parametrize(
    "call",
    [
        lambda: z(1.0, 0.0, -1.0),
        lambda: z_prime(1.0, 0.0, 1.0, -0.1),
        lambda: zeta(1.0, 0.0, -0.1, 0.1),
        lambda: en(1.0, 0.0, 0.1, np.array([0.1, -0.1])),
    ],
)
def test_negative_uncertainty_raises(call):
    with pytest.raises(ValueError, match="non-negative"):
        call()


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(finite, finite, positive, positive)
def test_en_zeta_antisymmetric(x1, x2, u1, u2):
    assert en(x1, x2, u1, u2) == -en(x2, x1, u2, u1)
    assert zeta(x1, x2, u1, u2) == -zeta(x2, x1, u2, u1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-50, max_value=50, allow_nan=False), min_size=1, max_size=20))
def test_classify_en_never_questionable_and_boundaries_ordered(scores):
    arr = np.asarray(scores)
    iso = classify(arr, "en")
    inclusive = classify(arr, "en", en_boundary="inclusive")
    assert not np.any(iso == "questionable")
    # The inclusive convention is never stricter than ISO's.
    assert not np.any((inclusive == "unsatisfactory") & (iso == "satisfactory"))
    np.testing.assert_array_equal(iso == "satisfactory", np.abs(arr) < 1.0)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-10, max_value=10, allow_nan=False))
def test_classify_z_matches_definition(s):
    expected = "satisfactory" if abs(s) <= 2 else ("questionable" if abs(s) < 3 else "unsatisfactory")
    for kind in ("z", "z_prime", "zeta"):
        assert classify(s, kind) == expected


# --- classification boundaries (ISO 13528:2022 9.4.1, 9.7.2) ----------------------------------


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0.0, "satisfactory"),
        (2.0, "satisfactory"),
        (-2.0, "satisfactory"),
        (np.nextafter(2.0, 3.0), "questionable"),
        (2.5, "questionable"),
        (np.nextafter(3.0, 2.0), "questionable"),
        (3.0, "unsatisfactory"),
        (-3.0, "unsatisfactory"),
        (math.inf, "unsatisfactory"),
        (-math.inf, "unsatisfactory"),
        (math.nan, "undetermined"),
    ],
)
@pytest.mark.parametrize("kind", ["z", "z_prime", "z'", "zeta"])
def test_classify_z_boundaries(score, expected, kind):
    assert classify(score, kind) == expected


@pytest.mark.parametrize(
    ("score", "iso", "inclusive"),
    [
        (0.0, "satisfactory", "satisfactory"),
        (np.nextafter(1.0, 0.0), "satisfactory", "satisfactory"),
        (1.0, "unsatisfactory", "satisfactory"),
        (-1.0, "unsatisfactory", "satisfactory"),
        (np.nextafter(1.0, 2.0), "unsatisfactory", "unsatisfactory"),
        (5.0, "unsatisfactory", "unsatisfactory"),
        (math.nan, "undetermined", "undetermined"),
    ],
)
def test_classify_en_boundaries(score, iso, inclusive):
    assert classify(score, "en") == iso
    assert classify(score, "en", en_boundary="iso") == iso
    assert classify(score, "en", en_boundary="inclusive") == inclusive


def test_classify_shapes_and_types():
    assert type(classify(1.0, "z")) is str
    out = classify(np.array([[0.5, 2.5], [3.5, math.nan]]), "z")
    assert out.shape == (2, 2)
    np.testing.assert_array_equal(
        out, [["satisfactory", "questionable"], ["unsatisfactory", "undetermined"]]
    )
    assert classify([0.5, 1.5], "En").tolist() == ["satisfactory", "unsatisfactory"]


def test_classify_rejects_unknown_kind_and_boundary():
    with pytest.raises(ValueError, match="unknown score kind"):
        classify(1.0, "t")
    with pytest.raises(ValueError, match="en_boundary"):
        classify(1.0, "en", en_boundary="loose")  # type: ignore[arg-type]
