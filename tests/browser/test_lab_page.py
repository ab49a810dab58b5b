"""A lab's page in headless Chromium: its classes and reasons, its four charts with their data
points, the tables of its grades and pairs, and an officer's override seen on the page afterwards.
The selectors are the pages' contract (docs/web.md)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from labeval.db.pool import connect
from scoring.classes import CLASSES, DISPLAY

from .harness import LiveServer, run_async, sign_in

CHARTS = ("chart-differences", "chart-funnel", "chart-cusum", "chart-bias")


def _last_grades(live_server: LiveServer) -> list[tuple[str, str, int]]:
    """(lab, computed class, pairs) of the last run, the lab with most pairs first."""

    async def read() -> list[tuple[str, str, int]]:
        conn = await connect(live_server.database_url)
        try:
            rows = await conn.fetch(
                "SELECT lab_code, class, pairs FROM lab_grades WHERE run_id = "
                "(SELECT max(run_id) FROM grading_runs WHERE status = 'succeeded') ORDER BY pairs DESC, lab_code")
        finally:
            await conn.close()
        return [(r["lab_code"], r["class"], r["pairs"]) for r in rows]

    return run_async(read)


@pytest.fixture(scope="module")
def grades(live_server: LiveServer) -> list[tuple[str, str, int]]:
    return _last_grades(live_server)


def test_a_lab_with_its_charts(page: Page, accounts: dict[str, str], grades: list[tuple[str, str, int]],
                               shot: Callable[..., Path]) -> None:
    lab, computed, pairs = grades[0]
    assert pairs > 0
    sign_in(page, accounts["viewer"], next_path="/labs")
    # From the labs table, as a person gets there.
    page.locator(f"table#labs tbody tr td:first-child a[href='/labs/{lab}']").click()
    expect(page).to_have_url(re.compile(rf"/labs/{re.escape(lab)}$"))
    expect(page.locator("#computed-class")).to_contain_text(DISPLAY[computed])
    expect(page.locator("#effective-class")).to_be_visible()
    assert page.locator("#reasons li").count() >= 1
    for chart in CHARTS:
        svg = page.locator(f"figure#{chart} svg")
        expect(svg).to_be_visible()
        assert svg.locator(".point").count() >= 1, chart
        shot(chart, page.locator(f"figure#{chart}"))
    expect(page.locator("table#grade-history")).to_be_visible()
    pair_links = page.locator("table#pairs tbody tr a[href^='/samples/']")
    assert pair_links.count() >= 1
    pair_links.first.click()
    expect(page).to_have_url(re.compile(r"/samples/[^/]+$"))


def test_an_override_shows_on_the_lab_page(page: Page, accounts: dict[str, str],
                                           grades: list[tuple[str, str, int]]) -> None:
    # The last lab of the list: not the one the chart test reads.
    lab, computed, _ = grades[-1]
    target = next(c for c in reversed(CLASSES) if c != computed)
    until = (date.today() + timedelta(days=30)).isoformat()
    reason = "Browser test: on-site audit found the balance out of calibration"
    sign_in(page, accounts["officer"], next_path=f"/labs/{lab}")
    form = page.locator("form#override")
    form.locator("select[name=class_code]").select_option(target)
    form.locator("textarea[name=reason]").fill(reason)
    form.locator("input[name=until][type=date]").fill(until)
    form.locator("button[type=submit]").click()
    # Back on the lab's page (a query or a fragment may say what was saved).
    expect(page).to_have_url(re.compile(rf"/labs/{re.escape(lab)}([?#].*)?$"))
    expect(page.locator("#effective-class")).to_contain_text(DISPLAY[target])
    expect(page.locator("#computed-class")).to_contain_text(DISPLAY[computed])
    expect(page.locator("main")).to_contain_text(reason)
