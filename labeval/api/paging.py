"""Query parameters of the list routes. Bounds are litestar parameter constraints: litestar
enforces those on query parameters (a msgspec.Meta bound on a query parameter is not checked)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

from litestar.params import QueryParameter

T = TypeVar("T")
C = TypeVar("C")

Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="Items per page (1–1000).")]
# A cursor: the `next` of the page before; omitted for the first page.
After = Annotated[int | None, QueryParameter(ge=0, description="The `next` of the page before; omit for the first page.")]
# A sequence number: items with a higher one follow.
Seq = Annotated[int, QueryParameter(ge=0, description="The last sequence number seen (0: from the start).")]


def cut(rows: Sequence[T], limit: int, cursor: Callable[[T], C]) -> tuple[list[T], C | None]:
    """A page from the `limit + 1` rows a list query fetched: the first `limit`, and the cursor of
    the next page (the last row's key), or None when the extra row shows there is none."""
    items = list(rows[:limit])
    return items, (cursor(items[-1]) if len(rows) > limit else None)
