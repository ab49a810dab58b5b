"""The intake pipeline: read in batches -> validate (polars) -> COPY into a staging table ->
cross-row checks and load (set-based SQL), all in one transaction.

Atomicity: one import is one transaction. Either every valid row is loaded and every reject
recorded, or - when the file cannot be read or the database refuses something - nothing is, and
the import is recorded as failed after the rollback, so the failed record stays. Run an import
on a connection outside any transaction (a savepoint inside a caller's transaction works, but a
rollback of that transaction takes the failed record with it).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import asyncpg
import polars as pl

from labeval.db.imports import ImportSource, complete_import, first_rejects, record_failed_import, start_import
from labeval.ingest.errors import IngestError
from labeval.ingest.read import ROW, Source, open_frame, open_path
from labeval.ingest.report import REPORT_REJECTS, ImportReport
from labeval.ingest.spec import Col, Spec, resolve_kind
from labeval.ingest.validate import RefData, staging_columns, validate_batch

log = logging.getLogger(__name__)

BATCH_ROWS = 100_000
NULL = r"\N"

# Tables that carry the id of the import that wrote each row.
_HAS_IMPORT_ID = {"results", "pt_results", "lab_reports", "lab_complaints", "lab_audit_findings",
                  "lab_report_findings"}
_HAS_UPDATED_AT = {"labs"}


# Reports progress: (rows read so far, estimated rows in the file or None).
Progress = Callable[[int, int | None], None]


async def ingest_path(
    conn: asyncpg.Connection,
    kind: str,
    path: str | Path,
    *,
    source: str = "cli",
    user: str | None = None,
    progress: Progress | None = None,
    batch_size: int = BATCH_ROWS,
    file_name: str | None = None,
    today: date | None = None,
) -> ImportReport:
    """Import one file (CSV, XLSX or Parquet). Raises UnreadableFile when it is not a table."""
    spec = resolve_kind(kind)
    name = file_name or str(path)
    try:
        # Opening sniffs the format and the encoding and reads the header (an XLSX sheet whole).
        src = await asyncio.to_thread(open_path, path, spec, batch_size=batch_size, file_name=name)
    except IngestError as e:
        await _record_failure(conn, ImportSource(kind=spec.kind, source=source, user_name=user, file_name=name), str(e))
        raise
    try:
        return await _run(conn, spec, src, source=source, user=user, progress=progress, today=today)
    finally:
        src.close()


async def ingest_frame(
    conn: asyncpg.Connection,
    kind: str,
    frame_or_rows: pl.DataFrame | pl.LazyFrame | list[dict],
    *,
    file_name: str | None = None,
    source: str = "api",
    user: str | None = None,
    today: date | None = None,
) -> ImportReport:
    """Import rows already in memory: a polars frame or a JSON array of objects."""
    spec = resolve_kind(kind)
    try:
        src = await asyncio.to_thread(open_frame, frame_or_rows, spec, file_name=file_name)
    except IngestError as e:
        await _record_failure(
            conn, ImportSource(kind=spec.kind, source=source, user_name=user, file_name=file_name), str(e)
        )
        raise
    return await _run(conn, spec, src, source=source, user=user, progress=None, today=today)


async def _record_failure(conn: asyncpg.Connection, src: ImportSource, error: str) -> None:
    """Keep a failed import in the log. Called after the import's own transaction rolled back;
    the record is lost only if the caller holds an outer transaction that rolls back too (so
    callers run imports on a connection of their own, as the API does)."""
    try:
        await record_failed_import(conn, src, error)
    except (asyncpg.PostgresError, asyncpg.InterfaceError):
        # The failure itself is what the caller must see; a broken connection cannot log it.
        log.exception("could not record the failed %s import of %s", src.kind, src.file_name)


# ---------------------------------------------------------------------------------------------
# reference data


async def _read_query(conn: asyncpg.Connection, query: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    buf = io.BytesIO()
    await conn.copy_from_query(query, output=buf, format="csv", header=True)
    if buf.tell() == 0:
        return pl.DataFrame(schema=schema)
    buf.seek(0)
    return pl.read_csv(buf, schema=schema)


async def load_refs(conn: asyncpg.Connection, spec: Spec) -> RefData:
    refs = RefData()
    for col in spec.columns:
        if col.ref is not None and col.ref not in refs.codes:
            table, column = col.ref
            df = await _read_query(conn, f"SELECT {column} FROM {table}", {column: pl.String})
            refs.codes[col.ref] = df.get_column(column)
    if spec.kind == "results":
        refs.items = await _read_query(
            conn,
            "SELECT item_code, unit, lod, kind FROM test_items",
            {"item_code": pl.String, "unit": pl.String, "lod": pl.Float64, "kind": pl.String},
        )
    return refs


# ---------------------------------------------------------------------------------------------
# SQL helpers (identifiers come from the specs, never from input)


def _sql_type(col: Col) -> str:
    return col.sql


def _keq(spec: Spec, a: str, b: str) -> str:
    parts = []
    for k in spec.key:
        if k in spec.nullable_key:
            parts.append(f"COALESCE({a}.{k}, '') = COALESCE({b}.{k}, '')")
        else:
            parts.append(f"{a}.{k} = {b}.{k}")
    return " AND ".join(parts)


def _key_exprs(spec: Spec, a: str) -> str:
    return ", ".join(f"COALESCE({a}.{k}, '')" if k in spec.nullable_key else f"{a}.{k}" for k in spec.key)


def _count(status: str) -> int:
    # "INSERT 0 12" / "DELETE 3" / "UPDATE 4"
    return int(status.rsplit(" ", 1)[-1])


async def _copy_frame(conn: asyncpg.Connection, table: str, df: pl.DataFrame, columns: list[str]) -> None:
    buf = io.BytesIO()
    df.write_csv(buf, include_header=False, null_value=NULL, date_format="%Y-%m-%d")
    buf.seek(0)
    await conn.copy_to_table(table, source=buf, columns=columns, format="csv", null=NULL)


def _reject_insert(import_id_param: str, column: str, value: str, reason: str, src: str, drop: str) -> str:
    return (
        "INSERT INTO import_rejects (import_id, row_number, column_name, value, reason, raw) "
        f"SELECT {import_id_param}, _row, {column}, {value}, {reason}, to_jsonb({src}) - '_row'{drop} FROM {src}"
    )


# ---------------------------------------------------------------------------------------------
# cross-row checks


async def _file_duplicates(conn: asyncpg.Connection, spec: Spec, stage: str, import_id: int, cols: list[Col]) -> None:
    keys = _key_exprs(spec, "s")
    has = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {stage} s GROUP BY {keys} HAVING count(*) > 1)")
    if not has:
        return
    vals = [c.name for c in cols if c.name not in spec.key and c.name != "raw_value"]
    same = (
        f"ROW({', '.join('s.' + v for v in vals)}) IS NOT DISTINCT FROM ROW({', '.join('f.' + v for v in vals)})"
        if vals else "true"
    )
    key_cols = ", ".join(spec.key)
    key_vals = "concat_ws(' | ', " + ", ".join(f"bad.{k}" for k in spec.key) + ")"
    await conn.execute(
        f"""
        WITH firsts AS (
            SELECT DISTINCT ON ({_key_exprs(spec, 'x')}) x.* FROM {stage} x
            ORDER BY {_key_exprs(spec, 'x')}, x._row
        ), bad AS (
            DELETE FROM {stage} s USING firsts f
            WHERE {_keq(spec, 's', 'f')} AND s._row <> f._row
            RETURNING s.*, f._row AS first_row, {same} AS same
        )
        INSERT INTO import_rejects (import_id, row_number, column_name, value, reason, raw)
        SELECT $1, bad._row, '{key_cols}', {key_vals},
               CASE WHEN bad.same THEN 'duplicate row in the file: same as row ' || bad.first_row
                    ELSE 'conflicting rows in the file: same key ({key_cols}) as row ' || bad.first_row
                         || ' with different values' END,
               to_jsonb(bad) - '_row' - 'first_row' - 'same'
        FROM bad
        """,
        import_id,
    )


_CURRENT = "r.sample_code = s.sample_code AND r.item_code = s.item_code AND r.superseded_at IS NULL"
_IN_FILE = "o.sample_code = s.sample_code AND o.item_code = s.item_code"

# (condition on staged row s, column, reason) applied in this order, each on the rows left by the
# previous one. Mirrors the trigger results_check_independent_lab in 0001 so that such a row
# becomes a reject instead of aborting the whole load.
_RESULT_RULES = (
    (
        f"""s.role IN ('retest', 'arbitration') AND (
            EXISTS (SELECT 1 FROM samples x WHERE x.sample_code = s.sample_code AND x.original_lab_code = s.lab_code)
            OR EXISTS (SELECT 1 FROM results r WHERE {_CURRENT} AND r.role = 'original' AND r.lab_code = s.lab_code)
            OR EXISTS (SELECT 1 FROM {{stage}} o WHERE {_IN_FILE} AND o.role = 'original' AND o.lab_code = s.lab_code))""",
        "lab_code",
        "'lab_code: a ' || bad.role || ' by the lab that did the original test (it must be another lab)'",
    ),
    (
        f"""s.role = 'original' AND (
            EXISTS (SELECT 1 FROM results r WHERE {_CURRENT} AND r.role IN ('retest', 'arbitration') AND r.lab_code = s.lab_code)
            OR EXISTS (SELECT 1 FROM {{stage}} o WHERE {_IN_FILE} AND o.role IN ('retest', 'arbitration') AND o.lab_code = s.lab_code))""",
        "lab_code",
        "'lab_code: an original result by a lab that also retested this sample item'",
    ),
    (
        f"""s.role = 'arbitration' AND (
            EXISTS (SELECT 1 FROM results r WHERE {_CURRENT} AND r.role = 'retest' AND r.lab_code = s.lab_code)
            OR EXISTS (SELECT 1 FROM {{stage}} o WHERE {_IN_FILE} AND o.role = 'retest' AND o.lab_code = s.lab_code))""",
        "lab_code",
        "'lab_code: arbitration by the lab that did the retest (it must be a third lab)'",
    ),
    (
        f"""s.role IN ('retest', 'arbitration')
            AND NOT EXISTS (SELECT 1 FROM results r WHERE {_CURRENT} AND r.role = 'original')
            AND NOT EXISTS (SELECT 1 FROM {{stage}} o WHERE {_IN_FILE} AND o.role = 'original')""",
        "role",
        "'role: a ' || bad.role || ' with no original result for this sample and item (in the database or the file)'",
    ),
)


async def _result_rules(conn: asyncpg.Connection, stage: str, import_id: int) -> None:
    for cond, column, reason in _RESULT_RULES:
        await conn.execute(
            f"""
            WITH bad AS (DELETE FROM {stage} s WHERE {cond.format(stage=stage)} RETURNING s.*)
            INSERT INTO import_rejects (import_id, row_number, column_name, value, reason, raw)
            SELECT $1, bad._row, '{column}', bad.{column}, {reason}, to_jsonb(bad) - '_row' FROM bad
            """,
            import_id,
        )


# ---------------------------------------------------------------------------------------------
# load


_SCOPES = (
    "COALESCE((SELECT string_agg(x.category_code, ';' ORDER BY x.category_code COLLATE \"C\") "
    "FROM lab_scopes x WHERE x.lab_code = t.lab_code), '')"
)


async def _fresh_statistics(conn: asyncpg.Connection, tables: tuple[str, ...]) -> None:
    """Per-row lookups (foreign keys, the independent-lab trigger) are planned once per session
    from table statistics, which may still describe the tables as empty (rows loaded earlier in
    this transaction, or a new database): the planner then picks sequential scans and a bulk
    insert turns quadratic. ANALYZE counts this transaction's own rows; DISCARD PLANS makes the
    lookups re-plan with the new numbers."""
    for t in tables:
        await conn.execute(f"ANALYZE {t}")
    await conn.execute("DISCARD PLANS")


async def _load_versioned(conn: asyncpg.Connection, spec: Spec, stage: str, import_id: int, cols: list[Col]) -> tuple[int, int, int]:
    names = [c.name for c in cols]
    # raw_value is the text as written: "1.0" and "1" are the same result, not a correction.
    vals = [n for n in names if n not in spec.key and n != "raw_value"]
    same = f"ROW({', '.join('s.' + v for v in vals)}) IS NOT DISTINCT FROM ROW({', '.join('t.' + v for v in vals)})"
    keq = _keq(spec, "s", "t")
    dups = _count(await conn.execute(
        f"DELETE FROM {stage} s USING {spec.table} t WHERE {keq} AND t.superseded_at IS NULL AND {same}"
    ))
    prev = f"{stage}_prev"
    await conn.execute(
        f"""CREATE TEMP TABLE {prev} ON COMMIT DROP AS
            SELECT s._row, t.result_id, t.version FROM {stage} s JOIN {spec.table} t
            ON {keq} AND t.superseded_at IS NULL"""
    )
    await conn.execute(f"ANALYZE {prev}")
    corrections = _count(await conn.execute(
        f"UPDATE {spec.table} t SET superseded_at = now() FROM {prev} p WHERE t.result_id = p.result_id"
    ))
    col_list = ", ".join(names)
    # The trigger looks up results while results grow: load a small first slice, refresh the
    # statistics so its lookups use the indexes, then the rest (see _fresh_statistics).
    n = await conn.fetchval(f"SELECT count(*) FROM {stage}")
    bounds = [b for b in (2_000, 20_000) if b < n] + [n]
    accepted, done = 0, 0
    for upto in bounds:
        await _fresh_statistics(conn, ("results", "samples", "labs", "test_items"))
        accepted += _count(await conn.execute(
            f"""INSERT INTO {spec.table} ({col_list}, version, import_id)
                SELECT {', '.join('s.' + n for n in names)}, COALESCE(p.version, 0) + 1, $1
                FROM (SELECT * FROM {stage} ORDER BY _row OFFSET {done:d} LIMIT {upto - done:d}) s
                LEFT JOIN {prev} p ON p._row = s._row""",
            import_id,
        ))
        done = upto
    await conn.execute(f"DROP TABLE {prev}")
    return accepted, dups, corrections


async def _load_upsert(conn: asyncpg.Connection, spec: Spec, stage: str, import_id: int, cols: list[Col]) -> tuple[int, int, int]:
    names = [c.name for c in cols]
    real = [n for n in names if n not in spec.virtual]
    vals = [n for n in names if n not in spec.key]
    keq = _keq(spec, "s", "t")
    s_vals = [f"COALESCE(s.{v}, '')" if v == "scopes" else f"s.{v}" for v in vals]
    t_vals = [_SCOPES if v == "scopes" else f"t.{v}" for v in vals]
    same = f"ROW({', '.join(s_vals)}) IS NOT DISTINCT FROM ROW({', '.join(t_vals)})" if vals else "true"
    dups = _count(await conn.execute(f"DELETE FROM {stage} s USING {spec.table} t WHERE {keq} AND {same}"))
    before = "to_jsonb(t)" + (f" || jsonb_build_object('scopes', {_SCOPES})" if "scopes" in vals else "")
    key_text = "concat_ws('|', " + ", ".join(f"s.{k}" for k in spec.key) + ")"
    corrections = _count(await conn.execute(
        f"""INSERT INTO import_changes (import_id, kind, key, before, after)
            SELECT $1, '{spec.kind}', {key_text}, {before}, to_jsonb(s) - '_row'
            FROM {stage} s JOIN {spec.table} t ON {keq}""",
        import_id,
    ))
    sets = [f"{v} = s.{v}" for v in vals if v not in spec.virtual]
    if spec.table in _HAS_UPDATED_AT:
        sets.append("updated_at = now()")
    if spec.table in _HAS_IMPORT_ID:
        sets.append(f"import_id = {import_id:d}")
    if corrections and sets:
        await conn.execute(f"UPDATE {spec.table} t SET {', '.join(sets)} FROM {stage} s WHERE {keq}")
    ins_cols = list(real) + (["import_id"] if spec.table in _HAS_IMPORT_ID else [])
    ins_vals = [f"s.{n}" for n in real] + ([f"{import_id:d}"] if spec.table in _HAS_IMPORT_ID else [])
    new = _count(await conn.execute(
        f"""INSERT INTO {spec.table} ({', '.join(ins_cols)})
            SELECT {', '.join(ins_vals)} FROM {stage} s
            WHERE NOT EXISTS (SELECT 1 FROM {spec.table} t WHERE {keq})"""
    ))
    if "scopes" in vals:
        await conn.execute(f"DELETE FROM lab_scopes WHERE lab_code IN (SELECT lab_code FROM {stage})")
        await conn.execute(
            f"""INSERT INTO lab_scopes (lab_code, category_code)
                SELECT DISTINCT s.lab_code, c FROM {stage} s, unnest(string_to_array(s.scopes, ';')) AS c
                WHERE s.scopes IS NOT NULL AND c <> ''"""
        )
    return new + corrections, dups, corrections


# ---------------------------------------------------------------------------------------------


async def _stage_batches(
    conn: asyncpg.Connection, spec: Spec, src: Source, stage: str, import_id: int, refs: RefData, today: date,
    progress: Progress | None,
) -> int:
    """Read, validate and COPY every batch: valid rows into the stage, rejects into the log.
    Reading and validating are CPU-bound polars work: they run in a worker thread, so the event
    loop keeps serving other requests during a large import. Returns the rows read."""
    present = set(src.columns)
    stage_names = [ROW, *[c.name for c in staging_columns(spec, present)]]
    rows = 0
    batches = src.batches()
    while (batch := await asyncio.to_thread(next, batches, None)) is not None:
        rows += batch.height
        valid, rejects = await asyncio.to_thread(validate_batch, batch, spec, present, refs, today, src.raw_names)
        if valid.height:
            await _copy_frame(conn, stage, valid, stage_names)
        if rejects.height:
            await _copy_frame(
                conn, "import_rejects",
                rejects.select(pl.lit(import_id, pl.Int64).alias("import_id"), ROW, "column", "value", "reason", "raw"),
                ["import_id", "row_number", "column_name", "value", "reason", "raw"],
            )
        if progress is not None:
            progress(rows, src.estimated_rows)
    return rows


async def _run(
    conn: asyncpg.Connection, spec: Spec, src: Source, *, source: str, user: str | None,
    progress: Progress | None, today: date | None,
) -> ImportReport:
    t0 = time.perf_counter()
    today = today or date.today()
    cols = staging_columns(spec, set(src.columns))
    who = ImportSource(
        kind=spec.kind, source=source, user_name=user, file_name=src.file_name, checksum=src.checksum,
        format=src.format, encoding=src.encoding,
    )
    try:
        async with conn.transaction():
            import_id = await start_import(conn, who)
            refs = await load_refs(conn, spec)
            stage = f"ingest_stage_{import_id}"
            coldefs = ", ".join(f"{c.name} {_sql_type(c)}" for c in cols)
            await conn.execute(f"CREATE TEMP TABLE {stage} (_row bigint NOT NULL, {coldefs}) ON COMMIT DROP")
            rows = await _stage_batches(conn, spec, src, stage, import_id, refs, today, progress)
            if spec.kind == "results":
                # The cross-row rules look up other rows of the same sample and item in the file
                # (EXISTS … OR EXISTS … cannot become a hash join): without an index each lookup
                # scans the whole stage and a million-row file takes hours.
                await conn.execute(f"CREATE INDEX ON {stage} (sample_code, item_code, role, lab_code)")
            # Temporary tables are never auto-analysed; the planner needs the row count to hash-join.
            await conn.execute(f"ANALYZE {stage}")
            await _file_duplicates(conn, spec, stage, import_id, cols)
            if spec.kind == "results":
                await _result_rules(conn, stage, import_id)
            if spec.mode == "versioned":
                accepted, dups, corrections = await _load_versioned(conn, spec, stage, import_id, cols)
            else:
                accepted, dups, corrections = await _load_upsert(conn, spec, stage, import_id, cols)
            await conn.execute(f"DROP TABLE {stage}")
            rejected = await complete_import(
                conn, import_id, rows=rows, accepted=accepted, duplicates=dups, corrections=corrections
            )
            first = await first_rejects(conn, import_id, REPORT_REJECTS)
    except Exception as e:
        await _record_failure(conn, who, f"{type(e).__name__}: {e}")
        raise
    return ImportReport(
        import_id=import_id,
        kind=spec.kind,
        file_name=src.file_name,
        format=src.format,
        encoding=src.encoding,
        checksum=src.checksum,
        rows=rows,
        accepted=accepted,
        rejected=rejected.rows,
        duplicates=dups,
        corrections=corrections,
        rejects=first,
        reject_lines=rejected.lines,
        seconds=round(time.perf_counter() - t0, 3),
    )
