"""A grading run: pairs from PostgreSQL → scoring/ → grades stored in one transaction.

Lifecycle: under the run lock (one run at a time across processes and replicas), a 'running'
row is committed first; the inputs are read in one snapshot at a recorded read time; the grades,
their change events and the 'succeeded' status are written in one transaction, so a run that
fails or dies shows no grades. A run is reproducible: it records the policy (and its canonical
hash) and a digest of every input; the same data, policy and previous grades give the same
classes (`labeval runs verify` checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import logging
import math
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from importlib import metadata
from time import perf_counter
from typing import Any

import asyncpg
import msgspec
import polars as pl

from labeval.db import events, runs
from labeval.db import grading as q
from labeval.grading.overrides import expire_due, today_utc
from labeval.models import GradingRun
from scoring import indicators as ind
from scoring.evidence import lab_evidence
from scoring.grading import PREVIOUS_GRADES_SCHEMA, Reason, grade
from scoring.pairs import score_pairs
from scoring.policy import Policy, policy_hash
from scoring.schema import PAIR_INPUT_SCHEMA

log = logging.getLogger(__name__)

_BOOL_COLUMNS = [f"censored_{s}" for s in ("1", "2", "3")]
_INDICATOR_SCHEMAS = {
    "pt": ind.PT_RESULTS_SCHEMA,
    "timeliness": ind.TIMELINESS_SCHEMA,
    "complaints": ind.COMPLAINTS_SCHEMA,
    "audits": ind.AUDIT_FINDINGS_SCHEMA,
    "report_findings": ind.REPORT_FINDINGS_SCHEMA,
}

# Test hook for the kill -9 tests: when set to a path, a run that has written its grades (not yet
# committed) creates that file and waits up to a minute, so a test can kill it at a known point.
HOLD_ENV = "LABEVAL_TEST_HOLD_RUN"


class RunInProgress(RuntimeError):
    """Another grading run holds the run lock."""

    def __init__(self, current: runs.RunningRun | None) -> None:
        self.current = current
        if current is None:
            msg = "a grading run is already in progress"
        else:
            by = f", by {current.actor}" if current.actor else ""
            msg = (f"grading run {current.run_id} (as of {current.as_of}, {current.trigger}{by}) "
                   f"is in progress since {current.started_at:%Y-%m-%d %H:%M:%S %Z}")
        super().__init__(msg)


class PeriodAlreadyRun(RuntimeError):
    """A scheduled run for this period of the schedule already ran (on this or another replica)."""

    def __init__(self, period: datetime, done: runs.PeriodRun) -> None:
        self.period = period
        self.done = done
        super().__init__(
            f"the scheduled run for {period:%Y-%m-%d %H:%M} UTC was already made: run {done.run_id} "
            f"({done.status}), started {done.started_at:%Y-%m-%d %H:%M:%S %Z}"
        )


def code_version() -> str:
    try:
        return metadata.version("labeval")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def pairs_frame(csv: bytes) -> pl.DataFrame:
    """Parse the COPY output with the pair schema (PostgreSQL writes booleans as t/f)."""
    schema = {**PAIR_INPUT_SCHEMA, **{c: pl.String for c in _BOOL_COLUMNS}}
    frame = pl.read_csv(io.BytesIO(csv), schema=schema) if csv.strip() else pl.DataFrame(schema=schema)
    return frame.with_columns([(pl.col(c) == "t").alias(c) for c in _BOOL_COLUMNS]).select(list(PAIR_INPUT_SCHEMA))


def _records_frame(rows: list[dict[str, Any]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=schema, orient="row")


def _jsonable(value: Any) -> Any:
    # JSONB has no NaN/Infinity; a statistic that is undefined is stored as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, date):
        return value.isoformat()
    return value


def _json_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """What _jsonable does to every value, done per column: non-finite floats become null, dates
    ISO text (a Python call per value of 5 000 labs' evidence took seconds)."""
    out = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if dtype.is_float():
            out.append(pl.when(col.is_finite()).then(col).otherwise(None).alias(name))
        elif dtype == pl.Date:
            out.append(col.dt.strftime("%Y-%m-%d").alias(name))
        else:
            out.append(col)
    return frame.select(out)


class Inputs(msgspec.Struct, kw_only=True, frozen=True):
    """Everything a run reads, rows sorted so that the same data always encodes the same way."""

    pairs_csv: bytes
    labs: list[str]
    previous: list[dict[str, Any]]
    indicators: dict[str, list[dict[str, Any]]]

    def digest(self) -> str:
        """SHA-256 over the pairs CSV (ordered by pair id) and the canonical JSON of the rest."""
        h = hashlib.sha256()
        h.update(b"pairs\n")
        h.update(self.pairs_csv)
        h.update(b"\nrest\n")
        h.update(msgspec.json.encode(
            {"labs": self.labs, "previous": self.previous, "indicators": self.indicators}, order="sorted"
        ))
        return h.hexdigest()


@functools.cache
def _field_names(cls: type[msgspec.Struct]) -> tuple[tuple[str, str], ...]:
    # msgspec.structs.fields resolves type hints on every call: once per row was most of the time
    # spent reading 5 000 previous grades.
    return tuple((f.encode_name, f.name) for f in msgspec.structs.fields(cls))


def _as_dict(row: msgspec.Struct | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(row, msgspec.Struct):
        return {enc: getattr(row, name) for enc, name in _field_names(type(row))}
    return dict(row)


def canonical_rows(rows: Sequence[msgspec.Struct | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows as dicts under their column names (dates stay dates), in one canonical order."""
    out = [_as_dict(r) for r in rows]
    out.sort(key=lambda d: tuple((v is None, str(v)) for v in d.values()))
    return out


async def read_inputs(
    conn: asyncpg.Connection, as_of: date, p_hash: str, read_at: datetime
) -> Inputs:
    """Inside the read transaction (live, or over a past state rebuilt by verify)."""
    csv = await q.pairs_csv(conn, as_of)
    labs = await q.lab_codes(conn)
    previous = canonical_rows(await q.previous_grades(conn, as_of, p_hash, read_at))
    found = await q.indicator_rows(conn, as_of)
    indicators = {k: canonical_rows(getattr(found, k)) for k in _INDICATOR_SCHEMAS}
    return Inputs(pairs_csv=csv, labs=labs, previous=previous, indicators=indicators)


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


async def grade_inputs(inputs: Inputs, policy: Policy, as_of: date) -> tuple[pl.DataFrame, list[q.NewGrade]]:
    """(pairs frame, the grades to store) for a set of inputs."""
    pairs = pairs_frame(inputs.pairs_csv)
    previous = _records_frame(inputs.previous, PREVIOUS_GRADES_SCHEMA)
    frames = {k: _records_frame(v, _INDICATOR_SCHEMAS[k]) for k, v in inputs.indicators.items()}
    grades, evidence = await asyncio.to_thread(compute, pairs, inputs.labs, previous, frames, policy, as_of)
    evidence_by_lab = {row["lab_code"]: row for row in _json_ready(evidence).iter_rows(named=True)}
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
    return pairs, new_grades


@contextlib.asynccontextmanager
async def run_lock(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Hold the run lock on this connection's session, or raise RunInProgress."""
    if not await runs.try_lock(conn):
        raise RunInProgress(await runs.running(conn))
    try:
        yield
    finally:
        # A dead connection has lost the lock with its session; a live pooled one is also
        # unlocked by asyncpg's reset on release. Either way, do not mask the run's own error.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await runs.unlock(conn)


async def recover_abandoned(conn: asyncpg.Connection) -> list[int]:
    """At server start: mark runs whose process died as abandoned (skipped while a run is live)."""
    try:
        async with run_lock(conn):
            return await runs.abandon_running(conn)
    except RunInProgress:
        return []


async def _hold_for_tests() -> None:
    path = os.environ.get(HOLD_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        await asyncio.sleep(60)


async def run_grading(
    conn: asyncpg.Connection,
    policy: Policy,
    *,
    as_of: date | None = None,
    trigger: str = "cli",
    actor: str | None = None,
    scheduled_for: datetime | None = None,
) -> GradingRun:
    """Grade every lab as of `as_of` (default today, UTC) under `policy` (loaded and validated
    once, at start-up). Raises RunInProgress when another run holds the lock.

    `scheduled_for` (scheduled runs only) is the schedule's fire time this run is made for:
    PeriodAlreadyRun when a run for it was already made, so N replicas firing the same period
    make one run. Decided under the lock, so no two replicas can both find the period free."""
    as_of = as_of or today_utc()
    p_hash = policy_hash(policy)

    async with run_lock(conn):
        abandoned = await runs.abandon_running(conn)
        if abandoned:
            log.warning("grading runs %s had died mid-run; marked abandoned", abandoned)
        if scheduled_for is not None and (done := await runs.run_for_period(conn, scheduled_for)) is not None:
            raise PeriodAlreadyRun(scheduled_for, done)
        await expire_due(conn, today_utc())
        run_id = await runs.start_run(
            conn, as_of=as_of, trigger=trigger, actor=actor, policy_name=policy.name,
            policy_version=policy.version, policy_hash=p_hash, policy=msgspec.to_builtins(policy),
            window_start=as_of - timedelta(days=policy.evidence.window_days), window_end=as_of,
            code_version=code_version(), scheduled_for=scheduled_for,
        )
        try:
            result = await _execute(conn, run_id, as_of, policy, p_hash)
        except BaseException as exc:
            # Shielded: a cancelled request must still leave the run marked, not 'running'.
            with contextlib.suppress(Exception):
                await asyncio.shield(runs.fail_run(conn, run_id, f"{type(exc).__name__}: {exc}"))
            raise
    log.info("grading run %d (%s) graded %d labs from %d pairs as of %s", result.run_id, trigger,
             result.n_labs, result.n_pairs, as_of)
    return result


async def _execute(conn: asyncpg.Connection, run_id: int, as_of: date, policy: Policy, p_hash: str) -> GradingRun:
    t0 = perf_counter()
    async with conn.transaction(isolation="repeatable_read"):
        read_at = await runs.lock_inputs(conn)
        inputs = await read_inputs(conn, as_of, p_hash, read_at)
    t1 = perf_counter()
    pairs, rows = await grade_inputs(inputs, policy, as_of)
    t2 = perf_counter()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.class_] = counts.get(r.class_, 0) + 1
    async with conn.transaction():
        await q.insert_grades(conn, run_id, rows)
        await _hold_for_tests()
        await events.append_for_run(conn, run_id, today_utc())
        timings = {"read_s": round(t1 - t0, 3), "compute_s": round(t2 - t1, 3),
                   "write_s": round(perf_counter() - t2, 3)}
        await runs.complete_run(
            conn, run_id, n_pairs=pairs.height, n_labs=len(rows),
            data_hash=hashlib.sha256(inputs.pairs_csv).hexdigest(), input_digest=inputs.digest(),
            snapshot_at=read_at, timings=timings, class_counts=dict(sorted(counts.items())),
        )
    return await q.get_run(conn, run_id)
