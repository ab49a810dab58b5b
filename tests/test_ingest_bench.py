"""The intake benchmark runs end to end (small), reports consistent figures, and leaves the
database untouched."""

import pytest

from labeval.devtools import bench_ingest


async def test_bench_small_run_counts_and_rolls_back(conn):
    result = await bench_ingest.run(conn, rows=20_000)
    # make_results_csv writes 10 000 pairs: every row is valid.
    assert (result["rows"], result["accepted"], result["rejected"]) == (20_000, 20_000, 0)
    # The figures are those of the two timings: throughput is rows over time, and the ratio is
    # ingest throughput over the floor's (the timings are rounded to ms, hence the tolerance).
    assert result["rows_per_second"] == pytest.approx(20_000 / result["ingest_seconds"], rel=0.01)
    assert result["floor_rows_per_second"] == pytest.approx(20_000 / result["floor_seconds"], rel=0.05)
    assert result["ratio"] == pytest.approx(result["floor_seconds"] / result["ingest_seconds"], abs=0.01)
    # 20 000 rows of 12 columns are some hundreds of kB of CSV.
    assert 500_000 < result["file_bytes"] < 3_000_000
    text = bench_ingest.render(result)
    assert f"ratio {result['ratio']:.2f} of the floor's throughput" in text
    assert ("meets the 0.2 target" in text) == (result["ratio"] >= 0.2)
    # Rolled back: nothing of the benchmark remains.
    assert await conn.fetchval("SELECT count(*) FROM results") == 0
    assert await conn.fetchval("SELECT count(*) FROM labs") == 0
    assert await conn.fetchval("SELECT count(*) FROM imports") == 0
    assert await conn.fetchval("SELECT to_regclass('bench_copy_floor')") is None
