"""scoring.evidence.lab_evidence on small hand-built scored-pair frames."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import polars.selectors as cs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from labeval.devtools.national import NationalConfig, build_national
from scoring.cusum import cusum_grid, cusum_limit_of_grid, lab_cusum, risk_adjusted_cusum
from scoring.evidence import (
    CUSUM_PATH_SCHEMA,
    EVIDENCE_INPUT_COLUMNS,
    EVIDENCE_SCHEMA,
    GROUP_BIAS_SCHEMA,
    _all_distinct,
    _chart_order,
    _chart_order_of,
    _cusum_rows,
    _lab_chart,
    _sign_tests,
    _stages,
    bias_by_group,
    cusum_series,
    lab_evidence,
)
from scoring.grading import grade
from scoring.pairs import score_pairs
from scoring.policy import EvidencePolicy, Policy
from scoring.rates import garwood_interval

AS_OF = dt.date(2026, 1, 1)
DAY = dt.date(2025, 6, 1)


def scored(rows: list[dict]) -> pl.LazyFrame:
    """Scored-pair frame with the score_pairs columns lab_evidence relies on."""
    schema = {
        "pair_id": pl.Int64, "sample_code": pl.String, "item_code": pl.String,
        "category_code": pl.String, "kind": pl.String, "lab_1": pl.String, "lab_2": pl.String,
        "lab_3": pl.String, "reported_on_1": pl.Date, "reported_on_2": pl.Date, "s": pl.Float64,
        "outcome": pl.String, "discrepant": pl.Boolean, "reversal": pl.Boolean,
        "p_disagree": pl.Float64, "s_13": pl.Float64, "s_23": pl.Float64,
        "outcome_13": pl.String, "outcome_23": pl.String, "arbiter_sides_with": pl.String,
    }
    full = []
    for i, r in enumerate(rows):
        outcome = r.get("outcome", "consistent")
        base = {
            "pair_id": i, "sample_code": f"S{i}", "item_code": "I1", "category_code": "C1",
            "kind": "quantitative", "lab_3": None, "reported_on_1": DAY, "reported_on_2": DAY,
            "s": 0.0, "outcome": outcome,
            "discrepant": outcome in ("discrepant", "reversal", "censored_discrepant", "qualitative_reversal"),
            "reversal": outcome in ("reversal", "qualitative_reversal"),
            "p_disagree": None, "s_13": None, "s_23": None, "outcome_13": None,
            "outcome_23": None, "arbiter_sides_with": None,
        }
        base.update(r)
        full.append(base)
    return pl.DataFrame(full, schema=schema).lazy()


def overall_policy(**kw) -> Policy:
    return Policy(evidence=EvidencePolicy(baseline="overall", **kw))


# --------------------------------------------------------------------------- lab_evidence


def test_empty_input_gives_empty_frame_with_schema():
    out = lab_evidence(scored([]), Policy(), as_of=AS_OF)
    assert out.height == 0
    assert out.schema == pl.Schema(EVIDENCE_SCHEMA)


def test_every_evidence_column_is_documented():
    # an officer reads these names in the evidence; docs/methods.md explains each one
    doc = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text(encoding="utf-8")
    missing = [c for c in EVIDENCE_SCHEMA if not re.search(rf"\b{c}\b", doc)]
    assert missing == []


def test_counts_roles_and_window():
    rows = [
        {"lab_1": "A", "lab_2": "B", "outcome": "discrepant", "s": 2.5},
        {"lab_1": "A", "lab_2": "B", "outcome": "reversal_within_uncertainty", "s": 0.5},
        {"lab_1": "B", "lab_2": "A", "outcome": "reversal", "s": 3.0},
        {"lab_1": "A", "lab_2": "C", "outcome": "censored_discrepant", "s": None},
        {"lab_1": "A", "lab_2": "B", "lab_3": "D", "outcome": "discrepant", "s": 3.0,
         "s_13": 2.9, "s_23": 0.0, "arbiter_sides_with": "retest"},
        # outside the window: after as_of, and more than window_days before it
        {"lab_1": "A", "lab_2": "B", "reported_on_1": dt.date(2026, 1, 2), "reported_on_2": DAY},
        {"lab_1": "A", "lab_2": "B", "reported_on_1": dt.date(2020, 1, 1), "reported_on_2": dt.date(2020, 1, 1)},
    ]
    ev = lab_evidence(scored(rows), Policy(), as_of=AS_OF)
    r = {x["lab_code"]: x for x in ev.iter_rows(named=True)}
    assert ev.get_column("lab_code").to_list() == ["A", "B", "C", "D"]
    assert (r["A"]["pairs"], r["A"]["pairs_original"], r["A"]["pairs_retest"]) == (5, 4, 1)
    # discrepancies are numeric pairs with |d| > CD; the censored disagreement is its own count
    assert (r["A"]["discrepancies"], r["A"]["reversals"]) == (3, 1)
    assert r["A"]["reversals_within_uncertainty"] == 1
    assert r["A"]["censored_disagreements"] == 1
    assert r["A"]["pairs_quantitative"] == 4
    assert r["A"]["arbitrations_lost"] == 1 and r["B"]["arbitrations_lost"] == 0
    assert (r["D"]["pairs"], r["D"]["pairs_arbitration"], r["D"]["pairs_compared"]) == (1, 1, 0)
    assert r["D"]["attributed_discrepancies"] == 0.0
    assert r["D"]["eb_rate"] is None
    # attribution conserves discrepancies: 3 numeric discrepant pairs, no "neither" arbitration
    assert ev.get_column("attributed_discrepancies").sum() == pytest.approx(3.0)
    # the within-uncertainty reversal is never penalised: A's and B's blame come only from the
    # three numeric discrepant pairs, and the arbitrated pair is entirely A's
    assert r["A"]["attributed_discrepancies"] >= 1.0
    # C's only pair is censored (not a numeric discrepancy): A and B share all three exactly
    assert r["C"]["attributed_discrepancies"] == 0.0
    assert r["A"]["attributed_discrepancies"] + r["B"]["attributed_discrepancies"] == pytest.approx(3.0)


def test_arbitration_settles_blame():
    base = [{"lab_1": f"O{i}", "lab_2": f"R{i}", "outcome": "discrepant", "s": 3.0,
             "lab_3": "Z", "s_13": 0.0, "s_23": -3.0} for i in range(3)]
    sides = ["original", "retest", "neither"]
    rows = [dict(r, arbiter_sides_with=side) for r, side in zip(base, sides)]
    ev = lab_evidence(scored(rows), overall_policy(), as_of=AS_OF)
    blame = dict(zip(ev["lab_code"], ev["attributed_discrepancies"]))
    assert (blame["O0"], blame["R0"]) == (0.0, 1.0)
    assert (blame["O1"], blame["R1"]) == (1.0, 0.0)
    assert (blame["O2"], blame["R2"]) == (1.0, 1.0)
    assert blame["Z"] == 0.0


def test_expected_counts_overall_baseline_hand():
    # 10 pairs, 2 discrepant, baseline "overall": p = 0.2 per pair, E = p/2 per pair and lab.
    rows = [{"lab_1": "A", "lab_2": f"P{i}", "outcome": "discrepant" if i < 2 else "consistent",
             "s": 3.0 if i < 2 else 0.1} for i in range(10)]
    ev = lab_evidence(scored(rows), overall_policy(), as_of=AS_OF)
    a = ev.filter(pl.col("lab_code") == "A").row(0, named=True)
    # hand computation: A took part in 10 pairs: E = 10 * 0.2 / 2 = 1.0
    assert a["expected_discrepancies"] == pytest.approx(1.0)
    assert a["oe_ratio"] == pytest.approx(a["attributed_discrepancies"])
    lo, hi = garwood_interval(np.array([a["attributed_discrepancies"]]))
    assert (a["oe_lower"], a["oe_upper"]) == pytest.approx((lo[0], hi[0]))


def test_item_baseline_shrinks_to_category():
    # item I1: 1 discrepancy in 2 pairs; category rate (2 items) 1/4; overall the same.
    # hand computation with k = 2: category = (1 + 2*0.25)/(4 + 2) = 0.25;
    # item I1 = (1 + 2*0.25)/(2 + 2) = 0.375, item I2 = (0 + 0.5)/4 = 0.125.
    rows = [
        {"lab_1": "A", "lab_2": "B", "item_code": "I1", "outcome": "discrepant", "s": 3.0},
        {"lab_1": "C", "lab_2": "D", "item_code": "I1"},
        {"lab_1": "E", "lab_2": "F", "item_code": "I2"},
        {"lab_1": "G", "lab_2": "H", "item_code": "I2"},
    ]
    pol = Policy(evidence=EvidencePolicy(baseline="item", baseline_prior_pairs=2.0))
    ev = lab_evidence(scored(rows), pol, as_of=AS_OF)
    e = dict(zip(ev["lab_code"], ev["expected_discrepancies"]))
    assert e["C"] == pytest.approx(0.375 / 2)
    assert e["E"] == pytest.approx(0.125 / 2)


def test_biased_lab_takes_the_blame_not_its_partners():
    rng = np.random.default_rng(11)
    rows = []
    partners = [f"P{i}" for i in range(8)]
    for i in range(400):
        if i % 2 == 0:  # the biased lab X against random partners
            a, b, bias = "X", partners[rng.integers(0, 8)], 1.2
        else:  # partners among themselves
            a, b = rng.choice(partners, 2, replace=False)
            bias = 0.0
        s = bias + rng.normal()
        rows.append({"lab_1": a, "lab_2": b, "s": s,
                     "outcome": "discrepant" if abs(s) > 1.98 else "consistent"})
    ev = lab_evidence(scored(rows), overall_policy(), as_of=AS_OF)
    r = {x["lab_code"]: x for x in ev.iter_rows(named=True)}
    # s units → σR (× √2); anchored on the median lab, so the partners sit near 0
    assert r["X"]["bias"] == pytest.approx(1.2 * math.sqrt(2), abs=0.25)
    assert r["X"]["bias_q"] < 1e-6
    x_disc_pairs = r["X"]["discrepancies"]
    assert r["X"]["attributed_discrepancies"] > 0.75 * x_disc_pairs
    # no partner is flagged: its q is above the FDR level, every one of them
    assert min(r[p]["bias_q"] for p in partners) > 0.05
    assert r["X"]["excess_q"] < 0.05
    assert r["X"]["eb_rate"] > max(r[p]["eb_rate"] for p in partners)


def test_sign_and_wilcoxon_match_scipy():
    s = [0.8, -0.2, 1.5, 2.1, 0.4, -0.9, 1.1, 0.7, 1.3, 0.4, 0.0]
    rows = [{"lab_1": "A", "lab_2": f"P{i}", "s": v} for i, v in enumerate(s)]
    ev = lab_evidence(scored(rows), overall_policy(), as_of=AS_OF)
    a = ev.filter(pl.col("lab_code") == "A").row(0, named=True)
    nz = [v for v in s if v != 0]
    assert (a["sign_n"], a["sign_positive"]) == (10, 8)
    assert a["sign_p"] == pytest.approx(stats.binomtest(8, 10, 0.5).pvalue)
    ref = stats.wilcoxon(nz, method="approx", correction=True)
    assert a["wilcoxon_p"] == pytest.approx(ref.pvalue, rel=1e-9)
    # W+ by hand: ranks of |s| (ties 0.4, 0.4 -> 2.5), negatives -0.2 (rank 1), -0.9 (rank 6)
    assert a["wilcoxon_statistic"] == pytest.approx(55 - 1 - 6)
    assert a["median_s"] == pytest.approx(0.7)
    p0 = ev.filter(pl.col("lab_code") == "P0").row(0, named=True)
    assert (p0["sign_positive"], p0["median_s"]) == (0, -0.8)


def test_cusum_in_evidence_follows_arbitrated_blame_in_date_order():
    # A loses every arbitration (blame 1) on days 1 and 3; other pairs consistent (blame 0).
    # baseline overall: 2 of 4 discrepant -> p = 0.5, per-lab p = 0.25; R = 2.
    rows = []
    for i, disc in enumerate([False, True, False, True]):
        day = dt.date(2025, 1, 1 + i)
        r = {"lab_1": "A", "lab_2": f"P{i}", "s": 0.0, "reported_on_1": day, "reported_on_2": day}
        if disc:
            r.update(outcome="discrepant", s=3.0, lab_3="Z", s_13=3.0, s_23=0.0,
                     arbiter_sides_with="retest")
        rows.append(r)
    pol = overall_policy()
    ev = lab_evidence(scored(list(reversed(rows))), pol, as_of=AS_OF)
    a = ev.filter(pl.col("lab_code") == "A").row(0, named=True)
    path = risk_adjusted_cusum(np.array([0, 1, 0, 1.0]), np.full(4, 0.25), 2.0)
    # hand: W1 = ln2 - ln1.25 = 0.470004, W0 = -0.223144 -> 0, 0.470004, 0.246860, 0.716864
    np.testing.assert_allclose(path, [0.0, 0.470004, 0.246860, 0.716864], atol=1e-6)
    assert a["cusum_current"] == pytest.approx(path[-1])
    assert a["cusum_max"] == pytest.approx(path.max())
    assert a["cusum_signal"] is bool(path.max() >= a["cusum_limit"])


def test_evidence_is_deterministic():
    rng = np.random.default_rng(5)
    rows = [{"lab_1": f"L{rng.integers(0, 5)}", "lab_2": f"M{rng.integers(0, 5)}",
             "s": float(rng.normal())} for _ in range(60)]
    a = lab_evidence(scored(rows), Policy(), as_of=AS_OF)
    b = lab_evidence(scored(rows), Policy(), as_of=AS_OF)
    assert a.equals(b)


def test_empirical_bayes_columns_hand():
    rows = [{"lab_1": "A", "lab_2": f"P{i}", "outcome": "discrepant" if i < 3 else "consistent",
             "s": 3.0 if i < 3 else 0.0} for i in range(12)]
    ev = lab_evidence(scored(rows), overall_policy(target_rate=0.05), as_of=AS_OF)
    a = ev.filter(pl.col("lab_code") == "A").row(0, named=True)
    alpha, beta = a["eb_alpha"], a["eb_beta"]
    o, n = a["attributed_discrepancies"], 12
    assert a["eb_rate"] == pytest.approx((o + alpha) / (n + alpha + beta))
    post = stats.beta(o + alpha, n - o + beta)
    assert a["eb_p_above_target"] == pytest.approx(post.sf(0.05))
    assert (a["eb_lower"], a["eb_upper"]) == pytest.approx(post.ppf([0.025, 0.975]))
    # shrinkage: between the lab's own rate and the prior mean
    prior_mean = alpha / (alpha + beta)
    assert min(o / n, prior_mean) <= a["eb_rate"] <= max(o / n, prior_mean)


pair_rows = st.lists(
    st.tuples(
        st.integers(0, 5), st.integers(1, 5), st.floats(-6, 6),
        st.sampled_from(["consistent", "discrepant", "reversal", "reversal_within_uncertainty"]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(pair_rows)
def test_attribution_conserves_counts(data):
    rows = [{"lab_1": f"L{a}", "lab_2": f"L{(a + d) % 6}", "s": s, "outcome": o}
            for a, d, s, o in data]
    ev = lab_evidence(scored(rows), overall_policy(), as_of=AS_OF)
    n_disc = sum(o in ("discrepant", "reversal") for *_, o in data)
    # every discrepancy is shared out exactly once; with one overall baseline rate the expected
    # counts add up to the observed total too (indirect standardisation is internally consistent)
    assert ev.get_column("attributed_discrepancies").sum() == pytest.approx(n_disc)
    assert ev.get_column("expected_discrepancies").sum() == pytest.approx(n_disc)
    assert ev.get_column("pairs_compared").sum() == 2 * len(data)
    assert (ev.get_column("attributed_discrepancies") <= ev.get_column("discrepancies") + 1e-9).all()
    # each component is anchored on its median lab
    med = ev.drop_nulls("bias").group_by("component").agg(pl.col("bias").median())
    assert (med.get_column("bias").abs() < 1e-6).all()


def test_qualitative_rate_hand():
    # A–B: 10 qualitative pairs, 2 reversals, both arbitrated by C, which sides with the retest
    # (B): A carries both errors. B–C: 10 qualitative pairs, all agree.
    # Qualitative pair-sides: A 10, B 20, C 10 (arbitration is not a compared side) = 40;
    # attributed errors: A 2, B 0, C 0; pooled = 2/40 = 0.05; k = baseline_prior_pairs = 20.
    # hand computation: A (2 + 20·0.05)/(10 + 20) = 0.1; B (0 + 1)/(20 + 20) = 0.025;
    # C 1/(10 + 20) = 0.0333…
    rows = [
        {"lab_1": "A", "lab_2": "B", "kind": "qualitative", "s": None,
         "outcome": "qualitative_reversal" if i < 2 else "qualitative_agree",
         "lab_3": "C" if i < 2 else None, "arbiter_sides_with": "retest" if i < 2 else None}
        for i in range(10)
    ] + [
        {"lab_1": "B", "lab_2": "C", "kind": "qualitative", "s": None, "outcome": "qualitative_agree"}
        for _ in range(10)
    ]
    ev = lab_evidence(scored(rows), overall_policy(), as_of=DAY)
    got = {r["lab_code"]: (r["pairs_qualitative"], r["qualitative_errors"], r["qualitative_rate"])
           for r in ev.iter_rows(named=True)}
    assert got["A"] == (10, pytest.approx(2.0), pytest.approx(0.1))
    assert got["B"] == (20, pytest.approx(0.0), pytest.approx(0.025))
    assert got["C"] == (10, pytest.approx(0.0), pytest.approx(1 / 30))


def test_an_isolated_pair_is_not_identifiable_and_goes_to_arbitration():
    # X and Y only ever retest each other (X reads 2 σR high, so they disagree often); the main
    # group A..E retest each other. Nothing tells whether X or Y is wrong.
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(60):
        s = 2.0 / math.sqrt(2) + rng.normal()
        rows.append({"lab_1": "X", "lab_2": "Y", "s": s,
                     "outcome": "discrepant" if abs(s) > 1.98 else "consistent"})
    labs = list("ABCDE")
    for i in range(200):
        a, b = rng.choice(labs, 2, replace=False)
        rows.append({"lab_1": a, "lab_2": b, "s": float(rng.normal())})
    ev = lab_evidence(scored(rows), overall_policy(), as_of=AS_OF)
    r = {x["lab_code"]: x for x in ev.iter_rows(named=True)}
    assert (r["X"]["component_size"], r["X"]["partners"]) == (2, 1)
    assert not r["X"]["identifiable"] and not r["Y"]["identifiable"]
    assert r["X"]["arbitration_suggested"] and r["Y"]["arbitration_suggested"]
    assert r["A"]["identifiable"] and not r["A"]["arbitration_suggested"]
    # a pair's biases split the difference: neither is judged (no FDR family membership)
    assert r["X"]["bias_q"] is None and r["Y"]["bias_q"] is None


# ------------------------------------------------------------------- the series charts draw


def _mixed_rows(seed: int) -> list[dict]:
    """Labs X (biased in category C2 only) and eight partners, dated over a year, two categories."""
    rng = np.random.default_rng(seed)
    partners = [f"P{i}" for i in range(8)]
    rows = []
    for i in range(500):
        cat = "C1" if i % 2 else "C2"
        if i % 3 == 0:
            a, b = "X", partners[rng.integers(0, 8)]
            bias = 1.5 if cat == "C2" else 0.0
        else:
            a, b = rng.choice(partners, 2, replace=False)
            bias = 0.0
        s = bias + rng.normal()
        day = dt.date(2025, 1, 1) + dt.timedelta(days=int(i * 0.7))
        rows.append({"lab_1": a, "lab_2": b, "s": s, "category_code": cat, "item_code": f"I{cat}",
                     "reported_on_1": day, "reported_on_2": day,
                     "outcome": "discrepant" if abs(s) > 1.98 else "consistent"})
    return rows


def test_cusum_series_ends_where_the_evidence_says():
    data = scored(_mixed_rows(3))
    pol = overall_policy()
    ev = {r["lab_code"]: r for r in lab_evidence(data, pol, as_of=AS_OF).iter_rows(named=True)}
    series = cusum_series(data, pol, as_of=AS_OF)
    assert series.schema == pl.Schema(CUSUM_PATH_SCHEMA)
    for lab, path in series.group_by("lab_code"):
        e = ev[lab[0]]
        assert path.height == e["pairs_quantitative"]
        assert path.get_column("cusum").max() == pytest.approx(e["cusum_max"], abs=1e-12)
        assert path.get_column("cusum").to_list()[-1] == pytest.approx(e["cusum_current"], abs=1e-12)
        # In chart order: completion dates never go back.
        dates = path.get_column("completed_on").to_list()
        assert dates == sorted(dates)
        # The path is the risk-adjusted CUSUM of its own y and p.
        np.testing.assert_allclose(
            path.get_column("cusum").to_numpy(),
            risk_adjusted_cusum(path.get_column("y").to_numpy(), path.get_column("p").to_numpy(),
                                pol.cusum.odds_ratio),
            atol=1e-12,
        )
    assert cusum_series(scored([]), pol, as_of=AS_OF).height == 0


def test_bias_by_group_finds_the_category_the_overall_bias_averages():
    data = scored(_mixed_rows(4))
    pol = overall_policy()
    groups = bias_by_group(data, pol, as_of=AS_OF, by="category_code")
    assert groups.schema == pl.Schema(GROUP_BIAS_SCHEMA)
    x = {r["group"]: r for r in groups.filter(pl.col("lab_code") == "X").iter_rows(named=True)}
    # Planted: 1.5 s units = 1.5 √2 σR in C2, nothing in C1.
    assert x["C2"]["bias"] == pytest.approx(1.5 * math.sqrt(2), abs=0.35)
    assert abs(x["C1"]["bias"]) < 0.45
    overall = lab_evidence(data, pol, as_of=AS_OF).filter(pl.col("lab_code") == "X").row(0, named=True)
    assert x["C1"]["bias"] < overall["bias"] < x["C2"]["bias"]
    assert x["C2"]["bias_peer_limit"] == pytest.approx(pol.evidence.peer_z * x["C2"]["bias_tau"])


def test_bias_by_group_with_one_group_is_the_overall_bias():
    data = scored(_mixed_rows(5))
    pol = overall_policy()
    one = bias_by_group(data.with_columns(everything=pl.lit("all")), pol, as_of=AS_OF, by="everything")
    ev = lab_evidence(data, pol, as_of=AS_OF).select("lab_code", "bias", "bias_se", "bias_tau")
    joined = one.join(ev, on="lab_code", suffix="_ev")
    assert joined.height == ev.height
    for col in ("bias", "bias_se", "bias_tau"):
        np.testing.assert_allclose(joined.get_column(col).to_numpy(), joined.get_column(f"{col}_ev").to_numpy(),
                                   rtol=1e-12)


def test_categorical_codes_give_the_same_evidence_as_strings():
    # A service may hold codes (labs, items, categories, kind, outcome, the arbiter's word) as
    # Categorical to save memory; the evidence must not depend on it.
    nat = build_national(NationalConfig(n_pairs=20_000, n_labs=300, n_categories=30, n_items=200, seed=2))
    pol = Policy()
    strings = score_pairs(nat.pairs.lazy(), pol).select(EVIDENCE_INPUT_COLUMNS).collect()
    cats = strings.with_columns(cs.string().cast(pl.Categorical))
    assert {"lab_1", "item_code", "outcome", "arbiter_sides_with"} <= set(cats.select(cs.categorical()).columns)
    as_of = nat.config.as_of
    a = lab_evidence(strings.lazy(), pol, as_of=as_of)
    b = lab_evidence(cats.lazy(), pol, as_of=as_of)
    assert a.height > 250
    assert a.equals(b)
    assert grade(a, None, None, pol).equals(grade(b, None, None, pol))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_sign_and_wilcoxon_per_lab_match_ranks_by_hand(seed):
    # Many labs, ties and zeros: each lab's W+ and tie term against scipy's average ranks of its
    # own nonzero oriented differences (s as side a, -s as side b).
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    a = rng.integers(0, 12, n)
    b = (a + rng.integers(1, 12, n)) % 12
    s = rng.integers(-4, 5, n) / 2.0
    out = _sign_tests(a, b, s).sort("idx")
    for row in out.iter_rows(named=True):
        v = np.r_[s[a == row["idx"]], -s[b == row["idx"]]]
        nz = v[v != 0]
        ranks = stats.rankdata(np.abs(nz))
        _, t = np.unique(np.abs(nz), return_counts=True)
        assert row["sign_n"] == nz.size
        assert row["sign_positive"] == int((nz > 0).sum())
        assert row["wilcoxon_statistic"] == pytest.approx(ranks[nz > 0].sum(), abs=1e-12)
        assert row["tie"] == pytest.approx(((t.astype(float) ** 3 - t).sum()) / 48.0, abs=1e-12)
        assert row["median_s"] == pytest.approx(float(np.median(v)), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_chart_order_of_two_sides_equals_one_sort_by_lab_day_pair(seed):
    # The CUSUM's rows are two halves (original sides, retest sides) of the same pairs; sorting
    # the pairs once by time and the sides by lab must give the order of one sort by
    # (lab, completion date with nulls first, pair id).
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    pair_rank = np.sort(rng.choice(10 * n, n, replace=False))
    days = pl.Series(rng.integers(19_000, 19_030, n)).cast(pl.Date)
    days = days.scatter(np.flatnonzero(rng.random(n) < 0.1), None)
    i1 = rng.integers(0, 20, n)
    i2 = (i1 + rng.integers(1, 20, n)) % 20  # two different labs per pair
    rows = pl.DataFrame({
        "idx": np.r_[i1, i2],
        "completed_on": pl.concat([days, days]),
        "pair_id": np.r_[pair_rank, pair_rank],
        "pair_rank": np.r_[pair_rank, pair_rank],
    })
    fast = rows.gather(_chart_order(rows, two_sides=True))
    by_sort = rows.sort("idx", "completed_on", "pair_id", nulls_last=False)
    assert fast.equals(by_sort)


def test_all_distinct_from_neighbours_when_sorted_and_by_hash_otherwise():
    # sorted ids decide by neighbours; unsorted ones or ones with nulls by hashing
    assert _all_distinct(pl.Series([1, 2, 5, 9]))
    assert not _all_distinct(pl.Series([1, 2, 2, 9]))
    assert not _all_distinct(pl.Series([9, 2, 5, 2]))
    assert _all_distinct(pl.Series([9, 2, 5, 1]))
    assert not _all_distinct(pl.Series([None, 1, None], dtype=pl.Int64))
    assert _all_distinct(pl.Series([3], dtype=pl.Int64))
    assert _all_distinct(pl.Series([], dtype=pl.Int64))


@pytest.mark.parametrize("sorted_ids", [True, False])
def test_lab_chart_from_the_early_order_equals_the_chart_of_the_cusum_rows(sorted_ids):
    # lab_evidence charts from the order found beside the bias fit and the weights gathered in
    # that order; it must equal, to the last bit, lab_cusum over the CUSUM's rows (_cusum_rows)
    # with the limit simulated from those rows' probabilities.
    nat = build_national(NationalConfig(n_pairs=20_000, n_labs=300, n_categories=30, n_items=200, seed=3))
    pol = Policy()
    pairs = score_pairs(nat.pairs.lazy(), pol).select(EVIDENCE_INPUT_COLUMNS).collect()
    if not sorted_ids:  # pair ids out of order: the pair rank comes from the ids, not the rows
        pairs = pairs.sample(fraction=1.0, shuffle=True, seed=5)
    stages = _stages(pairs.lazy(), pol, nat.config.as_of)
    assert stages is not None
    rows = _cusum_rows(stages, pol, ids=False)
    h = cusum_limit_of_grid(cusum_grid(rows.get_column("p").to_numpy()), pol.cusum)
    expected = lab_cusum(rows, odds_ratio=pol.cusum.odds_ratio, limit=h)
    chart, limit = _lab_chart(stages, pol, _chart_order_of(stages.df, stages.ix))
    assert limit == h
    assert chart.height > 250
    assert chart.equals(expected)
    assert chart.get_column("cusum_signal_on").null_count() < chart.height  # some charts signal
