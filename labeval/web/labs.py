"""The labs table: search, filter, sort and page through every lab with its class, pairs, shrunk
rate, bias and flags."""

from __future__ import annotations

import math
from urllib.parse import urlencode

import asyncpg
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.response import Template

from labeval.db import overview
from labeval.grading.overrides import today_utc
from labeval.web.session import VIEW
from labeval.web.templating import page
from scoring.classes import CLASSES, DISPLAY
from scoring.grading import STATISTICAL_CAPS

PAGE_SIZE = 50


def _clean(value: str | None, allowed: tuple[str, ...] | None = None, max_length: int = 100) -> str | None:
    """A filter value from the query string, or None when empty or not one of `allowed`."""
    if value is None:
        return None
    value = value.strip()[:max_length]
    if not value or (allowed is not None and value not in allowed):
        return None
    return value


class LabTableController(Controller):
    path = "/labs"
    include_in_schema = False
    opt = {"session_roles": VIEW}

    @get("/")
    async def table(self, request: Request, conn: NamedDependency[asyncpg.Connection]) -> Template:
        qp = request.query_params
        where = overview.LabTableFilter(
            search=_clean(qp.get("q")), class_=_clean(qp.get("class"), CLASSES),
            province=_clean(qp.get("province")), category=_clean(qp.get("category")),
            flag=_clean(qp.get("flag"), overview.FLAGS),
        )
        sort = _clean(qp.get("sort"), tuple(overview.SORTS)) or "code"
        descending = qp.get("dir") == "desc"
        try:
            page_no = max(1, int(qp.get("page", "1")))
        except ValueError:
            page_no = 1
        table = await overview.lab_table(
            conn, today=today_utc(), caps=sorted(STATISTICAL_CAPS), where=where, sort=sort,
            descending=descending, offset=(page_no - 1) * PAGE_SIZE, limit=PAGE_SIZE,
        )
        pages = max(1, math.ceil(table.total / PAGE_SIZE))
        kept = {k: v for k, v in {"q": where.search, "class": where.class_, "province": where.province,
                                  "category": where.category, "flag": where.flag}.items() if v}

        def link(**change: object) -> str:
            params = {**kept, "sort": sort, "dir": "desc" if descending else "asc", "page": page_no, **change}
            return "/labs?" + urlencode({k: v for k, v in params.items() if v not in (None, "")})

        def sort_link(key: str) -> str:
            flip = "asc" if sort == key and descending else "desc" if sort == key else "asc"
            return link(sort=key, dir=flip, page=1)

        return page(
            request, "labs.html", table=table, where=where, sort=sort, descending=descending, page_no=page_no,
            pages=pages, link=link, sort_link=sort_link, classes=CLASSES, display=DISPLAY, flags=overview.FLAGS,
            provinces=await overview.provinces(conn), categories=await overview.categories(conn),
        )
