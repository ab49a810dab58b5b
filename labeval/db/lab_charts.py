"""SQL for the lab page's charts: which run a lab's charts come from, and what that run stored
about every lab (the funnel compares the lab with all the others of the same run)."""

from __future__ import annotations

import asyncpg
import msgspec

from labeval.db.errors import NotFound
from labeval.db.labs import LabWindow
from labeval.models import Evidence


class RunEvidence(msgspec.Struct, kw_only=True, frozen=True):
    """One lab's evidence as a run stored it."""

    lab_code: str
    evidence: Evidence


async def lab_run(conn: asyncpg.Connection, code: str, run_id: int | None) -> LabWindow | None:
    """The succeeded run that graded the lab (`run_id`, or the latest by as_of then id), with
    the window its evidence used; None when there is none."""
    row = await conn.fetchrow(
        """SELECT r.run_id, r.as_of,
                  coalesce((g.evidence->>'window_start')::date, r.window_start, r.as_of) AS window_start,
                  r.policy
           FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id
           WHERE g.lab_code = $1 AND r.status = 'succeeded' AND ($2::bigint IS NULL OR r.run_id = $2)
           ORDER BY r.as_of DESC, r.run_id DESC LIMIT 1""",
        code, run_id,
    )
    return LabWindow(**dict(row)) if row else None


async def run_evidence(conn: asyncpg.Connection, run_id: int) -> list[RunEvidence]:
    """Every lab's stored evidence in a succeeded run, by lab. Labs the run graded without
    pairs in the window stored no evidence (an empty object) and are left out."""
    rows = await conn.fetch(
        """SELECT g.lab_code, g.evidence
           FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id
           -- '{}' is what a run stores for a lab without pairs in its window.
           WHERE g.run_id = $1 AND r.status = 'succeeded' AND g.evidence <> '{}'::jsonb
           ORDER BY g.lab_code""",
        run_id,
    )
    if not rows and not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM grading_runs WHERE run_id = $1)", run_id):
        raise NotFound("grading run", run_id)
    return [RunEvidence(lab_code=r["lab_code"], evidence=msgspec.convert(r["evidence"], Evidence)) for r in rows]


async def pairs_version(conn: asyncpg.Connection) -> tuple[str, int | None, int | None]:
    """What changes whenever the pairs can: the database, the count of statements that changed
    results (migration 0018: a correction, a new result, a removal) and the newest import (items
    and samples arrive through intake). Two index lookups, where reading the pairs themselves to
    compare them costs a full COPY."""
    row = await conn.fetchrow(
        "SELECT current_database() AS db, (SELECT statements FROM results_changes) AS results, "
        "(SELECT max(import_id) FROM imports) AS import_id"
    )
    return row["db"], row["results"], row["import_id"]
