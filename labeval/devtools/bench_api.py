"""Benchmark target `api`: requests per second and latency of two read routes of the served app,
against a bare litestar hello-world app served the same way.

The data: the demo world (labeval.devtools.demo: labs, items, samples and results loaded through
intake, then graded), loaded into the scratch database unless it already holds labs, and two API
keys (roles feed and viewer). The routes:

* ``GET /api/v1/feed/eligibility?product_category=C`` for the category most labs are accredited
  for (key role feed);
* ``GET /api/v1/labs/{code}`` for a graded lab (key role viewer).

Each server runs in a process of its own (``labeval serve``, and ``python -m
labeval.devtools.bench_hello`` for the floor: the same server with the same options, one worker),
both up for the whole measurement, and the load comes from another process: wrk when it is
installed, else labeval's own generator (labeval.devtools.bench_load, two processes). Every cell is
``n`` requests (wrk runs for a time: as long as the warm-up's rate says ``n`` answers take) at 50
and at 200 concurrent keep-alive connections, after a warm-up; each cell is run REPEATS times, the
floor's and the routes' cells alternating (a busy spell of a shared machine then falls on both),
and each figure is the median of its runs. Any answer other than 2xx, or any transport error,
fails the measurement rather than count as a fast answer.

seconds is the time per request of the slower route at 200 connections (1 / its req/s), and
floor_seconds the hello-world's; ratio = floor req/s / route req/s. Goal: at 200 connections,
each route serves >= 40 % of the floor's req/s (ratio <= 2.5) with a p99 latency <= 2x the floor's.

The served app runs with the grading schedule off (a scheduler catching up a missed run would
grade during the measurement) and a request budget per key far above what the benchmark sends
(the budget is a per-key token bucket; at its default the benchmark would measure 429 answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np

from labeval.db import apikeys
from labeval.db import bench as bq
from labeval.db.migrate import migrate
from labeval.db.pool import connect
from labeval.devtools.bench_types import Measurement
from labeval.devtools.demo import run_demo
from scoring.policy import Policy

DEFAULT_N = 20_000
QUICK_N = 300
CONCURRENCY = (50, 200)
# Runs per cell (the median is reported); --quick makes one.
REPEATS = 3
GOAL = "at 200 connections: >= 40% of the floor's req/s (ratio <= 2.5), p99 <= 2x the floor's"
# The demo world's size: a national register is larger, but the two routes read one category's
# labs and one lab, so their cost depends on the data little (see docs/performance.md).
DEMO_LABS = 200
QUICK_DEMO_LABS = 40
# How cost grows with the data: LABEVAL_BENCH_API_LABS=1000 labeval bench api (6 to 5000 labs).
LABS_ENV = "LABEVAL_BENCH_API_LABS"
# A pepper for the scratch database's keys only (the served app is given the same one).
PEPPER = "labeval-bench-pepper-not-a-secret-0000"
# Bounds of every load run (count first, then time): a run never goes on by itself.
CELL_TIMEOUT = 300.0
QUICK_CELL_TIMEOUT = 30.0
STARTUP_TIMEOUT = 90.0

# wrk runs for a duration, not a count: print its figures as one JSON line at the end.
_WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"answers":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"non_2xx":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.status, e.connect, e.read, e.write, e.timeout))
end
"""
# wrk's run is timed: the first (warm-up) run of a route lasts this long and its rate sets how
# long the measured runs last to answer about n requests.
WRK_WARMUP_SECONDS = 2
# A measured wrk run lasts at most this long, whatever the warm-up's rate said.
WRK_MAX_SECONDS = 60
# ... and at least this long in a quick run: a one-second run of 200 connections on a busy
# machine can end before any of them is answered (seen in a loaded test run), and a quick run
# checks that the target works, which a window with no answer cannot say.
WRK_QUICK_MIN_SECONDS = 3


class Cell(msgspec.Struct, kw_only=True, frozen=True):
    answers: int
    rps: float
    p50_ms: float
    p99_ms: float


class LoadFailed(RuntimeError):
    """A load run saw errors or non-2xx answers, or no generator could run."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _served(cmd: list[str], env: dict[str, str], port: int, ready_path: str, log: Path) -> Iterator[str]:
    """Start a server process; yield its base URL once ready_path answers 200; stop it after."""
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise LoadFailed(f"the server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(base + ready_path, timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise LoadFailed(f"the server did not answer {ready_path} within {STARTUP_TIMEOUT:.0f} s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wrk(url: str, connections: int, seconds: int, headers: list[str]) -> Cell:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_SCRIPT)
        script = f.name
    try:
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", script]
        for h in headers:
            cmd += ["-H", h]
        proc = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=False)
    finally:
        os.unlink(script)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise LoadFailed(f"wrk failed (exit {proc.returncode}): {proc.stderr[-500:] or proc.stdout[-500:]}")
    r = json.loads(line[len("BENCH "):])
    if r["non_2xx"] or r["connect"] or r["read"] or r["write"] or r["timeout"] or not r["answers"]:
        raise LoadFailed(f"{url}: errors under load {r}")
    return Cell(answers=r["answers"], rps=r["answers"] / (r["duration_us"] / 1e6), p50_ms=r["p50_us"] / 1000,
                p99_ms=r["p99_us"] / 1000)


PYTHON_PROCESSES = 2


def _python(url: str, connections: int, requests: int, timeout: float, headers: list[str]) -> Cell:
    per = [connections // PYTHON_PROCESSES + (i < connections % PYTHON_PROCESSES) for i in range(PYTHON_PROCESSES)]
    share = [requests // PYTHON_PROCESSES + (i < requests % PYTHON_PROCESSES) for i in range(PYTHON_PROCESSES)]
    procs = [
        subprocess.Popen([sys.executable, "-m", "labeval.devtools.bench_load", url, str(c), str(n), str(timeout),
                          *headers], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c, n in zip(per, share, strict=True)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout + 60)
        if p.returncode != 0:
            raise LoadFailed(f"the load generator failed (exit {p.returncode}): {err.decode()[-500:]}")
        results.append(json.loads(out))
    answers = sum(r["answers"] for r in results)
    if any(r["non_2xx"] or r["errors"] for r in results) or answers == 0:
        raise LoadFailed(f"{url}: errors under load: " + str([{k: r[k] for k in ("answers", "non_2xx", "errors")}
                                                              for r in results]))
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    lat = np.concatenate([np.asarray(r["latencies"]) for r in results])
    return Cell(answers=answers, rps=answers / span, p50_ms=float(np.percentile(lat, 50)) * 1000,
                p99_ms=float(np.percentile(lat, 99)) * 1000)


def generator() -> str:
    """The load generator this machine has: wrk when installed, else labeval's own."""
    return "wrk" if shutil.which("wrk") else "python"


class Loader:
    """Runs the cells of each URL: a warm-up, then about `requests` answers per cell."""

    def __init__(self, requests: int, timeout: float, *, min_seconds: int = 1) -> None:
        self.requests, self.timeout, self.min_seconds = requests, timeout, min_seconds
        self.kind = generator()
        # wrk: how long a cell of each URL runs (set by its warm-up's rate).
        self.seconds: dict[str, int] = {}

    def warm_up(self, url: str, headers: list[str]) -> None:
        if self.kind == "wrk":
            rate = _wrk(url, 50, WRK_WARMUP_SECONDS, headers).rps
            self.seconds[url] = int(min(max(self.min_seconds, round(self.requests / rate)), self.timeout,
                                        WRK_MAX_SECONDS))
        else:
            _python(url, 50, min(self.requests, 500), self.timeout, headers)

    def cell(self, url: str, connections: int, headers: list[str]) -> Cell:
        if self.kind == "wrk":
            return _wrk(url, connections, self.seconds.get(url, WRK_WARMUP_SECONDS), headers)
        return _python(url, connections, self.requests, self.timeout, headers)


def _median(runs: list[Cell]) -> Cell:
    """Each figure's median over the runs of a cell (a run's p50 is at most its p99, so the
    medians keep that order)."""
    return Cell(answers=int(np.median([r.answers for r in runs])), rps=float(np.median([r.rps for r in runs])),
                p50_ms=float(np.median([r.p50_ms for r in runs])), p99_ms=float(np.median([r.p99_ms for r in runs])))


async def _prepare(database_url: str, n_labs: int, seed: int) -> tuple[str, str, str, str, int]:
    """(category, lab, feed key, viewer key, labs): the demo world unless the database has labs."""
    conn = await connect(database_url)
    try:
        await migrate(conn)
        if await bq.lab_count(conn) == 0:
            await run_demo(conn, Policy(), n_labs=n_labs, seed=seed or 2018)
        category = await bq.busiest_category(conn)
        lab = await bq.graded_lab(conn)
        if category is None or lab is None:
            raise LoadFailed("the database has no accredited scope or no graded lab to ask for")
        feed = await apikeys.create(conn, PEPPER.encode(), name="bench-feed", role="feed")
        viewer = await apikeys.create(conn, PEPPER.encode(), name="bench-viewer", role="viewer")
        return category, lab, feed.key, viewer.key, await bq.lab_count(conn)
    finally:
        await conn.close()


def _server_env(database_url: str, data_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEVAL_")}
    env.update({
        "LABEVAL_DATABASE_URL": database_url,
        "LABEVAL_KEY_PEPPER": PEPPER,
        "LABEVAL_GRADING_CRON": "",
        "LABEVAL_RATE_LIMIT_PER_MINUTE": str(10**9),
        "LABEVAL_DATA_DIR": data_dir,
    })
    return env


def measure(n: int, *, seed: int = 0, database_url: str | None = None) -> Measurement:
    if database_url is None:
        raise ValueError("the api benchmark needs a database")
    quick = n <= QUICK_N
    n_labs = int(os.environ.get(LABS_ENV) or (QUICK_DEMO_LABS if quick else DEMO_LABS))
    category, lab, feed_key, viewer_key, labs = asyncio.run(_prepare(database_url, n_labs, seed))
    loader = Loader(n, QUICK_CELL_TIMEOUT if quick else CELL_TIMEOUT,
                    min_seconds=WRK_QUICK_MIN_SECONDS if quick else 1)
    repeats = 1 if quick else REPEATS
    runs: dict[str, list[Cell]] = {}
    with tempfile.TemporaryDirectory(prefix="labeval-bench-api-") as tmp:
        env = _server_env(database_url, tmp)
        hello_port, port = _free_port(), _free_port()
        with _served([sys.executable, "-m", "labeval.devtools.bench_hello", str(hello_port)], env, hello_port,
                     "/hello", Path(tmp) / "hello.log") as hello_base, \
             _served([sys.executable, "-m", "labeval.cli", "serve", "--port", str(port)], env, port, "/health",
                     Path(tmp) / "labeval.log") as base:
            # Both servers are up; only the one under load works. The floor and the routes
            # alternate, cell by cell, so a busy spell of the machine falls on both alike.
            routes = {
                "hello": (hello_base + "/hello", []),
                "eligibility": (base + f"/api/v1/feed/eligibility?product_category={category}",
                                [f"Authorization: Bearer {feed_key}"]),
                "lab": (base + f"/api/v1/labs/{lab}", [f"Authorization: Bearer {viewer_key}"]),
            }
            for url, headers in routes.values():
                loader.warm_up(url, headers)
            for _ in range(repeats):
                for c in CONCURRENCY:
                    for name, (url, headers) in routes.items():
                        runs.setdefault(f"{name}_c{c}", []).append(loader.cell(url, c, headers))
    cells = {key: _median(r) for key, r in runs.items()}
    details: dict[str, float | int | str] = {
        "generator": generator(), "server": "uvicorn", "workers": 1, "labs": labs,
        "product_category": category, "lab": lab,
        "timing": f"median of {repeats} run(s) per cell, floor and routes alternating, after a warm-up"
                  + (" (wrk: timed runs of about n answers)" if loader.kind == "wrk" else ""),
    }
    for key, cell in cells.items():
        details[f"{key}_rps"] = round(cell.rps, 1)
        details[f"{key}_p50_ms"] = round(cell.p50_ms, 3)
        details[f"{key}_p99_ms"] = round(cell.p99_ms, 3)
    worst = min(cells["eligibility_c200"].rps, cells["lab_c200"].rps)
    floor = cells["hello_c200"]
    for name in ("eligibility", "lab"):
        details[f"{name}_c200_p99_over_floor"] = round(cells[f"{name}_c200"].p99_ms / floor.p99_ms, 3)
    return Measurement(seconds=1.0 / worst, floor_seconds=1.0 / floor.rps, details=details)


def passed(m: Measurement) -> bool:
    return (m.seconds <= 2.5 * m.floor_seconds
            and all(float(m.details[f"{r}_c200_p99_over_floor"]) <= 2.0 for r in ("eligibility", "lab")))
