"""SQL for the audit log (migration 0005): append a row, read rows after a cursor."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec


class AuditEntry(msgspec.Struct, kw_only=True, frozen=True):
    id: int
    # 'key:<id>:<name>' for an API key, 'cli:<login>' for the command line, 'scheduler'.
    actor: str
    # Method and route template (e.g. 'POST /api/v1/runs') or CLI command (e.g. 'apikey.create').
    action: str
    target: dict[str, Any]
    # SHA-256 (hex) of the request body; null when there was none.
    payload_digest: str | None
    request_id: str | None
    # HTTP status of the answer; null for the CLI.
    status: int | None
    at: datetime


_COLUMNS = "id, actor, action, target, payload_digest, request_id, status, at"


# target is a dict: the pool's json codec (labeval.db.pool) encodes it.
async def append(
    conn: asyncpg.Connection, *, actor: str, action: str, target: dict[str, Any],
    payload_digest: str | None = None, request_id: str | None = None, status: int | None = None,
) -> int:
    return await conn.fetchval(
        """INSERT INTO audit_log (actor, action, target, payload_digest, request_id, status)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        actor, action, target, payload_digest, request_id, status,
    )


async def after(
    conn: asyncpg.Connection, after_id: int, *, limit: int, actor: str | None = None, action: str | None = None,
    since: datetime | None = None, until: datetime | None = None,
) -> list[AuditEntry]:
    """Rows with id > after_id in id order, filtered; the last id is the next cursor."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM audit_log
            WHERE id > $1 AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR action = $3)
              AND ($4::timestamptz IS NULL OR at >= $4) AND ($5::timestamptz IS NULL OR at < $5)
            ORDER BY id LIMIT $6""",
        after_id, actor, action, since, until, limit,
    )
    return [AuditEntry(**dict(r)) for r in rows]
