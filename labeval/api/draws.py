"""双随机 draws: weighted random choice of labs, and random assignment of samples to labs, each
stored with its candidates, seed and policy hash and verifiable from them."""

from __future__ import annotations

import asyncpg
from litestar import Controller, Request, post
from litestar import get as get_route
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_404_NOT_FOUND, HTTP_422_UNPROCESSABLE_ENTITY

from labeval.api.problems import ProblemError, spec
from labeval.db import draws as q
from labeval.grading.draws import NotEnoughLabs
from labeval.grading.overrides import today_utc
from labeval.grading.selection import (
    AssignmentBatch,
    AssignmentRequest,
    Draw,
    DrawRequest,
    DrawVerification,
    UnknownCategory,
    as_draw,
    make_assignment,
    make_draw,
    verify_draw,
)

WRITE_ROLES = {"roles": ("officer", "admin")}
READ_ROLES = {"roles": ("officer", "admin", "viewer")}
REFUSED = {404: spec("No such product category."), 422: spec("Not enough eligible labs.")}


def _refused(exc: Exception) -> ProblemError:
    if isinstance(exc, UnknownCategory):
        return ProblemError(HTTP_404_NOT_FOUND, "Unknown product category", str(exc))
    return ProblemError(HTTP_422_UNPROCESSABLE_ENTITY, "Not enough eligible labs", str(exc))


class DrawController(Controller):
    path = "/api/v1/draws"
    tags = ["draws"]

    @post("/", status_code=HTTP_201_CREATED, opt=WRITE_ROLES, responses=REFUSED)
    async def create(self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection],
                     data: JSONBody[DrawRequest]) -> Draw:
        """Draw `count` labs for the product category, weighted by the policy's class weights,
        without replacement, leaving out the named labs and the labs in the named provinces.
        Without a seed the server chooses one; either way it is stored with the candidates."""
        try:
            return await make_draw(conn, data, state.policy, today=today_utc(), actor=request.user.actor)
        except (UnknownCategory, NotEnoughLabs) as exc:
            raise _refused(exc) from exc

    @post("/assignments", status_code=HTTP_201_CREATED, opt=WRITE_ROLES, responses=REFUSED)
    async def assign(self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection],
                     data: JSONBody[AssignmentRequest]) -> AssignmentBatch:
        """A testing lab for every sample of a batch (抽检分离: never its sampling body; with
        exclude_own_province, never a lab in the enterprise's province). A lab is given a second
        sample only when every lab a sample could have is used as often."""
        try:
            return await make_assignment(conn, data, state.policy, today=today_utc(), actor=request.user.actor)
        except (UnknownCategory, NotEnoughLabs) as exc:
            raise _refused(exc) from exc

    @get_route("/{draw_id:int}", opt=READ_ROLES, responses={404: spec("No such draw.")})
    async def detail(self, conn: NamedDependency[asyncpg.Connection], draw_id: FromPath[int]
                     ) -> Draw | AssignmentBatch:
        """A stored draw or assignment (`kind` tells which)."""
        return as_draw(await q.get(conn, draw_id))

    @get_route("/{draw_id:int}/verify", opt=READ_ROLES, responses={404: spec("No such draw.")})
    async def verify(self, conn: NamedDependency[asyncpg.Connection], draw_id: FromPath[int]) -> DrawVerification:
        """Recompute the draw from its stored candidates, request and seed; verified is true
        when the result is the stored one."""
        return await verify_draw(conn, draw_id)
