"""Who may call what: API keys (Authorization: Bearer …), roles declared on every route, and a
request budget per key.

Every route handler declares `opt={"roles": (…)}` (the roles that may call it; admin may call
everything) or `opt={"public": True}`. `authorize` is the one guard, applied to the whole app;
`undeclared_routes` is checked when the app is built, so a route that declares neither stops the
start instead of being served open or closed by accident.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable

import asyncpg
import msgspec
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.status_codes import (
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_429_TOO_MANY_REQUESTS,
)
from litestar.types import Scope

from labeval.api.cache import CACHE_READY, CachedKey, ReadCache
from labeval.api.problems import ProblemError, spec
from labeval.db import apikeys
from labeval.keys import ROLES, Role

# Who may call a route, by what it does (admin may call every route).
READ = ("officer", "viewer")
# Runs and imports: their readers, and the grader who starts them.
READ_WITH_GRADER = ("officer", "viewer", "grader")
IMPORT = ("officer", "grader")
START_RUN = ("officer", "grader")
OVERRIDE = ("officer",)
AUDIT = ("officer",)
ADMIN = ("admin",)
PUBLIC = {"public": True}

# The OpenAPI security scheme every guarded operation refers to (set by document_guard).
SECURITY_SCHEME = "apiKey"
SECURITY_COMPONENTS = Components(
    security_schemes={
        SECURITY_SCHEME: SecurityScheme(
            type="http", scheme="bearer", bearer_format="lbv_<prefix>_<secret>",
            description="An API key made by `labeval apikey create` (or POST /api/v1/keys), sent as "
                        "`Authorization: Bearer lbv_…`.",
        )
    }
)
SECURITY = [{SECURITY_SCHEME: []}]
# Error answers every guarded route may give, for its OpenAPI `responses`.
AUTH_RESPONSES = {
    401: spec("No key, or a malformed, unknown or revoked key."),
    403: spec("The key's role may not call this route."),
    429: spec("The key's request budget is spent; retry after Retry-After seconds."),
}


class Principal(msgspec.Struct, kw_only=True, frozen=True):
    """The caller of a guarded request (scope["user"])."""
    key_id: int
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}:{self.name}"


class TokenBuckets:
    """In-process token buckets, one per key: `per_minute` requests in a burst, refilled at
    per_minute/60 per second. Per process: behind N replicas a key gets up to N times the budget.

    Not litestar's RateLimitConfig: its middleware runs before the guards, so it could only key
    by the unauthenticated header (anyone could spend another key's budget, or dodge theirs with
    made-up keys), it counts fixed windows and it does not answer problem details."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}

    def take(self, key_id: int) -> float:
        """Spend one token: 0 when allowed, else the seconds until a token is there."""
        now = self._clock()
        tokens, last = self._buckets.get(key_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / self.rate


def _is_options(handler: BaseRouteHandler) -> bool:
    # litestar adds an OPTIONS handler to every path; it answers only the Allow header.
    return getattr(handler, "http_methods", None) == {"OPTIONS"}


def _valid_roles(roles: object) -> bool:
    return isinstance(roles, tuple) and bool(roles) and all(r in ROLES for r in roles)


def _declared(handler: BaseRouteHandler) -> bool:
    """Exactly one of: public, API roles, or session roles (a page for signed-in people)."""
    roles, session_roles = handler.opt.get("roles"), handler.opt.get("session_roles")
    if handler.opt.get("public") is True:
        return roles is None and session_roles is None
    if session_roles is not None:
        return roles is None and _valid_roles(session_roles)
    return _valid_roles(roles)


def undeclared_routes(routes: Iterable[object]) -> list[str]:
    """'METHOD path' of every handler that declares neither valid roles nor public (or both)."""
    missing = []
    for route in routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not _is_options(handler) and not _declared(handler):
                missing.extend(f"{m} {route.path}" for m in sorted(handler.http_methods))
    return missing


def document_guard(routes: Iterable[object]) -> None:
    """In the OpenAPI document of every guarded handler: the bearer scheme, and the guard's
    401/403/429 beside the route's own answers (its own entry for a status wins). Done here so
    that no route, old or new, has to repeat them."""
    for route in routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                if "roles" in handler.opt:
                    handler.security = SECURITY
                    handler.responses = {**AUTH_RESPONSES, **(handler.responses or {})}


def _digest(token: str) -> bytes:
    # The cache is keyed by a digest, so the process keeps no bearer secret after the request.
    return hashlib.sha256(token.encode()).digest()


def key_cached(cache: ReadCache, authorization: str) -> bool:
    """Whether admit() would find this request's key in the cache (no lookup, no side effect)."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return scheme.lower() == "bearer" and bool(token) and cache.key(_digest(token)) is not None


async def _authenticate(cache: ReadCache, ready: bool, pool: asyncpg.Pool, pepper: bytes,
                        token: str) -> apikeys.ApiKey | None:
    """The live key, from the cache when it holds it (labeval.api.cache: dropped on any change to
    api_keys, a revocation included), else from the database. Only live keys are cached: an
    unknown or revoked key is looked up every time."""
    digest = _digest(token)
    now = time.monotonic()
    cached = cache.key(digest) if ready else None
    if cached is not None:
        if now - cached.touched >= apikeys.TOUCH_EVERY_SECONDS:
            # last_used_at stays as fresh as without the cache (at most a minute old per replica).
            cached.touched = now
            async with pool.acquire() as conn:
                await apikeys.touch(conn, cached.key.id)
        return cached.key
    generation = cache.generation
    async with pool.acquire() as conn:
        key = await apikeys.authenticate(conn, pepper, token)
    if key is not None:
        cache.put_key(digest, CachedKey(key=key, touched=now), generation)
    return key


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(HTTP_401_UNAUTHORIZED, "Unauthorized", detail,
                        headers={"WWW-Authenticate": 'Bearer realm="labeval"'})


# Scope key of a refusal (or failure) the cached-read layer met while admitting a request
# (labeval.api.cached_reads): it hands the request to litestar, whose guard raises it, so the
# error answer is litestar's own and the key's budget is spent once.
REFUSED = "labeval.refused"


async def admit(scope: Scope, state: State, authorization: str, roles: tuple[str, ...]) -> Principal:
    """Authenticate the key of one request, spend its budget and check its role: the one place
    these rules live (the guard and the cached-read layer both call it). Sets the scope's user
    (an audited refusal names its actor) and its CACHE_READY."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Send an API key: Authorization: Bearer lbv_…")
    # Once per request, before any cached lookup (the key here, the answer in the route): every
    # change committed before the request arrived has been heard (labeval.api.cache). The
    # cached-read layer may have waited already, after this request arrived: that wait counts.
    ready = scope.get(CACHE_READY)
    if ready is None:
        ready = await state.read_cache.ready()
        scope[CACHE_READY] = ready  # type: ignore[literal-required]
    key = await _authenticate(state.read_cache, ready, state.pool, state.key_pepper, token.strip())
    if key is None:
        raise _unauthorized("The API key is malformed, unknown or revoked.")
    wait = state.rate_limiter.take(key.id)
    if wait > 0:
        raise ProblemError(HTTP_429_TOO_MANY_REQUESTS, "Too Many Requests",
                           f"Key {key.id} has spent its budget of {int(state.rate_limiter.capacity)} "
                           "requests per minute.", headers={"Retry-After": str(math.ceil(wait))})
    principal = Principal(key_id=key.id, name=key.name, role=key.role)
    scope["user"] = principal
    if key.role != "admin" and key.role not in roles:
        raise ProblemError(HTTP_403_FORBIDDEN, "Forbidden",
                           f"Role {key.role!r} may not call this route (allowed: {', '.join(roles)}, admin).")
    return principal


async def authorize(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """The app-wide guard: authenticate the key, spend its budget, check its role (admit)."""
    if handler.opt.get("public") is True or _is_options(handler) or "session_roles" in handler.opt:
        return
    refused = connection.scope.pop(REFUSED, None)  # type: ignore[misc]
    if refused is not None:
        raise refused
    await admit(connection.scope, connection.app.state, connection.headers.get("authorization", ""),
                handler.opt["roles"])
