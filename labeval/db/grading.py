"""SQL for grading runs: the pairs a run scores, and where its grades go."""

from __future__ import annotations

import io
from datetime import date, datetime
from typing import Any

import asyncpg
import msgspec
import polars as pl

from labeval.db.errors import NotFound
from labeval.models import GradingRun, LabGrade

# Side columns in the order of scoring.schema._SIDE; `{a}` is the table alias of that side.
_SIDE_COLUMNS = (
    "{a}.lab_code AS lab_{n}, {a}.value AS value_{n}, {a}.censored AS censored_{n}, "
    "{a}.censor_limit AS censor_limit_{n}, {a}.expanded_uncertainty AS expanded_uncertainty_{n}, "
    "{a}.coverage_k AS coverage_k_{n}, {a}.replicates AS replicates_{n}, {a}.verdict AS verdict_{n}, "
    "{a}.decision_rule AS decision_rule_{n}, {a}.reported_on AS reported_on_{n}"
)

# One pair per retest result: the retest's result_id is the pair's stable id across runs.
# Only current versions count (results holds no other), and only what was reported by as_of.
# The newest arbitration of a sample/item settles both sides of every pair on it.
# Each side is its own scan of results with the filter repeated: a CTE read three times would be
# materialised, and a join of materialised CTEs is planned blind (no statistics): right after a
# large import that was a nested loop over every pair of rows (hours for a million pairs).
_CURRENT = "({a}.reported_on IS NULL OR {a}.reported_on <= $1::date)"
PAIRS_QUERY = f"""
SELECT t.result_id AS pair_id, o.sample_code, o.item_code, i.category_code, i.kind,
       i.precision_model, i.repeatability_sd, i.reproducibility_sd, i.horwitz_scale,
       i.lower_limit, i.upper_limit, i.lod,
       {_SIDE_COLUMNS.format(a="o", n=1)},
       {_SIDE_COLUMNS.format(a="t", n=2)},
       {_SIDE_COLUMNS.format(a="a", n=3)}
FROM results o
JOIN results t ON t.sample_code = o.sample_code AND t.item_code = o.item_code AND t.role = 'retest'
                  AND {_CURRENT.format(a="t")}
JOIN test_items i ON i.item_code = o.item_code
LEFT JOIN (
    SELECT DISTINCT ON (x.sample_code, x.item_code) x.*
    FROM results x WHERE x.role = 'arbitration' AND {_CURRENT.format(a="x")}
    ORDER BY x.sample_code, x.item_code, x.reported_on DESC NULLS LAST, x.result_id DESC
) a ON a.sample_code = o.sample_code AND a.item_code = o.item_code
WHERE o.role = 'original' AND {_CURRENT.format(a="o")}
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


class PreviousGrade(msgspec.Struct, kw_only=True, frozen=True):
    """What a run carries forward from a lab's last grade (scoring's PREVIOUS_GRADES_SCHEMA)."""

    lab_code: str
    class_: str = msgspec.field(name="class")
    score: float | None
    consecutive_qualifying: int


async def previous_grades(
    conn: asyncpg.Connection, as_of: date, policy_hash: str, finished_before: datetime
) -> list[PreviousGrade]:
    """What hysteresis carries in: each lab's grade from the latest succeeded run of an earlier
    evaluation period (as_of strictly before this one), among runs finished before
    `finished_before` (the reading run's read time, so a verify sees what the run saw).

    The period is the as_of date: every run for the same date reads the same previous grades,
    so a second run that day cannot count as another qualifying period. A grade made under
    another policy (hash) keeps its class but its consecutive_qualifying restarts at 0.
    """
    rows = await conn.fetch(
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
    return [
        PreviousGrade(lab_code=r["lab_code"], class_=r["class"], score=r["score"],
                      consecutive_qualifying=r["consecutive_qualifying"])
        for r in rows
    ]


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


class PtResult(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    scheme_code: str
    round_code: str
    round_date: date
    item_code: str | None
    z: float


class ReportDue(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    report_code: str
    due_on: date
    reported_on: date | None


class Complaint(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    complaint_code: str
    received_on: date
    upheld: bool


class AuditFinding(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    finding_code: str
    found_on: date
    severity: str


class ReportFinding(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    finding_code: str
    decided_on: date
    kind: str


class Indicators(msgspec.Struct, kw_only=True, frozen=True):
    """Every indicator input of a run, one list per kind (field names as in INDICATOR_QUERIES)."""

    pt: list[PtResult]
    timeliness: list[ReportDue]
    complaints: list[Complaint]
    audits: list[AuditFinding]
    report_findings: list[ReportFinding]


async def indicator_rows(conn: asyncpg.Connection, as_of: date) -> Indicators:
    rows = {name: await conn.fetch(sql, as_of) for name, sql in INDICATOR_QUERIES.items()}
    return Indicators(
        pt=[PtResult(**r) for r in rows["pt"]],
        timeliness=[ReportDue(**r) for r in rows["timeliness"]],
        complaints=[Complaint(**r) for r in rows["complaints"]],
        audits=[AuditFinding(**r) for r in rows["audits"]],
        report_findings=[ReportFinding(**r) for r in rows["report_findings"]],
    )


class NewGrade(LabGrade, kw_only=True, frozen=True):
    """A lab's grade as a run stores it: the served grade and what the next run needs."""

    evidence: dict[str, Any]
    consecutive_qualifying: int
    sufficient_evidence: bool
    selection_weight: float | None
    eligible: bool


_GRADE_COLUMNS = (
    "run_id", "lab_code", "score", "class", "previous_class", "change", "pairs", "reasons", "evidence",
    "consecutive_qualifying", "sufficient_evidence", "selection_weight", "eligible",
)
_GRADES_CSV_SCHEMA = {
    "run_id": pl.Int64, "lab_code": pl.String, "score": pl.Float64, "class": pl.String,
    "previous_class": pl.String, "change": pl.String, "pairs": pl.Int64, "reasons": pl.String,
    "evidence": pl.String, "consecutive_qualifying": pl.Int64, "sufficient_evidence": pl.Boolean,
    "selection_weight": pl.Float64, "eligible": pl.Boolean,
}


async def insert_grades(conn: asyncpg.Connection, run_id: int, grades: list[NewGrade]) -> None:
    """One COPY for every lab's grade (an INSERT per lab took seconds for 5 000 labs); reasons
    and evidence go as JSON text."""
    if not grades:
        return
    enc = msgspec.json.encode
    columns: dict[str, list[Any]] = {
        "run_id": [run_id] * len(grades),
        "lab_code": [g.lab_code for g in grades],
        "score": [g.score for g in grades],
        "class": [g.class_ for g in grades],
        "previous_class": [g.previous_class for g in grades],
        "change": [g.change for g in grades],
        "pairs": [g.pairs for g in grades],
        "reasons": [enc(g.reasons).decode() for g in grades],
        "evidence": [enc(g.evidence).decode() for g in grades],
        "consecutive_qualifying": [g.consecutive_qualifying for g in grades],
        "sufficient_evidence": [g.sufficient_evidence for g in grades],
        "selection_weight": [g.selection_weight for g in grades],
        "eligible": [g.eligible for g in grades],
    }
    buf = io.BytesIO()
    pl.DataFrame(columns, schema=_GRADES_CSV_SCHEMA).write_csv(buf, include_header=False, null_value=r"\N")
    buf.seek(0)
    await conn.copy_to_table("lab_grades", source=buf, columns=list(_GRADE_COLUMNS), format="csv", null=r"\N")


_RUN_COLUMNS = """run_id, as_of, policy_hash, policy_name, policy_version, trigger, n_pairs, n_labs,
                  data_hash, started_at, finished_at, status, actor, window_start, window_end,
                  code_version, error, snapshot_at, timings, class_counts, input_digest"""


async def finish_run(conn: asyncpg.Connection, run_id: int, n_labs: int) -> GradingRun:
    """Mark a run finished; the run without its grades."""
    row = await conn.fetchrow(
        f"""
        UPDATE grading_runs SET finished_at = clock_timestamp(), n_labs = $2
        WHERE run_id = $1
        RETURNING {_RUN_COLUMNS}
        """,
        run_id, n_labs,
    )
    if row is None:
        raise NotFound("grading run", run_id)
    return GradingRun(**dict(row))


async def list_runs(
    conn: asyncpg.Connection, *, limit: int = 50, before: int | None = None, status: str | None = None
) -> list[GradingRun]:
    """Runs of every status (or one), newest first, those with run_id < before if given."""
    rows = await conn.fetch(
        f"""SELECT {_RUN_COLUMNS} FROM grading_runs
            WHERE ($3::text IS NULL OR status = $3) AND ($2::bigint IS NULL OR run_id < $2)
            ORDER BY run_id DESC LIMIT $1""",
        limit, before, status,
    )
    return [GradingRun(**dict(r)) for r in rows]


async def get_run(conn: asyncpg.Connection, run_id: int) -> GradingRun:
    row = await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM grading_runs WHERE run_id = $1", run_id
    )
    if row is None:
        raise NotFound("grading run", run_id)
    grades = await conn.fetch(
        """SELECT g.lab_code, g.class, g.score, g.previous_class, g.change, g.pairs, g.reasons
           FROM lab_grades g JOIN grading_runs r ON r.run_id = g.run_id
           WHERE g.run_id = $1 AND r.status = 'succeeded' ORDER BY g.lab_code""",
        run_id,
    )
    # convert() types the stored reasons (JSON objects) as scoring's Reason structs.
    return GradingRun(**dict(row), grades=[msgspec.convert(dict(g), LabGrade) for g in grades])


async def last_scheduled_start(conn: asyncpg.Connection) -> datetime | None:
    """When the newest scheduled grading run started; None if there was none.

    A run that died with its process (abandoned) did not happen: the schedule is still owed it.
    A failed run did happen (running it again at start would fail the same way).
    """
    return await conn.fetchval(
        "SELECT max(started_at) FROM grading_runs WHERE trigger = 'schedule' AND status <> 'abandoned'"
    )
