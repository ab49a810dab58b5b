"""The tender feed (role feed): which labs are eligible for a product category, and the
grade-change events an integrator syncs from incrementally."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

import asyncpg
import msgspec
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_404_NOT_FOUND

from labeval.api.cache import Answer, ReadCache
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
    cron = settings.grading_cron
    known = _next_fire.get(cron)
    # The next fire time stays the answer until it has passed: no cron arithmetic per request.
    if known is None or not (known[0] <= now < known[1]):
        fire = cron_trigger(cron).get_next_fire_time(None, now)
        known = (now, fire) if fire else (now, now)
        _next_fire[cron] = known
        if fire is None:
            return None
    return known[1].astimezone(UTC).date()


# cron -> (asked at, the next fire time then): valid for every `now` in [asked at, fire time).
_next_fire: dict[str, tuple[datetime, datetime]] = {}


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 §13.1.2): W/ prefixes are ignored."""
    if if_none_match is None:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or etag in (t.removeprefix("W/") for t in tags)


def eligibility_key(settings: Settings, product_category: str) -> tuple[str, str, date, date | None]:
    """The eligibility answer's key in the read cache (also the cached-read layer's)."""
    # The answer depends on the data (the cache drops it on any change) and on the dates:
    # an override ends and the next run's day moves as days pass.
    return ("eligibility", product_category, today_utc(), next_scheduled_run(settings, datetime.now(UTC)))


def encoded(value: object) -> Answer:
    return Answer(msgspec.json.encode(value))


def answer_response(request: Request, answer: Answer) -> ASGIResponse:
    return answer_for(request.headers.get("if-none-match"), answer)


def answer_for(if_none_match: str | None, answer: Answer) -> ASGIResponse:
    """200 with the body and its ETag, or 304 without a body when If-None-Match names it."""
    if etag_matches(if_none_match, answer.etag):
        return answer.not_modified
    return answer.ok


class FeedController(Controller):
    path = "/api/v1/feed"
    tags = ["feed"]

    @get("/eligibility", opt=FEED_ROLES, responses={
        200: ResponseSpec(Eligibility, description="The eligible labs; header ETag."),
        304: ResponseSpec(None, description="Unchanged since the ETag sent in If-None-Match."),
        404: spec("No such product category.")})
    async def eligibility(
        self, request: Request, state: State,
        product_category: FromQuery[Annotated[str, msgspec.Meta(min_length=1, max_length=200)]],
    ) -> ASGIResponse:
        """Labs eligible for the product category: active, accredited for it, and with an
        effective class whose selection weight is above 0. Each with its effective and computed
        class, weight, run and valid_until (the earlier of an override's last day and the day of
        the next scheduled grading run). The ETag is a strong validator over the body: send it
        back in If-None-Match and an unchanged list answers 304 with no body."""
        key = eligibility_key(state.settings, product_category)
        _, _, today, next_run = key
        cache: ReadCache = state.read_cache
        answer = cache.answer(key, request.scope)
        if answer is None:
            generation = cache.generation
            try:
                async with state.pool.acquire() as conn:
                    result = await eligibility(conn, product_category, state.policy, today=today, next_run=next_run)
            except UnknownCategory as exc:
                raise ProblemError(HTTP_404_NOT_FOUND, "Unknown product category", str(exc)) from exc
            answer = encoded(result)
            cache.put_answer(key, answer, generation)
        return answer_response(request, answer)

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
