"""The grading-run pages against real PostgreSQL: the history and the start form (roles, a run
in progress, a bad date), one run with its grades, verify, the labs that moved between two runs,
the exports read back, and both languages."""

from __future__ import annotations

import io
import re
from datetime import date, timedelta

import polars as pl
import pytest
from litestar.testing import AsyncTestClient
from test_grading_run import AS_OF, small_policy
from test_web import HTML, site  # noqa: F401  (the fixture: runs 1 and 2 on the hand-built set)
from test_web_a11y import problems

from labeval.db import runs
from labeval.db.pool import connect
from labeval.grading.overrides import set_override, today_utc
from labeval.render import main_reasons
from labeval.web.i18n import translator
from labeval.web.reasons import effect_text, reason_text
from scoring.classes import DISPLAY
from scoring.policy import policy_hash

from web_client import csrf_token, make_user, sign_in, submit


def _rows(html: str, table_id: str) -> list[str]:
    body = html.split(f'<table id="{table_id}">')[1].split("</table>")[0]
    return re.findall(r"<tr[^>]*>.*?</tr>", body.split("<tbody>")[1], flags=re.S)


async def _add_complaints_against_a(db_url: str) -> None:
    """Three upheld complaints against lab A before 2026-07-01: 3 × 5 points (the default policy's
    complaints deduction) take A from 100 to 85, class Ⅰ to Ⅱ (cut-off Ⅰ ≥ 90, Ⅱ ≥ 75)."""
    conn = await connect(db_url)
    try:
        await conn.execute(
            """INSERT INTO lab_complaints (lab_code, complaint_no, received_on, upheld) VALUES
               ('A', 'W1', '2026-06-10', true), ('A', 'W2', '2026-06-11', true), ('A', 'W3', '2026-06-12', true)""")
    finally:
        await conn.close()


async def test_history_lists_runs_newest_first_and_hides_the_form_from_a_viewer(site: AsyncTestClient,  # noqa: F811
                                                                                 db_url: str) -> None:
    conn = await connect(db_url)
    try:
        stored = await conn.fetch("SELECT run_id, as_of, n_labs, n_pairs, policy_version FROM grading_runs "
                                  "ORDER BY run_id DESC")
    finally:
        await conn.close()
    await sign_in(site, "viewer.one")
    r = await site.get("/runs", headers=HTML)
    assert r.status_code == 200
    rows = _rows(r.text, "runs")
    assert [int(re.search(r'href="/runs/(\d+)"', row).group(1)) for row in rows] == [s["run_id"] for s in stored]
    assert len(stored) == 2
    newest = rows[0]
    assert "Jun 30, 2026" in newest and "succeeded" in newest and "test-small" in newest
    assert f'<td class="num">{stored[0]["n_pairs"]}</td>' in newest
    assert 'id="start-run"' not in r.text


async def test_history_pages_through_older_runs(site: AsyncTestClient, db_url: str) -> None:  # noqa: F811
    conn = await connect(db_url)
    try:
        # 24 failed runs on top of the two that succeeded: 26 runs, 25 to a page.
        policy = small_policy()
        for _ in range(24):
            run_id = await runs.start_run(
                conn, as_of=AS_OF, trigger="test", actor=None, policy_name=policy.name,
                policy_version=policy.version, policy_hash=policy_hash(policy), policy={}, window_start=AS_OF,
                window_end=AS_OF, code_version="t")
            await runs.fail_run(conn, run_id, "RuntimeError: made to fail")
        ids = [r["run_id"] for r in await conn.fetch("SELECT run_id FROM grading_runs ORDER BY run_id DESC")]
    finally:
        await conn.close()
    await sign_in(site, "viewer.one")
    first = (await site.get("/runs", headers=HTML)).text
    shown = [int(x) for x in re.findall(r'<td><a href="/runs/(\d+)">', first)]
    assert shown == ids[:25]
    assert f'href="/runs?after={ids[24]}"' in first
    second = (await site.get(f"/runs?after={ids[24]}", headers=HTML)).text
    assert [int(x) for x in re.findall(r'<td><a href="/runs/(\d+)">', second)] == ids[25:]
    assert "/runs?after=" not in second and 'href="/runs">' in second
    failed = (await site.get(f"/runs/{ids[0]}", headers=HTML)).text
    assert 'data-status="failed"' in failed and "RuntimeError: made to fail" in failed
    assert 'id="export-csv"' not in failed
    # A failed run has no grades to export: said, not an empty file.
    assert (await site.get(f"/runs/{ids[0]}/grades.csv", headers=HTML)).status_code == 409


async def test_an_officer_starts_a_run_from_the_form_and_lands_on_it(site: AsyncTestClient,  # noqa: F811
                                                                     db_url: str) -> None:
    await sign_in(site, "officer.one")
    r = await submit(site, "/runs", "/runs", {"as_of": "2026-07-01"})
    assert r.status_code == 303
    run_id = int(r.headers["location"].removeprefix("/runs/"))
    conn = await connect(db_url)
    try:
        row = await conn.fetchrow("SELECT as_of, trigger, actor, status FROM grading_runs WHERE run_id = $1", run_id)
        grades = dict(await conn.fetch("SELECT lab_code, class FROM lab_grades WHERE run_id = $1", run_id))
        audited = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'POST /runs' "
                                      "AND actor LIKE 'user:%:officer.one' AND status = 303")
    finally:
        await conn.close()
    assert (row["as_of"], row["trigger"], row["status"]) == (date(2026, 7, 1), "web", "succeeded")
    assert row["actor"].endswith(":officer.one") and audited == 1
    page = await site.get(f"/runs/{run_id}", headers=HTML)
    assert page.status_code == 200 and 'data-status="succeeded"' in page.text
    shown = dict(re.findall(r'<tr data-lab="(\w+)">.*?<td class="computed"><span class="class class-(\w+)">',
                            page.text, flags=re.S))
    assert shown == grades and len(grades) == 5


async def test_a_grader_may_start_a_run_too(site: AsyncTestClient, db_url: str) -> None:  # noqa: F811
    conn = await connect(db_url)
    try:
        await make_user(conn, "grader.one", "grader")
    finally:
        await conn.close()
    await sign_in(site, "grader.one")
    assert 'id="start-run"' in (await site.get("/runs", headers=HTML)).text
    r = await submit(site, "/runs", "/runs", {"as_of": ""})
    assert r.status_code == 303 and r.headers["location"] == "/runs/3"


async def test_a_bad_date_is_said_in_the_form(site: AsyncTestClient, db_url: str) -> None:  # noqa: F811
    await sign_in(site, "officer.one")
    for bad in ("0001-01-01", "30.06.2026"):
        r = await submit(site, "/runs", "/runs", {"as_of": bad})
        assert r.status_code == 400 and "The as-of date must be a date from 1900 on" in r.text
    conn = await connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM grading_runs") == 2
    finally:
        await conn.close()


async def test_a_viewer_may_not_start_a_run(site: AsyncTestClient, db_url: str) -> None:  # noqa: F811
    await sign_in(site, "viewer.one")
    token = csrf_token((await site.get("/runs", headers=HTML)).text)  # the sign-out form's
    r = await site.post("/runs", data={"as_of": "", "_csrf_token": token}, headers=HTML)
    assert r.status_code == 403
    conn = await connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM grading_runs") == 2
    finally:
        await conn.close()


async def test_a_run_in_progress_is_said_with_409(site: AsyncTestClient, db_url: str) -> None:  # noqa: F811
    holder = await connect(db_url)
    try:
        # Another process's run: it holds the run lock and its row says 'running'.
        assert await runs.try_lock(holder)
        policy = small_policy()
        running = await runs.start_run(
            holder, as_of=AS_OF, trigger="cli", actor="cli:someone", policy_name=policy.name,
            policy_version=policy.version, policy_hash=policy_hash(policy), policy={}, window_start=AS_OF,
            window_end=AS_OF, code_version="t")
        await sign_in(site, "officer.one")
        r = await submit(site, "/runs", "/runs", {"as_of": ""})
        assert r.status_code == 409
        assert f"Grading run {running} (as of Jun 30, 2026) is in progress since" in r.text
        assert 'id="runs"' in r.text  # the history is still there, under the message
        shown = (await site.get(f"/runs/{running}", headers=HTML)).text
        assert 'data-status="running"' in shown and "still in progress" in shown
        assert await holder.fetchval("SELECT count(*) FROM grading_runs") == 3
        await runs.fail_run(holder, running, "stopped by the test")
    finally:
        await holder.close()


async def test_verify_says_identical_then_the_differences_on_todays_data(site: AsyncTestClient,  # noqa: F811
                                                                        db_url: str) -> None:
    await sign_in(site, "viewer.one")
    r = await submit(site, "/runs/2", "/runs/2/verify", {})
    assert r.status_code == 200
    assert 'data-identical="true"' in r.text and "Identical: recomputing the 5 labs" in r.text
    # Complaints against A with dates inside run 2's window: on today's data, A scores 85, not 100.
    await _add_complaints_against_a(db_url)
    same = await submit(site, "/runs/2", "/runs/2/verify", {})
    assert 'data-identical="true"' in same.text  # the data as the run read it did not change
    now = await submit(site, "/runs/2", "/runs/2/verify", {"current": "on"})
    assert 'data-identical="false"' in now.text and "1 lab differs when recomputed." in now.text
    diff = _rows(now.text, "verify-differences")
    assert len(diff) == 1 and 'href="/labs/A"' in diff[0] and "class, score, reasons" in diff[0]
    assert "100.0" in diff[0] and "85.0" in diff[0]
    # A run without grades cannot be verified: said on the page, 409.
    conn = await connect(db_url)
    try:
        policy = small_policy()
        failed = await runs.start_run(
            conn, as_of=AS_OF, trigger="test", actor=None, policy_name=policy.name, policy_version=policy.version,
            policy_hash=policy_hash(policy), policy={}, window_start=AS_OF, window_end=AS_OF, code_version="t")
        await runs.fail_run(conn, failed, "RuntimeError: made to fail")
    finally:
        await conn.close()
    refused = await submit(site, "/runs/2", f"/runs/{failed}/verify", {})
    assert refused.status_code == 409 and "Only a run that succeeded has grades to verify." in refused.text
    assert (await submit(site, "/runs/2", "/runs/999999/verify", {})).status_code == 404


async def test_diff_shows_the_lab_that_moved_and_the_rule(site: AsyncTestClient, db_url: str) -> None:  # noqa: F811
    await _add_complaints_against_a(db_url)
    await sign_in(site, "officer.one")
    started = await submit(site, "/runs", "/runs", {"as_of": "2026-07-01"})
    later = int(started.headers["location"].removeprefix("/runs/"))
    conn = await connect(db_url)
    try:
        moved = {r["lab_code"]: (r["a"], r["b"]) for r in await conn.fetch(
            """SELECT a.lab_code, a.class AS a, b.class AS b FROM lab_grades a
               JOIN lab_grades b ON b.lab_code = a.lab_code AND b.run_id = $1
               WHERE a.run_id = 2 AND a.class <> b.class""", later)}
    finally:
        await conn.close()
    assert moved == {"A": ("I", "II")}
    # The run page offers the run before as the one to compare with.
    run_page = (await site.get(f"/runs/{later}", headers=HTML)).text
    assert '<option value="2" selected>' in run_page
    r = await site.get(f"/runs/diff?a=2&b={later}", headers=HTML)
    assert r.status_code == 200
    rows = _rows(r.text, "moved-labs")
    assert len(rows) == 1 and 'data-lab="A" data-rule="complaints"' in rows[0]
    assert 'class-I">Ⅰ</span> 100.0' in rows[0] and 'class-II">Ⅱ</span> 85.0' in rows[0]
    # The rule in words, and what it said in each run (run 2 had no complaint against A).
    assert "<td>Upheld complaints</td>" in rows[0]
    assert "<td>Upheld complaints: no data</td>" in rows[0]
    assert "<td>Upheld complaints: measured 3, threshold 0; 15.00 points deducted</td>" in rows[0]
    assert "1 of 5 labs changed class." in r.text
    none = await site.get("/runs/diff?a=1&b=2", headers=HTML)
    assert "No lab changed class between these runs." in none.text
    assert (await site.get("/runs/diff?a=1&b=999999", headers=HTML)).status_code == 404
    chooser = await site.get("/runs/diff", headers=HTML)
    assert chooser.status_code == 200 and 'id="diff"' in chooser.text


def _expected_grades(rows: list, names: dict[str, str], run: dict, override: dict) -> pl.DataFrame:
    en = translator("en")
    out = []
    for g in rows:
        from_reasons = main_reasons(g.reasons)
        o = override.get(g.lab_code)
        out.append({
            "lab_code": g.lab_code, "lab_name": names[g.lab_code], "computed_class": g.class_, "score": g.score,
            "effective_class": o["class"] if o else g.class_, "override_id": o["override_id"] if o else None,
            "change": g.change, "previous_class": g.previous_class, "pairs": g.pairs,
            "main_reason": "; ".join(reason_text(en, x) for x in from_reasons)
            or "Nothing deducted from the starting score",
            "policy_version": run["policy_version"], "policy_hash": run["policy_hash"], "run_id": run["run_id"],
            "as_of": run["as_of"],
        })
    return pl.DataFrame(out)


async def test_exports_read_back_equal_to_the_stored_grades(site: AsyncTestClient, db_url: str) -> None:  # noqa: F811
    conn = await connect(db_url)
    try:
        await conn.execute("UPDATE labs SET name = '浙江省检测院' WHERE lab_code = 'B'")
        o = await set_override(conn, lab_code="D", class_="II", reason="appeal upheld",
                               valid_until=today_utc() + timedelta(days=30), set_by="officer.one")
        stored = await runs.stored_grades(conn, 2)
        names = dict(await conn.fetch("SELECT lab_code, name FROM labs"))
        run = dict(await conn.fetchrow("SELECT run_id, as_of, policy_version, policy_hash FROM grading_runs "
                                       "WHERE run_id = 2"))
    finally:
        await conn.close()
    expected = _expected_grades(stored, names, run, {"D": {"class": "II", "override_id": o.override_id}})
    assert expected.height == 5 and expected.filter(pl.col("lab_code") == "D")["computed_class"].item() == "III"
    await sign_in(site, "viewer.one")
    files = {}
    for fmt in ("csv", "xlsx", "parquet"):
        r = await site.get(f"/runs/2/grades.{fmt}", headers={**HTML, "Accept-Language": "en"})
        assert r.status_code == 200, fmt
        assert r.headers["content-disposition"] == f'attachment; filename="labeval-run-2-grades.{fmt}"'
        files[fmt] = r.content
    assert files["csv"].startswith(b"\xef\xbb\xbf")  # the BOM that tells Excel it is UTF-8
    frames = {
        "csv": pl.read_csv(io.BytesIO(files["csv"]), try_parse_dates=True),
        "xlsx": pl.read_excel(io.BytesIO(files["xlsx"]), sheet_name="grades"),
        "parquet": pl.read_parquet(io.BytesIO(files["parquet"])),
    }
    for fmt, frame in frames.items():
        got = frame.select(expected.columns).with_columns(
            pl.col("override_id").cast(pl.Int64), pl.col("pairs", "run_id").cast(pl.Int64),
            pl.col("score").cast(pl.Float64), pl.col("as_of").cast(pl.Date),
            pl.col("previous_class").cast(pl.String)).sort("lab_code")
        assert got.to_dicts() == expected.sort("lab_code").to_dicts(), fmt
    assert frames["parquet"]["override_until"].to_list().count(o.valid_until) == 1
    # An unknown run has nothing to export.
    assert (await site.get("/runs/999999/grades.csv", headers=HTML)).status_code == 404


@pytest.mark.parametrize(("lang", "words"), [("en", ("Grading run #2", "Main reason", "Download the grades")),
                                             ("zh-CN", ("评级运行 #2", "主要理由", "下载评级结果"))])
async def test_the_pages_in_both_languages(site: AsyncTestClient, lang: str, words: tuple[str, ...]) -> None:  # noqa: F811
    await sign_in(site, "officer.one")
    await site.get(f"/lang/{lang}?next=/", headers=HTML)
    run = (await site.get("/runs/2", headers=HTML)).text
    assert f'<html lang="{lang}">' in run
    for w in words:
        assert w in run
    for path in ("/runs", "/runs/2", "/runs/diff?a=1&b=2", "/runs/diff"):
        r = await site.get(path, headers=HTML)
        assert r.status_code == 200 and problems(r.text) == [], path
    verified = await submit(site, "/runs/2", "/runs/2/verify", {})
    assert problems(verified.text) == []
    d_row = next(row for row in _rows(run, "grades") if 'data-lab="D"' in row)
    c_row = next(row for row in _rows(run, "grades") if 'data-lab="C"' in row)
    if lang == "zh-CN":
        assert "一致：重算 5 家机构" in verified.text
        # D's main reason in words: its major audit findings took the most points (20 of 35).
        assert "严重审核发现" in d_row and "扣 20.00 分" in d_row
        assert "虚假检验检测报告" in c_row and "Ⅳ" in c_row and "falsified_report" not in c_row
    else:
        assert "Identical: recomputing the 5 labs" in verified.text
        assert "Major audit findings" in d_row and "20.00 points deducted" in d_row
        # C: a falsified report caps at Ⅳ (not "Ⅰ" followed by a stray "V").
        assert "Falsified test reports: measured 1, threshold 0; class capped at Ⅳ</td>" in c_row


def test_a_cap_names_its_class_whole() -> None:
    en = translator("en")
    assert [effect_text(en, f"cap {c}") for c in ("I", "II", "III", "IV")] == [
        f"class capped at {DISPLAY[c]}" for c in ("I", "II", "III", "IV")]
    assert effect_text(en, "cap III (rate within the peers' spread)") == (
        "class capped at Ⅲ (the discrepancy rate is within the peers' spread)")
    # The detail is in words in Chinese too (translated, numbers kept).
    zh = translator("zh-CN")
    assert effect_text(zh, "cap IV (observed 7, expected 1.20)") == "类别上限为 Ⅳ（观察到 7，预期 1.20）"
