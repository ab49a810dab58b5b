"""Grading runs: list, read, and start one on demand."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import asyncpg
import msgspec
from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_201_CREATED

from labeval.db.grading import get_run, list_runs
from labeval.grading.run import run_grading
from labeval.models import GradingRun


class RunRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Grade on results reported up to this date; default today.
    as_of: date | None = None


class RunController(Controller):
    path = "/api/v1/runs"
    tags = ["grading"]

    @get("/")
    async def list_(
        self,
        conn: NamedDependency[asyncpg.Connection],
        limit: FromQuery[Annotated[int, msgspec.Meta(ge=1, le=500)]] = 50,
        offset: FromQuery[Annotated[int, msgspec.Meta(ge=0)]] = 0,
    ) -> list[GradingRun]:
        """Finished grading runs, newest evaluation date first (grades not included)."""
        return await list_runs(conn, limit=limit, offset=offset)

    @get("/{run_id:int}")
    async def detail(self, conn: NamedDependency[asyncpg.Connection], run_id: FromPath[int]) -> GradingRun:
        """One run with every lab's grade and reasons."""
        return await get_run(conn, run_id)

    @post("/", status_code=HTTP_201_CREATED)
    async def start(self, state: State, data: JSONBody[RunRequest]) -> GradingRun:
        """Run a grading run now (the same run as `labeval grade`), and return it."""
        # Its own connection: the run reads one repeatable-read snapshot and commits on its own,
        # which cannot nest inside the per-request transaction.
        async with state.pool.acquire() as conn:
            return await run_grading(conn, state.policy, as_of=data.as_of, trigger="api")
