"""Grading runs an officer can trust, against real PostgreSQL: periods for hysteresis, identical
re-runs, verify from the data as a run read it, diff, overrides with expiry, the event outbox,
one run at a time, and a run killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.datastructures import State
from litestar.testing import AsyncTestClient
from test_grading_run import AS_OF, EXPECTED, seed, small_policy

import labeval.cli
import labeval.grading.run
from labeval.app import create_app
from labeval.cli import main
from labeval.config import Settings
from labeval.db import events
from labeval.db.pool import connect, create_pool
from labeval.db.runs import RUN_LOCK_KEY
from labeval.grading import verify as verify_module
from labeval.grading.diff import deciding_rule, diff_runs
from labeval.grading.overrides import (
    effective_grades,
    expire_due,
    revoke_override,
    set_override,
)
from labeval.grading.run import (
    HOLD_ENV,
    Inputs,
    RunInProgress,
    canonical_rows,
    run_grading,
)
from labeval.grading.verify import verify_run
from labeval.ingest import ingest_frame
from labeval.metrics import Metrics
from labeval.scheduler import scheduled_grading
from scoring.grading import Reason
from scoring.policy import policy_hash

ROOT = Path(__file__).resolve().parents[1]


def cli(db_url: str, *args: str):
    return CliRunner().invoke(main, ["--database-url", db_url, *args], catch_exceptions=False)


async def acli(db_url: str, *args: str):
    # The command runs its own event loop: from a test's loop, in a thread.
    return await asyncio.to_thread(cli, db_url, *args)


async def _run(conn: asyncpg.Connection, db_url: str, as_of: date, policy=None):
    return await run_grading(conn, policy or small_policy(), as_of=as_of, trigger="test")


@pytest.fixture
async def seeded(db_url: str):
    c = await connect(db_url)
    await seed(c)
    try:
        yield c
    finally:
        await c.close()


def _grades(run) -> dict[str, tuple]:
    return {g.lab_code: (g.class_, g.score, g.change, g.previous_class) for g in run.grades}


# ---------------------------------------------------------------------------------------------
# periods, not runs


async def test_same_day_rerun_does_not_upgrade_and_a_new_policy_restarts_the_count(
    seeded: asyncpg.Connection, db_url: str
) -> None:
    policy = small_policy()  # upgrade_after_runs = 2 (policy default)
    assert policy.grading.upgrade_after_runs == 2
    # A earlier period in which A was graded Ⅱ: A's candidate is now Ⅰ (100 points, 14 pairs).
    run_id = await seeded.fetchval(
        """INSERT INTO grading_runs (as_of, trigger, policy_name, policy_version, policy_hash, policy,
                                     status, finished_at)
           VALUES ('2026-05-31', 'test', $1, $2, $3, '{}', 'succeeded', now() - interval '1 day')
           RETURNING run_id""",
        policy.name, policy.version, policy_hash(policy),
    )
    await seeded.execute(
        """INSERT INTO lab_grades (run_id, lab_code, score, class, change, consecutive_qualifying)
           VALUES ($1, 'A', 80, 'II', 'new', 0)""",
        run_id,
    )
    first = await _run(seeded, db_url, AS_OF)
    assert _grades(first)["A"] == ("II", 100.0, "held", "II")  # one qualifying period of two
    # Cron, then a manual run the same day: the same period reads the same previous grades.
    second = await _run(seeded, db_url, AS_OF)
    assert _grades(second)["A"] == ("II", 100.0, "held", "II")
    hyst = next(r for r in second.grades if r.lab_code == "A").reasons[-1]
    assert (hyst.rule, hyst.value, hyst.effect) == ("hysteresis", 1.0, "hold II")
    assert second.input_digest == first.input_digest

    # Under a changed policy the count restarts: the next period is its first qualifying one.
    changed = msgspec.structs.replace(policy, version="test-small-2")
    other = await _run(seeded, db_url, AS_OF + timedelta(days=31), policy=changed)
    assert _grades(other)["A"] == ("II", 100.0, "held", "II")
    # The same next period under the unchanged policy: the second qualifying period → Ⅰ.
    third = await _run(seeded, db_url, AS_OF + timedelta(days=31))
    assert _grades(third)["A"] == ("I", 100.0, "up", "II")


async def test_a_failed_run_is_marked_with_its_error_and_shows_no_grades(
    seeded: asyncpg.Connection, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(labeval.grading.run, "compute", broken)
    with pytest.raises(ZeroDivisionError):
        await _run(seeded, db_url, AS_OF)
    row = await seeded.fetchrow("SELECT run_id, status, error, finished_at FROM grading_runs")
    assert (row["status"], row["error"]) == ("failed", "ZeroDivisionError: planted") and row["finished_at"]
    assert await seeded.fetchval("SELECT count(*) FROM lab_grades") == 0
    with pytest.raises(verify_module.RunNotVerifiable, match="is failed"):
        await verify_run(seeded, row["run_id"])
    monkeypatch.undo()
    # The lock was released: the next run goes ahead.
    assert (await _run(seeded, db_url, AS_OF)).status == "succeeded"


@given(st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 5), st.booleans() | st.none()), max_size=12),
       st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_input_digest_ignores_row_order(rows: list[tuple], rnd) -> None:
    records = [{"lab_code": lab, "complaint_code": f"C{n}", "upheld": up} for lab, n, up in rows]
    shuffled = records[:]
    rnd.shuffle(shuffled)

    def inputs(rs: list[dict]) -> Inputs:
        return Inputs(pairs_csv=b"pair_id\n", labs=["A", "B"], previous=[],
                      indicators={"complaints": canonical_rows(rs)})

    assert inputs(records).digest() == inputs(shuffled).digest()
    if records:
        assert inputs(records[1:]).digest() != inputs(records).digest() or records[0] in records[1:]


# ---------------------------------------------------------------------------------------------
# identical re-run, verify, diff


async def test_rerun_is_identical_and_verify_reads_the_data_as_the_run_did(
    seeded: asyncpg.Connection, db_url: str
) -> None:
    run = await _run(seeded, db_url, AS_OF)
    again = await _run(seeded, db_url, AS_OF)
    assert run.input_digest and again.input_digest == run.input_digest
    assert [(g.lab_code, g.class_, g.score, g.reasons) for g in again.grades] == [
        (g.lab_code, g.class_, g.score, g.reasons) for g in run.grades
    ]
    assert run.status == "succeeded" and run.class_counts == {"I": 1, "II": 2, "III": 1, "IV": 1}
    assert run.window_end == AS_OF and run.window_start == AS_OF - timedelta(days=1095)

    report = await verify_run(seeded, run.run_id)
    assert report.identical and report.labs == 5 and report.recomputed_input_digest == run.input_digest

    # Corrections through intake after the run: a new version of B's retest of S001 (50 → 58,
    # d = 8 > CD 2.8), B's not-upheld complaint C4 now upheld (corrected in place), and a new
    # upheld complaint for A. None of it existed when the run read the data.
    for kind, rows in (
        ("results", [{"sample_code": "S001", "item_code": "Q", "lab_code": "B", "role": "retest",
                      "value": "58.0", "verdict": "pass", "reported_on": "2026-04-01"}]),
        ("complaints", [{"lab_code": "B", "complaint_no": "C4", "received_on": "2026-03-11", "upheld": "true"},
                        {"lab_code": "A", "complaint_no": "C9", "received_on": "2026-06-01", "upheld": "true"}]),
    ):
        report_ = await ingest_frame(seeded, kind, rows, source="test")
        assert report_.rejected == 0, report_
    # The new version is current; the one the run read moved to result_versions (0015).
    assert await seeded.fetchval("SELECT version FROM results WHERE sample_code = 'S001' AND lab_code = 'B'") == 2
    assert await seeded.fetchval(
        "SELECT version FROM result_versions WHERE sample_code = 'S001' AND lab_code = 'B'") == 1

    still = await verify_run(seeded, run.run_id)
    assert still.identical and still.recomputed_input_digest == run.input_digest
    # On today's data the same run would differ: A loses 5 points (C9), B's fourth upheld
    # complaint is over the cap of 15 (no change), the discrepant pair moves the rates.
    now = await verify_run(seeded, run.run_id, current=True)
    assert not now.identical and now.recomputed_input_digest != run.input_digest
    by_lab = {d.lab_code: d for d in now.differences}
    assert by_lab["A"].stored_score == 100.0 and by_lab["A"].recomputed_score < 100.0
    assert "score" in by_lab["A"].fields

    # History rewritten in place (not through intake): verify names the labs it touches.
    await seeded.execute(
        "UPDATE lab_complaints SET upheld = false WHERE complaint_no IN ('C5', 'C6', 'C7')"
    )
    tampered = await verify_run(seeded, run.run_id)
    assert [(d.lab_code, d.fields, d.stored_score, d.recomputed_score) for d in tampered.differences] == [
        ("D", ["class", "score", "reasons"], 65.0, 80.0)  # 100 − 20 (audit findings), no complaints: Ⅱ
    ]

    r = await acli(db_url, "runs", "verify", str(again.run_id), "--json")
    assert r.exit_code == 1 and json.loads(r.output)["differences"][0]["lab_code"] == "D"
    r = await acli(db_url, "runs", "verify", "999")
    assert r.exit_code == 2


async def test_verify_cli_exit_zero_on_an_untouched_run(
    seeded: asyncpg.Connection, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:

    # Wide enough that no table cell is cut short, whatever terminal runs the tests.
    monkeypatch.setattr(labeval.cli.out, "width", 240)
    await seeded.close()
    r = await acli(db_url, "--policy", str(ROOT / "scoring" / "default_policy.toml"), "grade", "--as-of", "2026-06-30",
            "--json")
    assert r.exit_code == 0, r.output
    run = json.loads(r.output)
    assert {"run_id", "as_of", "policy_hash", "input_digest", "grades"} <= set(run)
    assert run["as_of"] == "2026-06-30" and len(run["input_digest"]) == 64 and run["status"] == "succeeded"
    r = await acli(db_url, "runs", "verify", str(run["run_id"]))
    assert r.exit_code == 0 and "identical" in r.output
    listed = json.loads((await acli(db_url, "runs", "list", "--json")).output)
    assert [(x["run_id"], x["status"], x["trigger"]) for x in listed] == [(run["run_id"], "succeeded", "cli")]
    shown = json.loads((await acli(db_url, "runs", "show", str(run["run_id"]), "--json")).output)
    assert {g["lab_code"]: (g["class"], g["effective_class"], g["override"]) for g in shown["grades"]}["C"] == (
        "IV", "IV", None)
    # The terminal renderings of the same commands.
    until = (date.today() + timedelta(days=3)).isoformat()
    assert (await acli(db_url, "override", "C", "III", "--reason", "appeal", "--until", until)).exit_code == 0
    for args, expected in ((("runs", "list"), "succeeded"), (("runs", "show", str(run["run_id"])), "appeal"),
                           (("runs", "diff", str(run["run_id"]), str(run["run_id"])), "0 of 5 labs moved"),
                           (("override", "list"), "appeal"), (("events",), "override_set")):
        r = await acli(db_url, *args)
        assert r.exit_code == 0 and expected in r.output, (args, r.output)


async def test_diff_names_the_rule_that_moved_a_lab(seeded: asyncpg.Connection, db_url: str) -> None:
    first = await _run(seeded, db_url, AS_OF)
    await seeded.execute(
        """INSERT INTO lab_complaints (lab_code, complaint_no, received_on, upheld) VALUES
           ('A', 'N1', '2026-06-10', true), ('A', 'N2', '2026-06-11', true), ('A', 'N3', '2026-06-12', true)"""
    )
    second = await _run(seeded, db_url, AS_OF + timedelta(days=1))
    diff = await diff_runs(seeded, first.run_id, second.run_id)
    # A: 100 − 15 (three upheld complaints, cap 15) = 85 → Ⅱ; a downgrade applies at once.
    assert [(m.lab_code, m.class_a, m.class_b, m.score_a, m.score_b, m.rule) for m in diff.moved] == [
        ("A", "I", "II", 100.0, 85.0, "complaints")
    ]
    assert diff.labs_compared == 5
    r = await acli(db_url, "runs", "diff", str(first.run_id), str(second.run_id), "--json")
    assert r.exit_code == 0 and json.loads(r.output)["moved"][0]["rule"] == "complaints"


def test_deciding_rule_cases() -> None:
    def reasons(candidate: str, **effects: str) -> list[Reason]:
        return [Reason(rule=k, metric="m", effect=v) for k, v in effects.items()] + [
            Reason(rule="candidate", metric="class", effect=candidate)]

    # A cap that fired on one side only decides, whatever the score did.
    assert deciding_rule(reasons("class I", bias="deduct 0.00", fdr_excess="no cap"),
                         reasons("class III", bias="deduct 3.00", fdr_excess="cap III")) == "fdr_excess"
    # Same candidate, different final class: the hysteresis step.
    assert deciding_rule(reasons("class I", hysteresis="hold II"),
                         reasons("class I", hysteresis="up I")) == "hysteresis"
    # The largest change of deduction.
    assert deciding_rule(reasons("class I", bias="deduct 1.00", complaints="deduct 0.00"),
                         reasons("class II", bias="deduct 2.00", complaints="deduct 15.00")) == "complaints"
    assert deciding_rule([], reasons("class II")) == "new"


# ---------------------------------------------------------------------------------------------
# overrides and events


async def test_override_applies_until_it_expires_then_the_computed_class_returns(
    seeded: asyncpg.Connection, db_url: str
) -> None:
    run = await _run(seeded, db_url, AS_OF)
    run_events = await events.after(seeded, 0)
    # Five new labs: one 'run' event each, in lab order, old class null.
    assert [(e.seq, e.lab_code, e.old_class, e.new_class, e.cause) for e in run_events] == [
        (i + 1, lab, None, EXPECTED[lab][0], "run") for i, lab in enumerate(sorted(EXPECTED))
    ]
    day = date(2030, 3, 1)
    o = await set_override(seeded, lab_code="A", class_="III", reason="site audit pending", valid_until=day,
                           set_by="officer.li", today=day - timedelta(days=10))
    assert (o.lab_code, o.class_, o.set_by, o.reason) == ("A", "III", "officer.li", "site audit pending")
    set_event = (await events.after(seeded, 5))[0]
    assert (set_event.seq, set_event.old_class, set_event.new_class, set_event.effective_class, set_event.cause,
            set_event.override_id) == (6, "I", "I", "III", "override_set", o.override_id)

    eff = {g.lab_code: (g.class_, g.effective_class) for g in await effective_grades(seeded, run.grades, today=day)}
    assert eff["A"] == ("I", "III") and eff["B"] == ("II", "II")
    # The day after valid_until the computed class applies, before any expiry event exists.
    eff = {g.lab_code: g.effective_class for g in await effective_grades(seeded, run.grades, today=day + timedelta(1))}
    assert eff["A"] == "I"

    assert await expire_due(seeded, day) == []
    expired = await expire_due(seeded, day + timedelta(days=1))
    assert [x.override_id for x in expired] == [o.override_id] and expired[0].expired_at is not None
    assert await expire_due(seeded, day + timedelta(days=2)) == []  # idempotent: marked once
    assert await seeded.fetchval("SELECT count(*) FROM grade_events WHERE cause = 'override_expired'") == 1
    tail = await events.after(seeded, 6)
    assert [(e.seq, e.lab_code, e.old_class, e.new_class, e.effective_class, e.cause, e.override_id)
            for e in tail] == [(7, "A", "III", "I", "I", "override_expired", o.override_id)]

    # A second override replaces the first; revoking it brings the computed class back.
    o1 = await set_override(seeded, lab_code="B", class_="IV", reason="r1", valid_until=day, set_by="x", today=day)
    o2 = await set_override(seeded, lab_code="B", class_="III", reason="r2", valid_until=day, set_by="y", today=day)
    rows = {r["override_id"]: r for r in await seeded.fetch("SELECT * FROM grade_overrides WHERE lab_code = 'B'")}
    assert rows[o1.override_id]["revoke_reason"] == "replaced by a new override" and rows[o2.override_id]["revoked_at"] is None
    revoked = await revoke_override(seeded, o2.override_id, by="z", why="audit passed", today=day)
    assert (revoked.revoked_by, revoked.revoke_reason) == ("z", "audit passed")
    assert [(e.old_class, e.new_class, e.effective_class, e.cause) for e in await events.after(seeded, 7)] == [
        ("II", "II", "IV", "override_set"), ("IV", "II", "III", "override_set"), ("III", "II", "II", "override_revoked")
    ]


async def test_concurrent_expiry_appends_one_event_per_override(seeded: asyncpg.Connection, db_url: str) -> None:
    await _run(seeded, db_url, AS_OF)
    day = date(2030, 3, 1)
    for lab in ("A", "B", "C"):
        await set_override(seeded, lab_code=lab, class_="IV", reason="probe", valid_until=day, set_by="x", today=day)
    conns = [await connect(db_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(expire_due(c, day + timedelta(days=1)) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sorted(o.lab_code for r in results for o in r) == ["A", "B", "C"]
    rows = await seeded.fetch("SELECT lab_code FROM grade_events WHERE cause = 'override_expired' ORDER BY lab_code")
    assert [r["lab_code"] for r in rows] == ["A", "B", "C"]


async def test_override_cli_and_api(
    seeded: asyncpg.Connection, db_url: str, app_settings: Settings, role_headers: dict
) -> None:
    await _run(seeded, db_url, AS_OF)
    until = (date.today() + timedelta(days=30)).isoformat()
    r = await acli(db_url, "override", "C", "II", "--reason", "appeal upheld", "--until", until, "--by", "officer.wang",
            "--json")
    assert r.exit_code == 0, r.output
    set_ = json.loads(r.output)
    assert (set_["lab_code"], set_["class"], set_["set_by"]) == ("C", "II", "officer.wang")
    assert (await acli(db_url, "override", "NOPE", "II", "--reason", "x", "--until", until)).exit_code == 2
    assert (await acli(db_url, "override", "C", "II", "--reason", "x", "--until", "2001-01-01")).exit_code == 2
    listed = json.loads((await acli(db_url, "override", "list", "--json")).output)
    assert [x["override_id"] for x in listed] == [set_["override_id"]]

    app = create_app(app_settings)
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["officer"])
        labs = {x["code"]: x for x in (await client.get("/api/v1/labs")).json()["items"]}
        assert (labs["C"]["current_class"], labs["C"]["effective_class"], labs["C"]["override"]["reason"]) == (
            "IV", "II", "appeal upheld")
        assert (labs["A"]["effective_class"], labs["A"]["override"]) == ("I", None)
        detail = (await client.get("/api/v1/labs/C")).json()
        assert detail["effective_class"] == "II" and detail["current_class"] == "IV"

        bad = await client.post("/api/v1/overrides", json={"lab_code": "A", "class": "IV", "reason": "x",
                                                            "valid_until": "2001-01-01", "set_by": "me"})
        assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
        missing_reason = await client.post("/api/v1/overrides", json={"lab_code": "A", "class": "IV",
                                                                       "valid_until": until, "set_by": "me"})
        assert missing_reason.status_code == 400
        assert missing_reason.headers["content-type"].startswith("application/problem+json")
        assert "reason" in missing_reason.text
        made = await client.post("/api/v1/overrides", json={"lab_code": "A", "class": "IV", "reason": "fraud probe",
                                                             "valid_until": until, "set_by": "me"})
        assert made.status_code == 201, made.text
        oid = made.json()["override_id"]
        revoked = await client.post(f"/api/v1/overrides/{oid}/revoke", json={"revoked_by": "me", "reason": "cleared"})
        assert revoked.status_code == 200 and revoked.json()["revoke_reason"] == "cleared"
        again = await client.post(f"/api/v1/overrides/{oid}/revoke", json={"revoked_by": "me", "reason": "x"})
        assert again.status_code == 404 and again.json()["status"] == 404
        feed = (await client.get("/api/v1/grade-events", params={"after": 5})).json()
        assert [(e["seq"], e["lab_code"], e["cause"]) for e in feed] == [
            (6, "C", "override_set"), (7, "A", "override_set"), (8, "A", "override_revoked")]
        everything = (await client.get("/api/v1/overrides", params={"all": "true"})).json()["items"]
        assert [x["override_id"] for x in everything] == [oid, set_["override_id"]]


async def test_events_are_append_only(seeded: asyncpg.Connection, db_url: str) -> None:
    await _run(seeded, db_url, AS_OF)
    for sql in ("UPDATE grade_events SET lab_code = 'B'", "DELETE FROM grade_events", "TRUNCATE grade_events"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await seeded.execute(sql)


async def test_event_seq_has_no_gaps_under_concurrent_writers(seeded: asyncpg.Connection, db_url: str) -> None:
    run = await _run(seeded, db_url, AS_OF)
    start = await seeded.fetchval("SELECT max(seq) FROM grade_events")
    rng = random.Random(10)
    plans = [[(rng.randint(1, 3), rng.random() < 0.25, rng.random() * 0.004) for _ in range(15)] for _ in range(6)]

    async def writer(plan) -> int:
        n = 0
        c = await connect(db_url)
        try:
            for count, rollback, pause in plan:
                tr = c.transaction()
                await tr.start()
                for _ in range(count):
                    await events.append(c, lab_code="A", old_class="I", new_class="I", effective_class="I",
                                        cause="run", run_id=run.run_id)
                    await asyncio.sleep(pause)
                if rollback:
                    await tr.rollback()
                else:
                    await tr.commit()
                    n += count
        finally:
            await c.close()
        return n

    seen: list[int] = []
    stop = asyncio.Event()

    async def reader() -> None:
        # A consumer polling after=last: every batch must continue exactly where it left off.
        c = await connect(db_url)
        last = start
        try:
            while not stop.is_set():
                batch = [e.seq for e in await events.after(c, last, limit=1000)]
                assert batch == list(range(last + 1, last + 1 + len(batch)))
                seen.extend(batch)
                last = batch[-1] if batch else last
                await asyncio.sleep(0.001)
            seen.extend(e.seq for e in await events.after(c, last, limit=1000))
        finally:
            await c.close()

    read_task = asyncio.create_task(reader())
    counts = await asyncio.gather(*(writer(p) for p in plans))
    stop.set()
    await read_task
    committed = sum(counts)
    assert committed > 0 and any(rb for p in plans for _, rb, _ in p)
    seqs = [r["seq"] for r in await seeded.fetch("SELECT seq FROM grade_events WHERE seq > $1 ORDER BY seq", start)]
    assert seqs == list(range(start + 1, start + 1 + committed))
    assert seen == seqs


# ---------------------------------------------------------------------------------------------
# one run at a time, kill -9


def _start_held_run(db_url: str, hold: Path) -> subprocess.Popen:
    env = {**os.environ, HOLD_ENV: str(hold)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "labeval.cli", "--database-url", db_url, "grade", "--as-of", "2026-06-30"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not hold.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited early: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "the run never reached the hold point"
        time.sleep(0.05)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    proc.stderr.close()


async def _wait_lock_free(db_url: str) -> None:
    # The server notices the dead client when its socket closes; then the session lock goes.
    c = await asyncpg.connect(db_url)
    try:
        for _ in range(200):
            if await c.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the killed run's lock was never released")
    finally:
        await c.close()


def test_a_second_run_is_refused_and_a_killed_run_is_abandoned_with_no_grades(
    db_url: str, tmp_path: Path, app_settings: Settings, role_headers: dict
) -> None:
    async def prepare() -> None:
        c = await connect(db_url)
        try:
            await seed(c)
        finally:
            await c.close()

    asyncio.run(prepare())
    proc = _start_held_run(db_url, tmp_path / "hold1")
    try:
        async def while_held() -> int:
            c = await connect(db_url)
            try:
                with pytest.raises(RunInProgress, match=r"grading run \d+ \(as of 2026-06-30, cli"):
                    await run_grading(c, small_policy(), as_of=AS_OF, trigger="test")
                running = await c.fetchrow("SELECT run_id, status FROM grading_runs")
                # Its grades are written but not committed: nobody else can see them.
                assert await c.fetchval("SELECT count(*) FROM lab_grades") == 0
            finally:
                await c.close()
            app = create_app(app_settings)
            async with AsyncTestClient(app) as client:
                client.headers.update(role_headers["officer"])
                refused = await client.post("/api/v1/runs", json={"as_of": "2026-06-30"})
                assert refused.status_code == 409
                assert refused.headers["content-type"].startswith("application/problem+json")
                assert refused.json()["title"] == "Grading run in progress"
                listed = (await client.get("/api/v1/runs")).json()["items"]
                assert [(r["run_id"], r["status"]) for r in listed] == [(running["run_id"], "running")]
            return running["run_id"]

        held_id = asyncio.run(while_held())
        r = cli(db_url, "grade", "--as-of", "2026-06-30")
        assert r.exit_code == 4 and f"grading run {held_id}" in r.output and "in progress" in r.output
    finally:
        _kill(proc)

    async def after_kill_then_server_start() -> None:
        await _wait_lock_free(db_url)
        c = await connect(db_url)
        try:
            assert await c.fetchval("SELECT status FROM grading_runs WHERE run_id = $1", held_id) == "running"
            assert await c.fetchval("SELECT count(*) FROM lab_grades") == 0
        finally:
            await c.close()
        app = create_app(app_settings)
        async with AsyncTestClient(app) as client:  # startup marks it
            client.headers.update(role_headers["officer"])
            shown = (await client.get(f"/api/v1/runs/{held_id}")).json()
            assert (shown["status"], shown["grades"]) == ("abandoned", [])
            labs = (await client.get("/api/v1/labs")).json()["items"]
            assert all(lab["current_class"] is None for lab in labs)

    asyncio.run(after_kill_then_server_start())

    # Killed again; this time the next run is what marks it.
    proc = _start_held_run(db_url, tmp_path / "hold2")
    _kill(proc)

    async def next_run_marks_it() -> None:
        await _wait_lock_free(db_url)
        c = await connect(db_url)
        try:
            killed = await c.fetchval("SELECT max(run_id) FROM grading_runs")
            run = await run_grading(c, small_policy(), as_of=AS_OF, trigger="test")
            statuses = dict(await c.fetch("SELECT run_id, status FROM grading_runs ORDER BY run_id"))
            assert statuses == {held_id: "abandoned", killed: "abandoned", run.run_id: "succeeded"}
            assert await c.fetchval("SELECT count(DISTINCT run_id) FROM lab_grades") == 1
            assert {g.lab_code: g.change for g in run.grades} == dict.fromkeys(EXPECTED, "new")
        finally:
            await c.close()

    asyncio.run(next_run_marks_it())


async def test_runs_api_grades_diff_verify_and_openapi(
    seeded: asyncpg.Connection, db_url: str, app_settings: Settings, role_headers: dict
) -> None:
    first = await _run(seeded, db_url, AS_OF)
    await seeded.execute(
        """INSERT INTO lab_complaints (lab_code, complaint_no, received_on, upheld) VALUES
           ('A', 'N1', '2026-06-10', true), ('A', 'N2', '2026-06-11', true), ('A', 'N3', '2026-06-12', true)"""
    )
    second = await _run(seeded, db_url, AS_OF + timedelta(days=1))
    app = create_app(app_settings)
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["officer"])
        grades = (await client.get(f"/api/v1/runs/{second.run_id}/grades")).json()
        assert {g["lab_code"]: (g["class"], g["effective_class"]) for g in grades} == {
            "A": ("II", "II"), "B": ("II", "II"), "C": ("IV", "IV"), "D": ("III", "III"), "E": ("II", "II")}
        diff = (await client.get(f"/api/v1/runs/{second.run_id}/diff", params={"against": first.run_id})).json()
        assert [(m["lab_code"], m["class_a"], m["class_b"], m["rule"]) for m in diff["moved"]] == [
            ("A", "I", "II", "complaints")]
        verified = (await client.get(f"/api/v1/runs/{first.run_id}/verify")).json()
        assert verified["identical"] is True and verified["recomputed_input_digest"] == first.input_digest
        current = (await client.get(f"/api/v1/runs/{first.run_id}/verify", params={"current": "true"})).json()
        assert [d["lab_code"] for d in current["differences"]] == ["A"]
        missing = await client.get("/api/v1/runs/999/verify")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
        assert (await client.get("/api/v1/runs/999/grades")).status_code == 404
        listed = (await client.get("/api/v1/runs", params={"status": "succeeded"})).json()["items"]
        assert [r["run_id"] for r in listed] == [second.run_id, first.run_id]

        paths = (await client.get("/schema/openapi.json")).json()["paths"]
        for path in ("/api/v1/runs/{run_id}/grades", "/api/v1/runs/{run_id}/diff", "/api/v1/runs/{run_id}/verify",
                     "/api/v1/overrides", "/api/v1/overrides/{override_id}/revoke", "/api/v1/grade-events"):
            assert path in paths, path
        refused = paths["/api/v1/runs"]["post"]["responses"]["409"]
        assert "application/problem+json" in refused["content"]


async def test_scheduled_run_is_skipped_while_another_run_holds_the_lock(db_url: str) -> None:


    holder = await asyncpg.connect(db_url)
    pool = await create_pool(db_url)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", RUN_LOCK_KEY)
        await scheduled_grading(State({"policy": small_policy(), "pool": pool, "metrics": Metrics()}))
        async with pool.acquire() as c:
            assert await c.fetchval("SELECT count(*) FROM grading_runs") == 0
    finally:
        await pool.close()
        await holder.close()
