"""Query parameters of the list routes. Bounds are litestar parameter constraints: litestar
enforces those on query parameters (a msgspec.Meta bound on a query parameter is not checked)."""

from __future__ import annotations

from typing import Annotated

from litestar.params import QueryParameter

Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="Items per page (1–1000).")]
# A cursor: the `next` of the page before; omitted for the first page.
After = Annotated[int | None, QueryParameter(ge=0, description="The `next` of the page before; omit for the first page.")]
# A sequence number: items with a higher one follow.
Seq = Annotated[int, QueryParameter(ge=0, description="The last sequence number seen (0: from the start).")]
