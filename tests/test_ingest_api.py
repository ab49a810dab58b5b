"""Imports over HTTP, through the real application."""

from __future__ import annotations

import asyncio
import re

import pytest
from litestar.testing import AsyncTestClient

from labeval.app import create_app
from labeval.ingest import pipeline


@pytest.fixture
async def client(app_settings, role_headers):
    async with AsyncTestClient(app=create_app(app_settings)) as cl:
        cl.headers.update(role_headers["officer"])
        yield cl


async def test_json_and_multipart_import(client):
    r = await client.post("/api/v1/imports/categories", json=[{"category_code": "C1", "name": "x"}])
    assert r.status_code == 201, r.text
    assert (r.json()["accepted"], r.json()["rejected"]) == (1, 0)
    csv = "机构编号,机构名称,承检范围\nL1,Lab 1,C1\nL2,Lab 2,C9\n".encode("gb18030")
    # Who imported is the key that sent it (conftest's role_headers names it test-<role>).
    r = await client.post("/api/v1/imports/labs", files={"file": ("labs.csv", csv, "text/csv")})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"], body["encoding"]) == (1, 1, "gb18030")
    iid = body["import_id"]
    detail = (await client.get(f"/api/v1/imports/{iid}")).json()
    assert (detail["file_name"], detail["source"]) == ("labs.csv", "api")
    assert re.fullmatch(r"key:\d+:test-officer", detail["user_name"]), detail["user_name"]
    rej = (await client.get(f"/api/v1/imports/{iid}/rejects")).json()
    assert [(x["row"], x["column"]) for x in rej] == [(3, "scopes")]
    # The kind of the reason beside its text, for clients that word it themselves.
    assert (rej[0]["reason_code"], rej[0]["reason_args"]) == ("unknown_codes", {"what": "category", "codes": "C9"})
    r = await client.get(f"/api/v1/imports/{iid}/rejects?format=csv")
    assert r.headers["content-type"].startswith("text/csv") and "C9" in r.text
    assert len((await client.get("/api/v1/imports")).json()["items"]) == 2


async def test_errors(client):
    assert (await client.post("/api/v1/imports/nonsense", json=[])).status_code == 404
    r = await client.post("/api/v1/imports/labs", json=[{"name": "no code"}])
    assert r.status_code == 400 and "lab_code" in r.text
    assert (await client.get("/api/v1/imports/999")).status_code == 404


async def test_results_as_a_json_array_with_a_correction_and_history(client):
    setup = [
        ("categories", [{"category_code": "TEX", "name": "纺织服装"}]),
        ("labs", [{"lab_code": "A", "name": "A", "scopes": "TEX"}, {"lab_code": "B", "name": "B", "scopes": "TEX"}]),
        ("items", [{"item_code": "Q", "category_code": "TEX", "name": "甲醛", "unit": "mg/kg",
                    "kind": "quantitative", "precision_model": "relative", "repeatability_sd": 0.05,
                    "reproducibility_sd": 0.12, "upper_limit": 75, "lod": 20}]),
        ("samples", [{"sample_code": "S1", "category_code": "TEX", "sampled_on": "2026-01-05"}]),
    ]
    for kind, rows in setup:
        r = await client.post(f"/api/v1/imports/{kind}", json=rows)
        assert r.status_code == 201 and r.json()["rejected"] == 0, r.text
    results = [
        {"sample_code": "S1", "item_code": "Q", "lab_code": "A", "role": "original", "value": "60",
         "unit": "mg/kg", "verdict": "合格", "reported_on": "2026-02-01"},
        # "未检出" is censored at the item's LOD (20).
        {"sample_code": "S1", "item_code": "Q", "lab_code": "B", "role": "retest", "value": "未检出",
         "unit": "mg/kg", "verdict": "pass", "reported_on": "2026-03-01"},
        # A JSON number is read like its text; this row is rejected: A did the original test.
        {"sample_code": "S1", "item_code": "Q", "lab_code": "A", "role": "retest", "value": 61,
         "unit": "mg/kg", "verdict": "pass", "reported_on": "2026-03-01"},
    ]
    r = await client.post("/api/v1/imports/results", json=results)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["rows"], body["accepted"], body["rejected"]) == (3, 2, 1)
    assert (body["rejects"][0]["row"], body["rejects"][0]["column"]) == (3, "lab_code")

    # The original is corrected: a new version, the old one kept.
    fixed = [{**results[0], "value": "62"}]
    body = (await client.post("/api/v1/imports/results", json=fixed)).json()
    assert (body["accepted"], body["corrections"]) == (1, 1)
    history = (await client.get(
        "/api/v1/imports/results/history",
        params={"sample_code": "S1", "item_code": "Q", "role": "original", "lab_code": "A"},
    )).json()
    assert [(h["version"], h["value"], h["superseded_at"] is None) for h in history] == [
        (1, 60.0, False), (2, 62.0, True)
    ]
    censored = (await client.get(
        "/api/v1/imports/results/history",
        params={"sample_code": "S1", "item_code": "Q", "role": "retest", "lab_code": "B"},
    )).json()[0]
    assert (censored["value"], censored["censored"], censored["censor_limit"]) == (None, True, 20.0)


async def test_a_failed_import_keeps_its_failed_record(client):
    # Unreadable upload: 400, and the import log keeps the failure (it is not rolled back with
    # the request).
    r = await client.post("/api/v1/imports/labs", files={"file": ("labs.xlsx", b"PK\x03\x04 not a workbook", "x")})
    assert r.status_code == 400, r.text
    # A JSON body without the required lab_code column: 400, recorded as well.
    assert (await client.post("/api/v1/imports/labs", json=[{"name": "no code"}])).status_code == 400
    log = (await client.get("/api/v1/imports")).json()["items"]
    assert [(x["kind"], x["status"], x["source"]) for x in log] == [("labs", "failed", "api")] * 2
    assert log[1]["file_name"] == "labs.xlsx" and "labs.xlsx" in log[1]["error"]
    assert "lab_code" in log[0]["error"]


async def test_an_upload_is_parsed_and_checked_off_the_event_loop(client, monkeypatch):
    on_event_loop: list[bool] = []
    check = pipeline.validate_batch

    def spy(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            on_event_loop.append(True)
        except RuntimeError:  # a worker thread has no running loop
            on_event_loop.append(False)
        return check(*args, **kwargs)

    monkeypatch.setattr(pipeline, "validate_batch", spy)
    csv = ("category_code,name\n" + "".join(f"C{i},x\n" for i in range(5))).encode()
    r = await client.post("/api/v1/imports/categories", files={"file": ("c.csv", csv, "text/csv")})
    assert r.status_code == 201, r.text
    assert r.json()["accepted"] == 5
    assert on_event_loop == [False]
