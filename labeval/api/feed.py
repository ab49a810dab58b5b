"""The tender feed (role feed): which labs are eligible for a product category, and the
grade-change events an integrator syncs from incrementally."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from typing import Annotated

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.params import FromQuery
from litestar.status_codes import HTTP_304_NOT_MODIFIED, HTTP_404_NOT_FOUND

from labeval.api.paging import Limit, Seq
from labeval.api.problems import ProblemError, spec
from labeval.config import Settings
from labeval.db import events
from labeval.db.events import GradeEvent
from labeval.grading.overrides import today_utc
from labeval.grading.selection import Eligibility, UnknownCategory, eligibility
from labeval.scheduler import cron_trigger

FEED_ROLES = {"roles": ("feed", "officer", "admin")}


class FeedEvents(msgspec.Struct, kw_only=True, frozen=True):
    events: list[GradeEvent]
    # Pass as `after` on the next call (the last seq returned, else the `after` given).
    next_after: int


def next_scheduled_run(settings: Settings, now: datetime) -> date | None:
    """The day (UTC) of the next scheduled grading run; None when the schedule is off."""
    if not settings.grading_cron.strip():
        return None
    fire = cron_trigger(settings.grading_cron).get_next_fire_time(None, now)
    return fire.astimezone(UTC).date() if fire else None


def strong_etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest() + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 §13.1.2): W/ prefixes are ignored."""
    if if_none_match is None:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or etag in (t.removeprefix("W/") for t in tags)


class FeedController(Controller):
    path = "/api/v1/feed"
    tags = ["feed"]

    @get("/eligibility", opt=FEED_ROLES, responses={404: spec("No such product category.")})
    async def eligibility(
        self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection],
        product_category: FromQuery[Annotated[str, msgspec.Meta(min_length=1, max_length=200)]],
    ) -> Response[Eligibility]:
        """Labs eligible for the product category: active, accredited for it, and with an
        effective class whose selection weight is above 0. Each with its effective and computed
        class, weight, run and valid_until (the earlier of an override's last day and the day of
        the next scheduled grading run). The ETag is a strong validator over the body: send it
        back in If-None-Match and an unchanged list answers 304 with no body."""
        try:
            result = await eligibility(conn, product_category, state.policy, today=today_utc(),
                                       next_run=next_scheduled_run(state.settings, datetime.now(UTC)))
        except UnknownCategory as exc:
            raise ProblemError(HTTP_404_NOT_FOUND, "Unknown product category", str(exc)) from exc
        body = msgspec.json.encode(result)
        etag = strong_etag(body)
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        return Response(body, media_type=MediaType.JSON, headers={"ETag": etag})

    @get("/events", opt=FEED_ROLES)
    async def events(
        self, conn: NamedDependency[asyncpg.Connection],
        after: Seq = 0,
        limit: Limit = 100,
    ) -> FeedEvents:
        """Grade-change events with seq > after, in seq order, and next_after to pass on the
        next call. seq has no gaps and a higher seq never commits before a lower one, so a
        consumer that stores next_after after processing a page resumes without gaps or repeats."""
        rows = await events.after(conn, after, limit=limit)
        return FeedEvents(events=rows, next_after=rows[-1].seq if rows else after)
