"""SQL of intake: the reference codes rows are checked against, the staging table, what the
cross-row rules read and the moves of the rows they reject, and the two ways of loading a kind's
target table.

Table and column names are spliced into these statements; they come from the kind declarations
(labeval.ingest.kinds), never from input. Values always travel as parameters or through COPY.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import asyncpg
import msgspec
import pgpq
import polars as pl

from labeval.db.results import STORED_COLUMNS

NULL = r"\N"


class Target(msgspec.Struct, kw_only=True, frozen=True):
    """Where a kind's rows go and how they are matched."""

    kind: str
    table: str
    key: tuple[str, ...]
    # Key columns that may be null (matched through COALESCE(col, '')).
    nullable_key: tuple[str, ...] = ()
    # Columns of the file that are not columns of `table`, each with the SQL expression of its
    # current value for a target row `t` (compared to tell a duplicate from a change).
    virtual: Mapping[str, str] = msgspec.field(default_factory=dict)
    # The table records the import that last wrote a row (import_id) / when it changed (updated_at).
    has_import_id: bool = False
    has_updated_at: bool = False
    # The columns whose statistics analyse_loaded refreshes (empty: every column).
    analyse: tuple[str, ...] = ()


class LoadCounts(msgspec.Struct, kw_only=True, frozen=True):
    accepted: int  # rows written: new rows and corrections
    duplicates: int  # rows identical to what the table holds (nothing written)
    corrections: int  # rows that replaced a different value


def _count(status: str) -> int:
    # "INSERT 0 12" / "DELETE 3" / "UPDATE 4"
    return int(status.rsplit(" ", 1)[-1])


# ---------------------------------------------------------------------------------------------
# reference data


async def _read(conn: asyncpg.Connection, query: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    buf = io.BytesIO()
    await conn.copy_from_query(query, output=buf, format="csv", header=True)
    if buf.tell() == 0:
        return pl.DataFrame(schema=schema)
    buf.seek(0)
    return pl.read_csv(buf, schema=schema)


async def codes(conn: asyncpg.Connection, table: str, column: str) -> pl.Series:
    """Every code in table.column, sorted (each batch's codes are looked up in it by binary
    search: labeval.ingest.validate.in_sorted)."""
    return (await _read(conn, f"SELECT {column} FROM {table}", {column: pl.String})).get_column(column).sort()


ITEMS_SCHEMA = {"item_code": pl.String, "unit": pl.String, "lod": pl.Float64, "kind": pl.String}


async def items(conn: asyncpg.Connection) -> pl.DataFrame:
    """Unit, LOD and kind of every test item (results are checked and censored against them)."""
    return await _read(conn, "SELECT item_code, unit, lod, kind FROM test_items", ITEMS_SCHEMA)


# ---------------------------------------------------------------------------------------------
# the staging table


async def create_stage(conn: asyncpg.Connection, stage: str, columns: list[tuple[str, str]], row: str) -> None:
    """A temporary table (name, SQL type per column) plus the file's row number `row`."""
    coldefs = ", ".join(f"{name} {sql}" for name, sql in columns)
    await conn.execute(f"CREATE TEMP TABLE {stage} ({row} bigint NOT NULL, {coldefs}) ON COMMIT DROP")


def frame_csv(df: pl.DataFrame) -> bytes:
    """A frame as COPY's CSV (no header, NULL as \\N). Pure: callers encode in a worker thread."""
    buf = io.BytesIO()
    df.write_csv(buf, include_header=False, null_value=NULL, date_format="%Y-%m-%d")
    return buf.getvalue()


async def copy_csv(conn: asyncpg.Connection, table: str, data: bytes, columns: list[str]) -> None:
    await conn.copy_to_table(table, source=io.BytesIO(data), columns=columns, format="csv", null=NULL)


# The polars type each SQL type of a loaded column travels as in a binary COPY (PostgreSQL takes
# binary values only of exactly the column's type: an Int64 is no `integer`).
BINARY_TYPES: dict[str, pl.DataType] = {
    "text": pl.String(), "double precision": pl.Float64(), "integer": pl.Int32(), "bigint": pl.Int64(),
    "date": pl.Date(), "boolean": pl.Boolean(),
}


def frame_binary(df: pl.DataFrame, sql_types: list[str]) -> bytes:
    """A frame as COPY's binary format, its columns cast to `sql_types` (keys of BINARY_TYPES),
    in order. Pure: callers encode in a worker thread.

    Why binary: text COPY makes the server parse every cell back (float8in alone, strtod on
    17-digit numbers, was 7 % of a direct load's server time); binary values are taken as
    they are. The encoder (pgpq, Arrow to PostgreSQL's binary COPY, written in Rust) costs the
    client about what writing CSV did."""
    table = df.cast(dict(zip(df.columns, [BINARY_TYPES[t] for t in sql_types], strict=True))).to_arrow(
        # Plain (large) strings: the encoder knows Arrow's string types, not polars' string views.
        compat_level=pl.CompatLevel.oldest())
    encoder = pgpq.ArrowToPostgresBinaryEncoder(table.schema)
    return b"".join([encoder.write_header(), *(encoder.write_batch(b) for b in table.to_batches()), encoder.finish()])


async def copy_binary(conn: asyncpg.Connection, table: str, data: bytes, columns: list[str]) -> None:
    await conn.copy_to_table(table, source=io.BytesIO(data), columns=columns, format="binary")


REJECT_COLUMNS = ("import_id", "row_number", "column_name", "value", "reason", "reason_code", "reason_args", "raw")


def reject_rows(import_id: int, rejects: pl.DataFrame, row: str) -> pl.DataFrame:
    """A batch's rejects (columns `row`, column, value, reason, reason_code, reason_args and raw
    as JSON text) in the column order of REJECT_COLUMNS."""
    return rejects.select(pl.lit(import_id, pl.Int64).alias("import_id"), row, "column", "value", "reason",
                          "reason_code", "reason_args", "raw")


async def analyse_stage(conn: asyncpg.Connection, stage: str) -> None:
    """Temporary tables are never auto-analysed; the load's joins are planned on these figures."""
    await conn.execute(f"ANALYZE {stage}")


async def drop_stage(conn: asyncpg.Connection, stage: str) -> None:
    await conn.execute(f"DROP TABLE {stage}")


def _keq(target: Target, a: str, b: str) -> str:
    parts = []
    for k in target.key:
        if k in target.nullable_key:
            parts.append(f"COALESCE({a}.{k}, '') = COALESCE({b}.{k}, '')")
        else:
            parts.append(f"{a}.{k} = {b}.{k}")
    return " AND ".join(parts)


# ---------------------------------------------------------------------------------------------
# cross-row rules: which rows break them is worked out over the staged keys (polars, in
# labeval.ingest.crossrow); these move the rows named there from the stage to import_rejects,
# with the row as PostgreSQL holds it (to_jsonb) as the reject's raw record.


async def reject_file_duplicates(
    conn: asyncpg.Connection, target: Target, stage: str, import_id: int, values: list[str],
    later: list[int], first: list[int],
) -> None:
    """Rows `later` repeat the key of rows `first` (pairwise, the first row of the key in the
    file): rejected as a duplicate when the `values` columns are the same, as a conflict when
    they differ."""
    if not later:
        return
    same = (
        f"ROW({', '.join('s.' + v for v in values)}) IS NOT DISTINCT FROM ROW({', '.join('f.' + v for v in values)})"
        if values else "true"
    )
    key_cols = ", ".join(target.key)
    key_vals = "concat_ws(' | ', " + ", ".join(f"bad.{k}" for k in target.key) + ")"
    # Both sides are found by hash joins on the row number: the stage has no index.
    await conn.execute(
        f"""
        WITH d AS (SELECT * FROM unnest($2::bigint[], $3::bigint[]) AS d (later, first_row)),
        bad AS (
            DELETE FROM {stage} s USING d, {stage} f
            WHERE s._row = d.later AND f._row = d.first_row
            RETURNING s.*, f._row AS first_row, {same} AS same
        )
        INSERT INTO import_rejects (import_id, row_number, column_name, value, reason, reason_code, reason_args, raw)
        SELECT $1, bad._row, '{key_cols}', {key_vals},
               CASE WHEN bad.same THEN 'duplicate row in the file: same as row ' || bad.first_row
                    ELSE 'conflicting rows in the file: same key ({key_cols}) as row ' || bad.first_row
                         || ' with different values' END,
               CASE WHEN bad.same THEN 'duplicate_row' ELSE 'conflicting_rows' END,
               CASE WHEN bad.same THEN jsonb_build_object('row', bad.first_row::text)
                    ELSE jsonb_build_object('key', '{key_cols}', 'row', bad.first_row::text) END,
               to_jsonb(bad) - '_row' - 'first_row' - 'same'
        FROM bad
        """,
        import_id, later, first,
    )


async def current_results_of_stage(conn: asyncpg.Connection, stage: str) -> pl.DataFrame:
    """The current results of the sample items the stage holds (the independence rules compare
    the file's results with them)."""
    return await _read(
        conn,
        f"""SELECT r.sample_code, r.item_code, r.role, r.lab_code FROM results r
            WHERE EXISTS (SELECT 1 FROM {stage} s WHERE s.sample_code = r.sample_code AND s.item_code = r.item_code)""",
        {"sample_code": pl.String, "item_code": pl.String, "role": pl.String, "lab_code": pl.String},
    )


async def original_labs(conn: asyncpg.Connection) -> pl.DataFrame:
    """Every sample with the original lab the register gives it (null where it gives none): the
    sample codes the batches are checked against, and the labs the independence rules compare
    with (joining them with the stage instead scans the stage once more: 1.7 s of a million-row
    import, against 0.1 s for the register)."""
    return await _read(
        conn, "SELECT sample_code, original_lab_code FROM samples",
        {"sample_code": pl.String, "original_lab_code": pl.String},
    )


# The independence rules of results, numbered as labeval.ingest.crossrow applies them: (column,
# reason text, its code in labeval.ingest.reasons, the code's arguments), as SQL over the rejected
# row `bad`. They mirror the trigger results_check_independent_lab (0001, 0009, 0011) so that
# such a row becomes a reject instead of aborting the whole load.
RESULT_RULE_REASONS = {
    1: ("lab_code", "'lab_code: a ' || bad.role || ' by the lab that did the original test (it must be another lab)'",
        "by_original_lab", "jsonb_build_object('role', bad.role)"),
    2: ("lab_code", "'lab_code: an original result by a lab that also retested this sample item'",
        "original_by_retest_lab", "NULL::jsonb"),
    3: ("lab_code", "'lab_code: arbitration by the lab that did the retest (it must be a third lab)'",
        "arbitration_by_retest_lab", "NULL::jsonb"),
    4: ("lab_code", "'lab_code: a retest by the lab that did the arbitration (it must be another lab)'",
        "retest_by_arbitration_lab", "NULL::jsonb"),
    5: ("role", "'role: a ' || bad.role || ' with no original result for this sample and item (in the database or the file)'",
        "no_original", "jsonb_build_object('role', bad.role)"),
}


async def reject_dependent_results(
    conn: asyncpg.Connection, stage: str, import_id: int, rows: list[int], rules: list[int]
) -> None:
    """Staged results `rows` break independence rule `rules` (pairwise, RESULT_RULE_REASONS)."""
    if not rows:
        return
    rules_ = RESULT_RULE_REASONS.items()
    column = " ".join(f"WHEN {n} THEN '{c}'" for n, (c, _, _, _) in rules_)
    value = " ".join(f"WHEN {n} THEN bad.{c}" for n, (c, _, _, _) in rules_)
    reason = " ".join(f"WHEN {n} THEN {r}" for n, (_, r, _, _) in rules_)
    code = " ".join(f"WHEN {n} THEN '{k}'" for n, (_, _, k, _) in rules_)
    args = " ".join(f"WHEN {n} THEN {a}" for n, (_, _, _, a) in rules_)
    await conn.execute(
        f"""
        WITH b AS (SELECT * FROM unnest($2::bigint[], $3::int[]) AS b (row_number, rule)),
        bad AS (DELETE FROM {stage} s USING b WHERE s._row = b.row_number RETURNING s.*, b.rule AS _rule)
        INSERT INTO import_rejects (import_id, row_number, column_name, value, reason, reason_code,
                                    reason_args, raw)
        SELECT $1, bad._row, CASE bad._rule {column} END, CASE bad._rule {value} END,
               CASE bad._rule {reason} END, CASE bad._rule {code} END, CASE bad._rule {args} END,
               to_jsonb(bad) - '_row' - '_rule'
        FROM bad
        """,
        import_id, rows, rules,
    )


# ---------------------------------------------------------------------------------------------
# load


# Loads of more rows than this refresh the target's statistics.
LARGE_LOAD = 2_000

# A versioned table's table of replaced versions and the columns a version keeps (all of the
# row's; the versions table adds superseded_at).
VERSIONS: Mapping[str, tuple[str, tuple[str, ...]]] = {"results": ("result_versions", STORED_COLUMNS)}


async def load_versioned(
    conn: asyncpg.Connection, target: Target, stage: str, import_id: int, columns: list[str]
) -> LoadCounts:
    """Corrections are new versions: the current row moves to the table's versions table
    (VERSIONS; as it was, with the time it was replaced) and the new one takes its place as
    version n + 1. Nothing is overwritten."""
    # raw_value is the text as written: "1.0" and "1" are the same result, not a correction.
    vals = [n for n in columns if n not in target.key and n != "raw_value"]
    same = f"ROW({', '.join('s.' + v for v in vals)}) IS NOT DISTINCT FROM ROW({', '.join('t.' + v for v in vals)})"
    keq = _keq(target, "s", "t")
    dups = _count(await conn.execute(f"DELETE FROM {stage} s USING {target.table} t WHERE {keq} AND {same}"))
    prev = f"{stage}_prev"
    await conn.execute(f"CREATE TEMP TABLE {prev} (_row bigint NOT NULL, version integer NOT NULL) ON COMMIT DROP")
    # The target holds current rows only, so every stage row that meets one is a correction: the
    # old row leaves the table and lands in the versions table in the same statement, and which
    # stage row replaced which version is kept for the insert below.
    versions, kept_columns = VERSIONS[target.table]
    stored = ", ".join(kept_columns)
    corrections = _count(await conn.execute(
        f"""WITH moved AS (
                DELETE FROM {target.table} t USING {stage} s WHERE {keq}
                RETURNING s._row, {', '.join('t.' + c for c in kept_columns)}
            ), kept AS (
                INSERT INTO {versions} ({stored}, superseded_at)
                SELECT {stored}, now() FROM moved
            )
            INSERT INTO {prev} (_row, version) SELECT _row, version FROM moved"""
    ))
    await conn.execute(f"ANALYZE {prev}")
    col_list = ", ".join(columns)
    await forget_trigger_plans(conn)
    # One statement, in the stage's order (the file's): the statement-level trigger then checks
    # the whole import at once, with hash joins where the import is large.
    accepted = _count(await conn.execute(
        f"""INSERT INTO {target.table} ({col_list}, version, import_id)
            SELECT {', '.join('s.' + n for n in columns)}, COALESCE(p.version, 0) + 1, $1
            FROM {stage} s LEFT JOIN {prev} p ON p._row = s._row""",
        import_id,
    ))
    if accepted > LARGE_LOAD:
        await analyse_loaded(conn, target)
    await conn.execute(f"DROP TABLE {prev}")
    return LoadCounts(accepted=accepted, duplicates=dups, corrections=corrections)


async def analyse_loaded(conn: asyncpg.Connection, target: Target) -> None:
    """After a large load. A grading run right after it would plan its joins on statistics that
    describe the table before it (once 140 s for a join planned on a table thought empty). For
    results, the columns the queries join, filter and order on (`target.analyse`): 0.14-0.16 s
    against 0.20-0.33 s for every column on a million results. The key columns alone were not
    enough: without reported_on's statistics (the pairs filter on it) the pairs query was
    estimated at 105 rows instead of 487 786 and planned as a nested loop, 2.1 s against 1.2 s.
    The other columns' statistics come with the next autovacuum."""
    columns = f" ({', '.join(target.analyse)})" if target.analyse else ""
    await conn.execute(f"ANALYZE {target.table}{columns}")


async def forget_trigger_plans(conn: asyncpg.Connection) -> None:
    """Before a load into results that the trigger checks (the INSERT of load_versioned, or a
    direct load where suspend_trigger left the trigger on). The trigger on results plans its
    statements once per session and keeps the plans: one made for a small statement or small
    tables (an earlier import on this connection, a new database) would serve a large load
    (before 0015, when the trigger also scanned results, such a plan made a 40 000-row load into
    a new database take 270 s). Dropping the cached plans makes them plan once more, on the
    tables' current sizes (the planner reads them from the files, not from the statistics) and
    the known size of the statement's new rows."""
    await conn.execute("DISCARD PLANS")


async def suspend_trigger(conn: asyncpg.Connection, table: str, trigger: str) -> bool:
    """Lock `table` against every other writer and suspend its `trigger` for this transaction,
    when that is safe here; say whether it was done. Run it before reading the reference data
    the load is checked against, and resume_trigger after the load.

    Why: the trigger on results checks a statement's rows against the parents and the samples
    register, a second time for rows the intake has just validated against the same tables
    (over a fifth of a direct load's time). The lock, SHARE ROW EXCLUSIVE (what DISABLE TRIGGER
    takes), keeps out every other writer of the table, so no other statement ever runs without
    the trigger, and every removal of a referenced code, which takes a SHARE lock on results
    first (0016): one that committed before the lock is seen by the reads that follow it (read
    committed: a snapshot per statement), one that comes later waits for this transaction and
    then finds the loaded rows. The catalogue change itself is undone by resume_trigger, or by
    the rollback, before any other session can see it.

    Not done (False: the trigger stays and checks as before) under repeatable read or
    serializable, where the reads would keep the transaction's first snapshot, or when the role
    does not own the table (only its owner may suspend a trigger)."""
    may = await conn.fetchval(
        """SELECT current_setting('transaction_isolation') = 'read committed'
                  AND pg_has_role(c.relowner, 'USAGE')
           FROM pg_class c WHERE c.oid = $1::regclass""",
        table,
    )
    if not may:
        return False
    # Identifiers come from the kinds' declarations, never from input.
    await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
    return True


async def resume_trigger(conn: asyncpg.Connection, table: str, trigger: str) -> None:
    await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")


async def end_direct_load(conn: asyncpg.Connection, target: Target, accepted: int) -> LoadCounts:
    """After a direct load that stands: every row written was new (a stored key would have been
    refused), so there is nothing counted as a duplicate or a correction."""
    if accepted > LARGE_LOAD:
        await analyse_loaded(conn, target)
    return LoadCounts(accepted=accepted, duplicates=0, corrections=0)


async def current_originals(conn: asyncpg.Connection, import_id: int, samples: list[str], items: list[str]) -> int:
    """How many of the sample items (pairwise) have an original result (results holds current
    versions only) from another import than `import_id`."""
    return await conn.fetchval(
        """SELECT count(*) FROM unnest($2::text[], $3::text[]) AS w (sample_code, item_code)
           WHERE EXISTS (SELECT 1 FROM results r
                         WHERE r.sample_code = w.sample_code AND r.item_code = w.item_code
                           AND r.role = 'original' AND r.import_id IS DISTINCT FROM $1)""",
        import_id, samples, items,
    )


async def load_upsert(
    conn: asyncpg.Connection, target: Target, stage: str, import_id: int, columns: list[str]
) -> LoadCounts:
    """Changed rows are updated in place, each change logged (before, after) in import_changes;
    a column absent from the file is left as it is."""
    real = [n for n in columns if n not in target.virtual]
    vals = [n for n in columns if n not in target.key]
    keq = _keq(target, "s", "t")
    s_vals = [f"COALESCE(s.{v}, '')" if v in target.virtual else f"s.{v}" for v in vals]
    t_vals = [target.virtual[v] if v in target.virtual else f"t.{v}" for v in vals]
    same = f"ROW({', '.join(s_vals)}) IS NOT DISTINCT FROM ROW({', '.join(t_vals)})" if vals else "true"
    dups = _count(await conn.execute(f"DELETE FROM {stage} s USING {target.table} t WHERE {keq} AND {same}"))
    extra = [f"'{v}', {target.virtual[v]}" for v in vals if v in target.virtual]
    before = "to_jsonb(t)" + (f" || jsonb_build_object({', '.join(extra)})" if extra else "")
    key_text = "concat_ws('|', " + ", ".join(f"s.{k}" for k in target.key) + ")"
    corrections = _count(await conn.execute(
        f"""INSERT INTO import_changes (import_id, kind, key, before, after)
            SELECT $1, '{target.kind}', {key_text}, {before}, to_jsonb(s) - '_row'
            FROM {stage} s JOIN {target.table} t ON {keq}""",
        import_id,
    ))
    sets = [f"{v} = s.{v}" for v in vals if v not in target.virtual]
    if target.has_updated_at:
        sets.append("updated_at = now()")
    if target.has_import_id:
        sets.append(f"import_id = {import_id:d}")
    if corrections and sets:
        await conn.execute(f"UPDATE {target.table} t SET {', '.join(sets)} FROM {stage} s WHERE {keq}")
    ins_cols = list(real) + (["import_id"] if target.has_import_id else [])
    ins_vals = [f"s.{n}" for n in real] + ([f"{import_id:d}"] if target.has_import_id else [])
    new = _count(await conn.execute(
        f"""INSERT INTO {target.table} ({', '.join(ins_cols)})
            SELECT {', '.join(ins_vals)} FROM {stage} s
            WHERE NOT EXISTS (SELECT 1 FROM {target.table} t WHERE {keq})"""
    ))
    return LoadCounts(accepted=new + corrections, duplicates=dups, corrections=corrections)


# A lab's scope list as the labs kind writes it: category codes sorted, joined by ";".
LAB_SCOPES = (
    "COALESCE((SELECT string_agg(x.category_code, ';' ORDER BY x.category_code COLLATE \"C\") "
    "FROM lab_scopes x WHERE x.lab_code = t.lab_code), '')"
)


async def replace_lab_scopes(conn: asyncpg.Connection, target: Target, stage: str, columns: list[str]) -> None:
    """After labs are loaded: each staged lab's scopes become exactly the file's list (a file
    without the scopes column leaves them as they are)."""
    if "scopes" not in columns:
        return
    await conn.execute(f"DELETE FROM lab_scopes WHERE lab_code IN (SELECT lab_code FROM {stage})")
    await conn.execute(
        f"""INSERT INTO lab_scopes (lab_code, category_code)
            SELECT DISTINCT s.lab_code, c FROM {stage} s, unnest(string_to_array(s.scopes, ';')) AS c
            WHERE s.scopes IS NOT NULL AND c <> ''"""
    )
