"""The harness itself: the live server holds the graded demo, and a page cannot reach off the server."""

from __future__ import annotations

from playwright.sync_api import Page

from labeval.db.pool import connect

from .harness import DEMO_LABS, LiveServer, run_async


def test_requests_off_the_server_are_blocked_and_recorded(page: Page) -> None:
    # The OpenAPI docs page loads its viewer from a CDN: the harness must stop that request.
    page.goto("/schema")
    page.wait_for_load_state("networkidle")
    offsite = page.offsite_requests  # type: ignore[attr-defined]
    assert offsite and all(not url.startswith(page.url.split("/schema")[0]) for url in offsite)
    offsite.clear()


def test_the_live_server_serves_the_graded_demo(live_server: LiveServer) -> None:
    async def count() -> tuple[int, int]:
        conn = await connect(live_server.database_url)
        try:
            labs = await conn.fetchval("SELECT count(*) FROM labs")
            runs = await conn.fetchval("SELECT count(*) FROM grading_runs WHERE status = 'succeeded'")
        finally:
            await conn.close()
        return labs, runs

    # The demo's lab count (DEMO_LABS) and its one grading run.
    assert run_async(count) == (DEMO_LABS, 1)
