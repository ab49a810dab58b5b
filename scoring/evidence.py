"""Lab-level evidence from scored retest pairs: the stages and the frame they assemble.

The retest lab is not the truth, normal labs are not unbiased, and many labs are judged at once.
:func:`lab_evidence` runs these stages, each a function with one job:

1. :func:`pairs_in_window` — the pairs completed in the look-back window, each sorted into the
   one evidence family its outcome belongs to: *numeric* (both numbers present; discrepant when
   |d| > CD), *qualitative* (verdicts only), *censored* (a "<L" or not-detected side) or
   *undecidable* (a missing value or verdict: data quality, never evidence).
2. the comparison graph and the bias fit (scoring.attribution): biases anchored on each
   component's median lab; *identifiable* labs are those in a component of at least
   ``min_component_labs`` labs with at least ``min_partners`` distinct partners.
3. blame: each discrepant pair's share per lab (bias/variance split for numeric pairs, the
   error-rate model for qualitative pairs, the arbiter's word where there was arbitration).
4. counts per lab and role.
5. rates (scoring.rates): observed vs expected discrepancies, the empirical-Bayes rate, the
   overdispersed funnel, Benjamini–Hochberg across labs.
6. bias against peers: the between-lab spread τ and how far beyond it a lab's conservative bias
   lies.
7. sign and Wilcoxon tests on the lab's own standardised differences.
8. the CUSUM over time (scoring.cusum), in control at the peers' edge.
9. data-problem patterns (scoring.patterns).

Everything is pure (no I/O).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
import polars.selectors as cs
from scipy import stats

from scoring.attribution import (
    SQRT2,
    BiasFit,
    PeerSpread,
    blame_shares,
    fit_lab_bias,
    peer_spread,
    precision_against_peers,
    qualitative_shares,
)
from scoring.cusum import (
    charts_of_contiguous,
    cusum_grid,
    cusum_limit_of_grid,
    cusum_paths,
    cusum_weights,
)
from scoring.patterns import (
    PATTERNS,
    PatternCounts,
    PatternSelection,
    outlier_counts,
    pattern_counts_of,
    pattern_selection_of_pairs,
)
from scoring.policy import EvidencePolicy, Policy
from scoring.rates import (
    FunnelLimits,
    baseline_probabilities,
    benjamini_hochberg,
    fit_beta_binomial,
    funnel_limits,
    garwood_interval,
    poisson_excess_p,
    shrunk_rates,
)

__all__ = [
    "CUSUM_PATH_SCHEMA",
    "EVIDENCE_INPUT_COLUMNS",
    "EVIDENCE_SCHEMA",
    "GROUP_BIAS_SCHEMA",
    "bias_by_group",
    "cusum_series",
    "lab_evidence",
    "pairs_in_window",
]

# The columns of scored pairs (scoring.pairs.score_pairs) that the evidence reads. The window is
# collected with these alone, so the scores nothing here reads (En, ζ, distances, p_disagree, …)
# are never computed and millions of rows of other columns are never copied.
EVIDENCE_INPUT_COLUMNS = (
    "pair_id", "item_code", "category_code", "kind", "lower_limit", "upper_limit", "lod",
    "lab_1", "lab_2", "lab_3", "value_1", "value_2", "censored_1", "censored_2",
    "censor_limit_1", "censor_limit_2", "reported_on_1", "reported_on_2", "sigma_R_at", "s",
    "exceeds_cd", "outcome", "s_13", "s_23", "arbiter_sides_with", "verdict_contradicts_1",
    "verdict_contradicts_2",
)

_NUMERIC_OUTCOMES = ("consistent", "discrepant", "reversal_within_uncertainty", "reversal")
_QUALITATIVE_OUTCOMES = ("qualitative_agree", "qualitative_reversal")
_CENSORED_OUTCOMES = ("censored_consistent", "censored_discrepant")

_I64, _F64, _BOOL = pl.Int64(), pl.Float64(), pl.Boolean()
_PATTERN_COLUMNS: dict[str, pl.DataType] = {
    f"{name}_{part}": dtype
    for name in PATTERNS
    for part, dtype in (
        ("n", _I64), ("observed", _F64), ("expected", _F64), ("p", _F64), ("q", _F64)
    )
}

EVIDENCE_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(),
    "as_of": pl.Date(),
    "window_start": pl.Date(),
    "pairs": _I64,
    "pairs_original": _I64,
    "pairs_retest": _I64,
    "pairs_arbitration": _I64,
    "pairs_compared": _I64,
    "pairs_quantitative": _I64,
    "pairs_qualitative": _I64,
    "pairs_censored": _I64,
    "pairs_undecidable": _I64,
    "discrepancies": _I64,
    "reversals": _I64,
    "reversals_within_uncertainty": _I64,
    "censored_disagreements": _I64,
    "arbitrations_lost": _I64,
    "component": _I64,
    "component_size": _I64,
    "partners": _I64,
    "identifiable": _BOOL,
    "arbitration_suggested": _BOOL,
    "bias": _F64,
    "bias_se": _F64,
    "bias_z": _F64,
    "bias_p": _F64,
    "bias_q": _F64,
    "bias_conservative": _F64,
    "bias_tau": _F64,
    "bias_peer_limit": _F64,
    "bias_peer_z": _F64,
    "bias_beyond_peers": _F64,
    "excess_variance": _F64,
    "precision_se": _F64,
    "precision_centre": _F64,
    "precision_tau": _F64,
    "precision_p": _F64,
    "precision_q": _F64,
    "precision_beyond_peers": _F64,
    "outside_peers": _BOOL,
    "attributed_discrepancies": _F64,
    "expected_discrepancies": _F64,
    "oe_ratio": _F64,
    "oe_lower": _F64,
    "oe_upper": _F64,
    "excess_p": _F64,
    "excess_q": _F64,
    "eb_rate": _F64,
    "eb_lower": _F64,
    "eb_upper": _F64,
    "eb_p_above_target": _F64,
    "eb_alpha": _F64,
    "eb_beta": _F64,
    "rate_peer_limit": _F64,
    "rate_beyond_peers": _F64,
    "qualitative_errors": _F64,
    "qualitative_expected": _F64,
    "qualitative_rate": _F64,
    "qualitative_p": _F64,
    "qualitative_q": _F64,
    "sign_n": _I64,
    "sign_positive": _I64,
    "sign_p": _F64,
    "sign_q": _F64,
    "wilcoxon_n": _I64,
    "wilcoxon_statistic": _F64,
    "wilcoxon_z": _F64,
    "wilcoxon_p": _F64,
    "wilcoxon_q": _F64,
    "median_s": _F64,
    "cusum_current": _F64,
    "cusum_max": _F64,
    "cusum_limit": _F64,
    "cusum_signal": _BOOL,
    "cusum_signal_on": pl.Date(),
    "funnel_n": _I64,
    "funnel_rate": _F64,
    "funnel_target": _F64,
    "funnel_lower_95": _F64,
    "funnel_upper_95": _F64,
    "funnel_lower_998": _F64,
    "funnel_upper_998": _F64,
    "funnel_z": _F64,
    "funnel_phi": _F64,
    "funnel_tau2": _F64,
    **_PATTERN_COLUMNS,
}


# ------------------------------------------------------------------------------ 1. the window


def pairs_in_window(scored_pairs: pl.LazyFrame, as_of: dt.date, ep: EvidencePolicy,
                    keep: tuple[str, ...] = ()) -> pl.DataFrame:
    """Pairs completed in [as_of − window_days + 1, as_of] (undated pairs kept), with families.

    Only the ``EVIDENCE_INPUT_COLUMNS`` present are kept, and the columns named in ``keep``
    (e.g. the grouping column of :func:`bias_by_group`).

    Adds completed_on (the later report date), numeric / qualitative / censored / undecidable
    (exactly one is true per pair), num_disc (numeric and |d| > CD: ``exceeds_cd`` where the
    frame has it, else outcome discrepant/reversal), qual_disc, reversal (outcome "reversal" or
    "qualitative_reversal").
    """
    window_start = as_of - dt.timedelta(days=ep.window_days - 1)
    present = scored_pairs.collect_schema().names()
    wanted = set(EVIDENCE_INPUT_COLUMNS) | set(keep)
    lazy = scored_pairs.select([c for c in present if c in wanted]).with_columns(
        completed_on=pl.max_horizontal("reported_on_1", "reported_on_2")
    )
    names = lazy.collect_schema().names()
    outcome = pl.col("outcome")
    numeric = outcome.is_in(_NUMERIC_OUTCOMES).fill_null(False) & pl.col("s").is_not_null()
    exceeds = (
        pl.col("exceeds_cd").fill_null(False)
        if "exceeds_cd" in names
        else outcome.is_in(["discrepant", "reversal"])
    )
    in_window = pl.col("completed_on").is_null() | (
        (pl.col("completed_on") <= as_of) & (pl.col("completed_on") >= window_start)
    )
    # When every pair is in the window (a look-back as long as the data), no filter: the frame's
    # columns are then shared with the input instead of copied (a cheap pass over two dates
    # decides it).
    if not lazy.select(in_window.all()).collect().item():
        lazy = lazy.filter(in_window)
    return (
        lazy.with_columns(
            numeric=numeric,
            qualitative=outcome.is_in(_QUALITATIVE_OUTCOMES).fill_null(False),
            censored=outcome.is_in(_CENSORED_OUTCOMES).fill_null(False),
        )
        .with_columns(
            undecidable=~(pl.col("numeric") | pl.col("qualitative") | pl.col("censored")),
            num_disc=pl.col("numeric") & exceeds.fill_null(False),
            qual_disc=(outcome == "qualitative_reversal").fill_null(False),
            reversal=outcome.is_in(["reversal", "qualitative_reversal"]).fill_null(False),
        )
        .collect()
    )


# ------------------------------------------------------------------------ 2–3. graph and blame


@dataclass(frozen=True, slots=True)
class LabIndex:
    labs: pl.Series
    i1: np.ndarray
    i2: np.ndarray
    i3: np.ndarray  # -1 where no arbitration


def _lab_index(df: pl.DataFrame) -> LabIndex:
    """Lab codes sorted, and each side's lab as an index into them (−1 where null).

    Each code column is cast to Categorical once (a hash per row): its physical ids give the
    distinct labs and, through a lookup from id to sorted position, every row's index, without
    sorting, joining or converting millions of strings.
    """
    null = np.iinfo(np.uint32).max
    cols = ("lab_1", "lab_2", "lab_3")
    phys = {
        col: df.get_column(col).cast(pl.Categorical).to_physical().fill_null(null).to_numpy().astype(np.int64)
        for col in cols
    }
    # The code of each id (ids are a column's own), read from one row that carries it.
    local: dict[str, tuple[np.ndarray, list[str]]] = {}
    for col, p in phys.items():
        valid = np.flatnonzero(p != null)
        if not valid.size:
            local[col] = (np.zeros(0, dtype=np.int64), [])
            continue
        row_of = np.full(int(p[valid].max()) + 1, -1, dtype=np.int64)
        row_of[p[valid]] = valid
        ids = np.flatnonzero(row_of >= 0)
        local[col] = (ids, df.get_column(col).gather(row_of[ids]).to_list())
    names = sorted({c for _, codes in local.values() for c in codes})
    position = {c: i for i, c in enumerate(names)}
    labs = pl.Series("lab_code", names, dtype=pl.String)

    def idx(col: str) -> np.ndarray:
        ids, codes = local[col]
        p = phys[col]
        # int32 indices: three per pair, 12 bytes a pair fewer than int64 at every stage
        lookup = np.full(int(ids.max()) + 2 if ids.size else 1, -1, dtype=np.int32)
        lookup[ids] = [position[c] for c in codes]
        return lookup[np.where(p == null, len(lookup) - 1, p)]

    return LabIndex(labs=labs, i1=idx("lab_1"), i2=idx("lab_2"), i3=idx("lab_3"))


@dataclass(frozen=True, slots=True)
class Comparisons:
    """Every two-lab comparison with a standardised difference: a, b (lab indices), s."""

    a: np.ndarray
    b: np.ndarray
    s: np.ndarray


def _comparisons(df: pl.DataFrame, ix: LabIndex) -> Comparisons:
    """Original vs retest on numeric pairs, and each side vs the arbitration lab: in that order,
    each in pair order. The arbitration lab's differences are read on the arbitrated pairs only
    (a few in a hundred), not as columns of nulls over every pair."""
    def col(name: str, rows: np.ndarray | None = None) -> np.ndarray:
        n = df.height if rows is None else rows.size
        if name not in df.columns:
            return np.full(n, np.nan)
        c = df.get_column(name)
        if rows is not None:
            c = c.gather(rows)
        return c.cast(pl.Float64).fill_null(np.nan).to_numpy()

    s12 = col("s")
    keep12 = np.flatnonzero(np.isfinite(s12) & df.get_column("numeric").to_numpy())
    arb = np.flatnonzero(ix.i3 >= 0)
    s13, s23 = col("s_13", arb), col("s_23", arb)
    keep13, keep23 = arb[np.isfinite(s13)], arb[np.isfinite(s23)]
    return Comparisons(
        a=np.concatenate([ix.i1[keep12], ix.i1[keep13], ix.i2[keep23]]),
        b=np.concatenate([ix.i2[keep12], ix.i3[keep13], ix.i3[keep23]]),
        s=np.concatenate([s12[keep12], s13[np.isfinite(s13)], s23[np.isfinite(s23)]]),
    )


@dataclass(frozen=True, slots=True)
class Blame:
    """Per pair: the share of its discrepancy (numeric or qualitative) on each side."""

    side1: np.ndarray
    side2: np.ndarray
    lost1: np.ndarray  # the arbiter sided against side 1
    lost2: np.ndarray


def _blame(df: pl.DataFrame, ix: LabIndex, fit: BiasFit, ep: EvidencePolicy, n_labs: int) -> Blame:
    share1 = blame_shares(ix.i1, ix.i2, fit, ep.blame_floor)
    qual = df.get_column("qualitative").to_numpy()
    qual_disc = df.get_column("qual_disc").to_numpy()
    has_sides = "arbiter_sides_with" in df.columns
    # The arbiter's word as small codes (0 none, 1 original, 2 retest, 3 neither, 4 both):
    # comparing millions of Python strings is what made this stage slow.
    code = (
        df.get_column("arbiter_sides_with")
        .replace_strict({"original": 1, "retest": 2, "neither": 3, "both": 4}, default=0, return_dtype=pl.Int8)
        .fill_null(0)
        .to_numpy()
        if has_sides
        else np.zeros(df.height, dtype=np.int8)
    )
    if qual_disc.any():
        rev = np.flatnonzero(qual_disc & qual)
        sides = np.full(df.height, None, dtype=object) if has_sides else None
        if sides is not None:
            sides[rev] = np.array([None, "original", "retest", "neither", "both"], dtype=object)[code[rev]]
        q_share = qualitative_shares(
            ix.i1, ix.i2, qual_disc, qual, sides, n_labs, prior_pairs=ep.baseline_prior_pairs
        )
        share1 = np.where(qual, q_share, share1)
    blame1, blame2 = share1, 1.0 - share1
    lost1 = lost2 = np.zeros(df.height, dtype=bool)
    if has_sides:
        # The arbiter's word overrides the shares on the arbitrated pairs only (original: the
        # retest lab erred; retest: the original erred; neither: both did; both: no change).
        arb = np.flatnonzero((code >= 1) & (code <= 3))
        c = code[arb]
        blame1[arb] = np.where(c == 1, 0.0, 1.0)
        blame2[arb] = np.where(c == 2, 0.0, 1.0)
        lost1 = (code == 2) | (code == 3)
        lost2 = (code == 1) | (code == 3)
    not_disc = ~(df.get_column("num_disc").to_numpy() | qual_disc)
    # no discrepancy, no blame (in place: two pair-sized arrays fewer)
    np.copyto(blame1, 0.0, where=not_disc)
    np.copyto(blame2, 0.0, where=not_disc)
    return Blame(side1=blame1, side2=blame2, lost1=lost1, lost2=lost2)


# ---------------------------------------------------------------------------------- 4. counts


def _chart_order(rows: pl.DataFrame, *, two_sides: bool = False) -> pl.Series:
    """Row order by (idx, completed_on with nulls first, pair_id): each lab's chart in time.

    The three keys are packed into one integer (lab, day, rank of the pair id) whenever it fits
    in 63 bits, which it does for any realistic window: one integer sort instead of three keys.

    two_sides: the rows are two halves with the same pairs in the same order (a side each), as
    :func:`_chart_rows` makes them. The pairs are then sorted once by (day, pair), each pair
    stands for its two sides (original first), and a stable sort by lab (a radix sort on small
    integers) groups them by lab with time order kept: the same order from a sort of half the
    keys, none of them carrying the lab.
    """
    if rows.height == 0:
        return pl.Series(np.zeros(0, dtype=np.uint32))
    if two_sides and rows.height % 2 == 0:
        order = _two_side_order(rows)
        if order is not None:
            return order
    day = rows.get_column("completed_on").cast(pl.Int32).cast(pl.Int64)
    first, last = day.min(), day.max()
    days = 1 if first is None else int(last) - int(first) + 2
    day_code = (day - (0 if first is None else int(first)) + 1).fill_null(0).to_numpy()
    pid = rows.get_column("pair_id")
    if "pair_rank" in rows.columns:
        pid_rank = rows.get_column("pair_rank").to_numpy()
    else:
        pid_rank = pid.rank("dense").cast(pl.Int64).to_numpy() if pid.null_count() == 0 else None
    idx = rows.get_column("idx").to_numpy().astype(np.int64)
    n_ids = int(pid_rank.max()) + 1 if pid_rank is not None else 0
    n_labs = int(idx.max()) + 1
    if pid_rank is None or idx.min() < 0 or math.log2(n_labs) + math.log2(days) + math.log2(n_ids) > 62:
        return rows.with_row_index("__r").sort(
            "idx", "completed_on", "pair_id", nulls_last=False
        ).get_column("__r")
    key = (idx * days + day_code) * n_ids + pid_rank
    return pl.Series(key).arg_sort()


def _two_side_order(rows: pl.DataFrame) -> pl.Series | None:
    """:func:`_chart_order` of two halves of the same pairs; None where it does not apply."""
    return _two_side_order_of(rows.slice(0, rows.height // 2), rows.get_column("idx"))


def _two_side_order_of(pairs: pl.DataFrame, idx: pl.Series) -> pl.Series | None:
    """:func:`_two_side_order` from the first half's pair columns (pair_id, completed_on,
    pair_rank if known) and both halves' lab index."""
    half = pairs.height
    lo_lab, hi_lab = idx.min(), idx.max()
    if lo_lab is None or int(lo_lab) < 0 or int(hi_lab) > np.iinfo(np.int16).max:
        return None
    pid = pairs.get_column("pair_id")
    if "pair_rank" in pairs.columns:
        pid_rank = pairs.get_column("pair_rank").to_numpy()
    elif pid.null_count() == 0:
        pid_rank = pid.rank("dense").cast(pl.Int64).to_numpy()
    else:
        return None
    day = pairs.get_column("completed_on").cast(pl.Int32)
    first, last = day.min(), day.max()
    days = 1 if first is None else int(last) - int(first) + 2
    n_ids = int(pid_rank.max()) + 1
    if math.log2(days) + math.log2(n_ids) > 62:
        return None
    key = (day.cast(pl.Int64) - (0 if first is None else int(first)) + 1).fill_null(0).to_numpy()
    if days <= np.iinfo(np.int16).max and bool(np.all(pid_rank[1:] > pid_rank[:-1])):
        # Pairs in id order (as the service reads them): the order by (day, pair) is a stable
        # sort by day alone, a radix sort of small integers instead of a sort of packed keys.
        by_time = np.argsort(key.astype(np.int16), kind="stable")
    else:
        key = key * n_ids + pid_rank
        by_time = pl.Series(key).arg_sort().to_numpy()
    del key
    pre = np.empty(2 * half, dtype=np.int64)
    pre[0::2] = by_time
    pre[1::2] = by_time + half
    del by_time
    return pl.Series(pre[np.argsort(idx.cast(pl.Int16).to_numpy()[pre], kind="stable")])


def _chart_rows(df: pl.DataFrame, ix: LabIndex, blame: Blame, p_lab: np.ndarray) -> pl.DataFrame:
    """One row per numeric pair and side (original, retest): what the CUSUM charts."""
    rows, common = _chart_pairs(df)
    common["p_lab"] = p_lab[rows]
    return pl.concat(
        [
            pl.DataFrame({**common, "idx": ix.i1[rows], "blame": blame.side1[rows]}),
            pl.DataFrame({**common, "idx": ix.i2[rows], "blame": blame.side2[rows]}),
        ]
    )


def _chart_pairs(df: pl.DataFrame) -> tuple[np.ndarray, dict[str, pl.Series | np.ndarray]]:
    """The numeric pairs' rows and the columns :func:`_chart_rows` gives each side."""
    rows = np.flatnonzero(df.get_column("numeric").to_numpy())
    pair_id = df.get_column("pair_id")
    common: dict[str, pl.Series | np.ndarray] = {
        "pair_id": pair_id.gather(rows),
        "completed_on": df.get_column("completed_on").gather(rows),
    }
    if pair_id.null_count() == 0 and pair_id.is_sorted():
        # pairs in id order (as the service reads them): a pair's rank is its row
        common["pair_rank"] = rows.astype(np.int64)
    return rows, common


def _chart_order_of(df: pl.DataFrame, ix: LabIndex) -> np.ndarray:
    """:func:`_chart_order` (two_sides) of the rows :func:`_chart_rows` makes, from the pairs'
    columns alone: the order needs no blame, so it is found beside the bias fit."""
    rows, common = _chart_pairs(df)
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    idx = pl.Series("idx", np.concatenate([ix.i1[rows], ix.i2[rows]]))
    order = _two_side_order_of(pl.DataFrame(common), idx)
    if order is None:
        both = pl.concat([pl.DataFrame(common)] * 2).with_columns(idx)
        order = _chart_order(both)
    return order.to_numpy()


def _lab_chart(st: _Stages, policy: Policy, order: np.ndarray) -> tuple[pl.DataFrame, float]:
    """The CUSUM limit h and :func:`lab_cusum` of :func:`_cusum_rows` (without ids), given that
    rows' chart order (:func:`_chart_order_of`): the same charts, with only the weights in
    chart order (the rows' y and p, and a frame of them, are never gathered)."""
    cp = policy.cusum
    chart_p = _chart_p(st, policy)
    h = cusum_limit_of_grid(cusum_grid(np.r_[chart_p, chart_p]), cp)
    p = pl.Series(chart_p)
    del chart_p
    rows = np.flatnonzero(st.df.get_column("numeric").to_numpy())
    half = rows.size
    w = np.empty(2 * half)
    for k, side in enumerate((st.blame.side1, st.blame.side2)):
        w[k * half : (k + 1) * half] = cusum_weights(pl.Series(side[rows]).clip(0.0, 1.0), p, cp.odds_ratio)
    del p
    w_ord = np.empty_like(w)
    idx = np.concatenate([st.ix.i1[rows], st.ix.i2[rows]])
    idx_ord = np.empty_like(idx)
    # In slices: a gather by a million-row slice of the order converts only that slice's indices.
    step = 1 << 20
    for lo in range(0, order.size, step):
        o = order[lo : lo + step]
        np.take(w, o, out=w_ord[lo : lo + step])
        np.take(idx, o, out=idx_ord[lo : lo + step])
    del w, idx
    starts = (
        np.flatnonzero(np.r_[True, idx_ord[1:] != idx_ord[:-1]]) if idx_ord.size else np.zeros(0, dtype=np.int64)
    )
    current, cmax, signal_row = charts_of_contiguous(starts, w_ord, h)
    del w_ord
    # A chart row's date is its pair's: the row's place in the order, modulo the halves.
    hit = np.where(signal_row >= 0, signal_row, 0)
    pos = order[hit] if order.size else hit
    pair_of = rows[np.where(pos >= half, pos - half, pos)] if rows.size else pos
    dates = st.df.get_column("completed_on")
    signal_on = dates.gather(pair_of).set(pl.Series(signal_row < 0), None) if starts.size else dates.clear()
    return pl.DataFrame({
        "idx": pl.Series(idx_ord[starts]),
        "cusum_current": current,
        "cusum_max": cmax,
        "cusum_signal_on": signal_on,
    }), h


def _pattern_selection(df: pl.DataFrame, ix: LabIndex, ep: EvidencePolicy) -> PatternSelection:
    """The patterns' bias-free part, reading the pairs' sides a slice at a time."""
    return pattern_selection_of_pairs(
        df, ix.i1, ix.i2, len(ix.labs), band=ep.shading_band, clear=ep.nd_clear,
        contradiction_floor=ep.contradiction_floor,
    )


def _all_distinct(ids: pl.Series) -> bool:
    """No value twice (nulls count as values). Pairs come in id order, where a look at
    neighbours decides it without hashing millions of ids."""
    if ids.null_count() == 0 and ids.is_sorted():
        return ids.len() < 2 or bool((ids.slice(1) != ids.slice(0, ids.len() - 1)).all())
    return bool(ids.is_unique().all())


def _side_index(ix: LabIndex) -> tuple[np.ndarray, np.ndarray]:
    """Each side's lab index with the sides without a lab at n_labs (a cell that is dropped)."""
    n_labs = len(ix.labs)
    return np.where(ix.i1 >= 0, ix.i1, n_labs), np.where(ix.i2 >= 0, ix.i2, n_labs)


def _fixed_counts(df: pl.DataFrame, ix: LabIndex, p_lab: np.ndarray) -> dict[str, np.ndarray]:
    """Counts per lab and role, by bincounts over the pairs' lab indices (both sides at once):
    those that do not depend on the bias fit (all but the blame's), in their columns' order,
    found in the worker before the fit (:func:`_counts_with` adds the rest)."""
    n_labs = len(ix.labs)
    i1, i2, i3 = ix.i1, ix.i2, ix.i3
    ok2, ok3 = i2 >= 0, i3 >= 0
    (j1, j2), j3 = _side_index(ix), np.where(ok3, i3, n_labs)

    def per_lab(w1: np.ndarray | None, w2: np.ndarray | None = None) -> np.ndarray:
        # index n_labs collects the sides without a lab and is dropped
        a = np.bincount(j1, weights=w1, minlength=n_labs + 1)
        b = np.bincount(j2, weights=w1 if w2 is None else w2, minlength=n_labs + 1)
        return (a + b)[:n_labs]

    # The pair's flags as the bits of one small code: one integer bincount per side over
    # (lab, code) gives every flag's count per lab (whole numbers: the same as summing each flag).
    flags = ("numeric", "qualitative", "censored", "undecidable", "num_disc", "reversal")
    outcome = df.get_column("outcome")
    bits = [df.get_column(name).fill_null(False).to_numpy() for name in flags] + [
        (outcome == "reversal_within_uncertainty").fill_null(False).to_numpy(),
        (outcome == "censored_discrepant").fill_null(False).to_numpy(),
    ]
    code = np.zeros(df.height, dtype=np.uint8)
    for k, bit in enumerate(bits):
        code |= bit.view(np.uint8) << np.uint8(k)
    del bits
    n_codes = 1 << 8
    by_code = (
        np.bincount(j1 * n_codes + code, minlength=(n_labs + 1) * n_codes)
        + np.bincount(j2 * n_codes + code, minlength=(n_labs + 1) * n_codes)
    ).reshape(n_labs + 1, n_codes)[:n_labs]
    del code
    code_has = (np.arange(n_codes)[:, None] >> np.arange(8)[None, :]) & 1
    flag_counts = by_code @ code_has  # (labs, flags)
    original = np.bincount(j1, minlength=n_labs + 1)[:n_labs]
    retest = np.bincount(j2, minlength=n_labs + 1)[:n_labs]
    arbitration = np.bincount(j3, minlength=n_labs + 1)[:n_labs]
    pair_ids = df.get_column("pair_id")
    if _all_distinct(pair_ids):
        # A pair counts once for a lab that sits on two of its sides.
        dup2 = ok2 & (i2 == i1)
        dup3 = ok3 & ((i3 == i1) | (i3 == i2))
        pairs = original + retest + arbitration - np.bincount(j2[dup2], minlength=n_labs + 1)[:n_labs] - (
            np.bincount(j3[dup3], minlength=n_labs + 1)[:n_labs]
        )
    else:  # the same pair twice in the frame: count distinct ids
        ids = pl.DataFrame({
            "pair_id": pl.concat([pair_ids, pair_ids, pair_ids]),
            "idx": np.r_[i1, i2, i3],
        }).filter(pl.col("idx") >= 0).group_by("idx").agg(n=pl.col("pair_id").n_unique())
        pairs = np.zeros(n_labs, dtype=np.int64)
        pairs[ids.get_column("idx").to_numpy()] = ids.get_column("n").to_numpy()
    return {
        "pairs": pairs,
        "pairs_original": original,
        "pairs_retest": retest,
        "pairs_compared": original + retest,
        "pairs_quantitative": flag_counts[:, 0],
        "pairs_qualitative": flag_counts[:, 1],
        "pairs_censored": flag_counts[:, 2],
        "pairs_undecidable": flag_counts[:, 3],
        "discrepancies": flag_counts[:, 4],
        "reversals": flag_counts[:, 5],
        "reversals_within_uncertainty": flag_counts[:, 6],
        "censored_disagreements": flag_counts[:, 7],
        "pairs_arbitration": arbitration,
        # p_lab is 0 on the pairs that are not numeric (_fixed_counts_after).
        "expected_discrepancies": per_lab(p_lab),
    }


def _counts_with(df: pl.DataFrame, ix: LabIndex, blame: Blame, fixed: dict[str, np.ndarray]) -> pl.DataFrame:
    """The counts per lab (one row per lab) from :func:`_fixed_counts` and the blame."""
    n_labs = len(ix.labs)
    j1, j2 = _side_index(ix)

    def per_lab(w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
        a = np.bincount(j1, weights=w1, minlength=n_labs + 1)
        b = np.bincount(j2, weights=w2, minlength=n_labs + 1)
        return (a + b)[:n_labs]

    numeric = df.get_column("numeric").to_numpy().astype(float)
    qualitative = df.get_column("qualitative").to_numpy().astype(float)
    ints = {k: v for k, v in fixed.items() if k != "expected_discrepancies"}
    lost = per_lab(blame.lost1.astype(float), blame.lost2.astype(float))
    order = [*list(ints)[: list(ints).index("pairs_arbitration")], "arbitrations_lost", "pairs_arbitration"]
    ints["arbitrations_lost"] = lost
    return pl.DataFrame({
        "idx": np.arange(n_labs, dtype=np.int64),
        "lab_code": ix.labs,
        **{k: pl.Series(np.rint(ints[k]).astype(np.int64)) for k in order},
        "attributed_discrepancies": per_lab(blame.side1 * numeric, blame.side2 * numeric),
        "expected_discrepancies": fixed["expected_discrepancies"],
        "qualitative_errors": per_lab(blame.side1 * qualitative, blame.side2 * qualitative),
    })




# ----------------------------------------------------------------------------------- 5. rates


@dataclass(frozen=True, slots=True)
class RateEvidence:
    oe: np.ndarray
    oe_lower: np.ndarray
    oe_upper: np.ndarray
    excess_p: np.ndarray
    eb_rate: np.ndarray
    eb_lower: np.ndarray
    eb_upper: np.ndarray
    eb_p_above_target: np.ndarray
    eb_alpha: float
    eb_beta: float
    funnel: FunnelLimits
    peer_limit: np.ndarray
    beyond_peers: np.ndarray


def _rates(counts: pl.DataFrame, ep: EvidencePolicy) -> RateEvidence:
    n = counts.get_column("pairs_quantitative").to_numpy().astype(float)
    raw = counts.get_column("discrepancies").to_numpy().astype(float)
    o = counts.get_column("attributed_discrepancies").to_numpy()
    e = counts.get_column("expected_discrepancies").to_numpy()
    has_n = n > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = garwood_interval(o, ep.credible_level)
        oe = np.where(e > 0, o / e, np.nan)
        oe_lo = np.where(e > 0, lo / e, np.nan)
        oe_hi = np.where(e > 0, hi / e, np.nan)
    # The prior's strength (how much labs truly differ) is fitted where the beta-binomial
    # likelihood is exact, on whole counts of discrepant pairs; its mean is that of the
    # attributed counts, which split each discrepancy between two labs.
    prior = fit_beta_binomial(raw, n, ep.eb_max_prior_pairs)
    mean = float(o[has_n].sum() / n[has_n].sum()) if has_n.any() else prior.mean
    mean = min(max(mean, 1e-6), 1 - 1e-6)
    eb = shrunk_rates(o, n, mean, prior.strength, level=ep.credible_level, target=ep.target_rate)
    fun = funnel_limits(o, n, ep.funnel_winsor)
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = fun.target * (1 - fun.target) / n
        peer_limit = np.where(has_n, fun.target + ep.rate_peer_z * np.sqrt(s2 + fun.tau2), np.nan)
    beyond = np.where(has_n, np.maximum(0.0, eb.rate - peer_limit), np.nan)
    return RateEvidence(
        oe=oe, oe_lower=oe_lo, oe_upper=oe_hi,
        excess_p=np.where(has_n, poisson_excess_p(o, e), np.nan),
        eb_rate=eb.rate, eb_lower=eb.lower, eb_upper=eb.upper,
        eb_p_above_target=eb.p_above_target,
        eb_alpha=mean * prior.strength, eb_beta=(1 - mean) * prior.strength,
        funnel=fun, peer_limit=peer_limit, beyond_peers=beyond,
    )


def _qualitative(counts: pl.DataFrame, ep: EvidencePolicy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(expected errors, shrunk rate, one-sided p) of wrong verdicts on qualitative items.

    Each disagreement is one wrong verdict among two, so the pooled per-verdict error rate is
    all attributed errors over all qualitative pair sides; the shrunk rate adds
    baseline_prior_pairs pseudo-pairs at that rate (a lab with 5 such pairs and one error is not
    a 20 % lab).
    """
    nq = counts.get_column("pairs_qualitative").to_numpy().astype(float)
    oq = counts.get_column("qualitative_errors").to_numpy()
    pooled = oq.sum() / nq.sum() if nq.sum() > 0 else 0.0
    k = ep.baseline_prior_pairs
    expected = nq * pooled
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(nq > 0, (oq + k * pooled) / (nq + k), np.nan)
    p = np.where(nq > 0, poisson_excess_p(oq, expected), np.nan)
    return expected, rate, p


# --------------------------------------------------------------------------------- 6. peers


def _identifiable(fit: BiasFit, ep: EvidencePolicy) -> np.ndarray:
    g = fit.graph
    return g.involved & (g.component_size >= ep.min_component_labs) & (g.partners >= ep.min_partners)


@dataclass(frozen=True, slots=True)
class BiasEvidence:
    bias: np.ndarray
    se: np.ndarray
    z: np.ndarray
    p: np.ndarray
    q: np.ndarray
    conservative: np.ndarray
    peers: PeerSpread
    peer_z: np.ndarray
    beyond: np.ndarray


def _bias_evidence(fit: BiasFit, identifiable: np.ndarray, n_quant: np.ndarray, ep: EvidencePolicy) -> BiasEvidence:
    """Bias against zero (significance) and against the peers' spread (relevance).

    A bias is relative to its component's median lab, whose own normal bias is unknown: the
    median of k labs drawn from the peers' spread τ varies by about (π/2) τ² / k (the asymptotic
    variance of a normal median). That is negligible in the main component and decisive in an
    isolated triangle, where the middle lab's bias is the anchor; it is added to the fit's
    variance before the lab is judged.
    """
    involved = fit.graph.involved & np.isfinite(fit.se)
    bias = np.where(involved, fit.b, np.nan)
    judged = identifiable & (n_quant >= ep.min_quantitative_pairs)
    fit_se = np.where(involved, fit.se, np.nan)
    peers = peer_spread(bias, fit_se, judged, peer_z=ep.peer_z, tau_floor=ep.tau_floor)
    anchor_var = (np.pi / 2) * peers.tau**2 / np.maximum(fit.graph.component_size, 1)
    se = np.sqrt(fit_se**2 + anchor_var)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(involved & (se > 0), bias / se, np.nan)
        peer_z = bias / np.sqrt(peers.tau**2 + se**2)
    p = 2.0 * stats.norm.sf(np.abs(z))
    # The family for the FDR is the labs whose bias is judged at all.
    q = benjamini_hochberg(np.where(judged, p, np.nan))
    conservative = np.maximum(0.0, np.abs(bias) - 2.0 * se)
    beyond = np.maximum(0.0, conservative - ep.peer_z * peers.tau)
    return BiasEvidence(bias, se, z, p, q, conservative, peers, peer_z, beyond)


# ------------------------------------------------------------------------ 7. sign, Wilcoxon


def _sign_tests(comp_a: np.ndarray, comp_b: np.ndarray, s: np.ndarray) -> pl.DataFrame:
    """Per lab: sign counts, the Wilcoxon W+ with its tie correction, the median of s.

    Each comparison counts for both labs, oriented (s for a, −s for b). Ranks of |s| within a
    lab (average ranks for ties, zeros dropped) come from the order by (lab, |s|): a rank is the
    position in the lab's run plus the mean offset of its run of equal values.

    Both orientations share |s|, so only the comparisons' own |s| is sorted (one float key, half
    the rows); each comparison then stands for its two sides, and a stable sort by lab alone (a
    radix sort on small integers) groups them by lab with |s| still ascending. Ties may come in
    another order than from one sort by (lab, |s|), which changes no rank (equal values share the
    run's average rank). Indices are int32 and temporaries are freed as soon as they are read: at
    10 M pairs every array here has 20 M entries.
    """
    n = s.size
    n_labs = int(max(comp_a.max(), comp_b.max())) + 1 if n else 0
    lab_type = np.int16 if n_labs <= np.iinfo(np.int16).max else np.int32
    nz = np.flatnonzero(s != 0)
    by_abs = nz[pl.Series(np.abs(s[nz])).arg_sort().to_numpy()]
    del nz
    # side 0 of a comparison is lab a (oriented +s), side 1 lab b (oriented −s)
    side = np.empty(2 * by_abs.size, dtype=np.int64)
    side[0::2] = by_abs
    side[1::2] = by_abs + n
    del by_abs
    lab_of = np.r_[comp_a, comp_b].astype(lab_type)
    side = side[np.argsort(lab_of[side], kind="stable")]
    li = lab_of[side].astype(np.int32)
    is_b = side >= n
    sv = s[np.where(is_b, side - n, side)]
    del side
    pos = (sv > 0) != is_b  # s > 0 for lab a, s < 0 for lab b (no zeros here)
    del is_b
    la = np.abs(sv)
    del sv
    m = li.size
    sign_n = np.bincount(li, minlength=n_labs)
    # rank of |s| within the lab: the position in the lab's run (1-based); ties share the
    # average rank of their run of equal values (a run's first position + (length − 1) / 2)
    lab_first = np.cumsum(sign_n) - sign_n
    rank = (np.arange(m, dtype=np.int64) - lab_first[li] + 1).astype(float)
    tied_prev = np.zeros(m, dtype=bool)  # equal to the row before, in the same lab
    if m > 1:
        np.equal(la[1:], la[:-1], out=tied_prev[1:])
        tied_prev[1:] &= li[1:] == li[:-1]
    del la
    tie = np.zeros(n_labs)
    if tied_prev.any():
        # only rows in a run of ties change (real data: values reported to a few decimals)
        in_run = tied_prev.copy()
        in_run[:-1] |= tied_prev[1:]
        rows = np.flatnonzero(in_run)
        starts = ~tied_prev[rows]
        run_id = np.cumsum(starts) - 1
        run_first = rows[starts]
        run_len = np.bincount(run_id)
        rank[rows] = (rank[run_first] + (run_len - 1) / 2.0)[run_id]
        t = run_len.astype(float)
        tie = np.bincount(li[run_first], weights=(t**3 - t) / 48.0, minlength=n_labs)
    del tied_prev
    # a side that is not positive adds nothing to W+ (sums of the same terms in the same order)
    w_plus = np.bincount(li[pos], weights=rank[pos], minlength=n_labs)
    sign_pos = np.bincount(li[pos], minlength=n_labs)
    del li, pos, rank
    present = (np.bincount(comp_a, minlength=n_labs) + np.bincount(comp_b, minlength=n_labs)) > 0
    medians = pl.DataFrame({"idx": lab_of, "s": np.r_[s, -s]}).group_by("idx").agg(
        median_s=pl.col("s").median()
    ).with_columns(pl.col("idx").cast(pl.Int64))
    labs = np.flatnonzero(present)
    return pl.DataFrame({
        "idx": labs,
        "sign_n": sign_n[labs].astype(np.int64),
        "sign_positive": sign_pos[labs].astype(np.int64),
        "wilcoxon_statistic": w_plus[labs],
        "tie": tie[labs],
    }).join(medians, on="idx", how="left")


def _sign_columns(out: pl.DataFrame) -> dict[str, np.ndarray]:
    sn = out.get_column("sign_n").fill_null(0).to_numpy().astype(float)
    sk = out.get_column("sign_positive").fill_null(0).to_numpy().astype(float)
    sign_p = np.where(sn > 0, np.minimum(1.0, 2.0 * stats.binom.cdf(np.minimum(sk, sn - sk), sn, 0.5)), np.nan)
    wplus = out.get_column("wilcoxon_statistic").fill_null(0.0).to_numpy()
    tie = out.get_column("tie").fill_null(0.0).to_numpy()
    mean_w = sn * (sn + 1) / 4.0
    var_w = sn * (sn + 1) * (2 * sn + 1) / 24.0 - tie
    with np.errstate(divide="ignore", invalid="ignore"):
        d = wplus - mean_w
        d = d - 0.5 * np.sign(d)
        wz = np.where((sn > 0) & (var_w > 0), d / np.sqrt(var_w), np.nan)
    wp = np.where(np.isfinite(wz), 2.0 * stats.norm.sf(np.abs(wz)), np.where(sn > 0, 1.0, np.nan))
    return {"sign_p": sign_p, "wilcoxon_z": wz, "wilcoxon_p": wp}


# ------------------------------------------------------------------------------- assembly


def _codes(df: pl.DataFrame, name: str) -> np.ndarray:
    """A code column's Categorical ids (a missing code one more id), as a grouping key."""
    ids = df.get_column(name).cast(pl.Categorical).to_physical().cast(pl.Int64)
    top = ids.max()
    return ids.fill_null(0 if top is None else int(top) + 1).to_numpy()


@dataclass(frozen=True, slots=True)
class _Stages:
    """Stages 1–5, shared by the evidence and by the series its charts are drawn from."""

    df: pl.DataFrame
    ix: LabIndex
    comps: Comparisons
    fit: BiasFit
    identifiable: np.ndarray
    blame: Blame
    p_lab: np.ndarray
    counts: pl.DataFrame
    rates: RateEvidence


def _baseline(df: pl.DataFrame, ep: EvidencePolicy) -> np.ndarray:
    """Each numeric pair's baseline discrepancy probability, from numeric pairs only (the other
    families' pairs neither count nor get one), by bincounts over the codes' integer ids."""
    return baseline_probabilities(
        df.get_column("numeric").to_numpy(), df.get_column("num_disc").to_numpy(),
        _codes(df, "category_code"), _codes(df, "item_code"), ep.baseline, ep.baseline_prior_pairs,
    )


def _fixed_counts_after(
    df: pl.DataFrame, ix: LabIndex, ep: EvidencePolicy, baseline: Future[np.ndarray] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each pair's expected share of a discrepancy per side (p_lab: half the baseline
    probability, 0 for a pair that is not numeric) and the fit-free counts; the baseline from
    its job when one was started."""
    p_expected = _baseline(df, ep) if baseline is None else baseline.result()
    p_lab = np.where(df.get_column("numeric").to_numpy(), p_expected, 0.0) / 2.0
    return p_lab, _fixed_counts(df, ix, p_lab)


def _stages(
    scored_pairs: pl.LazyFrame, policy: Policy, as_of: dt.date,
    with_comparisons: Callable[[pl.DataFrame, LabIndex, Comparisons], None] | None = None,
    worker: ThreadPoolExecutor | None = None,
) -> _Stages | None:
    """The window, graph, bias fit, blame, counts and rates; None when the window is empty.
    ``with_comparisons`` is handed the window's pairs, the lab index and the comparisons as soon
    as they exist (before the fit). With a ``worker`` the baseline probabilities are found there
    while the lab index and the comparisons are built."""
    ep = policy.evidence
    df = pairs_in_window(scored_pairs, as_of, ep)
    if df.height == 0:
        return None
    baseline_job = worker.submit(_baseline, df, ep) if worker is not None else None
    ix = _lab_index(df)
    fixed_job = worker.submit(_fixed_counts_after, df, ix, ep, baseline_job) if worker is not None else None
    n_labs = len(ix.labs)
    comps = _comparisons(df, ix)
    if with_comparisons is not None:
        with_comparisons(df, ix, comps)
    fit = fit_lab_bias(comps.a, comps.b, comps.s, n_labs, ep)
    identifiable = _identifiable(fit, ep)
    blame = _blame(df, ix, fit, ep, n_labs)
    p_lab, fixed = _fixed_counts_after(df, ix, ep) if fixed_job is None else fixed_job.result()
    counts = _counts_with(df, ix, blame, fixed)
    return _Stages(df=df, ix=ix, comps=comps, fit=fit, identifiable=identifiable, blame=blame, p_lab=p_lab,
                   counts=counts, rates=_rates(counts, ep))


def _chart_lift(st: _Stages, policy: Policy) -> float:
    """The in-control probabilities' factor: the peers' edge of the funnel over its target."""
    fun = st.rates.funnel
    lift = 1.0
    if np.isfinite(fun.target) and fun.target > 0:
        lift = 1.0 + policy.cusum.peer_z * float(np.sqrt(fun.tau2)) / fun.target
    return lift


def _chart_p(st: _Stages, policy: Policy) -> np.ndarray:
    """The CUSUM's in-control probability of each numeric pair (one value per pair; both sides
    of a pair have it), as :func:`_cusum_rows` computes it."""
    p = st.p_lab[st.df.get_column("numeric").to_numpy()] * _chart_lift(st, policy)
    return np.clip(p, 0.0, 0.5, out=p)


def _cusum_rows(st: _Stages, policy: Policy, *, ids: bool = True) -> pl.DataFrame:
    """The CUSUM's rows (idx, completed_on, pair_id, y, p) in chart order: numeric pairs, in
    control at the peers' edge of the funnel. ids=False: without pair_id (and the pair rank), for
    a chart that needs only its values and dates (two rows per numeric pair: 16 bytes a row)."""
    lift = _chart_lift(st, policy)
    rows = _chart_rows(st.df, st.ix, st.blame, st.p_lab)
    order = _chart_order(rows, two_sides=True)
    # The columns the chart does not need go before the gather (their buffers with them).
    rows = rows.select(
        "idx", "completed_on",
        *((["pair_id", cs.by_name("pair_rank", require_all=False)]) if ids else []),
        y=pl.col("blame").clip(0.0, 1.0),
        p=(pl.col("p_lab") * lift).clip(0.0, 0.5),
    )
    return rows.gather(order)


CUSUM_PATH_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(),
    "pair_id": _I64,
    "completed_on": pl.Date(),
    "y": _F64,
    "p": _F64,
    "cusum": _F64,
}


def cusum_series(scored_pairs: pl.LazyFrame, policy: Policy, *, as_of: dt.date) -> pl.DataFrame:
    """Every lab's CUSUM path as :func:`lab_evidence` charts it (CUSUM_PATH_SCHEMA): one row
    per numeric pair and side in chart order, y (the lab's attributed share), p (in-control
    probability) and the chart's value after the pair. Its maximum per lab is the evidence's
    cusum_max; the limit h is the evidence's cusum_limit (not recalibrated here)."""
    st = _stages(scored_pairs, policy, as_of)
    if st is None:
        return pl.DataFrame(schema=CUSUM_PATH_SCHEMA)
    path = cusum_paths(_cusum_rows(st, policy), odds_ratio=policy.cusum.odds_ratio)
    codes = pl.DataFrame({"idx": np.arange(len(st.ix.labs), dtype=np.int32), "lab_code": st.ix.labs})
    return (
        path.join(codes, on="idx", how="left", maintain_order="left")
        .rename({"c": "cusum"})
        .select(pl.col(c).cast(t) for c, t in CUSUM_PATH_SCHEMA.items())
    )


GROUP_BIAS_SCHEMA: dict[str, pl.DataType] = {
    "group": pl.String(),
    "lab_code": pl.String(),
    "pairs_quantitative": _I64,
    "identifiable": _BOOL,
    "bias": _F64,
    "bias_se": _F64,
    "bias_tau": _F64,
    "bias_peer_limit": _F64,
}


def bias_by_group(scored_pairs: pl.LazyFrame, policy: Policy, *, as_of: dt.date, by: str) -> pl.DataFrame:
    """Lab biases against peers as :func:`lab_evidence` computes them, but from each group's
    pairs alone (``by``: a column of the pairs, e.g. category_code), GROUP_BIAS_SCHEMA: each
    group has its own comparison graph, anchor and peers' spread τ. A lab's bias that differs
    between groups (an item family it measures high) shows here and is averaged away overall.
    Rows for every lab with a comparison in the group, sorted by group and lab."""
    ep = policy.evidence
    df = pairs_in_window(scored_pairs, as_of, ep, keep=(by,))
    frames = []
    for (key,), part in df.filter(pl.col(by).is_not_null()).group_by(by, maintain_order=True):
        ix = _lab_index(part)
        n_labs = len(ix.labs)
        comps = _comparisons(part, ix)
        if len(comps.s) == 0:
            continue
        fit = fit_lab_bias(comps.a, comps.b, comps.s, n_labs, ep)
        identifiable = _identifiable(fit, ep)
        numeric = part.get_column("numeric").to_numpy()
        n_quant = np.bincount(np.r_[ix.i1[numeric], ix.i2[numeric]], minlength=n_labs)
        bias = _bias_evidence(fit, identifiable, n_quant, ep)
        frames.append(pl.DataFrame({
            "group": [str(key)] * n_labs,
            "lab_code": ix.labs,
            "pairs_quantitative": n_quant.astype(np.int64),
            "identifiable": identifiable,
            "bias": _col(bias.bias),
            "bias_se": _col(bias.se),
            "bias_tau": [bias.peers.tau] * n_labs,
            "bias_peer_limit": [ep.peer_z * bias.peers.tau] * n_labs,
        }).filter(pl.Series(fit.graph.involved)))
    if not frames:
        return pl.DataFrame(schema=GROUP_BIAS_SCHEMA)
    return (
        pl.concat(frames)
        .select(pl.col(c).cast(t) for c, t in GROUP_BIAS_SCHEMA.items())
        .sort("group", "lab_code")
    )


def _empty_evidence() -> pl.DataFrame:
    return pl.DataFrame(schema=EVIDENCE_SCHEMA)


def _col(a: np.ndarray) -> pl.Series:
    return pl.Series(np.asarray(a, dtype=float)).fill_nan(None)


def lab_evidence(scored_pairs: pl.LazyFrame, policy: Policy, *, as_of: dt.date) -> pl.DataFrame:
    """Evidence per lab (EVIDENCE_SCHEMA) from the output of scoring.pairs.score_pairs.

    One row per lab that took part in any pair of the window, sorted by lab_code. Units: bias,
    its se and the peers' spread are in σR (a lab that reads δ σR high has bias δ); rates are
    per pair. Every column is described in the project's methods documentation; in short:

    - pairs*: distinct pairs by role; pairs_compared (as original or retest) splits into
      pairs_quantitative (both numbers), pairs_qualitative, pairs_censored and pairs_undecidable
      (missing value or verdict: data quality, never evidence).
    - discrepancies: numeric pairs with |d| > CD; reversals (outcome reversal or
      qualitative_reversal), reversals_within_uncertainty, censored_disagreements,
      arbitrations_lost: raw involvement, before attribution.
    - component, component_size, partners, identifiable, arbitration_suggested: the comparison
      graph; a lab that is not identifiable and has disagreements should go to arbitration.
    - bias, bias_se (the fit's error and the component anchor's), bias_z, bias_p, bias_q (BH
      over judged labs), bias_conservative =
      max(0, |bias| − 2 se), bias_tau (τ, the peers' spread), bias_peer_limit (peer_z τ),
      bias_peer_z (bias / sqrt(τ² + se²)), bias_beyond_peers = max(0, conservative − peer_z τ);
      excess_variance; precision_* (the excess variance against the peers': se, centre, τ,
      one-sided p, BH q, precision_beyond_peers); outside_peers (bias or precision beyond the
      peers: only then does a high discrepancy rate count against the lab).
    - attributed_discrepancies O, expected_discrepancies E (numeric pairs only), oe_ratio,
      oe_lower/upper (Garwood), excess_p (Poisson), excess_q (BH); eb_rate and its interval,
      eb_p_above_target, eb_alpha/eb_beta (prior fitted by maximum likelihood); rate_peer_limit
      (upper funnel limit at rate_peer_z with overdispersion) and rate_beyond_peers.
    - qualitative_errors, qualitative_expected, qualitative_rate (shrunk), qualitative_p/q.
    - sign_*, wilcoxon_*, median_s: tests on the lab's own oriented standardised differences.
    - cusum_*: the chart on numeric discrepancies, in control at the peers' edge.
    - funnel_*: the funnel of attributed rates with overdispersion.
    - shading_*, nd_hiding_*, verdict_contradiction_*, outliers_*: the data-problem patterns (n, observed,
      expected, p, q; the FDR family is the labs that could reach significance at all).
    """
    # Work that does not wait for the bias fit runs in a worker thread beside the main one: the
    # baseline probabilities (beside the lab index and the comparisons), then the sign tests,
    # the CUSUM's chart order and the patterns' selection of sides (beside the fit), then the
    # CUSUM's limit and charts (beside the patterns' probabilities). Their numpy, polars and
    # scipy calls release the GIL, so on two cores they overlap. Each is a pure function of its
    # inputs: the results are the same as one after the other.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="evidence") as worker:
        return _lab_evidence(scored_pairs, policy, as_of, worker)


def _lab_evidence(scored_pairs: pl.LazyFrame, policy: Policy, as_of: dt.date,
                  worker: ThreadPoolExecutor) -> pl.DataFrame:
    ep = policy.evidence
    window_start = as_of - dt.timedelta(days=ep.window_days - 1)
    sign_job: list[Future[pl.DataFrame]] = []
    order_job: list[Future[np.ndarray]] = []
    selection_job: list[Future[PatternSelection]] = []

    def before_fit(df: pl.DataFrame, ix: LabIndex, c: Comparisons) -> None:
        sign_job.append(worker.submit(_sign_tests, c.a, c.b, c.s))
        order_job.append(worker.submit(_chart_order_of, df, ix))
        selection_job.append(worker.submit(_pattern_selection, df, ix, ep))

    st = _stages(scored_pairs, policy, as_of, with_comparisons=before_fit, worker=worker)
    if st is None:
        return _empty_evidence()
    df, ix, comps, fit, identifiable = st.df, st.ix, st.comps, st.fit, st.identifiable
    counts, rates = st.counts, st.rates
    n_labs = len(ix.labs)
    q_expected, q_rate, q_p = _qualitative(counts, ep)
    n_quant = counts.get_column("pairs_quantitative").to_numpy()
    bias = _bias_evidence(fit, identifiable, n_quant, ep)
    n_comparisons = np.bincount(np.r_[comps.a, comps.b], minlength=n_labs)
    # A lab's excess variance is told apart from its partners' only with more comparisons than
    # unknowns around it: in a triangle the three variances fit the three edges exactly, so any
    # excess on an edge (an item mix, a partner's item biases) lands on someone arbitrarily.
    judged = (identifiable & (n_quant >= ep.min_quantitative_pairs)
              & (fit.graph.partners >= ep.min_partners_precision))
    precision = precision_against_peers(
        np.where(fit.graph.involved, fit.excess_variance, np.nan), n_comparisons,
        fit.graph.partners, judged, peer_z=ep.peer_z, floor=ep.tau_floor,
    )
    precision_p = np.where(judged, precision.p, np.nan)

    fun = rates.funnel
    # The CUSUM (its limit's simulation from the percentiles of the chart's probabilities, and
    # every lab's chart) in the worker while the patterns are counted.
    chart_job = worker.submit(_lab_chart, st, policy, order_job[0].result())
    order_job.clear()

    del df
    patterns = pattern_counts_of(selection_job.pop().result(), fit.b, n_labs, band=ep.shading_band)
    # The fit clips s; a gross error is judged on the unclipped difference (biases back in s).
    raw_residual = comps.s - (fit.b[comps.a] - fit.b[comps.b]) / SQRT2
    patterns["outliers"] = outlier_counts(
        comps.a, comps.b, raw_residual, n_labs, limit=ep.outlier_s, floor=ep.outlier_floor
    )
    del raw_residual
    chart, h = chart_job.result()
    # The stages' per-pair arrays (blame, baseline) end with the chart.
    del st

    out = (
        counts.join(sign_job[0].result(), on="idx", how="left")
        .join(chart.with_columns(pl.col("idx").cast(pl.Int64)), on="idx", how="left")
        .sort("idx")
    )
    signs = _sign_columns(out)
    graph = fit.graph
    disagreements = (
        counts.get_column("discrepancies").to_numpy()
        + counts.get_column("reversals").to_numpy()
        + counts.get_column("censored_disagreements").to_numpy()
    )
    has_q = counts.get_column("pairs_qualitative").to_numpy() > 0
    pattern_cols: dict[str, pl.Series] = {}
    for name, pc in patterns.items():
        pc = _mask_pattern(pc)
        family = np.where(pc.min_p <= ep.fdr_alpha, pc.p, np.nan)
        pattern_cols.update({
            f"{name}_n": pl.Series(pc.n, dtype=pl.Int64),
            f"{name}_observed": _col(pc.observed),
            f"{name}_expected": _col(pc.expected),
            f"{name}_p": _col(pc.p),
            f"{name}_q": _col(benjamini_hochberg(family)),
        })
    cmax = pl.col("cusum_max").fill_null(0.0)
    out = out.with_columns(
        as_of=pl.lit(as_of, dtype=pl.Date),
        window_start=pl.lit(window_start, dtype=pl.Date),
        component=pl.Series(graph.component, dtype=pl.Int64),
        component_size=pl.Series(graph.component_size, dtype=pl.Int64),
        partners=pl.Series(graph.partners, dtype=pl.Int64),
        identifiable=pl.Series(identifiable, dtype=pl.Boolean),
        arbitration_suggested=pl.Series(~identifiable & (disagreements > 0), dtype=pl.Boolean),
        bias=_col(bias.bias),
        bias_se=_col(bias.se),
        bias_z=_col(bias.z),
        bias_p=_col(bias.p),
        bias_q=_col(bias.q),
        bias_conservative=_col(bias.conservative),
        bias_tau=pl.lit(bias.peers.tau, dtype=pl.Float64),
        bias_peer_limit=pl.lit(ep.peer_z * bias.peers.tau, dtype=pl.Float64),
        bias_peer_z=_col(bias.peer_z),
        bias_beyond_peers=_col(bias.beyond),
        excess_variance=_col(np.where(graph.involved, fit.excess_variance, np.nan)),
        precision_se=_col(precision.se),
        precision_centre=pl.lit(precision.centre, dtype=pl.Float64),
        precision_tau=pl.lit(precision.tau, dtype=pl.Float64),
        precision_p=_col(precision_p),
        precision_q=_col(benjamini_hochberg(precision_p)),
        precision_beyond_peers=_col(np.where(judged, precision.beyond, np.nan)),
        outside_peers=pl.Series(
            judged & ((np.nan_to_num(bias.beyond) > 0) | (np.nan_to_num(precision.beyond) > 0)),
            dtype=pl.Boolean,
        ),
        oe_ratio=_col(rates.oe),
        oe_lower=_col(rates.oe_lower),
        oe_upper=_col(rates.oe_upper),
        excess_p=_col(rates.excess_p),
        excess_q=_col(benjamini_hochberg(rates.excess_p)),
        eb_rate=_col(rates.eb_rate),
        eb_lower=_col(rates.eb_lower),
        eb_upper=_col(rates.eb_upper),
        eb_p_above_target=_col(rates.eb_p_above_target),
        eb_alpha=pl.lit(rates.eb_alpha, dtype=pl.Float64),
        eb_beta=pl.lit(rates.eb_beta, dtype=pl.Float64),
        rate_peer_limit=_col(rates.peer_limit),
        rate_beyond_peers=_col(rates.beyond_peers),
        qualitative_expected=_col(np.where(has_q, q_expected, np.nan)),
        qualitative_rate=_col(q_rate),
        qualitative_p=_col(q_p),
        qualitative_q=_col(benjamini_hochberg(q_p)),
        sign_n=pl.col("sign_n").fill_null(0),
        sign_positive=pl.col("sign_positive").fill_null(0),
        sign_p=_col(signs["sign_p"]),
        sign_q=_col(benjamini_hochberg(signs["sign_p"])),
        wilcoxon_n=pl.col("sign_n").fill_null(0),
        wilcoxon_statistic=pl.when(pl.col("sign_n").fill_null(0) > 0).then(
            pl.col("wilcoxon_statistic").fill_null(0.0)
        ),
        wilcoxon_z=_col(signs["wilcoxon_z"]),
        wilcoxon_p=_col(signs["wilcoxon_p"]),
        wilcoxon_q=_col(benjamini_hochberg(signs["wilcoxon_p"])),
        cusum_current=pl.col("cusum_current").fill_null(0.0),
        cusum_max=cmax,
        cusum_limit=pl.lit(h, dtype=pl.Float64),
        cusum_signal=(cmax > 0) & (cmax >= h),
        funnel_n=pl.col("pairs_quantitative"),
        funnel_rate=_col(fun.rate),
        funnel_target=pl.lit(fun.target, dtype=pl.Float64).fill_nan(None),
        funnel_lower_95=_col(fun.lower_95),
        funnel_upper_95=_col(fun.upper_95),
        funnel_lower_998=_col(fun.lower_998),
        funnel_upper_998=_col(fun.upper_998),
        funnel_z=_col(fun.z),
        funnel_phi=pl.lit(fun.phi, dtype=pl.Float64).fill_nan(None),
        funnel_tau2=pl.lit(fun.tau2, dtype=pl.Float64).fill_nan(None),
        **pattern_cols,
    )
    return out.select([pl.col(c).cast(t) for c, t in EVIDENCE_SCHEMA.items()])


def _mask_pattern(pc: PatternCounts) -> PatternCounts:
    """A lab with no pairs to examine has no test (NaN, not p = 1), so it stays out of the FDR."""
    has = pc.n > 0
    return PatternCounts(
        name=pc.name, n=pc.n, observed=np.where(has, pc.observed, np.nan),
        expected=np.where(has, pc.expected, np.nan), p=np.where(has, pc.p, np.nan),
        min_p=np.where(has, pc.min_p, np.nan),
    )
