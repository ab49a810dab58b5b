"""Around every HTTP request: its id (taken from X-Request-ID or made here, echoed in the
response, carried by every log line emitted while serving it), an access log line (at ERROR with
the traceback when the answer is a 5xx), and the request metrics by route template, method and
status."""

from __future__ import annotations

import logging
from time import perf_counter

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from labeval.logs import REQUEST_ID_HEADER, accept_request_id, log_fields, request_context
from labeval.metrics import Metrics

access_log = logging.getLogger("labeval.access")

# Probes and scrapes arrive every few seconds: their access lines are DEBUG, not INFO.
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
_ACCESS_LINE = "%s %s %d %.1f ms"
_HEADER = REQUEST_ID_HEADER.encode("latin-1")
# Scope state key of the exception a handler raised (litestar turns it into the response).
_EXCEPTION = "labeval_exception"


async def remember_exception(exc: Exception, scope: Scope) -> None:
    """after_exception hook: keep the exception, so a 5xx access line can show its traceback
    (litestar's own exception logging is off: logging is configured once, by the command)."""
    scope.setdefault("state", {})[_EXCEPTION] = exc


def _offered_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name.lower() == _HEADER:
            return value.decode("latin-1")
    return None


# Scope key: this request is already inside `around` (the cached-read layer in front of litestar's
# routing wrapped it, labeval.api.cached_reads): the middleware in litestar's chain passes it on.
_WRAPPED = "labeval.request_wrapped"


class RequestMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope.get(_WRAPPED):
            await next_app(scope, receive, send)
            return
        await self.around(scope, receive, send, next_app)

    async def around(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """The request id, the access line and the metrics around next_app: for litestar's chain,
        and for the cached-read layer, which serves some reads without it."""
        scope[_WRAPPED] = True  # type: ignore[literal-required]
        request_id = accept_request_id(_offered_id(scope))
        header = (_HEADER, request_id.encode("latin-1"))
        # A handler that dies before answering is answered 500 by litestar's exception handler.
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*(h for h in message.get("headers", ()) if h[0].lower() != _HEADER), header]
            await send(message)

        t0 = perf_counter()
        with request_context(request_id):
            try:
                await next_app(scope, receive, send_with_id)
            except HTTPException as exc:
                # Raised by a middleware inside this one (CSRF): litestar's outer handler answers
                # it with this status, after this middleware has returned.
                status = exc.status_code
                raise
            finally:
                seconds = perf_counter() - t0
                # The template (/api/v1/runs/{run_id}), never the path: one series per route.
                route = scope.get("path_template") or "<unmatched>"
                method = scope.get("method", "GET")
                self.metrics.observe_request(route, method, status, seconds)
                fields = {"method": method, "path": scope["path"], "route": route, "status": status,
                          "duration_ms": round(seconds * 1000, 3)}
                args = (method, scope["path"], status, seconds * 1000)
                if status >= 500:
                    access_log.error(_ACCESS_LINE, *args, exc_info=scope.get("state", {}).get(_EXCEPTION),
                                     extra=fields)
                else:
                    log_fields(access_log, logging.DEBUG if route in _QUIET_ROUTES else logging.INFO,
                               _ACCESS_LINE, args, fields)
