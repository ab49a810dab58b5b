"""Results' references (migration 0009): checked once per statement instead of by per-row
foreign keys, and guarded from the parents' side, so no result ever names a sample, item or lab
that is not there."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from labeval.db.pool import connect

SEED = """
INSERT INTO product_categories (category_code, name) VALUES ('TEX', 'textiles');
INSERT INTO test_items (item_code, category_code, name, kind, precision_model, repeatability_sd, reproducibility_sd)
VALUES ('Q', 'TEX', 'formaldehyde', 'quantitative', 'relative', 0.05, 0.12),
       ('SPARE', 'TEX', 'unused', 'quantitative', 'relative', 0.05, 0.12);
INSERT INTO labs (lab_code, name) VALUES ('A', 'A'), ('B', 'B'), ('C', 'C');
INSERT INTO samples (sample_code, category_code) VALUES ('S1', 'TEX'), ('S2', 'TEX');
INSERT INTO results (sample_code, item_code, lab_code, role, value) VALUES ('S1', 'Q', 'A', 'original', 1.0);
"""
INSERT = "INSERT INTO results (sample_code, item_code, lab_code, role, value) VALUES ($1, $2, $3, 'original', 1.0)"


@pytest.mark.parametrize(
    ("sample", "item", "lab", "constraint"),
    [("NOPE", "Q", "B", "results_sample_code_ref"), ("S2", "NOPE", "B", "results_item_code_ref"),
     ("S2", "Q", "NOPE", "results_lab_code_ref")],
)
async def test_a_result_naming_a_missing_parent_is_refused(conn, sample, item, lab, constraint) -> None:
    await conn.execute(SEED)
    with pytest.raises(asyncpg.ForeignKeyViolationError) as err:
        await conn.execute(INSERT, sample, item, lab)
    assert err.value.constraint_name == constraint
    # One bad row refuses the whole statement, however many good rows come with it.
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await conn.execute(
            """INSERT INTO results (sample_code, item_code, lab_code, role, value)
               SELECT s, 'Q', 'B', 'original', 1.0 FROM unnest(ARRAY['S2', $1]) AS s""",
            sample if sample == "NOPE" else "MISSING",
        )
    assert await conn.fetchval("SELECT count(*) FROM results") == 1


async def test_an_update_to_a_missing_parent_is_refused(conn) -> None:
    await conn.execute(SEED)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await conn.execute("UPDATE results SET lab_code = 'NOPE'")
    assert await conn.fetchval("SELECT lab_code FROM results") == "A"


@pytest.mark.parametrize(
    ("table", "column", "used", "unused", "other"),
    [("labs", "lab_code", "A", "C", "name"), ("samples", "sample_code", "S1", "S2", "enterprise"),
     ("test_items", "item_code", "Q", "SPARE", "name")],
)
async def test_a_referenced_parent_cannot_go(conn, table, column, used, unused, other) -> None:
    await conn.execute(SEED)
    with pytest.raises(asyncpg.ForeignKeyViolationError) as err:
        await conn.execute(f"DELETE FROM {table} WHERE {column} = $1", used)
    assert f"{column} {used} is still referenced by results" in str(err.value)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await conn.execute(f"UPDATE {table} SET {column} = 'RENAMED' WHERE {column} = $1", used)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await conn.execute(f"TRUNCATE {table} CASCADE")
    assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", used) == 1
    # Changing anything but the code, and removing an unreferenced row, are allowed.
    await conn.execute(f"UPDATE {table} SET {other} = 'renamed' WHERE {column} = $1", used)
    await conn.execute(f"DELETE FROM {table} WHERE {column} = $1", unused)
    assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", unused) == 0
    # Once no result uses it, the parent can go.
    await conn.execute("DELETE FROM results")
    await conn.execute(f"DELETE FROM {table} WHERE {column} = $1", used)
    assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", used) == 0


async def _wait_until_blocked(watcher: asyncpg.Connection, pid: int) -> None:
    # The deleting session waits on the row lock the inserting one holds.
    for _ in range(500):
        if await watcher.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the delete never waited for the insert's lock")


async def test_a_delete_racing_an_uncommitted_insert_waits_and_is_refused(conn, db_url) -> None:
    await conn.execute(SEED)
    writer, deleter = await connect(db_url), await connect(db_url)
    try:
        tx = writer.transaction()
        await tx.start()
        await writer.execute(INSERT, "S2", "Q", "C")  # lab C's key-share lock, held to commit
        pid = await deleter.fetchval("SELECT pg_backend_pid()")
        delete = asyncio.ensure_future(deleter.execute("DELETE FROM labs WHERE lab_code = 'C'"))
        await _wait_until_blocked(conn, pid)
        await tx.commit()
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await delete
    finally:
        await writer.close()
        await deleter.close()
    assert await conn.fetchval("SELECT count(*) FROM labs WHERE lab_code = 'C'") == 1
    assert await conn.fetchval("SELECT count(*) FROM results WHERE lab_code = 'C'") == 1


async def test_an_insert_racing_an_uncommitted_delete_is_refused(conn, db_url) -> None:
    await conn.execute(SEED)
    deleter, writer = await connect(db_url), await connect(db_url)
    try:
        tx = deleter.transaction()
        await tx.start()
        await deleter.execute("DELETE FROM labs WHERE lab_code = 'C'")
        pid = await writer.fetchval("SELECT pg_backend_pid()")
        insert = asyncio.ensure_future(writer.execute(INSERT, "S2", "Q", "C"))
        await _wait_until_blocked(conn, pid)
        await tx.commit()
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await insert
    finally:
        await writer.close()
        await deleter.close()
    assert await conn.fetchval("SELECT count(*) FROM results WHERE lab_code = 'C'") == 0


async def test_a_statement_missing_several_parents_names_the_sample_first(conn) -> None:
    """Migration 0014 gathers the three parents' codes in one pass: a statement missing a sample,
    an item and a lab is still refused on the sample, then the item, as 0009 checked them."""
    await conn.execute(SEED)
    rows = """INSERT INTO results (sample_code, item_code, lab_code, role, value)
              SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS r, (VALUES ('original', 1.0)) AS v"""
    with pytest.raises(asyncpg.ForeignKeyViolationError) as err:
        await conn.execute(rows, ["S2", "S2", "GONE"], ["Q", "NOPE", "Q"], ["NONE", "B", "C"])
    assert err.value.constraint_name == "results_sample_code_ref"
    assert "a result with sample_code GONE which is not in samples" in str(err.value)
    with pytest.raises(asyncpg.ForeignKeyViolationError) as err:
        await conn.execute(rows, ["S2", "S2", "S2"], ["Q", "NOPE", "SPARE"], ["NONE", "B", "C"])
    assert err.value.constraint_name == "results_item_code_ref"
    # Every parent present. Under read committed no parent row is locked (migration 0016: the
    # removers wait on results instead); under repeatable read each parent table's rows are
    # locked as before (FOR KEY SHARE takes a row-share lock on the table, held to the end).
    parents = """SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                 WHERE l.pid = pg_backend_pid() AND c.relname IN ('samples', 'test_items', 'labs')
                   AND l.mode = 'RowShareLock'"""
    async with conn.transaction():
        await conn.execute(rows, ["S2", "S2", "S2"], ["Q", "SPARE", "SPARE"], ["B", "B", "C"])
        assert await conn.fetchval(parents) == 0
    async with conn.transaction(isolation="repeatable_read"):
        await conn.execute(rows, ["S1", "S1"], ["SPARE", "SPARE"], ["B", "C"])
        assert await conn.fetchval(parents) == 3


async def test_an_update_keeping_its_codes_does_not_wait_for_writers_of_results(conn, db_url) -> None:
    """Only a statement that removes a code waits on results (migration 0016): renaming a lab
    while an import is in flight goes through at once."""
    await conn.execute(SEED)
    writer, editor = await connect(db_url), await connect(db_url)
    try:
        tx = writer.transaction()
        await tx.start()
        await writer.execute(INSERT, "S2", "Q", "C")
        # A lock wait would outlast the timeout: the update must not queue behind the writer.
        await editor.execute("SET lock_timeout = '2s'")
        assert await editor.execute("UPDATE labs SET name = 'C renamed' WHERE lab_code = 'C'") == "UPDATE 1"
        await tx.commit()
    finally:
        await writer.close()
        await editor.close()
    assert await conn.fetchval("SELECT name FROM labs WHERE lab_code = 'C'") == "C renamed"
