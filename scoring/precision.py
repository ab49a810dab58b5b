"""Method precision: sigma_pt from precision data, Horwitz, critical differences.

All functions are vectorised: arguments broadcast with numpy rules, and a result computed from
scalars only is returned as a Python ``float``. Nothing here reads files or global state.
The Horwitz function and the critical-difference factor live here only: ``horwitz_expr`` is the
polars form that scoring.pairs applies to whole columns, and ``horwitz`` evaluates that same
expression on arrays, so the two cannot drift apart.

Conventions that are choices (documented where they are made):

* Critical difference factor at 95 %: ISO 5725-6 §5.3 (and 4.1.4) uses the rounded 2.8 for
  1.96 * sqrt(2) = 2.7719. ``critical_difference(..., prob=0.95)`` uses 2.8 exactly so results
  match the standard's tables; any other probability uses ``norm.ppf((1 + prob) / 2) * sqrt(2)``
  (so prob = 0.9500001 gives 2.772, not 2.8: the 0.95 case is the standard's published constant).
* Horwitz repeatability: the Horwitz function predicts sigma_R only. ``repeatability_at`` for a
  Horwitz item returns ``horwitz_r_ratio * sigma_R`` with ratio 0.5 by default (collaborative
  studies typically give sigma_r / sigma_R between 1/2 and 2/3; 1/2 is the conservative choice for
  the critical difference because it subtracts less repeatability). The item's
  ``repeatability_sd`` / ``reproducibility_sd`` are ignored for Horwitz items, as
  scoring/schema.py specifies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import norm

__all__ = [
    "CD_FACTOR_95",
    "HORWITZ_R_RATIO",
    "critical_difference",
    "critical_difference_factor",
    "horwitz",
    "horwitz_expr",
    "repeatability_at",
    "reproducibility_at",
    "sigma_pt_from_precision",
]

# ISO 5725-6:1994 §4.1.4 / §5.3: the published rounded value of 1.96 * sqrt(2).
CD_FACTOR_95 = 2.8

# sigma_r / sigma_R assumed for Horwitz items (module docstring).
HORWITZ_R_RATIO = 0.5

# Thompson (2000), Analyst 125:385-386, modified Horwitz function breakpoints (mass fractions).
_HORWITZ_LOW = 1.2e-7
_HORWITZ_HIGH = 0.138

_PRECISION_MODELS = ("absolute", "relative", "horwitz")


def _finish(result: np.ndarray) -> float | np.ndarray:
    result = np.asarray(result, dtype=float)
    return float(result) if result.ndim == 0 else result


def _radicand_check(radicand: np.ndarray, what: str) -> None:
    # Negative only when sigma_r exceeds sigma_R (inconsistent precision data); NaN passes through.
    bad = radicand < 0
    if np.any(bad):
        raise ValueError(
            f"{what}: repeatability SD exceeds reproducibility SD for {int(np.sum(bad))} value(s); "
            "precision data are inconsistent (sigma_r must not exceed sigma_R)"
        )


def _weighted_sr2(sr: np.ndarray, weight: np.ndarray) -> np.ndarray:
    # With single results the weight is exactly 0 and sigma_r drops out; a missing (NaN) sigma_r
    # must not turn the answer into NaN then (NaN * 0 is NaN).
    return np.where(weight == 0.0, 0.0, sr**2 * weight)


def _nonnegative(name: str, value: np.ndarray) -> None:
    if np.any(value < 0):
        raise ValueError(f"{name} must be non-negative")


def sigma_pt_from_precision(sigma_R: Any, sigma_r: Any, m: Any) -> float | np.ndarray:
    """Standard deviation for proficiency assessment from a precision experiment.

    ISO 13528:2022 8.5: sigma_pt = sqrt(sigma_R^2 - sigma_r^2 * (1 - 1/m)) where m is the number
    of replicate measurements each participant averages. m = 1 gives sigma_R.

    Raises ValueError for negative SDs, m < 1, or sigma_r > sigma_R (negative radicand).
    NaN inputs give NaN, except that sigma_r is not needed (and may be NaN) when m = 1.
    """
    sR = np.asarray(sigma_R, dtype=float)
    sr = np.asarray(sigma_r, dtype=float)
    mm = np.asarray(m, dtype=float)
    _nonnegative("sigma_R", sR)
    _nonnegative("sigma_r", sr)
    if np.any(mm < 1):
        raise ValueError("m (number of replicates) must be >= 1")
    radicand = sR**2 - _weighted_sr2(sr, 1.0 - 1.0 / mm)
    _radicand_check(radicand, "sigma_pt_from_precision")
    return _finish(np.sqrt(radicand))


def horwitz_expr(c: pl.Expr) -> pl.Expr:
    """The Horwitz function (see ``horwitz``) as a polars expression of a mass-fraction column.

    No validation: null gives null, NaN gives NaN, and values outside [0, 1] are evaluated by the
    same pieces (a vectorised pass over many items must not fail on one bad scale; callers
    decide which rows use the result).
    """
    return (
        pl.when(c < _HORWITZ_LOW)
        .then(0.22 * c)
        .when(c <= _HORWITZ_HIGH)
        .then(0.02 * c.pow(0.8495))
        .otherwise(0.01 * c.sqrt())
    )


def horwitz(c: Any) -> float | np.ndarray:
    """Predicted reproducibility SD (as a mass fraction) at mass fraction ``c``.

    Horwitz function with Thompson's (2000) modification:
        sigma_R = 0.22 c                for c < 1.2e-7
        sigma_R = 0.02 c^0.8495         for 1.2e-7 <= c <= 0.138
        sigma_R = 0.01 c^0.5            for c > 0.138
    ``c`` is dimensionless (1 mg/kg = 1e-6). c = 0 gives 0; NaN gives NaN; c < 0 raises
    ValueError. The pieces meet within 0.1 % at both breakpoints (not exactly: the constants are
    rounded in the source).
    """
    cc = np.asarray(c, dtype=float)
    if np.any(cc < 0):
        raise ValueError("horwitz: mass fraction c must be non-negative")
    if np.any(cc > 1):
        raise ValueError("horwitz: mass fraction c must be <= 1 (check horwitz_scale / units)")
    col = pl.Series("c", cc.ravel(), dtype=pl.Float64)
    out = col.to_frame().select(horwitz_expr(pl.col("c"))).to_series().to_numpy()
    return _finish(out.reshape(cc.shape))


def critical_difference_factor(prob: float = 0.95) -> float:
    """f(prob) * sqrt(2): 2.8 for prob = 0.95 (ISO 5725-6), else norm.ppf((1+prob)/2) * sqrt(2)."""
    if not (0.0 < prob < 1.0) or math.isnan(prob):
        raise ValueError("prob must be in (0, 1)")
    if prob == 0.95:
        return CD_FACTOR_95
    return float(norm.ppf((1.0 + prob) / 2.0) * math.sqrt(2.0))


def critical_difference(
    sigma_R: Any, sigma_r: Any, n1: Any = 1, n2: Any = 1, prob: float = 0.95
) -> float | np.ndarray:
    """Critical difference between two laboratories' final results (means of n1 and n2 results).

    ISO 5725-6:1994 §5.3 (two laboratories):
        CD = f * sqrt(sigma_R^2 - sigma_r^2 * (1 - 1/(2 n1) - 1/(2 n2)))
    with f = 2.8 at 95 % (see module docstring for other probabilities). For n1 = n2 = 1 the
    bracket vanishes and CD = f * sigma_R (the reproducibility limit R); more replicates shrink CD
    towards f * sqrt(sigma_R^2 - sigma_r^2).

    Raises ValueError for negative SDs, n < 1, or sigma_r > sigma_R when replicates make the
    radicand negative. NaN inputs (e.g. missing precision data) give NaN, except that a NaN
    sigma_r is harmless for n1 = n2 = 1, where it drops out of the formula.
    """
    factor = critical_difference_factor(prob)
    sR = np.asarray(sigma_R, dtype=float)
    sr = np.asarray(sigma_r, dtype=float)
    a = np.asarray(n1, dtype=float)
    b = np.asarray(n2, dtype=float)
    _nonnegative("sigma_R", sR)
    _nonnegative("sigma_r", sr)
    if np.any(a < 1) or np.any(b < 1):
        raise ValueError("n1 and n2 (replicates) must be >= 1")
    radicand = sR**2 - _weighted_sr2(sr, 1.0 - 1.0 / (2.0 * a) - 1.0 / (2.0 * b))
    _radicand_check(radicand, "critical_difference")
    return _finish(factor * np.sqrt(radicand))


def _field(item: Any, name: str) -> Any:
    if isinstance(item, Mapping):
        return item.get(name)
    return getattr(item, name, None)


def _as_float(value: Any) -> np.ndarray:
    # None (a null column value or a missing field) becomes NaN so the result is NaN, not an error.
    if value is None:
        return np.asarray(np.nan)
    arr = np.asarray(value)
    if arr.dtype == object:
        arr = np.array([np.nan if v is None else v for v in arr.ravel()], dtype=float).reshape(arr.shape)
    return arr.astype(float)


def _models(item: Any) -> np.ndarray:
    model = _field(item, "precision_model")
    if model is None:
        raise ValueError("item has no precision_model")
    arr = np.asarray(model, dtype=object)
    unknown = {m for m in arr.ravel().tolist() if m not in _PRECISION_MODELS}
    if unknown:
        raise ValueError(f"unknown precision_model {sorted(map(str, unknown))}; expected {_PRECISION_MODELS}")
    return arr


def _sd_at(level: Any, item: Any, sd_name: str, horwitz_factor: float) -> float | np.ndarray:
    lv = np.asarray(level, dtype=float)
    models = _models(item)
    sd = _as_float(_field(item, sd_name))
    scale = _as_float(_field(item, "horwitz_scale"))
    is_h = models == "horwitz"
    if np.any(is_h):
        bad_scale = is_h & ~(scale > 0)
        if np.any(bad_scale):
            raise ValueError("horwitz precision model needs a positive horwitz_scale")
    with np.errstate(invalid="ignore", divide="ignore"):
        # Only Horwitz rows reach horwitz(); the others get a dummy 0 so bad scales there are moot.
        c = np.where(is_h, np.abs(lv) * np.where(is_h, scale, 0.0), 0.0)
        h = np.asarray(horwitz(c)) / np.where(is_h, scale, 1.0)
        out = np.where(
            models == "absolute",
            sd * np.ones_like(lv),
            np.where(models == "relative", sd * np.abs(lv), horwitz_factor * h),
        )
    return _finish(np.asarray(out, dtype=float))


def reproducibility_at(level: Any, item: Any) -> float | np.ndarray:
    """Reproducibility SD sigma_R of a test item at ``level`` (in the item's unit).

    ``item`` is a mapping or an object with ``precision_model`` ("absolute" | "relative" |
    "horwitz"), ``reproducibility_sd``, ``repeatability_sd`` and ``horwitz_scale`` (see
    scoring/schema.py). Each field may be a scalar or an array broadcasting against ``level``
    (e.g. whole columns of the pair frame), so one call serves many items.

    * absolute: reproducibility_sd (independent of level);
    * relative: reproducibility_sd * |level|;
    * horwitz: horwitz(|level| * horwitz_scale) / horwitz_scale (back in the item's unit).

    A missing (None / NaN) SD or level gives NaN. Unknown models raise ValueError, as does a
    Horwitz item without a positive horwitz_scale.
    """
    return _sd_at(level, item, "reproducibility_sd", 1.0)


def repeatability_at(
    level: Any, item: Any, *, horwitz_r_ratio: float = HORWITZ_R_RATIO
) -> float | np.ndarray:
    """Repeatability SD sigma_r of a test item at ``level``; see ``reproducibility_at``.

    For Horwitz items sigma_r = horwitz_r_ratio * sigma_R (0.5 by default, module docstring).
    """
    if not (0.0 <= horwitz_r_ratio <= 1.0):
        raise ValueError("horwitz_r_ratio must be in [0, 1]")
    return _sd_at(level, item, "repeatability_sd", horwitz_r_ratio)
