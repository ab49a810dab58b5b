"""A grading run end to end on a small hand-built data set, through PostgreSQL and the API."""

from __future__ import annotations

import tomllib
from datetime import date
from importlib import resources

import asyncpg
import msgspec
from litestar.testing import AsyncTestClient

from labeval.app import create_app
from labeval.config import Settings
from labeval.db.pool import connect
from labeval.grading.run import run_grading
from scoring.policy import Policy, policy_hash

AS_OF = date(2026, 6, 30)


def small_policy() -> Policy:
    raw = tomllib.loads(resources.files("scoring").joinpath("default_policy.toml").read_text("utf-8"))
    raw["grading"]["min_pairs"] = 4  # a hand-built set is small; the default asks for 30
    raw["version"] = "test-small"
    return msgspec.convert(raw, Policy)


async def seed(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        INSERT INTO product_categories (category_code, name) VALUES ('TEX', '纺织服装');
        INSERT INTO test_items (item_code, category_code, name, unit, kind, precision_model,
                                repeatability_sd, reproducibility_sd, upper_limit)
        VALUES ('Q', 'TEX', '甲醛含量', 'mg/kg', 'quantitative', 'absolute', 0.5, 1.0, 100);
        INSERT INTO labs (lab_code, name) VALUES
            ('A', 'Lab A'), ('B', 'Lab B'), ('C', 'Lab C'), ('D', 'Lab D'), ('E', 'Lab E'),
            ('R', 'Lab R (revoked)');
        UPDATE labs SET status = 'revoked' WHERE lab_code = 'R';
        """
    )
    # Each (original, retest) couple tests n samples; both labs report 50.0 exactly, so every
    # pair is consistent (d = 0 < CD = 2.8) and no statistical rule can deduct anything.
    couples = [("A", "B", 6), ("B", "A", 6), ("C", "D", 6), ("D", "C", 6), ("E", "A", 2)]
    n = 0
    for orig, retest, count in couples:
        for _ in range(count):
            n += 1
            code = f"S{n:03d}"
            await conn.execute(
                "INSERT INTO samples (sample_code, category_code, original_lab_code) VALUES ($1, 'TEX', $2)",
                code, orig,
            )
            await conn.executemany(
                """
                INSERT INTO results (sample_code, item_code, lab_code, role, value, verdict, reported_on)
                VALUES ($1, 'Q', $2, $3, 50.0, 'pass', $4)
                """,
                [(code, orig, "original", date(2026, 3, 1)), (code, retest, "retest", date(2026, 4, 1))],
            )
    await conn.execute(
        """
        INSERT INTO lab_complaints (lab_code, complaint_no, received_on, upheld) VALUES
            ('B', 'C1', '2026-01-10', true), ('B', 'C2', '2026-02-10', true), ('B', 'C3', '2026-03-10', true),
            ('B', 'C4', '2026-03-11', false),
            ('D', 'C5', '2026-01-10', true), ('D', 'C6', '2026-01-11', true), ('D', 'C7', '2026-01-12', true),
            ('A', 'C8', '2026-12-01', true);  -- after as_of: must not count
        INSERT INTO lab_audit_findings (lab_code, finding_no, found_on, severity) VALUES
            ('D', 'F1', '2026-02-01', 'major'), ('D', 'F2', '2026-02-02', 'major'),
            ('D', 'F3', '2026-02-03', 'critical'), ('D', 'F4', '2026-02-04', 'major'),
            ('D', 'F5', '2026-02-05', 'major');
        INSERT INTO lab_report_findings (lab_code, report_no, found_on, finding)
        VALUES ('C', 'R-2026-001', '2026-05-01', 'falsified');
        """
    )


# Hand computation under small_policy() (default deductions: complaints 5 per upheld complaint,
# cap 15; major audit findings 5 each, cap 20; cut-offs I ≥ 90, II ≥ 75, III ≥ 60):
#   A: 12 pairs (6 original, 6 retest) + 2 as retest of E = 14; nothing deducted → 100 → I (new).
#   B: 12 pairs; 3 upheld complaints (the 4th is not upheld) → 100 − 15 = 85 → II.
#   C: 12 pairs; score 100 but a falsified report caps at IV (SAMR Order 39 art. 14).
#   D: 12 pairs; 3 complaints −15, 5 major findings (critical counts as major) −min(20, 25) = −20
#      → 65 → III.
#   E: 2 pairs < 4 → too little evidence → new lab at the policy default II.
#   R: revoked → not graded.
EXPECTED = {
    "A": ("I", 100.0, 14),
    "B": ("II", 85.0, 12),
    "C": ("IV", 100.0, 12),
    "D": ("III", 65.0, 12),
    "E": ("II", 100.0, 2),
}


async def test_grading_run_hand_computed_and_served(db_url: str, app_settings: Settings, role_headers: dict) -> None:
    conn = await connect(db_url)
    policy = small_policy()
    try:
        await seed(conn)
        run = await run_grading(conn, policy, as_of=AS_OF, trigger="test")
        got = {g.lab_code: (g.class_, g.score, g.pairs) for g in run.grades}
        assert got == EXPECTED
        assert {g.lab_code: g.change for g in run.grades} == dict.fromkeys(EXPECTED, "new")
        assert run.policy_hash == policy_hash(policy)
        assert run.n_pairs == 26 and run.n_labs == 5
        c_reasons = next(g for g in run.grades if g.lab_code == "C").reasons
        assert any(r.rule == "falsified_report" and r.effect.startswith("cap IV") for r in c_reasons)

        # The same data, policy and as-of date again: the same period, so the same previous
        # grades (none) and the same inputs: identical grades and digest, still "new".
        again = await run_grading(conn, policy, as_of=AS_OF, trigger="test")
        assert [(g.lab_code, g.class_, g.score, g.change, g.reasons) for g in again.grades] == [
            (g.lab_code, g.class_, g.score, g.change, g.reasons) for g in run.grades
        ]
        assert again.input_digest == run.input_digest and again.data_hash == run.data_hash
        # The next day is the next period: the same classes, now "held" from the earlier one.
        later = await run_grading(conn, policy, as_of=date(2026, 7, 1), trigger="test")
        assert {g.lab_code: (g.class_, g.previous_class, g.change) for g in later.grades} == {
            k: (v[0], v[0], "held") for k, v in EXPECTED.items()
        }
        stored = await conn.fetchval(
            "SELECT count(*) FROM lab_grades WHERE run_id = $1 AND evidence ? 'bias'", run.run_id
        )
        assert stored == 5  # every lab with at least one pair has its evidence row stored
    finally:
        await conn.close()

    app = create_app(app_settings)
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["officer"])
        labs = {lab["code"]: lab for lab in (await client.get("/api/v1/labs")).json()["items"]}
        assert {c: (labs[c]["current_class"], labs[c]["score"]) for c in EXPECTED} == {
            c: (v[0], v[1]) for c, v in EXPECTED.items()
        }
        assert labs["R"]["current_class"] is None
        d = (await client.get("/api/v1/labs/D")).json()
        assert [h["class"] for h in d["history"]] == ["III", "III", "III"]


async def test_runs_api_starts_lists_and_reads(db_url: str, app_settings: Settings, role_headers: dict) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await seed(conn)
    finally:
        await conn.close()
    app = create_app(app_settings)
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["officer"])
        created = await client.post("/api/v1/runs", json={"as_of": "2026-06-30"})
        assert created.status_code == 201, created.text
        run = created.json()
        assert run["trigger"] == "api" and run["as_of"] == "2026-06-30" and run["n_pairs"] == 26
        # Default policy (30 pairs minimum): every lab has too little evidence, so it is held at
        # the new-lab default Ⅱ unless the non-statistical rules give worse: C's falsified
        # report caps it at Ⅳ, D's 65 points (complaints and audit findings) give Ⅲ; B's 85 is
        # Ⅱ anyway.
        classes = {g["lab_code"]: g["class"] for g in run["grades"]}
        assert classes == {"A": "II", "B": "II", "C": "IV", "D": "III", "E": "II"}
        listed = (await client.get("/api/v1/runs")).json()["items"]
        assert [r["run_id"] for r in listed] == [run["run_id"]] and listed[0]["grades"] == []
        again = (await client.get(f"/api/v1/runs/{run['run_id']}")).json()
        assert again["grades"] == run["grades"]
        assert (await client.get("/api/v1/runs/999")).status_code == 404
        bad = await client.post("/api/v1/runs", json={"as_of": "2026-06-30", "policy": "mine"})
        assert bad.status_code == 400
