"""A full grading run from PostgreSQL against its floor (the `labeval bench run` target).

measure(n) loads a national data set of n pairs (labeval.devtools.national) through intake into
the database given (the bench framework makes it fresh and migrated for the target and drops it
afterwards), then times run_grading: the run
lock and its 'running' row, reading every input in one snapshot (the pairs by COPY), scoring,
evidence and grades, storing grades and change events, and the commit.

The floor, in the same process on the same rows: `COPY (the run's pairs query) TO STDOUT`
(getting exactly those rows and columns out of PostgreSQL costs at least that) plus the
in-memory evidence on the same frame (scoring's score_pairs and lab_evidence, what no run can
skip). Each is the median of three; the run is timed once, after one untimed warm-up run (so
both sides read warm caches and the timed run carries hysteresis from a previous period).
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from datetime import timedelta

import polars as pl

from labeval.db import grading as q
from labeval.db.pool import connect
from labeval.devtools.bench_ingest import load_reference
from labeval.devtools.bench_types import Measurement
from labeval.devtools.national import NationalConfig, build_national
from labeval.grading.run import pairs_frame, run_grading
from labeval.ingest.pipeline import ingest_frame
from labeval.policy_file import load_policy
from scoring.evidence import lab_evidence
from scoring.pairs import score_pairs

DEFAULT_N = 1_000_000
QUICK_N = 20_000
GOAL = "ratio <= 2 (a grading run from PostgreSQL within 2x of COPY-out plus in-memory evidence)"
REPEATS = 3
# See bench_ingest: the national generator cannot reach every small size with every seed.
_SMALLEST_NATIONAL = 50_000


def passed(m: Measurement) -> bool:
    return m.seconds <= 2 * m.floor_seconds


async def _measure(n: int, seed: int, database_url: str) -> Measurement:
    t = time.perf_counter()
    data = build_national(NationalConfig(n_pairs=max(n, _SMALLEST_NATIONAL), seed=seed))
    tables = data.intake_tables()
    results = tables.pop("results")
    if n < data.pairs.height:
        # Keep the results of the first samples, whole, so that about n pairs remain.
        keep = data.pairs.get_column("sample_code").head(n).unique()
        results = results.filter(pl.col("sample_code").is_in(keep.implode()))
    generate_s = time.perf_counter() - t
    as_of = data.config.as_of
    policy = load_policy()
    # The framework's scratch database, fresh and migrated, dropped after the target.
    conn = await connect(database_url)
    try:
        t = time.perf_counter()
        await load_reference(conn, tables)
        report = await ingest_frame(conn, "results", results, file_name="national-results", source="bench")
        load_s = time.perf_counter() - t
        # Warm-up: a run of the previous period (also gives the timed run previous grades).
        await run_grading(conn, policy, as_of=as_of - timedelta(days=1), trigger="test")
        t = time.perf_counter()
        run = await run_grading(conn, policy, as_of=as_of, trigger="test")
        run_s = time.perf_counter() - t

        copy_times, evidence_times = [], []
        for _ in range(REPEATS):
            buf = io.BytesIO()
            t = time.perf_counter()
            await conn.copy_from_query(q.PAIRS_QUERY, as_of, output=buf, format="csv", header=True)
            copy_times.append(time.perf_counter() - t)
        pairs = pairs_frame(buf.getvalue())
        for _ in range(REPEATS):
            t = time.perf_counter()
            evidence = lab_evidence(score_pairs(pairs.lazy(), policy), policy, as_of=as_of)
            evidence_times.append(time.perf_counter() - t)
    finally:
        await conn.close()
    copy_s, evidence_s = statistics.median(copy_times), statistics.median(evidence_times)
    details: dict[str, float | int | str] = {
        "pairs": run.n_pairs,
        "labs": run.n_labs,
        "labs_with_evidence": evidence.height,
        "floor_copy_s": round(copy_s, 3),
        "floor_evidence_s": round(evidence_s, 3),
        **{f"run_{k}": v for k, v in run.timings.items()},
        "pairs_per_second": round(run.n_pairs / run_s),
        "result_rows": results.height,
        "load_s": round(load_s, 3),
        "load_rows_per_second": round(results.height / load_s),
        "load_rejected": report.rejected,
        "generate_s": round(generate_s, 3),
        "timing": f"run once after a warm-up run; floor parts median of {REPEATS}",
    }
    return Measurement(seconds=run_s, floor_seconds=copy_s + evidence_s, details=details)


def measure(n: int, *, seed: int = 0, database_url: str | None = None) -> Measurement:
    """A grading run over n national pairs read from PostgreSQL, against COPY-out + evidence."""
    if database_url is None:
        raise ValueError("the run benchmark needs a fresh, migrated database (database_url)")
    return asyncio.run(_measure(n, seed, database_url))
