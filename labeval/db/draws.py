"""SQL for the tender feed's eligibility and for stored 双随机 draws (migration 0006)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

import asyncpg
import msgspec

from labeval.db.errors import NotFound


class ScopedLab(msgspec.Struct, kw_only=True, frozen=True):
    """An active lab accredited for a category, with what decides its effective class."""

    lab_code: str
    province: str | None
    # Class from the newest succeeded run that graded the lab (null: never graded).
    computed_class: str | None
    run_id: int | None
    # The override in force on the given day, if any.
    override_class: str | None
    override_valid_until: date | None


class DrawRecord(msgspec.Struct, kw_only=True, frozen=True):
    draw_id: int
    kind: Literal["draw", "assignment"]
    request: dict[str, Any]
    candidates: Any
    seed: int
    algorithm: str
    policy_hash: str
    result: Any
    actor: str | None
    created_at: datetime


_COLUMNS = "draw_id, kind, request, candidates, seed, algorithm, policy_hash, result, actor, created_at"


async def category_exists(conn: asyncpg.Connection, code: str) -> bool:
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM product_categories WHERE category_code = $1)", code)


async def scoped_labs(conn: asyncpg.Connection, categories: list[str], today: date) -> dict[str, list[ScopedLab]]:
    """Active labs accredited for each category, in lab_code order."""
    rows = await conn.fetch(
        """
        WITH latest AS (
            SELECT DISTINCT ON (g.lab_code) g.lab_code, g.class, g.run_id
            FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id
            WHERE r.status = 'succeeded'
            ORDER BY g.lab_code, r.as_of DESC, r.run_id DESC
        ), open AS (
            SELECT lab_code, class, valid_until FROM grade_overrides
            WHERE revoked_at IS NULL AND expired_at IS NULL AND valid_until >= $2
        )
        SELECT s.category_code, l.lab_code, l.province, latest.class AS computed_class, latest.run_id,
               open.class AS override_class, open.valid_until AS override_valid_until
        FROM lab_scopes s
        JOIN labs l ON l.lab_code = s.lab_code
        LEFT JOIN latest ON latest.lab_code = l.lab_code
        LEFT JOIN open ON open.lab_code = l.lab_code
        WHERE s.category_code = ANY($1::text[]) AND l.status = 'active'
        ORDER BY s.category_code, l.lab_code
        """,
        categories, today,
    )
    out: dict[str, list[ScopedLab]] = {c: [] for c in categories}
    for r in rows:
        d = dict(r)
        out[d.pop("category_code")].append(ScopedLab(**d))
    return out


async def insert(
    conn: asyncpg.Connection, *, kind: str, request: object, candidates: object, seed: int, algorithm: str,
    policy_hash: str, result: object, actor: str | None,
) -> DrawRecord:
    row = await conn.fetchrow(
        f"""INSERT INTO draws (kind, request, candidates, seed, algorithm, policy_hash, result, actor)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS}""",
        kind, request, candidates, seed, algorithm, policy_hash, result, actor,
    )
    return DrawRecord(**dict(row))


async def get(conn: asyncpg.Connection, draw_id: int) -> DrawRecord:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM draws WHERE draw_id = $1", draw_id)
    if row is None:
        raise NotFound("draw", draw_id)
    return DrawRecord(**dict(row))
