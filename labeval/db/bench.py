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
