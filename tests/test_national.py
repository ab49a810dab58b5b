"""labeval.devtools.national: the national data set the benchmarks run on."""

from __future__ import annotations

import polars as pl
import pytest

from labeval.devtools import bench_evidence, bench_scoring
from labeval.devtools.national import CODE_COLUMNS, PAIR_BLOCK, NationalConfig, build_national
from scoring.schema import PAIR_INPUT_SCHEMA

N = 30_000
CFG = NationalConfig(n_pairs=N, n_labs=400, n_categories=40, n_items=300, seed=3)


@pytest.fixture(scope="module")
def nat():
    return build_national(CFG)


def test_pairs_have_the_scoring_schema_and_ids(nat):
    p = nat.pairs
    assert p.schema == pl.Schema(PAIR_INPUT_SCHEMA)
    assert p.height == N
    assert p.get_column("pair_id").to_list() == list(range(1, N + 1))


def test_same_seed_same_data_other_seed_other_data(nat):
    assert build_national(CFG).pairs.equals(nat.pairs)
    other = build_national(NationalConfig(n_pairs=N, n_labs=400, n_categories=40, n_items=300, seed=4))
    assert not other.pairs.equals(nat.pairs)


def test_blocks_are_the_pairs():
    cfg = NationalConfig(n_pairs=PAIR_BLOCK + 5, n_labs=60, n_categories=10, n_items=40, seed=1)
    national = build_national(cfg)
    blocks = list(national.pair_blocks())
    assert [b.height for b in blocks] == [PAIR_BLOCK, 5]
    assert blocks[1].get_column("pair_id").to_list() == list(range(PAIR_BLOCK + 1, PAIR_BLOCK + 6))


def test_partners_are_other_labs_and_mostly_nearby(nat):
    p = nat.pairs
    assert p.filter(pl.col("lab_1") == pl.col("lab_2")).height == 0
    arb = p.filter(pl.col("lab_3").is_not_null())
    assert 0 < arb.height < 0.15 * N
    assert arb.filter((pl.col("lab_3") == pl.col("lab_1")) | (pl.col("lab_3") == pl.col("lab_2"))).height == 0

    def same_province(national) -> float:
        prov = national.labs.select("lab_code", "province")
        return (
            national.pairs.join(prov.rename({"lab_code": "lab_1", "province": "p1"}), on="lab_1")
            .join(prov.rename({"lab_code": "lab_2", "province": "p2"}), on="lab_2")
            .select((pl.col("p1") == pl.col("p2")).mean())
            .item()
        )

    anywhere = build_national(NationalConfig(
        n_pairs=N, n_labs=400, n_categories=40, n_items=300, seed=3, same_province=0.0, same_region=0.0
    ))
    # partners from the province 70 % of the time (when the province has another lab in scope)
    assert same_province(nat) > same_province(anywhere) + 0.3


def test_isolated_groups_only_meet_each_other(nat):
    group = nat.truth.select("lab_code", "group")
    g = (
        nat.pairs.join(group.rename({"lab_code": "lab_1", "group": "g1"}), on="lab_1")
        .join(group.rename({"lab_code": "lab_2", "group": "g2"}), on="lab_2")
    )
    assert g.filter(pl.col("g1") != pl.col("g2")).height == 0
    assert g.filter(pl.col("g1") > 0).height > 0


def test_mix_of_items_censoring_and_verdicts(nat):
    p = nat.pairs
    qual = p.select((pl.col("kind") == "qualitative").mean()).item()
    assert 0.02 < qual < 0.2
    cens = p.filter(pl.col("censored_1"))
    assert cens.height > 0
    assert cens.filter(pl.col("value_1").is_not_null() | (pl.col("censor_limit_1") != pl.col("lod"))).height == 0
    assert set(p.get_column("verdict_1").unique().to_list()) == {"pass", "fail"}


def test_results_are_the_intake_layout_of_the_pairs(nat):
    res = nat.results()
    arb = nat.pairs.get_column("lab_3").is_not_null().sum()
    assert res.height == 2 * N + arb
    assert res.columns == ["sample_code", "item_code", "lab_code", "role", "value", "unit",
                           "expanded_uncertainty", "coverage_k", "replicates", "verdict",
                           "decision_rule", "reported_on"]
    assert all(dtype == pl.String for dtype in res.schema.values())
    censored = res.join(
        nat.pairs.filter(pl.col("censored_1")).select("sample_code", "item_code", "lab_1"),
        left_on=["sample_code", "item_code", "lab_code"], right_on=["sample_code", "item_code", "lab_1"],
    ).filter(pl.col("role") == "original")
    assert censored.height > 0
    assert censored.filter(~(pl.col("value").str.starts_with("<") | (pl.col("value") == "ND"))).height == 0
    # every code the results use is in its reference table
    for col, table, key in (("sample_code", nat.samples, "sample_code"), ("item_code", nat.items, "item_code"),
                            ("lab_code", nat.labs, "lab_code")):
        assert res.get_column(col).is_in(table.get_column(key).implode()).all()


def test_bench_targets_measure_small_sizes():
    for target in (bench_scoring, bench_evidence):
        m = target.measure(2_000, seed=1)
        assert m.seconds > 0 and m.floor_seconds > 0
    assert m.details["labs"] > 100


def test_categorical_blocks_hold_the_same_codes():
    cfg = NationalConfig(n_pairs=5_000, n_labs=60, n_categories=10, n_items=40, seed=1)
    national = build_national(cfg)
    strings = pl.concat(list(national.pair_blocks()))
    cats = pl.concat(list(national.pair_blocks(categorical=True)))
    assert all(cats.schema[c] == pl.Categorical() for c in CODE_COLUMNS)
    assert cats.get_column("sample_code").dtype == pl.String
    assert cats.with_columns(pl.col(c).cast(pl.String) for c in CODE_COLUMNS).equals(strings)
