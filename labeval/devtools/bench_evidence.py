"""Benchmark target ``evidence``: lab evidence and grades for a national data set, in memory.

The data are the national generator's (labeval.devtools.national: 5 000 labs, 300 categories,
3 000 items) with ``n`` pairs, scored block by block with scoring.pairs.score_pairs and kept with
the columns the evidence reads (scoring.evidence.EVIDENCE_INPUT_COLUMNS), which is what a grading
run holds when its evidence stage starts. Codes (labs, items, categories, kind, outcome, the
arbiter's word) are Categorical, as a service holding millions of pairs would keep them. Scoring is timed separately (target ``scoring``) and only
reported here.

Measured (one run, wall clock): ``lab_evidence`` over the whole window (the comparison graph, the
bias fit, blame, rates, tests, CUSUM, data-problem patterns) plus ``grade`` of every lab.

Floor (best of 3, same process, same frame): the least any per-lab evidence must do with these
pairs, one polars pass that puts every pair on its two labs (original and retest side) and
aggregates per lab the pairs, the discrepancies (|d| > CD) and the mean standardised
difference. Everything beyond it (the graph, the fit, the tests) is what the ratio measures.

The goal is the issue's: 10 000 000 pairs in at most 15 s on the reference 2-core machine with
a peak resident memory (of the whole measuring process, generation included) of at most 4 GB.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time

import polars as pl
import polars.selectors as cs

from labeval.devtools.bench_types import Measurement
from labeval.devtools.national import NationalConfig, build_national
from scoring.evidence import EVIDENCE_INPUT_COLUMNS, lab_evidence
from scoring.grading import grade
from scoring.pairs import score_pairs
from scoring.policy import Policy

__all__ = ["DEFAULT_N", "GOAL", "QUICK_N", "measure", "passed", "scored_frame"]

DEFAULT_N = 10_000_000
QUICK_N = 20_000
SECONDS_GOAL = 15.0
RSS_GOAL_MB = 4096.0
GOAL = f"seconds <= {SECONDS_GOAL:g} and peak RSS <= {RSS_GOAL_MB:g} MB at n = {DEFAULT_N:,}"


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def scored_frame(n: int, seed: int, policy: Policy) -> tuple[pl.DataFrame, dict[str, float]]:
    """The national data set's ``n`` pairs, scored, with the evidence's columns only."""
    t0 = time.perf_counter()
    nat = build_national(NationalConfig(n_pairs=n, seed=seed))
    setup = time.perf_counter() - t0
    blocks, generate, score = [], 0.0, 0.0
    it = nat.pair_blocks(categorical=True)
    while True:
        t0 = time.perf_counter()
        block = next(it, None)
        generate += time.perf_counter() - t0
        if block is None:
            break
        t0 = time.perf_counter()
        # The outcome and the arbiter's word are a handful of strings: as Categorical they take
        # 4 bytes a pair instead of a 16-byte string view.
        cols = (
            score_pairs(block.lazy(), policy)
            .select(EVIDENCE_INPUT_COLUMNS)
            .with_columns(cs.string().cast(pl.Categorical))
            .collect()
        )
        score += time.perf_counter() - t0
        blocks.append(cols)
        del block
    frame = pl.concat(blocks, rechunk=False) if blocks else pl.DataFrame()
    return frame, {"generate_seconds": setup + generate, "score_pairs_seconds": score}


def _floor(frame: pl.DataFrame) -> None:
    sides = pl.concat([
        frame.lazy().select(lab=pl.col("lab_1"), s=pl.col("s"), disc=pl.col("exceeds_cd")),
        frame.lazy().select(lab=pl.col("lab_2"), s=-pl.col("s"), disc=pl.col("exceeds_cd")),
    ])
    sides.group_by("lab").agg(
        pairs=pl.len(), discrepancies=pl.col("disc").sum(), mean_s=pl.col("s").mean()
    ).collect()


def measure(n: int, *, seed: int = 0, database_url: str | None = None) -> Measurement:
    """Seconds of lab_evidence + grade on ``n`` national pairs (no database: ``database_url``
    is ignored) against the per-lab group-by floor."""
    del database_url
    policy = Policy()
    frame, details = scored_frame(n, seed, policy)
    as_of = NationalConfig().as_of
    gc.collect()
    rss_data = _peak_rss_mb()

    floor = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        _floor(frame)
        floor = min(floor, time.perf_counter() - t0)

    c0 = time.process_time()
    t0 = time.perf_counter()
    evidence = lab_evidence(frame.lazy(), policy, as_of=as_of)
    t1 = time.perf_counter()
    grades = grade(evidence, None, None, policy)
    t2 = time.perf_counter()
    cpu = time.process_time() - c0
    return Measurement(
        seconds=t2 - t0,
        floor_seconds=floor,
        details={
            "repeats": "evidence + grade once (its caches cold); floor best of 3",
            "evidence_seconds": round(t1 - t0, 3),
            "grade_seconds": round(t2 - t1, 3),
            # CPU time of the process over evidence + grade (all threads): on a shared machine
            # it shows how much of the wall clock was waiting for a core.
            "cpu_seconds": round(cpu, 3),
            "load_average_1min": round(os.getloadavg()[0], 2),
            **{k: round(v, 3) for k, v in details.items()},
            "labs": evidence.height,
            "graded": grades.height,
            "pairs_per_second": round(n / (t2 - t0)) if t2 > t0 else 0,
            "rss_after_data_mb": round(rss_data, 1),
            "rss_peak_mb": round(_peak_rss_mb(), 1),
        },
    )


def passed(m: Measurement) -> bool:
    rss = m.details.get("rss_peak_mb", 0.0)
    return m.seconds <= SECONDS_GOAL and isinstance(rss, float | int) and rss <= RSS_GOAL_MB
