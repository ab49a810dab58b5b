"""The simulated world (labeval.devtools.world) does what its config says."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import stats

from labeval.db.grading import pairs_csv
from labeval.devtools.world import BAD_KINDS, WorldConfig, _horwitz, build_world
from labeval.grading.run import pairs_frame
from labeval.ingest import ingest_path
from scoring.schema import PAIR_INPUT_SCHEMA


@pytest.fixture(scope="module")
def big():
    # 2 000 labs: enough labs and lab-items for the spread and volume checks below.
    return build_world(WorldConfig(n_labs=2000, seed=5))


def lab_pairs(world) -> pl.DataFrame:
    sides = pl.concat([world.pairs.select(lab_code="lab_1"), world.pairs.select(lab_code="lab_2")])
    return world.truth.join(sides.group_by("lab_code").len("pairs"), on="lab_code", how="left").with_columns(
        pl.col("pairs").fill_null(0)
    )


def test_reproducible_by_seed() -> None:
    a, b = build_world(WorldConfig(n_labs=30, seed=9)), build_world(WorldConfig(n_labs=30, seed=9))
    for name in ("categories", "labs", "items", "samples", "results", "pairs", "truth", "biases", "result_truth"):
        assert getattr(a, name).equals(getattr(b, name)), name
    c = build_world(WorldConfig(n_labs=30, seed=10))
    assert not a.results.equals(c.results)
    assert not a.truth.equals(c.truth)


def test_pairs_follow_the_pair_schema_and_the_results() -> None:
    w = build_world(WorldConfig(n_labs=40, seed=1))
    assert w.pairs.schema == pl.Schema(PAIR_INPUT_SCHEMA)
    roles = w.results.group_by("role").len()
    n = dict(zip(roles["role"], roles["len"]))
    # One pair per retest result; every retest has an original.
    assert w.pairs.height == n["retest"] == n["original"]
    assert w.pairs.select(pl.col("lab_3").is_not_null().sum()).item() == n["arbitration"]
    assert w.pairs.select((pl.col("lab_1") != pl.col("lab_2")).all()).item()
    assert w.pairs.filter(pl.col("lab_3").is_not_null()).select(
        ((pl.col("lab_3") != pl.col("lab_1")) & (pl.col("lab_3") != pl.col("lab_2"))).all()
    ).item()
    # Realism of the values: nonconforming share, censored share, arbitration share.
    q = w.pairs.filter(pl.col("kind") == "quantitative")
    fail = q.select((pl.col("verdict_1") == "fail").mean()).item()
    assert 0.04 <= fail <= 0.12, fail
    assert 0.03 <= q.select(pl.col("censored_1").mean()).item() <= 0.3
    assert w.results["reported_on"].max() <= w.config.as_of.isoformat()


def test_normal_lab_biases_have_the_requested_between_lab_spread(big) -> None:
    normal = big.truth.filter(pl.col("kind") == "normal")["lab_code"]
    b = big.biases.filter(pl.col("lab_code").is_in(normal.implode()))
    z = b.with_columns(z=pl.col("bias") / pl.col("sigma_L"))
    # bias = σL·(√ρ·z_lab + √(1−ρ)·z_item): sd σL, and the lab-level share ρ = corr of two items.
    assert abs(z["z"].std() - 1.0) <= 0.15
    wide = z.pivot(on="item_code", index="lab_code", values="z")
    rho = np.corrcoef(wide["TEX-01"].to_numpy(), wide["CAB-02"].to_numpy())[0, 1]
    assert abs(rho - big.config.lab_share_rho) <= 0.1, rho
    # σL/σR = sqrt(1 − (σr/σR)²) of the item: TEX-01 σr 0.05, σR 0.12 (relative).
    tex = b.filter(pl.col("item_code") == "TEX-01")["sigma_L"][0]
    assert tex == pytest.approx(math.sqrt(1 - (0.05 / 0.12) ** 2))

    # The reported numbers carry the planted bias: (x − t)/σR(t) − bias has sd σr/(σR·√n).
    items = big.items.select(
        "item_code", "precision_model",
        pl.col("repeatability_sd").cast(pl.Float64), pl.col("reproducibility_sd").cast(pl.Float64),
        pl.col("upper_limit").cast(pl.Float64).alias("hi"), pl.col("lower_limit").cast(pl.Float64).alias("lo"),
    )
    res = (
        big.result_truth.filter(pl.col("lab_code").is_in(normal.implode()) & pl.col("value").is_not_null()
                                & (pl.col("role") != "arbitration"))
        .join(big.results.select("sample_code", "item_code", "lab_code", "role", pl.col("replicates").cast(pl.Int32)),
              on=["sample_code", "item_code", "lab_code", "role"])
        .join(items, on="item_code")
        .join(b.select("lab_code", "item_code", "bias"), on=["lab_code", "item_code"])
        # Non-negative quantities are clipped at 0; leave them out.
        .filter(pl.col("lo").is_not_null() | (pl.col("hi") <= 0))
        .with_columns(
            scale=pl.when(pl.col("precision_model") == "relative").then(pl.col("true_value").abs()).otherwise(1.0)
        )
        .with_columns(
            e=((pl.col("value") - pl.col("true_value")) / (pl.col("reproducibility_sd") * pl.col("scale"))
               - pl.col("bias"))
            / (pl.col("repeatability_sd") / pl.col("reproducibility_sd") / pl.col("replicates").sqrt())
        )
    )
    assert res.height > 20_000
    assert abs(res["e"].std() - 1.0) <= 0.15
    assert abs(res["e"].mean()) <= 0.05
    # ... and their total spread is ISO 5725's: var((x − t)/σR) = σL²/σR² + σr²/(n·σR²).
    total = res.select(
        r=(pl.col("value") - pl.col("true_value")) / (pl.col("reproducibility_sd") * pl.col("scale")),
        expected=1 - (pl.col("repeatability_sd") / pl.col("reproducibility_sd")) ** 2
        + (pl.col("repeatability_sd") / pl.col("reproducibility_sd")) ** 2 / pl.col("replicates"),
    )
    assert total["r"].var() == pytest.approx(total["expected"].mean(), rel=0.15)


def test_volumes_are_heavy_tailed_as_configured(big) -> None:
    cfg = big.config
    main = lab_pairs(big).filter(pl.col("group") == "main")
    x = main["pairs"].to_numpy()
    # A few busy labs (busy_share = 3 %, about busy_volume = 1 500 pairs each) ...
    assert 0.5 * cfg.busy_share <= np.mean(x > 1000) <= 2 * cfg.busy_share
    # ... most with tens of pairs: lognormal median 35, σ 1 -> P(10 <= v <= 60) = 0.60,
    # P(v < 10) = Φ(ln(10/35)) = 0.105 (before the Poisson draw of samples).
    assert 0.45 <= np.mean((x >= 10) & (x <= 60)) <= 0.70
    assert 0.05 <= np.mean(x < 10) <= 0.2
    assert 0.6 * cfg.volume_median <= np.median(x) <= 1.6 * cfg.volume_median
    # The 1 % busiest labs do a sixth or more of all the work.
    top = np.sort(x)[::-1][: x.size // 100]
    assert top.sum() >= x.sum() / 6
    # Realised volumes follow the planned ones.
    assert stats.spearmanr(x, main["planned_pairs"].to_numpy()).statistic >= 0.8


def test_partners_share_scope_and_prefer_the_same_province(big) -> None:
    scopes = dict(zip(big.labs["lab_code"], big.labs["scopes"].str.split(";")))
    sample = big.pairs.sample(2000, seed=1)
    for lab1, lab2, cat in sample.select("lab_1", "lab_2", "category_code").iter_rows():
        assert cat in scopes[lab1] and cat in scopes[lab2]
    prov = big.truth.select("lab_code", "province")
    same = (
        big.pairs.join(prov, left_on="lab_1", right_on="lab_code")
        .join(prov, left_on="lab_2", right_on="lab_code", suffix="_2")
        .select((pl.col("province") == pl.col("province_2")).mean()).item()
    )
    # Uniform partners would share a province about 1/15 of the time (30 provinces, skewed).
    assert same >= 0.35
    # Some labs mostly test originals, some mostly retest.
    sides = pl.concat([big.pairs.select(lab_code="lab_1", orig=pl.lit(1)),
                       big.pairs.select(lab_code="lab_2", orig=pl.lit(0))])
    share = sides.group_by("lab_code").agg(pl.len(), pl.col("orig").mean()).filter(pl.col("len") >= 50)["orig"]
    assert (share >= 0.75).mean() >= 0.08 and (share <= 0.25).mean() >= 0.08


def test_isolated_groups_are_isolated_in_the_pairs_graph() -> None:
    biased_in_pair = 0
    seeds = range(20)
    for seed in seeds:
        w = build_world(WorldConfig(n_labs=40, seed=seed))
        groups = {g: set(w.truth.filter(pl.col("group") == g)["lab_code"])
                  for g in ("isolated_pair", "isolated_triangle")}
        assert len(groups["isolated_pair"]) == 2 and len(groups["isolated_triangle"]) == 3
        for members in groups.values():
            touching = w.pairs.filter(
                pl.col("lab_1").is_in(members) | pl.col("lab_2").is_in(members) | pl.col("lab_3").is_in(members)
            )
            assert touching.height >= 50
            labs = set(touching["lab_1"]) | set(touching["lab_2"]) | set(touching["lab_3"].drop_nulls())
            assert labs == members
        tri = w.truth.filter(pl.col("group") == "isolated_triangle")
        assert tri.filter(pl.col("kind") == "biased").height == 1
        assert tri.filter(pl.col("kind") == "normal").height == 2
        pair_kinds = sorted(w.truth.filter(pl.col("group") == "isolated_pair")["kind"])
        assert pair_kinds in (["normal", "normal"], ["biased", "normal"])
        biased_in_pair += pair_kinds == ["biased", "normal"]
    # Half of the seeds: Binomial(20, 0.5) is within 4..16 with probability 0.997.
    assert 4 <= biased_in_pair <= 16
    # Without isolated groups every lab is in the main group.
    assert set(build_world(WorldConfig(n_labs=40, seed=0, isolated_groups=False)).truth["group"]) == {"main"}


def test_bad_kinds_planted_in_the_configured_shares(big) -> None:
    cfg = big.config
    main = big.truth.filter(pl.col("group") == "main")
    counts = dict(main.group_by("kind").len().iter_rows())
    for kind in BAD_KINDS:
        assert counts[kind] == round(getattr(cfg, f"{kind}_share") * main.height), kind
    biased = big.truth.filter(pl.col("kind") == "biased")["magnitude"].abs()
    assert (biased == cfg.biased_shift).all()


def test_defects_only_where_planted_and_at_their_rates(big) -> None:
    cfg = big.config
    rt = big.result_truth.join(big.truth.select("lab_code", "kind"), on="lab_code")
    normal = rt.filter(pl.col("kind") == "normal")
    assert set(normal["defect"].drop_nulls()) == {"wrong_qualitative"}
    qual = normal.filter(pl.col("true_value").is_null())
    assert abs(qual.select(pl.col("defect").is_not_null().mean()).item() - cfg.qualitative_error) <= 0.004
    careless = rt.filter((pl.col("kind") == "careless_qualitative") & pl.col("true_value").is_null())
    assert abs(careless.select(pl.col("defect").is_not_null().mean()).item() - cfg.careless_error) <= 0.03
    for kind, defects in (("gross_errors", {"unit_slip", "transposition"}), ("verdict_flipper", {"flipped_verdict"}),
                          ("nd_hider", {"hidden_nd"}), ("shading", {"shaded"})):
        assert set(rt.filter(pl.col("kind") == kind)["defect"].drop_nulls()) - {"wrong_qualitative"} == defects, kind


def test_shading_touches_a_few_percent_and_only_results_near_the_limit(big) -> None:
    cfg = big.config
    items = big.items.select("item_code", pl.col("upper_limit").cast(pl.Float64).alias("hi"),
                             pl.col("lower_limit").cast(pl.Float64).alias("lo"),
                             pl.col("reproducibility_sd").cast(pl.Float64).alias("sd"), "precision_model")
    shading = big.truth.filter(pl.col("kind") == "shading")["lab_code"]
    # Upper-limit items only, where the window is simply [hi − 0.5σR, hi + 3σR] around the limit.
    rows = (
        big.result_truth.filter(pl.col("lab_code").is_in(shading.implode()) & pl.col("true_value").is_not_null())
        .join(items, on="item_code")
        .filter(pl.col("lo").is_null() & pl.col("hi").is_not_null())
        .with_columns(
            s=pl.when(pl.col("precision_model") == "relative").then(pl.col("sd") * pl.col("hi")).otherwise(pl.col("sd"))
        )
        .with_columns(
            excess=(pl.col("true_value") - pl.col("hi")) / pl.col("s"),
            shaded=(pl.col("defect") == "shaded").fill_null(False),
        )
    )
    lo, hi = cfg.shading_window
    eligible = rows.filter(pl.col("excess").is_between(-lo, hi))
    assert rows.filter(~pl.col("excess").is_between(-lo, hi))["shaded"].sum() == 0
    rate = eligible["shaded"].mean()
    n = eligible.height
    assert n >= 100
    assert abs(rate - cfg.shading_prob) <= 4 * math.sqrt(cfg.shading_prob * (1 - cfg.shading_prob) / n)
    shaded = eligible.filter("shaded")
    # Reported just inside the limit, with a pass.
    assert shaded.select(pl.col("value").is_between(pl.col("hi") - 0.5 * pl.col("s"), pl.col("hi")).all()).item()
    share = rows["shaded"].mean()
    assert 0.01 <= share <= 0.10, share


async def test_world_loads_through_intake_and_gives_the_same_pairs(conn, tmp_path: Path) -> None:
    w = build_world(WorldConfig(n_labs=15, seed=3))
    for kind, frame in w.intake_tables().items():
        path = tmp_path / f"{kind}.csv"
        frame.write_csv(path)
        report = await ingest_path(conn, kind, path, source="test")
        assert report.rejected == 0, (kind, report.rejects[:3])
        assert report.accepted == frame.height, kind
    db = pairs_frame(await pairs_csv(conn, w.config.as_of))
    key = ["sample_code", "item_code"]
    ours = w.pairs.drop("pair_id").sort(key)
    theirs = db.drop("pair_id").sort(key)
    assert theirs.height == ours.height > 100
    assert theirs.equals(ours)


def test_horwitz_precision_matches_thompsons_function() -> None:

    # Thompson (2000): RSD 22 % below 1.2e-7; 2 %·c^-0.1505 up to 0.138 (16 % at 1 ppm, the
    # classic Horwitz figure); 1 %/√c above (2 % at c = 0.25).
    c = np.array([1e-8, 1e-6, 0.25])
    assert _horwitz(c) / c == pytest.approx([0.22, 0.02 * 1e-6 ** -0.1505, 0.02])
    assert 0.02 * 1e-6 ** -0.1505 == pytest.approx(0.16, abs=0.005)


def test_impossible_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="n_labs must be at least 11"):
        build_world(WorldConfig(n_labs=10))
    with pytest.raises(ValueError, match="add up to more than the labs"):
        build_world(WorldConfig(n_labs=20, biased_share=0.9, noisy_share=0.5))
