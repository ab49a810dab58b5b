"""What the browser tests share besides fixtures: the live server's address, the Chromium to
drive, a way to run database coroutines while Playwright holds the test thread, and signing in."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from playwright.sync_api import Page

from web_client import PASSWORD

# The demo's seed and size (the demo an officer starts has 40 labs, seed 2018; 30 keep the load
# short and still plant every kind of bad lab and both isolated groups).
DEMO_LABS = 30
DEMO_SEED = 2018

# Headless, no sandbox (CI runs as root), and nothing that reaches out on its own: on a closed
# network Chromium's background connections (updates, sync, QUIC probes) are refused and stall it.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Playwright itself passes a fresh --user-data-dir (a temporary profile) to every browser it
# launches; it refuses the flag in args for that reason.

# Waits for a page or an element, not assertions on speed: generous for a 2-core machine under load.
PAGE_TIMEOUT_MS = 30_000
SERVER_START_S = 60.0

T = TypeVar("T")


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to the end in a thread of its own. While Playwright's sync API is open, the
    test thread counts as inside a running event loop (its loop lives in a greenlet), and
    asyncio.run() refuses to start there."""
    out: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            out.append(asyncio.run(make()))
        except BaseException as exc:  # handed back to the caller below
            failure.append(exc)

    thread = threading.Thread(target=work, name="run-async")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return out[0]


def find_chromium() -> str | None:
    """LABEVAL_CHROMIUM, else the first Chromium on PATH."""
    configured = os.environ.get("LABEVAL_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


@dataclass(frozen=True, kw_only=True)
class LiveServer:
    url: str
    database_url: str

    def same_origin(self, url: str) -> bool:
        ours, theirs = urlsplit(self.url), urlsplit(url)
        return theirs.scheme in {"data", "blob", "about"} or (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc)


def sign_in(page: Page, username: str, password: str = PASSWORD, *, next_path: str = "/") -> None:
    """Sign in through the form, as a person would, and wait for the page it leads to."""
    page.goto(f"/signin?next={quote(next_path, safe='/')}")
    form = page.locator("form#signin")
    form.locator("input[name=username]").fill(username)
    form.locator("input[name=password]").fill(password)
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
