"""SQL for retest plans: the evidence a plan reads, the samples it may choose, the stored plans."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import asyncpg
import msgspec

from labeval.db.errors import NotFound


class LatestRun(msgspec.Struct, kw_only=True, frozen=True):
    run_id: int
    as_of: date
    policy_hash: str


class LabEvidence(msgspec.Struct, kw_only=True, frozen=True):
    """The part of a lab's stored evidence a plan uses."""

    lab_code: str
    pairs: int
    identifiable: bool
    arbitration_suggested: bool
    cusum_current: float | None
    cusum_limit: float | None


async def latest_run(conn: asyncpg.Connection) -> LatestRun | None:
    """The newest succeeded run (newest period, then newest run), as the grades are served."""
    row = await conn.fetchrow(
        """SELECT run_id, as_of, policy_hash FROM grading_runs WHERE status = 'succeeded'
           ORDER BY as_of DESC, run_id DESC LIMIT 1"""
    )
    return LatestRun(**dict(row)) if row else None


async def lab_evidence(conn: asyncpg.Connection, run_id: int) -> list[LabEvidence]:
    rows = await conn.fetch(
        """SELECT lab_code, pairs,
                  coalesce((evidence->>'identifiable')::boolean, false) AS identifiable,
                  coalesce((evidence->>'arbitration_suggested')::boolean, false) AS arbitration_suggested,
                  (evidence->>'cusum_current')::float8 AS cusum_current,
                  (evidence->>'cusum_limit')::float8 AS cusum_limit
           FROM lab_grades WHERE run_id = $1 ORDER BY lab_code""",
        run_id,
    )
    return [LabEvidence(**dict(r)) for r in rows]


class VerdictCounts(msgspec.Struct, kw_only=True, frozen=True):
    category_code: str
    verdicts: int
    fails: int


# A sample's date in the period is its sampling date, else its earliest original report.
_ORIGINALS = """
WITH orig AS (
    SELECT sample_code, min(lab_code) AS lab_code, min(reported_on) AS reported_on,
           count(verdict) AS verdicts, count(*) FILTER (WHERE verdict = 'fail') AS fails
    FROM results WHERE role = 'original'
    GROUP BY sample_code
)
"""


async def verdict_counts(conn: asyncpg.Connection, start: date, end: date) -> list[VerdictCounts]:
    """Original results with a verdict, and unqualified ones, per category, samples in the period."""
    rows = await conn.fetch(
        _ORIGINALS + """
        SELECT s.category_code, sum(o.verdicts)::int AS verdicts, sum(o.fails)::int AS fails
        FROM samples s JOIN orig o ON o.sample_code = s.sample_code
        WHERE coalesce(s.sampled_on, o.reported_on) BETWEEN $1 AND $2
        GROUP BY s.category_code ORDER BY s.category_code""",
        start, end,
    )
    return [VerdictCounts(**dict(r)) for r in rows]


class Candidate(msgspec.Struct, kw_only=True, frozen=True):
    sample_code: str
    category_code: str
    enterprise: str | None
    lab_code: str


async def candidates(conn: asyncpg.Connection, start: date, end: date) -> list[Candidate]:
    """Samples a retest can be planned on: in the period, with an original result, its backup
    portion unused (no retest or arbitration result yet), tested by a lab that is not revoked.
    A sample belongs to its recorded original lab, else to the (first) lab of its originals."""
    rows = await conn.fetch(
        _ORIGINALS + """
        SELECT s.sample_code, s.category_code, s.enterprise,
               coalesce(s.original_lab_code, o.lab_code) AS lab_code
        FROM samples s
        JOIN orig o ON o.sample_code = s.sample_code
        JOIN labs l ON l.lab_code = coalesce(s.original_lab_code, o.lab_code)
        WHERE coalesce(s.sampled_on, o.reported_on) BETWEEN $1 AND $2
          AND l.status <> 'revoked'
          AND NOT EXISTS (SELECT 1 FROM results t
                          WHERE t.sample_code = s.sample_code AND t.role IN ('retest', 'arbitration'))
        ORDER BY s.sample_code""",
        start, end,
    )
    return [Candidate(**dict(r)) for r in rows]


async def known_categories(conn: asyncpg.Connection, codes: list[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT category_code FROM product_categories WHERE category_code = ANY($1::text[])", codes
    )
    return {r["category_code"] for r in rows}


class PlannedSample(msgspec.Struct, kw_only=True, frozen=True):
    """One row of a plan as the sampling body receives it (the retest lab is drawn later)."""

    sample_code: str
    category_code: str
    enterprise: str | None
    original_lab_code: str
    reason: str


class NewPlan(msgspec.Struct, kw_only=True, frozen=True):
    created_by: str | None
    run_id: int | None
    policy_hash: str
    seed: int
    budget: int
    period_start: date
    period_end: date
    request: dict[str, Any]
    power: dict[str, Any]
    ranking: list[dict[str, Any]]
    allocation: list[dict[str, Any]]
    candidates: dict[str, list[str]]


class StoredPlan(NewPlan, kw_only=True, frozen=True):
    plan_id: int
    created_at: datetime
    samples: list[PlannedSample]


_PLAN_COLUMNS = """plan_id, created_at, created_by, run_id, policy_hash, seed, budget, period_start,
                   period_end, request, power, ranking, allocation, candidates"""


async def insert_plan(conn: asyncpg.Connection, plan: NewPlan, samples: list[PlannedSample]) -> int:
    plan_id = await conn.fetchval(
        """INSERT INTO retest_plans (created_by, run_id, policy_hash, seed, budget, period_start, period_end,
                                     request, power, ranking, allocation, candidates)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING plan_id""",
        plan.created_by, plan.run_id, plan.policy_hash, plan.seed, plan.budget, plan.period_start,
        plan.period_end, plan.request, plan.power, plan.ranking, plan.allocation, plan.candidates,
    )
    await conn.executemany(
        """INSERT INTO retest_plan_samples (plan_id, sample_code, original_lab_code, category_code, enterprise, reason)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        [(plan_id, s.sample_code, s.original_lab_code, s.category_code, s.enterprise, s.reason) for s in samples],
    )
    return plan_id


async def get_plan(conn: asyncpg.Connection, plan_id: int) -> StoredPlan:
    row = await conn.fetchrow(f"SELECT {_PLAN_COLUMNS} FROM retest_plans WHERE plan_id = $1", plan_id)
    if row is None:
        raise NotFound("retest plan", plan_id)
    rows = await conn.fetch(
        """SELECT sample_code, category_code, enterprise, original_lab_code, reason
           FROM retest_plan_samples WHERE plan_id = $1 ORDER BY original_lab_code, sample_code""",
        plan_id,
    )
    return StoredPlan(**dict(row), samples=[PlannedSample(**dict(r)) for r in rows])


class PlanSummary(msgspec.Struct, kw_only=True, frozen=True):
    """A stored plan as a list shows it."""

    plan_id: int
    created_at: datetime
    created_by: str | None
    seed: int
    budget: int
    period_start: date
    period_end: date
    # The categories the plan retests (those its ranking chose).
    categories: list[str]
    samples: int


async def list_plans(conn: asyncpg.Connection, *, limit: int = 50, before: int | None = None) -> list[PlanSummary]:
    """Stored plans, newest first, those with plan_id < before if given."""
    rows = await conn.fetch(
        """SELECT p.plan_id, p.created_at, p.created_by, p.seed, p.budget, p.period_start, p.period_end,
                  -- the ranking is stored as scoring returned it: the chosen entries, in rank order
                  coalesce((SELECT array_agg(r->>'category_code' ORDER BY (r->>'rank')::int)
                            FROM jsonb_array_elements(p.ranking) r WHERE (r->>'chosen')::boolean),
                           '{}') AS categories,
                  (SELECT count(*) FROM retest_plan_samples s WHERE s.plan_id = p.plan_id)::int AS samples
           FROM retest_plans p WHERE ($2::bigint IS NULL OR p.plan_id < $2)
           ORDER BY p.plan_id DESC LIMIT $1""",
        limit, before,
    )
    return [PlanSummary(**dict(r)) for r in rows]
