"""Retest plans: read the evidence and the candidate samples, rank, allocate, draw, store, verify.

The statistics are in scoring.power (pairs needed per lab) and scoring.retest_plan (ranking,
allocation, seeded choice); this module reads their inputs and stores what they return.
"""

from __future__ import annotations

import asyncio
import io
import secrets
from collections import defaultdict
from datetime import date, datetime
from typing import Annotated

import asyncpg
import msgspec
import polars as pl

from labeval.db import grading as gq
from labeval.db import plans as q
from labeval.db.plans import PlannedSample
from labeval.grading.run import pairs_frame
from scoring.evidence import pairs_in_window
from scoring.pairs import score_pairs
from scoring.policy import Policy, policy_hash
from scoring.power import power, required_pairs
from scoring.retest_plan import (
    CategoryRank,
    CategoryStats,
    LabAllocation,
    LabStanding,
    allocate,
    choose_samples,
    rank_categories,
)

# Seeds are stored as PostgreSQL bigint.
Seed = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
EXPORT_COLUMNS = ("sample_code", "category_code", "enterprise", "original_lab_code", "retest_lab_code", "reason")


class PlanRefused(ValueError):
    """The request cannot be planned (unknown category, empty period, impossible rates).
    `reason` ("period", "unknown_categories", "bad_rate") and `values` let the pages say it in
    the reader's language; the message is the English of the same."""

    def __init__(self, message: str, *, reason: str, **values: object) -> None:
        super().__init__(message)
        self.reason = reason
        self.values = values


class PlanRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Retests the programme can pay for.
    budget: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    # Samples whose date (sampling date, else first original report) lies in the period.
    period_start: date
    period_end: date
    # Retest only these categories (default: the top_categories highest-scoring ones).
    product_categories: list[Annotated[str, msgspec.Meta(min_length=1)]] | None = None
    top_categories: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    # The random choice of samples (default: a fresh random seed, stored with the plan).
    seed: Seed | None = None
    # The rate to detect, as a multiple of the baseline rate, and the power to detect it with.
    bad_rate_ratio: Annotated[float, msgspec.Meta(gt=1.0, le=100.0)] = 3.0
    power: Annotated[float, msgspec.Meta(ge=0.5, lt=1.0)] = 0.8


class PowerCalculation(msgspec.Struct, kw_only=True, frozen=True):
    """Exact binomial power, one-sided: the pairs a lab needs to tell bad_rate from baseline_rate."""

    baseline_rate: float
    baseline_source: str
    bad_rate: float
    alpha: float
    power: float
    required_pairs: int
    # The power actually reached with required_pairs (at least `power`).
    achieved_power: float


class RetestPlan(msgspec.Struct, kw_only=True, frozen=True):
    plan_id: int
    created_at: datetime
    created_by: str | None
    # The grading run whose evidence was used (null: there was no succeeded run).
    run_id: int | None
    policy_hash: str
    seed: int
    budget: int
    period_start: date
    period_end: date
    request: PlanRequest
    power: PowerCalculation
    ranking: list[CategoryRank]
    allocation: list[LabAllocation]
    retests_planned: int
    unallocated: int
    samples: list[PlannedSample]


class PlanVerification(msgspec.Struct, kw_only=True, frozen=True):
    plan_id: int
    verified: bool
    seed: int
    # Labs whose stored samples differ from those the seed draws from the stored candidates.
    differing_labs: list[str]


def _category_pairs(pairs: pl.DataFrame, policy: Policy, as_of: date) -> pl.DataFrame:
    """Per category: numeric pairs and discrepancies, compared pairs and reversals, labs."""
    window = pairs_in_window(score_pairs(pairs.lazy(), policy), as_of, policy.evidence)
    compared = pl.col("numeric") | pl.col("qualitative")
    per = window.group_by("category_code").agg(
        numeric_pairs=pl.col("numeric").sum().cast(pl.Int64),
        numeric_discrepancies=pl.col("num_disc").sum().cast(pl.Int64),
        compared_pairs=compared.sum().cast(pl.Int64),
        reversals=(pl.col("reversal") & compared).sum().cast(pl.Int64),
    )
    labs = (
        pl.concat([window.select("category_code", lab=pl.col(f"lab_{s}")) for s in ("1", "2")])
        .drop_nulls().unique().group_by("category_code").agg(labs=pl.len().cast(pl.Int64))
    )
    return per.join(labs, on="category_code", how="left")


async def _category_stats(
    conn: asyncpg.Connection, policy: Policy, as_of: date, start: date, end: date, cand_counts: dict[str, int]
) -> list[CategoryStats]:
    frame = pairs_frame(await gq.pairs_csv(conn, as_of))
    per = await asyncio.to_thread(_category_pairs, frame, policy, as_of)
    by_cat: dict[str, dict[str, int]] = defaultdict(dict)
    for row in per.iter_rows(named=True):
        by_cat[row.pop("category_code")].update({k: int(v or 0) for k, v in row.items()})
    for v in await q.verdict_counts(conn, start, end):
        by_cat[v.category_code].update(verdicts=v.verdicts, fails=v.fails)
    for cat, n in cand_counts.items():
        by_cat[cat]["candidates"] = n
    fields = ("numeric_pairs", "numeric_discrepancies", "compared_pairs", "reversals", "verdicts", "fails",
              "labs", "candidates")
    return [CategoryStats(category_code=c, **{f: d.get(f, 0) for f in fields}) for c, d in sorted(by_cat.items())]


def power_calculation(policy: Policy, request: PlanRequest) -> PowerCalculation:
    p0 = policy.evidence.target_rate
    p1 = p0 * request.bad_rate_ratio
    if p1 >= 1.0:
        raise PlanRefused(f"bad rate {p1:g} (= {request.bad_rate_ratio:g} × baseline {p0:g}) is not below 1",
                          reason="bad_rate", bad_rate=p1, ratio=request.bad_rate_ratio, baseline=p0)
    alpha = policy.evidence.fdr_alpha
    n = required_pairs(p0, p1, alpha, request.power)
    return PowerCalculation(
        baseline_rate=p0, baseline_source="policy.evidence.target_rate", bad_rate=round(p1, 12), alpha=alpha,
        power=request.power, required_pairs=n, achieved_power=round(power(n, p0, p1, alpha), 6),
    )


async def create_plan(
    conn: asyncpg.Connection, policy: Policy, request: PlanRequest, *, actor: str | None = None
) -> RetestPlan:
    """Plan a retest round and store it (one transaction: the caller's)."""
    if request.period_start > request.period_end:
        raise PlanRefused(f"period_start {request.period_start} is after period_end {request.period_end}",
                          reason="period", start=request.period_start, end=request.period_end)
    asked = sorted(set(request.product_categories)) if request.product_categories else None
    if asked is not None:
        unknown = sorted(set(asked) - await q.known_categories(conn, asked))
        if unknown:
            raise PlanRefused(f"unknown product categories: {', '.join(unknown)}", reason="unknown_categories",
                              codes=unknown)
    calc = power_calculation(policy, request)
    run = await q.latest_run(conn)
    cands = await q.candidates(conn, request.period_start, request.period_end)
    cand_counts: dict[str, int] = defaultdict(int)
    for c in cands:
        cand_counts[c.category_code] += 1
    stats = await _category_stats(
        conn, policy, run.as_of if run else request.period_end, request.period_start, request.period_end,
        cand_counts,
    )
    ranking = rank_categories(stats, required_pairs=calc.required_pairs,
                              prior_pairs=policy.evidence.baseline_prior_pairs,
                              chosen=set(asked) if asked is not None else None, top=request.top_categories)
    chosen_cats = {r.category_code for r in ranking if r.chosen}
    pool: dict[str, list[str]] = defaultdict(list)
    by_code = {}
    for c in cands:
        if c.category_code in chosen_cats:
            pool[c.lab_code].append(c.sample_code)
            by_code[c.sample_code] = c
    evidence = {e.lab_code: e for e in (await q.lab_evidence(conn, run.run_id) if run else [])}
    standings = []
    for lab, samples in sorted(pool.items()):
        e = evidence.get(lab)
        standings.append(LabStanding(lab_code=lab, candidates=len(samples)) if e is None else LabStanding(
            lab_code=lab, pairs=e.pairs, identifiable=e.identifiable, arbitration_suggested=e.arbitration_suggested,
            cusum_current=e.cusum_current, cusum_limit=e.cusum_limit, candidates=len(samples)))
    allocation = allocate(standings, budget=request.budget, required_pairs=calc.required_pairs)
    seed = request.seed if request.seed is not None else secrets.randbelow(2**63)
    candidates = {lab: sorted(s) for lab, s in sorted(pool.items())}
    chosen = choose_samples(candidates, {a.lab_code: a.retests for a in allocation}, seed)
    reasons = {a.lab_code: "; ".join(a.reasons) for a in allocation}
    samples = [
        PlannedSample(sample_code=s, category_code=by_code[s].category_code, enterprise=by_code[s].enterprise,
                      original_lab_code=lab, reason=reasons[lab])
        for lab, codes in chosen.items() for s in codes
    ]
    plan_id = await q.insert_plan(conn, q.NewPlan(
        created_by=actor, run_id=run.run_id if run else None, policy_hash=policy_hash(policy), seed=seed,
        budget=request.budget, period_start=request.period_start, period_end=request.period_end,
        request=msgspec.to_builtins(msgspec.structs.replace(request, seed=seed)), power=msgspec.to_builtins(calc),
        ranking=msgspec.to_builtins(ranking), allocation=msgspec.to_builtins(allocation), candidates=candidates,
    ), samples)
    return await get_plan(conn, plan_id)


def _plan(stored: q.StoredPlan) -> RetestPlan:
    allocation = msgspec.convert(stored.allocation, list[LabAllocation])
    planned = sum(a.retests for a in allocation)
    return RetestPlan(
        plan_id=stored.plan_id, created_at=stored.created_at, created_by=stored.created_by, run_id=stored.run_id,
        policy_hash=stored.policy_hash, seed=stored.seed, budget=stored.budget, period_start=stored.period_start,
        period_end=stored.period_end, request=msgspec.convert(stored.request, PlanRequest),
        power=msgspec.convert(stored.power, PowerCalculation),
        ranking=msgspec.convert(stored.ranking, list[CategoryRank]), allocation=allocation,
        retests_planned=planned, unallocated=stored.budget - planned, samples=stored.samples,
    )


async def get_plan(conn: asyncpg.Connection, plan_id: int) -> RetestPlan:
    return _plan(await q.get_plan(conn, plan_id))


async def verify_plan(conn: asyncpg.Connection, plan_id: int) -> PlanVerification:
    """Draw again from the stored candidates with the stored seed and allocation; compare."""
    stored = await q.get_plan(conn, plan_id)
    allocation = msgspec.convert(stored.allocation, list[LabAllocation])
    try:
        expected = choose_samples(stored.candidates, {a.lab_code: a.retests for a in allocation}, stored.seed)
    except ValueError:
        expected = {}
    found: dict[str, list[str]] = defaultdict(list)
    for s in stored.samples:
        found[s.original_lab_code].append(s.sample_code)
    labs = sorted(set(expected) | set(found))
    differing = [lab for lab in labs if sorted(found.get(lab, [])) != expected.get(lab, [])]
    return PlanVerification(plan_id=plan_id, verified=not differing,
                            seed=stored.seed, differing_labs=differing)


def export_frame(plan: RetestPlan) -> pl.DataFrame:
    """The plan for the sampling bodies: one row per sample; the retest lab is drawn later."""
    return pl.DataFrame(
        [(s.sample_code, s.category_code, s.enterprise, s.original_lab_code, None, s.reason) for s in plan.samples],
        schema={c: pl.String for c in EXPORT_COLUMNS}, orient="row",
    )


def export_bytes(plan: RetestPlan, fmt: str) -> bytes:
    buf = io.BytesIO()
    frame = export_frame(plan)
    if fmt == "csv":
        frame.write_csv(buf)
    else:
        frame.write_excel(buf, worksheet=f"plan {plan.plan_id}")
    return buf.getvalue()
