"""SQL of the intake benchmark's floor: a bare COPY of a CSV file into a table of text columns."""

from __future__ import annotations

from pathlib import Path

import asyncpg

FLOOR_TABLE = "bench_copy_floor"


async def create_floor_table(conn: asyncpg.Connection, columns: tuple[str, ...]) -> None:
    """A table with no constraint, index or type: what a plain COPY costs at the least."""
    await conn.execute(f"CREATE TABLE {FLOOR_TABLE} (" + ", ".join(f"{c} text" for c in columns) + ")")


async def copy_into_floor(conn: asyncpg.Connection, path: Path) -> None:
    await conn.copy_to_table(FLOOR_TABLE, source=path, format="csv", header=True)


async def settle(conn: asyncpg.Connection, tables: tuple[str, ...]) -> None:
    """Before a timed load: the tables just filled get their statistics and visibility map now,
    not from an autovacuum worker in the middle of the timing."""
    for table in tables:
        await conn.execute(f"VACUUM ANALYZE {table}")


async def empty_results(conn: asyncpg.Connection) -> None:
    """Between two timed intakes of the same file: results as the first one found it (new,
    empty files; nothing refers to a result by key)."""
    await conn.execute("TRUNCATE results, result_versions")


async def busiest_category(conn: asyncpg.Connection) -> str | None:
    """The product category most labs are accredited for (the longest eligibility list)."""
    return await conn.fetchval(
        # Ties broken by code, so that a benchmark asks for the same list on the same data.
        "SELECT category_code FROM lab_scopes GROUP BY category_code ORDER BY count(*) DESC, category_code LIMIT 1")


async def graded_lab(conn: asyncpg.Connection) -> str | None:
    """A lab of the latest succeeded run (its detail page has evidence and a grade history)."""
    return await conn.fetchval(
        "SELECT g.lab_code FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id "
        "WHERE r.status = 'succeeded' ORDER BY r.run_id DESC, g.lab_code LIMIT 1")


async def lab_count(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM labs")
