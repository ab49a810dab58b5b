"""Errors of the query layer."""

from __future__ import annotations


class NotFound(LookupError):
    """The row a query function was asked for does not exist (the API answers 404)."""

    def __init__(self, what: str, key: object) -> None:
        self.what = what
        self.key = key
        super().__init__(f"no {what} {key!r}")
