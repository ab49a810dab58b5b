"""`labeval bench`: every target runs in quick mode and prints a well-formed result (how fast is
`labeval bench`'s business, not the suite's), the framework's own rules, and the load generator
the `api` target falls back on when wrk is not installed."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from labeval.devtools import bench, bench_api, bench_load
from labeval.devtools.bench_types import Measurement

ROOT = Path(__file__).resolve().parents[1]
COMMON = {"target", "n", "seconds", "floor_seconds", "ratio", "peak_rss_mb", "goal", "passed"}


def _has_pt13528() -> bool:
    try:
        import pt13528  # noqa: F401, PLC0415 - only asks whether the bench extra is installed
    except ImportError:
        return False
    return True


def test_bench_all_quick_runs_every_target(pg_admin_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEVAL_")}
    proc = subprocess.run(
        [sys.executable, "-m", "labeval.cli", "--database-url", pg_admin_url, "--data-dir", str(tmp_path),
         "bench", "all", "--quick", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["target"] for r in lines] == list(bench.TARGETS), proc.stderr[-3000:]
    missing = []
    for r in lines:
        target = r["target"]
        if not bench.available(target):
            # A target whose module this installation lacks says so (and the run exits 2).
            assert r["passed"] is False and "has no module" in r["error"]
            missing.append(target)
            continue
        if target == "peer" and not _has_pt13528():
            assert r["passed"] is False and ".[bench]" in r["error"]
            missing.append(target)
            continue
        assert "error" not in r, r
        assert COMMON <= set(r), r
        module = bench.load_target(target)
        assert r["n"] == module.QUICK_N and r["goal"] == module.GOAL
        assert r["seconds"] > 0 and r["floor_seconds"] > 0
        assert math.isclose(r["ratio"], r["seconds"] / r["floor_seconds"], rel_tol=1e-9)
        # A fresh Python with numpy and polars loaded holds tens of MB at least.
        assert r["peak_rss_mb"] > 20
        assert isinstance(r["passed"], bool)
    # Every target ships with labeval; only peer needs an extra (CI installs it).
    assert not {"scoring", "evidence", "run", "ingest", "api"} & set(missing)
    api = next(r for r in lines if r["target"] == "api")
    assert api["generator"] in ("wrk", "python")
    for cell in ("hello_c50", "hello_c200", "eligibility_c50", "eligibility_c200", "lab_c50", "lab_c200"):
        assert api[f"{cell}_rps"] > 0 and 0 < api[f"{cell}_p50_ms"] <= api[f"{cell}_p99_ms"]
    assert proc.returncode == (2 if missing else 0), proc.stderr[-3000:]
    # Scratch databases are dropped afterwards.
    assert "labeval_bench_" not in _databases(pg_admin_url)


def _databases(admin_url: str) -> str:
    async def names() -> str:
        conn = await asyncpg.connect(admin_url)
        try:
            return " ".join(r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database"))
        finally:
            await conn.close()

    return asyncio.run(names())


def test_all_expands_in_order_without_duplicates() -> None:
    assert bench.expand(["all"]) == list(bench.TARGETS)
    assert bench.expand(["peer", "scoring", "peer"]) == ["peer", "scoring"]
    with pytest.raises(bench.BenchError, match="unknown target"):
        bench.load_target("nope")


def test_result_adds_ratio_goal_and_keeps_common_fields() -> None:
    class Target:
        GOAL = "ratio <= 2"

        @staticmethod
        def passed(m: Measurement) -> bool:
            return m.seconds <= 2 * m.floor_seconds

    child = {"measurement": {"seconds": 3.0, "floor_seconds": 2.0, "details": {"ratio": -1, "rows": 5}},
             "peak_rss_mb": 100.0, "children_peak_rss_mb": 0.0}
    r = bench._result("x", 10, Target, child)
    # A detail may not overwrite a common field.
    assert r == {"target": "x", "n": 10, "seconds": 3.0, "floor_seconds": 2.0, "ratio": 1.5,
                 "peak_rss_mb": 100.0, "goal": "ratio <= 2", "passed": True, "rows": 5}


def test_python_load_generator_against_the_floor_app(tmp_path: Path) -> None:
    port = bench_api._free_port()
    with bench_api._served([sys.executable, "-m", "labeval.devtools.bench_hello", str(port)], dict(os.environ),
                           port, "/hello", tmp_path / "hello.log") as base:
        cell = bench_api._python(base + "/hello", 8, 200, 30.0, [])
        assert cell.answers == 200 and cell.rps > 0 and 0 < cell.p50_ms <= cell.p99_ms
        # An answer other than 2xx fails the measurement instead of counting as a fast answer.
        with pytest.raises(bench_api.LoadFailed, match="errors under load"):
            bench_api._python(base + "/missing", 2, 10, 30.0, [])


async def test_load_generator_refuses_other_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await bench_load.load("http://192.0.2.1:80/", 1, 1, 1.0, [])


def test_scratch_databases_of_dead_runs_are_found() -> None:
    """A killed benchmark leaves its scratch database behind; the next run drops those whose
    process is gone, and only those."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = os.getpid()
    mine = bench.SCRATCH_PREFIX
    names = [f"{mine}run_{dead.pid}", f"{mine}ingest_{alive}", f"{mine}run_x",
             # another machine's run, whatever its pid means here
             f"labeval_bench_00000000_run_{dead.pid}", f"labeval_{dead.pid}", "labeval"]
    assert bench.abandoned(names) == [f"{mine}run_{dead.pid}"]
