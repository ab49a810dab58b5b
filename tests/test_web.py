"""The officers' pages against real PostgreSQL: sign-in, sessions, CSRF, roles, the sign-in rate
limit, the dashboard and the labs table, languages, and the catalogue's completeness."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient
from test_grading_run import AS_OF, seed, small_policy

from labeval.app import create_app
from labeval.config import Settings
from labeval.db.pool import connect
from labeval.grading.run import run_grading
from labeval.web.i18n import negotiate, read_catalogue
from labeval.web.session import VIEW

from web_catalogue import TEMPLATES, all_message_ids, untranslated_text
from web_client import PASSWORD, csrf_token, make_user, sign_in, submit

HTML = {"Accept": "text/html"}


@pytest.fixture
async def site(db_url: str, app_settings: Settings):
    """Two runs on the hand-built set (the second a day later: a dashboard has a run before),
    and one person per role."""
    conn = await connect(db_url)
    try:
        await seed(conn)
        await run_grading(conn, small_policy(), as_of=AS_OF - timedelta(days=1), trigger="test")
        await run_grading(conn, small_policy(), as_of=AS_OF, trigger="test")
        for role in ("officer", "viewer", "feed", "admin"):
            await make_user(conn, f"{role}.one", role)
    finally:
        await conn.close()
    app = create_app(app_settings, small_policy())
    async with AsyncTestClient(app) as client:
        # The tests look at each redirect, as a browser's address bar would show it.
        client.follow_redirects = False
        yield client


async def test_pages_need_a_session_and_send_the_reader_back_after_sign_in(site: AsyncTestClient) -> None:
    r = await site.get("/labs?class=II", headers=HTML)
    assert r.status_code == 303
    assert r.headers["location"] == "/signin?next=/labs%3Fclass%3DII"
    form = await site.get("/signin?next=/labs%3Fclass%3DII", headers=HTML)
    assert form.status_code == 200
    assert 'value="/labs?class=II"' in form.text
    r = await site.post("/signin", data={"username": "officer.one", "password": PASSWORD, "next": "/labs?class=II",
                                         "_csrf_token": csrf_token(form.text)}, headers=HTML)
    assert r.status_code == 303
    assert r.headers["location"] == "/labs?class=II"
    cookie = r.headers["set-cookie"]
    assert "labeval_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    # Served over plain http in the test: not Secure (auto); over https it would be.
    assert "Secure" not in cookie
    page = await site.get("/labs?class=II", headers=HTML)
    assert page.status_code == 200
    assert '<table id="labs">' in page.text


async def test_every_page_sends_a_stranger_to_sign_in_and_refuses_other_roles(site: AsyncTestClient) -> None:
    """Walks every page route the app has (pages added later included): without a session a GET
    goes to the sign-in page and a POST is refused; a person whose role is not on the route's
    list gets 403; a role on it gets through the guard."""
    app = site.app
    pages = [(m, route.path, h.opt) for route in app.routes if isinstance(route, HTTPRoute)
             for h in route.route_handlers if "session_roles" in h.opt for m in sorted(h.http_methods - {"OPTIONS"})]
    assert ("GET", "/", VIEW) in [(m, p, o["session_roles"]) for m, p, o in pages]
    for method, path, _ in pages:
        url = re.sub(r"\{\w+:(\w+)\}", lambda m: "999999" if m.group(1) == "int" else "x", path)
        if method == "GET":
            r = await site.get(url, headers=HTML)
            assert r.status_code == 303 and r.headers["location"].startswith("/signin?next="), (path, r.status_code)
    await sign_in(site, "feed.one")  # feed: a machine role, on no page's list
    for method, path, _ in pages:
        url = re.sub(r"\{\w+:(\w+)\}", lambda m: "999999" if m.group(1) == "int" else "x", path)
        if method == "GET":
            assert (await site.get(url, headers=HTML)).status_code == 403, path
    await submit(site, "/signin", "/signout", {})
    await sign_in(site, "admin.one")  # admin: every page
    for method, path, _ in pages:
        url = re.sub(r"\{\w+:(\w+)\}", lambda m: "999999" if m.group(1) == "int" else "x", path)
        if method == "GET":
            assert (await site.get(url, headers=HTML)).status_code not in (303, 401, 403), path


async def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(site: AsyncTestClient) -> None:
    wrong = await sign_in(site, "officer.one", "not the password")
    unknown = await sign_in(site, "nobody.here", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong username or password." in wrong.text and "Wrong username or password." in unknown.text
    assert "labeval_session" not in wrong.headers.get("set-cookie", "")
    assert (await site.get("/", headers=HTML)).status_code == 303


async def test_sign_in_is_rate_limited_per_username(site: AsyncTestClient) -> None:
    # Default: 5 failures per username in 15 minutes; the 6th attempt is refused even with the
    # right password, and says when to come back.
    for _ in range(5):
        assert (await sign_in(site, "viewer.one", "wrong password!")).status_code == 401
    r = await sign_in(site, "viewer.one", PASSWORD)
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 15 * 60
    assert "Too many failed attempts" in r.text
    # Another account from the same client is not locked by them (per-client limit is 20).
    assert (await sign_in(site, "officer.one")).status_code == 303


async def test_forms_without_the_csrf_token_are_refused(site: AsyncTestClient) -> None:
    r = await site.post("/signin", data={"username": "officer.one", "password": PASSWORD}, headers=HTML)
    assert r.status_code == 403
    assert "labeval_session" not in r.headers.get("set-cookie", "")


async def test_api_routes_need_no_csrf_token(site: AsyncTestClient, role_headers: dict) -> None:
    # Bearer keys carry no ambient credential a third-party page could ride on.
    r = await site.post("/api/v1/runs", json={}, headers=role_headers["grader"])
    assert r.status_code in (201, 202)


async def test_sign_out_ends_the_session(site: AsyncTestClient) -> None:
    await sign_in(site, "officer.one")
    token = site.cookies.get("labeval_session")
    assert (await site.get("/", headers=HTML)).status_code == 200
    r = await submit(site, "/", "/signout", {})
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    # The old cookie is dead on the server side too, not only deleted in this browser.
    site.cookies.set("labeval_session", token)
    assert (await site.get("/", headers=HTML)).status_code == 303


async def test_an_expired_session_asks_to_sign_in_again(site: AsyncTestClient, db_url: str) -> None:
    await sign_in(site, "officer.one")
    assert (await site.get("/", headers=HTML)).status_code == 200
    conn = await connect(db_url)
    try:
        await conn.execute("UPDATE web_sessions SET expires_at = now() - interval '1 second', "
                           "absolute_expiry = now() - interval '1 second'")
    finally:
        await conn.close()
    assert (await site.get("/", headers=HTML)).status_code == 303


async def test_roles_that_may_not_read_the_pages_get_403(site: AsyncTestClient) -> None:
    await sign_in(site, "feed.one")
    r = await site.get("/", headers=HTML)
    assert r.status_code == 403
    assert "Your role may not open or change this page." in r.text


async def test_dashboard_shows_classes_runs_and_flags(site: AsyncTestClient, db_url: str) -> None:
    await sign_in(site, "viewer.one")
    r = await site.get("/", headers=HTML)
    assert r.status_code == 200
    html = r.text
    for section in ('id="class-distribution"', 'id="moved"', 'id="flagged"', 'id="last-run"',
                    'id="imports-waiting"'):
        assert section in html
    conn = await connect(db_url)
    try:
        last = await conn.fetchval("SELECT max(run_id) FROM grading_runs WHERE status = 'succeeded'")
        counts = dict(await conn.fetch("SELECT class, count(*) FROM lab_grades WHERE run_id = $1 GROUP BY 1", last))
    finally:
        await conn.close()
    assert f'href="/runs/{last}"' in html
    # The chart's bars for the last run are the stored counts, class by class (5 graded labs:
    # the revoked one is not graded).
    assert sum(counts.values()) == 5
    chart = html.split('id="class-distribution"')[1].split("</svg>")[0]
    for code, label in (("I", "Ⅰ"), ("II", "Ⅱ"), ("III", "Ⅲ"), ("IV", "Ⅳ")):
        assert f'data-group="{label}" data-series="Last run" data-value="{counts.get(code, 0)}"' in chart


async def test_labs_table_filters_sorts_and_pages(site: AsyncTestClient, db_url: str) -> None:
    conn = await connect(db_url)
    try:
        await conn.execute("UPDATE labs SET province = '浙江' WHERE lab_code IN ('A', 'B')")
        classes = dict(await conn.fetch(
            "SELECT lab_code, class FROM lab_grades WHERE run_id = (SELECT max(run_id) FROM grading_runs)"))
    finally:
        await conn.close()
    await sign_in(site, "officer.one")
    all_labs = (await site.get("/labs", headers=HTML)).text
    codes = [c for c in ("A", "B", "C", "D", "E", "R") if f'<a href="/labs/{c}">' in all_labs]
    assert codes == ["A", "B", "C", "D", "E", "R"]
    assert "6 labs" in all_labs
    zj = (await site.get("/labs?province=浙江", headers=HTML)).text
    assert '<a href="/labs/A">' in zj and '<a href="/labs/B">' in zj and '<a href="/labs/C">' not in zj
    found = (await site.get("/labs?q=lab%20c", headers=HTML)).text
    assert '<a href="/labs/C">' in found and '<a href="/labs/A">' not in found
    desc = (await site.get("/labs?sort=code&dir=desc", headers=HTML)).text
    assert desc.index('<a href="/labs/R">') < desc.index('<a href="/labs/A">')
    cls = next(iter(sorted(set(classes.values()))))
    by_class = (await site.get(f"/labs?class={cls}", headers=HTML)).text
    assert sorted(c for c in classes if f'<a href="/labs/{c}">' in by_class) == sorted(
        c for c, k in classes.items() if k == cls)
    # A sort key or filter value that is not on the list is ignored, never put into SQL.
    odd = await site.get("/labs?sort=lab_code;drop table labs&flag=x'--", headers=HTML)
    assert odd.status_code == 200 and "6 labs" in odd.text


async def test_language_from_accept_language_and_the_switch(site: AsyncTestClient) -> None:
    await sign_in(site, "officer.one")
    zh = await site.get("/", headers={**HTML, "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
    assert '<html lang="zh-CN">' in zh.text and "检验机构监管信息平台" in zh.text and "总览" in zh.text
    en = await site.get("/", headers={**HTML, "Accept-Language": "en-GB"})
    assert '<html lang="en">' in en.text and "Lab Supervision Platform" in en.text
    r = await site.get("/lang/zh-CN?next=/labs", headers=HTML)
    assert r.status_code == 303 and r.headers["location"] == "/labs"
    # The switch wins over the browser's preference.
    labs = await site.get("/labs", headers={**HTML, "Accept-Language": "en"})
    assert '<html lang="zh-CN">' in labs.text and "产品类别" in labs.text
    # Only a path on this site is a redirect target.
    away = await site.get("/lang/en?next=//evil.example/x", headers=HTML)
    assert away.headers["location"] == "/"


async def test_page_errors_are_pages_and_api_errors_stay_problem_details(site: AsyncTestClient) -> None:
    page = await site.get("/no/such/page", headers=HTML)
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    api = await site.get("/api/v1/no/such", headers=HTML)
    assert api.status_code == 404 and api.headers["content-type"].startswith("application/problem+json")


async def test_static_files_are_served_from_the_package(site: AsyncTestClient) -> None:
    r = await site.get("/static/style.css")
    assert r.status_code == 200 and "@media print" in r.text


def test_negotiate_prefers_the_cookie_then_the_best_weighted_language() -> None:
    assert negotiate("zh-CN", "en") == "zh-CN"
    assert negotiate(None, "en;q=0.4, zh-TW;q=0.8") == "zh-CN"
    assert negotiate(None, "fr, en;q=0.1") == "en"
    assert negotiate("xx", None) == "en"
    assert negotiate(None, "zh;q=0, en;q=0.2") == "en"


@pytest.mark.parametrize("template", sorted(TEMPLATES.rglob("*.html")), ids=lambda p: p.name)
def test_templates_hold_no_untranslated_text(template: Path) -> None:
    assert untranslated_text(template.read_text(encoding="utf-8")) == []


def test_the_untranslated_text_check_catches_literal_text() -> None:
    # The check itself can fail: literal words, a literal placeholder, and a literal button value.
    assert untranslated_text("<p>Hello {{ _('World') }}</p>") == ["Hello"]
    assert untranslated_text('<input placeholder="Search">') == ['placeholder="Search"']
    assert untranslated_text("<p>{{ _('Fine') }} · 12 %</p>") == []


def test_every_message_has_a_chinese_translation() -> None:
    catalogue = read_catalogue("zh-CN")
    missing = [mid for mid in all_message_ids() if not (catalogue.get(mid) and catalogue.get(mid).string)]
    assert missing == []
