"""The cached-read layer: in front of litestar's routing, it answers the two busiest reads
(GET /api/v1/feed/eligibility?product_category=C and GET /api/v1/labs/{code}) straight from the
read cache (labeval.api.cache) when their answer is there, and hands every other request to
litestar untouched.

A cached answer costs a few dictionary lookups; through litestar the same request also pays
routing, the middleware chain, signature parsing, dependency injection and the handler call, which
measured (`labeval bench api`, py-spy) as much as the server's own socket writes. Nothing of what a
request must go through is skipped, only litestar's generic machinery around it:

* the request id, the access line and the metrics: the same RequestMiddleware.around wraps the
  request (the one in litestar's chain then passes it on);
* the change-notification sync before the cache is used, the key's authentication, its request
  budget, its role and last_used_at: the same `admit` the guard calls (labeval.api.auth), with the
  roles of the route's own handler;
* the answer: the same cached ASGI responses the route handler sends (200 with ETag, or 304 for a
  matching If-None-Match), through the same `answer_for` (what `answer_response` calls).

It serves only what it can tell litestar would route to the same handler with the same
parameters: a GET with no root path, a valid Host header, at most one Authorization and one
If-None-Match header, a lab code or category of URL-safe characters (nothing to decode), and for
the eligibility exactly one query parameter. Anything else, an answer not cached, a key not
cached, or the cache not ready, goes to litestar (the sync already made counts for the request,
and no side effect has happened yet). A refusal met while admitting (401, 403, 429, or a failure)
goes to litestar too, with the refusal: the guard raises it, so the error answer is litestar's own
and the budget is spent once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable

from litestar import Litestar
from litestar._asgi.utils import is_valid_host
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Receive, Scope, Send

from labeval.api.auth import REFUSED, admit, key_cached
from labeval.api.cache import CACHE_READY, ReadCache
from labeval.api.feed import answer_for, eligibility_key
from labeval.api.labs import detail_key
from labeval.api.middleware import RequestMiddleware

ELIGIBILITY = "/api/v1/feed/eligibility"
LAB = "/api/v1/labs/{code}"
_LAB_PREFIX = "/api/v1/labs/"
# Characters that reach a handler as they are: RFC 3986's unreserved set, nothing percent-encoded
# or '+' (which the query parser would decode). The eligibility's category is 1-200 of them, the
# handler's own bounds. A lab code also starts with a letter or digit (no '.' or '..' segment).
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]*")
_CATEGORY_QUERY = re.compile(rb"product_category=([A-Za-z0-9._~-]{1,200})")


class _Route:
    __slots__ = ("key", "roles", "template")

    def __init__(self, template: str, roles: tuple[str, ...], key: Callable[[str], Hashable]) -> None:
        self.template, self.roles, self.key = template, roles, key


def _get_handler_roles(app: Litestar, template: str) -> tuple[str, ...]:
    """The roles of the GET handler litestar routes `template` to (what its guard checks)."""
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path_format == template:
            for handler in route.route_handlers:
                if "GET" in handler.http_methods:
                    return handler.opt["roles"]
    raise LookupError(f"no GET route {template}")


def _headers(scope: Scope) -> tuple[str, str | None] | None:
    """(Authorization, If-None-Match) when each is there at most once (Authorization once) and
    the Host header is one litestar's router accepts, else None."""
    authorization = if_none_match = host = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorization is not None:
                return None
            authorization = value
        elif name == b"if-none-match":
            if if_none_match is not None:
                return None
            if_none_match = value
        elif name == b"host" and host is None:
            host = value
    if authorization is None or (host is not None and not is_valid_host(host)):
        return None
    return authorization.decode("latin-1"), None if if_none_match is None else if_none_match.decode("latin-1")


class CachedReads:
    """The ASGI app litestar's entry point calls instead of its own handler (installed by
    `install`); `inner` is litestar's handler (exception handling and routing)."""

    def __init__(self, app: Litestar, inner: ASGIApp, request: RequestMiddleware) -> None:
        self.app, self.inner, self.request = app, inner, request
        settings = app.state.settings
        self.eligibility = _Route(ELIGIBILITY, _get_handler_roles(app, ELIGIBILITY),
                                  lambda category: eligibility_key(settings, category))
        self.lab = _Route(LAB, _get_handler_roles(app, LAB), detail_key)
        # Answers sent by this layer, and refusals it handed to litestar (for tests: which way a
        # request took).
        self.served = 0
        self.refused = 0
        # Off: every request goes to litestar (for tests that compare the two ways).
        self.enabled = True

    def _match(self, scope: Scope) -> tuple[_Route, str] | None:
        if scope["method"] != "GET" or scope.get("root_path"):
            return None
        path = scope["path"]
        if path == ELIGIBILITY:
            m = _CATEGORY_QUERY.fullmatch(scope["query_string"])
            return (self.eligibility, m.group(1).decode()) if m else None
        if path.startswith(_LAB_PREFIX) and not scope["query_string"]:
            code = path[len(_LAB_PREFIX):]
            return (self.lab, code) if _CODE.fullmatch(code) else None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._match(scope) if scope["type"] == "http" and self.enabled else None
        headers = _headers(scope) if found is not None else None
        if found is None or headers is None:
            await self.inner(scope, receive, send)
            return
        route, param = found
        authorization, if_none_match = headers

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            await self._serve(route, param, authorization, if_none_match, scope, receive, send)

        # From here on litestar would route the request to the route's handler, whose chain
        # starts with the request middleware: the layer runs it for the whole request.
        await self.request.around(scope, receive, send, serve)

    async def _serve(self, route: _Route, param: str, auth: str, inm: str | None,
                     scope: Scope, receive: Receive, send: Send) -> None:
        state = self.app.state
        cache: ReadCache = state.read_cache
        # The same wait admit() makes, made here so that what is cached may be looked at; admit
        # (here or in the guard) takes it as this request's.
        try:
            scope[CACHE_READY] = await cache.ready()  # type: ignore[literal-required]
            answer = cache.answer(route.key(param), scope)
            cached = answer is not None and key_cached(cache, auth)
        except Exception:  # noqa: BLE001 - litestar meets the same failure and answers it its way
            scope.pop(CACHE_READY, None)  # type: ignore[misc]
            cached = False
        if not cached:
            return await self.inner(scope, receive, send)
        assert answer is not None
        scope["path_template"] = route.template
        try:
            await admit(scope, state, auth, route.roles)
        except Exception as exc:  # noqa: BLE001 - any refusal or failure is the guard's to raise
            scope[REFUSED] = exc  # type: ignore[literal-required]
            self.refused += 1
            return await self.inner(scope, receive, send)
        self.served += 1
        await answer_for(inm, answer)(scope, receive, send)


def install(app: Litestar, request: RequestMiddleware) -> CachedReads:
    """Put the layer in front of litestar's routing: litestar's entry point (which runs the
    lifespan and sets the scope's app) calls `asgi_handler` for every HTTP request, and the
    layer calls litestar's own handler for whatever it does not serve."""
    layer = CachedReads(app, app.asgi_handler, request)
    app.asgi_handler = layer
    return layer
