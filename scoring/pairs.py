"""Score original/retest (and arbitration) pairs: one row per test item on one sample.

``score_pairs(pairs, policy)`` takes a LazyFrame with the columns of
``scoring.schema.PAIR_INPUT_SCHEMA`` and returns it lazily with the columns of
``PAIR_SCORE_SCHEMA`` added (ISO 13528:2022 clause 9; ISO 5725-6 §5.3; ILAC-G8:09/2019 for
decision rules). Everything is a vectorised polars expression; nothing is collected here.

Conventions (the choices the standards leave open, decided here):

* **Side value.** A side is *numeric* when its value is non-null, it is not censored and the item
  is not qualitative; *censored* when ``censored`` is true (its number, if any, is ignored: the
  censoring limit is ``censor_limit``, falling back to the item's ``lod``). A censored value is
  never replaced by a number: "<L" stands for the interval [0, L].
* **level** is the mean of the numeric sides of the pair (both numeric: their mean; one numeric:
  that one, whether the other is censored or missing); null when no side is numeric (both
  censored, qualitative, missing).
* **Precision at the level.** ``absolute``: the item's sd; ``relative``: sd * |level|;
  ``horwitz``: sigma_R = H(|level| * horwitz_scale) / horwitz_scale with H the Horwitz function
  of scoring.precision (Thompson's 2000 modification) and
  sigma_r = scoring.precision.HORWITZ_R_RATIO * sigma_R = sigma_R / 2 (Horwitz gives no
  repeatability; r/R ≈ 1/2 to 2/3 is the usual ratio in collaborative studies, 1/2 is the
  conservative end: it makes the CD largest for n > 1).
  An absolute sd does not depend on the level, so it is given even when the level is null; the
  other models need a level. A Horwitz item without a positive scale, an unknown model or a
  null sd give null. ``sigma_r_at`` is capped at ``sigma_R_at``
  (ISO 5725-2 sets a negative between-laboratory variance to zero, i.e. sigma_R >= sigma_r), and a
  null repeatability sd is taken as 0 (the CD is then the single-result one, 2.8*sigma_R).
* **CD** (ISO 5725-6 §5.3): f * sqrt(sigma_R² - sigma_r²(1 - 1/(2n1) - 1/(2n2))) with
  f = scoring.precision.critical_difference_factor(cd_probability) (2.8 at 0.95, ISO's rounded
  1.96·√2). Null or non-positive replicates count as 1. Null when sigma_R_at is null.
* **Uncertainty.** A non-positive or null U is "no U". k = coverage_k, else
  ``policy.default_coverage_k`` (also used for non-positive k). u = U/k; U is re-expressed at
  k = 2 (U2 = 2u) for En, for ``dist_u_j`` and for the tolerances below, so a lab quoting k = 3
  does not get a wider tolerance than one quoting k = 2.
* **Degenerate scales.** ``d_rel`` is null when the level is 0; ``s``, ``dist_sigma_j`` and
  ``p_disagree`` are null when sigma_R_at is not positive (the CD is then 0, so a zero difference
  is still consistent); En/zeta need U on both sides.
* **Verdicts** are "pass"/"fail"; any other string counts as missing. ``reversal`` is
  verdict_1 != verdict_2 with both present, whatever the outcome.
* **Distances to the specification.** dist = min(x - lower, upper - x) over the limits present:
  positive inside the conforming region, 0 on a limit (a result on the limit conforms), negative
  outside; |dist| is the distance to the nearest limit. ``dist_sigma_j`` divides by sigma_R_at,
  ``dist_u_j`` by U2_j; both null for a non-numeric side or an item without limits.
  ``p_disagree`` = 2·Phi(δ)(1 - Phi(δ)) with δ = |dist(level)| / sigma_R_at; Phi is
  ``scipy.special.ndtr`` applied to whole columns (``map_batches``, elementwise, not per row).
* **A side's own verdict.** The verdict its own number gives under simple acceptance: "pass"
  iff the number lies in the conforming region (dist >= 0); for a censored side, "pass" when
  [0, L] lies inside it (no lower limit above 0 and L <= upper limit), "fail" when L <= the
  lower limit, undecided otherwise. A side whose reported verdict differs from its own verdict
  is *in question*; a side whose verdict matches its own number never is.
* **Tolerance** of a numeric side: U2, or 2·sigma_R_at where the side has no U (the
  reproducibility sd taken as the standard uncertainty of a result, ISO 21748). A censored side
  is *near* the limit when L itself is within 2·sigma_R_at of the nearest limit.
* **Decision rules** (``decision_rule``, ILAC-G8:09/2019). ``simple``: simple acceptance, the
  verdict is the side's own verdict, so a side in question under it is never explained by the
  rule. ``guard_band``: guarded acceptance with w = the side's tolerance (U2; 2·sigma_R_at when
  the lab reported no U, taken as the U its guard band used): "pass" only when dist >= w (at or
  below upper - w, at or above lower + w), "fail" otherwise; so it can turn a conforming number
  within w of a limit into "fail", never a nonconforming number into "pass". Guarded rejection
  (accepting beyond a limit) is not a value the intake stores, so a "pass" for a number outside
  the conforming region is never explained by a rule. A missing or unknown rule is given the
  benefit of the doubt: it may be a guard band.
* **Outcome** (one of ``scoring.schema.OUTCOMES``; null when the data cannot decide it:
  a missing value on a quantitative item, a missing verdict on a qualitative item, or no CD where
  one is needed). ``discrepant`` is null exactly when ``outcome`` is null.

  - qualitative item: ``qualitative_reversal`` if the two verdicts differ, else
    ``qualitative_agree``.
  - both censored: ``censored_consistent``, even if the verdicts differ (the ``reversal``
    column still records that).
  - one censored "<L", other numeric x. A *conflict* is: the verdicts differ, or x lies outside
    the conforming region while [0, L] lies inside it, or L <= lower limit while x conforms.
    A conflict is ``reversal_within_uncertainty`` when x is within its tolerance of the limit
    (|dist(x)| <= U2 of x, or 2·sigma_R at level x) *and* the censored side is near (as above);
    otherwise ``reversal``, also when nearness cannot be established (L unknown: ND without
    censor_limit or LOD; no sigma_R). Without a conflict: ``censored_consistent`` if
    x <= L + CD (CD at level x; also when L is unknown) else ``censored_discrepant``.
  - both numeric, verdicts differ: ``reversal_within_uncertainty`` when |d| <= CD *and* every
    side in question is explained near the limit: its verdict is "fail", its number conforms
    with dist < its tolerance w, and its decision rule may be a guard band (so it can give that
    "fail" there). Otherwise ``reversal``: a side in question far from the limit, a "pass" for a
    nonconforming number, a simple-acceptance lab contradicting its own number, |d| > CD, an
    item without limits (nothing explains the verdicts), or a condition that cannot be
    established (no CD, no tolerance). Verdicts are what is compared: numbers on both sides of a
    limit with equal or missing verdicts are scored as consistent/discrepant.
  - both numeric, same (or missing) verdicts: ``discrepant`` if |d| > CD else ``consistent``.

* **Per-side flags** (original ``_1`` and retest ``_2``, against the original/retest pair's
  sigma_R_at and CD), for the data-problem pattern tests:

  - ``verdict_contradicts_j``: the side's verdict differs from its own verdict *beyond its
    tolerance* (numeric: |dist| > tolerance; censored: L not near the limit). False when the
    verdict matches its own number; null when undecidable (no verdict, no number or censoring
    limit, no limits, an undecided censored side, or a needed tolerance is null). A
    contradiction within the tolerance is not flagged (it may be a guard band or rounding), but
    can still make the outcome a ``reversal`` as above.
  - ``nd_vs_clear_j``: the side is censored at L while the partner reports a number
    x > L + CD (a clear amount). False when the side is not censored or both are censored; null
    when the side is censored and the partner's value is missing, or L or the CD is null.

* **Arbitration.** ``s_13``/``s_23`` and ``outcome_13``/``outcome_23`` apply the same rules to
  (original, arbiter) and (retest, arbiter), with the level, precision and CD of that pair
  (computed on the rows with a third result only, then joined back by row index).
  ``arbiter_sides_with``: the side(s) whose outcome against the arbiter is not in
  ``DISCREPANT_OUTCOMES`` ("original", "retest", "both", "neither"); null when either outcome
  is null (no arbitration, or undecidable).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import polars as pl
import polars.selectors as cs
from scipy.special import ndtr

from scoring.policy import PairPolicy, Policy
from scoring.precision import HORWITZ_R_RATIO, critical_difference_factor, horwitz_expr
from scoring.schema import DISCREPANT_OUTCOMES, OUTCOMES, PAIR_INPUT_SCHEMA

__all__ = ["PAIR_SCORE_SCHEMA", "score_pairs"]

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
    "verdict_contradicts_1": pl.Boolean,
    "verdict_contradicts_2": pl.Boolean,
    "nd_vs_clear_1": pl.Boolean,
    "nd_vs_clear_2": pl.Boolean,
}

_SQRT2 = math.sqrt(2.0)
# Temporary columns carry this prefix and are dropped before returning.
_T = "__sp_"
# Outcomes are computed as small integer codes (index into OUTCOMES) and turned into strings
# once, by a gather from a constant Series: building strings inside every when/then branch is
# what made a first version an order of magnitude slower.
_CODE = {name: i for i, name in enumerate(OUTCOMES)}
_BAD_CODES = [_CODE[name] for name in DISCREPANT_OUTCOMES]
_SIDES_WITH = ("neither", "original", "retest", "both")


def _outcome_names() -> pl.Expr:
    return pl.lit(pl.Series(list(OUTCOMES), dtype=pl.String))


def _c(name: str) -> pl.Expr:
    return pl.col(name)


def _t(name: str) -> pl.Expr:
    return pl.col(_T + name)


def _phi_of_minus_abs(delta: pl.Expr) -> pl.Expr:
    """Phi(-|δ|) = 1 - Phi(|δ|), with Phi = scipy.special.ndtr on whole batches (exact to double
    precision); p_disagree = 2·Phi(-|δ|)(1 - Phi(-|δ|)) is then plain polars arithmetic.

    Only ndtr runs in Python: every other step of the formula is a polars kernel, because each
    numpy or polars call made from the UDF adds its own pass and fixed cost on every batch (with
    the whole formula in the UDF p_disagree cost 27 ms of CPU a million rows against 22). It is
    staged as a column of its own: polars does not share UDF results between sub-expressions, so
    Phi written twice would be computed twice."""

    def _batch(s: pl.Series) -> pl.Series:
        nulls = s.null_count()
        # to_numpy turns nulls into NaN one value at a time (4-5 ms a million rows); fill_null
        # does it in one kernel and to_numpy then hands over the buffer. NaN goes back to null
        # on a batch that had nulls (a NaN δ in a batch without nulls stays NaN, as it always
        # has).
        x = s.fill_null(np.nan).to_numpy() if nulls else s.to_numpy()
        return pl.Series(s.name, ndtr(x), dtype=pl.Float64, nan_to_null=nulls > 0)

    return (-delta.abs()).map_batches(_batch, return_dtype=pl.Float64, is_elementwise=True)


def _min(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    # Elementwise min of two null-free columns; cheaper than min_horizontal's null handling.
    return pl.when(a < b).then(a).otherwise(b)


def _dist(x: pl.Expr) -> pl.Expr:
    """Signed distance of x to the nearest specification limit (positive = conforming side).

    Missing limits are +-inf in the stage-0 columns, so a one-sided spec uses its one limit;
    no limits at all -> null.
    """
    return pl.when(_t("has_lim")).then(_min(x - _t("lo"), _t("up") - x))


def _stage_item() -> list[pl.Expr]:
    model = _c("precision_model")
    scale = _c("horwitz_scale")
    return [
        (_c("kind") == "qualitative").fill_null(False).alias(f"{_T}qual"),
        (model == "absolute").fill_null(False).alias(f"{_T}abs"),
        (model == "relative").fill_null(False).alias(f"{_T}rel"),
        ((model == "horwitz") & (scale > 0)).fill_null(False).alias(f"{_T}hor"),
        _c("lower_limit").fill_null(float("-inf")).alias(f"{_T}lo"),
        _c("upper_limit").fill_null(float("inf")).alias(f"{_T}up"),
        (_c("lower_limit").is_not_null() | _c("upper_limit").is_not_null()).alias(f"{_T}has_lim"),
    ]


def _stage_side(j: str, default_k: float) -> list[pl.Expr]:
    qual = _t("qual")
    cens = _c(f"censored_{j}").fill_null(False) & ~qual
    k = _c(f"coverage_k_{j}")
    k = pl.when(k > 0).then(k).otherwise(pl.lit(default_k))
    U = _c(f"expanded_uncertainty_{j}")
    u = pl.when(U > 0).then(U / k)
    n = _c(f"replicates_{j}")
    verdict = _c(f"verdict_{j}")
    return [
        # A null value stays null through then(), so no is_not_null test is needed.
        pl.when(~(_c(f"censored_{j}").fill_null(False) | qual))
        .then(_c(f"value_{j}"))
        .alias(f"{_T}x{j}"),
        cens.alias(f"{_T}c{j}"),
        pl.when(cens).then(pl.coalesce(_c(f"censor_limit_{j}"), _c("lod"))).alias(f"{_T}L{j}"),
        u.alias(f"{_T}u{j}"),
        # 1/(2n), the replicate term of the ISO 5725-6 CD; null or n < 1 counts as one result.
        pl.when(n > 1).then(0.5 / n.cast(pl.Float64)).otherwise(0.5).alias(f"{_T}h{j}"),
        # pass -> True, fail -> False, anything else -> null
        pl.when(verdict == "pass")
        .then(True)
        .when(verdict == "fail")
        .then(False)
        .alias(f"{_T}v{j}"),
        # Only a declared simple acceptance rules out a guard band (module docstring).
        (_c(f"decision_rule_{j}") != "simple").fill_null(True).alias(f"{_T}gb{j}"),
    ]


def _stage_own(j: str) -> list[list[pl.Expr]]:
    """The side's distance to the specification and its own verdict (True = pass), in stages
    (and U2, which needs u from the stage before).

    A side's number and its censoring limit never coexist (x is null on a censored side, L on
    any other), so one column D serves both: the distance of x on a numeric side, of L on a
    censored one (null when the side has neither or the item no limits).
    """
    L = _t(f"L{j}")
    lower = _c("lower_limit")
    # [0, L] lies inside when no lower limit exceeds 0 and L is at or below the upper limit;
    # it lies outside when L is at or below the lower limit.
    inside = (lower.is_null() | (lower <= 0.0)) & (L <= _t("up"))
    own_c = pl.when(inside).then(True).when(L <= lower).then(False)
    return [
        # U re-expressed at k = 2 (with u from the stage before, so as not to compute u twice)
        [pl.coalesce(_t(f"x{j}"), L).alias(f"{_T}y{j}"), (2.0 * _t(f"u{j}")).alias(f"{_T}U{j}")],
        [_dist(_t(f"y{j}")).alias(f"{_T}D{j}")],
        [pl.when(_t(f"c{j}")).then(own_c).otherwise(_t(f"D{j}") >= 0.0).alias(f"{_T}g{j}")],
    ]


def _stage_question(j: str) -> list[pl.Expr]:
    # The side is in question: its verdict differs from its own (null when either is unknown).
    return [(_t(f"v{j}") != _t(f"g{j}")).alias(f"{_T}q{j}")]


def _pair_precision(a: str, b: str) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    """(level, sigma_R, raw sigma_r, d) of the pair (a, b); Horwitz sigma_r comes in _sr_cap."""
    xa, xb = _t(f"x{a}"), _t(f"x{b}")
    lvl = pl.coalesce((xa + xb) * 0.5, xa, xb)
    alvl = lvl.abs()
    scale = _c("horwitz_scale")
    # The Horwitz function over every row, read only where the item is a Horwitz one: a power of
    # every value costs less than a Python UDF limited to those rows, which paid a fixed cost on
    # every streaming batch (an eager select, arg_true, a scatter), batches of 5 000 rows in the
    # arbitration pass (docs/performance.md). Other rows are given 0, which the power returns at
    # once (half the cost of a power of a number).
    hor = horwitz_expr(pl.when(_t("hor")).then(alvl * scale).otherwise(0.0)) / scale
    is_abs, is_rel = _t("abs"), _t("rel")
    sR = (
        pl.when(is_abs)
        .then(_c("reproducibility_sd"))
        .when(is_rel)
        .then(_c("reproducibility_sd") * alvl)
        .when(_t("hor"))
        .then(hor)
    )
    sr = (
        pl.when(is_abs)
        .then(_c("repeatability_sd"))
        .when(is_rel)
        .then(_c("repeatability_sd") * alvl)
    )
    return lvl, sR, sr, xa - xb


def _sr_cap(sR: pl.Expr, sr: pl.Expr) -> pl.Expr:
    """sigma_r at the level from sigma_R and the raw sigma_r of _pair_precision (Horwitz: r/R)."""
    sr_raw = pl.when(_t("hor")).then(HORWITZ_R_RATIO * sR).otherwise(sr.fill_null(0.0))
    # ISO 5725-2: a negative between-lab variance is set to 0, i.e. sigma_r is capped at sigma_R.
    return pl.when(sR.is_not_null()).then(_min(sr_raw, sR))


def _lit(name: str) -> pl.Expr:
    return pl.lit(_CODE[name], dtype=pl.UInt8)


def _pair_stages(a: str, b: str, f: float) -> list[list[pl.Expr]]:
    """The staged columns of the pair (a, b), suffixed with its two sides ("12", "13", "23"):
    level, sigma_R, sigma_r, d, CD, |d| > CD, and per side its threshold w (the tolerance of a
    numeric side, 2·sigma_R for the "<L" of a censored one) and whether its distance to the
    limit lies beyond it."""
    p = a + b
    lvl, sR, sr, d = _pair_precision(a, b)
    first = [
        lvl.alias(f"{_T}lvl{p}"),
        sR.alias(f"{_T}sR{p}"),
        sr.alias(f"{_T}sr{p}"),
        d.alias(f"{_T}d{p}"),
    ]
    sR = _t(f"sR{p}")
    sr_cap = _sr_cap(sR, _t(f"sr{p}"))
    second = [sr_cap.alias(f"{_T}srcap{p}"), (2.0 * sR).alias(f"{_T}twosR{p}")]
    two_sR = _t(f"twosR{p}")
    third = []
    for j in (a, b):
        w = pl.when(_t(f"c{j}")).then(two_sR).otherwise(pl.coalesce(_t(f"U{j}"), two_sR))
        third.append(w.alias(f"{_T}w{j}_{p}"))
    srcap = _t(f"srcap{p}")
    # ISO 5725-6 §5.3: f·sqrt(sigma_R² - sigma_r²(1 - 1/(2n1) - 1/(2n2))) (module docstring, "CD")
    third.append(
        (f * (sR * sR - srcap * srcap * (1.0 - _t(f"h{a}") - _t(f"h{b}"))).sqrt()).alias(f"{_T}cd{p}")
    )
    fourth = [(_t(f"d{p}").abs() > _t(f"cd{p}")).alias(f"{_T}exceeds{p}")]
    for j in (a, b):
        fourth.append((_t(f"D{j}").abs() > _t(f"w{j}_{p}")).alias(f"{_T}beyond{j}_{p}"))
    return [first, second, third, fourth]


def _outcome_code(a: str, b: str) -> pl.Expr:
    """Outcome code (index into OUTCOMES) of the pair (a, b); null when undecidable.

    Reads the columns of _pair_stages(a, b). Each condition of the module docstring is written
    with the per-side columns it reduces to, with the same three-valued truth:
    "x within its tolerance of the limit and L within 2·sigma_R of it" is "neither side beyond
    its threshold", and "x and [0, L] on different sides of the limit" is "the two sides' own
    verdicts differ" (one side is numeric, the other censored, in that branch).
    """
    p = a + b
    xa, xb = _t(f"x{a}"), _t(f"x{b}")
    ca, cb = _t(f"c{a}"), _t(f"c{b}")
    cd, exceeds = _t(f"cd{p}"), _t(f"exceeds{p}")
    vdiff = _t(f"v{a}") != _t(f"v{b}")  # null when either verdict is missing
    vrev = vdiff.fill_null(False)
    xa_ok, xb_ok = xa.is_not_null(), xb.is_not_null()
    beyond_a, beyond_b = _t(f"beyond{a}_{p}"), _t(f"beyond{b}_{p}")

    # Exactly one side censored: L is its limit, x the other side's number.
    conflict = vrev | (_t(f"g{a}") != _t(f"g{b}")).fill_null(False)
    near = (~(beyond_a | beyond_b)).fill_null(False)
    L = pl.coalesce(_t(f"L{a}"), _t(f"L{b}"))
    x = pl.coalesce(xa, xb)
    one_censored = (
        pl.when(conflict)
        .then(pl.when(near).then(_lit("reversal_within_uncertainty")).otherwise(_lit("reversal")))
        # L unknown (null) also counts as consistent
        .when((x <= L + cd.fill_null(0.0)).fill_null(True))
        .then(_lit("censored_consistent"))
        .when(cd.is_not_null())
        .then(_lit("censored_discrepant"))
    )

    # Both numeric, verdicts differ: excused only with |d| <= CD and every side in question
    # explained near the limit: a "fail" for a conforming number closer to the limit than its
    # tolerance under a rule that may be a guard band (a "pass" for a nonconforming number is
    # never explained); an item without limits has nothing to explain the verdicts.
    def explained(j: str) -> pl.Expr:
        g = _t(f"g{j}")
        return ~_t(f"q{j}") | (g & _t(f"gb{j}") & (_t(f"D{j}") < _t(f"w{j}_{p}")))

    ok = _t("has_lim") & ~exceeds & explained(a) & explained(b)
    numeric = (
        pl.when(vrev)
        .then(
            pl.when(ok.fill_null(False))
            .then(_lit("reversal_within_uncertainty"))
            .otherwise(_lit("reversal"))
        )
        # |d| > CD is null exactly when the CD is (d is not, here): discrepant (1) or
        # consistent (0) or null, as the comparison's own truth value.
        .otherwise(exceeds.cast(pl.UInt8))
    )

    return (
        pl.when(_t("qual"))
        # qualitative_reversal follows qualitative_agree in OUTCOMES (asserted below)
        .then(_lit("qualitative_agree") + vdiff.cast(pl.UInt8))
        .when(ca & cb)
        .then(_lit("censored_consistent"))
        .when((ca & xb_ok) | (cb & xa_ok))
        .then(one_censored)
        .when(xa_ok & xb_ok)
        .then(numeric)
    )


assert _CODE["qualitative_reversal"] == _CODE["qualitative_agree"] + 1
assert (_CODE["consistent"], _CODE["discrepant"]) == (0, 1)


def _verdict_contradicts(j: str, p: str) -> pl.Expr:
    """The side's verdict differs from its own verdict beyond its tolerance (docstring):
    False when it does not differ, null when that is unknown."""
    q = _t(f"q{j}")
    return pl.when(q).then(_t(f"beyond{j}_{p}")).otherwise(q)


def _nd_vs_clear(j: str, o: str, cd: pl.Expr) -> pl.Expr:
    """Side j censored at L while the partner o reports x > L + CD (docstring); the comparison
    is null when x, L or the CD is."""
    return pl.when(~_t(f"c{j}") | _t(f"c{o}")).then(False).otherwise(_t(f"x{o}") > _t(f"L{j}") + cd)


def _s(d: pl.Expr, sR: pl.Expr) -> pl.Expr:
    return d / (_SQRT2 * pl.when(sR > 0).then(sR))


class _Plan(NamedTuple):
    prepare: tuple[tuple[pl.Expr, ...], ...]
    main: tuple[tuple[pl.Expr, ...], ...]
    arbitration: tuple[tuple[pl.Expr, ...], ...]


@functools.cache
def _plan(default_k: float, f: float, en_iso: bool) -> _Plan:
    """Every stage's expressions for one policy, built once: building them is a few ms of Python
    a call, a fixed cost that small frames (a lab's page, a block) would pay every time."""
    sides = ("1", "2", "3")
    prepare = [
        _stage_item(),
        [e for j in sides for e in _stage_side(j, default_k)],
        *([e for j in sides for e in _stage_own(j)[i]] for i in range(3)),
        [e for j in sides for e in _stage_question(j)],
    ]

    main = _pair_stages("1", "2", f)
    sR, d, lvl, cd = _t("sR12"), _t("d12"), _t("lvl12"), _t("cd12")
    main.append([
        pl.when(sR > 0).then(sR).alias(f"{_T}sR_ok"),
        # A censored side's D is the distance of its "<L", not of a number.
        *(pl.when(_t(f"c{j}")).then(None).otherwise(_t(f"D{j}")).alias(f"{_T}dist{j}") for j in ("1", "2")),
        (d / (_t("U1").pow(2) + _t("U2").pow(2)).sqrt()).alias(f"{_T}en"),
    ])
    sR_ok, en = _t("sR_ok"), _t("en")
    main.append([_phi_of_minus_abs(_dist(lvl) / sR_ok).alias(f"{_T}phi")])
    phi = _t("phi")
    dist = {j: _t(f"dist{j}") for j in ("1", "2")}
    main.append([
        lvl.alias("level"),
        sR.alias("sigma_R_at"),
        _t("srcap12").alias("sigma_r_at"),
        d.alias("d"),
        (d / pl.when(lvl != 0).then(lvl)).alias("d_rel"),
        (d / (_SQRT2 * sR_ok)).alias("s"),
        cd.alias("cd"),
        _t("exceeds12").alias("exceeds_cd"),
        en.alias("en"),
        (d / (_t("u1").pow(2) + _t("u2").pow(2)).sqrt()).alias("zeta"),
        (en.abs() >= 1.0 if en_iso else en.abs() > 1.0).alias("en_signal"),
        (dist["1"] / sR_ok).alias("dist_sigma_1"),
        (dist["2"] / sR_ok).alias("dist_sigma_2"),
        (dist["1"] / _t("U1")).alias("dist_u_1"),
        (dist["2"] / _t("U2")).alias("dist_u_2"),
        # 2·Phi(δ)(1 - Phi(δ)), symmetric in δ: (2q)(1 - q) with q = Phi(-|δ|)
        (2.0 * phi * (1.0 - phi)).alias("p_disagree"),
        (_t("v1") != _t("v2")).fill_null(False).alias("reversal"),
        _outcome_code("1", "2").alias(f"{_T}o12"),
        _verdict_contradicts("1", "12").alias("verdict_contradicts_1"),
        _verdict_contradicts("2", "12").alias("verdict_contradicts_2"),
        _nd_vs_clear("1", "2", cd).alias("nd_vs_clear_1"),
        _nd_vs_clear("2", "1", cd).alias("nd_vs_clear_2"),
    ])

    # The two arbitration pairs, staged side by side.
    pairs = [_pair_stages(a, "3", f) for a in ("1", "2")]
    arbitration = [p1 + p2 for p1, p2 in zip(*pairs, strict=True)]
    arbitration.append([
        _s(_t("d13"), _t("sR13")).alias("s_13"),
        _s(_t("d23"), _t("sR23")).alias("s_23"),
        _outcome_code("1", "3").alias(f"{_T}o13"),
        _outcome_code("2", "3").alias(f"{_T}o23"),
    ])
    # The strings are made here, on the arbitration rows only, rather than after the join on
    # every row (they are null wherever there is no arbitration).
    o13, o23 = _t("o13"), _t("o23")
    # 0 neither, 1 original, 2 retest, 3 both; null when either arbitration outcome is null.
    sides_with = (~o13.is_in(_BAD_CODES)).cast(pl.UInt8) + 2 * (~o23.is_in(_BAD_CODES)).cast(pl.UInt8)
    names = _outcome_names()
    arbitration.append([
        pl.col(f"{_T}i"),
        pl.col("s_13"),
        pl.col("s_23"),
        names.gather(o13).alias("outcome_13"),
        names.gather(o23).alias("outcome_23"),
        pl.lit(pl.Series(list(_SIDES_WITH), dtype=pl.String)).gather(sides_with).alias("arbiter_sides_with"),
    ])

    def freeze(stages: list[list[pl.Expr]]) -> tuple[tuple[pl.Expr, ...], ...]:
        return tuple(tuple(s) for s in stages)

    return _Plan(prepare=freeze(prepare), main=freeze(main), arbitration=freeze(arbitration))


def _staged(lf: pl.LazyFrame, stages: tuple[tuple[pl.Expr, ...], ...]) -> pl.LazyFrame:
    # Staged with_columns: each stage only reads columns of earlier stages, so nothing is
    # computed twice.
    for stage in stages:
        lf = lf.with_columns(stage)
    return lf


def score_pairs(pairs: pl.LazyFrame, policy: Policy | PairPolicy | None = None) -> pl.LazyFrame:
    """Add the pair scores (``PAIR_SCORE_SCHEMA``) to a LazyFrame of ``PAIR_INPUT_SCHEMA`` rows.

    ``policy`` is a ``Policy`` (its ``pairs`` section is used), a bare ``PairPolicy``, or None
    for the defaults. Returns a LazyFrame (nothing is collected); input columns are kept, score
    columns are appended in ``PAIR_SCORE_SCHEMA`` order (score columns already present in the
    input are replaced). Empty input gives empty output with every column. See the module
    docstring for every convention and degenerate case.
    """
    if policy is None:
        pp = PairPolicy()
    elif isinstance(policy, Policy):
        pp = policy.pairs
    else:
        pp = policy
    plan = _plan(
        pp.default_coverage_k,
        critical_difference_factor(pp.cd_probability),
        pp.en_boundary == "iso",
    )
    idx = f"{_T}i"
    # Optional inputs (the arbitration side, horwitz_scale, uncertainties, …) may be left out by
    # a caller; they are then null, exactly as if given empty.
    present = set(pairs.collect_schema().names())
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in PAIR_INPUT_SCHEMA.items() if c not in present]
    if missing:
        pairs = pairs.with_columns(missing)
    pairs = pairs.drop(cs.by_name(*PAIR_SCORE_SCHEMA, require_all=False))
    main = _staged(_staged(pairs, plan.prepare), plan.main)
    # The two arbitration pairs only concern the few rows with a third result: score them on
    # those rows and bring them back by a one-column join on the row index, concatenated
    # horizontally (joining the whole frame would copy every column). Rows without a third
    # result get nulls, which is what the full computation gives them. The join's left side
    # is a bare row count rather than the indexed input, so that the main pass shares no
    # cached sub-plan with the arbitration (a few % of CPU).
    side3 = (
        _c("value_3").is_not_null()
        | _c("censored_3").fill_null(False)
        | _c("verdict_3").is_not_null()
    )
    arb = _staged(_staged(pairs.with_row_index(idx).filter(side3), plan.prepare), plan.arbitration[:-1])
    arb = arb.select(plan.arbitration[-1])
    rows = pairs.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias(idx))
    arb_full = rows.join(arb, on=idx, how="left", maintain_order="left").drop(idx)
    lf = pl.concat([main, arb_full], how="horizontal")

    o12 = _t("o12")
    lf = lf.with_columns(
        _outcome_names().gather(o12).alias("outcome"), o12.is_in(_BAD_CODES).alias("discrepant")
    )
    return lf.select(
        cs.exclude(cs.starts_with(_T)) - cs.by_name(*PAIR_SCORE_SCHEMA), *PAIR_SCORE_SCHEMA
    )
