"""ImportController over HTTP (own minimal app: one connection per test database)."""

from __future__ import annotations

import asyncpg
import pytest
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import AsyncTestClient

from labeval.api.imports import ImportController
from labeval.db.pool import connect


@pytest.fixture
async def client(db_url):
    async def provide_conn():
        c: asyncpg.Connection = await connect(db_url)
        try:
            async with c.transaction():
                yield c
        finally:
            await c.close()

    app = Litestar(route_handlers=[ImportController], dependencies={"conn": Provide(provide_conn)})
    async with AsyncTestClient(app=app) as cl:
        yield cl


async def test_json_and_multipart_import(client):
    r = await client.post("/api/v1/imports/categories", json=[{"category_code": "C1", "name": "x"}])
    assert r.status_code == 201, r.text
    assert (r.json()["accepted"], r.json()["rejected"]) == (1, 0)
    csv = "机构编号,机构名称,承检范围\nL1,Lab 1,C1\nL2,Lab 2,C9\n".encode("gb18030")
    r = await client.post("/api/v1/imports/labs", files={"file": ("labs.csv", csv, "text/csv")},
                          headers={"x-labeval-user": "alice"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"], body["encoding"]) == (1, 1, "gb18030")
    iid = body["import_id"]
    detail = (await client.get(f"/api/v1/imports/{iid}")).json()
    assert (detail["user_name"], detail["file_name"], detail["source"]) == ("alice", "labs.csv", "api")
    rej = (await client.get(f"/api/v1/imports/{iid}/rejects")).json()
    assert [(x["row"], x["column"]) for x in rej] == [(3, "scopes")]
    r = await client.get(f"/api/v1/imports/{iid}/rejects?format=csv")
    assert r.headers["content-type"].startswith("text/csv") and "C9" in r.text
    assert len((await client.get("/api/v1/imports")).json()) == 2


async def test_errors(client):
    assert (await client.post("/api/v1/imports/nonsense", json=[])).status_code == 404
    r = await client.post("/api/v1/imports/labs", json=[{"name": "no code"}])
    assert r.status_code == 400 and "lab_code" in r.text
    assert (await client.get("/api/v1/imports/999")).status_code == 404
