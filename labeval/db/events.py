"""SQL for grade-change events: the append-only outbox (seq is assigned by a trigger from a
one-row counter, see migration 0004)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

import asyncpg
import msgspec


class GradeEvent(msgspec.Struct, kw_only=True, frozen=True):
    seq: int
    lab_code: str
    # The effective class before the change (null: the lab had none).
    old_class: str | None
    # The computed class after the change.
    new_class: str | None
    # The class that applies after the change.
    effective_class: str | None
    cause: Literal["run", "override_set", "override_revoked", "override_expired"]
    run_id: int | None
    override_id: int | None
    created_at: datetime


_COLUMNS = "seq, lab_code, old_class, new_class, effective_class, cause, run_id, override_id, created_at"


async def after(conn: asyncpg.Connection, seq: int, *, limit: int = 100) -> list[GradeEvent]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM grade_events WHERE seq > $1 ORDER BY seq LIMIT $2", seq, limit
    )
    return [GradeEvent(**dict(r)) for r in rows]


async def lock_outbox(conn: asyncpg.Connection) -> None:
    """First statement of a transaction that will append events: take the counter's row lock
    now (the seq trigger would only take it at the first insert), so event writers run one after
    another and each reads the state the previous one committed."""
    await conn.execute("SELECT last_seq FROM grade_event_counter FOR UPDATE")


async def append(
    conn: asyncpg.Connection, *, lab_code: str, old_class: str | None, new_class: str | None,
    effective_class: str | None, cause: str, run_id: int | None = None, override_id: int | None = None,
) -> int:
    return await conn.fetchval(
        """INSERT INTO grade_events (lab_code, old_class, new_class, effective_class, cause, run_id, override_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq""",
        lab_code, old_class, new_class, effective_class, cause, run_id, override_id,
    )


async def append_for_run(conn: asyncpg.Connection, run_id: int, today: date) -> int:
    """In the run's write transaction, before it is marked succeeded: one event per lab whose
    current computed class this run changes. The current grade is the one of the newest period
    (then the newest run), so a back-dated run changes nothing current and emits nothing."""
    # Locked in its own statement so that the INSERT below (a new snapshot under READ COMMITTED)
    # sees an override committed while this waited.
    await lock_outbox(conn)
    status = await conn.execute(
        """
        WITH before AS (
            SELECT DISTINCT ON (g.lab_code) g.lab_code, g.class, r.as_of
            FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id
            WHERE r.status = 'succeeded' AND r.run_id <> $1
            ORDER BY g.lab_code, r.as_of DESC, r.run_id DESC
        ), open AS (
            SELECT lab_code, class FROM grade_overrides
            WHERE revoked_at IS NULL AND expired_at IS NULL AND valid_until >= $2
        )
        INSERT INTO grade_events (lab_code, old_class, new_class, effective_class, cause, run_id)
        SELECT t.lab_code, COALESCE(o.class, b.class), t.class, COALESCE(o.class, t.class), 'run', $1
        FROM lab_grades t JOIN grading_runs r ON r.run_id = t.run_id
        LEFT JOIN before b ON b.lab_code = t.lab_code
        LEFT JOIN open o ON o.lab_code = t.lab_code
        WHERE t.run_id = $1 AND (b.lab_code IS NULL OR r.as_of >= b.as_of)
          AND t.class IS DISTINCT FROM b.class
        ORDER BY t.lab_code
        """,
        run_id, today,
    )
    return int(status.split()[-1])
