"""SQL of intake: the reference codes rows are checked against, the staging table, the cross-row
rules (set-based, over the staged rows) and the two ways of loading a kind's target table.

Table and column names are spliced into these statements; they come from the kind declarations
(labeval.ingest.kinds), never from input. Values always travel as parameters or through COPY.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import asyncpg
import msgspec
import polars as pl

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
    """Every code in table.column (for the reference checks of a batch, as one polars column)."""
    return (await _read(conn, f"SELECT {column} FROM {table}", {column: pl.String})).get_column(column)


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


REJECT_COLUMNS = ("import_id", "row_number", "column_name", "value", "reason", "reason_code", "reason_args", "raw")


def reject_rows(import_id: int, rejects: pl.DataFrame, row: str) -> pl.DataFrame:
    """A batch's rejects (columns `row`, column, value, reason, reason_code, reason_args and raw
    as JSON text) in the column order of REJECT_COLUMNS."""
    return rejects.select(pl.lit(import_id, pl.Int64).alias("import_id"), row, "column", "value", "reason",
                          "reason_code", "reason_args", "raw")


async def prepare_stage(conn: asyncpg.Connection, stage: str, index: tuple[str, ...]) -> None:
    """Index the stage for the cross-row rules (when the kind asks for it) and analyse it:
    temporary tables are never auto-analysed, and the planner needs the row count to hash-join."""
    if index:
        await conn.execute(f"CREATE INDEX ON {stage} ({', '.join(index)})")
    await conn.execute(f"ANALYZE {stage}")


async def drop_stage(conn: asyncpg.Connection, stage: str) -> None:
    await conn.execute(f"DROP TABLE {stage}")


# ---------------------------------------------------------------------------------------------
# cross-row rules: each moves the rows it rejects from the stage to import_rejects


def _keq(target: Target, a: str, b: str) -> str:
    parts = []
    for k in target.key:
        if k in target.nullable_key:
            parts.append(f"COALESCE({a}.{k}, '') = COALESCE({b}.{k}, '')")
        else:
            parts.append(f"{a}.{k} = {b}.{k}")
    return " AND ".join(parts)


def _key_exprs(target: Target, a: str) -> str:
    return ", ".join(f"COALESCE({a}.{k}, '')" if k in target.nullable_key else f"{a}.{k}" for k in target.key)


async def reject_file_duplicates(
    conn: asyncpg.Connection, target: Target, stage: str, import_id: int, values: list[str]
) -> None:
    """A key seen again later in the file: the later rows are rejected (as a duplicate when the
    `values` columns are the same, as a conflict when they differ)."""
    keys = _key_exprs(target, "s")
    has = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {stage} s GROUP BY {keys} HAVING count(*) > 1)")
    if not has:
        return
    same = (
        f"ROW({', '.join('s.' + v for v in values)}) IS NOT DISTINCT FROM ROW({', '.join('f.' + v for v in values)})"
        if values else "true"
    )
    key_cols = ", ".join(target.key)
    key_vals = "concat_ws(' | ', " + ", ".join(f"bad.{k}" for k in target.key) + ")"
    await conn.execute(
        f"""
        WITH firsts AS (
            SELECT DISTINCT ON ({_key_exprs(target, 'x')}) x.* FROM {stage} x
            ORDER BY {_key_exprs(target, 'x')}, x._row
        ), bad AS (
            DELETE FROM {stage} s USING firsts f
            WHERE {_keq(target, 's', 'f')} AND s._row <> f._row
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
        import_id,
    )


_CURRENT = "r.sample_code = s.sample_code AND r.item_code = s.item_code AND r.superseded_at IS NULL"
_IN_FILE = "o.sample_code = s.sample_code AND o.item_code = s.item_code"

# (condition on staged row s, column, reason, its code in labeval.ingest.reasons, its arguments
# as SQL) applied in this order, each on the rows left by the
# previous one. Mirrors the trigger results_check_independent_lab (0001, 0009, 0012) so that such a row
# becomes a reject instead of aborting the whole load.
_RESULT_RULES = (
    (
        f"""s.role IN ('retest', 'arbitration') AND (
            EXISTS (SELECT 1 FROM samples x WHERE x.sample_code = s.sample_code AND x.original_lab_code = s.lab_code)
            OR EXISTS (SELECT 1 FROM results r WHERE {_CURRENT} AND r.role = 'original' AND r.lab_code = s.lab_code)
            OR EXISTS (SELECT 1 FROM {{stage}} o WHERE {_IN_FILE} AND o.role = 'original' AND o.lab_code = s.lab_code))""",
        "lab_code",
        "'lab_code: a ' || bad.role || ' by the lab that did the original test (it must be another lab)'",
        "by_original_lab", "jsonb_build_object('role', bad.role)",
    ),
    (
        f"""s.role = 'original' AND (
            EXISTS (SELECT 1 FROM results r WHERE {_CURRENT} AND r.role IN ('retest', 'arbitration') AND r.lab_code = s.lab_code)
            OR EXISTS (SELECT 1 FROM {{stage}} o WHERE {_IN_FILE} AND o.role IN ('retest', 'arbitration') AND o.lab_code = s.lab_code))""",
        "lab_code",
        "'lab_code: an original result by a lab that also retested this sample item'",
        "original_by_retest_lab", "NULL",
    ),
    (
        f"""s.role = 'arbitration' AND (
            EXISTS (SELECT 1 FROM results r WHERE {_CURRENT} AND r.role = 'retest' AND r.lab_code = s.lab_code)
            OR EXISTS (SELECT 1 FROM {{stage}} o WHERE {_IN_FILE} AND o.role = 'retest' AND o.lab_code = s.lab_code))""",
        "lab_code",
        "'lab_code: arbitration by the lab that did the retest (it must be a third lab)'",
        "arbitration_by_retest_lab", "NULL",
    ),
    (
        # The other order (migration 0012): a retest by a lab whose arbitration of the sample item
        # is already stored. An arbitration by the retest lab in the same file was rejected by the
        # rule above, which keeps the retest, so only the database is looked at here.
        f"""s.role = 'retest' AND
            EXISTS (SELECT 1 FROM results r WHERE {_CURRENT} AND r.role = 'arbitration' AND r.lab_code = s.lab_code)""",
        "lab_code",
        "'lab_code: a retest by the lab that did the arbitration (it must be another lab)'",
        "retest_by_arbitration_lab", "NULL",
    ),
    (
        f"""s.role IN ('retest', 'arbitration')
            AND NOT EXISTS (SELECT 1 FROM results r WHERE {_CURRENT} AND r.role = 'original')
            AND NOT EXISTS (SELECT 1 FROM {{stage}} o WHERE {_IN_FILE} AND o.role = 'original')""",
        "role",
        "'role: a ' || bad.role || ' with no original result for this sample and item (in the database or the file)'",
        "no_original", "jsonb_build_object('role', bad.role)",
    ),
)

# The result rules look up other rows of the same sample and item in the file (EXISTS … OR
# EXISTS … cannot become a hash join): without this index on the stage each lookup scans the
# whole stage and a million-row file takes hours.
RESULT_RULES_INDEX = ("sample_code", "item_code", "role", "lab_code")


async def reject_dependent_results(conn: asyncpg.Connection, target: Target, stage: str, import_id: int) -> None:
    """Results that break the independence of a retest (against the database and the file)."""
    for cond, column, reason, code, args in _RESULT_RULES:
        await conn.execute(
            f"""
            WITH bad AS (DELETE FROM {stage} s WHERE {cond.format(stage=stage)} RETURNING s.*)
            INSERT INTO import_rejects (import_id, row_number, column_name, value, reason, reason_code,
                                        reason_args, raw)
            SELECT $1, bad._row, '{column}', bad.{column}, {reason}, '{code}', {args}, to_jsonb(bad) - '_row'
            FROM bad
            """,
            import_id,
        )


# ---------------------------------------------------------------------------------------------
# load


async def _fresh_statistics(conn: asyncpg.Connection, tables: tuple[str, ...]) -> None:
    """The lookups of the independent-lab trigger (an index probe per new row) are planned once
    per session from table statistics, which may still describe the tables as empty (rows loaded
    earlier in this transaction, or a new database): the planner then picks a sequential scan per
    probe and a bulk insert turns quadratic (measured: 40 000 rows into a new database, 270 s).
    ANALYZE counts this transaction's own rows; DISCARD PLANS makes the lookups re-plan with the
    new numbers."""
    for t in tables:
        await conn.execute(f"ANALYZE {t}")
    await conn.execute("DISCARD PLANS")


async def load_versioned(
    conn: asyncpg.Connection, target: Target, stage: str, import_id: int, columns: list[str]
) -> LoadCounts:
    """Corrections are new versions: the current row is superseded, never overwritten."""
    # raw_value is the text as written: "1.0" and "1" are the same result, not a correction.
    vals = [n for n in columns if n not in target.key and n != "raw_value"]
    same = f"ROW({', '.join('s.' + v for v in vals)}) IS NOT DISTINCT FROM ROW({', '.join('t.' + v for v in vals)})"
    keq = _keq(target, "s", "t")
    dups = _count(await conn.execute(
        f"DELETE FROM {stage} s USING {target.table} t WHERE {keq} AND t.superseded_at IS NULL AND {same}"
    ))
    prev = f"{stage}_prev"
    await conn.execute(
        f"""CREATE TEMP TABLE {prev} ON COMMIT DROP AS
            SELECT s._row, t.result_id, t.version FROM {stage} s JOIN {target.table} t
            ON {keq} AND t.superseded_at IS NULL"""
    )
    await conn.execute(f"ANALYZE {prev}")
    corrections = _count(await conn.execute(
        f"UPDATE {target.table} t SET superseded_at = now() FROM {prev} p WHERE t.result_id = p.result_id"
    ))
    col_list = ", ".join(columns)
    # The trigger looks up results while results grow: load a small first slice, refresh the
    # statistics so its lookups use the indexes, then the rest (see _fresh_statistics).
    n = await conn.fetchval(f"SELECT count(*) FROM {stage}")
    bounds = [b for b in (2_000, 20_000) if b < n] + [n]
    accepted, done = 0, 0
    for upto in bounds:
        await _fresh_statistics(conn, ("results", "samples"))
        accepted += _count(await conn.execute(
            f"""INSERT INTO {target.table} ({col_list}, version, import_id)
                SELECT {', '.join('s.' + n for n in columns)}, COALESCE(p.version, 0) + 1, $1
                FROM (SELECT * FROM {stage} ORDER BY _row OFFSET {done:d} LIMIT {upto - done:d}) s
                LEFT JOIN {prev} p ON p._row = s._row""",
            import_id,
        ))
        done = upto
    if n > bounds[0]:
        # The statistics describe the table before its last, largest slice: a grading run right
        # after a large import would plan its pairs join on them.
        await conn.execute(f"ANALYZE {target.table}")
    await conn.execute(f"DROP TABLE {prev}")
    return LoadCounts(accepted=accepted, duplicates=dups, corrections=corrections)


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
