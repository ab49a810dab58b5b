"""Retest plans against real PostgreSQL: a graded world, the plan through the API and the CLI,
reproducible from its seed, verify (and tampering), the allocation, the export."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import date

import polars as pl
import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient

from labeval.app import create_app
from labeval.cli import main
from labeval.config import Settings
from labeval.db.pool import connect
from labeval.devtools.demo import demo_world
from labeval.grading.plans import EXPORT_COLUMNS, PlanRequest, create_plan, verify_plan
from labeval.grading.run import run_grading
from labeval.ingest import ingest_frame, ingest_path
from scoring.policy import Policy

from intake_data import load_reference, results

PAIRED, EXTRA = 400, 100
PERIOD = {"period_start": "2024-01-01", "period_end": "2024-12-31"}


async def _world(db_url: str) -> None:
    """Five labs: L00–L03 retest each other on 400 samples (100 originals and 100 retests each:
    well evidenced, identifiable); L04 has no pair at all (thin, not identifiable). Another 100
    samples have only their original result, 20 per lab: the candidates of a plan."""
    conn = await connect(db_url)
    try:
        await load_reference(conn, 5, 1, PAIRED + EXTRA)
        paired = results(4, 1, PAIRED)
        extra = pl.DataFrame({"i": range(PAIRED, PAIRED + EXTRA)}).select(
            pl.lit("original").alias("role"),
            pl.format("S{}", pl.col("i").cast(pl.String).str.zfill(8)).alias("sample_code"),
            pl.lit("I00").alias("item_code"),
            pl.format("L{}", (pl.col("i") % 5).cast(pl.String).str.zfill(2)).alias("lab_code"),
            pl.lit("2.5").alias("value"), pl.lit("mg/kg").alias("unit"), pl.lit("合格").alias("verdict"),
            pl.lit("2024-03-01").alias("reported_on"),
        )
        report = await ingest_frame(conn, "results", pl.concat([paired, extra]), file_name="results.csv", source="test")
        assert report.rejected == 0, report.rejects
    finally:
        await conn.close()


@pytest.fixture
async def client(db_url: str, app_settings: Settings, role_headers: dict):
    await _world(db_url)
    async with AsyncTestClient(app=create_app(app_settings)) as c:
        c.headers.update(role_headers["officer"])
        r = await c.post("/api/v1/runs", json={"as_of": "2024-06-30"})
        assert r.status_code == 201, r.text
        yield c


async def _plan(client, **body):
    r = await client.post("/api/v1/retest-plans", json={**PERIOD, **body})
    assert r.status_code == 201, r.text
    return r.json()


async def test_plan_favours_the_thin_lab_and_is_reproducible(client):
    plan = await _plan(client, budget=30, seed=20240601)
    assert plan["power"] == {"baseline_rate": 0.05, "baseline_source": "policy.evidence.target_rate",
                             "bad_rate": 0.15, "alpha": 0.05, "power": 0.8, "required_pairs": 52,
                             "achieved_power": pytest.approx(0.8119, abs=1e-4)}
    assert [r["category_code"] for r in plan["ranking"] if r["chosen"]] == ["TEX"]
    alloc = {a["lab_code"]: a for a in plan["allocation"]}
    assert set(alloc) == {"L00", "L01", "L02", "L03", "L04"}
    # L04: no pairs (need 52, not identifiable) takes every one of its 20 candidates; the four
    # well-evidenced identifiable labs need nothing; the rest of the budget stays unallocated.
    assert alloc["L04"]["retests"] == 20 and alloc["L04"]["not_identifiable"] and alloc["L04"]["need"] == 52
    for lab in ("L00", "L01", "L02", "L03"):
        assert alloc[lab]["pairs"] >= 52 and alloc[lab]["retests"] == 0, alloc[lab]
    assert (plan["retests_planned"], plan["unallocated"]) == (20, 10)
    codes = sorted(s["sample_code"] for s in plan["samples"])
    assert all(s["original_lab_code"] == "L04" for s in plan["samples"])
    assert all(int(c[1:]) >= PAIRED and int(c[1:]) % 5 == 4 for c in codes)

    again = await _plan(client, budget=30, seed=20240601)
    assert again["plan_id"] != plan["plan_id"]
    assert sorted(s["sample_code"] for s in again["samples"]) == codes
    assert (await client.get(f"/api/v1/retest-plans/{plan['plan_id']}")).json() == plan
    verify = (await client.get(f"/api/v1/retest-plans/{plan['plan_id']}/verify")).json()
    assert verify == {"plan_id": plan["plan_id"], "verified": True, "seed": 20240601, "differing_labs": []}


async def test_budget_smaller_than_candidates_is_a_seeded_choice(client, db_url):
    a = await _plan(client, budget=5, seed=1)
    b = await _plan(client, budget=5, seed=2)
    pick = lambda p: sorted(s["sample_code"] for s in p["samples"])  # noqa: E731
    assert len(pick(a)) == len(pick(b)) == 5 and pick(a) != pick(b)
    assert (await client.get(f"/api/v1/retest-plans/{a['plan_id']}/verify")).json()["verified"] is True

    # Tampering: one chosen sample swapped for another candidate of the same lab.
    unchosen = sorted({f"S{i:08d}" for i in range(PAIRED, PAIRED + EXTRA) if i % 5 == 4} - set(pick(a)))[0]
    conn = await connect(db_url)
    try:
        await conn.execute("UPDATE retest_plan_samples SET sample_code = $3 WHERE plan_id = $1 AND sample_code = $2",
                           a["plan_id"], pick(a)[0], unchosen)
    finally:
        await conn.close()
    verify = (await client.get(f"/api/v1/retest-plans/{a['plan_id']}/verify")).json()
    assert verify["verified"] is False and verify["differing_labs"] == ["L04"]


async def test_export_csv_and_xlsx(client):
    plan = await _plan(client, budget=3, seed=7)
    r = await client.get(f"/api/v1/retest-plans/{plan['plan_id']}/export?format=csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    csv = pl.read_csv(io.BytesIO(r.content), infer_schema=False)
    assert tuple(csv.columns) == EXPORT_COLUMNS and csv.height == 3
    assert csv["retest_lab_code"].null_count() == 3 and set(csv["original_lab_code"]) == {"L04"}
    assert sorted(csv["sample_code"]) == sorted(s["sample_code"] for s in plan["samples"])
    assert all("not identifiable" in reason for reason in csv["reason"])
    x = await client.get(f"/api/v1/retest-plans/{plan['plan_id']}/export?format=xlsx")
    assert x.status_code == 200
    sheet = pl.read_excel(io.BytesIO(x.content))
    assert tuple(sheet.columns) == EXPORT_COLUMNS and sorted(sheet["sample_code"]) == sorted(csv["sample_code"])
    assert (await client.get(f"/api/v1/retest-plans/{plan['plan_id']}/export?format=pdf")).status_code == 400


async def test_refusals_are_problem_details(client):
    r = await client.post("/api/v1/retest-plans", json={**PERIOD, "budget": 5, "product_categories": ["NOPE"]})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "NOPE" in r.json()["detail"]
    r = await client.post("/api/v1/retest-plans",
                          json={"budget": 5, "period_start": "2024-12-31", "period_end": "2024-01-01"})
    assert r.status_code == 422
    r = await client.post("/api/v1/retest-plans", json={**PERIOD, "budget": 5, "bad_rate_ratio": 40})
    assert r.status_code == 422 and "not below 1" in r.json()["detail"]
    assert (await client.post("/api/v1/retest-plans", json={**PERIOD, "budget": 0})).status_code == 400
    assert (await client.get("/api/v1/retest-plans/999")).status_code == 404


def _cli(db_url: str, *args: str):
    return CliRunner().invoke(main, ["--database-url", db_url, *args], catch_exceptions=False)


async def test_cli_plan_and_verify(client, db_url):
    r = await asyncio.to_thread(_cli, db_url, "plan", "--budget", "4", "--from", "2024-01-01", "--to", "2024-12-31",
                                "--category", "TEX", "--seed", "11", "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["seed"] == 11 and plan["request"]["product_categories"] == ["TEX"] and len(plan["samples"]) == 4
    api = await _plan(client, budget=4, seed=11, product_categories=["TEX"])
    assert sorted(s["sample_code"] for s in api["samples"]) == sorted(s["sample_code"] for s in plan["samples"])
    v = await asyncio.to_thread(_cli, db_url, "plan", "verify", str(plan["plan_id"]))
    assert v.exit_code == 0 and "verified" in v.stdout
    table = await asyncio.to_thread(_cli, db_url, "plan", "--budget", "2", "--from", "2024-01-01", "--to", "2024-12-31")
    assert table.exit_code == 0 and "L04" in table.stdout
    bad = await asyncio.to_thread(_cli, db_url, "plan", "--budget", "2", "--from", "2024-01-01", "--to", "2024-12-31",
                                  "--category", "NOPE")
    assert bad.exit_code == 2


def _dhondt_holds(allocation) -> bool:
    """Highest averages: no lab below its cap had a higher next quotient than the last quotient
    at which any lab was given a retest."""
    given = [a.priority / a.retests for a in allocation if a.retests]
    waiting = [a.priority / (a.retests + 1) for a in allocation if a.retests < a.cap and a.priority > 0]
    return not given or not waiting or min(given) >= max(waiting) - 1e-12


async def test_plan_on_the_demo_world(conn, db_url, tmp_path):
    """The demo world through intake, with the retests of the samples taken since 2025 left out
    (so those samples are candidates), graded; then plans over that period."""
    today = date(2026, 11, 28)
    world = demo_world(30, seed=11, today=today)
    tables = world.intake_tables()
    recent = set(tables["samples"].filter(pl.col("sampled_on") >= "2025-01-01")["sample_code"])
    tables["results"] = tables["results"].filter(
        (pl.col("role") == "original") | ~pl.col("sample_code").is_in(list(recent)))
    for kind, frame in tables.items():
        path = tmp_path / f"{kind}.csv"
        frame.write_csv(path)
        assert (await ingest_path(conn, kind, path, source="test")).rejected == 0
    policy = Policy()
    run = await run_grading(conn, policy, as_of=today, trigger="test")

    async def plan_(budget: int):
        async with conn.transaction():
            return await create_plan(conn, policy, PlanRequest(budget=budget, period_start=date(2025, 1, 1),
                                                               period_end=today, seed=5))

    plan = await plan_(500)
    assert plan.run_id == run.run_id and plan.seed == 5
    scores = [r.score for r in plan.ranking]
    assert scores == sorted(scores, reverse=True) and sum(r.chosen for r in plan.ranking) == 3
    chosen = {r.category_code for r in plan.ranking if r.chosen}
    assert {s.category_code for s in plan.samples} <= chosen and all(s.sample_code in recent for s in plan.samples)
    assert sum(a.retests for a in plan.allocation) == len(plan.samples) == plan.budget - plan.unallocated
    # The budget is not exhausted: every lab with a claim is at its cap; a lab with enough
    # pairs, identifiable and in control is given nothing.
    assert plan.unallocated > 0
    for a in plan.allocation:
        assert a.retests <= a.cap <= a.candidates
        assert a.retests == (a.cap if a.priority > 0 else 0), a
        if a.need == 0 and not a.not_identifiable and a.cusum_ratio < 0.5:
            assert a.cap == 0, a
    assert (await verify_plan(conn, plan.plan_id)).verified

    # The isolated pair only retest each other: not identifiable, so in their own categories
    # they get retests even with enough pairs (with new partners they can be told apart).
    pair = set(world.truth.filter(pl.col("group") == "isolated_pair")["lab_code"])
    cats = sorted(set(tables["samples"].filter(pl.col("sample_code").is_in(list(recent))
                                               & pl.col("original_lab_code").is_in(list(pair)))["category_code"]))
    async with conn.transaction():
        theirs = await create_plan(conn, policy, PlanRequest(budget=500, period_start=date(2025, 1, 1),
                                                             period_end=today, product_categories=cats, seed=5))
    by_lab = {a.lab_code: a for a in theirs.allocation}
    assert cats and pair <= set(by_lab)
    assert all(by_lab[lab].not_identifiable and by_lab[lab].retests > 0 for lab in pair), [by_lab[x] for x in pair]

    small = await plan_(6)
    assert small.unallocated == 0 and _dhondt_holds(small.allocation)
    top = max(small.allocation, key=lambda a: (a.priority, a.lab_code))
    assert top.retests > 0
    assert (await verify_plan(conn, small.plan_id)).verified


def test_every_plan_route_declares_its_roles():
    app = create_app(Settings(database_url="postgresql://unused/unused", key_pepper="x" * 32))
    # Litestar adds an OPTIONS handler per path (CORS preflight); the plan's own handlers are the rest.
    handlers = [h for r in app.routes if r.path.startswith("/api/v1/retest-plans") for h in r.route_handlers
                if "OPTIONS" not in h.http_methods]
    assert len(handlers) == 4
    assert all(h.opt.get("roles") == ("officer", "admin") for h in handlers)
    paths = app.openapi_schema.to_schema()["paths"]
    assert {"/api/v1/retest-plans", "/api/v1/retest-plans/{plan_id}", "/api/v1/retest-plans/{plan_id}/verify",
            "/api/v1/retest-plans/{plan_id}/export"} <= set(paths)


async def test_plan_before_any_grading_run(db_url, conn):
    # No succeeded run: no evidence, so every lab is thin (0 pairs) and not identifiable.
    await _world(db_url)
    async with conn.transaction():
        plan = await create_plan(conn, Policy(), PlanRequest(budget=10, period_start=date(2024, 1, 1),
                                                             period_end=date(2024, 12, 31), seed=3))
    assert plan.run_id is None and plan.retests_planned == 10
    assert all(a.pairs == 0 and a.need == 52 and a.not_identifiable and a.priority == 2.0 for a in plan.allocation)
    # Equal priorities: D'Hondt gives the five labs two retests each.
    assert [a.retests for a in plan.allocation] == [2, 2, 2, 2, 2]
