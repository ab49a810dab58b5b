"""Errors on the officers' pages: a page, not problem details.

Built over the API's problem handlers (labeval.api.problems): each exception is first answered
as the API would answer it (same status, same safe detail, same logging), then, when the request
is a page's (not under an API path, and the browser accepts HTML), that answer is shown as an
error page in the reader's language."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request, Response
from litestar.response import Redirect

from labeval.api.problems import PROBLEM_HANDLERS, Problem
from labeval.web.session import PageForbidden, SignInRequired
from labeval.web.templating import page

_API_PREFIXES = ("/api/", "/schema", "/health", "/ready", "/metrics")


def is_page_request(request: Request) -> bool:
    path = request.url.path
    if path.startswith(_API_PREFIXES):
        return False
    return "text/html" in request.headers.get("accept", "")


def _sign_in(_: Request, exc: SignInRequired) -> Response:
    return Redirect(f"/signin?next={quote(exc.next_path, safe='/')}", status_code=303)


def _forbidden(request: Request, _: PageForbidden) -> Any:
    return page(request, "error.html", status_code=403, status=403, detail=None)


def _as_page(problem_handler: Any) -> Any:
    def handle(request: Request, exc: Exception) -> Any:
        answer = problem_handler(request, exc)
        if not is_page_request(request):
            return answer
        problem = answer.content if isinstance(answer.content, Problem) else None
        status = answer.status_code
        # Server errors keep their cause to the log; client errors may say what was wrong.
        detail = problem.detail if problem is not None and status < 500 else None
        return page(request, "error.html", status_code=status, status=status, detail=detail,
                    headers={k: v for k, v in (answer.headers or {}).items() if k.lower() == "allow"})
    return handle


def exception_handlers() -> dict[type[Exception], Any]:
    handlers: dict[type[Exception], Any] = {cls: _as_page(h) for cls, h in PROBLEM_HANDLERS.items()}
    handlers[SignInRequired] = _sign_in
    handlers[PageForbidden] = _forbidden
    return handlers


__all__ = ["exception_handlers", "is_page_request"]
