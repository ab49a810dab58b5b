"""Intake throughput against the floor: a plain COPY of the same CSV into a bare table.

run() builds the reference data and a results CSV of original/retest pairs, times ingest_path
on it, then times `COPY bare_table FROM file` on the same bytes. Everything happens in one
transaction that is rolled back, so the database is left as it was. Target: ingest throughput
at least half the floor's (ratio >= 0.5).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import asyncpg
import numpy as np
import polars as pl

from labeval.db.bench import copy_into_floor, create_floor_table
from labeval.db.pool import connect
from labeval.devtools.bench_types import Measurement
from labeval.ingest.pipeline import ingest_frame, ingest_path

N_ITEMS = 20
N_LABS = 40
_COLUMNS = (
    "sample_code", "item_code", "lab_code", "role", "value", "unit", "expanded_uncertainty", "coverage_k",
    "replicates", "verdict", "decision_rule", "reported_on",
)


def make_results_csv(path: Path, rows: int, seed: int = 1) -> int:
    """Write `rows` result rows (pairs: original + retest by another lab); return n samples."""
    n_pairs = max(rows // 2, 1)
    n_samples = -(-n_pairs // N_ITEMS)
    rng = np.random.default_rng(seed)
    pair = np.arange(n_pairs)
    sample = pair // N_ITEMS
    item = pair % N_ITEMS
    lab1 = sample % N_LABS
    lab2 = (sample + 1 + item % (N_LABS - 1)) % N_LABS
    level = rng.uniform(0.5, 5.0, n_pairs)
    x1 = level + rng.normal(0, 0.1, n_pairs)
    x2 = level + rng.normal(0, 0.1, n_pairs)
    # One in fifty retests reports a censored value.
    v2 = np.where(rng.random(n_pairs) < 0.02, "<0.5", np.round(x2, 4).astype(str))

    def side(lab: np.ndarray, role: str, value: np.ndarray) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "sample_code": pl.Series(sample).cast(pl.String).str.zfill(8).str.pad_start(9, "S"),
                "item_code": pl.Series(item).cast(pl.String).str.pad_start(3, "I"),
                "lab_code": pl.Series(lab).cast(pl.String).str.pad_start(4, "L"),
                "role": role,
                "value": value,
                "unit": "mg/kg",
                "expanded_uncertainty": "0.2",
                "coverage_k": "2",
                "replicates": "2",
                "verdict": "合格",
                "decision_rule": "simple",
                "reported_on": "2024-03-01",
            }
        )

    frame = pl.concat([side(lab1, "original", np.round(x1, 4).astype(str)), side(lab2, "retest", v2)])
    frame.head(rows).select(_COLUMNS).write_csv(path)
    return n_samples


async def _reference(conn: asyncpg.Connection, n_samples: int) -> None:
    await ingest_frame(conn, "categories", pl.DataFrame({"category_code": ["BENCH"], "name": ["bench"]}),
                       file_name="bench", source="bench")
    # Codes match make_results_csv's padding: str(i) left-padded with "L" to 4 characters.
    labs = pl.DataFrame({"lab_code": [str(i).rjust(4, "L") for i in range(N_LABS)]}).with_columns(
        name=pl.col("lab_code"), scopes=pl.lit("BENCH")
    )
    await ingest_frame(conn, "labs", labs, file_name="bench", source="bench")
    items = pl.DataFrame({"item_code": [str(i).rjust(3, "I") for i in range(N_ITEMS)]}).with_columns(
        category_code=pl.lit("BENCH"), name=pl.col("item_code"), unit=pl.lit("mg/kg"),
        kind=pl.lit("quantitative"), precision_model=pl.lit("absolute"), repeatability_sd=pl.lit("0.05"),
        reproducibility_sd=pl.lit("0.1"), lod=pl.lit("0.5"),
    )
    await ingest_frame(conn, "items", items, file_name="bench", source="bench")
    samples = pl.DataFrame({"sample_code": pl.Series(range(n_samples)).cast(pl.String).str.zfill(8).str.pad_start(9, "S")})
    await ingest_frame(conn, "samples", samples.with_columns(category_code=pl.lit("BENCH")), file_name="bench",
                       source="bench")


async def run(conn_or_url: asyncpg.Connection | str, rows: int = 1_000_000) -> dict:
    conn = await connect(conn_or_url) if isinstance(conn_or_url, str) else conn_or_url
    tx = conn.transaction()
    await tx.start()
    try:
        with tempfile.TemporaryDirectory(prefix="labeval-bench-") as d:
            path = Path(d) / "results.csv"
            t = time.perf_counter()
            n_samples = make_results_csv(path, rows)
            gen_s = time.perf_counter() - t
            await _reference(conn, n_samples)
            t = time.perf_counter()
            report = await ingest_path(conn, "results", path, source="bench")
            ingest_s = time.perf_counter() - t
            await create_floor_table(conn, _COLUMNS)
            t = time.perf_counter()
            await copy_into_floor(conn, path)
            floor_s = time.perf_counter() - t
            size = path.stat().st_size
    finally:
        await tx.rollback()
        if isinstance(conn_or_url, str):
            await conn.close()
    return {
        "rows": rows,
        "file_bytes": size,
        "generate_seconds": round(gen_s, 3),
        "ingest_seconds": round(ingest_s, 3),
        "rows_per_second": round(rows / ingest_s, 1),
        "accepted": report.accepted,
        "rejected": report.rejected,
        "floor_seconds": round(floor_s, 3),
        "floor_rows_per_second": round(rows / floor_s, 1),
        # Throughput ratio ingest / floor (target >= 0.5).
        "ratio": round(floor_s / ingest_s, 3),
    }


def render(result: dict) -> str:
    ok = "meets" if result["ratio"] >= 0.5 else "below"
    return (
        f"ingest {result['rows']:,} result rows ({result['file_bytes'] / 1e6:.1f} MB CSV): "
        f"{result['ingest_seconds']:.2f} s, {result['rows_per_second']:,.0f} rows/s "
        f"(accepted {result['accepted']:,}, rejected {result['rejected']:,})\n"
        f"floor (plain COPY into a bare table): {result['floor_seconds']:.2f} s, "
        f"{result['floor_rows_per_second']:,.0f} rows/s\n"
        f"ratio {result['ratio']:.2f} of the floor's throughput ({ok} the 0.5 target)"
    )


# The `labeval bench` target contract (labeval.devtools.bench): the ratio is time over the
# floor's time, so ">= 0.2x the floor's throughput" is "ratio <= 5".
DEFAULT_N = 1_000_000
QUICK_N = 20_000
GOAL = "ratio <= 5 (>= 0.2x the floor's rows/s)"


def measure(n: int, *, seed: int = 0, database_url: str | None = None) -> Measurement:
    if database_url is None:
        raise ValueError("the ingest benchmark needs a database")
    r = asyncio.run(run(database_url, rows=n))
    return Measurement(seconds=r["ingest_seconds"], floor_seconds=r["floor_seconds"],
                       details={"rows_per_second": r["rows_per_second"], "accepted": r["accepted"],
                                "rejected": r["rejected"], "timing": "one run"})


def passed(m: Measurement) -> bool:
    return m.seconds <= 5 * m.floor_seconds
