"""Liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

import asyncpg
from litestar import Response, get
from litestar.datastructures import State

from labeval.api.auth import PUBLIC
from labeval.db.migrate import schema_version
from labeval.metrics import CONTENT_TYPE_LATEST, Metrics
from labeval.models import Health, Ready


@get("/health", sync_to_thread=False, tags=["system"], opt=PUBLIC)
def health() -> Health:
    """The process is up (no dependencies checked)."""
    return Health(status="ok")


@get("/ready", tags=["system"], opt=PUBLIC)
async def ready(state: State) -> Response[Ready]:
    """The database answers and the schema is migrated."""
    pool: asyncpg.Pool = state.pool
    try:
        async with pool.acquire(timeout=2) as conn:
            version = await schema_version(conn)
    except Exception as exc:  # any failure to reach the database means not ready
        return Response(Ready(status="unavailable", database=type(exc).__name__), status_code=503)
    return Response(Ready(status="ok", database="ok", schema_version=version))


# Public: a Prometheus scraper carries no API key (LABEVAL_METRICS=off removes the route).
@get("/metrics", sync_to_thread=False, tags=["system"], include_in_schema=False, opt={"public": True})
def prometheus_metrics(state: State) -> Response[bytes]:
    """Request, grading-run and import metrics of this process, in the Prometheus text format."""
    registry: Metrics = state.metrics
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
