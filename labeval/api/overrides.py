"""Officers' overrides of a lab's class, and the grade-change events feed."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import asyncpg
import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_422_UNPROCESSABLE_ENTITY

from labeval.api.auth import OVERRIDE, READ
from labeval.api.paging import After, Limit, Seq, cut
from labeval.api.problems import ProblemError, spec
from labeval.db import events
from labeval.db import overrides as q
from labeval.db.events import GradeEvent
from labeval.grading.overrides import (
    OverrideRefused,
    list_overrides,
    revoke_override,
    set_override,
)
from labeval.models import ClassCode, Override, OverridePage

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class OverrideRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    lab_code: NonEmpty
    class_: ClassCode = msgspec.field(name="class")
    reason: NonEmpty
    # Last day the override applies (inclusive, UTC).
    valid_until: date
    set_by: NonEmpty


class RevokeRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    revoked_by: NonEmpty
    reason: NonEmpty


def _refused(exc: OverrideRefused) -> ProblemError:
    return ProblemError(HTTP_422_UNPROCESSABLE_ENTITY, "Override refused", str(exc))


class OverrideController(Controller):
    path = "/api/v1/overrides"
    tags = ["overrides"]

    @get("/", opt={"roles": READ})
    async def list_(
        self, conn: NamedDependency[asyncpg.Connection], lab: FromQuery[str | None] = None,
        all: FromQuery[bool] = False,
        after: After = None,
        limit: Limit = 100,
    ) -> OverridePage:
        """Overrides in force today (all=true: every override ever set), newest first; `after`
        is the `next` of the page before."""
        rows = await list_overrides(conn, lab_code=lab, include_closed=all, before=after, limit=limit + 1)
        items, nxt = cut(rows, limit, lambda r: r.override_id)
        return OverridePage(items=items, next=nxt)

    @get("/{override_id:int}", opt={"roles": READ}, responses={404: spec("No such override.")})
    async def detail(self, conn: NamedDependency[asyncpg.Connection], override_id: FromPath[int]) -> Override:
        return await q.get(conn, override_id)

    @post("/", status_code=HTTP_201_CREATED, opt={"roles": OVERRIDE},
          responses={404: spec("No such lab."), 422: spec("Override refused (date in the past, revoked lab).")})
    async def create(self, conn: NamedDependency[asyncpg.Connection], data: JSONBody[OverrideRequest]) -> Override:
        """Set a lab's class through valid_until; an open override of the lab is revoked by it.
        Appends an override_set event in the same transaction."""
        try:
            return await set_override(conn, lab_code=data.lab_code, class_=data.class_, reason=data.reason,
                                      valid_until=data.valid_until, set_by=data.set_by)
        except OverrideRefused as exc:
            raise _refused(exc) from exc

    @post("/{override_id:int}/revoke", status_code=200, opt={"roles": OVERRIDE},
          responses={404: spec("No open override with this id."), 422: spec("Revocation refused.")})
    async def revoke(
        self, conn: NamedDependency[asyncpg.Connection], override_id: FromPath[int], data: JSONBody[RevokeRequest]
    ) -> Override:
        """End an override now; the computed class applies again (an override_revoked event)."""
        try:
            return await revoke_override(conn, override_id, by=data.revoked_by, why=data.reason)
        except OverrideRefused as exc:
            raise _refused(exc) from exc


class EventController(Controller):
    path = "/api/v1/grade-events"
    tags = ["overrides"]

    @get("/", opt={"roles": READ})
    async def list_(
        self, conn: NamedDependency[asyncpg.Connection],
        after: Seq = 0,
        limit: Limit = 100,
    ) -> list[GradeEvent]:
        """Grade-change events with seq > after, in seq order. seq has no gaps and a higher seq
        never commits before a lower one, so reading from the last seq seen misses nothing."""
        return await events.after(conn, after, limit=limit)
