"""A grading run: pairs from PostgreSQL → scoring/ → grades stored in one transaction.

A run is reproducible: it records the policy (and its canonical hash) and a digest of the pairs
it scored; the same data, policy and previous grades give the same classes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
from datetime import date
from typing import Any

import asyncpg
import msgspec
import polars as pl

from labeval.config import Settings
from labeval.db import grading as q
from labeval.models import GradingRun, LabGrade
from labeval.policy_file import load_policy
from scoring import indicators as ind
from scoring.grading import PREVIOUS_GRADES_SCHEMA, Reason, grade
from scoring.labs import lab_evidence
from scoring.pairs import score_pairs
from scoring.policy import Policy, policy_hash
from scoring.schema import PAIR_INPUT_SCHEMA

_BOOL_COLUMNS = [f"censored_{s}" for s in ("1", "2", "3")]
_INDICATOR_SCHEMAS = {
    "pt": ind.PT_RESULTS_SCHEMA,
    "timeliness": ind.TIMELINESS_SCHEMA,
    "complaints": ind.COMPLAINTS_SCHEMA,
    "audits": ind.AUDIT_FINDINGS_SCHEMA,
    "report_findings": ind.REPORT_FINDINGS_SCHEMA,
}


def pairs_frame(csv: bytes) -> pl.DataFrame:
    """Parse the COPY output with the pair schema (PostgreSQL writes booleans as t/f)."""
    schema = {**PAIR_INPUT_SCHEMA, **{c: pl.String for c in _BOOL_COLUMNS}}
    frame = pl.read_csv(io.BytesIO(csv), schema=schema) if csv.strip() else pl.DataFrame(schema=schema)
    return frame.with_columns([(pl.col(c) == "t").alias(c) for c in _BOOL_COLUMNS]).select(list(PAIR_INPUT_SCHEMA))


def _structs_frame(rows: list[msgspec.Struct], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    # asdict keeps dates as dates (to_builtins would write ISO strings); renamed fields (class_)
    # take their encoded name.
    return pl.DataFrame(
        [{f.encode_name: getattr(r, f.name) for f in msgspec.structs.fields(r)} for r in rows],
        schema=schema, orient="row",
    )


def _jsonable(value: Any) -> Any:
    # JSONB has no NaN/Infinity; a statistic that is undefined is stored as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, date):
        return value.isoformat()
    return value


def compute(
    pairs: pl.DataFrame,
    labs: list[str],
    previous: pl.DataFrame,
    indicator_frames: dict[str, pl.DataFrame],
    policy: Policy,
    as_of: date,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Pure part of a run: (grades, evidence). CPU-bound; runs in a worker thread."""
    scored = score_pairs(pairs.lazy(), policy)
    evidence = lab_evidence(scored, policy, as_of=as_of)
    indicators = ind.summarise_indicators(
        policy=policy, as_of=as_of, **{k: v.lazy() for k, v in indicator_frames.items()}
    )
    grades = grade(evidence, indicators, previous, policy, labs=labs)
    return grades, evidence


async def run_grading(
    conn: asyncpg.Connection,
    policy: Policy | Settings,
    *,
    as_of: date | None = None,
    trigger: str = "cli",
) -> GradingRun:
    """Grade every lab under `policy` (loaded and validated once, at start-up) and store it."""
    as_of = as_of or date.today()
    if isinstance(policy, Settings):
        # TRANSITIONAL, remove at merge: labeval.demo (moved and rebuilt on another branch)
        # still passes its Settings here; every other caller passes the start-up policy.
        policy = load_policy(policy.policy)
    p_hash = policy_hash(policy)

    # Read everything in one snapshot so the run sees one consistent state of the data.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        csv = await q.pairs_csv(conn, as_of)
        labs = await q.lab_codes(conn)
        previous = _structs_frame(await q.previous_grades(conn, as_of), PREVIOUS_GRADES_SCHEMA)
        indicators = await q.indicator_rows(conn, as_of)
    indicator_frames = {k: _structs_frame(getattr(indicators, k), schema) for k, schema in _INDICATOR_SCHEMAS.items()}
    pairs = pairs_frame(csv)

    grades, evidence = await asyncio.to_thread(compute, pairs, labs, previous, indicator_frames, policy, as_of)

    evidence_by_lab = {
        row["lab_code"]: {k: _jsonable(v) for k, v in row.items()} for row in evidence.iter_rows(named=True)
    }
    new_grades = [
        q.NewGrade(
            lab_code=g["lab_code"], score=_jsonable(g["score"]), class_=g["class"],
            previous_class=g["previous_class"], change=g["change"], pairs=int(g["pairs_compared"] or 0),
            reasons=[Reason(**{k: _jsonable(v) for k, v in r.items()}) for r in (g["reasons"] or [])],
            evidence=evidence_by_lab.get(g["lab_code"], {}),
            consecutive_qualifying=int(g["consecutive_qualifying"] or 0),
            sufficient_evidence=bool(g["sufficient_evidence"]), selection_weight=_jsonable(g["selection_weight"]),
            eligible=bool(g["eligible"]),
        )
        for g in grades.iter_rows(named=True)
    ]

    async with conn.transaction():
        run_id = await q.insert_run(
            conn, as_of=as_of, trigger=trigger, policy_name=policy.name, policy_version=policy.version,
            policy_hash=p_hash, policy=msgspec.to_builtins(policy), data_hash=hashlib.sha256(csv).hexdigest(),
            n_pairs=pairs.height,
        )
        await q.insert_grades(conn, run_id, new_grades)
        run = await q.finish_run(conn, run_id, len(new_grades))

    served = [
        LabGrade(lab_code=g.lab_code, score=g.score, class_=g.class_, previous_class=g.previous_class,
                 change=g.change, pairs=g.pairs, reasons=g.reasons)
        for g in new_grades
    ]
    return msgspec.structs.replace(run, grades=served)
