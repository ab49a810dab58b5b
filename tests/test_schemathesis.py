"""The OpenAPI document against the service: schemathesis generates requests for every operation
from the document and sends them in-process (ASGI) with an admin key to an app on a test
database holding a small graded data set. No answer may be a 5xx, and every answer must be
documented: its status code, its content type and its body's schema.

The example budget is small (the suite stays fast); `LABEVAL_FUZZ_EXAMPLES` raises it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
import schemathesis
from conftest import TEST_PEPPER, _drop_db, _new_db
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_grading_run import AS_OF, seed, small_policy

from labeval.app import create_app
from labeval.config import Settings
from labeval.db import apikeys
from labeval.db.pool import connect
from labeval.db.server import with_database
from labeval.grading.run import run_grading

EXAMPLES = int(os.environ.get("LABEVAL_FUZZ_EXAMPLES", "8"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


async def _prepare(url: str) -> str:
    """Seed and grade the test database; return an admin key."""
    conn = await connect(url)
    try:
        await seed(conn)
        await run_grading(conn, small_policy(), as_of=AS_OF, trigger="test")
        # A few keys before the admin key, so that a generated key id rarely names it.
        for n in range(3):
            await apikeys.create(conn, TEST_PEPPER.encode(), name=f"spare-{n}", role="viewer")
        made = await apikeys.create(conn, TEST_PEPPER.encode(), name="schemathesis", role="admin")
    finally:
        await conn.close()
    return made.key


@pytest.fixture(scope="module")
def fuzz_db(pg_admin_url: str, template_db: str) -> Iterator[tuple[str, str]]:
    name = _new_db(pg_admin_url, template_db)
    url = with_database(pg_admin_url, name)
    try:
        yield url, asyncio.run(_prepare(url))
    finally:
        # schemathesis keeps the app's lifespan running for the process; stop it (closing the
        # pool) before the database goes.
        shutdown_lifespans()
        _drop_db(pg_admin_url, name)


@pytest.fixture(scope="module")
def api_schema(fuzz_db: tuple[str, str]) -> schemathesis.schemas.BaseSchema:
    url, _ = fuzz_db
    # A budget no generated burst reaches: a 429 is documented, but it would hide the route.
    app = create_app(Settings(database_url=url, grading_cron="", key_pepper=TEST_PEPPER,
                              rate_limit_per_minute=1_000_000))
    return schemathesis.openapi.from_asgi("/schema/openapi.json", app).exclude(
        # Revoking a key by a generated id could revoke the key this test sends.
        method="POST", path="/api/v1/keys/{key_id}/revoke",
    )


@pytest.fixture(scope="module")
def admin_headers(fuzz_db: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {fuzz_db[1]}"}


def test_every_answer_is_documented_and_none_is_a_server_error(
    api_schema: schemathesis.schemas.BaseSchema, admin_headers: dict[str, str],
) -> None:
    # One hypothesis run per operation, inside one test: schemathesis's pytest loader
    # (from_fixture) does not work with this pytest.
    failures: dict[str, str] = {}
    for found in api_schema.get_all_operations():
        operation = found.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=admin_headers, checks=CHECKS)

        try:
            check()
        # Every failing operation is reported, not just the first (schemathesis raises groups).
        except (Exception, BaseExceptionGroup) as exc:
            failures[operation.label] = f"{type(exc).__name__}: {exc}"
    assert failures == {}, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
