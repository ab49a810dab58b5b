"""Errors the query modules raise."""

from __future__ import annotations


class NotFound(LookupError):
    """The row asked for does not exist."""
