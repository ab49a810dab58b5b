"""API keys, roles on every route, the per-key budget and the audit log, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import stat

import asyncpg
import msgspec
import pytest
from click.testing import CliRunner
from conftest import TEST_PEPPER
from litestar import Litestar, get
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from labeval.api.auth import TokenBuckets, undeclared_routes
from labeval.app import create_app
from labeval.cli import main
from labeval.config import Settings
from labeval.keys import ROLES, PepperError, load_pepper, split_key

PROBLEM = "application/problem+json"


def _concrete(path: str) -> str:
    # A value of the right type for every path parameter, naming no row (a handler without a body,
    # e.g. a key's revoke, must not act on the keys of the walk): the guard runs before the
    # handler looks anything up, so a 404 still shows the guard let the request through.
    return re.sub(r"\{\w+:(\w+)\}", lambda m: "999999" if m.group(1) == "int" else "x", path)


def _operations(app: Litestar) -> list[tuple[str, str, dict]]:
    ops = []
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                ops.extend((m, route.path, handler.opt) for m in sorted(handler.http_methods - {"OPTIONS"}))
    return ops


async def test_every_route_answers_401_without_a_key_403_for_a_wrong_role_and_lets_its_roles_in(
    app_settings: Settings, role_headers: dict[str, dict[str, str]],
) -> None:
    app = create_app(app_settings)
    allowed: dict[tuple[str, str], set[str]] = {}
    async with AsyncTestClient(app) as client:
        for method, path, opt in _operations(app):
            if not path.startswith(("/api/", "/health", "/ready", "/metrics", "/schema")):
                continue  # the pages: signed-in people, not keys (tests/test_web.py walks them)
            url = _concrete(path)
            # Not JSON: a guarded request that gets through fails parsing (4xx), changing nothing.
            send = {"content": b"{not json", "headers": {"content-type": "application/json"}}
            if opt.get("public"):
                r = await client.request(method, url)
                assert r.status_code not in (401, 403), (method, path, r.status_code)
                continue
            r = await client.request(method, url, **send)
            assert (r.status_code, r.headers["content-type"]) == (401, PROBLEM), (method, path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            for role in ROLES:
                r = await client.request(method, url, content=send["content"],
                                         headers={**send["headers"], **role_headers[role]})
                if role == "admin" or role in opt["roles"]:
                    assert r.status_code not in (401, 403), (role, method, path, r.status_code, r.text)
                    allowed.setdefault((method, path), set()).add(role)
                else:
                    assert (r.status_code, r.headers["content-type"]) == (403, PROBLEM), (role, method, path)
    # The role table as designed, for the routes it names (routes added later are walked above).
    read, read_grader = {"admin", "officer", "viewer"}, {"admin", "officer", "viewer", "grader"}
    expected = {
        ("GET", "/api/v1/labs"): read,
        ("GET", "/api/v1/labs/{code:str}"): read,
        ("GET", "/api/v1/labs/{code:str}/pairs"): read,
        ("GET", "/api/v1/labs/{code:str}/results"): read,
        ("GET", "/api/v1/samples/{code:str}"): read,
        ("GET", "/api/v1/grade-events"): read,
        ("GET", "/api/v1/overrides"): read,
        ("POST", "/api/v1/overrides"): {"admin", "officer"},
        ("POST", "/api/v1/overrides/{override_id:int}/revoke"): {"admin", "officer"},
        ("POST", "/api/v1/runs"): {"admin", "officer", "grader"},
        ("GET", "/api/v1/runs"): read_grader,
        ("GET", "/api/v1/runs/{run_id:int}/verify"): read_grader,
        ("POST", "/api/v1/imports/{kind:str}"): {"admin", "officer", "grader"},
        ("GET", "/api/v1/imports/{import_id:int}/rejects"): read_grader,
        ("GET", "/api/v1/audit"): {"admin", "officer"},
        ("GET", "/api/v1/keys"): {"admin"},
        ("POST", "/api/v1/keys"): {"admin"},
        ("POST", "/api/v1/keys/{key_id:int}/revoke"): {"admin"},
    }
    assert {k: allowed.get(k) for k in expected} == expected
    # Every guarded operation was walked and let some role in: 26 in labs, samples, imports,
    # runs, overrides, grade-events, keys and audit.
    assert set(allowed) == {(m, p) for m, p, opt in _operations(app) if "roles" in opt}
    assert len(allowed) >= 26


def test_a_route_that_declares_no_roles_stops_the_start() -> None:
    @get("/forgotten", sync_to_thread=False)
    def forgotten() -> str:
        return "open?"

    @get("/typo", sync_to_thread=False, opt={"roles": ("officr",)})
    def typo() -> str:
        return "closed?"

    @get("/fine", sync_to_thread=False, opt={"roles": ("viewer",)})
    def fine() -> str:
        return "ok"

    assert undeclared_routes(Litestar([forgotten, typo, fine], openapi_config=None).routes) == ["GET /forgotten", "GET /typo"]


def test_the_app_declares_every_route_and_the_bearer_scheme(app_settings: Settings) -> None:
    app = create_app(app_settings)
    assert undeclared_routes(app.routes) == []
    schema = app.openapi_schema.to_schema()
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert schema["paths"]["/api/v1/runs"]["post"]["security"] == [{"apiKey": []}]
    assert "security" not in schema["paths"]["/health"]["get"]
    # The guard's answers are documented on every guarded operation, beside the route's own.
    for path, item in schema["paths"].items():
        for method, op in item.items():
            guarded = "security" in op
            assert guarded == path.startswith("/api/v1/"), (method, path)
            if guarded:
                assert {"401", "403", "429"} <= set(op["responses"]), (method, path)
    assert "404" in schema["paths"]["/api/v1/runs/{run_id}"]["get"]["responses"]


async def _key_row(db_url: str, key_id: int) -> asyncpg.Record:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
    finally:
        await conn.close()


def _cli(db_url: str, *args: str):
    return CliRunner().invoke(main, ["--database-url", db_url, *args], catch_exceptions=False,
                              env={"LABEVAL_KEY_PEPPER": TEST_PEPPER, "LABEVAL_ACTOR": "admin.li"})


async def test_cli_key_is_stored_only_as_its_keyed_hash_works_then_revoked_answers_401(
    db_url: str, app_settings: Settings,
) -> None:
    r = await asyncio.to_thread(_cli, db_url, "apikey", "create", "--role", "viewer", "--name", "dashboard", "--json")
    assert r.exit_code == 0, r.output
    made = json.loads(r.output)
    assert sorted(made) == ["id", "key", "name", "role"]
    assert (made["name"], made["role"]) == ("dashboard", "viewer")
    prefix, secret = split_key(made["key"])
    assert len(secret) >= 43  # 32 random bytes in base64url

    row = await _key_row(db_url, made["id"])
    assert row["prefix"] == prefix
    assert bytes(row["secret_hmac"]) == hmac.new(TEST_PEPPER.encode(), secret.encode(), hashlib.sha256).digest()
    assert bytes(row["secret_hmac"]) != hashlib.sha256(secret.encode()).digest()
    conn = await asyncpg.connect(db_url)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for t in tables:
            found = await conn.fetchval(
                f'SELECT count(*) FROM "{t["tablename"]}" x WHERE strpos(x::text, $1) > 0 OR strpos(x::text, $2) > 0',
                secret, made["key"])
            assert found == 0, t["tablename"]
    finally:
        await conn.close()

    listed = json.loads((await asyncio.to_thread(_cli, db_url, "apikey", "list", "--json")).output)
    assert [(k["id"], k["role"], k["revoked_at"]) for k in listed] == [(made["id"], "viewer", None)]
    assert "key" not in listed[0] and made["key"] not in json.dumps(listed)

    headers = {"Authorization": f"Bearer {made['key']}"}
    async with AsyncTestClient(create_app(app_settings)) as client:
        assert (await client.get("/api/v1/labs", headers=headers)).status_code == 200
        assert (await _key_row(db_url, made["id"]))["last_used_at"] is not None
        wrong_secret = f"lbv_{prefix}_{'A' * 43}"
        for bad in (wrong_secret, "lbv_zz_zz", "nonsense", made["key"] + "x"):
            r = await client.get("/api/v1/labs", headers={"Authorization": f"Bearer {bad}"})
            assert (r.status_code, r.headers["content-type"]) == (401, PROBLEM), bad
        r = await asyncio.to_thread(_cli, db_url, "apikey", "revoke", str(made["id"]))
        assert r.exit_code == 0, r.output
        r = await client.get("/api/v1/labs", headers=headers)
        assert (r.status_code, r.json()["title"]) == (401, "Unauthorized")
    assert (await asyncio.to_thread(_cli, db_url, "apikey", "revoke", "999")).exit_code == 2

    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT actor, action, target FROM audit_log ORDER BY id")
    finally:
        await conn.close()
    assert [(r["actor"], r["action"], json.loads(r["target"])) for r in rows] == [
        ("cli:admin.li", "apikey.create", {"key_id": made["id"], "name": "dashboard", "role": "viewer"}),
        ("cli:admin.li", "apikey.revoke", {"key_id": made["id"]}),
    ]


async def test_a_post_writes_its_audit_row_which_the_database_never_changes(
    db_url: str, app_settings: Settings, role_headers: dict[str, dict[str, str]],
) -> None:
    body = json.dumps({"name": "tender-platform", "role": "feed"}).encode()
    async with AsyncTestClient(create_app(app_settings)) as client:
        r = await client.post("/api/v1/keys", content=body, headers={
            **role_headers["admin"], "content-type": "application/json", "x-request-id": "req-42"})
        assert r.status_code == 201, r.text
        assert r.headers["x-request-id"] == "req-42"
        new = r.json()
        revoked = await client.post(f"/api/v1/keys/{new['id']}/revoke", headers=role_headers["admin"])
        assert (revoked.status_code, revoked.json()["revoked_at"] is not None) == (200, True)
        refused = await client.post("/api/v1/runs", json={}, headers=role_headers["viewer"])
        assert refused.status_code == 403
        # A read is not audited; it still gets a request id of its own.
        read = await client.get("/api/v1/labs", headers=role_headers["viewer"])
        assert re.fullmatch(r"[0-9a-f]{32}", read.headers["x-request-id"])

        page1 = await client.get("/api/v1/audit", params={"limit": 2}, headers=role_headers["officer"])
        assert page1.status_code == 200, page1.text
        rows = page1.json()
        page2 = (await client.get("/api/v1/audit", params={"after": rows[-1]["id"]},
                                  headers=role_headers["officer"])).json()
        only_viewer = (await client.get("/api/v1/audit", params={"actor": rows[0]["actor"].replace(
            "test-admin", "x")}, headers=role_headers["officer"])).json()
        assert (await client.get("/api/v1/audit", headers=role_headers["viewer"])).status_code == 403

    admin_actor = rows[0]["actor"]
    assert re.fullmatch(r"key:\d+:test-admin", admin_actor)
    entries = [(e["actor"], e["action"], e["target"], e["status"]) for e in rows + page2]
    viewer_actor = page2[-1]["actor"]
    assert re.fullmatch(r"key:\d+:test-viewer", viewer_actor)
    assert entries == [
        (admin_actor, "POST /api/v1/keys", {}, 201),
        (admin_actor, "POST /api/v1/keys/{key_id}/revoke", {"key_id": new["id"]}, 200),
        (viewer_actor, "POST /api/v1/runs", {}, 403),
    ]
    assert rows[0]["payload_digest"] == hashlib.sha256(body).hexdigest()
    assert rows[0]["request_id"] == "req-42"
    assert only_viewer == []

    conn = await asyncpg.connect(db_url)
    try:
        for sql in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(sql)
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 3
    finally:
        await conn.close()


async def test_a_key_over_its_budget_gets_429_with_retry_after_and_other_keys_do_not(
    app_settings: Settings, role_headers: dict[str, dict[str, str]],
) -> None:
    app = create_app(msgspec.structs.replace(app_settings, rate_limit_per_minute=2))
    async with AsyncTestClient(app) as client:
        codes = [(await client.get("/api/v1/labs", headers=role_headers["viewer"])).status_code for _ in range(2)]
        over = await client.get("/api/v1/labs", headers=role_headers["viewer"])
        other = await client.get("/api/v1/labs", headers=role_headers["officer"])
    assert codes == [200, 200]
    assert (over.status_code, over.headers["content-type"], over.json()["status"]) == (429, PROBLEM, 429)
    # 2 per minute refill one token every 30 s; the bucket is empty, so about 30 s to wait.
    assert 29 <= int(over.headers["retry-after"]) <= 30
    assert other.status_code == 200


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    buckets = TokenBuckets(per_minute=60, clock=lambda: now[0])
    assert [buckets.take(1) for _ in range(60)] == [0.0] * 60
    assert buckets.take(1) == pytest.approx(1.0)  # 1 token per second: 1 s to the next
    assert buckets.take(2) == 0.0
    now[0] = 2.5
    assert [buckets.take(1) == 0.0 for _ in range(3)] == [True, True, False]
    now[0] = 1000.0  # refill stops at the burst size
    assert sum(buckets.take(1) == 0.0 for _ in range(100)) == 60


def test_pepper_file_is_made_once_private_and_refused_when_readable(tmp_path) -> None:
    first = load_pepper(None, tmp_path / "data")
    path = tmp_path / "data" / "key_pepper"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_pepper(None, tmp_path / "data") == first and len(first) == 64
    os.chmod(path, 0o644)
    with pytest.raises(PepperError, match="readable by others"):
        load_pepper(None, tmp_path / "data")
    assert load_pepper("x" * 32, tmp_path / "none") == b"x" * 32
    assert not (tmp_path / "none").exists()
    with pytest.raises(PepperError, match="at least 32"):
        load_pepper("short", tmp_path / "data")


async def test_cli_imports_runs_and_overrides_are_audited(db_url: str, tmp_path) -> None:
    csv = tmp_path / "categories.csv"
    csv.write_text("category_code,name\nC1,toys\n", encoding="utf-8")
    r = await asyncio.to_thread(_cli, db_url, "ingest", "categories", str(csv), "--json")
    assert r.exit_code == 0, r.output
    import_id = json.loads(r.output)["import_id"]
    r = await asyncio.to_thread(_cli, db_url, "grade", "--as-of", "2026-06-30", "--json")
    assert r.exit_code == 0, r.output
    run_id = json.loads(r.output)["run_id"]
    r = await asyncio.to_thread(_cli, db_url, "override", "NOPE", "II", "--reason", "x", "--until", "2099-01-01")
    assert r.exit_code == 2  # refused: nothing changed, nothing audited
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT actor, action, target, status FROM audit_log ORDER BY id")
    finally:
        await conn.close()
    assert [(r["actor"], r["action"], json.loads(r["target"]), r["status"]) for r in rows] == [
        ("cli:admin.li", "ingest", {"import_id": import_id, "kind": "categories", "file": "categories.csv"}, None),
        ("cli:admin.li", "grade", {"run_id": run_id, "as_of": "2026-06-30"}, None),
    ]
