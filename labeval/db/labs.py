"""Read queries about labs and their grades."""

from __future__ import annotations

import asyncpg
import msgspec

from labeval.db.errors import NotFound
from labeval.models import GradeRow, LabDetail, LabSummary

# The latest grade of each lab is the one from its newest run (runs are ordered by as_of, then
# id, so a back-dated re-run does not displace a newer evaluation).
_LATEST = """
    SELECT DISTINCT ON (g.lab_code)
           g.lab_code, g.class, g.score, g.run_id, r.as_of, g.evidence
    FROM lab_grades g
    JOIN grading_runs r ON r.run_id = g.run_id
    WHERE r.status = 'succeeded'
    ORDER BY g.lab_code, r.as_of DESC, r.run_id DESC
"""


async def list_labs(conn: asyncpg.Connection) -> list[LabSummary]:
    rows = await conn.fetch(
        f"""
        WITH latest AS ({_LATEST})
        SELECT l.lab_code, l.name, l.province, l.status,
               latest.class, latest.score, latest.run_id, latest.as_of
        FROM labs l LEFT JOIN latest ON latest.lab_code = l.lab_code
        ORDER BY l.lab_code
        """
    )
    return [
        LabSummary(
            code=r["lab_code"], name=r["name"], province=r["province"], status=r["status"],
            current_class=r["class"], score=r["score"], last_run=r["run_id"], last_run_as_of=r["as_of"],
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
        evidence=latest["evidence"] if latest else None,
        # convert() types the stored reasons (JSON objects) as scoring's Reason structs.
        history=[msgspec.convert({k: v for k, v in h.items() if k != "evidence"}, GradeRow) for h in history],
    )
