"""Officers' overrides: set, revoke and expire them, each with its grade-change event in the
same transaction.

An override is in force from when it is set through its valid_until date (inclusive, UTC);
every read decides that from the dates, so the computed class is back the day after without a
manual step. The expiry event is appended by `expire_due`, which marks each override once
(expired_at, in the event's transaction) and is called by every grading run, every override
command and an hourly scheduler job; calling it again appends nothing.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg
import msgspec

from labeval.db import events
from labeval.db import overrides as q
from labeval.models import EffectiveGrade, LabGrade, Override


class OverrideRefused(ValueError):
    """An override that cannot be set (bad date, empty reason, revoked lab)."""


def today_utc() -> date:
    return datetime.now(UTC).date()


async def expire_due(conn: asyncpg.Connection, today: date) -> list[Override]:
    """Mark overrides past their date and append their expiry events (idempotent)."""
    if not await q.any_due(conn, today):  # the usual case: no lock taken
        return []
    async with conn.transaction():
        await events.lock_outbox(conn)
        expired = await q.mark_expired(conn, today)
        for o in expired:
            computed = await q.computed_class(conn, o.lab_code)
            await events.append(
                conn, lab_code=o.lab_code, old_class=o.class_, new_class=computed,
                effective_class=computed, cause="override_expired", override_id=o.override_id,
            )
    return expired


async def set_override(
    conn: asyncpg.Connection, *, lab_code: str, class_: str, reason: str, valid_until: date, set_by: str,
    today: date | None = None,
) -> Override:
    """Set a lab's class through valid_until; an open override of the lab is revoked by it."""
    today = today or today_utc()
    if valid_until < today:
        raise OverrideRefused(f"valid_until {valid_until} is in the past (today is {today}, UTC)")
    if not reason.strip():
        raise OverrideRefused("an override needs a reason")
    if not set_by.strip():
        raise OverrideRefused("an override needs the name of who sets it")
    await expire_due(conn, today)
    async with conn.transaction():
        await events.lock_outbox(conn)
        if await q.lock_lab(conn, lab_code) == "revoked":
            raise OverrideRefused(f"lab {lab_code} is revoked and is not graded")
        computed = await q.computed_class(conn, lab_code)
        previous = await q.open_for_lab(conn, lab_code)
        if previous is not None:
            await q.revoke(conn, previous.override_id, by=set_by, why="replaced by a new override")
        new = await q.insert(conn, lab_code=lab_code, class_=class_, reason=reason.strip(),
                             valid_until=valid_until, set_by=set_by)
        await events.append(
            conn, lab_code=lab_code, old_class=previous.class_ if previous else computed,
            new_class=computed, effective_class=class_, cause="override_set", override_id=new.override_id,
        )
    return new


async def revoke_override(
    conn: asyncpg.Connection, override_id: int, *, by: str, why: str, today: date | None = None
) -> Override:
    if not why.strip():
        raise OverrideRefused("revoking an override needs a reason")
    if not by.strip():
        raise OverrideRefused("revoking an override needs the name of who revokes it")
    await expire_due(conn, today or today_utc())
    async with conn.transaction():
        await events.lock_outbox(conn)
        current = await q.get(conn, override_id)
        await q.lock_lab(conn, current.lab_code)
        revoked = await q.revoke(conn, override_id, by=by, why=why.strip())
        computed = await q.computed_class(conn, revoked.lab_code)
        await events.append(
            conn, lab_code=revoked.lab_code, old_class=revoked.class_, new_class=computed,
            effective_class=computed, cause="override_revoked", override_id=override_id,
        )
    return revoked


async def list_overrides(
    conn: asyncpg.Connection, *, lab_code: str | None = None, include_closed: bool = False,
    today: date | None = None, before: int | None = None, limit: int | None = None,
) -> list[Override]:
    """Newest first; those with override_id < before if given."""
    today = today or today_utc()
    await expire_due(conn, today)
    return await q.listed(conn, lab_code=lab_code, include_closed=include_closed, today=today, before=before,
                          limit=limit)


async def effective_grades(conn: asyncpg.Connection, grades: list[LabGrade], today: date | None = None
                           ) -> list[EffectiveGrade]:
    """Grades with today's overrides beside them."""
    active = await q.active(conn, today or today_utc())
    out = []
    for g in grades:
        o = active.get(g.lab_code)
        out.append(EffectiveGrade(**msgspec.structs.asdict(g), override=o,
                                  effective_class=o.class_ if o else g.class_))
    return out
