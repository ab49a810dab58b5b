"""Numbered plain-SQL migrations: migrations/NNNN_name.sql, each applied in its own transaction.

The files live at the top of the repository and ship inside the package as labeval.migrations
(setup.py maps the directory), so a checkout, an editable install and an installed wheel all
find them the same way. A runner that finds no migration file at all refuses to run: an empty
directory would otherwise "apply" nothing, report success, and leave a database without tables.

Applied files are recorded with their SHA-256 in schema_migrations. The runner holds a
PostgreSQL advisory lock so that concurrent starts apply each file once, and it refuses to run
when an applied file has changed or the database knows a migration this code does not.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from importlib import resources
from pathlib import Path

import asyncpg
import msgspec

# Arbitrary constant shared by every labeval process: "labeval" in ASCII, folded into int64.
_LOCK_KEY = 0x6C6162657661


class MigrationError(RuntimeError):
    pass


class Migration(msgspec.Struct, kw_only=True, frozen=True):
    version: int
    name: str
    path: Path
    checksum: str
    sql: str


class MigrationState(msgspec.Struct, kw_only=True, frozen=True):
    version: int
    name: str
    state: str  # applied | pending | changed | missing_file
    checksum: str | None
    applied_at: datetime | None = None


_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def default_migrations_dir() -> Path:
    """The packaged migrations: labeval/migrations in a wheel, the repository's migrations/ in an
    editable install (setuptools' editable finder maps the package there)."""
    try:
        return Path(str(resources.files("labeval.migrations")))
    except ModuleNotFoundError as exc:
        raise MigrationError(
            "no migrations: the package labeval.migrations is not installed (pip install labeval maps "
            "the repository's migrations/ into it; running from a bare checkout does not)"
        ) from exc


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or default_migrations_dir()
    if not any(directory.glob("*.sql")):
        raise MigrationError(f"no migration files (NNNN_name.sql) in {directory}; refusing to run")
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE_RE.match(path.name)
        if not m:
            raise MigrationError(f"{path}: migration files must be named NNNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"{path}: version {version} is used twice")
        raw = path.read_bytes()
        found[version] = Migration(
            version=version,
            name=m.group(2),
            path=path,
            checksum=hashlib.sha256(raw).hexdigest(),
            sql=raw.decode("utf-8"),
        )
    return [found[v] for v in sorted(found)]


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class AppliedMigration(msgspec.Struct, kw_only=True, frozen=True):
    version: int
    name: str
    checksum: str
    applied_at: datetime


async def _applied(conn: asyncpg.Connection) -> dict[int, AppliedMigration]:
    rows = await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations")
    return {r["version"]: AppliedMigration(**dict(r)) for r in rows}


def _check(files: list[Migration], applied: dict[int, AppliedMigration]) -> None:
    by_version = {m.version: m for m in files}
    for version, row in sorted(applied.items()):
        m = by_version.get(version)
        if m is None:
            raise MigrationError(
                f"the database has migration {version:04d}_{row.name} which this code does not "
                "know: the database is ahead of the code; refusing to start"
            )
        if m.checksum != row.checksum:
            raise MigrationError(
                f"migration {m.path.name} changed after it was applied "
                f"(recorded {row.checksum[:12]}…, file {m.checksum[:12]}…); refusing to start"
            )


async def migrate(conn: asyncpg.Connection, directory: Path | None = None) -> list[Migration]:
    """Apply pending migrations; return the ones applied now (empty when up to date)."""
    files = discover(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        applied = await _applied(conn)
        _check(files, applied)
        done: list[Migration] = []
        for m in files:
            if m.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
            done.append(m)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def status(conn: asyncpg.Connection, directory: Path | None = None) -> list[MigrationState]:
    files = discover(directory)
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = await _applied(conn) if exists else {}
    out: list[MigrationState] = []
    for m in files:
        row = applied.get(m.version)
        if row is None:
            out.append(MigrationState(version=m.version, name=m.name, state="pending", checksum=m.checksum))
        else:
            state = "applied" if row.checksum == m.checksum else "changed"
            out.append(
                MigrationState(
                    version=m.version, name=m.name, state=state, checksum=row.checksum,
                    applied_at=row.applied_at,
                )
            )
    known = {m.version for m in files}
    for version, row in sorted(applied.items()):
        if version not in known:
            out.append(
                MigrationState(
                    version=version, name=row.name, state="missing_file",
                    checksum=row.checksum, applied_at=row.applied_at,
                )
            )
    return sorted(out, key=lambda s: s.version)


async def schema_version(conn: asyncpg.Connection) -> int | None:
    """The newest applied migration (None before the first)."""
    return await conn.fetchval("SELECT max(version) FROM schema_migrations")
