"""Labs and their current grades (the computed class beside an override in force today)."""

from __future__ import annotations

import asyncpg
import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from labeval.api.auth import READ
from labeval.db import overrides
from labeval.db.labs import get_lab, list_labs
from labeval.grading.overrides import today_utc
from labeval.models import LabDetail, LabSummary


class LabController(Controller):
    path = "/api/v1/labs"
    tags = ["labs"]

    @get("/", opt={"roles": READ})
    async def list_(self, conn: NamedDependency[asyncpg.Connection]) -> list[LabSummary]:
        """Every lab with its class from the latest grading run, and the override in force."""
        active = await overrides.active(conn, today_utc())
        return [
            msgspec.structs.replace(
                lab, override=active.get(lab.code),
                effective_class=active[lab.code].class_ if lab.code in active else lab.current_class,
            )
            for lab in await list_labs(conn)
        ]

    @get("/{code:str}", opt={"roles": READ})
    async def detail(self, conn: NamedDependency[asyncpg.Connection], code: FromPath[str]) -> LabDetail:
        """One lab: scopes, current class, override in force, evidence and grade history."""
        lab = await get_lab(conn, code)
        o = (await overrides.active(conn, today_utc())).get(code)
        return msgspec.structs.replace(lab, override=o, effective_class=o.class_ if o else lab.current_class)
