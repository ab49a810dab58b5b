"""Retest plans: plan a retest round, read it, verify its random choice, export it."""

from __future__ import annotations

from typing import Literal

import asyncpg
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_422_UNPROCESSABLE_ENTITY

from labeval.api.problems import ProblemError, spec
from labeval.grading.plans import (
    PlanRefused,
    PlanRequest,
    PlanVerification,
    RetestPlan,
    create_plan,
    export_bytes,
    get_plan,
    verify_plan,
)

_ROLES = {"roles": ("officer", "admin")}
_MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


class RetestPlanController(Controller):
    path = "/api/v1/retest-plans"
    tags = ["retest plans"]

    @post("/", status_code=HTTP_201_CREATED, opt=_ROLES,
          responses={422: spec("Plan refused (unknown category, period_start after period_end, bad rate ≥ 1).")})
    async def create(
        self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection],
        data: JSONBody[PlanRequest],
    ) -> RetestPlan:
        """Plan a retest round: rank the product categories, work out the retests each lab needs
        (exact binomial power, one-sided), share the budget and draw the samples with a stored
        seed. The plan is stored and returned."""
        try:
            return await create_plan(conn, state.policy, data, actor=request.user.actor)
        except PlanRefused as exc:
            raise ProblemError(HTTP_422_UNPROCESSABLE_ENTITY, "Plan refused", str(exc)) from exc

    @get("/{plan_id:int}", opt=_ROLES, responses={404: spec("No such plan.")})
    async def detail(self, conn: NamedDependency[asyncpg.Connection], plan_id: FromPath[int]) -> RetestPlan:
        """A stored plan: request, power calculation, ranking, allocation, samples, seed."""
        return await get_plan(conn, plan_id)

    @get("/{plan_id:int}/verify", opt=_ROLES, responses={404: spec("No such plan.")})
    async def verify(self, conn: NamedDependency[asyncpg.Connection], plan_id: FromPath[int]) -> PlanVerification:
        """Draw the samples again from the stored candidates, allocation and seed; `verified` is
        true when they are the stored samples."""
        return await verify_plan(conn, plan_id)

    @get("/{plan_id:int}/export", opt=_ROLES, media_type=_MEDIA["csv"], responses={404: spec("No such plan.")})
    async def export(
        self, conn: NamedDependency[asyncpg.Connection], plan_id: FromPath[int],
        format: FromQuery[Literal["csv", "xlsx"]] = "csv",
    ) -> Response[bytes]:
        """The plan for the sampling bodies, one row per sample: sample_code, category_code,
        enterprise, original_lab_code, retest_lab_code (blank: drawn later), reason."""
        body = export_bytes(await get_plan(conn, plan_id), format)
        return Response(body, media_type=_MEDIA[format], headers={
            "content-disposition": f'attachment; filename="retest-plan-{plan_id}.{format}"'})
