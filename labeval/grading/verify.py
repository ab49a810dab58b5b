"""Verify a past run: rebuild the data as it stood at the run's read time, grade it again under
the stored policy with the previous grades the run had, and compare lab by lab."""

from __future__ import annotations

import math
from typing import Any

import asyncpg
import msgspec

from labeval.db import runs
from labeval.grading.run import grade_inputs, read_inputs
from scoring.grading import Reason
from scoring.policy import Policy, policy_hash

# Recomputed floats may differ in the last bits (parallel sums in polars); anything beyond this
# relative difference is a real difference.
_REL_TOL = 1e-9


class RunNotVerifiable(ValueError):
    """Only a succeeded run has grades to verify."""


class LabDifference(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    # Which of class, score, reasons differ (a lab present on one side only: "missing").
    fields: list[str]
    stored_class: str | None
    recomputed_class: str | None
    stored_score: float | None
    recomputed_score: float | None
    stored_reasons: list[Reason]
    recomputed_reasons: list[Reason]


class VerifyReport(msgspec.Struct, kw_only=True, frozen=True):
    run_id: int
    identical: bool
    # "read_time": the data as the run read it; "current": today's data, the run's as_of and policy.
    data: str
    labs: int
    stored_input_digest: str | None
    recomputed_input_digest: str
    differences: list[LabDifference]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=_REL_TOL, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


async def verify_run(conn: asyncpg.Connection, run_id: int, *, current: bool = False) -> VerifyReport:
    """Recompute run `run_id`; with current=True on the data as it is now (what corrections
    since the run would change), else as it stood at the run's read time."""
    record = await runs.get_record(conn, run_id)
    if record.status != "succeeded":
        raise RunNotVerifiable(f"grading run {run_id} is {record.status}: it has no grades to verify")
    if record.snapshot_at is None:
        raise RunNotVerifiable(f"grading run {run_id} predates recorded read times: its inputs cannot be rebuilt")
    policy = msgspec.convert(record.policy, Policy)
    if policy_hash(policy) != record.policy_hash:
        raise RunNotVerifiable(f"grading run {run_id}: its stored policy no longer hashes to {record.policy_hash}")
    # Not read-only: the past state is built as temporary tables, dropped at commit.
    async with conn.transaction(isolation="repeatable_read"):
        if not current:
            await runs.shadow_inputs_as_of(conn, record.snapshot_at)
        inputs = await read_inputs(conn, record.as_of, record.policy_hash, record.snapshot_at)
    _, rows = await grade_inputs(inputs, policy, record.as_of)
    recomputed = {r.lab_code: (r.class_, r.score, r.reasons) for r in rows}
    stored = {g.lab_code: (g.class_, g.score, g.reasons) for g in await runs.stored_grades(conn, run_id)}
    differences = []
    for lab in sorted(set(stored) | set(recomputed)):
        s, r = stored.get(lab), recomputed.get(lab)
        if s is None or r is None:
            fields = ["missing"]
        else:
            # Reasons are compared field by field, numbers within the tolerance.
            fields = [name for name, a, b in zip(("class", "score", "reasons"), s, r)
                      if not _close(msgspec.to_builtins(a), msgspec.to_builtins(b))]
        if fields:
            differences.append(LabDifference(
                lab_code=lab, fields=fields,
                stored_class=s[0] if s else None, recomputed_class=r[0] if r else None,
                stored_score=s[1] if s else None, recomputed_score=r[1] if r else None,
                stored_reasons=s[2] if s else [], recomputed_reasons=r[2] if r else [],
            ))
    return VerifyReport(
        run_id=run_id, identical=not differences, data="current" if current else "read_time",
        labs=len(stored), stored_input_digest=record.input_digest,
        recomputed_input_digest=inputs.digest(), differences=differences,
    )
