"""Labs and their current grades."""

from __future__ import annotations

import asyncpg
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from labeval.db.labs import get_lab, list_labs
from labeval.models import LabDetail, LabSummary


class LabController(Controller):
    path = "/api/v1/labs"
    tags = ["labs"]

    @get("/")
    async def list_(self, conn: NamedDependency[asyncpg.Connection]) -> list[LabSummary]:
        """Every lab with its class from the latest grading run."""
        return await list_labs(conn)

    @get("/{code:str}")
    async def detail(self, conn: NamedDependency[asyncpg.Connection], code: FromPath[str]) -> LabDetail:
        """One lab: scopes, current class, evidence and grade history."""
        return await get_lab(conn, code)
