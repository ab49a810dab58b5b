"""SQL for people (migration 0008): accounts, sign-in sessions and the attempts the sign-in rate
limit counts."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import msgspec

from labeval.db.errors import NotFound
from labeval.keys import Role


class User(msgspec.Struct, kw_only=True, frozen=True):
    id: int
    username: str
    display_name: str
    role: Role
    created_at: datetime
    disabled_at: datetime | None

    @property
    def actor(self) -> str:
        # The audit log's name for a person (API keys are key:<id>:<name>).
        return f"user:{self.id}:{self.username}"


class Credentials(msgspec.Struct, kw_only=True, frozen=True):
    user: User
    password_hash: str


_COLUMNS = "user_id AS id, username, display_name, role, created_at, disabled_at"


async def create(conn: asyncpg.Connection, *, username: str, display_name: str, role: Role,
                 password_hash: str) -> User:
    row = await conn.fetchrow(
        f"INSERT INTO users (username, display_name, role, password_hash) VALUES ($1, $2, $3, $4) "
        f"RETURNING {_COLUMNS}",
        username, display_name, role, password_hash,
    )
    return User(**dict(row))


async def set_password(conn: asyncpg.Connection, user_id: int, password_hash: str) -> None:
    await conn.execute("UPDATE users SET password_hash = $2 WHERE user_id = $1", user_id, password_hash)
    # A new password ends every session opened with the old one.
    await conn.execute("DELETE FROM web_sessions WHERE user_id = $1", user_id)


async def credentials(conn: asyncpg.Connection, username: str) -> Credentials | None:
    """The live (not disabled) account of that name, any case, with its hash."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, password_hash FROM users WHERE lower(username) = lower($1) AND disabled_at IS NULL",
        username,
    )
    if row is None:
        return None
    d = dict(row)
    return Credentials(password_hash=d.pop("password_hash"), user=User(**d))


async def list_all(conn: asyncpg.Connection) -> list[User]:
    return [User(**dict(r)) for r in await conn.fetch(f"SELECT {_COLUMNS} FROM users ORDER BY user_id")]


async def disable(conn: asyncpg.Connection, username: str) -> User:
    row = await conn.fetchrow(
        f"UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE lower(username) = lower($1) "
        f"RETURNING {_COLUMNS}",
        username,
    )
    if row is None:
        raise NotFound("user", username)
    await conn.execute("DELETE FROM web_sessions WHERE user_id = $1", row["id"])
    return User(**dict(row))


# --- sessions -------------------------------------------------------------------------------

async def open_session(conn: asyncpg.Connection, user_id: int, digest: bytes, *, idle: timedelta,
                       absolute: timedelta) -> datetime:
    """Store a new session; returns its absolute expiry (the cookie's Max-Age follows it)."""
    return await conn.fetchval(
        """
        INSERT INTO web_sessions (token_sha256, user_id, expires_at, absolute_expiry)
        VALUES ($1, $2, now() + least($3::interval, $4::interval), now() + $4::interval)
        RETURNING absolute_expiry
        """,
        digest, user_id, idle, absolute,
    )


async def session_user(conn: asyncpg.Connection, digest: bytes, *, idle: timedelta) -> User | None:
    """The live user of a live session, pushing its idle expiry forward (never past the absolute
    one); None when the session is unknown, expired or its user disabled."""
    row = await conn.fetchrow(
        f"""
        WITH s AS (
            UPDATE web_sessions
               SET expires_at = least(now() + $2::interval, absolute_expiry)
             WHERE token_sha256 = $1 AND expires_at > now()
            RETURNING user_id
        )
        SELECT {_COLUMNS} FROM users JOIN s USING (user_id) WHERE disabled_at IS NULL
        """,
        digest, idle,
    )
    return User(**dict(row)) if row is not None else None


async def close_session(conn: asyncpg.Connection, digest: bytes) -> None:
    await conn.execute("DELETE FROM web_sessions WHERE token_sha256 = $1", digest)


async def purge_expired(conn: asyncpg.Connection) -> int:
    status = await conn.execute("DELETE FROM web_sessions WHERE expires_at <= now()")
    return int(status.split()[-1])


# --- sign-in attempts -------------------------------------------------------------------------

class RecentFailures(msgspec.Struct, kw_only=True, frozen=True):
    by_username: int
    by_client: int
    # When the oldest counted failure leaves the window (None when there are none).
    oldest_username: datetime | None
    oldest_client: datetime | None


async def recent_failures(conn: asyncpg.Connection, username: str, client: str, window: timedelta) -> RecentFailures:
    """Failed sign-ins within `window`, for this username (any client) and this client (any name).
    A success does not reset the count: it only stops counting once the failures age out."""
    row = await conn.fetchrow(
        """
        SELECT count(*) FILTER (WHERE lower(username) = lower($1)) AS by_username,
               count(*) FILTER (WHERE client = $2) AS by_client,
               min(at) FILTER (WHERE lower(username) = lower($1)) AS oldest_username,
               min(at) FILTER (WHERE client = $2) AS oldest_client
        FROM signin_attempts
        WHERE NOT succeeded AND at > now() - $3::interval AND (lower(username) = lower($1) OR client = $2)
        """,
        username, client, window,
    )
    return RecentFailures(**dict(row))


async def record_attempt(conn: asyncpg.Connection, username: str, client: str, succeeded: bool,
                         keep: timedelta) -> None:
    await conn.execute(
        "INSERT INTO signin_attempts (username, client, succeeded) VALUES ($1, $2, $3)",
        username[:200], client[:200], succeeded,
    )
    # Bounded table: attempts older than the window are of no further use.
    await conn.execute("DELETE FROM signin_attempts WHERE at < now() - $1::interval", keep)
