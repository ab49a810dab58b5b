"""Grading runs: start one on demand, list them, read one with its grades, diff two, verify one."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

import asyncpg
import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body, FromPath, FromQuery
from litestar.status_codes import HTTP_201_CREATED, HTTP_409_CONFLICT

from labeval.api.auth import READ_WITH_GRADER, START_RUN
from labeval.api.paging import After, Limit, cut
from labeval.api.problems import ProblemError, spec
from labeval.db.grading import get_run, list_runs
from labeval.grading.diff import RunDiff, diff_runs
from labeval.grading.lab_charts import warm_after_run
from labeval.grading.overrides import effective_grades
from labeval.grading.run import RunInProgress, run_grading
from labeval.grading.verify import RunNotVerifiable, VerifyReport, verify_run
from labeval.metrics import Metrics
from labeval.models import EffectiveGrade, GradingRun, RunPage

_EARLIEST = date(1900, 1, 1)


class RunRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Grade on results reported up to this date; default today (UTC).
    as_of: date | None = None

    def __post_init__(self) -> None:
        # The evaluation window reaches years back from as_of; dates near year 1 overflow it.
        if self.as_of is not None and self.as_of < _EARLIEST:
            raise ValueError(f"as_of must be {_EARLIEST} or later")


class RunController(Controller):
    path = "/api/v1/runs"
    tags = ["grading"]

    @get("/", opt={"roles": READ_WITH_GRADER})
    async def list_(
        self,
        conn: NamedDependency[asyncpg.Connection],
        limit: Limit = 50,
        after: After = None,
        status: FromQuery[Literal["running", "succeeded", "failed", "abandoned"] | None] = None,
    ) -> RunPage:
        """Grading runs of every status (or one), newest first (grades not included); `after`
        is the `next` of the page before (runs older than that run)."""
        rows = await list_runs(conn, limit=limit + 1, before=after, status=status)
        items, nxt = cut(rows, limit, lambda r: r.run_id)
        return RunPage(items=items, next=nxt)

    @get("/{run_id:int}", opt={"roles": READ_WITH_GRADER}, responses={404: spec("No such run.")})
    async def detail(self, conn: NamedDependency[asyncpg.Connection], run_id: FromPath[int]) -> GradingRun:
        """One run: its lifecycle and every lab's grade and reasons (none unless it succeeded)."""
        return await get_run(conn, run_id)

    @get("/{run_id:int}/grades", opt={"roles": READ_WITH_GRADER}, responses={404: spec("No such run.")})
    async def grades(self, conn: NamedDependency[asyncpg.Connection], run_id: FromPath[int]) -> list[EffectiveGrade]:
        """A run's grades, each with the override in force today and the class that applies."""
        return await effective_grades(conn, (await get_run(conn, run_id)).grades)

    @get("/{run_id:int}/diff", opt={"roles": READ_WITH_GRADER}, responses={404: spec("No such run.")})
    async def diff(
        self, conn: NamedDependency[asyncpg.Connection], run_id: FromPath[int], against: FromQuery[int]
    ) -> RunDiff:
        """Labs whose class differs between run `against` (a) and this run (b), with the reasons on
        both sides and the rule that made the difference."""
        return await diff_runs(conn, against, run_id)

    @get("/{run_id:int}/verify", opt={"roles": READ_WITH_GRADER}, responses={404: spec("No such run."), 409: spec("The run did not succeed.")})
    async def verify(
        self, state: State, run_id: FromPath[int], current: FromQuery[bool] = False
    ) -> VerifyReport:
        """Recompute the run from the data as it read it (current=true: today's data) under its
        stored policy; `identical` is true when every lab's class, score and reasons agree."""
        # Its own connection: verify builds the past state in temporary tables in one transaction.
        async with state.pool.acquire() as conn:
            try:
                return await verify_run(conn, run_id, current=current)
            except RunNotVerifiable as exc:
                raise ProblemError(HTTP_409_CONFLICT, "Run not verifiable", str(exc)) from exc

    @post("/", status_code=HTTP_201_CREATED, opt={"roles": START_RUN}, responses={409: spec("Another grading run is in progress.")})
    async def start(
        self, request: Request, state: State,
        data: Annotated[RunRequest, Body(examples=[Example(summary="Grade as of the end of June",
                                                            value={"as_of": "2026-06-30"})])],
    ) -> GradingRun:
        """Run a grading run now (the same run as `labeval grade`), and return it. 409 while
        another run holds the run lock."""
        # Its own connection: the run holds the run lock on its session, reads one snapshot and
        # commits on its own, which cannot nest inside the per-request transaction.
        metrics: Metrics = state.metrics
        async with state.pool.acquire() as conn:
            try:
                with metrics.grading_run("api", refused=RunInProgress):
                    run = await run_grading(conn, state.policy, as_of=data.as_of, trigger="api", actor=request.user.actor)
            except RunInProgress as exc:
                raise ProblemError(HTTP_409_CONFLICT, "Grading run in progress", str(exc)) from exc
        # The lab pages' chart series of the new run, computed off this request.
        warm_after_run(state.get("lab_series"), run.run_id, state.policy, run.as_of)
        return run
