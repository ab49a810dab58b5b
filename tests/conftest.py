"""Real PostgreSQL for every test that touches SQL.

One server per test session: LABEVAL_TEST_DATABASE_URL if set (an admin URL), else an embedded
PostgreSQL in .labeval-test/. Migrations run once into a template database; each test gets its
own database cloned from it (CREATE DATABASE … TEMPLATE is a file copy: milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from labeval.config import Settings
from labeval.db import apikeys
from labeval.db.migrate import discover, migrate
from labeval.db.pool import connect
from labeval.db.server import embedded_server, with_database
from labeval.keys import ROLES
from labeval.logs import configure_logging

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    external = os.environ.get("LABEVAL_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with embedded_server(ROOT / ".labeval-test") as url:
        yield url


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> str:
    digest = hashlib.sha256("".join(m.checksum for m in discover()).encode()).hexdigest()[:12]
    name = f"labeval_tpl_{digest}"

    async def build() -> None:
        conn = await asyncpg.connect(pg_admin_url)
        try:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                return
            tmp = f"{name}_{uuid.uuid4().hex[:8]}"
            await conn.execute(f'CREATE DATABASE "{tmp}"')
            db = await asyncpg.connect(with_database(pg_admin_url, tmp))
            try:
                await migrate(db)
            finally:
                await db.close()
            # Rename into place so a half-built template is never picked up by a later session.
            try:
                await conn.execute(f'ALTER DATABASE "{tmp}" RENAME TO "{name}"')
            except asyncpg.DuplicateDatabaseError:
                await conn.execute(f'DROP DATABASE "{tmp}"')
        finally:
            await conn.close()

    asyncio.run(build())
    return name


def _new_db(admin_url: str, template: str | None) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    tpl = f' TEMPLATE "{template}"' if template else ""
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"{tpl}'))
    return name


def _drop_db(admin_url: str, name: str) -> None:
    asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = _new_db(pg_admin_url, template_db)
    try:
        yield with_database(pg_admin_url, name)
    finally:
        _drop_db(pg_admin_url, name)


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no migrations applied."""
    name = _new_db(pg_admin_url, None)
    try:
        yield with_database(pg_admin_url, name)
    finally:
        _drop_db(pg_admin_url, name)


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await connect(db_url)
    try:
        yield c
    finally:
        await c.close()


# The API keys' pepper in tests (the app and the key fixture must agree on it).
TEST_PEPPER = "pepper-for-tests-only-" + "0" * 32


@pytest.fixture
def app_settings(db_url: str) -> Settings:
    """Settings of an app on the test database: no scheduled runs, the test pepper."""
    return Settings(database_url=db_url, grading_cron="", key_pepper=TEST_PEPPER)


@pytest.fixture
def role_headers(db_url: str) -> dict[str, dict[str, str]]:
    """One live API key per role in the test database: role -> request headers."""

    async def make() -> dict[str, dict[str, str]]:
        c = await connect(db_url)
        try:
            made = [await apikeys.create(c, TEST_PEPPER.encode(), name=f"test-{r}", role=r) for r in ROLES]
        finally:
            await c.close()
        return {k.role: {"Authorization": f"Bearer {k.key}"} for k in made}

    return asyncio.run(make())


@contextlib.contextmanager
def configured_json_log() -> Iterator[io.StringIO]:
    """The process logging as `labeval serve` configures it (JSON at INFO), written to a buffer;
    the logging configuration before it is put back afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buf = io.StringIO()
    configure_logging("INFO", "json", stream=buf, force=True)
    try:
        yield buf
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    with configured_json_log() as buf:
        yield buf
