"""The audit row of a state-changing request is written in the request's own transaction, against
real PostgreSQL: a change never commits without its audit row, and a failed request is audited
with its status while its work is rolled back."""

from __future__ import annotations

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from labeval.api import keys as keys_api
from labeval.app import create_app
from labeval.config import Settings
from labeval.db import apikeys
from labeval.db import audit as audit_db
from labeval.db.errors import NotFound


async def _rows(db_url: str, sql: str, *args: object) -> list[tuple]:
    conn = await asyncpg.connect(db_url)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def test_a_change_and_its_audit_row_are_one_transaction(
    db_url: str, app_settings: Settings, role_headers: dict[str, dict[str, str]], monkeypatch,
) -> None:
    real_append, real_create = audit_db.append, apikeys.create
    seen: dict[str, int] = {}

    # txid_current() names the top-level transaction (a savepoint inside it reports the same id).
    async def append_noting(conn: asyncpg.Connection, **row: object) -> int:
        seen["audit"] = await conn.fetchval("SELECT txid_current()")
        return await real_append(conn, **row)  # type: ignore[arg-type]

    async def create_noting(conn: asyncpg.Connection, *args: object, **kwargs: object) -> object:
        seen["change"] = await conn.fetchval("SELECT txid_current()")
        return await real_create(conn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(audit_db, "append", append_noting)
    monkeypatch.setattr(keys_api.apikeys, "create", create_noting)
    async with AsyncTestClient(create_app(app_settings)) as client:
        r = await client.post("/api/v1/keys", json={"name": "tender-platform", "role": "feed"},
                              headers={**role_headers["admin"], "x-request-id": "req-tx-1"})
        assert r.status_code == 201, r.text
    assert set(seen) == {"audit", "change"} and seen["audit"] == seen["change"]
    assert await _rows(db_url, "SELECT name FROM api_keys WHERE id = $1", r.json()["id"]) == [("tender-platform",)]
    assert await _rows(db_url, "SELECT status FROM audit_log WHERE request_id = 'req-tx-1'") == [(201,)]


async def test_a_change_whose_audit_row_cannot_be_written_is_not_committed(
    db_url: str, app_settings: Settings, role_headers: dict[str, dict[str, str]], monkeypatch,
) -> None:
    real_append = audit_db.append
    calls: list[int | None] = []

    async def append_failing_once(conn: asyncpg.Connection, **row: object) -> int:
        # What a crash between the change and its audit row amounts to: the row is not written.
        calls.append(row.get("status"))  # type: ignore[arg-type]
        if len(calls) == 1:
            raise ConnectionResetError("the server went away while writing the audit row")
        return await real_append(conn, **row)  # type: ignore[arg-type]

    monkeypatch.setattr(audit_db, "append", append_failing_once)
    async with AsyncTestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        r = await client.post("/api/v1/keys", json={"name": "unaudited", "role": "feed"},
                              headers={**role_headers["admin"], "x-request-id": "req-tx-2"})
    assert r.status_code == 500
    # The key was never made: no change exists without its audit row.
    assert await _rows(db_url, "SELECT id FROM api_keys WHERE name = 'unaudited'") == []
    # The failed attempt itself is audited, as the server error it was.
    assert calls == [201, 500]
    assert await _rows(db_url, "SELECT action, status FROM audit_log WHERE request_id = 'req-tx-2'") == [
        ("POST /api/v1/keys", 500)]


async def test_a_failed_request_is_audited_and_its_work_rolled_back(
    db_url: str, app_settings: Settings, role_headers: dict[str, dict[str, str]], monkeypatch,
) -> None:
    real_create = apikeys.create

    async def create_then_fail(conn: asyncpg.Connection, *args: object, **kwargs: object) -> object:
        made = await real_create(conn, *args, **kwargs)  # type: ignore[arg-type]
        if kwargs["name"] == "half-made":
            raise NotFound("lab", "X")
        return made

    monkeypatch.setattr(keys_api.apikeys, "create", create_then_fail)
    async with AsyncTestClient(create_app(app_settings)) as client:
        r = await client.post("/api/v1/keys", json={"name": "half-made", "role": "feed"},
                              headers={**role_headers["admin"], "x-request-id": "req-tx-3"})
        assert r.status_code == 404, r.text
        # The next request works (the failed one's connection went back to the pool clean).
        ok = await client.post("/api/v1/keys", json={"name": "whole", "role": "viewer"},
                               headers={**role_headers["admin"], "x-request-id": "req-tx-4"})
        assert ok.status_code == 201, ok.text
    assert await _rows(db_url, "SELECT name FROM api_keys WHERE name IN ('half-made', 'whole')") == [("whole",)]
    assert await _rows(
        db_url, "SELECT request_id, status FROM audit_log WHERE request_id LIKE 'req-tx-%' ORDER BY id") == [
        ("req-tx-3", 404), ("req-tx-4", 201)]


@pytest.mark.parametrize("role", ["viewer"])
async def test_a_request_refused_by_the_guard_is_audited_alone(
    db_url: str, app_settings: Settings, role_headers: dict[str, dict[str, str]], role: str,
) -> None:
    async with AsyncTestClient(create_app(app_settings)) as client:
        r = await client.post("/api/v1/keys", json={"name": "nope", "role": "feed"},
                              headers={**role_headers[role], "x-request-id": "req-tx-5"})
    assert r.status_code == 403
    assert await _rows(db_url, "SELECT action, status FROM audit_log WHERE request_id = 'req-tx-5'") == [
        ("POST /api/v1/keys", 403)]
