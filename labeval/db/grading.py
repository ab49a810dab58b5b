"""SQL for grading runs: the pairs a run scores, and where its grades go."""

from __future__ import annotations

import io
from datetime import date, datetime

import asyncpg

from labeval.models import GradingRun, LabGrade

# Side columns in the order of scoring.schema._SIDE; `{a}` is the table alias of that side.
_SIDE_COLUMNS = (
    "{a}.lab_code AS lab_{n}, {a}.value AS value_{n}, {a}.censored AS censored_{n}, "
    "{a}.censor_limit AS censor_limit_{n}, {a}.expanded_uncertainty AS expanded_uncertainty_{n}, "
    "{a}.coverage_k AS coverage_k_{n}, {a}.replicates AS replicates_{n}, {a}.verdict AS verdict_{n}, "
    "{a}.decision_rule AS decision_rule_{n}, {a}.reported_on AS reported_on_{n}"
)

# One pair per retest result: the retest's result_id is the pair's stable id across runs.
# Only current versions count (corrections supersede), and only what was reported by as_of.
# The newest arbitration of a sample/item settles both sides of every pair on it.
PAIRS_QUERY = f"""
WITH cur AS (
    SELECT result_id, sample_code, item_code, lab_code, role, value, censored, censor_limit,
           expanded_uncertainty, coverage_k, replicates, verdict, decision_rule, reported_on
    FROM results
    WHERE superseded_at IS NULL AND (reported_on IS NULL OR reported_on <= $1::date)
), arb AS (
    SELECT DISTINCT ON (sample_code, item_code) *
    FROM cur WHERE role = 'arbitration'
    ORDER BY sample_code, item_code, reported_on DESC NULLS LAST, result_id DESC
)
SELECT t.result_id AS pair_id, o.sample_code, o.item_code, i.category_code, i.kind,
       i.precision_model, i.repeatability_sd, i.reproducibility_sd, i.horwitz_scale,
       i.lower_limit, i.upper_limit, i.lod,
       {_SIDE_COLUMNS.format(a="o", n=1)},
       {_SIDE_COLUMNS.format(a="t", n=2)},
       {_SIDE_COLUMNS.format(a="a", n=3)}
FROM cur o
JOIN cur t ON t.sample_code = o.sample_code AND t.item_code = o.item_code AND t.role = 'retest'
JOIN test_items i ON i.item_code = o.item_code
LEFT JOIN arb a ON a.sample_code = o.sample_code AND a.item_code = o.item_code
WHERE o.role = 'original'
ORDER BY t.result_id
"""


async def pairs_csv(conn: asyncpg.Connection, as_of: date) -> bytes:
    """The pairs as CSV with a header: COPY streams them without a Python object per row."""
    buf = io.BytesIO()
    await conn.copy_from_query(PAIRS_QUERY, as_of, output=buf, format="csv", header=True)
    return buf.getvalue()


async def lab_codes(conn: asyncpg.Connection) -> list[str]:
    """Labs that are graded: every lab that is not revoked."""
    rows = await conn.fetch("SELECT lab_code FROM labs WHERE status <> 'revoked' ORDER BY lab_code")
    return [r["lab_code"] for r in rows]


async def previous_grades(
    conn: asyncpg.Connection, as_of: date, policy_hash: str, finished_before: datetime
) -> list[asyncpg.Record]:
    """What hysteresis carries in: each lab's grade from the latest succeeded run of an earlier
    evaluation period (as_of strictly before this one), among runs finished before
    `finished_before` (the reading run's read time, so a verify sees what the run saw).

    The period is the as_of date: every run for the same date reads the same previous grades,
    so a second run that day cannot count as another qualifying period. A grade made under
    another policy (hash) keeps its class but its consecutive_qualifying restarts at 0.
    """
    return await conn.fetch(
        """
        SELECT DISTINCT ON (g.lab_code)
               g.lab_code, g.class, g.score,
               CASE WHEN r.policy_hash = $2 THEN g.consecutive_qualifying ELSE 0 END
                   AS consecutive_qualifying
        FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id
        WHERE r.status = 'succeeded' AND r.as_of < $1 AND r.finished_at < $3
        ORDER BY g.lab_code, r.as_of DESC, r.run_id DESC
        """,
        as_of, policy_hash, finished_before,
    )


# The indicator inputs, in the column names of scoring.indicators' schemas. Events after as_of
# are left out here as well as in scoring, so a back-dated run never sees the future.
INDICATOR_QUERIES = {
    "pt": """
        SELECT lab_code, scheme_code, round_code, round_date, item_code, z_score AS z
        FROM pt_results WHERE round_date <= $1 AND z_score IS NOT NULL
    """,
    "timeliness": """
        SELECT lab_code, report_no AS report_code, due_on, reported_on
        FROM lab_reports WHERE due_on <= $1
    """,
    "complaints": """
        SELECT lab_code, complaint_no AS complaint_code, received_on, upheld
        FROM lab_complaints WHERE received_on <= $1
    """,
    # The policy has rules for major and minor findings; a critical finding counts as major.
    "audits": """
        SELECT lab_code, finding_no AS finding_code, found_on,
               CASE severity WHEN 'critical' THEN 'major' ELSE severity END AS severity
        FROM lab_audit_findings WHERE found_on <= $1
    """,
    "report_findings": """
        SELECT lab_code, report_no AS finding_code, found_on AS decided_on, finding AS kind
        FROM lab_report_findings WHERE found_on <= $1
    """,
}


async def indicator_rows(conn: asyncpg.Connection, as_of: date) -> dict[str, list[asyncpg.Record]]:
    return {name: await conn.fetch(sql, as_of) for name, sql in INDICATOR_QUERIES.items()}


GRADE_COLUMNS = ("lab_code", "score", "class", "previous_class", "change", "pairs", "reasons", "evidence",
                 "consecutive_qualifying", "sufficient_evidence", "selection_weight", "eligible")


async def insert_grades(conn: asyncpg.Connection, run_id: int, grades: list[tuple]) -> None:
    """grades: tuples in GRADE_COLUMNS order."""
    await conn.executemany(
        """
        INSERT INTO lab_grades (run_id, lab_code, score, class, previous_class, change, pairs,
                                reasons, evidence, consecutive_qualifying, sufficient_evidence,
                                selection_weight, eligible)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
        """,
        [(run_id, *g) for g in grades],
    )


_RUN_COLUMNS = """run_id, as_of, policy_hash, policy_name, policy_version, trigger, n_pairs, n_labs,
                  data_hash, started_at, finished_at, status, actor, window_start, window_end,
                  code_version, error, snapshot_at, timings, class_counts, input_digest"""


def _run(row: asyncpg.Record, grades: list | None = None) -> GradingRun:
    return GradingRun(**dict(row), grades=grades or [])


async def list_runs(
    conn: asyncpg.Connection, *, limit: int = 50, offset: int = 0, status: str | None = None
) -> list[GradingRun]:
    """Runs of every status (or one), newest first."""
    rows = await conn.fetch(
        f"""SELECT {_RUN_COLUMNS} FROM grading_runs WHERE ($3::text IS NULL OR status = $3)
            ORDER BY run_id DESC LIMIT $1 OFFSET $2""",
        limit, offset, status,
    )
    return [_run(r) for r in rows]


async def get_run(conn: asyncpg.Connection, run_id: int) -> GradingRun | None:
    row = await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM grading_runs WHERE run_id = $1", run_id
    )
    if row is None:
        return None
    # Only a succeeded run has grades to show; the status filter keeps it so whatever wrote them.
    grades = await conn.fetch(
        """SELECT g.lab_code, g.class, g.score, g.previous_class, g.change, g.pairs, g.reasons
           FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id
           WHERE g.run_id = $1 AND r.status = 'succeeded' ORDER BY g.lab_code""",
        run_id,
    )
    return _run(row, [
        LabGrade(lab_code=g["lab_code"], class_=g["class"], score=g["score"], previous_class=g["previous_class"],
                 change=g["change"], pairs=g["pairs"], reasons=g["reasons"])
        for g in grades
    ])
