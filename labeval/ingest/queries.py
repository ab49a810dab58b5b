"""Reading back what imports did: the import log, rejects (also as CSV), reference-data changes
and the version history of one result."""

from __future__ import annotations

import io
from datetime import date, datetime
from typing import Any

import asyncpg
import msgspec


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


class RejectRecord(msgspec.Struct, kw_only=True, frozen=True):
    row: int
    column: str | None
    value: str | None
    reason: str
    raw: dict[str, Any] | None


class ChangeRecord(msgspec.Struct, kw_only=True, frozen=True):
    kind: str
    key: str
    before: dict[str, Any]
    after: dict[str, Any]
    changed_at: datetime


class ResultVersion(msgspec.Struct, kw_only=True, frozen=True):
    result_id: int
    version: int
    value: float | None
    censored: bool
    censor_limit: float | None
    raw_value: str | None
    unit: str | None
    expanded_uncertainty: float | None
    coverage_k: float | None
    replicates: int | None
    verdict: str | None
    decision_rule: str | None
    reported_on: date | None
    import_id: int | None
    created_at: datetime
    superseded_at: datetime | None


_IMPORT_COLS = (
    "import_id, kind, source, user_name, file_name, checksum, format, encoding, status, rows, accepted, "
    "rejected, duplicates, corrections, error, started_at, finished_at"
)


def _import(r: asyncpg.Record) -> ImportRecord:
    return ImportRecord(**dict(r))


async def list_imports(
    conn: asyncpg.Connection, *, kind: str | None = None, limit: int = 50, offset: int = 0
) -> list[ImportRecord]:
    rows = await conn.fetch(
        f"""SELECT {_IMPORT_COLS} FROM imports WHERE ($1::text IS NULL OR kind = $1)
            ORDER BY started_at DESC, import_id DESC LIMIT $2 OFFSET $3""",
        kind, limit, offset,
    )
    return [_import(r) for r in rows]


async def get_import(conn: asyncpg.Connection, import_id: int) -> ImportRecord | None:
    r = await conn.fetchrow(f"SELECT {_IMPORT_COLS} FROM imports WHERE import_id = $1", import_id)
    return _import(r) if r else None


async def list_rejects(
    conn: asyncpg.Connection, import_id: int, *, limit: int | None = None, offset: int = 0
) -> list[RejectRecord]:
    rows = await conn.fetch(
        """SELECT row_number, column_name, value, reason, raw FROM import_rejects WHERE import_id = $1
           ORDER BY row_number, column_name NULLS FIRST LIMIT $2 OFFSET $3""",
        import_id, limit, offset,
    )
    return [RejectRecord(row=r[0], column=r[1], value=r[2], reason=r[3], raw=r[4]) for r in rows]


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


async def result_history(
    conn: asyncpg.Connection, sample_code: str, item_code: str, role: str, lab_code: str
) -> list[ResultVersion]:
    """Every version of one result (natural key), oldest first; the current one has
    superseded_at null."""
    rows = await conn.fetch(
        """SELECT result_id, version, value, censored, censor_limit, raw_value, unit, expanded_uncertainty,
                  coverage_k, replicates, verdict, decision_rule, reported_on, import_id, created_at, superseded_at
           FROM results WHERE sample_code = $1 AND item_code = $2 AND role = $3 AND lab_code = $4
           ORDER BY version""",
        sample_code, item_code, role, lab_code,
    )
    return [ResultVersion(**dict(r)) for r in rows]
