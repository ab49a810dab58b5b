"""The draws and retest-plan pages against real PostgreSQL: an officer draws and plans through the
forms, the same seed gives what the API and the CLI give, verify, the CSV downloads, refusals
shown in the form with what was entered, roles, and Chinese."""

from __future__ import annotations

import asyncio
import html
import io
import json
import re
from datetime import UTC, datetime

import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from test_feed import _seed
from test_plans import PERIOD, _world
from test_web_a11y import problems

from labeval.app import create_app
from labeval.cli import main
from labeval.config import Settings
from labeval.db.pool import connect
from labeval.grading.draws import ALGORITHM, Candidate, NotEnoughLabs, draw_labs
from labeval.grading.selection import Draw, draw_frame, excluded_candidates

from web_client import csrf_token, make_user, sign_in, submit

HTML = {"Accept": "text/html"}
BOM = b"\xef\xbb\xbf"


async def _users(db_url: str) -> None:
    conn = await connect(db_url)
    try:
        for role in ("officer", "viewer", "admin"):
            await make_user(conn, f"{role}.one", role)
    finally:
        await conn.close()


@pytest.fixture
async def draw_site(db_url: str, app_settings: Settings):
    """test_feed's labs: for category C1, A (Ⅰ, weight 1), B (Ⅱ, 0.7), C (Ⅲ, 0.3) and H (Ⅱ, 0.7)
    are eligible; D (Ⅳ, weight 0), E (suspended), F (not accredited) and G (never graded) are not."""
    conn = await connect(db_url)
    try:
        await _seed(conn)
    finally:
        await conn.close()
    await _users(db_url)
    async with AsyncTestClient(create_app(app_settings)) as client:
        client.follow_redirects = False
        yield client


@pytest.fixture
async def plan_site(db_url: str, app_settings: Settings, role_headers: dict):
    """test_plans' world (L00–L03 well evidenced, L04 without pairs, 100 candidate samples),
    graded as of 2024-06-30 through the API as test_plans grades it."""
    await _world(db_url)
    await _users(db_url)
    async with AsyncTestClient(create_app(app_settings)) as client:
        client.follow_redirects = False
        r = await client.post("/api/v1/runs", json={"as_of": "2024-06-30"}, headers=role_headers["officer"])
        assert r.status_code == 201, r.text
        yield client


def _drawn(page: str) -> list[str]:
    ol = page.split('<ol id="drawn">')[1].split("</ol>")[0]
    return re.findall(r'<a href="/labs/([^"]+)">', ol)


def _error(page: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}">([^<]*)<', page)
    assert m, f"no #{element_id} on the page"
    return html.unescape(m.group(1))


async def test_an_officer_draws_through_the_form_and_gets_what_the_api_and_cli_give(
    draw_site: AsyncTestClient, db_url: str, role_headers: dict
) -> None:
    await sign_in(draw_site, "officer.one")
    r = await submit(draw_site, "/draws", "/draws", {"product_category": "C1", "count": "2",
                                                     "exclude_labs": "A, H", "seed": "42"})
    assert r.status_code == 303, r.text
    draw_id = int(r.headers["location"].rsplit("/", 1)[1])
    assert r.headers["location"] == f"/draws/{draw_id}"

    page = (await draw_site.get(f"/draws/{draw_id}", headers=HTML)).text
    api = (await draw_site.get(f"/api/v1/draws/{draw_id}", headers=role_headers["viewer"])).json()
    # Stored as the API stores it: the request, seed 42, the signed-in officer as the actor.
    assert (api["product_category"], api["count"], api["exclude_labs"], api["seed"]) == ("C1", 2, ["A", "H"], 42)
    assert api["actor"].endswith(":officer.one")
    # A and H are left out: both of B and C are drawn (test_feed draws the same request).
    assert sorted(api["chosen"]) == ["B", "C"]
    assert _drawn(page) == api["chosen"]
    assert '<code id="seed">42</code>' in page
    # The pool with weights and classes, as drawn: A and H marked left out.
    pool = page.split('<table id="candidates">')[1].split("</table>")[0]
    assert [c for c in "ABCH" if f'<a href="/labs/{c}">' in pool] == ["A", "B", "C", "H"]
    assert pool.count("left out") == 2
    # B's chance of being drawn first among B (0.7) and C (0.3): 70.0 %.
    assert "70.0%" in pool and "30.0%" in pool

    # The same request through the API and the CLI: the same labs in the same order.
    again = await draw_site.post("/api/v1/draws", json={"product_category": "C1", "count": 2,
                                                         "exclude_labs": ["A", "H"], "seed": 42},
                                 headers=role_headers["officer"])
    assert again.status_code == 201 and again.json()["chosen"] == api["chosen"]
    cli = await asyncio.to_thread(CliRunner().invoke, main, [
        "--database-url", db_url, "draw", "--category", "C1", "--count", "2", "--exclude", "A", "--exclude", "H",
        "--seed", "42", "--json"], catch_exceptions=False)
    assert cli.exit_code == 0 and json.loads(cli.output)["chosen"] == api["chosen"]

    # The list shows it, newest first (the CLI's draw, then the API's, then the form's).
    listed = (await draw_site.get("/draws", headers=HTML)).text
    ids = [int(i) for i in re.findall(r'<a href="/draws/(\d+)">', listed)]
    assert ids == sorted(ids, reverse=True) and len(ids) == 3 and ids[-1] == draw_id
    assert '<form id="draw"' in listed
    # The form is audited as the API's requests are, under the officer's name.
    conn = await connect(db_url)
    try:
        actors = await conn.fetch("SELECT actor, status FROM audit_log WHERE action = 'POST /draws'")
    finally:
        await conn.close()
    assert [(a["actor"].split(":")[-1], a["status"]) for a in actors] == [("officer.one", 303)]


async def test_verify_says_verified_and_shows_the_differences_of_a_tampered_draw(
    draw_site: AsyncTestClient, db_url: str
) -> None:
    await sign_in(draw_site, "officer.one")
    r = await submit(draw_site, "/draws", "/draws", {"product_category": "C1", "count": "3", "seed": "7"})
    draw_id = int(r.headers["location"].rsplit("/", 1)[1])
    ok = await submit(draw_site, f"/draws/{draw_id}", f"/draws/{draw_id}/verify", {})
    assert ok.status_code == 200
    assert 'id="verification" class="ok-msg"' in ok.text and "<strong>Verified</strong>" in ok.text

    conn = await connect(db_url)
    try:
        chosen = json.loads(await conn.fetchval("SELECT result::text FROM draws WHERE draw_id = $1", draw_id))
        await conn.execute("UPDATE draws SET result = $2 WHERE draw_id = $1", draw_id, chosen[::-1])
    finally:
        await conn.close()
    bad = await submit(draw_site, f"/draws/{draw_id}", f"/draws/{draw_id}/verify", {})
    assert "<strong>Not verified</strong>" in bad.text
    rows = re.findall(r'<tr class="differs"><td class="num">(\d)</td>\s*<td>(\w)</td>\s*<td>(\w)</td>',
                      bad.text.split('<table id="differences"')[1])
    # Reversed three labs: the first and the last places differ, the middle one does not.
    assert rows == [("1", chosen[2], chosen[0]), ("3", chosen[0], chosen[2])]


async def test_the_csv_download_parses_back_to_the_stored_draw(draw_site: AsyncTestClient, role_headers: dict) -> None:
    await sign_in(draw_site, "officer.one")
    r = await submit(draw_site, "/draws", "/draws", {"product_category": "C1", "count": "2",
                                                     "exclude_provinces": "GD", "seed": "2026"})
    draw_id = int(r.headers["location"].rsplit("/", 1)[1])
    stored = (await draw_site.get(f"/api/v1/draws/{draw_id}", headers=role_headers["viewer"])).json()
    csv = await draw_site.get(f"/draws/{draw_id}.csv", headers=HTML)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.headers["content-disposition"] == f'attachment; filename="draw-{draw_id}.csv"'
    assert csv.content.startswith(BOM)
    frame = pl.read_csv(io.BytesIO(csv.content))
    assert frame["draw_id"].unique().to_list() == [draw_id] and frame["seed"].unique().to_list() == [2026]
    assert frame.select("lab_code", "class", "weight", "province").rows() == [
        (c["lab_code"], c["class"], c["weight"], c["province"]) for c in stored["candidates"]]
    drawn = frame.filter(pl.col("drawn_order").is_not_null()).sort("drawn_order")["lab_code"].to_list()
    assert drawn == stored["chosen"]
    # C and H are in GD: left out, never drawn.
    assert frame.filter(pl.col("excluded"))["lab_code"].to_list() == ["C", "H"]
    assert (await draw_site.get("/draws/999999.csv", headers=HTML)).status_code == 404
    assert (await draw_site.get("/draws/12.xlsx", headers=HTML)).status_code == 404


async def test_a_viewer_reads_draws_but_may_not_draw_nor_see_plans(draw_site: AsyncTestClient, db_url: str) -> None:
    await sign_in(draw_site, "viewer.one")
    listed = await draw_site.get("/draws", headers=HTML)
    assert listed.status_code == 200 and 'id="draws"' in listed.text and '<form id="draw"' not in listed.text
    r = await submit(draw_site, "/draws", "/draws", {"product_category": "C1", "count": "1"})
    assert r.status_code == 403
    conn = await connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM draws") == 0
    finally:
        await conn.close()
    # Plans name the samples to be retested next: a viewer neither reads nor makes them (as in the
    # API), and the navigation does not offer them.
    plans = await draw_site.get("/plans", headers=HTML)
    assert plans.status_code == 403 and 'id="plans"' not in plans.text
    assert 'href="/plans"' not in listed.text
    refused = await draw_site.post("/plans", data={"budget": "5", "from": "2026-01-01", "to": "2026-02-01",
                                                   "_csrf_token": csrf_token(listed.text)}, headers=HTML)
    assert refused.status_code == 403


async def test_an_impossible_draw_is_refused_in_the_form_with_the_values_kept(draw_site: AsyncTestClient) -> None:
    await sign_in(draw_site, "officer.one")
    r = await submit(draw_site, "/draws", "/draws", {"product_category": "C1", "count": "4",
                                                     "exclude_labs": "H", "seed": "99"})
    assert r.status_code == 422
    assert _error(r.text, "draw-error") == "Not enough eligible labs: 4 asked for, 3 eligible after the exclusions."
    assert '<option value="C1" selected>' in r.text
    for name, value in (("count", "4"), ("exclude_labs", "H"), ("seed", "99")):
        assert re.search(rf'name="{name}"[^>]*value="{value}"', r.text), name
    unknown = await submit(draw_site, "/draws", "/draws", {"product_category": "NOPE", "count": "1"})
    assert unknown.status_code == 400 and _error(unknown.text, "draw-error") == "There is no product category NOPE."
    bad_seed = await submit(draw_site, "/draws", "/draws", {"product_category": "C1", "count": "1", "seed": "-3"})
    assert bad_seed.status_code == 400 and "The seed is a whole number" in _error(bad_seed.text, "draw-error")
    zero = await submit(draw_site, "/draws", "/draws", {"product_category": "C1", "count": "0"})
    assert zero.status_code == 400 and "from 1 to 1000" in _error(zero.text, "draw-error")


async def test_draw_pages_in_chinese(draw_site: AsyncTestClient) -> None:
    await sign_in(draw_site, "officer.one")
    r = await submit(draw_site, "/draws", "/draws", {"product_category": "C1", "count": "2", "seed": "5"})
    zh = {**HTML, "Accept-Language": "zh-CN"}
    page = await draw_site.get(r.headers["location"], headers=zh)
    assert '<html lang="zh-CN">' in page.text and "抽中机构（按抽取顺序）" in page.text and "候选机构" in page.text
    for path in ("/draws", r.headers["location"]):
        for lang in ("en", "zh-CN"):
            assert problems((await draw_site.get(path, headers={**HTML, "Accept-Language": lang})).text) == [], path
    refused = await draw_site.post("/draws", data={"product_category": "C1", "count": "9",
                                                   "_csrf_token": re.search(r'name="_csrf_token" value="([^"]+)"',
                                                                            page.text).group(1)}, headers=zh)
    assert _error(refused.text, "draw-error") == "符合条件的机构不足：要求抽取 9 家，排除后符合条件的仅 4 家。"


def _sample_codes(page: str) -> list[str]:
    table = page.split('<table id="samples">')[1].split("</table>")[0]
    return re.findall(r'<a href="/samples/([^"]+)">', table)


async def test_an_officer_plans_through_the_form_as_the_api_plans(plan_site: AsyncTestClient, role_headers: dict,
                                                                  db_url: str) -> None:
    await sign_in(plan_site, "officer.one")
    r = await submit(plan_site, "/plans", "/plans", {"budget": "30", "from": PERIOD["period_start"],
                                                     "to": PERIOD["period_end"], "seed": "20240601"})
    assert r.status_code == 303, r.text
    plan_id = int(r.headers["location"].rsplit("/", 1)[1])
    page = (await plan_site.get(f"/plans/{plan_id}", headers=HTML)).text
    api = await plan_site.post("/api/v1/retest-plans", json={**PERIOD, "budget": 30, "seed": 20240601},
                               headers=role_headers["officer"])
    assert api.status_code == 201
    plan = api.json()
    # test_plans: 52 pairs needed (p0 5 %, p1 15 %, α 0.05, power 0.8); L04 (no pairs) takes its 20.
    assert "a lab needs 52 pairs" in html.unescape(page)
    assert '<dd id="retests-planned">20</dd>' in page
    assert _sample_codes(page) == [s["sample_code"] for s in plan["samples"]] and len(plan["samples"]) == 20
    alloc = page.split('<table id="allocation">')[1].split("</table>")[0]
    assert "thin evidence: 0 of 52 pairs; not identifiable" in alloc
    listed = (await plan_site.get("/plans", headers=HTML)).text
    assert f'<a href="/plans/{plan_id}">' in listed and f'<a href="/plans/{plan["plan_id"]}">' in listed

    ok = await submit(plan_site, f"/plans/{plan_id}", f"/plans/{plan_id}/verify", {})
    assert ok.status_code == 200 and "<strong>Verified</strong>" in ok.text

    csv = await plan_site.get(f"/plans/{plan_id}.csv", headers=HTML)
    assert csv.headers["content-disposition"] == f'attachment; filename="retest-plan-{plan_id}.csv"'
    assert csv.content.startswith(BOM)
    exported = await plan_site.get(f"/api/v1/retest-plans/{plan_id}/export?format=csv", headers=role_headers["officer"])
    # The API's export, only with the byte-order mark in front.
    assert csv.content == BOM + exported.content
    frame = pl.read_csv(io.BytesIO(csv.content), infer_schema=False)
    assert frame["sample_code"].to_list() == [s["sample_code"] for s in plan["samples"]]

    # L04 chose all 20 of its candidates: one is swapped for a candidate of L00 (chosen by nobody).
    conn = await connect(db_url)
    try:
        unchosen = await conn.fetchval(
            """SELECT min(s) FROM retest_plans p, jsonb_array_elements_text(p.candidates->'L00') s
               WHERE p.plan_id = $1 AND s NOT IN (SELECT sample_code FROM retest_plan_samples WHERE plan_id = $1)""",
            plan_id)
        await conn.execute("UPDATE retest_plan_samples SET sample_code = $2 WHERE plan_id = $1 AND sample_code = $3",
                           plan_id, unchosen, plan["samples"][0]["sample_code"])
    finally:
        await conn.close()
    bad = await submit(plan_site, f"/plans/{plan_id}", f"/plans/{plan_id}/verify", {})
    assert "<strong>Not verified</strong>" in bad.text and '<span id="differing-labs">L04</span>' in bad.text

    zh = await plan_site.get(f"/plans/{plan_id}", headers={**HTML, "Accept-Language": "zh-CN"})
    assert '<html lang="zh-CN">' in zh.text and "复验计划" in zh.text and "证据不足：0/52 对比对" in zh.text
    assert problems(zh.text) == [] and problems(listed) == []


async def test_an_impossible_plan_is_refused_in_the_form_with_the_values_kept(plan_site: AsyncTestClient) -> None:
    await sign_in(plan_site, "officer.one")
    r = await submit(plan_site, "/plans", "/plans", {"budget": "10", "from": "2024-12-31", "to": "2024-01-01",
                                                     "categories": "TEX", "seed": "3"})
    assert r.status_code == 422
    assert _error(r.text, "plan-error") == "The period starts (Dec 31, 2024) after it ends (Jan 1, 2024)."
    for name, value in (("budget", "10"), ("from", "2024-12-31"), ("to", "2024-01-01"), ("seed", "3")):
        assert re.search(rf'name="{name}"[^>]*value="{value}"', r.text), name
    assert re.search(r'name="categories" value="TEX" checked', r.text)
    unknown = await submit(plan_site, "/plans", "/plans", {"budget": "10", **{"from": "2024-01-01", "to": "2024-12-31"},
                                                           "categories": "NOPE"})
    assert unknown.status_code == 422 and _error(unknown.text, "plan-error") == "There is no product category NOPE."
    no_budget = await submit(plan_site, "/plans", "/plans", {"budget": "", "from": "2024-01-01", "to": "2024-12-31"})
    assert no_budget.status_code == 400 and "The budget is a whole number" in _error(no_budget.text, "plan-error")
    bad_rate = await submit(plan_site, "/plans", "/plans", {"budget": "5", "from": "2024-01-01", "to": "2024-12-31",
                                                            "bad_rate_ratio": "30"})
    assert bad_rate.status_code == 422 and "150.0%" in _error(bad_rate.text, "plan-error")
    listed = (await plan_site.get("/plans", headers=HTML)).text
    assert "No plan yet." in listed


_WEIGHT = {"I": 1.0, "II": 0.7, "III": 0.3, "IV": 0.0}  # the shipped policy's selection weights


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(_WEIGHT)), st.sampled_from(["浙江", "BJ", "新疆", None])),
                min_size=1, max_size=20),
       st.integers(min_value=0, max_value=2**63 - 1), st.data())
def test_the_draw_table_written_with_a_bom_reads_back_to_the_draw(labs, seed, data) -> None:
    candidates = [Candidate(lab_code=f"实验室{i:02d}", class_=c, weight=_WEIGHT[c], province=p)
                  for i, (c, p) in enumerate(labs)]
    provinces = data.draw(st.lists(st.sampled_from(["浙江", "BJ"]), max_size=1))
    count = data.draw(st.integers(min_value=1, max_value=len(candidates)))
    try:
        chosen = draw_labs(candidates, count, seed, exclude_provinces=provinces)
    except NotEnoughLabs:
        return
    draw = Draw(id=1, product_category="C1", count=count, exclude_labs=[], exclude_provinces=provinces,
                chosen=chosen, candidates=candidates, seed=seed, algorithm=ALGORITHM, policy_hash="0" * 64,
                actor=None, created_at=datetime(2026, 12, 6, tzinfo=UTC))
    buf = io.BytesIO()
    draw_frame(draw).write_csv(buf, include_bom=True)
    back = pl.read_csv(io.BytesIO(buf.getvalue()), schema_overrides={"province": pl.String, "class": pl.String})
    # Every candidate with its class, weight and province; the labs drawn in order; the seed.
    assert back.select("lab_code", "class", "weight", "province").rows() == [
        (c.lab_code, c.class_, c.weight, c.province) for c in candidates]
    assert back.filter(pl.col("drawn_order").is_not_null()).sort("drawn_order")["lab_code"].to_list() == chosen
    assert set(back.filter(pl.col("excluded"))["lab_code"]) == excluded_candidates(draw)
    assert back["seed"].unique().to_list() == [seed]
    # The table re-derives the draw: its rows are all the algorithm needs besides the request.
    again = [Candidate(lab_code=r["lab_code"], class_=r["class"], weight=r["weight"], province=r["province"])
             for r in back.iter_rows(named=True)]
    assert draw_labs(again, count, int(back["seed"][0]), exclude_provinces=provinces) == chosen
