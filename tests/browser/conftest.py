"""The pages in a real headless Chromium, driven by Playwright.

One live server for the browser tests: the real app (labeval.app.create_app) served by uvicorn in a
background thread on a free loopback port, on its own database cloned from the migrated test
template and loaded with the demo data (labeval.devtools.demo.run_demo: intake, then a grading run).
The fixtures here are package-scoped, so the server and the browser stop when the last browser test
has run, before the rest of the suite.

The browser is the system's Chromium (Debian's `chromium`; LABEVAL_CHROMIUM names another binary),
never a browser Playwright downloads. The tests skip only when no Chromium is found. Every test gets
a fresh browser context (no cookies carried over) and leaves a full-page screenshot in
test-artifacts/screenshots/ (`<test>.png`, `<test>-failed.png` when it failed); `shot(name)` saves
more on the way. Requests to any host but the live server are aborted and fail the test: the pages
must work offline.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import asyncpg
import pytest
import uvicorn
from playwright.sync_api import Browser, Locator, Page, Request, Route, expect, sync_playwright

from labeval.app import create_app
from labeval.config import Settings
from labeval.db.pool import connect
from labeval.db.server import with_database
from labeval.devtools.demo import run_demo
from scoring.policy import Policy

from .harness import (
    CHROMIUM_ARGS,
    DEMO_LABS,
    DEMO_SEED,
    PAGE_TIMEOUT_MS,
    SERVER_START_S,
    LiveServer,
    find_chromium,
    run_async,
)
from web_client import make_user

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"

@pytest.fixture(scope="package")
def live_db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A database of its own for the live server, with the demo data loaded and graded."""
    name = f"browser_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def load(url: str) -> None:
        conn = await connect(url)
        try:
            await run_demo(conn, Policy(), n_labs=DEMO_LABS, seed=DEMO_SEED, today=date.today())
        finally:
            await conn.close()

    run_async(lambda: admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    url = with_database(pg_admin_url, name)
    try:
        run_async(lambda: load(url))
        yield url
    finally:
        run_async(lambda: admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="package")
def accounts(live_db_url: str) -> dict[str, str]:
    """One person per role that opens pages on the live server: role -> username (the password
    is web_client.PASSWORD)."""

    async def make() -> dict[str, str]:
        conn = await connect(live_db_url)
        try:
            return {role: (await make_user(conn, f"{role}.browser", role)).username
                    for role in ("officer", "grader", "viewer")}
        finally:
            await conn.close()

    return run_async(make)


@pytest.fixture(scope="package")
def live_server(live_db_url: str) -> Iterator[LiveServer]:
    """The app under uvicorn in a thread, on a port the kernel picked (bound before the server
    starts, so no other process can take it in between)."""
    settings = Settings(database_url=live_db_url, grading_cron="",
                        key_pepper="pepper-for-browser-tests-" + "0" * 32)
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # Our own loop (asyncio): the live server must not depend on uvloop being installed.
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", loop="asyncio"))
    # uvicorn installs no signal handlers outside the main thread.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(SERVER_START_S)
            sock.close()
            raise RuntimeError("the live server did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", database_url=live_db_url)
    finally:
        server.should_exit = True
        thread.join(SERVER_START_S)
        sock.close()


@pytest.fixture(scope="package")
def screenshot_dir() -> Path:
    """Emptied once per run: what is there afterwards is this run's."""
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


@pytest.fixture(scope="package")
def browser(live_server: LiveServer, accounts: dict[str, str]) -> Iterator[Browser]:
    # After the live server and the accounts (they run coroutines in this thread's way before
    # Playwright holds it).
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set LABEVAL_CHROMIUM)")
    # expect() waits as long as a page may take (its default, 5 s, is short on a busy machine).
    expect.set_options(timeout=PAGE_TIMEOUT_MS)
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test in this folder carries the marker, so `-m "not browser"` leaves them all out.
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.browser)


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    # Kept on the item so the page fixture knows, at teardown, whether the test failed.
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _failed(item: pytest.Item) -> bool:
    reports = item.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


@pytest.fixture
def page(browser: Browser, live_server: LiveServer, screenshot_dir: Path,
         request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page in a fresh context (no cookies) whose relative URLs go to the live server."""
    context = browser.new_context(base_url=live_server.url, locale="en-US",
                                  viewport={"width": 1280, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    offsite: list[str] = []

    def keep_local(route: Route, req: Request) -> None:
        if live_server.same_origin(req.url):
            route.continue_()
        else:
            offsite.append(req.url)
            route.abort("blockedbyclient")

    context.route("**/*", keep_local)
    new_page = context.new_page()
    new_page.offsite_requests = offsite  # type: ignore[attr-defined]
    try:
        yield new_page
    finally:
        suffix = "-failed" if _failed(request.node) else ""
        try:
            new_page.screenshot(path=screenshot_dir / f"{request.node.name}{suffix}.png", full_page=True)
        finally:
            context.close()
    assert not offsite, f"the page asked for files off the server (pages must work offline): {offsite}"


@pytest.fixture
def shot(page: Page, screenshot_dir: Path, request: pytest.FixtureRequest) -> Callable[..., Path]:
    """shot("step") saves a full-page screenshot `<test>-step.png` now; shot("step", locator)
    saves only that element (a chart, a table)."""

    def save(step: str, element: Locator | None = None) -> Path:
        path = screenshot_dir / f"{request.node.name}-{step}.png"
        if element is None:
            page.screenshot(path=path, full_page=True)
        else:
            element.screenshot(path=path)
        return path

    return save
