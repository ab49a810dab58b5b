"""SQL for officers' overrides of a lab's class, and the computed class they sit on."""

from __future__ import annotations

from datetime import date

import asyncpg

from labeval.db.errors import NotFound
from labeval.models import Override

_COLUMNS = """override_id, lab_code, class, reason, valid_until, set_by, set_at, revoked_by,
              revoked_at, revoke_reason, expired_at"""


def _override(row: asyncpg.Record) -> Override:
    d = dict(row)
    return Override(class_=d.pop("class"), **d)


async def get(conn: asyncpg.Connection, override_id: int, *, for_update: bool = False) -> Override:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM grade_overrides WHERE override_id = $1"
        + (" FOR UPDATE" if for_update else ""),
        override_id,
    )
    if row is None:
        raise NotFound("override", override_id)
    return _override(row)


async def lock_lab(conn: asyncpg.Connection, lab_code: str) -> str:
    """Lock the lab row (overrides of one lab are set one at a time); returns its status."""
    status = await conn.fetchval("SELECT status FROM labs WHERE lab_code = $1 FOR UPDATE", lab_code)
    if status is None:
        raise NotFound("lab", lab_code)
    return status


async def open_for_lab(conn: asyncpg.Connection, lab_code: str) -> Override | None:
    """The lab's override that is neither revoked nor marked expired (it may be past its date)."""
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM grade_overrides
            WHERE lab_code = $1 AND revoked_at IS NULL AND expired_at IS NULL""",
        lab_code,
    )
    return _override(row) if row else None


async def insert(
    conn: asyncpg.Connection, *, lab_code: str, class_: str, reason: str, valid_until: date, set_by: str
) -> Override:
    row = await conn.fetchrow(
        f"""INSERT INTO grade_overrides (lab_code, class, reason, valid_until, set_by)
            VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
        lab_code, class_, reason, valid_until, set_by,
    )
    return _override(row)


async def revoke(conn: asyncpg.Connection, override_id: int, *, by: str, why: str) -> Override:
    row = await conn.fetchrow(
        f"""UPDATE grade_overrides SET revoked_by = $2, revoked_at = now(), revoke_reason = $3
            WHERE override_id = $1 AND revoked_at IS NULL AND expired_at IS NULL RETURNING {_COLUMNS}""",
        override_id, by, why,
    )
    if row is None:
        raise NotFound("open override", override_id)
    return _override(row)


async def any_due(conn: asyncpg.Connection, today: date) -> bool:
    return await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM grade_overrides
                          WHERE revoked_at IS NULL AND expired_at IS NULL AND valid_until < $1)""",
        today,
    )


async def mark_expired(conn: asyncpg.Connection, today: date) -> list[Override]:
    """Mark open overrides whose last valid day is before `today`. A concurrent caller waits on
    the row locks and then finds expired_at set, so each override is marked once."""
    rows = await conn.fetch(
        f"""UPDATE grade_overrides SET expired_at = now()
            WHERE revoked_at IS NULL AND expired_at IS NULL AND valid_until < $1
            RETURNING {_COLUMNS}""",
        today,
    )
    return sorted((_override(r) for r in rows), key=lambda o: o.override_id)


async def active(conn: asyncpg.Connection, today: date) -> dict[str, Override]:
    """Overrides in force on `today`, by lab. Decided by the dates, not by the expiry marker, so
    an override stops applying the day after valid_until even before its expiry event exists."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM grade_overrides
            WHERE revoked_at IS NULL AND expired_at IS NULL AND valid_until >= $1""",
        today,
    )
    return {r["lab_code"]: _override(r) for r in rows}


async def listed(conn: asyncpg.Connection, *, lab_code: str | None = None, include_closed: bool = False,
                 today: date, before: int | None = None, limit: int | None = None) -> list[Override]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM grade_overrides
            WHERE ($1::text IS NULL OR lab_code = $1)
              AND ($2 OR (revoked_at IS NULL AND expired_at IS NULL AND valid_until >= $3))
              AND ($4::bigint IS NULL OR override_id < $4)
            ORDER BY override_id DESC LIMIT $5""",
        lab_code, include_closed, today, before, limit,
    )
    return [_override(r) for r in rows]


async def computed_class(conn: asyncpg.Connection, lab_code: str) -> str | None:
    """The lab's current computed class: from its newest succeeded period, then newest run."""
    return await conn.fetchval(
        """SELECT g.class FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id
           WHERE g.lab_code = $1 AND r.status = 'succeeded'
           ORDER BY r.as_of DESC, r.run_id DESC LIMIT 1""",
        lab_code,
    )
