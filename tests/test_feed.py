"""The tender feed and 双随机 draws over HTTP and the CLI, against real PostgreSQL: eligibility
with ETag, the event feed paged while events are appended, draws and assignments stored and
verified (and a tampered record that no longer verifies)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, date, datetime, timedelta

import asyncpg
import msgspec
import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient

from labeval.app import create_app
from labeval.cli import main
from labeval.config import Settings
from labeval.db import events
from labeval.db.pool import connect
from labeval.grading.draws import Candidate, draw_labs
from labeval.grading.overrides import set_override, today_utc
from scoring.policy import Policy, policy_hash

# lab: (province, status, computed class or None, scopes)
LABS = {
    "A": ("BJ", "active", "I", ["C1", "C2"]),
    "B": ("SH", "active", "II", ["C1"]),
    "C": ("GD", "active", "III", ["C1"]),
    "D": ("BJ", "active", "IV", ["C1"]),     # weight 0 unless overridden
    "E": ("SH", "suspended", "I", ["C1"]),   # not active
    "F": ("GD", "active", "I", ["C2"]),      # not accredited for C1
    "G": ("SH", "active", None, ["C1"]),     # never graded
    "H": ("GD", "active", "II", ["C1"]),     # overridden to IV below
}
MONTHLY = "0 2 1 * *"  # 02:00 UTC on the 1st


def _next_first_of_month(now: datetime) -> date:
    if now.day == 1 and now.hour < 2:
        return now.date()
    return (now.replace(day=1) + timedelta(days=32)).replace(day=1).date()


async def _seed(conn: asyncpg.Connection) -> int:
    await conn.executemany("INSERT INTO product_categories (category_code, name) VALUES ($1, $1)",
                           [("C1",), ("C2",), ("C3",)])
    for code, (province, status, _, scopes) in LABS.items():
        await conn.execute("INSERT INTO labs (lab_code, name, province, status) VALUES ($1, $1, $2, $3)",
                           code, province, status)
        await conn.executemany("INSERT INTO lab_scopes VALUES ($1, $2)", [(code, s) for s in scopes])
    p = Policy()
    # An older run in which A was IV: the newest run's class is the one that counts.
    old = await conn.fetchval(
        """INSERT INTO grading_runs (as_of, trigger, policy_name, policy_version, policy_hash, policy,
                                     status, finished_at)
           VALUES ('2026-01-31', 'test', $1, $2, $3, '{}', 'succeeded', now()) RETURNING run_id""",
        p.name, p.version, policy_hash(p))
    await conn.execute("INSERT INTO lab_grades (run_id, lab_code, class, change) VALUES ($1, 'A', 'IV', 'new')", old)
    run_id = await conn.fetchval(
        """INSERT INTO grading_runs (as_of, trigger, policy_name, policy_version, policy_hash, policy,
                                     status, finished_at)
           VALUES ('2026-02-28', 'test', $1, $2, $3, '{}', 'succeeded', now()) RETURNING run_id""",
        p.name, p.version, policy_hash(p))
    await conn.executemany(
        "INSERT INTO lab_grades (run_id, lab_code, class, change) VALUES ($1, $2, $3, 'new')",
        [(run_id, code, cls) for code, (_, _, cls, _) in LABS.items() if cls is not None])
    return run_id


@pytest.fixture
async def seeded(db_url: str):
    c = await connect(db_url)
    run_id = await _seed(c)
    try:
        yield c, run_id
    finally:
        await c.close()


async def test_eligibility_lists_active_accredited_labs_with_a_positive_weight(
    seeded, db_url: str, app_settings: Settings, role_headers: dict
) -> None:
    conn, run_id = seeded
    today = today_utc()
    until = today + timedelta(days=3)
    await set_override(conn, lab_code="D", class_="II", reason="audit passed", valid_until=until, set_by="o")
    await set_override(conn, lab_code="H", class_="IV", reason="falsified report", valid_until=until, set_by="o")
    app = create_app(msgspec.structs.replace(app_settings, grading_cron=MONTHLY))
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["officer"])
        r = await client.get("/api/v1/feed/eligibility", params={"product_category": "C1"})
        assert r.status_code == 200, r.text
        body = r.json()
        next_run = _next_first_of_month(datetime.now(UTC))
        assert body["product_category"] == "C1" and body["policy_hash"] == policy_hash(Policy())
        # Shipped weights I 1.0, II 0.7, III 0.3, IV 0. E suspended, F out of scope, G never
        # graded, H overridden to IV: none of them. D is IV computed but II by override.
        assert [(x["lab_code"], x["effective_class"], x["computed_class"], x["overridden"], x["selection_weight"],
                 x["run_id"], x["valid_until"]) for x in body["labs"]] == [
            ("A", "I", "I", False, 1.0, run_id, next_run.isoformat()),
            ("B", "II", "II", False, 0.7, run_id, next_run.isoformat()),
            ("C", "III", "III", False, 0.3, run_id, next_run.isoformat()),
            ("D", "II", "IV", True, 0.7, run_id, min(until, next_run).isoformat()),
        ]
        etag = r.headers["etag"]
        assert etag.startswith('"') and len(etag) == 66
        again = await client.get("/api/v1/feed/eligibility", params={"product_category": "C1"},
                                 headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        # Another tag, or a list containing it (weak form too), as RFC 9110 says.
        assert (await client.get("/api/v1/feed/eligibility", params={"product_category": "C1"},
                                 headers={"If-None-Match": '"x"'})).status_code == 200
        assert (await client.get("/api/v1/feed/eligibility", params={"product_category": "C1"},
                                 headers={"If-None-Match": f'"x", W/{etag}'})).status_code == 304
        # A change of eligibility changes the tag.
        await conn.execute("UPDATE labs SET status = 'suspended' WHERE lab_code = 'C'")
        changed = await client.get("/api/v1/feed/eligibility", params={"product_category": "C1"},
                                   headers={"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag
        assert [x["lab_code"] for x in changed.json()["labs"]] == ["A", "B", "D"]

        c3 = await client.get("/api/v1/feed/eligibility", params={"product_category": "C3"})
        assert c3.status_code == 200 and c3.json()["labs"] == []
        missing = await client.get("/api/v1/feed/eligibility", params={"product_category": "NOPE"})
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["detail"] == "no product category 'NOPE'"
        assert (await client.get("/api/v1/feed/eligibility")).status_code == 400


async def test_a_consumer_paging_while_events_are_appended_sees_every_seq_once(
    seeded, db_url: str, app_settings: Settings, role_headers: dict
) -> None:
    conn, run_id = seeded
    total = 60
    # the consumer polls in a tight loop: far beyond the default per-key budget
    app = create_app(msgspec.structs.replace(app_settings, rate_limit_per_minute=1_000_000))

    async def appender() -> None:
        writer = await connect(db_url)
        try:
            for _ in range(total):
                async with writer.transaction():
                    await events.lock_outbox(writer)
                    await events.append(writer, lab_code="A", old_class="I", new_class="II",
                                        effective_class="II", cause="run", run_id=run_id)
                await asyncio.sleep(0)
        finally:
            await writer.close()

    seen: list[int] = []
    pages = 0
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["officer"])
        task = asyncio.create_task(appender())
        after = 0
        while True:
            r = await client.get("/api/v1/feed/events", params={"after": after, "limit": 7})
            assert r.status_code == 200
            page = r.json()
            pages += 1
            seen.extend(e["seq"] for e in page["events"])
            assert page["next_after"] == (page["events"][-1]["seq"] if page["events"] else after)
            after = page["next_after"]
            if task.done() and not page["events"]:
                break
            await asyncio.sleep(0)
        await task
    # set_override was not called here: the events are exactly the appended ones, 1..total.
    assert seen == list(range(1, total + 1))
    assert pages >= total // 7 + 1


async def test_a_draw_is_stored_verifiable_and_a_tampered_one_is_not(
    seeded, db_url: str, app_settings: Settings, role_headers: dict
) -> None:
    conn, _ = seeded
    app = create_app(app_settings)
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["officer"])
        r = await client.post("/api/v1/draws", json={"product_category": "C1", "count": 2,
                                                      "exclude_labs": ["A", "H"], "seed": 42})
        assert r.status_code == 201, r.text
        d = r.json()
        assert d["kind"] == "draw" and d["seed"] == 42 and re.fullmatch(r"key:\d+:test-officer", d["actor"])
        assert d["policy_hash"] == policy_hash(Policy()) and d["algorithm"] == "pcg64-sequential-v1"
        assert [(c["lab_code"], c["class"], c["weight"]) for c in d["candidates"]] == [
            ("A", "I", 1.0), ("B", "II", 0.7), ("C", "III", 0.3), ("H", "II", 0.7)]
        # A and H are excluded: two of B and C, and re-derivable by anyone from the record.
        assert sorted(d["chosen"]) == ["B", "C"]
        cands = [Candidate(lab_code=c["lab_code"], class_=c["class"], weight=c["weight"], province=c["province"])
                 for c in d["candidates"]]
        assert draw_labs(cands, 2, 42, exclude_labs=["A", "H"]) == d["chosen"]
        assert (await client.get(f"/api/v1/draws/{d['id']}")).json() == d
        v = (await client.get(f"/api/v1/draws/{d['id']}/verify")).json()
        assert (v["verified"], v["stored"], v["recomputed"]) == (True, d["chosen"], d["chosen"])

        # Province exclusion and a server-chosen seed.
        r = await client.post("/api/v1/draws", json={"product_category": "C1", "count": 1,
                                                      "exclude_labs": ["H"], "exclude_provinces": ["BJ", "SH"]})
        assert r.status_code == 201 and r.json()["chosen"] == ["C"] and 0 <= r.json()["seed"] < 2**63

        # Someone edits the stored result: verify says so.
        await conn.execute("UPDATE draws SET result = '[\"C\", \"B\"]' WHERE draw_id = $1", d["id"])
        if d["chosen"] == ["C", "B"]:
            await conn.execute("UPDATE draws SET result = '[\"B\", \"C\"]' WHERE draw_id = $1", d["id"])
        v = (await client.get(f"/api/v1/draws/{d['id']}/verify")).json()
        assert v["verified"] is False and v["recomputed"] == d["chosen"]

        # Refusals as problem details.
        too_many = await client.post("/api/v1/draws", json={"product_category": "C1", "count": 5})
        assert too_many.status_code == 422 and too_many.json()["detail"] == "5 labs asked for, 4 eligible"
        assert (await client.post("/api/v1/draws", json={"product_category": "X", "count": 1})).status_code == 404
        bad = await client.post("/api/v1/draws", json={"product_category": "C1", "count": 1, "seed": -1})
        assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
        assert (await client.post("/api/v1/draws", json={"product_category": "C1", "count": 1,
                                                         "extra": 1})).status_code == 400
        assert (await client.get("/api/v1/draws/999999")).status_code == 404
    assert await conn.fetchval("SELECT count(*) FROM draws") == 2


async def test_an_assignment_never_gives_a_sample_to_its_sampling_body(
    seeded, db_url: str, app_settings: Settings, role_headers: dict
) -> None:
    conn, _ = seeded
    app = create_app(app_settings)
    samples = [{"sample_code": f"S{i}", "product_category": "C1" if i < 5 else "C2",
                "enterprise_province": ["BJ", "SH", "GD"][i % 3], "sampling_body": "B" if i % 2 else "A"}
               for i in range(7)]
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["officer"])
        r = await client.post("/api/v1/draws/assignments", json={"samples": samples, "seed": 7})
        assert r.status_code == 201, r.text
        batch = r.json()
        assert batch["kind"] == "assignment" and sorted(batch["candidates"]) == ["C1", "C2"]
        got = {a["sample_code"]: a["lab_code"] for a in batch["assignments"]}
        for s in samples:
            assert got[s["sample_code"]] != s["sampling_body"]
        # C1 has A, B, C, H eligible; S0..S4 each exclude their sampling body, so the first three
        # C1 samples get three different labs. C2 has A and F.
        assert len({got["S0"], got["S1"], got["S2"]}) == 3
        assert got["S5"] in {"A", "F"} and got["S6"] in {"F"}  # S6's sampling body is A
        v = (await client.get(f"/api/v1/draws/{batch['id']}/verify")).json()
        assert v["verified"] is True and v["recomputed"] == batch["assignments"]

        own = await client.post("/api/v1/draws/assignments", json={
            "samples": [{"sample_code": "X", "product_category": "C1", "enterprise_province": "GD",
                         "sampling_body": "A"}, {"sample_code": "Y", "product_category": "C1",
                                                 "enterprise_province": "GD", "sampling_body": "A"}],
            "exclude_own_province": True, "seed": 1})
        # Without A (sampling body), C and H (GD), only B: used twice because nothing else may test them.
        assert own.status_code == 201 and [a["lab_code"] for a in own.json()["assignments"]] == ["B", "B"]
        none = await client.post("/api/v1/draws/assignments", json={
            "samples": [{"sample_code": "Z", "product_category": "C2", "sampling_body": "A",
                         "enterprise_province": "GD"}], "exclude_own_province": True})
        assert none.status_code == 422 and "sample Z" in none.json()["detail"]


def _cli(db_url: str, *args: str):
    return CliRunner().invoke(main, ["--database-url", db_url, *args], catch_exceptions=False)


async def test_draw_cli(seeded, db_url: str) -> None:
    r = await asyncio.to_thread(_cli, db_url, "draw", "--category", "C1", "--count", "2", "--exclude", "C", "--exclude", "H",
                                "--seed", "42", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert sorted(d["chosen"]) == ["A", "B"] and d["seed"] == 42
    v = await asyncio.to_thread(_cli, db_url, "draw", "verify", str(d["id"]), "--json")
    assert v.exit_code == 0 and json.loads(v.output)["verified"] is True
    text = await asyncio.to_thread(_cli, db_url, "draw", "verify", str(d["id"]))
    assert text.exit_code == 0 and "verified" in text.output
    assert (await asyncio.to_thread(_cli, db_url, "draw", "verify", "9999")).exit_code == 2
    bad = await asyncio.to_thread(_cli, db_url, "draw", "--category", "C1", "--count", "9")
    assert bad.exit_code == 2 and "4 eligible" in bad.output
