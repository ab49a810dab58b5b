"""`labeval bench`: run benchmark targets, each in a fresh child process, and report them.

A target is a module ``labeval.devtools.bench_<target>`` with

* ``measure(n, *, seed=0, database_url=None) -> Measurement`` (labeval.devtools.bench_types),
* ``DEFAULT_N`` and ``QUICK_N`` (the size of a full and of a ``--quick`` run),
* ``GOAL`` (the goal in words) and ``passed(measurement) -> bool``.

Target modules are imported by name when they are run, so adding a target is adding its module
(and its name to ``TARGETS``). Each target runs in its own child process
(``python -m labeval.devtools.bench_child``), so its peak resident memory is its own and one
target's caches and allocations cannot help or hurt the next one. A target that needs PostgreSQL
gets a scratch database of its own, created for it on the configured server (or the embedded one)
and dropped afterwards: a benchmark never writes into labeval's own database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

import asyncpg
import msgspec
import psutil
from rich.console import Group
from rich.table import Table
from rich.text import Text

from labeval.config import Settings
from labeval.db.migrate import migrate
from labeval.db.pool import connect
from labeval.db.server import embedded_server, with_database
from labeval.devtools.bench_types import Measurement

# In the order `bench all` runs them: in-memory targets first, then those on PostgreSQL.
TARGETS = ("scoring", "evidence", "peer", "run", "ingest", "api")
DATABASE_TARGETS = frozenset({"run", "ingest", "api"})
# The child reads its scratch database from here (not argv: a URL may carry a password).
DATABASE_URL_ENV = "LABEVAL_BENCH_DATABASE_URL"
# A child that runs longer than this is stopped and its target reported as failed.
TIMEOUT_SECONDS = 3 * 3600
QUICK_TIMEOUT_SECONDS = 300


class BenchError(RuntimeError):
    """A target could not be run (missing module, no scratch database, child failed)."""


def module_name(target: str) -> str:
    return f"labeval.devtools.bench_{target}"


def available(target: str) -> bool:
    """True when the target's module is installed (a branch may not have every target yet)."""
    return importlib.util.find_spec(module_name(target)) is not None


def load_target(target: str) -> ModuleType:
    if target not in TARGETS:
        raise BenchError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
    if not available(target):
        raise BenchError(f"target {target!r} has no module {module_name(target)} in this installation")
    return importlib.import_module(module_name(target))


def expand(targets: Iterable[str]) -> list[str]:
    """`all` stands for every target; duplicates are run once, in the order given."""
    out: list[str] = []
    for t in targets:
        for one in TARGETS if t == "all" else (t,):
            if one not in out:
                out.append(one)
    return out


@contextlib.contextmanager
def _admin_url(settings: Settings) -> Iterator[str]:
    """The URL of a database on the server the scratch databases are made on."""
    if settings.database_url:
        yield settings.database_url
        return
    with embedded_server(settings.data_path) as url:
        yield url


# Scratch databases are named labeval_bench_<host>_<target>_<pid>: <host> (a digest of this
# machine's name) keeps a run from taking another machine's live run for a dead one of its own.
SCRATCH_PREFIX = f"labeval_bench_{hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()}_"


def abandoned(names: Iterable[str]) -> list[str]:
    """The scratch databases of this machine whose benchmark process is gone: a killed run
    cannot drop its own, and a 10 M-pair one holds gigabytes."""
    gone = []
    for name in names:
        pid = name.rsplit("_", 1)[-1]
        if name.startswith(SCRATCH_PREFIX) and pid.isdigit() and not psutil.pid_exists(int(pid)):
            gone.append(name)
    return gone


async def _drop(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _create_scratch(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        # A run that was killed may have left one behind, under this pid or another.
        names = [r["datname"] for r in await conn.fetch(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", SCRATCH_PREFIX)]
        for old in [*abandoned(names), name]:
            await _drop(conn, old)
        await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.InsufficientPrivilegeError as exc:
        raise BenchError(
            f"cannot create the scratch database {name}: the database role may not CREATE DATABASE "
            "(benchmarks never write into labeval's own database)") from exc
    finally:
        await conn.close()
    url = with_database(admin_url, name)
    db = await connect(url)
    try:
        await migrate(db)
    finally:
        await db.close()
    return url


async def _drop_scratch(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await _drop(conn, name)
    finally:
        await conn.close()


@contextlib.contextmanager
def _scratch_database(admin_url: str, target: str) -> Iterator[str]:
    name = f"{SCRATCH_PREFIX}{target}_{os.getpid()}"
    url = asyncio.run(_create_scratch(admin_url, name))
    try:
        yield url
    finally:
        asyncio.run(_drop_scratch(admin_url, name))


def _stderr_fd() -> int | None:
    # Our stderr's descriptor; None where stderr is not a file (a captured stream).
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _run_child(target: str, n: int, seed: int, database_url: str | None, timeout: float) -> dict:
    """Measure in a fresh interpreter; its stdout/stderr pass through to ours (on stderr)."""
    with tempfile.TemporaryDirectory(prefix="labeval-bench-") as tmp:
        out = Path(tmp) / "measurement.json"
        env = dict(os.environ)
        env.pop(DATABASE_URL_ENV, None)
        if database_url:
            env[DATABASE_URL_ENV] = database_url
        cmd = [sys.executable, "-m", "labeval.devtools.bench_child", target, str(n), str(seed), str(out)]
        try:
            # The child's own output goes to our stderr: stdout carries only the results.
            fd = _stderr_fd()
            proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL if fd is None else fd, stderr=fd,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"no result within {timeout:.0f} s") from exc
        if not out.exists():
            raise BenchError(f"the measuring process died (exit {proc.returncode}) without a result")
        child = json.loads(out.read_text())
        if "error" in child:
            raise BenchError(child["error"])
        return child


def _result(target: str, n: int, module: ModuleType, child: dict) -> dict:
    m = msgspec.convert(child["measurement"], Measurement)
    ratio = m.seconds / m.floor_seconds if m.floor_seconds > 0 else float("inf")
    head = {
        "target": target, "n": n, "seconds": m.seconds, "floor_seconds": m.floor_seconds,
        "ratio": ratio, "peak_rss_mb": child["peak_rss_mb"], "goal": module.GOAL,
        "passed": bool(module.passed(m)),
    }
    if child.get("children_peak_rss_mb"):
        head["children_peak_rss_mb"] = child["children_peak_rss_mb"]
    # The target's own figures follow the common ones and never overwrite them.
    return head | {k: v for k, v in m.details.items() if k not in head}


def run(targets: Iterable[str], settings: Settings, *, n: int | None = None, quick: bool = False,
        seed: int = 0) -> Iterator[dict]:
    """Run the targets one after another; yield one result object per target as it finishes.

    A target that cannot run yields {"target", "n", "error", "passed": False} and the others
    still run."""
    names = expand(targets)
    needs_db = any(t in DATABASE_TARGETS for t in names)
    timeout = QUICK_TIMEOUT_SECONDS if quick else TIMEOUT_SECONDS
    with _admin_url(settings) if needs_db else contextlib.nullcontext(None) as admin_url:
        for target in names:
            size = n
            try:
                module = load_target(target)
                size = n if n is not None else (module.QUICK_N if quick else module.DEFAULT_N)
                if target in DATABASE_TARGETS:
                    with _scratch_database(admin_url, target) as url:
                        child = _run_child(target, size, seed, url, timeout)
                else:
                    child = _run_child(target, size, seed, None, timeout)
                yield _result(target, size, module, child)
            except BenchError as exc:
                yield {"target": target, "n": size, "error": str(exc), "passed": False}


def _figure(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(results: list[dict]) -> Group:
    """The results for a person: one row per target, then each target's goal and own figures."""
    t = Table("target", "n", "seconds", "floor s", "ratio", "peak RSS MB", "passed")
    common = {"target", "n", "seconds", "floor_seconds", "ratio", "peak_rss_mb", "goal", "passed"}
    lines = []
    for r in results:
        if "error" in r:
            t.add_row(r["target"], "" if r.get("n") is None else f"{r['n']:,}", "", "", "", "", "[red]error[/red]")
            lines.append(f"{r['target']}: {r['error']}")
            continue
        t.add_row(r["target"], f"{r['n']:,}", f"{r['seconds']:.4g}", f"{r['floor_seconds']:.4g}",
                  f"{r['ratio']:.3g}", f"{r['peak_rss_mb']:.0f}",
                  "[green]yes[/green]" if r["passed"] else "[red]no[/red]")
        lines.append(f"{r['target']}: goal {r['goal']}; "
                     + ", ".join(f"{k}={_figure(v)}" for k, v in r.items() if k not in common))
    return Group(t, *(Text(line) for line in lines))
