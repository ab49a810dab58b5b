"""Score original/retest (and arbitration) pairs: one row per test item on one sample.

``score_pairs(pairs, policy)`` takes a LazyFrame with the columns of
``scoring.schema.PAIR_INPUT_SCHEMA`` and returns it lazily with the columns of
``PAIR_SCORE_SCHEMA`` added (DOMAIN.md §3; ISO 13528:2022 clause 9; ISO 5725-6 §5.3). Everything
is a vectorised polars expression; nothing is collected here.

Conventions (the choices the domain brief leaves open, decided here):

* **Side value.** A side is *numeric* when its value is non-null, it is not censored and the item
  is not qualitative; *censored* when ``censored`` is true (its number, if any, is ignored: the
  censoring limit is ``censor_limit``, falling back to the item's ``lod``). A censored value is
  never replaced by a number.
* **level** is the mean of the numeric sides of the pair (both numeric: their mean; one numeric:
  that one, whether the other is censored or missing); null when no side is numeric (both
  censored, qualitative, missing).
* **Precision at the level.** ``absolute``: the item's sd; ``relative``: sd * |level|;
  ``horwitz``: sigma_R = H(|level| * horwitz_scale) / horwitz_scale with H the Horwitz function
  (DOMAIN.md §3: 0.22c for c < 1.2e-7; 0.02c^0.8495 for c <= 0.138; 0.01c^0.5 above) and
  sigma_r = sigma_R / 2 (Horwitz gives no repeatability; r/R ≈ 1/2 to 2/3 is the usual ratio in
  collaborative studies, 1/2 is the conservative end: it makes the CD largest for n > 1).
  Null scale, unknown model or null level -> null. ``sigma_r_at`` is capped at ``sigma_R_at``
  (ISO 5725-2 sets a negative between-laboratory variance to zero, i.e. sigma_R >= sigma_r), and a
  null repeatability sd is taken as 0 (the CD is then the single-result one, 2.8*sigma_R).
* **CD** (ISO 5725-6 §5.3): f * sqrt(sigma_R² - sigma_r²(1 - 1/(2n1) - 1/(2n2))), f = 2.8 at
  cd_probability 0.95 (ISO's rounded 1.96*sqrt(2)), else Phi^-1((1+p)/2)*sqrt(2). Null or
  non-positive replicates count as 1. Null when sigma_R_at is null.
* **Uncertainty.** A non-positive or null U is "no U". k = coverage_k, else
  ``policy.default_coverage_k`` (also used for non-positive k). u = U/k; U is re-expressed at
  k = 2 (U2 = 2u) for En, for ``dist_u_j`` and for the uncertainty intervals of the outcome, so a
  lab quoting k = 3 does not get a wider tolerance than one quoting k = 2.
* **Distances to the specification.** dist = min(x - lower, upper - x) over the limits present:
  positive inside the conforming region, 0 on a limit (a result on the limit conforms), negative
  outside. ``dist_sigma_j`` divides by sigma_R_at, ``dist_u_j`` by U2_j; both null for a
  non-numeric side or an item without limits. ``p_disagree`` = 2·Phi(δ)(1 - Phi(δ)) with
  δ = |dist(level)| / sigma_R_at; Phi is ``scipy.special.ndtr`` applied to whole columns
  (``map_batches``, elementwise, not per row).
* **Outcome** (one of ``scoring.schema.OUTCOMES``; null when the data cannot decide it:
  a missing value on a quantitative item, a missing verdict on a qualitative item, or no CD where
  one is needed). ``discrepant`` is null exactly when ``outcome`` is null.

  - qualitative item: ``qualitative_reversal`` if the two verdicts differ else ``qualitative_agree``.
  - both censored: ``censored_consistent`` (DOMAIN.md §3), even if the verdicts differ (the
    ``reversal`` column still records that).
  - one censored "<L", other numeric x: ``reversal`` when the verdicts differ, or when x lies
    outside the conforming region while "<L" lies inside it (no lower limit and L <= upper limit)
    or vice versa (L <= lower limit and x inside); else ``censored_consistent`` if x <= L + CD
    (CD at level x) else ``censored_discrepant``. A censored value without any limit (ND, no
    censor_limit, no LOD) can only be compared by verdict: ``censored_consistent`` unless that
    gives a reversal.
  - both numeric, verdicts differ: ``reversal_within_uncertainty`` when each result's interval
    x ± U2 (a side without U uses 2·sigma_R_at, the reproducibility sd taken as its standard
    uncertainty, ISO 21748) reaches its nearest limit *and* |d| <= CD (DOMAIN.md §3: a reversal
    with |d| > CD is evidence); else ``reversal`` (also when the item has no limits, so nothing
    explains it). Verdicts are what is compared: numbers on both sides of a limit with equal or
    missing verdicts are scored as consistent/discrepant.
  - both numeric, same (or missing) verdicts: ``discrepant`` if |d| > CD else ``consistent``.

* **Arbitration.** ``s_13``/``s_23`` and ``outcome_13``/``outcome_23`` apply the same rules to
  (original, arbiter) and (retest, arbiter), with the level, precision and CD of that pair.
  ``arbiter_sides_with``: the side(s) whose outcome against the arbiter is not in
  ``DISCREPANT_OUTCOMES`` ("original", "retest", "both", "neither"); null when either outcome
  is null (no arbitration, or undecidable).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import polars as pl
import polars.selectors as cs
from scipy.special import ndtr

from scoring.policy import PairPolicy, Policy
from scoring.schema import DISCREPANT_OUTCOMES

__all__ = ["PAIR_SCORE_SCHEMA", "cd_factor", "score_pairs"]

PAIR_SCORE_SCHEMA: dict[str, pl.DataType] = {
    "level": pl.Float64,
    "sigma_R_at": pl.Float64,
    "sigma_r_at": pl.Float64,
    "d": pl.Float64,
    "d_rel": pl.Float64,
    "s": pl.Float64,
    "cd": pl.Float64,
    "exceeds_cd": pl.Boolean,
    "en": pl.Float64,
    "zeta": pl.Float64,
    "en_signal": pl.Boolean,
    "dist_sigma_1": pl.Float64,
    "dist_sigma_2": pl.Float64,
    "dist_u_1": pl.Float64,
    "dist_u_2": pl.Float64,
    "p_disagree": pl.Float64,
    "reversal": pl.Boolean,
    "outcome": pl.String,
    "discrepant": pl.Boolean,
    "s_13": pl.Float64,
    "s_23": pl.Float64,
    "outcome_13": pl.String,
    "outcome_23": pl.String,
    "arbiter_sides_with": pl.String,
}

_SQRT2 = math.sqrt(2.0)
# Temporary columns carry this prefix and are dropped before returning.
_T = "__sp_"


def cd_factor(probability: float) -> float:
    """Multiplier f of sigma in the critical difference of two single results.

    ISO 5725-6 §5.3 / ISO 5725-1 rounds 1.96·√2 = 2.77 to 2.8 at 95 %; that rounded value is used
    at exactly 0.95 so results match the standard's tables; other levels use Phi^-1((1+p)/2)·√2.
    """
    if probability == 0.95:
        return 2.8
    return NormalDist().inv_cdf((1.0 + probability) / 2.0) * _SQRT2


def _c(name: str) -> pl.Expr:
    return pl.col(name)


def _t(name: str) -> pl.Expr:
    return pl.col(_T + name)


def _normal_cdf(x: pl.Expr) -> pl.Expr:
    def _batch(s: pl.Series) -> pl.Series:
        out = pl.Series(s.name, ndtr(s.to_numpy()), dtype=pl.Float64)
        # to_numpy turns nulls into NaN; give the nulls back.
        return out.fill_nan(None) if s.null_count() else out

    return x.map_batches(_batch, return_dtype=pl.Float64, is_elementwise=True)


def _horwitz(c: pl.Expr) -> pl.Expr:
    # DOMAIN.md §3 (Thompson's modification of the Horwitz function), c as a mass fraction.
    return (
        pl.when(c < 1.2e-7)
        .then(0.22 * c)
        .when(c <= 0.138)
        .then(0.02 * c.pow(0.8495))
        .otherwise(0.01 * c.sqrt())
    )


def _dist(x: pl.Expr) -> pl.Expr:
    """Signed distance of x to the nearest specification limit (positive = conforming side)."""
    # min_horizontal skips nulls: one-sided specs use the one limit, no limits -> null.
    return pl.min_horizontal(x - _c("lower_limit"), _c("upper_limit") - x)


def _side_prep(j: str, default_k: float) -> list[pl.Expr]:
    cens = _c(f"censored_{j}").fill_null(False) & ~_t("qual")
    k = _c(f"coverage_k_{j}")
    k = pl.when(k > 0).then(k).otherwise(pl.lit(default_k))
    U = _c(f"expanded_uncertainty_{j}")
    u = pl.when(U > 0).then(U / k)
    n = _c(f"replicates_{j}").cast(pl.Float64)
    n = pl.when(n >= 1).then(n).otherwise(1.0)
    return [
        pl.when(_c(f"value_{j}").is_not_null() & ~cens & ~_t("qual"))
        .then(_c(f"value_{j}"))
        .alias(f"{_T}x{j}"),
        cens.alias(f"{_T}c{j}"),
        pl.when(cens).then(pl.coalesce(_c(f"censor_limit_{j}"), _c("lod"))).alias(f"{_T}L{j}"),
        u.alias(f"{_T}u{j}"),
        (2.0 * u).alias(f"{_T}U{j}"),
        (0.5 / n).alias(f"{_T}h{j}"),
        _c(f"verdict_{j}")
        .replace_strict({"pass": True, "fail": False}, default=None, return_dtype=pl.Boolean)
        .alias(f"{_T}v{j}"),
    ]


def _pair_precision(a: str, b: str, p: str, f: float) -> list[pl.Expr]:
    """Stage-2 expressions for the pair (a, b): level, sigma_R, sigma_r, d, cd (suffix p)."""
    lvl = pl.mean_horizontal(_t(f"x{a}"), _t(f"x{b}"))
    alvl = lvl.abs()
    scale = pl.when(_c("horwitz_scale") > 0).then(_c("horwitz_scale"))
    hor = _horwitz(alvl * scale) / scale
    model = _t("model")
    sR = (
        pl.when(model == 0)
        .then(_c("reproducibility_sd"))
        .when(model == 1)
        .then(_c("reproducibility_sd") * alvl)
        .when(model == 2)
        .then(hor)
    )
    sr = (
        pl.when(model == 0)
        .then(_c("repeatability_sd"))
        .when(model == 1)
        .then(_c("repeatability_sd") * alvl)
        .when(model == 2)
        .then(hor * 0.5)
    )
    return [
        lvl.alias(f"{_T}lvl{p}"),
        sR.alias(f"{_T}sR{p}"),
        sr.alias(f"{_T}sr{p}"),
        (_t(f"x{a}") - _t(f"x{b}")).alias(f"{_T}d{p}"),
    ]


def _pair_cd(a: str, b: str, p: str, f: float) -> list[pl.Expr]:
    sR = _t(f"sR{p}")
    sr = pl.when(sR.is_not_null()).then(pl.min_horizontal(_t(f"sr{p}").fill_null(0.0), sR))
    cd = f * (sR * sR - sr * sr * (1.0 - _t(f"h{a}") - _t(f"h{b}"))).sqrt()
    return [sr.alias(f"{_T}sr{p}"), cd.alias(f"{_T}cd{p}")]


def _outcome(a: str, b: str, p: str) -> pl.Expr:
    """Outcome of the pair (a, b) from the stage-2/3 columns with suffix p."""
    xa, xb = _t(f"x{a}"), _t(f"x{b}")
    ca, cb = _t(f"c{a}"), _t(f"c{b}")
    va, vb = _t(f"v{a}"), _t(f"v{b}")
    d, cd, sR = _t(f"d{p}"), _t(f"cd{p}"), _t(f"sR{p}")
    vdiff = va != vb  # null when either verdict is missing
    vrev = vdiff.fill_null(False)

    # One censored side: L is its limit, x the other side's number.
    L = pl.coalesce(_t(f"L{a}"), _t(f"L{b}"))
    x = pl.coalesce(xa, xb)
    x_in = _dist(x) >= 0
    lo, up = _c("lower_limit"), _c("upper_limit")
    L_in = lo.is_null() & (up.is_null() | (L <= up))
    L_out = L <= lo
    pos_rev = ((~x_in) & L_in) | (x_in & L_out)
    cens_rev = vrev | pos_rev.fill_null(False)
    one_censored = (
        pl.when(cens_rev)
        .then(pl.lit("reversal"))
        .when(L.is_null() | (x <= L))
        .then(pl.lit("censored_consistent"))
        .when(x <= L + cd)
        .then(pl.lit("censored_consistent"))
        .when(cd.is_not_null())
        .then(pl.lit("censored_discrepant"))
    )

    # Both numeric with differing verdicts: is the difference inside the uncertainty intervals?
    wa = pl.coalesce(_t(f"U{a}"), 2.0 * sR)
    wb = pl.coalesce(_t(f"U{b}"), 2.0 * sR)
    near = (_dist(xa).abs() <= wa) & (_dist(xb).abs() <= wb) & (d.abs() <= cd).fill_null(True)
    numeric = (
        pl.when(vrev)
        .then(
            pl.when(near.fill_null(False))
            .then(pl.lit("reversal_within_uncertainty"))
            .otherwise(pl.lit("reversal"))
        )
        .when(d.abs() > cd)
        .then(pl.lit("discrepant"))
        .when(cd.is_not_null())
        .then(pl.lit("consistent"))
    )

    return (
        pl.when(_t("qual"))
        .then(
            pl.when(vdiff)
            .then(pl.lit("qualitative_reversal"))
            .when(vdiff.not_())
            .then(pl.lit("qualitative_agree"))
        )
        .when(ca & cb)
        .then(pl.lit("censored_consistent"))
        .when((ca & xb.is_not_null()) | (cb & xa.is_not_null()))
        .then(one_censored)
        .when(xa.is_not_null() & xb.is_not_null())
        .then(numeric)
    )


def score_pairs(pairs: pl.LazyFrame, policy: Policy | PairPolicy | None = None) -> pl.LazyFrame:
    """Add the pair scores (``PAIR_SCORE_SCHEMA``) to a LazyFrame of ``PAIR_INPUT_SCHEMA`` rows.

    ``policy`` is a ``Policy`` (its ``pairs`` section is used), a bare ``PairPolicy``, or None
    for the defaults. Returns a LazyFrame; nothing is collected. Empty input gives empty output
    with every column. See the module docstring for every convention and degenerate case.
    """
    if policy is None:
        pp = PairPolicy()
    elif isinstance(policy, Policy):
        pp = policy.pairs
    else:
        pp = policy
    f = cd_factor(pp.cd_probability)
    sides = ("1", "2", "3")
    pair_defs = (("1", "2", ""), ("1", "3", "_13"), ("2", "3", "_23"))

    # Stage 0: item codes, so strings are compared once per row.
    lf = pairs.with_columns(
        (_c("kind") == "qualitative").fill_null(False).alias(f"{_T}qual"),
        _c("precision_model")
        .replace_strict(
            {"absolute": 0, "relative": 1, "horwitz": 2}, default=None, return_dtype=pl.Int8
        )
        .alias(f"{_T}model"),
    )
    # Stage 1: per-side derived values.
    lf = lf.with_columns(
        [e for j in sides for e in _side_prep(j, pp.default_coverage_k)]
    )
    # Stage 2: level, precision and difference of each pair.
    lf = lf.with_columns([e for a, b, p in pair_defs for e in _pair_precision(a, b, p, f)])
    # Stage 3: critical differences.
    lf = lf.with_columns([e for a, b, p in pair_defs for e in _pair_cd(a, b, p, f)])

    sR, d, lvl = _t("sR"), _t("d"), _t("lvl")
    sR_ok = pl.when(sR > 0).then(sR)
    en = d / (_t("U1").pow(2) + _t("U2").pow(2)).sqrt()
    en_signal = en.abs() >= 1.0 if pp.en_boundary == "iso" else en.abs() > 1.0
    delta = _dist(lvl).abs() / sR_ok
    q = _normal_cdf(-delta)  # Phi(-δ) = 1 - Phi(δ)
    v1, v2 = _t("v1"), _t("v2")

    def s_of(p: str) -> pl.Expr:
        sRp = _t(f"sR{p}")
        return _t(f"d{p}") / (_SQRT2 * pl.when(sRp > 0).then(sRp))

    # Stage 4: all published scores.
    lf = lf.with_columns(
        lvl.alias("level"),
        sR.alias("sigma_R_at"),
        _t("sr").alias("sigma_r_at"),
        d.alias("d"),
        (d / pl.when(lvl != 0).then(lvl)).alias("d_rel"),
        s_of("").alias("s"),
        _t("cd").alias("cd"),
        (d.abs() > _t("cd")).alias("exceeds_cd"),
        en.alias("en"),
        (d / (_t("u1").pow(2) + _t("u2").pow(2)).sqrt()).alias("zeta"),
        en_signal.alias("en_signal"),
        (_dist(_t("x1")) / sR_ok).alias("dist_sigma_1"),
        (_dist(_t("x2")) / sR_ok).alias("dist_sigma_2"),
        (_dist(_t("x1")) / _t("U1")).alias("dist_u_1"),
        (_dist(_t("x2")) / _t("U2")).alias("dist_u_2"),
        (2.0 * q * (1.0 - q)).alias("p_disagree"),
        (v1.is_not_null() & v2.is_not_null() & (v1 != v2)).alias("reversal"),
        _outcome("1", "2", "").alias("outcome"),
        s_of("_13").alias("s_13"),
        s_of("_23").alias("s_23"),
        _outcome("1", "3", "_13").alias("outcome_13"),
        _outcome("2", "3", "_23").alias("outcome_23"),
    )
    bad = pl.lit(pl.Series(list(DISCREPANT_OUTCOMES), dtype=pl.String)).implode()
    ok13 = ~_c("outcome_13").is_in(bad)
    ok23 = ~_c("outcome_23").is_in(bad)
    lf = lf.with_columns(
        pl.when(_c("outcome").is_not_null()).then(_c("outcome").is_in(bad)).alias("discrepant"),
        pl.when(_c("outcome_13").is_null() | _c("outcome_23").is_null())
        .then(pl.lit(None, dtype=pl.String))
        .when(ok13 & ok23)
        .then(pl.lit("both"))
        .when(ok13)
        .then(pl.lit("original"))
        .when(ok23)
        .then(pl.lit("retest"))
        .otherwise(pl.lit("neither"))
        .alias("arbiter_sides_with"),
    )
    return lf.drop(cs.starts_with(_T))
