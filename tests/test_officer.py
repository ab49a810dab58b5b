"""Officer endpoints against real PostgreSQL: lab filters, cursor pages without gaps or repeats,
a lab's pairs and results, a sample side by side, and one problem-details shape for errors."""

from __future__ import annotations

from datetime import date

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from test_grading_run import AS_OF, EXPECTED, seed, small_policy

from labeval.app import create_app
from labeval.config import Settings
from labeval.db.pool import connect
from labeval.grading.run import run_grading

PROBLEM = "application/problem+json"


async def _extra(conn: asyncpg.Connection) -> None:
    """Beside the hand-built set of test_grading_run: provinces, scopes, an arbitration, and two
    pairs the latest run's window does not hold (one before it, one after as_of)."""
    await conn.execute(
        """
        INSERT INTO product_categories (category_code, name) VALUES ('FOOD', '食品');
        UPDATE labs SET province = '浙江' WHERE lab_code IN ('A', 'B');
        UPDATE labs SET province = '江苏' WHERE lab_code = 'C';
        INSERT INTO lab_scopes (lab_code, category_code) VALUES ('A', 'TEX'), ('B', 'FOOD'), ('C', 'TEX');
        INSERT INTO samples (sample_code, category_code, original_lab_code) VALUES
            ('OLD', 'TEX', 'E'), ('LATE', 'TEX', 'E');
        INSERT INTO results (sample_code, item_code, lab_code, role, value, verdict, reported_on) VALUES
            ('S025', 'Q', 'C', 'arbitration', 50.0, 'pass', '2026-05-01'),
            ('OLD', 'Q', 'E', 'original', 50.0, 'pass', '2023-01-01'),
            ('OLD', 'Q', 'A', 'retest', 50.0, 'pass', '2023-02-01'),
            ('LATE', 'Q', 'E', 'original', 50.0, 'pass', '2026-07-01'),
            ('LATE', 'Q', 'A', 'retest', 50.0, 'pass', '2026-07-02');
        """
    )


@pytest.fixture
async def graded(db_url: str) -> int:
    conn = await connect(db_url)
    try:
        await seed(conn)
        await _extra(conn)
        run = await run_grading(conn, small_policy(), as_of=AS_OF, trigger="test")
        # A hand-built set this small fires no statistical cap and its comparison graph decides
        # identifiability on its own; the list filters read what the run stored, so state it:
        # B's data-shading cap fired (a statistical cap), C keeps its falsified-report cap (not
        # statistical), E is not identifiable, every other lab is.
        await conn.execute(
            """UPDATE lab_grades SET evidence = evidence || jsonb_build_object('identifiable', lab_code <> 'E')
               WHERE run_id = $1""",
            run.run_id,
        )
        await conn.execute(
            """UPDATE lab_grades SET reasons = reasons || '[{"rule": "data_shading", "metric": "shading_q",
                   "value": 0.001, "threshold": 0.05, "effect": "cap III"}]'::jsonb
               WHERE run_id = $1 AND lab_code = 'B'""",
            run.run_id,
        )
        return run.run_id
    finally:
        await conn.close()


async def _walk(client: AsyncTestClient, url: str, key: str, limit: int, **params: object) -> list[list]:
    """Every page of a cursor list: the keys of each page's items."""
    pages, after = [], None
    while True:
        query = {**params, "limit": limit, **({"after": after} if after is not None else {})}
        r = await client.get(url, params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append([item[key] for item in body["items"]])
        after = body["next"]
        if after is None:
            return pages
        assert after == pages[-1][-1]


def _flat(pages: list[list]) -> list:
    return [k for page in pages for k in page]


async def test_lab_list_filters_and_cursor(graded: int, app_settings: Settings, role_headers: dict) -> None:
    async with AsyncTestClient(create_app(app_settings)) as client:
        client.headers.update(role_headers["viewer"])
        pages = await _walk(client, "/api/v1/labs", "code", 2)
        assert pages == [["A", "B"], ["C", "D"], ["E", "R"]]
        odd = await _walk(client, "/api/v1/labs", "code", 4)
        assert odd == [["A", "B", "C", "D"], ["E", "R"]]

        async def codes(**params: object) -> list[str]:
            return _flat(await _walk(client, "/api/v1/labs", "code", 100, **params))

        assert await codes(province="浙江") == ["A", "B"]
        assert await codes(product_category="FOOD") == ["B"]
        assert await codes(product_category="TEX") == ["A", "C"]
        assert await codes(flagged="true") == ["B"]
        assert await codes(flagged="false") == ["A", "C", "D", "E", "R"]
        assert await codes(not_identifiable="true") == ["E"]
        # R was never graded: no evidence, so not "not identifiable".
        assert await codes(not_identifiable="false") == ["A", "B", "C", "D", "R"]
        # Computed classes (test_grading_run.EXPECTED): A I, B II, C IV, D III, E II.
        assert await codes(**{"class": "II"}) == ["B", "E"]
        assert await codes(**{"class": "II"}, province="浙江") == ["B"]

        # The class filter is the effective class: an override moves D from III to I.
        client.headers.update(role_headers["officer"])
        made = await client.post("/api/v1/overrides", json={
            "lab_code": "D", "class": "I", "reason": "on-site audit", "valid_until": "2099-01-01", "set_by": "o"})
        assert made.status_code == 201, made.text
        assert await codes(**{"class": "I"}) == ["A", "D"]
        assert await codes(**{"class": "III"}) == []
        d = (await client.get("/api/v1/labs", params={"class": "I", "after": "A"})).json()["items"]
        assert [(x["code"], x["current_class"], x["effective_class"], x["override"]["class"]) for x in d] == [
            ("D", "III", "I", "I")]

        bad = await client.get("/api/v1/labs", params={"class": "V"})
        assert (bad.status_code, bad.headers["content-type"]) == (400, PROBLEM)
        assert bad.json()["status"] == 400 and bad.json()["errors"]


async def test_lab_detail_pairs_and_results(graded: int, app_settings: Settings, role_headers: dict, db_url: str) -> None:
    async with AsyncTestClient(create_app(app_settings)) as client:
        client.headers.update(role_headers["officer"])
        a = (await client.get("/api/v1/labs/A")).json()
        assert (a["pairs"], a["pairs_href"], a["results_href"]) == (
            EXPECTED["A"][2], "/api/v1/labs/A/pairs", "/api/v1/labs/A/results")
        # The evidence as typed by scoring's EVIDENCE_SCHEMA (the run's window, A's pair counts).
        assert (a["evidence"]["window_start"], a["evidence"]["pairs"], a["evidence"]["identifiable"]) == (
            "2023-07-02", 14, True)

        page = (await client.get("/api/v1/labs/A/pairs", params={"limit": 5})).json()
        # The window of the run: 1095 days up to as_of (scoring's: as_of − 1095 + 1).
        assert (page["run_id"], page["as_of"], page["window_start"]) == (graded, "2026-06-30", "2023-07-02")
        pages = await _walk(client, "/api/v1/labs/A/pairs", "pair_id", 5)
        ids = _flat(pages)
        assert [len(p) for p in pages] == [5, 5, 4] and len(set(ids)) == 14 and ids == sorted(ids)
        conn = await connect(db_url)
        try:
            # A's pairs as retest lab: every retest result of A within the window (not OLD, not LATE).
            expected = await conn.fetch(
                """SELECT t.result_id FROM results t JOIN results o ON o.sample_code = t.sample_code
                       AND o.item_code = t.item_code AND o.role = 'original'
                   WHERE t.role = 'retest' AND 'A' IN (t.lab_code, o.lab_code)
                     AND t.sample_code NOT IN ('OLD', 'LATE') ORDER BY 1""")
            a_results = [r["result_id"] for r in await conn.fetch(
                "SELECT result_id FROM results WHERE lab_code = 'A' ORDER BY 1")]
        finally:
            await conn.close()
        assert ids == [r["result_id"] for r in expected]

        e = (await client.get("/api/v1/labs/E/pairs")).json()["items"]
        assert [(p["sample_code"], p["role"], p["partner"], p["outcome"]) for p in e] == [
            ("S025", "original", "A", "consistent"), ("S026", "original", "A", "consistent")]
        assert e[0]["original"]["lab_code"] == "E" and e[0]["retest"]["value"] == 50.0
        assert e[0]["arbitration"]["lab_code"] == "C" and e[1]["arbitration"] is None
        c = (await client.get("/api/v1/labs/C/pairs", params={"limit": 1000})).json()["items"]
        arb = [p for p in c if p["role"] == "arbitration"]
        assert [(p["sample_code"], p["partner"]) for p in arb] == [("S025", "E")]

        results = await _walk(client, "/api/v1/labs/A/results", "result_id", 4)
        assert _flat(results) == a_results and len(a_results) == 16
        assert (await client.get("/api/v1/labs/R/pairs")).json() == {
            "run_id": None, "as_of": None, "window_start": None, "items": [], "next": None}

        for url in ("/api/v1/labs/NOPE", "/api/v1/labs/NOPE/pairs", "/api/v1/labs/NOPE/results",
                    "/api/v1/samples/NOPE"):
            r = await client.get(url)
            assert (r.status_code, r.headers["content-type"]) == (404, PROBLEM), url
            # "type" is left out when it is about:blank (RFC 9457 section 4.2.1).
            assert r.json() == {"title": "Not Found", "status": 404,
                                "detail": f"no {'sample' if 'samples' in url else 'lab'} 'NOPE'"}


async def test_sample_side_by_side(graded: int, app_settings: Settings, role_headers: dict) -> None:
    async with AsyncTestClient(create_app(app_settings)) as client:
        client.headers.update(role_headers["viewer"])
        s = (await client.get("/api/v1/samples/S025")).json()
        assert (s["code"], s["category_code"], s["original_lab_code"]) == ("S025", "TEX", "E")
        [item] = s["items"]
        assert item["item"] == {"item_code": "Q", "name": "甲醛含量", "unit": "mg/kg", "kind": "quantitative",
                                "lower_limit": None, "upper_limit": 100.0, "lod": None}
        assert [(r["lab_code"], r["value"]) for r in item["original"]] == [("E", 50.0)]
        assert [(r["lab_code"], r["reported_on"]) for r in item["retest"]] == [("A", "2026-04-01")]
        assert [r["lab_code"] for r in item["arbitration"]] == ["C"]
        [pair] = item["pairs"]
        assert (pair["outcome"], pair["role"], pair["partner"]) == ("consistent", "original", "A")
        assert pair["arbitration"]["lab_code"] == "C" and pair["arbiter_sides_with"] == "both"


async def test_runs_imports_overrides_pages(graded: int, app_settings: Settings, role_headers: dict) -> None:
    async with AsyncTestClient(create_app(app_settings)) as client:
        client.headers.update(role_headers["officer"])
        second = (await client.post("/api/v1/runs", json={"as_of": str(date(2026, 6, 30))})).json()["run_id"]
        assert await _walk(client, "/api/v1/runs", "run_id", 1) == [[second], [graded]]
        for _ in range(3):  # failed imports stay in the log
            assert (await client.post("/api/v1/imports/labs", json=[{"name": "no code"}])).status_code == 400
        imports = await _walk(client, "/api/v1/imports", "import_id", 2)
        assert [len(p) for p in imports] == [2, 1] and _flat(imports) == sorted(_flat(imports), reverse=True)
        for lab in ("A", "B", "C"):
            made = await client.post("/api/v1/overrides", json={
                "lab_code": lab, "class": "II", "reason": "r", "valid_until": "2099-01-01", "set_by": "o"})
            assert made.status_code == 201
        overrides = await _walk(client, "/api/v1/overrides", "override_id", 2)
        assert [len(p) for p in overrides] == [2, 1] and len(set(_flat(overrides))) == 3


async def test_every_error_is_problem_details(app_settings: Settings, role_headers: dict) -> None:
    async with AsyncTestClient(create_app(app_settings)) as client:
        unknown = await client.get("/api/v1/nothing-here")
        assert (unknown.status_code, unknown.headers["content-type"]) == (404, PROBLEM)
        assert unknown.json()["title"] == "Not Found"
        wrong = await client.delete("/api/v1/labs", headers=role_headers["admin"])
        assert (wrong.status_code, wrong.headers["content-type"]) == (405, PROBLEM)
        assert wrong.json()["title"] == "Method Not Allowed" and "GET" in wrong.headers["allow"]
        invalid = await client.get("/api/v1/runs", params={"limit": "0"}, headers=role_headers["admin"])
        assert (invalid.status_code, invalid.headers["content-type"]) == (400, PROBLEM)
        assert invalid.json()["errors"][0]["key"] == "limit"
