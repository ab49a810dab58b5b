"""Constraints that live in the database itself, whatever path the data takes."""

from __future__ import annotations

import asyncpg
import pytest

SEED = """
INSERT INTO product_categories (category_code, name) VALUES ('TEX', '纺织服装');
INSERT INTO test_items (item_code, category_code, name, kind, precision_model, repeatability_sd, reproducibility_sd)
VALUES ('Q', 'TEX', '甲醛', 'quantitative', 'relative', 0.05, 0.12);
INSERT INTO labs (lab_code, name) VALUES ('A', 'A'), ('B', 'B'), ('C', 'C');
INSERT INTO samples (sample_code, category_code, original_lab_code) VALUES ('S1', 'TEX', 'A'), ('S2', 'TEX', NULL);
"""

INSERT = "INSERT INTO results (sample_code, item_code, lab_code, role, value) VALUES ($1, 'Q', $2, $3, $4)"

# What intake's load does to a corrected result (labeval.db.intake.load_versioned), for one sample.
MOVE_TO_VERSIONS = """
WITH moved AS (DELETE FROM results WHERE sample_code = $1 RETURNING *)
INSERT INTO result_versions (result_id, sample_code, item_code, lab_code, role, value, censored, censor_limit,
                             raw_value, unit, expanded_uncertainty, coverage_k, replicates, verdict,
                             decision_rule, reported_on, version, import_id, created_at, superseded_at)
SELECT result_id, sample_code, item_code, lab_code, role, value, censored, censor_limit, raw_value, unit,
       expanded_uncertainty, coverage_k, replicates, verdict, decision_rule, reported_on, version, import_id,
       created_at, now()
FROM moved
"""


# Migration 0015: a lab in two roles on one sample item is refused by the unique index
# results_one_role_per_lab; a retest or arbitration by the register's original lab (when that lab
# has no result on the item) by the trigger, under the constraint name it always had.
ONE_ROLE = "results_one_role_per_lab"


async def test_retest_by_the_original_lab_is_rejected(conn: asyncpg.Connection) -> None:
    await conn.execute(SEED)
    await conn.execute(INSERT, "S1", "A", "original", 10.0)
    with pytest.raises(asyncpg.UniqueViolationError) as err:
        await conn.execute(INSERT, "S1", "A", "retest", 11.0)
    assert err.value.constraint_name == ONE_ROLE
    # The sample names its original lab: a retest by it fails even before the original result exists.
    await conn.execute("DELETE FROM results")
    with pytest.raises(asyncpg.CheckViolationError) as err:
        await conn.execute(INSERT, "S1", "A", "retest", 11.0)
    assert err.value.constraint_name == "results_retest_by_other_lab"
    assert err.value.message == "a retest result of sample S1 item Q by lab A, which also tested it in another role"
    # Without samples.original_lab_code the original result decides, in either order.
    await conn.execute(INSERT, "S2", "B", "retest", 11.0)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(INSERT, "S2", "B", "original", 10.0)
    await conn.execute(INSERT, "S2", "A", "original", 10.0)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(INSERT, "S2", "B", "arbitration", 10.5)  # B did the retest
    await conn.execute(INSERT, "S2", "C", "arbitration", 10.5)
    assert await conn.fetchval("SELECT count(*) FROM results") == 3


async def test_original_retest_and_arbitration_are_three_labs_in_either_order(conn: asyncpg.Connection) -> None:
    # The arbiter is a third lab (docs/methods.md §1.4): one lab never holds two roles on a sample item.
    await conn.execute(SEED)
    await conn.execute(INSERT, "S2", "A", "original", 10.0)
    # The arbitration stored first, then a retest by the arbiter (migration 0011).
    await conn.execute(INSERT, "S2", "C", "arbitration", 10.5)
    with pytest.raises(asyncpg.UniqueViolationError) as err:
        await conn.execute(INSERT, "S2", "C", "retest", 11.0)
    assert err.value.constraint_name == ONE_ROLE
    await conn.execute(INSERT, "S2", "B", "retest", 11.0)
    # The retest stored first, then an arbitration by the retest lab.
    await conn.execute("INSERT INTO samples (sample_code, category_code) VALUES ('S3', 'TEX')")
    await conn.execute(INSERT, "S3", "A", "original", 10.0)
    await conn.execute(INSERT, "S3", "B", "retest", 11.0)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(INSERT, "S3", "B", "arbitration", 10.5)
    # Both roles in one statement.
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            """INSERT INTO results (sample_code, item_code, lab_code, role, value)
               VALUES ('S1', 'Q', 'A', 'original', 9.0), ('S1', 'Q', 'C', 'arbitration', 9.2),
                      ('S1', 'Q', 'C', 'retest', 9.5)"""
        )
    # A correction of a result keeps its role: a new version is no second role.
    await conn.execute("UPDATE results SET value = 10.6 WHERE sample_code = 'S2' AND role = 'arbitration'")
    rows = await conn.fetch("SELECT sample_code, role, lab_code FROM results ORDER BY sample_code, role")
    assert [tuple(r) for r in rows] == [
        ("S2", "arbitration", "C"), ("S2", "original", "A"), ("S2", "retest", "B"),
        ("S3", "original", "A"), ("S3", "retest", "B"),
    ]


async def test_bulk_insert_with_one_offending_row_is_rejected_whole(conn: asyncpg.Connection) -> None:
    await conn.execute(SEED)
    await conn.execute(INSERT, "S2", "A", "original", 10.0)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            """
            INSERT INTO results (sample_code, item_code, lab_code, role, value)
            SELECT 'S2', 'Q', lab, 'retest', 10.0 FROM unnest(ARRAY['B', 'C', 'A']) AS lab
            """
        )
    assert await conn.fetchval("SELECT count(*) FROM results WHERE role = 'retest'") == 0
    # The register's original lab among many rows of other samples: the trigger's one pass finds it.
    await conn.execute("INSERT INTO samples (sample_code, category_code, original_lab_code) "
                       "SELECT 'M' || i, 'TEX', 'A' FROM generate_series(1, 300) AS i")
    with pytest.raises(asyncpg.CheckViolationError) as err:
        await conn.execute(
            """
            INSERT INTO results (sample_code, item_code, lab_code, role, value)
            SELECT 'M' || i, 'Q', CASE WHEN i = 217 THEN 'A' ELSE 'B' END, 'retest', 10.0
            FROM generate_series(1, 300) AS i
            """
        )
    assert err.value.message == "a retest result of sample M217 item Q by lab A, which also tested it in another role"
    assert await conn.fetchval("SELECT count(*) FROM results WHERE role = 'retest'") == 0


async def test_an_update_to_the_original_lab_is_checked_and_a_register_change_is_not(conn: asyncpg.Connection) -> None:
    await conn.execute(SEED)
    await conn.execute(INSERT, "S1", "B", "retest", 11.0)
    # An UPDATE goes through the same check as an INSERT.
    with pytest.raises(asyncpg.CheckViolationError) as err:
        await conn.execute("UPDATE results SET lab_code = 'A' WHERE sample_code = 'S1'")
    assert err.value.constraint_name == "results_retest_by_other_lab"
    # Naming the retest lab as the sample's original lab afterwards is not re-checked against
    # stored results (as before 0015: only writes of results are checked).
    await conn.execute("UPDATE samples SET original_lab_code = 'B' WHERE sample_code = 'S1'")
    assert await conn.fetchval("SELECT lab_code FROM results WHERE sample_code = 'S1'") == "B"


@pytest.mark.parametrize(
    ("column", "value"),
    [("value", float("nan")), ("value", float("inf")), ("expanded_uncertainty", -0.1),
     ("expanded_uncertainty", float("inf")), ("coverage_k", 0.0)],
)
async def test_values_are_finite_and_uncertainty_non_negative(conn: asyncpg.Connection, column: str, value: float) -> None:
    await conn.execute(SEED)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            f"INSERT INTO results (sample_code, item_code, lab_code, role, {column}) VALUES ('S2', 'Q', 'A', 'original', $1)",
            value,
        )


async def test_one_current_version_per_natural_key(conn: asyncpg.Connection) -> None:
    await conn.execute(SEED)
    await conn.execute(INSERT, "S2", "A", "original", 10.0)
    with pytest.raises(asyncpg.UniqueViolationError) as err:
        await conn.execute(INSERT, "S2", "A", "original", 10.2)
    assert err.value.constraint_name == ONE_ROLE
    # A correction: the old version moves to result_versions, the next one takes its place.
    await conn.execute(MOVE_TO_VERSIONS, "S2")
    await conn.execute(
        "INSERT INTO results (sample_code, item_code, lab_code, role, value, version) VALUES ('S2', 'Q', 'A', 'original', 10.2, 2)"
    )
    rows = await conn.fetch(
        """SELECT version, value, superseded_at IS NULL AS current FROM result_versions
           UNION ALL SELECT version, value, true FROM results ORDER BY version""")
    assert [tuple(r) for r in rows] == [(1, 10.0, False), (2, 10.2, True)]
    # One row per version of a key among the replaced ones too, and every replaced one says when.
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            """INSERT INTO result_versions (result_id, sample_code, item_code, lab_code, role, value, censored,
                                            version, created_at, superseded_at)
               VALUES (999, 'S2', 'Q', 'A', 'original', 9.0, false, 1, now(), now())""")
    with pytest.raises(asyncpg.NotNullViolationError):
        await conn.execute(
            """INSERT INTO result_versions (result_id, sample_code, item_code, lab_code, role, value, censored,
                                            version, created_at)
               VALUES (998, 'S2', 'Q', 'A', 'original', 9.0, false, 7, now())""")


async def test_every_code_column_compares_as_bytes(conn: asyncpg.Connection) -> None:
    """Migration 0014: every code column of every table has collation "C", so that no join
    between two tables compares codes under two collations (and the keys compare cheaply)."""
    rows = await conn.fetch(
        """SELECT c.table_name, c.column_name, c.collation_name
           FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' AND c.data_type = 'text'
             AND c.column_name LIKE '%\\_code' AND c.column_name <> 'reason_code'""")
    assert len(rows) >= 20
    assert [tuple(r) for r in rows if r["collation_name"] != "C"] == []
    # Byte order: digits, then upper case, then lower case.
    await conn.execute("INSERT INTO product_categories (category_code, name) VALUES ('b', 'x'), ('B', 'x'), ('1', 'x')")
    codes = await conn.fetch("SELECT category_code FROM product_categories WHERE name = 'x' ORDER BY category_code")
    assert [r[0] for r in codes] == ["1", "B", "b"]


# Migration 0018: results' primary key is (sample_code, item_code, lab_code); result_id has no
# index of its own, and the statements that change results are counted in results_changes (what
# a cached chart's version reads, labeval.db.lab_charts.pairs_version).


async def test_results_key_is_natural_and_result_id_is_not_indexed(conn: asyncpg.Connection) -> None:
    indexes = await conn.fetch(
        """SELECT c.relname, i.indisprimary, i.indisunique,
                  array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k (n, o)
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)::text[] AS cols
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           WHERE i.indrelid = 'results'::regclass""")
    assert [(r["relname"], r["indisprimary"], r["indisunique"], r["cols"]) for r in indexes] == [
        (ONE_ROLE, True, True, ["sample_code", "item_code", "lab_code"])]
    # Ids still come from the identity, in order, and cannot be given by a writer.
    await conn.execute(SEED)
    await conn.execute(INSERT, "S2", "A", "original", 10.0)
    await conn.execute(INSERT, "S2", "B", "retest", 10.5)
    ids = [r[0] for r in await conn.fetch("SELECT result_id FROM results ORDER BY lab_code")]
    assert ids[1] == ids[0] + 1
    with pytest.raises(asyncpg.GeneratedAlwaysError):
        await conn.execute("INSERT INTO results (result_id, sample_code, item_code, lab_code, role) "
                           "VALUES ($1, 'S2', 'Q', 'C', 'arbitration')", ids[0])


async def test_every_statement_that_changes_results_is_counted_once(conn: asyncpg.Connection) -> None:
    await conn.execute(SEED)

    async def count() -> int:
        return await conn.fetchval("SELECT statements FROM results_changes")

    start = await count()
    await conn.copy_records_to_table(
        "results", records=[("S2", "Q", "A", "original", 10.0), ("S2", "Q", "B", "retest", 10.5)],
        columns=["sample_code", "item_code", "lab_code", "role", "value"])
    assert await count() == start + 1  # two rows, one statement
    await conn.execute("UPDATE results SET value = 10.1 WHERE lab_code = 'A'")
    await conn.execute("UPDATE results SET value = 10.1 WHERE lab_code = 'Z'")  # no row: still a statement
    assert await count() == start + 3
    tx = conn.transaction()
    await tx.start()
    await conn.execute("DELETE FROM results WHERE lab_code = 'B'")
    await tx.rollback()
    assert await count() == start + 3  # rolled back with the change
    await conn.execute("DELETE FROM results WHERE lab_code = 'B'")
    await conn.execute("TRUNCATE results")
    assert await count() == start + 5
