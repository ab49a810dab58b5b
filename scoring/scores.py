"""Performance scores of ISO 13528:2022 clause 9 and their classification.

Every score function broadcasts its arguments with numpy rules and returns an array of the
broadcast shape, or a Python ``float`` when every argument is a scalar.

Degenerate denominators follow IEEE/numpy semantics silently (no RuntimeWarning): a zero
denominator gives +-inf for a non-zero numerator and NaN for 0/0. NaN inputs give NaN. A
negative standard deviation or uncertainty is a data error and raises ValueError.

``classify`` maps scores to "satisfactory" / "questionable" / "unsatisfactory"; a NaN score maps
to "undetermined" (a score that cannot be computed is neither a pass nor a signal).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

__all__ = ["SCORE_KINDS", "classify", "en", "z", "z_prime", "zeta"]

SATISFACTORY = "satisfactory"
QUESTIONABLE = "questionable"
UNSATISFACTORY = "unsatisfactory"
UNDETERMINED = "undetermined"

# Accepted spellings of each score kind.
SCORE_KINDS = {
    "z": "z",
    "z_prime": "z_prime",
    "z'": "z_prime",
    "zprime": "z_prime",
    "zeta": "zeta",
    "ζ": "zeta",
    "en": "en",
    "En": "en",
    "E_n": "en",
}


def _arr(name: str, value: Any, *, nonnegative: bool = False) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    # min() < 0 is any(arr < 0) without a boolean array of the input's size (NaN passes both).
    if nonnegative and arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative (it is a standard deviation or uncertainty)")
    return arr


def _finish(result: np.ndarray) -> float | np.ndarray:
    return float(result) if np.ndim(result) == 0 else np.asarray(result, dtype=float)


def _ratio(num: np.ndarray, den: np.ndarray) -> float | np.ndarray:
    # num is always a fresh difference: divide into it when it has the result's shape rather
    # than allocate one more array of the input's size.
    with np.errstate(divide="ignore", invalid="ignore"):
        if isinstance(num, np.ndarray) and num.ndim and num.shape == np.broadcast_shapes(num.shape, np.shape(den)):
            return np.true_divide(num, den, out=num)
        return _finish(np.true_divide(num, den))


def _root_sum_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # sqrt(a^2 + b^2) with one array for the result instead of four temporaries. (np.hypot
    # would guard against overflow, which uncertainties never reach, at several times the cost.)
    total = np.square(a) + np.square(b)
    return np.sqrt(total, out=total) if isinstance(total, np.ndarray) else np.sqrt(total)


def z(x: Any, x_pt: Any, sigma_pt: Any) -> float | np.ndarray:
    """z = (x - x_pt) / sigma_pt (ISO 13528:2022 9.4)."""
    return _ratio(_arr("x", x) - _arr("x_pt", x_pt), _arr("sigma_pt", sigma_pt, nonnegative=True))


def z_prime(x: Any, x_pt: Any, sigma_pt: Any, u_pt: Any) -> float | np.ndarray:
    """z' = (x - x_pt) / sqrt(sigma_pt^2 + u(x_pt)^2) (ISO 13528:2022 9.5)."""
    s = _arr("sigma_pt", sigma_pt, nonnegative=True)
    u = _arr("u_pt", u_pt, nonnegative=True)
    return _ratio(_arr("x", x) - _arr("x_pt", x_pt), _root_sum_sq(s, u))


def zeta(x: Any, x_pt: Any, u_x: Any, u_pt: Any) -> float | np.ndarray:
    """zeta = (x - x_pt) / sqrt(u(x)^2 + u(x_pt)^2), standard uncertainties (ISO 13528:2022 9.6).

    For a retest pair pass the second lab's result as ``x_pt``: the score is antisymmetric,
    zeta(x1, x2, u1, u2) == -zeta(x2, x1, u2, u1).
    """
    u1 = _arr("u_x", u_x, nonnegative=True)
    u2 = _arr("u_pt", u_pt, nonnegative=True)
    return _ratio(_arr("x", x) - _arr("x_pt", x_pt), _root_sum_sq(u1, u2))


def en(x: Any, x_pt: Any, U_x: Any, U_pt: Any) -> float | np.ndarray:
    """En = (x - x_pt) / sqrt(U(x)^2 + U(x_pt)^2), expanded uncertainties (ISO 13528:2022 9.7).

    Antisymmetric in the two results like ``zeta``.
    """
    U1 = _arr("U_x", U_x, nonnegative=True)
    U2 = _arr("U_pt", U_pt, nonnegative=True)
    return _ratio(_arr("x", x) - _arr("x_pt", x_pt), _root_sum_sq(U1, U2))


def classify(
    score: Any, kind: str, *, en_boundary: Literal["iso", "inclusive"] = "iso"
) -> str | np.ndarray:
    """Classify scores (ISO 13528:2022 9.4-9.7).

    kind "z", "z_prime" (also "z'"), "zeta":
        |s| <= 2 satisfactory; 2 < |s| < 3 questionable; |s| >= 3 unsatisfactory.
    kind "en" (no questionable class):
        en_boundary="iso":       |En| < 1 satisfactory, |En| >= 1 unsatisfactory (9.7.2);
        en_boundary="inclusive": |En| <= 1 satisfactory, |En| > 1 unsatisfactory.
    NaN -> "undetermined"; +-inf -> "unsatisfactory".

    Returns a ``str`` for a scalar score, else a numpy unicode array of the same shape.
    """
    canonical = SCORE_KINDS.get(kind)
    if canonical is None:
        raise ValueError(f"unknown score kind {kind!r}; expected one of {sorted(set(SCORE_KINDS.values()))}")
    if en_boundary not in ("iso", "inclusive"):
        raise ValueError(f"en_boundary must be 'iso' or 'inclusive', got {en_boundary!r}")
    s = np.abs(np.asarray(score, dtype=float))
    if canonical == "en":
        ok = s < 1.0 if en_boundary == "iso" else s <= 1.0
        out = np.where(ok, SATISFACTORY, UNSATISFACTORY)
    else:
        out = np.where(s <= 2.0, SATISFACTORY, np.where(s < 3.0, QUESTIONABLE, UNSATISFACTORY))
    # NaN fails every comparison above and would land in "unsatisfactory"; mark it explicitly.
    out = np.where(np.isnan(s), UNDETERMINED, out).astype("<U14")
    return str(out) if out.ndim == 0 else out
