"""The intake pipeline, in four rooms run in one transaction, whatever the kind:

- stage: read the file in batches, validate each (polars, in a worker thread), COPY the valid
  rows into a temporary staging table and the rejects into the import log;
- cross-row: rules that need the whole file at once (duplicates in the file, the kind's own
  rules such as a retest's independence), worked out over the staged rows' keys in memory
  (labeval.ingest.crossrow), the rows they reject moved from the stage to the import log;
- load: the kind's load statement (new versions, or in-place updates with a change log);
- import log: the import's record, started, completed with its counts, or failed.

A kind may first try a direct load (results do): every batch COPYed straight into its table as
it is validated, in a savepoint, with no stage and no INSERT ... SELECT. The table's constraints
refuse any row the cross-row rules or the versioning would treat otherwise, and the kind's
direct check covers the rest once every batch is in (the table's trigger is suspended meanwhile
when that check makes the trigger's checks itself: labeval.db.intake.suspend_trigger); any
refusal undoes the attempt and the file goes through the rooms above from its first row. A clean
file of new rows, the common case, is then loaded at about the cost of its COPY.

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
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import NamedTuple

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
    direct: bool = True,
) -> ImportReport:
    """Import one file (CSV, XLSX or Parquet). Raises UnreadableFile when it is not a table.
    `timings`, when given, receives the seconds spent in each room (direct, stage, cross_row,
    load, log). `direct=False` stages the file even where the kind tries a direct load first
    (the outcome is the same; the two are compared by the tests and the benchmark)."""
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
                          timings=timings, direct=direct)
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
    direct: bool = True,
) -> ImportReport:
    """Import rows already in memory: a polars frame or a JSON array of objects (`direct` as
    for ingest_path)."""
    spec = resolve_kind(kind)
    try:
        src = await asyncio.to_thread(open_frame, frame_or_rows, spec, file_name=file_name)
    except IngestError as e:
        await _record_failure(
            conn, ImportSource(kind=spec.kind, source=source, user_name=user, file_name=file_name), str(e)
        )
        raise
    return await _run(conn, spec, src, source=source, user=user, progress=None, today=today, direct=direct)


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
    for name, lookup in spec.lookups.items():
        refs.tables[name] = await lookup(conn)
    for ref, (name, column) in spec.codes_from.items():
        # A lookup that holds every code of a parent saves reading them again (the samples
        # register: the largest table there is, read once per results import).
        refs.codes[ref] = refs.tables[name].get_column(column).sort()
    for col in spec.columns:
        if col.ref is not None and col.ref not in refs.codes:
            refs.codes[col.ref] = await intake.codes(conn, *col.ref)
    return refs


class _Sink(NamedTuple):
    """Where a batch's valid rows are COPYed: the table, its columns in COPY's order with their
    SQL types, and the valid frame (`_row` + staging columns) made into those columns."""

    table: str
    columns: list[str]
    sql_types: list[str]
    shape: Callable[[pl.DataFrame], pl.DataFrame]


def _stage_sink(stage: str, cols: list[Col]) -> _Sink:
    return _Sink(stage, [ROW, *[c.name for c in cols]], ["bigint", *[c.sql for c in cols]], lambda valid: valid)


def _direct_sink(table: str, cols: list[Col], import_id: int) -> _Sink:
    # version is left to its default (1): a row that is not new makes the direct load give way.
    return _Sink(table, [*[c.name for c in cols], "import_id"], [*[c.sql for c in cols], "bigint"],
                 lambda valid: valid.drop(ROW).with_columns(pl.lit(import_id, pl.Int64).alias("import_id")))


# The first batch is cut into pieces of this many rows, then three times as many, and so on:
# PostgreSQL starts on a few rows while the rest are validated, and each piece is ready by the
# time the one before it is in (on a million-row import, the wait after the first piece fell from
# 0.09-0.11 s with a single 10 000-row cut to 0.00-0.03 s).
FIRST_ROWS = 10_000


def _sooner(batches: Iterator[pl.DataFrame], first: int) -> Iterator[pl.DataFrame]:
    """The batches, the first one cut into pieces growing threefold from `first` rows."""
    head = next(batches, None)
    if head is None:
        return
    start, size = 0, first
    while head.height - start > 2 * size:
        yield head.slice(start, size)
        start, size = start + size, 3 * size
    yield head.slice(start)
    yield from batches


class _Done(NamedTuple):
    """The worker thread's last answer: every valid row's keys, and the summary made of them."""

    keys: pl.DataFrame
    summary: object


async def _stage_batches(
    conn: asyncpg.Connection, spec: Spec, src: Source, sink: _Sink, import_id: int, refs: RefData, today: date,
    progress: Progress | None, summarise: Callable[[pl.DataFrame, RefData], object] | None = None,
) -> tuple[int, pl.DataFrame, object]:
    """Read, validate and COPY every batch: valid rows into the sink (the stage, or the target
    in a direct load), rejects into the log. Reading, validating and encoding are CPU-bound
    polars work: they run in a worker thread, so the event loop keeps serving other requests
    during a large import, and batch k+1 is prepared while PostgreSQL takes in batch k (the two
    overlap on two cores). Returns the rows read, the valid rows' keys and `summarise` of them
    (None without it), which the worker thread makes while PostgreSQL takes in the last batch."""
    present = set(src.columns)
    batches = _sooner(src.batches(), FIRST_ROWS)
    # The valid rows' keys (and row numbers), for the cross-row rules: only the worker thread
    # touches the list (one prepare() at a time, each awaited before the next starts).
    keys: list[pl.DataFrame] = []
    key_cols = [ROW, *spec.key]

    def prepare() -> tuple[int, bytes | None, bytes | None] | _Done:
        batch = next(batches, None)
        if batch is None:
            every = pl.concat(keys, how="vertical_relaxed") if keys else pl.DataFrame()
            return _Done(every, summarise(every, refs) if summarise is not None and every.height else None)
        valid, rejects = validate_batch(batch, spec, present, refs, today, src.raw_names)
        keys.append(valid.select(key_cols))
        return (
            batch.height,
            intake.frame_binary(sink.shape(valid), sink.sql_types) if valid.height else None,
            intake.frame_csv(intake.reject_rows(import_id, rejects, ROW)) if rejects.height else None,
        )

    rows = 0
    pending = asyncio.ensure_future(asyncio.to_thread(prepare))
    try:
        while not isinstance(ready := await pending, _Done):
            # Only one batch is read at a time: the next starts once this one is ready.
            pending = asyncio.ensure_future(asyncio.to_thread(prepare))
            height, valid_copy, rejects_csv = ready
            rows += height
            if valid_copy is not None:
                await intake.copy_binary(conn, sink.table, valid_copy, sink.columns)
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
    return rows, ready.keys, ready.summary


async def _direct_load(
    conn: asyncpg.Connection, spec: Spec, src: Source, import_id: int, refs: RefData, today: date,
    progress: Progress | None, cols: list[Col],
) -> tuple[int, intake.LoadCounts] | None:
    """Try the file as a direct load: every batch COPYed straight into the kind's table as it is
    validated, in a savepoint. Returns (rows read, counts), or None after undoing the attempt
    when the table refused a row or the kind's direct check found what the cross-row rules would
    reject; the caller then stages the file from its first row.

    Why: a clean file of new rows (the common case, and every initial load) then costs one COPY
    into the table, overlapped with validating the next batch, instead of a COPY into the stage
    followed by an INSERT ... SELECT from it. A file that is not clean costs the attempt as well:
    at most a whole extra pass when only the last check fails, usually far less, since a stored
    or repeated key is refused by the first batch that holds it."""
    assert spec.direct_check is not None
    target = spec.target
    try:
        async with conn.transaction():
            check = spec.direct_check
            rows, keys, summary = await _stage_batches(
                conn, spec, src, _direct_sink(target.table, cols, import_id), import_id, refs, today, progress,
                summarise=check.summarise)
            if summary is not None and not await check.passes(conn, import_id, summary):
                raise _NotDirect
            counts = await intake.end_direct_load(conn, target, keys.height)
    except (_NotDirect, asyncpg.IntegrityConstraintViolationError) as e:
        log.debug("import %d: direct load given up (%s), staging the file", import_id, type(e).__name__)
        return None
    return rows, counts


class _NotDirect(Exception):
    """The direct load wrote rows that staging the file would not have loaded as they are."""


def _compared(spec: Spec, cols: list[Col]) -> list[str]:
    """Columns that tell a repeated row from a conflicting one (raw_value is the text as
    written: "1.0" and "1" are the same value)."""
    return [c.name for c in cols if c.name not in spec.key and c.name != "raw_value"]


async def _run(
    conn: asyncpg.Connection, spec: Spec, src: Source, *, source: str, user: str | None,
    progress: Progress | None, today: date | None, timings: dict[str, float] | None = None,
    direct: bool = True,
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
            target = spec.target
            check = spec.direct_check if direct else None
            # Before the reference data is read: the codes it holds must be the ones that stay.
            suspended = (
                check is not None and check.trigger is not None
                and await intake.suspend_trigger(conn, target.table, check.trigger)
            )
            refs = await load_refs(conn, spec)
            names = [c.name for c in cols]
            loaded = None
            if check is not None:
                if not suspended:
                    # The trigger checks every batch: on plans made for the tables as they are now.
                    await intake.forget_trigger_plans(conn)
                loaded = await _direct_load(conn, spec, src, import_id, refs, today, progress, cols)
                if suspended:
                    # Whether the load stood or gave way: anything written from here on (the
                    # staged file) is checked by the trigger again.
                    await intake.resume_trigger(conn, target.table, check.trigger)
                lap("direct")
            if loaded is not None:
                rows, counts = loaded
            else:
                # stage: every valid row of the file in a temporary table, every reject logged
                stage = f"ingest_stage_{import_id}"
                await intake.create_stage(conn, stage, [(c.name, c.sql) for c in cols], ROW)
                rows, keys, _ = await _stage_batches(
                    conn, spec, src, _stage_sink(stage, cols), import_id, refs, today, progress)
                lap("stage")
                # cross-row: rules that need the whole file (and the database)
                if keys.height:
                    keys = await crossrow.reject_file_duplicates(
                        conn, target, stage, import_id, _compared(spec, cols), keys)
                    for rule in spec.cross_row:
                        keys = await rule(conn, target, stage, import_id, keys, refs)
                await intake.analyse_stage(conn, stage)
                lap("cross_row")
                # load: what is left goes into the kind's table
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
