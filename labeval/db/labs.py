"""Read queries about labs: the filtered list, one lab with its grade history, its pairs in the
latest run's window and its results."""

from __future__ import annotations

from datetime import date
from typing import Any

import asyncpg
import msgspec

from labeval.db.errors import NotFound
from labeval.db.grading import PAIRS_QUERY
from labeval.models import Evidence, GradeRow, LabDetail, LabSummary, ResultRow

# The latest grade of each lab is the one from its newest run (runs are ordered by as_of, then
# id, so a back-dated re-run does not displace a newer evaluation).
LATEST_GRADES = """
    SELECT DISTINCT ON (g.lab_code)
           g.lab_code, g.class, g.score, g.pairs, g.run_id, r.as_of, g.evidence, g.reasons
    FROM lab_grades g
    JOIN grading_runs r ON r.run_id = g.run_id
    WHERE r.status = 'succeeded'
    ORDER BY g.lab_code, r.as_of DESC, r.run_id DESC
"""


class LabFilter(msgspec.Struct, kw_only=True, frozen=True):
    """Filters of the lab list; None means "any"."""

    class_: str | None = None  # the effective class (override in force, else computed)
    province: str | None = None
    product_category: str | None = None  # in the lab's accredited scope
    flagged: bool | None = None  # a statistical cap (or data-problem pattern) fired in the latest run
    not_identifiable: bool | None = None  # the latest evidence says identifiable = false


async def list_labs(
    conn: asyncpg.Connection, *, today: date, flag_rules: list[str], where: LabFilter | None = None,
    after: str | None = None, limit: int | None = None,
) -> list[LabSummary]:
    """Labs by code, after the cursor `after`, with their latest computed class, the override in
    force on `today` and the class that applies. `flag_rules` are the cap rules whose firing
    (effect "cap …") makes a lab flagged."""
    f = where or LabFilter()
    rows = await conn.fetch(
        f"""
        WITH latest AS ({LATEST_GRADES}),
        lab AS (
            SELECT l.lab_code, l.name, l.province, l.status,
                   latest.class, latest.score, latest.run_id, latest.as_of,
                   coalesce(o.class, latest.class) AS effective,
                   EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(latest.reasons, '[]')) x
                           WHERE x->>'rule' = ANY($2::text[]) AND x->>'effect' LIKE 'cap %') AS flagged,
                   (latest.evidence->>'identifiable')::boolean IS FALSE AS not_identifiable
            FROM labs l
            LEFT JOIN latest ON latest.lab_code = l.lab_code
            LEFT JOIN grade_overrides o ON o.lab_code = l.lab_code AND o.revoked_at IS NULL
                 AND o.expired_at IS NULL AND o.valid_until >= $1
        )
        SELECT * FROM lab
        WHERE ($3::text IS NULL OR lab_code > $3)
          AND ($4::text IS NULL OR effective = $4)
          AND ($5::text IS NULL OR province = $5)
          AND ($6::text IS NULL OR EXISTS (SELECT 1 FROM lab_scopes s
                                          WHERE s.lab_code = lab.lab_code AND s.category_code = $6))
          AND ($7::boolean IS NULL OR flagged = $7)
          AND ($8::boolean IS NULL OR not_identifiable = $8)
        ORDER BY lab_code
        LIMIT $9
        """,
        today, flag_rules, after, f.class_, f.province, f.product_category, f.flagged, f.not_identifiable, limit,
    )
    return [
        LabSummary(
            code=r["lab_code"], name=r["name"], province=r["province"], status=r["status"],
            current_class=r["class"], score=r["score"], last_run=r["run_id"], last_run_as_of=r["as_of"],
            effective_class=r["effective"],
        )
        for r in rows
    ]


async def get_lab(conn: asyncpg.Connection, code: str) -> LabDetail:
    lab = await conn.fetchrow(
        """
        SELECT l.lab_code, l.name, l.province, l.accreditation_no, l.status,
               coalesce(array_agg(s.category_code ORDER BY s.category_code)
                        FILTER (WHERE s.category_code IS NOT NULL), '{}') AS scopes
        FROM labs l LEFT JOIN lab_scopes s ON s.lab_code = l.lab_code
        WHERE l.lab_code = $1
        GROUP BY l.lab_code
        """,
        code,
    )
    if lab is None:
        raise NotFound("lab", code)
    history = await conn.fetch(
        """
        SELECT g.run_id, r.as_of, g.class, g.score, g.previous_class, g.change, g.pairs,
               g.reasons, g.evidence
        FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id
        WHERE g.lab_code = $1 AND r.status = 'succeeded'
        ORDER BY r.as_of DESC, r.run_id DESC
        """,
        code,
    )
    latest = history[0] if history else None
    return LabDetail(
        code=lab["lab_code"], name=lab["name"], province=lab["province"],
        accreditation_no=lab["accreditation_no"], status=lab["status"], scopes=list(lab["scopes"]),
        current_class=latest["class"] if latest else None,
        score=latest["score"] if latest else None,
        last_run=latest["run_id"] if latest else None,
        evidence=msgspec.convert(latest["evidence"], Evidence) if latest else None,
        # convert() types the stored reasons (JSON objects) as scoring's Reason structs.
        history=[msgspec.convert({k: v for k, v in h.items() if k != "evidence"}, GradeRow) for h in history],
        pairs=latest["pairs"] if latest else 0,
    )


class LabWindow(msgspec.Struct, kw_only=True, frozen=True):
    """The window of a lab's latest succeeded run: pairs completed in [window_start, as_of]."""

    run_id: int
    as_of: date
    window_start: date
    policy: dict[str, Any]


async def latest_window(conn: asyncpg.Connection, code: str) -> LabWindow | None:
    """The latest succeeded run that graded the lab; its window start is the one the evidence
    used (scoring's), else the run's."""
    row = await conn.fetchrow(
        """SELECT r.run_id, r.as_of, coalesce((g.evidence->>'window_start')::date, r.window_start, r.as_of)
                  AS window_start, r.policy
           FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id
           WHERE g.lab_code = $1 AND r.status = 'succeeded'
           ORDER BY r.as_of DESC, r.run_id DESC LIMIT 1""",
        code,
    )
    return LabWindow(**dict(row)) if row else None


async def lab_pairs(
    conn: asyncpg.Connection, code: str, window: LabWindow, *, after: int | None, limit: int
) -> list[dict[str, Any]]:
    """The pairs (PAIRS_QUERY rows) the lab is a side of (original, retest or arbitration) that
    were completed in the window (the later report date; undated pairs count, as in scoring),
    by pair_id after the cursor."""
    rows = await conn.fetch(
        f"""SELECT * FROM ({PAIRS_QUERY}) p
            WHERE $2 IN (p.lab_1, p.lab_2, p.lab_3)
              AND (greatest(p.reported_on_1, p.reported_on_2) IS NULL
                   OR greatest(p.reported_on_1, p.reported_on_2) BETWEEN $3 AND $1)
              AND ($4::bigint IS NULL OR p.pair_id > $4)
            ORDER BY p.pair_id LIMIT $5""",
        window.as_of, code, window.window_start, after, limit,
    )
    return [dict(r) for r in rows]


_RESULT_COLUMNS = """result_id, sample_code, item_code, role, lab_code, value, censored, censor_limit,
                     raw_value, unit, expanded_uncertainty, verdict, reported_on, version"""


async def lab_results(conn: asyncpg.Connection, code: str, *, after: int | None, limit: int) -> list[ResultRow]:
    """The lab's current results (results holds no superseded version) by result_id after the cursor."""
    rows = await conn.fetch(
        f"""SELECT {_RESULT_COLUMNS} FROM results
            WHERE lab_code = $1 AND ($2::bigint IS NULL OR result_id > $2)
            ORDER BY result_id LIMIT $3""",
        code, after, limit,
    )
    return [ResultRow(**dict(r)) for r in rows]


async def lab_exists(conn: asyncpg.Connection, code: str) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM labs WHERE lab_code = $1)", code):
        raise NotFound("lab", code)


async def lab_names(conn: asyncpg.Connection, codes: list[str]) -> dict[str, str]:
    """The names of these labs (a run's grades carry only the codes)."""
    rows = await conn.fetch("SELECT lab_code, name FROM labs WHERE lab_code = ANY($1::text[])", codes)
    return {r["lab_code"]: r["name"] for r in rows}


class SampleRow(msgspec.Struct, kw_only=True, frozen=True):
    sample_code: str
    category_code: str
    enterprise: str | None
    sampled_on: date | None
    province: str | None
    original_lab_code: str | None


async def get_sample(conn: asyncpg.Connection, code: str) -> SampleRow:
    row = await conn.fetchrow(
        """SELECT sample_code, category_code, enterprise, sampled_on, province, original_lab_code
           FROM samples WHERE sample_code = $1""",
        code,
    )
    if row is None:
        raise NotFound("sample", code)
    return SampleRow(**dict(row))


async def sample_results(conn: asyncpg.Connection, code: str) -> list[ResultRow]:
    rows = await conn.fetch(
        f"""SELECT {_RESULT_COLUMNS} FROM results WHERE sample_code = $1
            ORDER BY item_code, result_id""",
        code,
    )
    return [ResultRow(**dict(r)) for r in rows]


async def sample_items(conn: asyncpg.Connection, code: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT DISTINCT i.item_code, i.name, i.unit, i.kind, i.lower_limit, i.upper_limit, i.lod
           FROM results r JOIN test_items i ON i.item_code = r.item_code
           WHERE r.sample_code = $1 ORDER BY i.item_code""",
        code,
    )
    return [dict(r) for r in rows]


async def sample_pairs(conn: asyncpg.Connection, code: str, as_of: date) -> list[dict[str, Any]]:
    """PAIRS_QUERY rows of one sample, reported by as_of."""
    rows = await conn.fetch(f"SELECT * FROM ({PAIRS_QUERY}) p WHERE p.sample_code = $2 ORDER BY p.pair_id",
                            as_of, code)
    return [dict(r) for r in rows]
