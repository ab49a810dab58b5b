"""Test data for intake and the CLI, built here rather than borrowed from the benchmarks or the
demo (which may change for their own reasons).

A small supervision world: one category TEX, labs L00.., items I00.. (absolute precision
σr = 0.05, σR = 0.1 mg/kg, LOD 0.5), samples S00000000.., and for every (sample, item) an
original result by lab (sample mod labs) and a retest by another lab. Every row is valid.
"""

from __future__ import annotations

import polars as pl

from labeval.ingest import ingest_frame

CATEGORY = "TEX"


def codes(prefix: str, n: int, width: int) -> pl.Series:
    return pl.Series([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=pl.String)


def reference(n_labs: int, n_items: int, n_samples: int) -> dict[str, pl.DataFrame]:
    """Rows for the kinds results refer to, in the order they must be loaded."""
    labs = codes("L", n_labs, 2)
    items = codes("I", n_items, 2)
    return {
        "categories": pl.DataFrame({"category_code": [CATEGORY], "name": ["纺织服装"]}),
        "labs": pl.DataFrame({"lab_code": labs, "name": "Lab " + labs, "scopes": [CATEGORY] * n_labs}),
        "items": pl.DataFrame({"item_code": items}).with_columns(
            category_code=pl.lit(CATEGORY), name=pl.col("item_code"), unit=pl.lit("mg/kg"),
            kind=pl.lit("quantitative"), precision_model=pl.lit("absolute"), repeatability_sd=pl.lit("0.05"),
            reproducibility_sd=pl.lit("0.1"), upper_limit=pl.lit("10"), lod=pl.lit("0.5"),
        ),
        "samples": pl.DataFrame({"sample_code": codes("S", n_samples, 8)}).with_columns(
            category_code=pl.lit(CATEGORY), sampled_on=pl.lit("2024-02-01")
        ),
    }


def results(n_labs: int, n_items: int, n_samples: int) -> pl.DataFrame:
    """2 · n_samples · n_items result rows: each original followed by its retest.

    Values cycle through 1.00 … 4.99 mg/kg; the retest differs by 0.01 (well inside the critical
    difference 2.8 · 0.1), and every fifth retest reads "<0.5" (censored below the LOD).
    """
    pairs = pl.DataFrame({"pair": pl.int_range(0, n_samples * n_items, eager=True)}).with_columns(
        sample=pl.col("pair") // n_items, item=pl.col("pair") % n_items
    )
    lab1 = pl.col("sample") % n_labs
    lab2 = (pl.col("sample") + 1 + pl.col("item") % (n_labs - 1)) % n_labs
    value = 1 + (pl.col("pair") % 400) / 100

    def side(lab: pl.Expr, role: str, text: pl.Expr) -> pl.DataFrame:
        return pairs.select(
            pl.col("pair"),
            pl.lit(role).alias("role"),
            pl.format("S{}", pl.col("sample").cast(pl.String).str.zfill(8)).alias("sample_code"),
            pl.format("I{}", pl.col("item").cast(pl.String).str.zfill(2)).alias("item_code"),
            pl.format("L{}", lab.cast(pl.String).str.zfill(2)).alias("lab_code"),
            text.alias("value"),
            pl.lit("mg/kg").alias("unit"),
            pl.lit("合格").alias("verdict"),
            pl.lit("2024-03-01").alias("reported_on"),
        )

    retest_text = pl.when(pl.col("pair") % 5 == 4).then(pl.lit("<0.5")).otherwise(
        (value + 0.01).round(2).cast(pl.String)
    )
    both = pl.concat([side(lab1, "original", value.round(2).cast(pl.String)), side(lab2, "retest", retest_text)])
    return both.sort("pair", "role").drop("pair")


async def load_reference(conn, n_labs: int, n_items: int, n_samples: int) -> None:
    for kind, frame in reference(n_labs, n_items, n_samples).items():
        report = await ingest_frame(conn, kind, frame, file_name=f"{kind}.csv", source="test")
        assert report.rejected == 0, report.rejects
