"""SQL for API keys (migration 0005): create, find by prefix, list, revoke, mark used."""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from labeval.db.errors import NotFound
from labeval.keys import Role, matches, new_key, secret_hmac, split_key


class ApiKey(msgspec.Struct, kw_only=True, frozen=True):
    id: int
    name: str
    role: Role
    # The clear part of the key (lbv_<prefix>_…), enough to tell keys apart in a list.
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class CreatedKey(msgspec.Struct, kw_only=True, frozen=True):
    """A new key: the only time `key` exists outside its holder's hands."""
    id: int
    name: str
    role: Role
    key: str


_COLUMNS = "id, name, role, prefix, created_at, last_used_at, revoked_at"
# last_used_at is written at most once a minute per key, so a busy key costs no write per request.
TOUCH_EVERY_SECONDS = 60


async def create(conn: asyncpg.Connection, pepper: bytes, *, name: str, role: Role) -> CreatedKey:
    prefix, secret, key = new_key()
    key_id = await conn.fetchval(
        "INSERT INTO api_keys (name, role, prefix, secret_hmac) VALUES ($1, $2, $3, $4) RETURNING id",
        name, role, prefix, secret_hmac(pepper, secret),
    )
    return CreatedKey(id=key_id, name=name, role=role, key=key)


async def authenticate(conn: asyncpg.Connection, pepper: bytes, key: str) -> ApiKey | None:
    """The live key this is, or None (malformed, unknown, wrong secret or revoked)."""
    parts = split_key(key)
    if parts is None:
        return None
    prefix, secret = parts
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, secret_hmac, now() - last_used_at > make_interval(secs => $2) "
        "OR last_used_at IS NULL AS stale FROM api_keys WHERE prefix = $1",
        prefix, TOUCH_EVERY_SECONDS,
    )
    if row is None or row["revoked_at"] is not None or not matches(pepper, secret, row["secret_hmac"]):
        return None
    if row["stale"]:
        await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = $1", row["id"])
    d = dict(row)
    del d["secret_hmac"], d["stale"]
    return ApiKey(**d)


async def touch(conn: asyncpg.Connection, key_id: int) -> None:
    await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = $1", key_id)


async def list_all(conn: asyncpg.Connection) -> list[ApiKey]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY id")
    return [ApiKey(**dict(r)) for r in rows]


async def revoke(conn: asyncpg.Connection, key_id: int) -> ApiKey:
    """Revoke a key (revoking it again keeps the first revocation time)."""
    row = await conn.fetchrow(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {_COLUMNS}",
        key_id,
    )
    if row is None:
        raise NotFound("api key", key_id)
    return ApiKey(**dict(row))
