"""The import log: one row per import (started, completed or failed), its rejected rows (also as
CSV) and the reference-data rows it changed in place."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from labeval.db.errors import NotFound


class ImportRecord(msgspec.Struct, kw_only=True, frozen=True):
    import_id: int
    kind: str
    source: str
    user_name: str | None
    file_name: str | None
    checksum: str | None
    format: str | None
    encoding: str | None
    status: str
    rows: int
    accepted: int
    rejected: int
    duplicates: int
    corrections: int
    error: str | None
    started_at: datetime
    finished_at: datetime | None


class Reject(msgspec.Struct, kw_only=True, frozen=True):
    # 1-based row as a spreadsheet shows it: the header is row 1, the first data row is row 2
    # (for a JSON array body: the object's 1-based position).
    row: int
    column: str | None
    value: str | None
    reason: str


class RejectRecord(Reject, kw_only=True, frozen=True):
    """A reject with the whole rejected row, as read (keys are the file's own headers), and the
    kind of its reason: a stable code (labeval.ingest.reasons) and its arguments, for a client
    that says the reason in its own words; null on lines stored before migration 0012."""

    raw: dict[str, Any] | None
    reason_code: str | None = None
    reason_args: dict[str, str] | None = None


class RejectCount(msgspec.Struct, kw_only=True, frozen=True):
    rows: int  # rejected rows
    lines: int  # reject lines (a row may have several reasons)


class ImportPage(msgspec.Struct, kw_only=True, frozen=True):
    """One page of the import log, newest first; `next` is the `after` of the next page."""

    items: list[ImportRecord]
    next: int | None = None


class ChangeRecord(msgspec.Struct, kw_only=True, frozen=True):
    kind: str
    key: str
    before: dict[str, Any]
    after: dict[str, Any]
    changed_at: datetime


class ImportSource(msgspec.Struct, kw_only=True, frozen=True):
    """Who imported what: the columns an import record starts with."""

    kind: str
    source: str
    user_name: str | None
    file_name: str | None
    checksum: str | None = None
    format: str | None = None
    encoding: str | None = None


async def start_import(conn: asyncpg.Connection, src: ImportSource) -> int:
    return await conn.fetchval(
        """INSERT INTO imports (kind, source, user_name, file_name, checksum, format, encoding)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING import_id""",
        src.kind, src.source, src.user_name, src.file_name, src.checksum, src.format, src.encoding,
    )


async def complete_import(
    conn: asyncpg.Connection, import_id: int, *, rows: int, accepted: int, duplicates: int, corrections: int
) -> RejectCount:
    """Mark an import completed with its counts; the rejects are counted from what was stored."""
    counted = await conn.fetchrow(
        "SELECT count(DISTINCT row_number) AS rows, count(*) AS lines FROM import_rejects WHERE import_id = $1",
        import_id,
    )
    rejected = RejectCount(rows=counted["rows"], lines=counted["lines"])
    await conn.execute(
        """UPDATE imports SET status = 'completed', rows = $2, accepted = $3, rejected = $4,
               duplicates = $5, corrections = $6, finished_at = clock_timestamp()
           WHERE import_id = $1""",
        import_id, rows, accepted, rejected.rows, duplicates, corrections,
    )
    return rejected


async def record_failed_import(conn: asyncpg.Connection, src: ImportSource, error: str) -> int:
    """A failed import's record. The caller runs this outside the import's (rolled back)
    transaction, or the record would be rolled back with it."""
    return await conn.fetchval(
        """INSERT INTO imports (kind, source, user_name, file_name, checksum, format, encoding, status, error,
                                finished_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, 'failed', $8, clock_timestamp()) RETURNING import_id""",
        src.kind, src.source, src.user_name, src.file_name, src.checksum, src.format, src.encoding, error,
    )


_IMPORT_COLUMNS = (
    "import_id, kind, source, user_name, file_name, checksum, format, encoding, status, rows, accepted, "
    "rejected, duplicates, corrections, error, started_at, finished_at"
)


async def list_imports(
    conn: asyncpg.Connection, *, kind: str | None = None, limit: int = 50, before: int | None = None
) -> list[ImportRecord]:
    """The import log, newest first (by id: ids are issued in start order), those with
    import_id < before if given."""
    rows = await conn.fetch(
        f"""SELECT {_IMPORT_COLUMNS} FROM imports
            WHERE ($1::text IS NULL OR kind = $1) AND ($3::bigint IS NULL OR import_id < $3)
            ORDER BY import_id DESC LIMIT $2""",
        kind, limit, before,
    )
    return [ImportRecord(**dict(r)) for r in rows]


async def get_import(conn: asyncpg.Connection, import_id: int) -> ImportRecord:
    r = await conn.fetchrow(f"SELECT {_IMPORT_COLUMNS} FROM imports WHERE import_id = $1", import_id)
    if r is None:
        raise NotFound("import", import_id)
    return ImportRecord(**dict(r))


async def first_rejects(conn: asyncpg.Connection, import_id: int, limit: int) -> list[Reject]:
    rows = await conn.fetch(
        """SELECT row_number, column_name, value, reason FROM import_rejects
           WHERE import_id = $1 ORDER BY row_number, column_name NULLS FIRST LIMIT $2""",
        import_id, limit,
    )
    return [Reject(row=r["row_number"], column=r["column_name"], value=r["value"], reason=r["reason"]) for r in rows]


class CodedReject(msgspec.Struct, kw_only=True, frozen=True):
    """A reject line with the kind of its reason (labeval.ingest.reasons), for the pages that
    say it in the reader's language; code and arguments are null on lines older than 0012."""

    row: int
    column: str | None
    value: str | None
    reason: str
    reason_code: str | None
    reason_args: dict[str, str] | None


async def first_coded_rejects(conn: asyncpg.Connection, import_id: int, limit: int) -> list[CodedReject]:
    rows = await conn.fetch(
        """SELECT row_number, column_name, value, reason, reason_code, reason_args FROM import_rejects
           WHERE import_id = $1 ORDER BY row_number, column_name NULLS FIRST LIMIT $2""",
        import_id, limit,
    )
    return [CodedReject(row=r["row_number"], column=r["column_name"], value=r["value"], reason=r["reason"],
                        reason_code=r["reason_code"], reason_args=r["reason_args"]) for r in rows]


async def list_rejects(
    conn: asyncpg.Connection, import_id: int, *, limit: int | None = None, offset: int = 0
) -> list[RejectRecord]:
    rows = await conn.fetch(
        """SELECT row_number, column_name, value, reason, raw, reason_code, reason_args FROM import_rejects
           WHERE import_id = $1 ORDER BY row_number, column_name NULLS FIRST LIMIT $2 OFFSET $3""",
        import_id, limit, offset,
    )
    return [
        RejectRecord(row=r["row_number"], column=r["column_name"], value=r["value"], reason=r["reason"], raw=r["raw"],
                     reason_code=r["reason_code"], reason_args=r["reason_args"])
        for r in rows
    ]


async def rejects_csv(conn: asyncpg.Connection, import_id: int) -> bytes:
    """Every reject line of an import as CSV (UTF-8 with BOM, so spreadsheet programs open the
    Chinese text correctly): row, column, value, reason, raw (the row as JSON)."""
    buf = io.BytesIO()
    buf.write("\ufeff".encode())
    await conn.copy_from_query(
        """SELECT row_number AS row, column_name AS column, value, reason, raw::text AS raw
           FROM import_rejects WHERE import_id = $1 ORDER BY row_number, column_name NULLS FIRST""",
        import_id, output=buf, format="csv", header=True,
    )
    return buf.getvalue()


async def list_changes(conn: asyncpg.Connection, import_id: int) -> list[ChangeRecord]:
    rows = await conn.fetch(
        "SELECT kind, key, before, after, changed_at FROM import_changes WHERE import_id = $1 ORDER BY key",
        import_id,
    )
    return [ChangeRecord(**dict(r)) for r in rows]
