"""The lab page, its override form, its printable report and the sample page, against real
PostgreSQL: charts with their points, an override set through the form, CSRF and roles."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from litestar.testing import AsyncTestClient
from test_grading_run import AS_OF, seed, small_policy
from test_web_a11y import problems

from labeval.app import create_app
from labeval.config import Settings
from labeval.db.pool import connect
from labeval.grading import lab_charts as lab_charts_module
from labeval.grading.overrides import today_utc
from labeval.grading.run import run_grading

from web_client import csrf_token, make_user, sign_in, submit

HTML = {"Accept": "text/html"}
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
async def site(db_url: str, app_settings: Settings):
    """The hand-built set graded twice (a grade history of two rows), one person per role."""
    conn = await connect(db_url)
    try:
        await seed(conn)
        await run_grading(conn, small_policy(), as_of=AS_OF - timedelta(days=1), trigger="test")
        await run_grading(conn, small_policy(), as_of=AS_OF, trigger="test")
        for role in ("officer", "viewer", "admin"):
            await make_user(conn, f"{role}.one", role)
    finally:
        await conn.close()
    app = create_app(app_settings, small_policy())
    async with AsyncTestClient(app) as client:
        client.follow_redirects = False
        yield client


def figure_svg(html: str, figure_id: str) -> ET.Element:
    m = re.search(rf'<figure id="{figure_id}">\s*(<svg.*?</svg>)', html, flags=re.S)
    assert m, f"no svg in figure#{figure_id}"
    return ET.fromstring(m.group(1))


def points(svg: ET.Element) -> list[ET.Element]:
    return [e for e in svg.iter() if "point" in (e.get("class") or "").split()]


def section(html: str, element_id: str) -> str:
    start = html.index(f'id="{element_id}"')
    return html[start:html.index("</", html.index(">", start)) + 200]


async def test_lab_page_shows_class_reasons_charts_history_and_pairs(site: AsyncTestClient, db_url: str) -> None:
    conn = await connect(db_url)
    try:
        cls, run_id = await conn.fetchrow(
            "SELECT class, run_id FROM lab_grades WHERE lab_code = 'A' ORDER BY run_id DESC LIMIT 1")
        n_reasons = await conn.fetchval(
            "SELECT jsonb_array_length(reasons) FROM lab_grades WHERE lab_code = 'A' AND run_id = $1", run_id)
    finally:
        await conn.close()
    await sign_in(site, "viewer.one")
    r = await site.get("/labs/A", headers=HTML)
    assert r.status_code == 200
    html = r.text
    display = {"I": "Ⅰ", "II": "Ⅱ", "III": "Ⅲ", "IV": "Ⅳ"}[cls]
    assert display in section(html, "effective-class") and display in section(html, "computed-class")
    assert len(re.findall(r"<li>", html.split('id="reasons"')[1].split("</ol>")[0])) == n_reasons > 0
    # A: 14 pairs in the window (6 + 6 with B, 2 as retest of E), all with s = 0 (both report 50.0).
    diff = figure_svg(html, "chart-differences")
    assert diff.get("role") == "img"
    pts = points(diff)
    assert len(pts) == 14 and {float(p.get("data-y")) for p in pts} == {0.0}
    assert {p.get("data-sample") for p in pts} == {f"S{i:03d}" for i in (*range(1, 13), 25, 26)}
    # The funnel has every graded lab with pairs (the revoked R has none), A highlighted.
    funnel = points(figure_svg(html, "chart-funnel"))
    assert sorted(p.get("data-lab") for p in funnel) == ["A", "B", "C", "D", "E"]
    assert [p.get("data-lab") for p in funnel if "highlight" in p.get("class")] == ["A"]
    assert len(points(figure_svg(html, "chart-cusum"))) == 14
    assert len(points(figure_svg(html, "chart-bias"))) >= 1
    history = html.split('<table id="grade-history">')[1].split("</table>")[0]
    assert history.count("<tr><td>") == 2
    pairs = html.split('<table id="pairs">')[1].split("</table>")[0]
    assert len(re.findall(r'<a href="/samples/S\d{3}">', pairs)) == 14
    # A viewer sees no override form.
    assert 'id="override"' not in html


async def test_an_officer_sets_an_override_through_the_form(site: AsyncTestClient, db_url: str) -> None:
    await sign_in(site, "officer.one")
    until = (today_utc() + timedelta(days=30)).isoformat()
    r = await submit(site, "/labs/C", "/labs/C/override",
                     {"class_code": "IV", "reason": "Falsified report <b>R-2026-001</b>", "until": until})
    assert r.status_code == 303
    assert r.headers["location"] == "/labs/C?saved=1#override"
    html = (await site.get("/labs/C?saved=1", headers=HTML)).text
    assert "Ⅳ" in section(html, "effective-class")
    assert "The override is saved" in html
    # The reason is shown escaped, as text.
    assert "Falsified report &lt;b&gt;R-2026-001&lt;/b&gt;" in html
    conn = await connect(db_url)
    try:
        row = await conn.fetchrow("SELECT class, reason, valid_until::text, set_by FROM grade_overrides WHERE lab_code = 'C'")
    finally:
        await conn.close()
    assert dict(row) == {"class": "IV", "reason": "Falsified report <b>R-2026-001</b>", "valid_until": until,
                         "set_by": row["set_by"]}
    assert row["set_by"].endswith(":officer.one")


async def test_override_form_errors_are_shown_in_the_form_and_nothing_is_stored(
    site: AsyncTestClient, db_url: str
) -> None:
    await sign_in(site, "officer.one")
    past = (today_utc() - timedelta(days=1)).isoformat()
    r = await submit(site, "/labs/C", "/labs/C/override", {"class_code": "V", "reason": "  ", "until": past})
    assert r.status_code == 422
    form = r.text.split('<form id="override"')[1].split("</form>")[0]
    for field in ("e-class", "e-reason", "e-until"):
        assert f'id="{field}"' in form
    assert "Give the reason for the override." in form
    r = await submit(site, "/labs/C", "/labs/C/override", {"class_code": "II", "reason": "x", "until": "soon"})
    assert r.status_code == 422
    assert 'id="e-until"' in r.text and 'value="soon"' in r.text
    conn = await connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM grade_overrides") == 0
    finally:
        await conn.close()


async def test_override_without_csrf_or_by_a_viewer_is_refused(site: AsyncTestClient, db_url: str) -> None:
    until = (today_utc() + timedelta(days=30)).isoformat()
    data = {"class_code": "IV", "reason": "no token", "until": until}
    await sign_in(site, "officer.one")
    r = await site.post("/labs/C/override", data=data, headers=HTML)
    assert r.status_code == 403
    await submit(site, "/labs/C", "/signout", {})
    await sign_in(site, "viewer.one")
    # The viewer's page has a token (sign-out form), but the role may not override.
    page = (await site.get("/labs/C", headers=HTML)).text
    r = await site.post("/labs/C/override", data={**data, "_csrf_token": csrf_token(page)}, headers=HTML)
    assert r.status_code == 403
    conn = await connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM grade_overrides") == 0
    finally:
        await conn.close()


async def test_unknown_lab_and_sample_are_404_pages(site: AsyncTestClient) -> None:
    await sign_in(site, "viewer.one")
    for url in ("/labs/NOPE", "/labs/NOPE/report", "/samples/NOPE"):
        r = await site.get(url, headers=HTML)
        assert r.status_code == 404, url
        assert "<html" in r.text


async def test_report_is_printable_with_the_charts(site: AsyncTestClient, db_url: str) -> None:
    conn = await connect(db_url)
    try:  # one pair that does not agree (d = −3 > CD = 2.8), reported inside the run's window
        await conn.execute("INSERT INTO samples (sample_code, category_code, original_lab_code) VALUES ('S999', 'TEX', 'A')")
        await conn.execute(
            "INSERT INTO results (sample_code, item_code, lab_code, role, value, verdict, reported_on) VALUES "
            "('S999', 'Q', 'A', 'original', 50.0, 'pass', '2026-05-01'), ('S999', 'Q', 'B', 'retest', 53.0, 'pass', '2026-05-20')")
    finally:
        await conn.close()
    await sign_in(site, "viewer.one")
    r = await site.get("/labs/A/report", headers=HTML)
    assert r.status_code == 200
    html = r.text
    assert '<link rel="stylesheet" href="/static/report.css">' in html
    css = await site.get("/static/report.css")
    assert css.status_code == 200 and "@media print" in css.text
    for fig in ("chart-differences", "chart-funnel", "chart-cusum", "chart-bias"):
        assert points(figure_svg(html, fig))
    assert 'id="override"' not in html and 'table id="grade-history"' in html
    disagreements = html.split('<table id="pairs">')[1].split("</table>")[0]
    assert re.findall(r"<tr><td>(S\d+)</td>", disagreements) == ["S999"]
    assert "Discrepant" in disagreements
    assert "15 pairs in the window." in html


async def test_sample_page_shows_every_result_side_by_side(site: AsyncTestClient) -> None:
    await sign_in(site, "viewer.one")
    r = await site.get("/samples/S001", headers=HTML)
    assert r.status_code == 200
    html = r.text
    table = html.split('<table class="results">')[1].split("</table>")[0]
    rows = re.findall(r'<tr class="role-(\w+)"><td>[^<]*</td><td><a href="/labs/(\w+)">', table)
    assert rows == [("original", "A"), ("retest", "B")]
    assert html.count("50") >= 2
    assert "Upper limit" in html and "Consistent" in html


async def test_lab_page_in_chinese(site: AsyncTestClient) -> None:
    await sign_in(site, "viewer.one")
    r = await site.get("/labs/A", headers={**HTML, "Accept-Language": "zh-CN"})
    assert r.status_code == 200
    assert '<html lang="zh-CN">' in r.text
    title = figure_svg(r.text, "chart-funnel").find(f"{SVG}title").text
    assert title and not title.isascii()


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
async def test_the_lab_pages_meet_the_accessibility_basics(site: AsyncTestClient, lang: str) -> None:
    await sign_in(site, "officer.one")  # the officer's page has the override form too
    for path in ("/labs/A", "/labs/A/report", "/samples/S001"):
        r = await site.get(path, headers={**HTML, "Accept-Language": lang})
        assert r.status_code == 200, path
        assert problems(r.text) == [], path


async def test_a_run_computes_the_lab_series_before_the_first_lab_page(
    db_url: str, app_settings: Settings, monkeypatch,
) -> None:
    conn = await connect(db_url)
    try:
        await seed(conn)
        await make_user(conn, "officer.one", "officer")
    finally:
        await conn.close()
    computed = []
    real_compute = lab_charts_module._compute

    def counted(pairs, policy, as_of):  # noqa: ANN001, ANN202 - the same arguments, passed through
        computed.append(as_of)
        return real_compute(pairs, policy, as_of)

    monkeypatch.setattr(lab_charts_module, "_compute", counted)
    app = create_app(app_settings, small_policy())
    async with AsyncTestClient(app) as client:
        client.follow_redirects = False
        await sign_in(client, "officer.one")
        r = await submit(client, "/runs", "/runs", {"as_of": AS_OF.isoformat()})
        assert r.status_code == 303, r.text
        run_id = int(r.headers["location"].rsplit("/", 1)[1])
        cache = app.state.lab_series
        # Computed after the run, off the request that started it: no page has been viewed yet.
        # (The app runs on the test client's own loop: wait there, from a thread.)
        await asyncio.to_thread(client.blocking_portal.call, cache.settled)
        assert [key[0] for key in cache.keys()] == [run_id] and computed == [AS_OF]
        # The first lab page after the run, and every other lab's, only read what was computed.
        for code in ("A", "B", "C", "D", "E"):
            page = await client.get(f"/labs/{code}", headers=HTML)
            assert page.status_code == 200 and 'id="chart-differences"' in page.text, code
        assert computed == [AS_OF]
        # New results change the pairs' version: the next page computes the series again, once.
        conn = await connect(db_url)
        try:
            await conn.execute("INSERT INTO imports (kind, file_name, checksum, source) VALUES ('results', 'x', 'x', 'cli')")
        finally:
            await conn.close()
        for code in ("A", "B"):
            assert (await client.get(f"/labs/{code}", headers=HTML)).status_code == 200
        assert computed == [AS_OF, AS_OF]
    # Each application holds its own cache (made in its lifespan), none at module level.
    other = create_app(app_settings, small_policy())
    async with AsyncTestClient(other):
        assert other.state.lab_series is not cache and other.state.lab_series.keys() == []
