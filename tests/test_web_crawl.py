"""Every page an officer can reach, followed link by link from the dashboard on the demo data
set, in both languages: none answers a server error, every HTML page meets the accessibility
basics, and a Chinese page is Chinese (its language and its frame). The pages are many and built
by many hands; a crawl finds the page nobody thought to test."""

from __future__ import annotations

import re
from collections import deque
from datetime import date
from urllib.parse import urljoin, urlsplit

import pytest
from litestar.testing import AsyncTestClient
from test_web_a11y import problems

from labeval.app import create_app
from labeval.config import Settings
from labeval.db.pool import connect
from labeval.devtools.demo import run_demo
from scoring.policy import Policy

from web_client import make_user, sign_in, submit

HTML = {"Accept": "text/html"}
# Enough to reach every kind of page several times over (labs, samples, runs, imports …)
# without walking every sample of the demo.
MAX_PAGES = 160
# Links that change state or leave the pages (sign-out, the language switch) are not followed.
_SKIP = re.compile(r"^/(signout|lang/|static/|api/|schema|metrics)")
_HREF = re.compile(r'href="([^"#]+)"')


@pytest.fixture
async def demo_site(db_url: str, app_settings: Settings):
    conn = await connect(db_url)
    try:
        await run_demo(conn, Policy(), n_labs=12, seed=7, today=date(2026, 6, 30))
        await make_user(conn, "admin.crawl", "admin")
    finally:
        await conn.close()
    async with AsyncTestClient(create_app(app_settings, Policy())) as client:
        client.follow_redirects = False
        yield client


def _per_kind(path: str) -> str:
    # At most a few pages of one kind (/labs/{code}, /samples/{code}, …) are enough.
    parts = path.split("?")[0].strip("/").split("/")
    return "/".join(parts[:1] + ["*"] * (len(parts) - 1))


async def _crawl(client: AsyncTestClient, lang: str) -> dict[str, int]:
    seen: dict[str, int] = {}
    kinds: dict[str, int] = {}
    queue = deque(["/"])
    while queue and len(seen) < MAX_PAGES:
        url = queue.popleft()
        if url in seen:
            continue
        r = await client.get(url, headers={**HTML, "Accept-Language": lang})
        seen[url] = r.status_code
        assert r.status_code < 500, (url, r.status_code, r.text[:2000])
        if not r.headers.get("content-type", "").startswith("text/html"):
            continue
        assert problems(r.text) == [], url
        if lang == "zh-CN":
            assert '<html lang="zh-CN">' in r.text and "检验机构监管信息平台" in r.text, url
        for href in _HREF.findall(r.text):
            target = urljoin(url, href.replace("&amp;", "&"))
            path = urlsplit(target)
            if path.netloc or _SKIP.match(path.path):
                continue
            local = path.path + (f"?{path.query}" if path.query else "")
            kind = _per_kind(local)
            if local not in seen and kinds.get(kind, 0) < 6:
                kinds[kind] = kinds.get(kind, 0) + 1
                queue.append(local)
    return seen


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
async def test_every_reachable_page_answers_without_a_server_error(demo_site: AsyncTestClient, lang: str) -> None:
    await sign_in(demo_site, "admin.crawl")
    # A second run, so that runs have a run before them (diffs, moves).
    await submit(demo_site, "/runs", "/runs", {"as_of": "2026-06-30"})
    seen = await _crawl(demo_site, lang)
    reached = {_per_kind(u).split("/")[0] for u in seen}
    # The crawl reached every area of the platform from the dashboard's links.
    assert {"", "labs", "samples", "runs", "imports", "draws", "plans"} <= reached, sorted(reached)
    assert all(code < 500 for code in seen.values())
    assert sum(1 for code in seen.values() if code == 200) >= 30, len(seen)
