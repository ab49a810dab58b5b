"""Data-problem patterns (数据问题): named tests for reported data that cannot be trusted.

A biased or noisy lab shows in its standardised differences. The retest programme exists also to
find labs whose data are *shaped*: each pattern here counts, per lab, the pairs that show it (O)
and what an honest lab with the same fitted bias would show on the same pairs (E), with a
one-sided Poisson test of O against E. Every test conditions on what the *partner* found, never
on the value the lab chose to report, so a lab cannot lower its own expectation by shading.

Notation per pair side: x the lab's number, x_p the partner's, σ = σR at the pair's level, δ the
difference of the two labs' fitted biases (σR units, lab minus partner). For two honest labs
(x − x_p)/σ ~ N(δ, 2): the standardised difference s has variance 1 and d = √2 σ s.

* ``shading`` — values bunched just inside a limit where the partner finds them beyond it. Over
  the pairs where the partner's number lies beyond a limit, O = pairs where the lab's number is
  inside that limit by at most ``band`` σ; E = Σ P(an honest lab lands in that band | x_p, δ).
* ``nd_hiding`` — "not detected" reported where the partner finds clear amounts. Over the pairs
  where the partner's number exceeds the detection limit L (the item's LOD, else the median limit
  labs state for the item when they report it censored) by more than ``clear`` σ,
  O = pairs where the lab reported a censored value; E = Σ P(an honest lab reads below L | x_p, δ)
  = Φ(((L − x_p)/σ − δ)/√2).
* ``verdict_contradiction`` — a verdict that contradicts the lab's own number beyond its
  uncertainty (the pair scores' ``verdict_contradicts_j``). O = such pairs; E = decidable pairs ×
  the pooled rate of all labs (at least ``floor``): the rate of an honest clerical slip.
* ``outliers`` — gross errors (a unit slip, transposed digits): comparisons whose residual from
  the bias fit exceeds ``outlier_s`` in s units, far beyond what the method's precision allows.
  Each such comparison counts against both of its labs; the innocent partner of a slip meets it
  once, while a lab that slips meets it with many partners. E = the lab's comparisons × the pooled
  rate of all labs (at least ``floor``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats
from scipy.special import ndtr

__all__ = [
    "PATTERNS",
    "PairSides",
    "PatternCounts",
    "PatternSelection",
    "outlier_counts",
    "pattern_counts",
    "pattern_counts_of",
    "pattern_selection",
    "pattern_selection_of_pairs",
    "pattern_sides",
    "poisson_binomial_sf",
]

PATTERNS = ("shading", "nd_hiding", "verdict_contradiction", "outliers")
_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class PatternCounts:
    """Per lab (index 0..n_labs-1): pairs examined, observed, expected, one-sided p."""

    name: str
    n: np.ndarray
    observed: np.ndarray
    expected: np.ndarray
    p: np.ndarray
    # The smallest p the lab could reach (every examined pair showing the pattern). A lab that
    # cannot reach significance at all is left out of the false-discovery family (Tarone 1990;
    # Gilbert 2005 for the FDR), so a crowd of labs with one or two examined pairs does not
    # dilute the family.
    min_p: np.ndarray


@dataclass(frozen=True, slots=True)
class PairSides:
    """The pairs' data the patterns read, one entry per pair; side 1 is the original lab, side 2
    the retest lab, and each test reads a pair twice (once from each side, the partner's data
    swapped). Nothing here has a row per side: at 10 million pairs a frame of both sides was the
    largest allocation of the evidence (about 1 GB), and the tests only need the few sides they
    examine.

    idx1/idx2 lab indices; quant (a quantitative item); lower_limit, upper_limit; lod (the
    item's, else the median limit stated for the item); sigma (σR at the pair's level); x1/x2 the
    numbers; cens1/cens2; contradicts1/2 (1 / 0, −1 where undecidable).
    """

    idx1: np.ndarray
    idx2: np.ndarray
    quant: np.ndarray
    lower_limit: np.ndarray
    upper_limit: np.ndarray
    lod: np.ndarray
    sigma: np.ndarray
    x1: np.ndarray
    x2: np.ndarray
    cens1: np.ndarray
    cens2: np.ndarray
    contradicts1: np.ndarray
    contradicts2: np.ndarray

    def lab(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Side k's (1 or 2) idx, partner, x, xp, cens (the partner's flag is cens_p(k))."""
        if k == 1:
            return self.idx1, self.idx2, self.x1, self.x2, self.cens1
        return self.idx2, self.idx1, self.x2, self.x1, self.cens2


def _columns(pairs: pl.DataFrame) -> tuple[
    Callable[[str], bool], Callable[[str], np.ndarray], Callable[[str], np.ndarray], Callable[[str], np.ndarray]
]:
    n = pairs.height

    def has(name: str) -> bool:
        # Frames built by hand (tests, simulations) may leave out what a pattern needs: no
        # column, no test.
        return name in pairs.columns

    def num(name: str) -> np.ndarray:
        if not has(name):
            return np.full(n, np.nan)
        return pairs.get_column(name).cast(pl.Float64).fill_null(np.nan).to_numpy()

    def flag(name: str) -> np.ndarray:
        if not has(name):
            return np.zeros(n, dtype=bool)
        return pairs.get_column(name).cast(pl.Boolean).fill_null(False).to_numpy()

    def tri(name: str) -> np.ndarray:
        if not has(name):
            return np.full(n, -1, dtype=np.int8)
        return pairs.get_column(name).cast(pl.Int8).fill_null(-1).to_numpy()

    return has, num, flag, tri


def _item_limits(pairs: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's item id (−1 where none) and, per item id, the median limit stated when the
    item is reported censored (NaN where none; the last cell, for id −1, stays NaN)."""
    n = pairs.height
    has, num, _, _ = _columns(pairs)
    item = (
        # Categorical ids (codes that come as Categorical keep theirs: no strings made)
        pairs.get_column("item_code").cast(pl.Categorical).to_physical()
        .cast(pl.Int64).fill_null(-1).to_numpy()
        if has("item_code") else np.full(n, -1, dtype=np.int64)
    )
    # The detection limit a not-detected result is judged against: the item's LOD, else the
    # median limit labs state when they report the item as censored (not this lab's own, which it
    # could choose). Only the sides that state a limit enter the median.
    limits = [num("censor_limit_1"), num("censor_limit_2")]
    stated_rows = [np.flatnonzero(~np.isnan(lim) & (item >= 0)) for lim in limits]
    stated = (
        pl.DataFrame({
            "item": np.concatenate([item[r] for r in stated_rows]),
            "limit": np.concatenate([lim[r] for lim, r in zip(limits, stated_rows)]),
        })
        .group_by("item")
        .agg(pl.col("limit").median())
    )
    del limits
    stated_of = np.full(max(int(item.max()) + 2, 1) if n else 1, np.nan)
    stated_of[stated.get_column("item").to_numpy()] = stated.get_column("limit").to_numpy()
    return item, stated_of


def _sides_of(
    pairs: pl.DataFrame, i1: np.ndarray, i2: np.ndarray, item: np.ndarray, stated_of: np.ndarray
) -> PairSides:
    has, num, flag, tri = _columns(pairs)
    quant = (
        (pairs.get_column("kind") != "qualitative").fill_null(False).to_numpy()
        if has("kind") else np.zeros(pairs.height, dtype=bool)
    )
    lod = num("lod")
    lod = np.where(np.isnan(lod), stated_of[item], lod)
    return PairSides(
        idx1=np.asarray(i1), idx2=np.asarray(i2), quant=quant,
        lower_limit=num("lower_limit"), upper_limit=num("upper_limit"), lod=lod,
        sigma=num("sigma_R_at"), x1=num("value_1"), x2=num("value_2"),
        cens1=flag("censored_1"), cens2=flag("censored_2"),
        contradicts1=tri("verdict_contradicts_1"), contradicts2=tri("verdict_contradicts_2"),
    )


def pattern_sides(pairs: pl.DataFrame, i1: np.ndarray, i2: np.ndarray) -> PairSides:
    """The pairs' data for :func:`pattern_counts` (see :class:`PairSides`), from numpy arrays:
    the two sides are the same columns swapped, so nothing is selected or joined per side."""
    item, stated_of = _item_limits(pairs)
    return _sides_of(pairs, i1, i2, item, stated_of)


def _per_lab(n_labs: int, idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.bincount(idx, weights=weights, minlength=n_labs)


def poisson_binomial_sf(observed: int, probs: np.ndarray) -> float:
    """P(X >= observed) for X a sum of independent Bernoulli(probs): exact, by recursion.

    The state is the count so far, capped at ``observed`` (everything at or above it is one
    absorbing state), so the cost is len(probs) × (observed + 1).
    """
    if observed <= 0:
        return 1.0
    dist = np.zeros(observed + 1)
    dist[0] = 1.0
    for p in np.clip(probs, 0.0, 1.0):
        moved = dist[:-1] * p
        dist[:-1] *= 1.0 - p
        dist[1:] += moved
    return float(min(1.0, max(0.0, dist[-1])))


def _capped_sum(a: np.ndarray, b: np.ndarray, cap: int) -> np.ndarray:
    """Distribution of min(X + Y, cap) from those of X and Y, row by row.

    Rows of ``a`` and ``b`` (same width w) hold P(X = 0..w−1); when w − 1 = cap the last cell is
    P(X ≥ cap). The result is as wide as the sum needs, up to cap + 1. Every term is a product
    of probabilities added to others, never subtracted, so a tail of 1e-30 keeps its relative
    precision.
    """
    rows, w = a.shape
    width = min(2 * (w - 1), cap) + 1
    out = np.zeros((rows, width))
    if width - 1 < cap:  # no sum reaches the cap: a plain convolution
        for i in range(w):
            out[:, i : i + w] += a[:, i : i + 1] * b
        return out
    # tail[:, m] = P(Y >= m)
    tail = np.cumsum(b[:, ::-1], axis=1)[:, ::-1]
    for i in range(w):
        n_exact = min(w, cap - i)  # the j with i + j < cap
        if n_exact > 0:
            out[:, i : i + n_exact] += a[:, i : i + 1] * b[:, :n_exact]
        first_tail = max(cap - i, 0)
        if first_tail < w:
            out[:, cap] += a[:, i] * tail[:, first_tail]
    return out


def _tail_probabilities(idx: np.ndarray, probs: np.ndarray, observed: np.ndarray, n_labs: int) -> np.ndarray:
    """P(X ≥ observed[lab]) per lab, X the lab's sum of independent Bernoulli(probs) (1 where
    observed ≤ 0): :func:`poisson_binomial_sf` for all labs at once.

    Labs are grouped by a cap (the power of two at or above their observed count); within a group
    each lab's Bernoulli distributions are combined pairwise, all labs together, in about log2
    of its count of rounds; a distribution is only as wide as its support, up to the cap (whose
    cell holds "cap or more"), so memory stays near two cells per pair. The cost is a few vector
    operations per round instead of one Python step per pair.
    """
    k = np.round(observed).astype(np.int64)
    probs = np.clip(np.asarray(probs, dtype=float), 0.0, 1.0)
    need = k > 0
    # A lab with no pair cannot reach a positive count.
    out = np.where(need, 0.0, 1.0)
    if not need.any():
        return out
    caps = np.where(need, 1 << np.ceil(np.log2(np.maximum(k, 1))).astype(np.int64), 0)
    for cap in np.unique(caps[need]):
        cap = int(cap)
        member = caps == cap
        rows = np.flatnonzero(member[idx])
        order = rows[np.argsort(idx[rows], kind="stable")]
        owner = idx[order]
        dist = np.empty((order.size, 2))
        dist[:, 0] = 1.0 - probs[order]
        dist[:, 1] = probs[order]
        while owner.size and (owner.size != np.unique(owner).size):
            starts = np.r_[0, np.flatnonzero(np.diff(owner)) + 1]
            counts = np.diff(np.r_[starts, owner.size])
            # an owner with an odd count gets a certain zero, so that nodes pair within owners
            odd_end = (starts + counts)[counts % 2 == 1]
            identity = np.zeros(dist.shape[1])
            identity[0] = 1.0
            dist = np.insert(dist, odd_end, identity, axis=0)
            owner = np.insert(owner, odd_end, owner[odd_end - 1])
            dist = _capped_sum(dist[0::2], dist[1::2], cap)
            owner = owner[0::2]
        labs = owner
        cum = np.cumsum(dist[:, ::-1], axis=1)[:, ::-1]  # cum[:, j] = P(X >= j)
        reach = k[labs] < cum.shape[1]
        out[labs[reach]] = np.minimum(1.0, np.maximum(0.0, cum[np.flatnonzero(reach), k[labs[reach]]]))
    return out


def _rate_counts(
    name: str, n_labs: int, examined: np.ndarray, showing: np.ndarray, rate: float
) -> PatternCounts:
    """:func:`_counts` where every side has the same probability ``rate``, from the integer
    counts per lab of the sides examined and of those showing the pattern: no array of
    probabilities (tens of millions of sides for the contradictions and outliers). The same
    doubles: n and O are whole numbers, and E adds ``rate`` to itself n times in a row, as the
    weighted sum per lab does (a cumulative sum is sequential)."""
    n_int = np.asarray(examined, dtype=np.int64)
    n = n_int.astype(float)
    o = np.asarray(showing, dtype=np.int64).astype(float)
    top = int(n_int.max()) if n_int.size else 0
    run = np.cumsum(np.full(top, rate))
    e = np.where(n_int > 0, run[np.maximum(n_int - 1, 0)] if top else 0.0, 0.0)
    has = n > 0
    rate = float(np.clip(rate, 0.0, 1.0))
    p = np.where(o > 0, stats.binom.sf(np.round(o) - 1, n, rate), 1.0)
    with np.errstate(divide="ignore"):
        min_p = rate**n
    p = np.where(has, np.minimum(1.0, np.maximum(0.0, p)), np.nan)
    min_p = np.where(has, min_p, np.nan)
    return PatternCounts(name=name, n=n_int, observed=o, expected=e, p=p, min_p=min_p)


def _counts(name: str, n_labs: int, idx: np.ndarray, obs: np.ndarray, exp: np.ndarray) -> PatternCounts:
    """Per-lab O, E and the exact one-sided p of O under independent pairs with the given P."""
    n = _per_lab(n_labs, idx, np.ones(len(idx)))
    o = _per_lab(n_labs, idx, obs.astype(float))
    e = _per_lab(n_labs, idx, exp)
    has = n > 0
    probs = np.clip(np.asarray(exp, dtype=float), 0.0, 1.0)
    if len(probs) and np.all(probs == probs[0]):
        # One rate for every pair: the Poisson-binomial is the binomial.
        rate = float(probs[0])
        p = np.where(o > 0, stats.binom.sf(np.round(o) - 1, n, rate), 1.0)
        with np.errstate(divide="ignore"):
            min_p = rate**n
    else:
        p = _tail_probabilities(idx, probs, o, n_labs)
        with np.errstate(divide="ignore"):
            min_p = np.exp(_per_lab(n_labs, idx, np.log(probs)))
    p = np.where(has, np.minimum(1.0, np.maximum(0.0, p)), np.nan)
    min_p = np.where(has, min_p, np.nan)
    return PatternCounts(name=name, n=n.astype(np.int64), observed=o, expected=e, p=p, min_p=min_p)


@dataclass(frozen=True, slots=True)
class PatternSelection:
    """What the patterns examine, all of which is decided without the lab biases: the examined
    sides of shading and nd_hiding (lab, partner, what each side's probability needs, and
    whether it shows the pattern) and the contradictions' counts in full. Small next to the
    pairs (a few sides in a hundred), so it can be found while the biases are fitted.
    """

    s_idx: np.ndarray
    s_partner: np.ndarray
    d_up: np.ndarray  # (upper − x_p)/σ, < 0 where the partner is over the upper limit
    d_lo: np.ndarray  # (x_p − lower)/σ, < 0 where under the lower limit
    over: np.ndarray
    s_obs: np.ndarray
    n_idx: np.ndarray
    n_partner: np.ndarray
    n_z: np.ndarray  # (L − x_p)/σ
    n_cens: np.ndarray
    contradictions: PatternCounts


@dataclass(frozen=True, slots=True)
class _Selected:
    """:func:`_select` of some pairs: per side (1, 2) the examined sides' arrays, and the
    contradictions' integer counts per lab."""

    shading: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]
    nd: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]
    decidable: np.ndarray  # decidable sides per lab
    contradicted: np.ndarray  # of which contradicting the lab's own number


def _select(sides: PairSides, n_labs: int, *, band: float, clear: float) -> _Selected:
    sigma, upper, lower, lod = sides.sigma, sides.upper_limit, sides.lower_limit, sides.lod
    base = sides.quant & (sigma > 0)
    # Which sides each test examines is decided on every pair (per side, from the partner's
    # number); the probabilities (normal CDFs, the costly part) only on the sides examined.
    shading: list[tuple[np.ndarray, ...]] = []
    nd_parts: list[tuple[np.ndarray, ...]] = []
    decidable = np.zeros(n_labs, dtype=np.int64)
    contradicted = np.zeros(n_labs, dtype=np.int64)
    for k in (1, 2):
        idx, partner, x, xp, cens = sides.lab(k)
        cens_p = sides.cens2 if k == 1 else sides.cens1
        with np.errstate(invalid="ignore"):
            p_num = base & np.isfinite(xp) & ~cens_p
            over = p_num & np.isfinite(upper) & (xp > upper)
            under = p_num & np.isfinite(lower) & (xp < lower) & ~over
            clear_amount = p_num & np.isfinite(lod) & ((xp - lod) / sigma > clear)
        # shading: partner beyond a limit (a numeric partner value, not censored)
        use = np.flatnonzero(over | under)
        sg, xpu, xu, up, lo = sigma[use], xp[use], x[use], upper[use], lower[use]
        with np.errstate(invalid="ignore"):
            lab_num = np.isfinite(xu) & ~cens[use]
            in_up = lab_num & ((up - xu) / sg >= 0) & ((up - xu) / sg <= band)
            in_lo = lab_num & ((xu - lo) / sg >= 0) & ((xu - lo) / sg <= band)
            shading.append((
                idx[use], partner[use], (up - xpu) / sg, (xpu - lo) / sg, over[use],
                np.where(over[use], in_up, in_lo),
            ))
        # not detected where the partner finds a clear amount
        nd = np.flatnonzero(clear_amount)
        with np.errstate(invalid="ignore"):
            nd_parts.append((idx[nd], partner[nd], (lod[nd] - xp[nd]) / sigma[nd], cens[nd]))
        # a verdict contradicting the lab's own number (over all decidable sides, any item kind)
        contradicts = sides.contradicts1 if k == 1 else sides.contradicts2
        decidable += np.bincount(idx[contradicts >= 0], minlength=n_labs)
        contradicted += np.bincount(idx[contradicts == 1], minlength=n_labs)
    return _Selected(shading=(shading[0], shading[1]), nd=(nd_parts[0], nd_parts[1]),
                     decidable=decidable, contradicted=contradicted)


def _selection(parts: list[_Selected], n_labs: int, contradiction_floor: float) -> PatternSelection:
    """The parts' examined sides in the order of one pass: side 1's in pair order, then side 2's."""
    s_idx, s_partner, d_up, d_lo, over, s_obs = (
        np.concatenate([p.shading[k][j] for k in (0, 1) for p in parts]) for j in range(6)
    )
    n_idx, n_partner, n_z, n_cens = (
        np.concatenate([p.nd[k][j] for k in (0, 1) for p in parts]) for j in range(4)
    )
    decidable = np.sum([p.decidable for p in parts], axis=0)
    contradicted = np.sum([p.contradicted for p in parts], axis=0)
    total = int(decidable.sum())
    # the mean of the sides' 0/1 flags: a ratio of two whole numbers, whatever their order
    pooled = int(contradicted.sum()) / total if total else 0.0
    return PatternSelection(
        s_idx=s_idx, s_partner=s_partner, d_up=d_up, d_lo=d_lo, over=over, s_obs=s_obs,
        n_idx=n_idx, n_partner=n_partner, n_z=n_z, n_cens=n_cens,
        contradictions=_rate_counts(
            "verdict_contradiction", n_labs, decidable, contradicted, max(pooled, contradiction_floor)
        ),
    )


def pattern_selection(
    sides: PairSides, n_labs: int, *, band: float, clear: float, contradiction_floor: float
) -> PatternSelection:
    """The bias-free part of :func:`pattern_counts`."""
    return _selection([_select(sides, n_labs, band=band, clear=clear)], n_labs, contradiction_floor)


# Pairs per slice when the selection reads the pairs itself: the sides' numbers of a slice are
# about 50 bytes a pair, read and dropped, instead of the whole window's at once.
_SLICE = 1 << 20


def pattern_selection_of_pairs(
    pairs: pl.DataFrame, i1: np.ndarray, i2: np.ndarray, n_labs: int, *, band: float, clear: float,
    contradiction_floor: float,
) -> PatternSelection:
    """:func:`pattern_selection` of :func:`pattern_sides`, reading the pairs a slice at a time
    (the same selection, in the same order)."""
    item, stated_of = _item_limits(pairs)
    parts = []
    for lo in range(0, max(pairs.height, 1), _SLICE):
        hi = min(pairs.height, lo + _SLICE)
        sides = _sides_of(pairs.slice(lo, hi - lo), i1[lo:hi], i2[lo:hi], item[lo:hi], stated_of)
        parts.append(_select(sides, n_labs, band=band, clear=clear))
        del sides
    del item
    return _selection(parts, n_labs, contradiction_floor)


def pattern_counts_of(
    sel: PatternSelection, bias: np.ndarray, n_labs: int, *, band: float
) -> dict[str, PatternCounts]:
    """:func:`pattern_counts` from its :func:`pattern_selection` and the lab biases."""
    b = np.nan_to_num(np.asarray(bias, dtype=float), nan=0.0)
    out: dict[str, PatternCounts] = {}
    delta = b[sel.s_idx] - b[sel.s_partner]
    with np.errstate(invalid="ignore"):
        p_up = ndtr((sel.d_up - delta) / _SQRT2) - ndtr((sel.d_up - band - delta) / _SQRT2)
        p_lo = ndtr((band - sel.d_lo - delta) / _SQRT2) - ndtr((-sel.d_lo - delta) / _SQRT2)
    out["shading"] = _counts("shading", n_labs, sel.s_idx, sel.s_obs, np.where(sel.over, p_up, p_lo))
    delta = b[sel.n_idx] - b[sel.n_partner]
    with np.errstate(invalid="ignore"):
        p_nd = ndtr((sel.n_z - delta) / _SQRT2)
    out["nd_hiding"] = _counts("nd_hiding", n_labs, sel.n_idx, sel.n_cens, p_nd)
    out["verdict_contradiction"] = sel.contradictions
    return out


def pattern_counts(
    sides: PairSides, bias: np.ndarray, n_labs: int, *, band: float, clear: float,
    contradiction_floor: float,
) -> dict[str, PatternCounts]:
    """The three pattern tests for every lab. ``bias`` in σR units per lab (NaN → 0).

    Each test examines pair sides: side 1's examined pairs in pair order, then side 2's (the
    order every sum and the exact tail probabilities see).
    """
    sel = pattern_selection(sides, n_labs, band=band, clear=clear, contradiction_floor=contradiction_floor)
    return pattern_counts_of(sel, bias, n_labs, band=band)


def outlier_counts(
    lab_a: np.ndarray, lab_b: np.ndarray, residual: np.ndarray, n_labs: int, *, limit: float,
    floor: float,
) -> PatternCounts:
    """The ``outliers`` pattern from the bias fit's comparisons (lab indices and residuals)."""
    far = np.abs(residual) > limit
    examined = np.bincount(lab_a, minlength=n_labs) + np.bincount(lab_b, minlength=n_labs)
    showing = np.bincount(lab_a[far], minlength=n_labs) + np.bincount(lab_b[far], minlength=n_labs)
    # the share of far comparisons, each counted once per lab: a ratio of whole numbers
    rate = max(int(far.sum()) / len(far) if len(far) else 0.0, floor)
    return _rate_counts("outliers", n_labs, examined, showing, rate)
