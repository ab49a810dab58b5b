"""SQL for the grading-run lifecycle: the run lock, run rows and their states, the previous
grades fed to hysteresis, a run's stored grades, and the data as it stood at a past read time."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import asyncpg
import msgspec

from labeval.db.errors import NotFound
from labeval.db.results import STORED_COLUMNS
from labeval.models import LabGrade

# Session-level advisory lock key shared by every labeval process that grades ("labevrun" folded
# into an int64; the migration runner uses another key). A process that dies loses its session
# and with it the lock, so a killed run never blocks the next one.
RUN_LOCK_KEY = 0x6C61626576_72756E


class RunRecord(msgspec.Struct, kw_only=True, frozen=True):
    """A run row with everything needed to verify it (the policy as stored)."""

    run_id: int
    status: str
    as_of: date
    trigger: str
    actor: str | None
    policy_name: str
    policy_version: str
    policy_hash: str
    policy: dict[str, Any]
    input_digest: str | None
    snapshot_at: datetime | None
    started_at: datetime
    finished_at: datetime | None


class RunningRun(msgspec.Struct, kw_only=True, frozen=True):
    run_id: int
    as_of: date
    trigger: str
    actor: str | None
    started_at: datetime


async def try_lock(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval("SELECT pg_try_advisory_lock($1)", RUN_LOCK_KEY)


async def unlock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", RUN_LOCK_KEY)


async def running(conn: asyncpg.Connection) -> RunningRun | None:
    row = await conn.fetchrow(
        "SELECT run_id, as_of, trigger, actor, started_at FROM grading_runs WHERE status = 'running'"
    )
    return RunningRun(**dict(row)) if row else None


async def abandon_running(conn: asyncpg.Connection) -> list[int]:
    """Mark 'running' rows abandoned. Only call while holding the run lock: then no live run
    exists, so a 'running' row is one whose process died."""
    rows = await conn.fetch(
        """UPDATE grading_runs
           SET status = 'abandoned', finished_at = clock_timestamp(),
               error = 'the process running it stopped before it finished'
           WHERE status = 'running' RETURNING run_id"""
    )
    return [r["run_id"] for r in rows]


async def start_run(
    conn: asyncpg.Connection, *, as_of: date, trigger: str, actor: str | None, policy_name: str,
    policy_version: str, policy_hash: str, policy: Any, window_start: date, window_end: date,
    code_version: str, scheduled_for: datetime | None = None,
) -> int:
    return await conn.fetchval(
        """INSERT INTO grading_runs (as_of, trigger, actor, policy_name, policy_version, policy_hash,
                                     policy, window_start, window_end, code_version, scheduled_for, status)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'running') RETURNING run_id""",
        as_of, trigger, actor, policy_name, policy_version, policy_hash, policy, window_start,
        window_end, code_version, scheduled_for,
    )


class PeriodRun(msgspec.Struct, kw_only=True, frozen=True):
    """The scheduled run that already ran for a period of the schedule."""

    run_id: int
    status: str
    started_at: datetime


async def run_for_period(conn: asyncpg.Connection, period: datetime) -> PeriodRun | None:
    """The scheduled run (not abandoned) made for the schedule's fire time `period`, if any. Only
    call while holding the run lock, after abandon_running: then the answer cannot change."""
    row = await conn.fetchrow(
        # Rows from before migration 0012 carry no period: a scheduled run that started at or after
        # the fire time is that fire time's run (what the start-up catch-up also assumes).
        """SELECT run_id, status, started_at FROM grading_runs
           WHERE trigger = 'schedule' AND status <> 'abandoned'
             AND (scheduled_for = $1 OR (scheduled_for IS NULL AND started_at >= $1))
           ORDER BY run_id LIMIT 1""",
        period,
    )
    return PeriodRun(**dict(row)) if row else None


# Every table a run reads. SHARE mode waits for writers in flight and holds new ones off until
# the read transaction ends, so every row the run sees was committed before snapshot_at and every
# later write commits after it: the import times then say exactly what the run saw.
_INPUT_TABLES = ("results", "test_items", "labs", "pt_results", "lab_reports", "lab_complaints",
                 "lab_audit_findings", "lab_report_findings")


async def lock_inputs(conn: asyncpg.Connection) -> datetime:
    """Inside a REPEATABLE READ transaction, before its first query: lock the inputs and return
    the read time (the snapshot is taken by this very statement)."""
    await conn.execute(f"LOCK TABLE {', '.join(_INPUT_TABLES)} IN SHARE MODE")
    return await conn.fetchval("SELECT clock_timestamp()")


async def complete_run(
    conn: asyncpg.Connection, run_id: int, *, n_pairs: int, n_labs: int, data_hash: str,
    input_digest: str, snapshot_at: datetime, timings: dict[str, float], class_counts: dict[str, int],
) -> None:
    await conn.execute(
        """UPDATE grading_runs
           SET status = 'succeeded', finished_at = clock_timestamp(), n_pairs = $2, n_labs = $3,
               data_hash = $4, input_digest = $5, snapshot_at = $6, timings = $7, class_counts = $8
           WHERE run_id = $1 AND status = 'running'""",
        run_id, n_pairs, n_labs, data_hash, input_digest, snapshot_at, timings, class_counts,
    )


async def fail_run(conn: asyncpg.Connection, run_id: int, error: str) -> None:
    await conn.execute(
        """UPDATE grading_runs SET status = 'failed', finished_at = clock_timestamp(), error = $2
           WHERE run_id = $1 AND status = 'running'""",
        run_id, error,
    )


async def get_record(conn: asyncpg.Connection, run_id: int) -> RunRecord:
    row = await conn.fetchrow(
        """SELECT run_id, status, as_of, trigger, actor, policy_name, policy_version, policy_hash,
                  policy, input_digest, snapshot_at, started_at, finished_at
           FROM grading_runs WHERE run_id = $1""",
        run_id,
    )
    if row is None:
        raise NotFound("grading run", run_id)
    return RunRecord(**dict(row))


async def stored_grades(conn: asyncpg.Connection, run_id: int) -> list[LabGrade]:
    """A succeeded run's grades (none for any other status), by lab."""
    rows = await conn.fetch(
        """SELECT g.lab_code, g.class, g.score, g.previous_class, g.change, g.pairs, g.reasons
           FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id
           WHERE g.run_id = $1 AND r.status = 'succeeded' ORDER BY g.lab_code""",
        run_id,
    )
    # convert() types the stored reasons (JSON objects) as scoring's Reason structs.
    return [msgspec.convert(dict(r), LabGrade) for r in rows]


# The data as committed at a past instant, as temporary tables that shadow the real ones (pg_temp
# is searched first), so the run's own queries read the past unchanged. A row's commit time is
# its import's finish (imports write finished_at just before they commit) or, for a row written
# outside intake, its created_at (the writing transaction's start: exact unless that transaction
# began before the read time and committed after it; intake rows have no such gap). Results: the newest version committed by then. Tables that
# intake corrects in place: the state before the first change committed after then (its
# `before` in import_changes), less rows whose import finished after then.
# Results' versions are the current rows (results) and the replaced ones (result_versions).
_VERSIONED_ASOF = f"""
CREATE TEMP TABLE results ON COMMIT DROP AS
SELECT DISTINCT ON (r.sample_code, r.item_code, r.role, r.lab_code) r.*
FROM (SELECT {", ".join(STORED_COLUMNS)} FROM public.results
      UNION ALL
      SELECT {", ".join(STORED_COLUMNS)} FROM public.result_versions) r
LEFT JOIN public.imports i ON i.import_id = r.import_id
WHERE CASE WHEN r.import_id IS NULL THEN r.created_at <= $1
           ELSE i.status = 'completed' AND i.finished_at <= $1 END
ORDER BY r.sample_code, r.item_code, r.role, r.lab_code, r.version DESC
"""

# table -> (import kind, key columns as intake joins them into import_changes.key, has import_id)
_UPSERT_TABLES: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "test_items": ("items", ("item_code",), False),
    "labs": ("labs", ("lab_code",), False),
    "pt_results": ("pt", ("lab_code", "scheme_code", "round_code", "item_code"), True),
    "lab_reports": ("timeliness", ("lab_code", "report_no"), True),
    "lab_complaints": ("complaints", ("lab_code", "complaint_no"), True),
    "lab_audit_findings": ("audit_findings", ("lab_code", "finding_no"), True),
    "lab_report_findings": ("report_findings", ("lab_code", "report_no"), True),
}


def _upsert_asof(table: str, kind: str, key: tuple[str, ...]) -> str:
    key_text = "concat_ws('|', " + ", ".join(f"t.{k}" for k in key) + ")"
    return f"""
CREATE TEMP TABLE {table} ON COMMIT DROP AS
WITH later AS (
    SELECT DISTINCT ON (c.key) c.key, c.before
    FROM public.import_changes c JOIN public.imports i ON i.import_id = c.import_id
    WHERE c.kind = '{kind}' AND i.finished_at > $1
    ORDER BY c.key, i.finished_at, c.import_id
)
SELECT (CASE WHEN l.key IS NULL THEN t
             ELSE jsonb_populate_record(NULL::public.{table}, l.before) END).*
FROM public.{table} t LEFT JOIN later l ON l.key = {key_text}
"""


async def shadow_inputs_as_of(conn: asyncpg.Connection, at: datetime) -> None:
    """Inside a transaction: make the run inputs read as they stood at `at` until it ends."""
    await conn.execute(_VERSIONED_ASOF, at)
    for table, (kind, key, has_import) in _UPSERT_TABLES.items():
        await conn.execute(_upsert_asof(table, kind, key), at)
        if has_import:
            await conn.execute(
                f"""DELETE FROM pg_temp.{table} t
                    WHERE CASE WHEN t.import_id IS NULL THEN t.created_at > $1
                               ELSE NOT EXISTS (SELECT 1 FROM public.imports i
                                                WHERE i.import_id = t.import_id AND i.status = 'completed'
                                                  AND i.finished_at <= $1) END""",
                at,
            )
    await conn.execute("DELETE FROM pg_temp.labs WHERE created_at > $1", at)
    for table in ("results", *_UPSERT_TABLES):
        await conn.execute(f"ANALYZE pg_temp.{table}")
    # Statements this session prepared earlier are bound to the real tables; creating a table
    # of the same name does not invalidate them (only the first temporary table of a session
    # changes the search path), so make every cached statement resolve its names again.
    await conn.execute("DISCARD PLANS")
