"""Errors as RFC 9457 problem details (application/problem+json), for every route: the handlers
in PROBLEM_HANDLERS are installed on the app, so validation errors, unknown paths (404), wrong
methods (405), the service's own errors and unexpected failures (500) all answer one shape."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import asyncpg
import msgspec

# asyncpg raises this one (not exported) for an argument it cannot encode, e.g. an int beyond int64.
from asyncpg.exceptions._base import DataError as ArgumentError
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_409_CONFLICT, HTTP_422_UNPROCESSABLE_ENTITY

from labeval.db.errors import NotFound

PROBLEM_MEDIA_TYPE = "application/problem+json"

log = logging.getLogger(__name__)


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


def _answer(problem: Problem, headers: dict[str, str] | None = None) -> Response[Problem]:
    return Response(problem, status_code=problem.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(_: Request, exc: ProblemError) -> Response[Problem]:
    return _answer(exc.problem, exc.headers)


def validation_response(_: Request, exc: ValidationException) -> Response[Problem]:
    extra = exc.extra if isinstance(exc.extra, list) else [exc.extra] if exc.extra else None
    return _answer(Problem(title="Bad Request", status=exc.status_code, detail=exc.detail, errors=extra))


def http_response(_: Request, exc: HTTPException) -> Response[Problem]:
    """litestar's own errors: an unknown path (404), a method the path lacks (405, with Allow),
    a body it cannot read (400)."""
    return _answer(Problem(title=_title(exc.status_code), status=exc.status_code, detail=exc.detail),
                   dict(exc.headers) if exc.headers else None)


def not_found_response(_: Request, exc: NotFound) -> Response[Problem]:
    return _answer(Problem(title="Not Found", status=404, detail=str(exc)))


def constraint_response(_: Request, exc: asyncpg.IntegrityConstraintViolationError) -> Response[Problem]:
    """A write the database refused: a duplicate (409) or another broken constraint (422)."""
    status = HTTP_409_CONFLICT if isinstance(exc, asyncpg.UniqueViolationError) else HTTP_422_UNPROCESSABLE_ENTITY
    constraint = getattr(exc, "constraint_name", None)
    detail = exc.message + (f" (constraint {constraint})" if constraint else "")
    return _answer(Problem(title=_title(status), status=status, detail=detail))


def data_response(_: Request, exc: Exception) -> Response[Problem]:
    """A value from the request the database cannot take: an id beyond bigint, a date PostgreSQL
    cannot represent. Path integers are unbounded in litestar, so this is the one place that
    catches them all."""
    return _answer(Problem(title="Bad Request", status=400, detail=f"A value in the request is out of range: {exc}"))


def internal_response(request: Request, exc: Exception) -> Response[Problem]:
    # The cause goes to the log, not to the caller.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _answer(Problem(title="Internal Server Error", status=500, detail="The server failed to answer."))


# Installed on the app (labeval.app.create_app): litestar picks the handler of the most specific
# class in the exception's MRO.
PROBLEM_HANDLERS: dict[type[Exception], Any] = {
    ProblemError: problem_response,
    ValidationException: validation_response,
    HTTPException: http_response,
    NotFound: not_found_response,
    asyncpg.IntegrityConstraintViolationError: constraint_response,
    # Raised by asyncpg when it cannot encode an argument, and by PostgreSQL (SQLSTATE class 22).
    ArgumentError: data_response,
    asyncpg.DataError: data_response,
    Exception: internal_response,
}


_EXAMPLE = Example(summary="A lab that does not exist", value=msgspec.to_builtins(
    Problem(title="Not Found", status=404, detail="no lab 'L9999'")))


def spec(description: str) -> ResponseSpec:
    """An error response in the OpenAPI document."""
    return ResponseSpec(data_container=Problem, description=description, media_type=PROBLEM_MEDIA_TYPE,
                        generate_examples=False, examples=[_EXAMPLE])


def document_errors(routes: Iterable[object]) -> None:
    """In the OpenAPI document of every operation: the 400 of a request that fails validation and,
    where the path names a row, the 404 of a row that does not exist, both as problem details
    (litestar would document its own 400 as application/json). A route's own entry wins."""
    for route in routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            added = {400: spec("The request is invalid: parameters or body (`errors` says which).")}
            if route.path_parameters:
                added[404] = spec("The path names nothing that exists.")
            handler.responses = {**added, **(handler.responses or {})}
