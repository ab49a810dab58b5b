"""The intake benchmark runs end to end (small) and leaves the database untouched."""

from labeval import bench_ingest


async def test_bench_small_run_counts_and_rolls_back(conn):
    result = await bench_ingest.run(conn, rows=20_000)
    # make_results_csv writes 10 000 pairs: every row is valid.
    assert result["rows"] == 20_000
    assert result["accepted"] == 20_000
    assert result["rejected"] == 0
    assert result["ratio"] > 0
    assert "rows/s" in bench_ingest.render(result)
    # Rolled back: nothing of the benchmark remains.
    assert await conn.fetchval("SELECT count(*) FROM results") == 0
    assert await conn.fetchval("SELECT count(*) FROM labs") == 0
    assert await conn.fetchval("SELECT to_regclass('bench_copy_floor')") is None
