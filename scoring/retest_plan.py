"""Retest planning (选取部分产品开展复验): which categories, how many retests per lab, which samples.

Three pure steps, each explainable by hand from what it returns:

1. :func:`rank_categories` — a score per product category from its pairs and original results:
   the mean of three ratios to the all-category rate (numeric discrepancy rate, reversal rate,
   unqualified rate; each rate shrunk towards the pooled one by ``prior_pairs`` pseudo-pairs so a
   category with five pairs cannot top the list by chance) plus the thinness of its evidence,
   max(0, 1 − pairs per lab / pairs needed). A category at the average with enough pairs scores 1.
2. :func:`allocate` — the budget shared among labs by highest averages (D'Hondt): retests go one
   at a time to the lab with the largest priority / (retests given + 1). Priority = thinness
   (need / pairs needed, where need = max(0, pairs needed − pairs the lab has)) + 1 if the lab is
   not identifiable or arbitration is suggested + its CUSUM as a fraction of the alarm limit
   (clipped to [0, 1]). A lab gets at most its need, or the full pairs needed when it is not
   identifiable or its CUSUM is at least half way to the limit (its pairs so far cannot settle
   it), and never more than it has candidate samples.
3. :func:`choose_samples` — a numpy Generator seeded with the stored seed draws each lab's samples
   without replacement from its candidates (sorted by code), labs in code order; the same
   candidates, allocation and seed give the same samples, which is how a plan is verified.
"""

from __future__ import annotations

import heapq

import msgspec
import numpy as np

__all__ = [
    "CategoryRank",
    "CategoryStats",
    "LabAllocation",
    "LabStanding",
    "allocate",
    "choose_samples",
    "rank_categories",
]

# A lab whose CUSUM is this far to its limit is "rising": its older pairs no longer describe it.
CUSUM_RISING = 0.5


class CategoryStats(msgspec.Struct, kw_only=True, frozen=True):
    """What the data says about one product category."""

    category_code: str
    # Pairs with both numbers (numeric family) and those beyond the critical difference.
    numeric_pairs: int
    numeric_discrepancies: int
    # Pairs compared at all (numeric or qualitative) and the verdict reversals among them.
    compared_pairs: int
    reversals: int
    # Original results with a verdict in the period, and the unqualified (fail) ones.
    verdicts: int
    fails: int
    # Labs with pairs in the category.
    labs: int
    # Samples a retest could be planned on (see labeval's candidate query).
    candidates: int


class CategoryRank(msgspec.Struct, kw_only=True, frozen=True):
    category_code: str
    rank: int
    score: float
    discrepancy_rate: float | None
    reversal_rate: float | None
    fail_rate: float | None
    # Shrunk rate / pooled rate (1.0 = the average of all categories).
    discrepancy_ratio: float
    reversal_ratio: float
    fail_ratio: float
    pairs_per_lab: float
    thinness: float
    candidates: int
    chosen: bool


def _rate(x: int, n: int) -> float | None:
    return x / n if n else None


def _ratio(x: int, n: int, pooled: float, prior_pairs: float) -> float:
    if pooled <= 0.0:
        return 1.0
    return ((x + prior_pairs * pooled) / (n + prior_pairs)) / pooled


def rank_categories(
    stats: list[CategoryStats], *, required_pairs: int, prior_pairs: float, chosen: set[str] | None,
    top: int,
) -> list[CategoryRank]:
    """Categories by score (highest first, ties by code). ``chosen``: the categories asked for;
    None: the ``top`` highest-scoring categories that have candidate samples."""
    tot = {f: sum(getattr(s, f) for s in stats) for f in
           ("numeric_pairs", "numeric_discrepancies", "compared_pairs", "reversals", "verdicts", "fails")}
    pooled_disc = tot["numeric_discrepancies"] / tot["numeric_pairs"] if tot["numeric_pairs"] else 0.0
    pooled_rev = tot["reversals"] / tot["compared_pairs"] if tot["compared_pairs"] else 0.0
    pooled_fail = tot["fails"] / tot["verdicts"] if tot["verdicts"] else 0.0
    scored = []
    for s in stats:
        disc = _ratio(s.numeric_discrepancies, s.numeric_pairs, pooled_disc, prior_pairs)
        rev = _ratio(s.reversals, s.compared_pairs, pooled_rev, prior_pairs)
        fail = _ratio(s.fails, s.verdicts, pooled_fail, prior_pairs)
        per_lab = s.compared_pairs / s.labs if s.labs else 0.0
        thin = max(0.0, 1.0 - per_lab / required_pairs)
        scored.append((round((disc + rev + fail) / 3 + thin, 6), s, disc, rev, fail, per_lab, thin))
    scored.sort(key=lambda t: (-t[0], t[1].category_code))
    if chosen is None:
        with_candidates = [t[1].category_code for t in scored if t[1].candidates > 0]
        chosen = set(with_candidates[:top])
    return [
        CategoryRank(
            category_code=s.category_code, rank=i + 1, score=score,
            discrepancy_rate=_rate(s.numeric_discrepancies, s.numeric_pairs),
            reversal_rate=_rate(s.reversals, s.compared_pairs), fail_rate=_rate(s.fails, s.verdicts),
            discrepancy_ratio=round(disc, 6), reversal_ratio=round(rev, 6), fail_ratio=round(fail, 6),
            pairs_per_lab=round(per_lab, 3), thinness=round(thin, 6), candidates=s.candidates,
            chosen=s.category_code in chosen,
        )
        for i, (score, s, disc, rev, fail, per_lab, thin) in enumerate(scored)
    ]


class LabStanding(msgspec.Struct, kw_only=True, frozen=True):
    """A lab's evidence in the latest succeeded run (defaults: a lab the run did not see)."""

    lab_code: str
    pairs: int = 0
    identifiable: bool = False
    arbitration_suggested: bool = False
    cusum_current: float | None = None
    cusum_limit: float | None = None
    candidates: int = 0


class LabAllocation(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    pairs: int
    need: int
    thinness: float
    not_identifiable: bool
    cusum_ratio: float
    priority: float
    cap: int
    candidates: int
    retests: int
    reasons: list[str]


def _cusum_ratio(lab: LabStanding) -> float:
    if lab.cusum_current is None or not lab.cusum_limit or lab.cusum_limit <= 0:
        return 0.0
    return min(1.0, max(0.0, lab.cusum_current / lab.cusum_limit))


def allocate(labs: list[LabStanding], *, budget: int, required_pairs: int) -> list[LabAllocation]:
    """Share ``budget`` retests among ``labs`` (see the module docstring), by lab code."""
    rows = []
    for lab in sorted(labs, key=lambda x: x.lab_code):
        need = max(0, required_pairs - lab.pairs)
        thin = need / required_pairs
        unident = not lab.identifiable or lab.arbitration_suggested
        cusum = _cusum_ratio(lab)
        priority = round(thin + (1.0 if unident else 0.0) + cusum, 9)
        flagged = unident or cusum >= CUSUM_RISING
        cap = min(lab.candidates, max(need, required_pairs if flagged else 0))
        reasons = []
        if need:
            reasons.append(f"thin evidence: {lab.pairs} of {required_pairs} pairs")
        if unident:
            reasons.append("not identifiable" if not lab.identifiable else "arbitration suggested")
        if cusum >= CUSUM_RISING:
            reasons.append(f"CUSUM rising: {cusum:.0%} of its limit")
        rows.append((lab, need, thin, unident, cusum, priority, cap, reasons))
    given = [0] * len(rows)
    # Highest averages: the heap holds (−priority / (given + 1), position) for labs with room.
    heap = [(-r[5], i) for i, r in enumerate(rows) if r[5] > 0 and r[6] > 0]
    heapq.heapify(heap)
    for _ in range(budget):
        if not heap:
            break
        _, i = heapq.heappop(heap)
        given[i] += 1
        if given[i] < rows[i][6]:
            heapq.heappush(heap, (-rows[i][5] / (given[i] + 1), i))
    return [
        LabAllocation(
            lab_code=lab.lab_code, pairs=lab.pairs, need=need, thinness=round(thin, 6), not_identifiable=unident,
            cusum_ratio=round(cusum, 6), priority=priority, cap=cap, candidates=lab.candidates, retests=given[i],
            reasons=reasons,
        )
        for i, (lab, need, thin, unident, cusum, priority, cap, reasons) in enumerate(rows)
    ]


def choose_samples(candidates: dict[str, list[str]], retests: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Each lab's ``retests[lab]`` samples, drawn without replacement from its candidates (sorted
    by code) with one numpy Generator seeded by ``seed``, labs in code order; chosen samples are
    listed in code order."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for lab in sorted(retests):
        k = retests[lab]
        if k <= 0:
            continue
        pool = sorted(candidates.get(lab, []))
        if k > len(pool):
            raise ValueError(f"lab {lab}: {k} retests but only {len(pool)} candidate samples")
        picked = rng.choice(len(pool), size=k, replace=False)
        out[lab] = sorted(pool[int(j)] for j in picked)
    return out

