"""The intake pipeline, in four rooms run in one transaction, whatever the kind:

- stage: read the file in batches, validate each (polars, in a worker thread), COPY the valid
  rows into a temporary staging table and the rejects into the import log;
- cross-row: rules that need the whole file at once (duplicates in the file, the kind's own
  rules such as a retest's independence), worked out over the staged rows' keys in memory
  (labeval.ingest.crossrow), the rows they reject moved from the stage to the import log;
- load: the kind's load statement (new versions, or in-place updates with a change log);
- import log: the import's record, started, completed with its counts, or failed.

The SQL of every room is in labeval.db (intake, imports); what differs between kinds is in
their declarations (labeval.ingest.kinds).

Atomicity: one import is one transaction. Either every valid row is loaded and every reject
recorded, or - when the file cannot be read or the database refuses something - nothing is, and
the import is recorded as failed after the rollback, so the failed record stays. Run an import
on a connection outside any transaction (a savepoint inside a caller's transaction works, but a
rollback of that transaction takes the failed record with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import asyncpg
import polars as pl

from labeval.db import intake
from labeval.db.imports import ImportSource, complete_import, first_rejects, record_failed_import, start_import
from labeval.ingest import crossrow
from labeval.ingest.errors import IngestError
from labeval.ingest.kinds import resolve_kind
from labeval.ingest.read import ROW, Source, open_frame, open_path
from labeval.ingest.report import REPORT_REJECTS, ImportReport
from labeval.ingest.spec import Col, RefData, Spec
from labeval.ingest.validate import staging_columns, validate_batch

log = logging.getLogger(__name__)

BATCH_ROWS = 100_000


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
    timings: dict[str, float] | None = None,
) -> ImportReport:
    """Import one file (CSV, XLSX or Parquet). Raises UnreadableFile when it is not a table.
    `timings`, when given, receives the seconds spent in each room (stage, cross_row, load, log)."""
    spec = resolve_kind(kind)
    name = file_name or str(path)
    try:
        # Opening sniffs the format and the encoding and reads the header (an XLSX sheet whole).
        src = await asyncio.to_thread(open_path, path, spec, batch_size=batch_size, file_name=name)
    except IngestError as e:
        await _record_failure(conn, ImportSource(kind=spec.kind, source=source, user_name=user, file_name=name), str(e))
        raise
    try:
        return await _run(conn, spec, src, source=source, user=user, progress=progress, today=today,
                          timings=timings)
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


async def load_refs(conn: asyncpg.Connection, spec: Spec) -> RefData:
    """The reference data this kind's checks need, read once per import."""
    refs = RefData()
    for col in spec.columns:
        if col.ref is not None and col.ref not in refs.codes:
            refs.codes[col.ref] = await intake.codes(conn, *col.ref)
    for name, lookup in spec.lookups.items():
        refs.tables[name] = await lookup(conn)
    return refs


async def _stage_batches(
    conn: asyncpg.Connection, spec: Spec, src: Source, stage: str, import_id: int, refs: RefData, today: date,
    progress: Progress | None,
) -> tuple[int, pl.DataFrame]:
    """Read, validate and COPY every batch: valid rows into the stage, rejects into the log.
    Reading, validating and encoding are CPU-bound polars work: they run in a worker thread, so
    the event loop keeps serving other requests during a large import, and batch k+1 is prepared
    while PostgreSQL takes in batch k (the two overlap on two cores). Returns the rows read and
    the staged rows' keys."""
    present = set(src.columns)
    stage_names = [ROW, *[c.name for c in staging_columns(spec, present)]]
    batches = src.batches()
    # The staged rows' keys (and row numbers), kept for the cross-row rules.
    keys: list[pl.DataFrame] = []
    key_cols = [ROW, *spec.key]

    def prepare() -> tuple[int, pl.DataFrame, bytes | None, bytes | None] | None:
        batch = next(batches, None)
        if batch is None:
            return None
        valid, rejects = validate_batch(batch, spec, present, refs, today, src.raw_names)
        return (
            batch.height,
            valid.select(key_cols),
            intake.frame_csv(valid) if valid.height else None,
            intake.frame_csv(intake.reject_rows(import_id, rejects, ROW)) if rejects.height else None,
        )

    rows = 0
    pending = asyncio.ensure_future(asyncio.to_thread(prepare))
    try:
        while (ready := await pending) is not None:
            # Only one batch is read at a time: the next starts once this one is ready.
            pending = asyncio.ensure_future(asyncio.to_thread(prepare))
            height, valid_keys, valid_csv, rejects_csv = ready
            rows += height
            keys.append(valid_keys)
            if valid_csv is not None:
                await intake.copy_csv(conn, stage, valid_csv, stage_names)
            if rejects_csv is not None:
                await intake.copy_csv(conn, "import_rejects", rejects_csv, list(intake.REJECT_COLUMNS))
            if progress is not None:
                progress(rows, src.estimated_rows)
    finally:
        # A failed COPY leaves the next batch in preparation: wait for it, so that the source is
        # not closed under the worker thread (its error, if any, is not the one to report).
        if not pending.done():
            with contextlib.suppress(Exception):
                await pending
    return rows, pl.concat(keys, how="vertical_relaxed") if keys else pl.DataFrame()


def _compared(spec: Spec, cols: list[Col]) -> list[str]:
    """Columns that tell a repeated row from a conflicting one (raw_value is the text as
    written: "1.0" and "1" are the same value)."""
    return [c.name for c in cols if c.name not in spec.key and c.name != "raw_value"]


async def _run(
    conn: asyncpg.Connection, spec: Spec, src: Source, *, source: str, user: str | None,
    progress: Progress | None, today: date | None, timings: dict[str, float] | None = None,
) -> ImportReport:
    t0 = time.perf_counter()
    clock = [t0]

    def lap(room: str) -> None:
        now = time.perf_counter()
        if timings is not None:
            timings[room] = round(now - clock[0], 3)
        clock[0] = now

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
            # stage: every valid row of the file in a temporary table, every reject logged
            stage = f"ingest_stage_{import_id}"
            await intake.create_stage(conn, stage, [(c.name, c.sql) for c in cols], ROW)
            rows, keys = await _stage_batches(conn, spec, src, stage, import_id, refs, today, progress)
            lap("stage")
            # cross-row: rules that need the whole file (and the database)
            target = spec.target
            if keys.height:
                keys = await crossrow.reject_file_duplicates(
                    conn, target, stage, import_id, _compared(spec, cols), keys)
                for rule in spec.cross_row:
                    keys = await rule(conn, target, stage, import_id, keys)
            await intake.analyse_stage(conn, stage)
            lap("cross_row")
            # load: what is left goes into the kind's table
            names = [c.name for c in cols]
            counts = await spec.load(conn, stage, import_id, names)
            for step in spec.after_load:
                await step(conn, target, stage, names)
            await intake.drop_stage(conn, stage)
            lap("load")
            # import log: the record completes with the counts, in the same transaction
            rejected = await complete_import(
                conn, import_id, rows=rows, accepted=counts.accepted, duplicates=counts.duplicates,
                corrections=counts.corrections,
            )
            first = await first_rejects(conn, import_id, REPORT_REJECTS)
        lap("log")
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
        accepted=counts.accepted,
        rejected=rejected.rows,
        duplicates=counts.duplicates,
        corrections=counts.corrections,
        rejects=first,
        reject_lines=rejected.lines,
        seconds=round(time.perf_counter() - t0, 3),
    )
