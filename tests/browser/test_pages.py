"""The officers' pages in headless Chromium, as a person uses them: signing in, the dashboard,
the labs table, uploading a file with a bad row, and switching the language. Each test leaves a
screenshot (test-artifacts/screenshots/); the selectors are the pages' contract (docs/web.md)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from labeval.db.pool import connect

from .harness import LiveServer, run_async, sign_in

# One good product category and one whose required name is empty: the bad row is row 3 of the
# file (the header is row 1).
ONE_BAD_ROW = "category_code,name\nBRW-1,浏览器测试类别\nBRW-2,\n".encode()


def test_a_stranger_is_sent_to_sign_in_and_back(page: Page, accounts: dict[str, str]) -> None:
    page.goto("/labs")
    expect(page).to_have_url(re.compile(r"/signin\?next=/labs$"))
    form = page.locator("form#signin")
    form.locator("input[name=username]").fill(accounts["viewer"])
    form.locator("input[name=password]").fill("not the password")
    form.locator("button[type=submit]").click()
    expect(page.locator("[role=alert]")).to_have_text("Wrong username or password.")
    sign_in(page, accounts["viewer"], next_path="/labs")
    expect(page).to_have_url(re.compile(r"/labs$"))
    expect(page.locator("table#labs")).to_be_visible()


def test_the_dashboard(page: Page, accounts: dict[str, str], live_server: LiveServer) -> None:
    sign_in(page, accounts["viewer"])
    expect(page.locator("html")).to_have_attribute("lang", "en")
    for section in ("#class-distribution", "#flagged", "#moved", "#last-run", "#imports-waiting"):
        expect(page.locator(section)).to_be_visible()
    chart = page.locator("#class-distribution svg")
    expect(chart).to_be_visible()
    # The chart's bars of the last run add up to every graded lab of the demo's one run.

    async def graded() -> int:
        conn = await connect(live_server.database_url)
        try:
            return await conn.fetchval("SELECT count(*) FROM lab_grades WHERE run_id = "
                                       "(SELECT max(run_id) FROM grading_runs WHERE status = 'succeeded')")
        finally:
            await conn.close()

    bars = chart.locator('.point[data-series="Last run"]')
    values = [float(bars.nth(i).get_attribute("data-y") or "-1") for i in range(bars.count())]
    assert len(values) == 4 and sum(values) == run_async(graded)
    # The demo plants biased, noisy and data-problem labs: the last run flags some of them.
    assert page.locator("#flagged tbody tr").count() >= 1
    expect(page.locator("#last-run a[href^='/runs/']")).to_be_visible()


def test_the_labs_table_and_its_filter(page: Page, accounts: dict[str, str], live_server: LiveServer) -> None:
    async def lab_classes() -> dict[str, str]:
        # The class that applies today: an officer's live override, else the last run's class
        # (the lab page's tests may have set an override before this test runs).
        conn = await connect(live_server.database_url)
        try:
            rows = await conn.fetch(
                """SELECT g.lab_code, coalesce(o.class, g.class) AS class FROM lab_grades g
                   LEFT JOIN grade_overrides o ON o.lab_code = g.lab_code AND o.revoked_at IS NULL
                        AND o.expired_at IS NULL AND o.valid_until >= current_date
                   WHERE g.run_id = (SELECT max(run_id) FROM grading_runs WHERE status = 'succeeded')""")
        finally:
            await conn.close()
        return {r["lab_code"]: r["class"] for r in rows}

    classes = run_async(lab_classes)
    sign_in(page, accounts["viewer"], next_path="/labs")
    rows = page.locator("table#labs tbody tr")
    expect(rows.first).to_be_visible()
    links = [rows.nth(i).locator("td").first.locator("a").get_attribute("href") for i in range(rows.count())]
    assert sorted(links) == sorted(f"/labs/{code}" for code in classes)
    # Filter by the class most labs have: the table keeps exactly those labs.
    common = max(set(classes.values()), key=lambda c: sum(1 for k in classes.values() if k == c))
    page.locator("form#lab-filter select[name=class]").select_option(common)
    page.locator("form#lab-filter button[type=submit]").click()
    expect(page).to_have_url(re.compile(rf"class={common}\b"))
    shown = [rows.nth(i).locator("td").first.inner_text().strip() for i in range(rows.count())]
    assert sorted(shown) == sorted(code for code, c in classes.items() if c == common)


def test_an_upload_with_a_bad_row_shows_the_reject(page: Page, accounts: dict[str, str],
                                                   shot: Callable[..., Path], tmp_path: Path) -> None:
    sign_in(page, accounts["grader"], next_path="/imports")
    form = page.locator("form#upload")
    form.locator("select[name=kind]").select_option("categories")
    form.locator("input[name=file][type=file]").set_input_files(
        {"name": "categories.csv", "mimeType": "text/csv", "buffer": ONE_BAD_ROW})
    shot("form")
    form.locator("button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"/imports/\d+$"))
    expect(page.locator("#accepted-count")).to_have_text("1")
    expect(page.locator("#rejected-count")).to_have_text("1")
    rejects = page.locator("table#rejects tbody tr")
    expect(rejects).to_have_count(1)
    cells = [c.strip() for c in rejects.first.locator("td").all_inner_texts()]
    assert cells[:2] == ["3", "name"] and cells[-1]
    shot("import")
    with page.expect_download() as download:
        page.locator("a#rejects-csv").click()
    saved = tmp_path / "rejects.csv"
    download.value.save_as(saved)
    lines = saved.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0] == "row,column,value,reason,raw" and lines[1].startswith("3,name,")
    # The import heads the log, with its counts.
    import_path = page.url.removeprefix(page.url.split("/imports/")[0])
    page.goto("/imports")
    newest = page.locator("table#imports tbody tr").first
    expect(newest.locator(f"a[href='{import_path}']")).to_be_visible()
    assert [c.strip() for c in newest.locator("td.num").all_inner_texts()] == ["2", "1", "1"]


def test_switching_to_chinese(page: Page, accounts: dict[str, str], shot: Callable[..., Path]) -> None:
    sign_in(page, accounts["officer"])
    expect(page.locator("h1")).to_have_text("Dashboard")
    page.locator("nav#lang a[hreflang='zh-CN']").click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("h1")).to_have_text("总览")
    expect(page.locator("#main-nav")).to_contain_text("数据导入")
    shot("dashboard")
    # The choice stays on the next pages.
    page.locator("#main-nav a[href='/imports']").click()
    expect(page.locator("h1")).to_have_text("数据导入")
    expect(page.locator("form#upload")).to_contain_text("上传并导入")
    shot("imports")
    page.locator("nav#lang a[hreflang='en']").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("h1")).to_have_text("Imports")
