"""Read queries of the officers' overview pages: the sortable lab table and the dashboard's
counts. Sorting and filtering happen in SQL so a page of 50 out of thousands of labs costs one
query."""

from __future__ import annotations

from datetime import date, datetime

import asyncpg
import msgspec

from labeval.db.labs import LATEST_GRADES

# Flags of a grade, from the caps that fired: the statistical tests (FDR), the CUSUM, the
# data-problem patterns; and a lab the evidence cannot tell apart from its partners (arbitration).
_FLAGS = """
    ARRAY(
        SELECT DISTINCT f FROM (
            SELECT CASE WHEN x->>'rule' LIKE 'fdr\\_%' THEN 'fdr'
                        WHEN x->>'rule' = 'cusum_signal' THEN 'cusum'
                        WHEN x->>'rule' LIKE 'data\\_%' THEN 'data' END AS f
            FROM jsonb_array_elements(coalesce(latest.reasons, '[]')) x
            WHERE x->>'effect' LIKE 'cap %' AND x->>'rule' = ANY($2::text[])
            UNION ALL
            SELECT 'arbitration' WHERE (latest.evidence->>'identifiable')::boolean IS FALSE
        ) flags WHERE f IS NOT NULL ORDER BY f
    )
"""

FLAGS = ("fdr", "cusum", "data", "arbitration")

# Sort keys a reader may choose, and the SQL each stands for (never the reader's text).
SORTS = {
    "code": "lab_code",
    "name": "name",
    "province": "province",
    "class": "effective",
    "score": "score",
    "pairs": "pairs",
    "rate": "shrunk_rate",
    "bias": "abs(bias)",
}


class LabTableFilter(msgspec.Struct, kw_only=True, frozen=True):
    search: str | None = None  # part of the code or the name, any case
    class_: str | None = None  # effective class
    province: str | None = None
    category: str | None = None  # in the accredited scope
    flag: str | None = None  # one of FLAGS


class LabTableRow(msgspec.Struct, kw_only=True, frozen=True):
    code: str
    name: str
    province: str | None
    computed_class: str | None
    effective_class: str | None
    overridden: bool
    score: float | None
    pairs: int
    shrunk_rate: float | None
    bias: float | None
    categories: list[str]
    flags: list[str]


class LabTable(msgspec.Struct, kw_only=True, frozen=True):
    rows: list[LabTableRow]
    total: int


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def lab_table(conn: asyncpg.Connection, *, today: date, caps: list[str], where: LabTableFilter,
                    sort: str = "code", descending: bool = False, offset: int = 0, limit: int = 50) -> LabTable:
    order = SORTS.get(sort, "lab_code")
    direction = "DESC" if descending else "ASC"
    rows = await conn.fetch(
        f"""
        WITH latest AS ({LATEST_GRADES}),
        lab AS (
            SELECT l.lab_code, l.name, l.province, latest.class, latest.score,
                   coalesce(latest.pairs, 0) AS pairs,
                   coalesce(o.class, latest.class) AS effective, o.class IS NOT NULL AS overridden,
                   (latest.evidence->>'eb_rate')::double precision AS shrunk_rate,
                   (latest.evidence->>'bias')::double precision AS bias,
                   coalesce((SELECT array_agg(s.category_code ORDER BY s.category_code) FROM lab_scopes s
                             WHERE s.lab_code = l.lab_code), '{{}}') AS categories,
                   {_FLAGS} AS flags
            FROM labs l
            LEFT JOIN latest ON latest.lab_code = l.lab_code
            LEFT JOIN grade_overrides o ON o.lab_code = l.lab_code AND o.revoked_at IS NULL
                 AND o.expired_at IS NULL AND o.valid_until >= $1
        )
        SELECT *, count(*) OVER () AS total FROM lab
        -- Codes compare as bytes (collation "C", migration 0014); the search folds case under
        -- the database's locale, as it did before, not ASCII letters only.
        WHERE ($3::text IS NULL OR lab_code COLLATE "default" ILIKE $3 OR name ILIKE $3)
          AND ($4::text IS NULL OR effective = $4)
          AND ($5::text IS NULL OR province = $5)
          AND ($6::text IS NULL OR $6 = ANY(categories))
          AND ($7::text IS NULL OR $7 = ANY(flags))
        -- NaN sorts as the largest double in PostgreSQL; NULLs last either way; code breaks ties.
        ORDER BY {order} {direction} NULLS LAST, lab_code
        OFFSET $8 LIMIT $9
        """,
        today, caps, _like(where.search) if where.search else None, where.class_, where.province,
        where.category, where.flag, offset, limit,
    )
    if rows:
        total = rows[0]["total"]
    elif offset > 0:
        # A page beyond the last row has no rows to carry the window count.
        total = (await lab_table(conn, today=today, caps=caps, where=where, limit=1)).total
    else:
        total = 0
    return LabTable(rows=[LabTableRow(
        code=r["lab_code"], name=r["name"], province=r["province"], computed_class=r["class"],
        effective_class=r["effective"], overridden=r["overridden"], score=r["score"], pairs=r["pairs"],
        shrunk_rate=r["shrunk_rate"], bias=r["bias"], categories=list(r["categories"]), flags=list(r["flags"]),
    ) for r in rows], total=total)


async def provinces(conn: asyncpg.Connection) -> list[str]:
    return [r["province"] for r in await conn.fetch(
        "SELECT DISTINCT province FROM labs WHERE province IS NOT NULL ORDER BY province")]


async def categories(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    return [(r["category_code"], r["name"]) for r in await conn.fetch(
        "SELECT category_code, name FROM product_categories ORDER BY category_code")]


class RunBrief(msgspec.Struct, kw_only=True, frozen=True):
    run_id: int
    as_of: date
    trigger: str
    finished_at: datetime | None
    n_labs: int
    n_pairs: int


async def last_runs(conn: asyncpg.Connection, n: int = 2) -> list[RunBrief]:
    """The newest succeeded runs, newest first (as the labs' latest grades order them)."""
    rows = await conn.fetch(
        """SELECT run_id, as_of, trigger, finished_at, n_labs, n_pairs FROM grading_runs
           WHERE status = 'succeeded' ORDER BY as_of DESC, run_id DESC LIMIT $1""",
        n,
    )
    return [RunBrief(**dict(r)) for r in rows]


async def class_counts(conn: asyncpg.Connection, run_id: int) -> dict[str, int]:
    rows = await conn.fetch("SELECT class, count(*) AS n FROM lab_grades WHERE run_id = $1 GROUP BY class", run_id)
    return {r["class"]: r["n"] for r in rows}


async def effective_class_counts(conn: asyncpg.Connection, today: date) -> dict[str, int]:
    """Classes that apply today: the latest computed class, or the override in force."""
    rows = await conn.fetch(
        f"""WITH latest AS ({LATEST_GRADES})
            SELECT coalesce(o.class, latest.class) AS class, count(*) AS n
            FROM latest LEFT JOIN grade_overrides o ON o.lab_code = latest.lab_code AND o.revoked_at IS NULL
                 AND o.expired_at IS NULL AND o.valid_until >= $1
            GROUP BY 1""",
        today,
    )
    return {r["class"]: r["n"] for r in rows}


class FlaggedLab(msgspec.Struct, kw_only=True, frozen=True):
    code: str
    name: str
    computed_class: str
    flags: list[str]


async def flagged(conn: asyncpg.Connection, run_id: int, caps: list[str]) -> list[FlaggedLab]:
    rows = await conn.fetch(
        f"""SELECT latest.lab_code, l.name, latest.class, {_FLAGS} AS flags
            FROM lab_grades latest JOIN labs l ON l.lab_code = latest.lab_code
            WHERE latest.run_id = $1 ORDER BY latest.lab_code""",
        run_id, caps,
    )
    return [FlaggedLab(code=r["lab_code"], name=r["name"], computed_class=r["class"], flags=list(r["flags"]))
            for r in rows if r["flags"]]


class ImportWithRejects(msgspec.Struct, kw_only=True, frozen=True):
    import_id: int
    kind: str
    file_name: str | None
    rejected: int
    accepted: int
    started_at: datetime


async def imports_with_rejects(conn: asyncpg.Connection, days: int = 30, limit: int = 10) -> list[ImportWithRejects]:
    rows = await conn.fetch(
        """SELECT import_id, kind, file_name, rejected, accepted, started_at FROM imports
           WHERE rejected > 0 AND started_at > now() - make_interval(days => $1)
           ORDER BY import_id DESC LIMIT $2""",
        days, limit,
    )
    return [ImportWithRejects(**dict(r)) for r in rows]
