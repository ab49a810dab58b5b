"""Labs for officers: the filtered list, one lab (evidence, reasons, grade history, override),
its pairs in the latest run's window and its results; a sample's results side by side."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import asyncpg
import msgspec
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response.base import ASGIResponse

from labeval.api.auth import READ
from labeval.api.cache import ReadCache
from labeval.api.examples import LAB_PAGE, PAIR_PAGE, ok
from labeval.api.feed import answer_response, encoded
from labeval.api.paging import After, Limit, cut
from labeval.api.problems import spec
from labeval.db import labs as q
from labeval.db import overrides
from labeval.grading.overrides import today_utc
from labeval.grading.pair_view import pair_views
from labeval.grading.sample_view import sample_view
from labeval.models import ClassCode, LabDetail, LabPage, PairPage, ResultPage, SampleView
from scoring.grading import STATISTICAL_CAPS
from scoring.policy import Policy

_NOT_FOUND = {404: spec("No such lab.")}


def detail_key(code: str) -> tuple[str, str, date]:
    """A lab detail's key in the read cache (also the cached-read layer's)."""
    # The data (the cache drops it on any change) and the day: an override ends by date.
    return ("lab", code, today_utc())


class LabController(Controller):
    path = "/api/v1/labs"
    tags = ["labs"]

    @get("/", opt={"roles": READ}, responses={200: ok(LabPage, "A page of labs.", LAB_PAGE)})
    async def list_(
        self, conn: NamedDependency[asyncpg.Connection],
        class_: Annotated[ClassCode | None, QueryParameter(name="class", description="Effective class.")] = None,
        province: FromQuery[str | None] = None,
        product_category: Annotated[str | None, QueryParameter(
            name="product_category", description="A category in the lab's accredited scope.")] = None,
        flagged: Annotated[bool | None, QueryParameter(
            name="flagged", description="A statistical cap or data-problem pattern fired in the latest run.")] = None,
        not_identifiable: Annotated[bool | None, QueryParameter(
            name="not_identifiable", description="The latest evidence could not tell the lab apart.")] = None,
        after: Annotated[str | None, QueryParameter(name="after", description="The `next` of the page before.")] = None,
        limit: Limit = 100,
    ) -> LabPage:
        """Labs by code with their computed class, the override in force and the class that
        applies (`effective_class`); filters combine with AND."""
        where = q.LabFilter(class_=class_, province=province, product_category=product_category,
                            flagged=flagged, not_identifiable=not_identifiable)
        rows = await q.list_labs(conn, today=today_utc(), flag_rules=sorted(STATISTICAL_CAPS), where=where,
                                 after=after, limit=limit + 1)
        active = await overrides.active(conn, today_utc())
        page, nxt = cut(rows, limit, lambda r: r.code)
        items = [msgspec.structs.replace(lab, override=active.get(lab.code)) for lab in page]
        return LabPage(items=items, next=nxt)

    @get("/{code:str}", opt={"roles": READ}, responses={
        **_NOT_FOUND, 200: ResponseSpec(LabDetail, description="The lab; header ETag."),
        304: ResponseSpec(None, description="Unchanged since the ETag sent in If-None-Match.")})
    async def detail(self, request: Request, state: State, code: FromPath[str]) -> ASGIResponse:
        """One lab: scopes, current class, override in force, evidence, reasons and grade history,
        the pairs the latest run compared and where to read them. The ETag is a strong validator
        over the body: send it back in If-None-Match and an unchanged lab answers 304."""
        key = detail_key(code)
        today = key[2]
        cache: ReadCache = state.read_cache
        answer = cache.answer(key, request.scope)
        if answer is None:
            generation = cache.generation
            async with state.pool.acquire() as conn:
                lab = await q.get_lab(conn, code)
                o = (await overrides.active(conn, today)).get(code)
            answer = encoded(msgspec.structs.replace(
                lab, override=o, effective_class=o.class_ if o else lab.current_class,
                pairs_href=f"/api/v1/labs/{code}/pairs", results_href=f"/api/v1/labs/{code}/results",
            ))
            cache.put_answer(key, answer, generation)
        return answer_response(request, answer)

    @get("/{code:str}/pairs", opt={"roles": READ},
         responses={**_NOT_FOUND, 200: ok(PairPage, "A page of the lab's pairs.", PAIR_PAGE)})
    async def pairs(
        self, conn: NamedDependency[asyncpg.Connection], code: FromPath[str],
        after: After = None, limit: Limit = 100,
    ) -> PairPage:
        """The lab's pairs completed in the window of its latest run (as original, retest or
        arbitration lab), by pair_id, each with its outcome under that run's policy. Pairs
        imported since that run are shown if they fall in its window."""
        await q.lab_exists(conn, code)
        window = await q.latest_window(conn, code)
        if window is None:
            return PairPage(run_id=None, as_of=None, window_start=None, items=[])
        rows = await q.lab_pairs(conn, code, window, after=after, limit=limit + 1)
        page, nxt = cut(rows, limit, lambda r: r["pair_id"])
        items = pair_views(page, msgspec.convert(window.policy, Policy), lab_code=code)
        return PairPage(run_id=window.run_id, as_of=window.as_of, window_start=window.window_start, items=items,
                        next=nxt)

    @get("/{code:str}/results", opt={"roles": READ}, responses=_NOT_FOUND)
    async def results(
        self, conn: NamedDependency[asyncpg.Connection], code: FromPath[str],
        after: After = None, limit: Limit = 100,
    ) -> ResultPage:
        """The lab's current results (corrections superseded), by result_id."""
        await q.lab_exists(conn, code)
        rows = await q.lab_results(conn, code, after=after, limit=limit + 1)
        items, nxt = cut(rows, limit, lambda r: r.result_id)
        return ResultPage(items=items, next=nxt)


class SampleController(Controller):
    path = "/api/v1/samples"
    tags = ["labs"]

    @get("/{code:str}", opt={"roles": READ}, responses={404: spec("No such sample.")})
    async def detail(self, state: State, conn: NamedDependency[asyncpg.Connection], code: FromPath[str]) -> SampleView:
        """Every current result of a sample, item by item: original, retest and arbitration side
        by side, with the item's limits and each pair's outcome under the start-up policy."""
        return await sample_view(conn, code, state.policy, today_utc())
