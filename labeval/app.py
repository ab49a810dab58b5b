"""The litestar application: create_app(settings) wires resources, routes and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
from litestar import Litestar, Request, Router
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import ImproperlyConfiguredException
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig

from labeval.api.audit import REQUEST_TRANSACTION, AuditController, AuditMiddleware, RequestTransaction
from labeval.api.auth import (
    PUBLIC,
    SECURITY_COMPONENTS,
    TokenBuckets,
    authorize,
    document_guard,
    undeclared_routes,
)
from labeval.api.cache import ReadCache
from labeval.api.cached_reads import install as install_cached_reads
from labeval.api.draws import DrawController
from labeval.api.feed import FeedController
from labeval.api.imports import ImportController
from labeval.api.keys import KeyController
from labeval.api.labs import LabController, SampleController
from labeval.api.middleware import RequestMiddleware, remember_exception
from labeval.api.overrides import EventController, OverrideController
from labeval.api.plans import RetestPlanController
from labeval.api.problems import document_errors
from labeval.api.runs import RunController
from labeval.api.system import health, prometheus_metrics, ready
from labeval.config import Settings
from labeval.db.changes import ChangeListener
from labeval.db.migrate import migrate
from labeval.db.pool import connect, create_pool
from labeval.db.server import database_url
from labeval.grading.lab_charts import SeriesCache
from labeval.grading.overrides import expire_due, today_utc
from labeval.grading.run import recover_abandoned
from labeval.keys import derived_secret, load_pepper
from labeval.metrics import Metrics
from labeval.policy_file import load_policy
from labeval.scheduler import build_scheduler, catch_up_missed_run, stop_scheduler
from labeval.web.errors import exception_handlers
from labeval.web.routes import PAGE_HANDLERS, static_files
from labeval.web.session import signed_in
from labeval.web.templating import template_config
from labeval.web.uploads import CloseUploadsMiddleware
from scoring.policy import Policy

# Paths whose callers authenticate with a bearer key (no ambient cookie a third-party page could
# ride on), so CSRF tokens are checked only on the pages' forms.
_NOT_CSRF = ["^/api/", "^/health", "^/ready", "^/metrics", "^/schema"]

# HTTP's safe methods: their handlers only read (none writes; a change is a POST, PUT, PATCH or DELETE).
_READ_ONLY_METHODS = frozenset({"GET", "HEAD"})
# At shutdown, how long the pool's connections get to be given back before they are closed by force.
_POOL_CLOSE_SECONDS = 15.0

log = logging.getLogger(__name__)


async def provide_conn(state: State, request: Request) -> AsyncIterator[asyncpg.Connection]:
    """One connection per request. A request that may change data runs in one transaction (an
    exception in the handler rolls it back); an audited one, in the transaction that also writes
    its audit row. A GET or HEAD runs its queries without BEGIN and
    COMMIT: two round trips fewer on every read (measured by `labeval bench api`), and at READ
    COMMITTED a transaction would not give its statements one snapshot anyway."""
    request_tx: RequestTransaction | None = request.scope.get(REQUEST_TRANSACTION)  # type: ignore[assignment]
    if request_tx is not None:
        # An audited request: its transaction commits with the audit row when the answer starts
        # (labeval.api.audit). The handler's work is a savepoint in it, so a failure rolls back the
        # work and leaves the audit row of the failed request to commit.
        conn = await request_tx.connection()
        async with conn.transaction():
            yield conn
        return
    pool: asyncpg.Pool = state.pool
    async with pool.acquire() as conn:
        if request.method in _READ_ONLY_METHODS:
            yield conn
            return
        async with conn.transaction():
            yield conn


async def _guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Two checks for every route: API keys, roles and budgets (labeval.api.auth), and the people's
    sessions of the pages (labeval.web.session); each leaves the other's routes alone. One guard
    calling both, not two guards: litestar copies the route handler for each guard it calls, on
    every request (measured by `labeval bench api`: 3 % of a cached read)."""
    await authorize(connection, handler)
    await signed_in(connection, handler)


def create_app(settings: Settings, policy: Policy | None = None) -> Litestar:
    """The application. The policy is read and validated here, before anything is served, so a
    bad policy file stops the start instead of the first grading run (PolicyError)."""
    if policy is None:
        policy = load_policy(settings.policy)
    # Read (or made) before anything is served, like the policy: a missing or unsafe pepper
    # stops the start (PepperError).
    pepper = load_pepper(settings.key_pepper, settings.data_path)
    # This app's own registry: apps made in one process (tests) never share series.
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def database(app: Litestar) -> AsyncIterator[None]:
        async with database_url(settings) as url:
            conn = await connect(url)
            try:
                await migrate(conn)
                # A run whose process died shows as abandoned from the moment a server is up.
                await recover_abandoned(conn)
                await expire_due(conn, today_utc())
            finally:
                await conn.close()
            pool = await create_pool(url, min_size=settings.pool_min_size, max_size=settings.pool_max_size)
            app.state.pool = pool
            app.state.database_url = url
            # The lab charts' series, one cache per application (warmed after each run).
            app.state.lab_series = SeriesCache(pool)
            try:
                yield
            finally:
                await app.state.lab_series.close()
                try:
                    # Bounded: a connection stuck in a cancelled query must not hang the shutdown.
                    await asyncio.wait_for(pool.close(), timeout=_POOL_CLOSE_SECONDS)
                except TimeoutError:
                    log.warning("connections still busy after %.0f s at shutdown: closed by force",
                                _POOL_CLOSE_SECONDS)
                    pool.terminate()

    @contextlib.asynccontextmanager
    async def change_listener(app: Litestar) -> AsyncIterator[None]:
        cache: ReadCache = app.state.read_cache
        listener = ChangeListener(app.state.database_url, on_change=cache.changed, on_down=cache.down,
                                  on_up=cache.up)
        cache.attach(listener.sync)
        listener.start()
        # Not required to serve (without it every request reads the database), but a server
        # that starts with its cache working is the one measured and expected.
        await listener.wait_listening(timeout=10)
        app.state.change_listener = listener
        try:
            yield
        finally:
            await listener.stop()

    @contextlib.asynccontextmanager
    async def scheduler(app: Litestar) -> AsyncIterator[None]:
        sched = build_scheduler(settings, app.state)
        sched.start()
        await catch_up_missed_run(sched, settings, app.state, datetime.now(UTC))
        app.state.scheduler = sched
        try:
            yield
        finally:
            # A running job may finish (up to the shutdown timeout); then it is cancelled.
            await stop_scheduler(sched, app.state, settings.shutdown_timeout)

    request_middleware = RequestMiddleware(metrics)
    app = Litestar(
        route_handlers=[health, ready, LabController, SampleController, ImportController, RunController,
                        OverrideController, EventController, KeyController, AuditController, FeedController,
                        DrawController, RetestPlanController,
                        *([prometheus_metrics] if settings.metrics == "on" else []),
                        *PAGE_HANDLERS, static_files()],
        # Order matters: the scheduler's jobs need the pool, so it starts after and stops before.
        # The change listener needs the database's URL (and migration 0013).
        lifespan=[database, change_listener, scheduler],
        dependencies={"conn": Provide(provide_conn)},
        # First: the request id is set before anything else runs and logs (the audit reads it).
        # Last: uploaded files of a form are closed however its request was answered (labeval.web.uploads).
        middleware=[request_middleware, AuditMiddleware(), CloseUploadsMiddleware()],
        after_exception=[remember_exception],
        # Every error on every API route is problem details (labeval.api.problems); on a page, the
        # same answer as an error page (labeval.web.errors).
        exception_handlers=exception_handlers(),
        # One guard for every route (_guard): API keys and sessions.
        guards=[_guard],
        template_config=template_config(),
        # The double-submit token of every page form. Its secret is derived from the pepper, so
        # every replica of a deployment accepts every other replica's tokens.
        csrf_config=CSRFConfig(secret=derived_secret(pepper, "csrf").hex(), exclude=_NOT_CSRF,
                               cookie_secure=settings.secure_cookies == "on", cookie_samesite="lax",
                               cookie_httponly=True),
        state=State({"settings": settings, "policy": policy, "key_pepper": pepper, "metrics": metrics,
                     "rate_limiter": TokenBuckets(settings.rate_limit_per_minute), "read_cache": ReadCache()}),
        openapi_config=OpenAPIConfig(
            title="labeval", version="1", components=SECURITY_COMPONENTS,
            # The schema and its docs UI are public; every other route needs a key.
            openapi_router=Router("/schema", route_handlers=[], include_in_schema=False, opt=PUBLIC),
        ),
        logging_config=None,
        debug=False,
    )
    if missing := undeclared_routes(app.routes):
        raise ImproperlyConfiguredException(
            "routes without opt roles, session_roles or public (labeval.api.auth): " + ", ".join(missing))
    document_guard(app.routes)
    document_errors(app.routes)
    # The two busiest reads answered from the read cache without litestar's routing when cached
    # (labeval.api.cached_reads); app.state.cached_reads for tests.
    app.state.cached_reads = install_cached_reads(app, request_middleware)
    return app
