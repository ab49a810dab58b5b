from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg
import pytest

from labeval.db.migrate import MigrationError, default_migrations_dir, discover, migrate, status


async def test_migrate_from_zero_then_rerun_is_noop(empty_db_url: str) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        applied = await migrate(conn)
        assert [m.version for m in applied] == [m.version for m in discover()]
        assert applied[0].name == "schema_v1"
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"labs", "lab_scopes", "product_categories", "test_items", "samples", "results",
                "grading_runs", "lab_grades", "schema_migrations"} <= tables
        assert await migrate(conn) == []
        states = await status(conn)
        assert {s.state for s in states} == {"applied"}
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(discover())
    finally:
        await conn.close()


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    """A private copy of the migrations, free to edit."""
    target = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), target)
    return target


@pytest.fixture
async def empty_conn(empty_db_url: str):
    conn = await asyncpg.connect(empty_db_url)
    try:
        yield conn
    finally:
        await conn.close()


async def test_changed_checksum_is_refused(empty_conn: asyncpg.Connection, mdir: Path) -> None:
    await migrate(empty_conn, mdir)
    first = sorted(mdir.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after release\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(empty_conn, mdir)
    assert [s.state for s in await status(empty_conn, mdir)][0] == "changed"


async def test_database_ahead_of_code_is_refused(empty_conn: asyncpg.Connection, mdir: Path) -> None:
    (mdir / "9999_future.sql").write_text("CREATE TABLE future_thing (id int);\n")
    await migrate(empty_conn, mdir)
    (mdir / "9999_future.sql").unlink()
    with pytest.raises(MigrationError, match="ahead of the code"):
        await migrate(empty_conn, mdir)
    assert (await status(empty_conn, mdir))[-1].state == "missing_file"


async def test_failed_migration_rolls_back_alone(empty_conn: asyncpg.Connection, mdir: Path) -> None:
    (mdir / "9998_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT 1/0;\n")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(empty_conn, mdir)
    # Earlier files stay applied; the broken one left nothing behind.
    assert await empty_conn.fetchval("SELECT to_regclass('half_done')") is None
    assert await empty_conn.fetchval("SELECT max(version) FROM schema_migrations") == discover()[-1].version


async def test_a_runner_that_finds_no_migration_files_refuses(empty_db_url: str, tmp_path: Path) -> None:
    # An install without the packaged SQL must not report an "up to date" empty database.
    conn = await asyncpg.connect(empty_db_url)
    try:
        with pytest.raises(MigrationError, match=f"no migration files .* in {tmp_path}"):
            await migrate(conn, tmp_path)
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()
