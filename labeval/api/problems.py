"""Errors as RFC 9457 problem details (application/problem+json)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec

from labeval.db.errors import NotFound

PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    # For a request that fails validation: what was wrong, field by field.
    errors: list[dict[str, Any]] | None = None


class ProblemError(Exception):
    def __init__(self, status: int, title: str, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.problem = Problem(title=title, status=status, detail=detail)
        # E.g. Retry-After on a 429, WWW-Authenticate on a 401.
        self.headers = headers


def problem_response(_: Request, exc: ProblemError) -> Response[Problem]:
    return Response(exc.problem, status_code=exc.problem.status, media_type=PROBLEM_MEDIA_TYPE,
                    headers=exc.headers)


def validation_response(_: Request, exc: ValidationException) -> Response[Problem]:
    extra = exc.extra if isinstance(exc.extra, list) else [exc.extra] if exc.extra else None
    return Response(Problem(title="Bad Request", status=exc.status_code, detail=exc.detail, errors=extra),
                    status_code=exc.status_code, media_type=PROBLEM_MEDIA_TYPE)


# For the controllers whose every error is problem details.
PROBLEM_HANDLERS = {ValidationException: validation_response}


def not_found_response(_: Request, exc: NotFound) -> Response[Problem]:
    return Response(Problem(title="Not Found", status=404, detail=str(exc)), status_code=404,
                    media_type=PROBLEM_MEDIA_TYPE)


def spec(description: str) -> ResponseSpec:
    """An error response in the OpenAPI document."""
    return ResponseSpec(data_container=Problem, description=description, media_type=PROBLEM_MEDIA_TYPE)
