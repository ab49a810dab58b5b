"""Tests of scoring.pairs.score_pairs (DOMAIN.md §3)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from labeval.devtools.bench_scoring import generate_pairs, render, run
from scoring import precision, scores
from scoring.pairs import PAIR_SCORE_SCHEMA, cd_factor, score_pairs
from scoring.policy import PairPolicy, Policy
from scoring.schema import DISCREPANT_OUTCOMES, OUTCOMES, PAIR_INPUT_SCHEMA, empty_pairs

# A plain item: absolute precision sigma_R = 0.2, sigma_r = 0.1, upper limit 10, single results.
# Then CD = 2.8 * sqrt(0.2² - 0.1²·(1 - 1/2 - 1/2)) = 2.8 * 0.2 = 0.56 (ISO 5725-6 §5.3).
BASE = {
    "kind": "quantitative",
    "precision_model": "absolute",
    "repeatability_sd": 0.1,
    "reproducibility_sd": 0.2,
    "upper_limit": 10.0,
    "verdict_1": "pass",
    "verdict_2": "pass",
}


def frame(*rows: dict) -> pl.DataFrame:
    full = []
    for i, r in enumerate(rows):
        row = {k: None for k in PAIR_INPUT_SCHEMA}
        row["pair_id"] = i
        row.update(r)
        full.append(row)
    return pl.DataFrame(full, schema=PAIR_INPUT_SCHEMA)


def score(*rows: dict, policy=None) -> list[dict]:
    return score_pairs(frame(*rows).lazy(), policy).collect().to_dicts()


def one(policy=None, **kw) -> dict:
    return score({**BASE, **kw}, policy=policy)[0]


# ---------------------------------------------------------------- hand-computed outcomes


def test_consistent_pair_all_scores():
    r = one(value_1=5.0, value_2=5.3)
    # hand computation: d = 5.0 - 5.3 = -0.3; level = 5.15; d_rel = -0.3/5.15 = -0.0582524;
    # s = -0.3 / (sqrt(2)*0.2) = -1.0606602; CD = 0.56 > |d| -> consistent.
    assert r["level"] == pytest.approx(5.15)
    assert r["sigma_R_at"] == pytest.approx(0.2) and r["sigma_r_at"] == pytest.approx(0.1)
    assert r["d"] == pytest.approx(-0.3)
    assert r["d_rel"] == pytest.approx(-0.0582524, rel=1e-6)
    assert r["s"] == pytest.approx(-1.0606602, rel=1e-7)
    assert r["cd"] == pytest.approx(0.56)
    assert r["exceeds_cd"] is False
    assert r["outcome"] == "consistent" and r["discrepant"] is False
    assert r["reversal"] is False
    # no U on either side -> no En / zeta / dist_u
    assert r["en"] is None and r["zeta"] is None and r["en_signal"] is None
    assert r["dist_u_1"] is None and r["dist_u_2"] is None
    # dist to the upper limit 10: (10-5)/0.2 = 25, (10-5.3)/0.2 = 23.5 sigma_R
    assert r["dist_sigma_1"] == pytest.approx(25.0)
    assert r["dist_sigma_2"] == pytest.approx(23.5)
    # level 5.15 is 24.25 sigma_R from the limit: 2·Phi(24.25)(1-Phi(24.25)) ~ 1e-130
    assert r["p_disagree"] == pytest.approx(0.0, abs=1e-100)
    # no arbitration
    assert r["s_13"] is None and r["outcome_13"] is None and r["arbiter_sides_with"] is None


def test_discrepant_pair():
    # hand computation: |d| = |5.0 - 5.7| = 0.7 > CD 0.56, same verdicts -> discrepant.
    r = one(value_1=5.0, value_2=5.7)
    assert r["d"] == pytest.approx(-0.7)
    assert r["exceeds_cd"] is True
    assert r["outcome"] == "discrepant" and r["discrepant"] is True


def test_reversal_within_uncertainty_all_scores():
    r = one(
        value_1=9.8, value_2=10.3, verdict_2="fail",
        expanded_uncertainty_1=0.5, expanded_uncertainty_2=0.4,
    )
    # hand computation (k defaults to 2): distances to limit 10: 0.2 <= U1 0.5 and |-0.3| <= U2
    # 0.4; |d| = 0.5 <= CD 0.56 -> the verdict difference is within the uncertainty.
    assert r["outcome"] == "reversal_within_uncertainty"
    assert r["discrepant"] is False and r["reversal"] is True
    # En = -0.5 / sqrt(0.5² + 0.4²) = -0.5/0.6403124 = -0.7808688
    assert r["en"] == pytest.approx(-0.7808688, rel=1e-7)
    assert r["en_signal"] is False
    # zeta = -0.5 / sqrt(0.25² + 0.2²) = -0.5/0.3201562 = -1.5617376
    assert r["zeta"] == pytest.approx(-1.5617376, rel=1e-7)
    # dist in sigma_R: 0.2/0.2 = 1, -0.3/0.2 = -1.5; in U: 0.2/0.5 = 0.4, -0.3/0.4 = -0.75
    assert r["dist_sigma_1"] == pytest.approx(1.0)
    assert r["dist_sigma_2"] == pytest.approx(-1.5)
    assert r["dist_u_1"] == pytest.approx(0.4)
    assert r["dist_u_2"] == pytest.approx(-0.75)
    # level 10.05 -> delta = 0.05/0.2 = 0.25; Phi(0.25) = 0.5987063;
    # 2·0.5987063·0.4012937 = 0.4805141
    assert r["p_disagree"] == pytest.approx(0.4805141, rel=1e-6)


def test_reversal_far_from_limit():
    # hand computation: x1 = 9.0 is 1.0 from the limit > U1 0.5 -> not explained -> reversal.
    r = one(
        value_1=9.0, value_2=10.3, verdict_2="fail",
        expanded_uncertainty_1=0.5, expanded_uncertainty_2=0.4,
    )
    assert r["outcome"] == "reversal" and r["discrepant"] is True


def test_reversal_with_d_above_cd_is_not_within_uncertainty():
    # hand computation: both intervals reach the limit (0.4 <= 0.5; 0.35 <= 0.4) but
    # |d| = |9.6 - 10.35| = 0.75 > CD 0.56: DOMAIN.md §3 counts that as evidence -> reversal.
    r = one(
        value_1=9.6, value_2=10.35, verdict_2="fail",
        expanded_uncertainty_1=0.5, expanded_uncertainty_2=0.4,
    )
    assert r["exceeds_cd"] is True
    assert r["outcome"] == "reversal"


def test_reversal_without_u_uses_two_sigma_R():
    # No U: half-width 2·sigma_R = 0.4. hand computation: x1 = 9.7 (0.3 from the limit),
    # x2 = 10.2 (0.2), |d| = 0.5 <= 0.56 -> within; x1 = 9.5 (0.5 > 0.4) -> reversal.
    assert one(value_1=9.7, value_2=10.2, verdict_2="fail")["outcome"] == (
        "reversal_within_uncertainty"
    )
    assert one(value_1=9.5, value_2=10.2, verdict_2="fail")["outcome"] == "reversal"


def test_guard_band_reversal_on_the_same_side_is_within_uncertainty():
    # hand computation (demo pair CAB-04, lower limit 12.5, sigma_R 0.08·13.70 = 1.096):
    # x1 = 14.0552 pass (simple acceptance), x2 = 13.3519 fail under a guard band although it
    # conforms; x1's interval 14.0552 ± 1.4275 does not reach 12.5, but both numbers are above
    # the limit and |d| = 0.703 <= CD = 2.8·sigma_R = 2.8·1.09628 = 3.0696 (single results):
    # the verdicts differ by the decision rule only.
    r = one(
        precision_model="relative", repeatability_sd=0.04, reproducibility_sd=0.08,
        lower_limit=12.5, upper_limit=None,
        value_1=14.0552, value_2=13.3519, verdict_1="pass", verdict_2="fail",
        expanded_uncertainty_1=1.42751, expanded_uncertainty_2=1.60251,
        decision_rule_2="guard_band",
    )
    assert abs(r["cd"] - 3.0696) < 1e-4
    assert r["outcome"] == "reversal_within_uncertainty" and r["discrepant"] is False


def test_reversal_with_no_limits_is_not_explained():
    r = one(value_1=5.0, value_2=5.1, verdict_2="fail", upper_limit=None)
    assert r["dist_sigma_1"] is None and r["p_disagree"] is None
    assert r["outcome"] == "reversal"


def test_verdicts_decide_reversal_not_the_numbers():
    # values on both sides of the limit but equal verdicts (e.g. a guard-band rule): |d| = 0.3
    # <= 0.56 -> consistent; the distances still show it.
    r = one(value_1=9.9, value_2=10.2, verdict_1="fail", verdict_2="fail")
    assert r["reversal"] is False and r["outcome"] == "consistent"
    assert r["dist_sigma_2"] == pytest.approx(-1.0)


def test_two_sided_and_lower_limits():
    # two-sided spec [2, 10]: x = 2.5 is nearest the lower limit: (2.5-2)/0.2 = 2.5 sigma_R;
    # x = 1.5 is outside: (1.5-2)/0.2 = -2.5.
    r = one(lower_limit=2.0, value_1=2.5, value_2=1.5, verdict_2="fail")
    assert r["dist_sigma_1"] == pytest.approx(2.5)
    assert r["dist_sigma_2"] == pytest.approx(-2.5)
    # lower limit only (minimum content 2): x = 7 -> +25 sigma_R
    r = one(lower_limit=2.0, upper_limit=None, value_1=7.0, value_2=7.0)
    assert r["dist_sigma_1"] == pytest.approx(25.0)


# ---------------------------------------------------------------- censored (DOMAIN.md §3)


def test_both_censored_is_consistent():
    r = one(censored_1=True, censor_limit_1=0.5, censored_2=True, censor_limit_2=2.0)
    assert r["outcome"] == "censored_consistent" and r["discrepant"] is False
    # nothing numeric: no level, no d, no s
    assert r["level"] is None and r["d"] is None and r["s"] is None


def test_censored_vs_value_within_cd():
    # "<0.5" vs 0.9: CD (absolute) = 0.56; 0.9 <= 0.5 + 0.56 = 1.06 -> consistent.
    r = one(censored_1=True, censor_limit_1=0.5, value_2=0.9)
    assert r["outcome"] == "censored_consistent"
    assert r["level"] == pytest.approx(0.9)  # the numeric side
    assert r["d"] is None  # "<0.5" is never turned into a number
    # "<0.5" vs 1.2: 1.2 > 1.06 -> censored_discrepant
    r = one(censored_1=True, censor_limit_1=0.5, value_2=1.2)
    assert r["outcome"] == "censored_discrepant" and r["discrepant"] is True
    # the censored side may be the retest: "<0.5" on side 2 vs 1.2 on side 1
    r = one(censored_2=True, censor_limit_2=0.5, value_1=1.2)
    assert r["outcome"] == "censored_discrepant"


def test_censored_cd_is_taken_at_the_numeric_value():
    # relative precision, sigma_R = 0.2·level: "<1.0" vs x2
    # x2 = 2.0: sigma_R = 0.4, CD = 1.12, 2.0 <= 2.12 -> consistent
    # x2 = 3.0: sigma_R = 0.6, CD = 1.68, 3.0 > 2.68 -> discrepant
    rel = {"precision_model": "relative", "reproducibility_sd": 0.2, "repeatability_sd": 0.1}
    r = one(**rel, censored_1=True, censor_limit_1=1.0, value_2=2.0)
    assert r["cd"] == pytest.approx(1.12)
    assert r["outcome"] == "censored_consistent"
    r = one(**rel, censored_1=True, censor_limit_1=1.0, value_2=3.0)
    assert r["cd"] == pytest.approx(1.68)
    assert r["outcome"] == "censored_discrepant"


def test_censored_vs_value_beyond_limit_is_reversal():
    # "<0.5" conforms (limit 10); 12 is beyond the limit -> reversal, by verdicts ...
    r = one(censored_1=True, censor_limit_1=0.5, value_2=12.0, verdict_2="fail")
    assert r["outcome"] == "reversal" and r["reversal"] is True
    # ... and by position when the verdicts are missing
    r = one(censored_1=True, censor_limit_1=0.5, value_2=12.0, verdict_1=None, verdict_2=None)
    assert r["outcome"] == "reversal" and r["reversal"] is False
    # minimum-content item (lower limit 1): "<0.5" is nonconforming, 1.5 conforms -> reversal
    r = one(
        upper_limit=None, lower_limit=1.0, censored_1=True, censor_limit_1=0.5, value_2=1.5,
        verdict_1=None, verdict_2=None,
    )
    assert r["outcome"] == "reversal"


def test_censored_limit_falls_back_to_lod():
    # censor_limit null, item LOD 0.5: 1.2 > 0.5 + 0.56 -> discrepant (same as with "<0.5")
    r = one(censored_1=True, lod=0.5, value_2=1.2)
    assert r["outcome"] == "censored_discrepant"


def test_not_detected_without_any_limit_compares_verdicts_only():
    # ND, no censor_limit, no LOD: no number to compare -> consistent unless the verdicts differ
    r = one(censored_1=True, value_2=8.0)
    assert r["outcome"] == "censored_consistent"
    r = one(censored_1=True, value_2=8.0, verdict_2="fail")
    assert r["outcome"] == "reversal"


# ---------------------------------------------------------------- qualitative


def test_qualitative_items_compare_verdicts_only():
    q = {"kind": "qualitative", "precision_model": None, "upper_limit": None}
    rows = score(
        {**BASE, **q},
        {**BASE, **q, "verdict_2": "fail"},
        {**BASE, **q, "verdict_2": None},
        # numbers on a qualitative item are ignored
        {**BASE, **q, "value_1": 1.0, "value_2": 9.0},
    )
    assert [r["outcome"] for r in rows] == [
        "qualitative_agree", "qualitative_reversal", None, "qualitative_agree",
    ]
    assert [r["discrepant"] for r in rows] == [False, True, None, False]
    assert all(r["level"] is None and r["d"] is None for r in rows)


# ---------------------------------------------------------------- En, zeta, k


@pytest.mark.parametrize(
    ("boundary", "signal"), [("iso", True), ("inclusive", False)]
)
def test_en_exactly_one_under_both_conventions(boundary, signal):
    # hand computation: d = 3 - 2 = 1; U1 = 0.9 at k = 3 -> 0.6 at k = 2; U2 = 0.8 (k = 2);
    # En = 1 / sqrt(0.36 + 0.64) = 1.0 exactly. ISO 13528:2022 9.7.2: |En| >= 1 is a signal.
    pol = Policy(pairs=PairPolicy(en_boundary=boundary))
    r = one(
        policy=pol, value_1=3.0, value_2=2.0,
        expanded_uncertainty_1=0.9, coverage_k_1=3.0,
        expanded_uncertainty_2=0.8, coverage_k_2=2.0,
    )
    assert r["en"] == 1.0
    assert r["en_signal"] is signal
    # zeta = 1 / sqrt(0.3² + 0.4²) = 2.0
    assert r["zeta"] == pytest.approx(2.0)
    # a bare PairPolicy is accepted too
    r2 = one(
        policy=PairPolicy(en_boundary=boundary), value_1=3.0, value_2=2.0,
        expanded_uncertainty_1=0.9, coverage_k_1=3.0, expanded_uncertainty_2=0.8,
    )
    assert r2["en_signal"] is signal


def test_en_needs_both_uncertainties_and_default_k_applies():
    assert one(value_1=3.0, value_2=2.0, expanded_uncertainty_1=0.6)["en"] is None
    # default_coverage_k = 4 (policy): u = 0.8/4 = 0.2 both sides; zeta = 1/sqrt(0.08) = 3.5355339
    # and U at k = 2 is 0.4: En = 1/sqrt(0.32) = 1.7677670
    r = one(
        policy=PairPolicy(default_coverage_k=4.0), value_1=3.0, value_2=2.0,
        expanded_uncertainty_1=0.8, expanded_uncertainty_2=0.8,
    )
    assert r["zeta"] == pytest.approx(3.5355339, rel=1e-7)
    assert r["en"] == pytest.approx(1.7677670, rel=1e-7)


# ---------------------------------------------------------------- CD and replicates


def test_replicates_shrink_cd():
    # ISO 5725-6 §5.3, sigma_R = 0.2, sigma_r = 0.1:
    # n1 = n2 = 1: 2.8·0.2 = 0.56
    # n1 = n2 = 2: 2.8·sqrt(0.04 - 0.01·(1 - 1/4 - 1/4)) = 2.8·sqrt(0.035) = 0.5238320
    # n1 = n2 = 4: 2.8·sqrt(0.04 - 0.01·0.75) = 2.8·sqrt(0.0325) = 0.5047772
    # null replicates count as one result.
    rows = score(
        {**BASE, "value_1": 5.0, "value_2": 5.54},
        {**BASE, "value_1": 5.0, "value_2": 5.54, "replicates_1": 2, "replicates_2": 2},
        {**BASE, "value_1": 5.0, "value_2": 5.54, "replicates_1": 4, "replicates_2": 4},
        {**BASE, "value_1": 5.0, "value_2": 5.54, "replicates_1": 1, "replicates_2": None},
    )
    assert [r["cd"] for r in rows] == pytest.approx([0.56, 0.5238320, 0.5047772, 0.56], rel=1e-6)
    # |d| = 0.54: within the single-result CD, beyond the CD of means of 2
    assert [r["outcome"] for r in rows] == ["consistent", "discrepant", "discrepant", "consistent"]


def test_cd_probability_policy():
    # p = 0.99: f = Phi^-1(0.995)·sqrt(2) = 2.5758293·1.4142136 = 3.6427727; CD = 0.7285545
    r = one(policy=PairPolicy(cd_probability=0.99), value_1=5.0, value_2=5.7)
    assert r["cd"] == pytest.approx(0.7285545, rel=1e-6)
    assert r["outcome"] == "consistent"
    assert cd_factor(0.95) == 2.8


def test_sigma_r_above_sigma_R_is_capped():
    # sigma_r 0.3 > sigma_R 0.2: capped at 0.2 (ISO 5725-2, between-lab variance >= 0);
    # n = 2, 2: CD = 2.8·sqrt(0.04 - 0.04·0.5) = 2.8·0.1414214 = 0.3959798
    r = one(repeatability_sd=0.3, value_1=5.0, value_2=5.1, replicates_1=2, replicates_2=2)
    assert r["sigma_r_at"] == pytest.approx(0.2)
    assert r["cd"] == pytest.approx(0.3959798, rel=1e-6)


def test_precision_models():
    # relative: sigma_R = 0.1·|4| = 0.4, sigma_r = 0.05·4 = 0.2
    r = one(precision_model="relative", reproducibility_sd=0.1, repeatability_sd=0.05,
            value_1=3.9, value_2=4.1)
    assert r["sigma_R_at"] == pytest.approx(0.4) and r["sigma_r_at"] == pytest.approx(0.2)
    # horwitz at 1 mg/kg (scale 1e-6): 0.02·(1e-6)^0.8495 / 1e-6 = 0.1599669 mg/kg, the classic
    # 16 % RSD at 1 ppm; sigma_r = sigma_R / 2.
    r = one(precision_model="horwitz", reproducibility_sd=None, repeatability_sd=None,
            horwitz_scale=1e-6, value_1=0.9, value_2=1.1)
    assert r["sigma_R_at"] == pytest.approx(0.1599669, rel=1e-6)
    assert r["sigma_r_at"] == pytest.approx(0.1599669 / 2, rel=1e-6)
    # unknown model or Horwitz without a scale: no precision, no CD, no outcome
    bads = ({"precision_model": "bogus"}, {"precision_model": "horwitz", "horwitz_scale": None})
    for bad in bads:
        r = one(**bad, value_1=5.0, value_2=5.1)
        assert r["sigma_R_at"] is None and r["cd"] is None and r["outcome"] is None
        assert r["d"] == pytest.approx(-0.1)


@pytest.mark.parametrize(
    ("delta", "expected"),
    # DOMAIN.md §3: 0.50 at 0, 0.27 at 1, 0.045 at 2, 0.003 at 3 (2·Phi(δ)(1-Phi(δ)))
    [(0.0, 0.5), (1.0, 0.26696753), (2.0, 0.04446513), (3.0, 0.00269615)],
)
def test_p_disagree_table(delta, expected):
    # sigma_R = 0.2, both results at 10 - 0.2·δ; on either side of the limit the same |δ|
    for sign in (1, -1):
        x = 10.0 - sign * 0.2 * delta
        r = one(value_1=x, value_2=x)
        assert r["p_disagree"] == pytest.approx(expected, rel=1e-5, abs=1e-12)


# ---------------------------------------------------------------- arbitration


def test_arbitration_sides_with():
    arb = {**BASE, "value_1": 5.0, "value_2": 5.7, "verdict_3": "pass", "lab_3": "ARB"}
    rows = score(
        {**arb, "value_3": 5.1},  # 13: d -0.1 ok; 23: d 0.6 > 0.56 -> original
        {**arb, "value_3": 5.4},  # 13: -0.4 ok;  23: 0.3 ok -> both
        {**arb, "value_3": 6.5},  # 13: -1.5;     23: -0.8 -> neither
        {**arb, "value_3": 5.6},  # 13: -0.6;     23: 0.1 ok -> retest
        {**arb, "value_3": None, "verdict_3": None, "lab_3": None},  # no arbitration
    )
    assert [r["arbiter_sides_with"] for r in rows] == [
        "original", "both", "neither", "retest", None,
    ]
    # s_13 = (5.0 - 5.1)/(sqrt 2·0.2) = -0.3535534; s_23 = 0.6/0.2828427 = 2.1213203
    assert rows[0]["s_13"] == pytest.approx(-0.3535534, rel=1e-6)
    assert rows[0]["s_23"] == pytest.approx(2.1213203, rel=1e-6)
    assert [r["outcome_13"] for r in rows] == [
        "consistent", "consistent", "discrepant", "discrepant", None,
    ]
    assert [r["outcome_23"] for r in rows] == [
        "discrepant", "consistent", "discrepant", "consistent", None,
    ]
    # the original/retest outcome is unaffected by the arbiter
    assert {r["outcome"] for r in rows} == {"discrepant"}


def test_arbitration_with_censored_and_reversal():
    # arbiter "<0.5": original 0.9 (<= 1.06, consistent), retest 12 fail (reversal) -> original
    r = score({**BASE, "value_1": 0.9, "value_2": 12.0, "verdict_2": "fail",
               "censored_3": True, "censor_limit_3": 0.5, "verdict_3": "pass"})[0]
    assert (r["outcome_13"], r["outcome_23"]) == ("censored_consistent", "reversal")
    assert r["arbiter_sides_with"] == "original"
    assert r["s_13"] is None


# ---------------------------------------------------------------- degenerate input


def test_empty_input_has_every_output_column():
    out = score_pairs(empty_pairs().lazy(), Policy()).collect()
    assert out.height == 0
    assert dict(out.schema) == {**PAIR_INPUT_SCHEMA, **PAIR_SCORE_SCHEMA}


def test_result_is_lazy_and_keeps_input():
    lf = score_pairs(frame({**BASE, "value_1": 1.0, "value_2": 1.0}).lazy())
    assert isinstance(lf, pl.LazyFrame)
    assert list(lf.collect_schema()) == [*PAIR_INPUT_SCHEMA, *PAIR_SCORE_SCHEMA]


def test_nulls_do_not_crash():
    rows = score(
        {},  # everything null
        {"kind": "quantitative", "value_1": 1.0},  # one value, no precision
        {**BASE, "value_1": 1.0, "value_2": None},  # missing retest value
        {**BASE, "value_1": 1.0, "value_2": 1.0, "verdict_1": None, "verdict_2": "bogus"},
        {**BASE, "value_1": 1.0, "value_2": 2.0, "reproducibility_sd": None},
        {**BASE, "value_1": 1.0, "value_2": 1.2, "expanded_uncertainty_1": 0.0,
         "expanded_uncertainty_2": -1.0, "coverage_k_1": 0.0, "replicates_1": 0},
        {**BASE, "value_1": 0.0, "value_2": 0.0, "reproducibility_sd": 0.0},
    )
    # sigma_R = 0 (last row): CD = 0 and d = 0 -> consistent, but s is undefined (null)
    assert [r["outcome"] for r in rows] == [
        None, None, None, "consistent", None, "consistent", "consistent",
    ]
    assert all((r["discrepant"] is None) == (r["outcome"] is None) for r in rows)
    # missing value: level is the value present, but no difference
    assert rows[2]["level"] == 1.0 and rows[2]["d"] is None
    # non-positive U is "no U"; replicates 0 counts as 1 -> CD 0.56
    assert rows[5]["en"] is None and rows[5]["cd"] == pytest.approx(0.56)
    # level 0: d_rel null; sigma_R 0: s and dist_sigma null, CD 0
    assert rows[6]["cd"] == 0.0
    assert rows[6]["d_rel"] is None and rows[6]["s"] is None and rows[6]["dist_sigma_1"] is None


# ---------------------------------------------------------------- invariants (hypothesis)


def _swap(df: pl.DataFrame) -> pl.DataFrame:
    ren = {}
    for name in PAIR_INPUT_SCHEMA:
        if name.endswith("_1"):
            ren[name] = name[:-2] + "_2"
        elif name.endswith("_2"):
            ren[name] = name[:-2] + "_1"
    return df.rename(ren).select(list(PAIR_INPUT_SCHEMA))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_invariants_under_side_swap(seed):
    df = generate_pairs(500, seed)
    a = score_pairs(df.lazy()).collect()
    b = score_pairs(_swap(df).lazy()).collect()
    # antisymmetric scores change sign; symmetric ones do not change
    for col in ("d", "s", "en", "zeta", "d_rel"):
        np.testing.assert_allclose(
            a[col].to_numpy(), -b[col].to_numpy(), rtol=1e-12, equal_nan=True
        )
    for col in ("level", "sigma_R_at", "cd", "p_disagree"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-12, equal_nan=True)
    for col in ("outcome", "reversal", "discrepant", "exceeds_cd", "en_signal"):
        assert a[col].to_list() == b[col].to_list()
    np.testing.assert_allclose(
        a["dist_sigma_1"].to_numpy(), b["dist_sigma_2"].to_numpy(), equal_nan=True
    )
    assert a["exceeds_cd"].to_list() == (a["d"].abs() > a["cd"]).to_list()
    swapped = {"original": "retest", "retest": "original"}
    assert a["arbiter_sides_with"].to_list() == [
        swapped.get(v, v) for v in b["arbiter_sides_with"].to_list()
    ]
    # ranges and consistency
    assert set(a["outcome"].drop_nulls().unique()) <= set(OUTCOMES)
    assert a["discrepant"].to_list() == [
        None if o is None else o in DISCREPANT_OUTCOMES for o in a["outcome"].to_list()
    ]
    p = a["p_disagree"].drop_nulls()
    assert p.min() >= 0.0 and p.max() <= 0.5
    assert (a["cd"].drop_nulls() >= 0).all()


# ---------------------------------------------------------------- 100k agreement test


def _ref_outcome(qual, xa, xb, ca, cb, La, Lb, va, vb, lo, up, Ua, Ub, sR, cd):
    """Scalar reference of the documented outcome rules (NaN = missing, None = no verdict)."""
    isn = math.isnan
    def dist(x):
        cands = [x - lo] if not isn(lo) else []
        cands += [up - x] if not isn(up) else []
        return min(cands) if cands else math.nan

    vrev = va is not None and vb is not None and va != vb
    if qual:
        if va is None or vb is None:
            return None
        return "qualitative_reversal" if va != vb else "qualitative_agree"
    if ca and cb:
        return "censored_consistent"
    if (ca and not isn(xb)) or (cb and not isn(xa)):
        L, x = (La, xb) if ca else (Lb, xa)
        dx = dist(x)
        if not isn(L):
            L_in = isn(lo) and (isn(up) or L <= up)
            L_out = not isn(lo) and L <= lo
        else:
            L_in = L_out = False
        if vrev or (not isn(dx) and ((dx < 0 and L_in) or (dx >= 0 and L_out))):
            return "reversal"
        if isn(L) or x <= L:
            return "censored_consistent"
        if isn(cd):
            return None
        return "censored_consistent" if x <= L + cd else "censored_discrepant"
    if isn(xa) or isn(xb):
        return None
    d = xa - xb
    if vrev:
        wa = Ua if not isn(Ua) else 2 * sR
        wb = Ub if not isn(Ub) else 2 * sR
        da, db = dist(xa), dist(xb)
        near = (
            not any(isn(v) for v in (da, db, wa, wb))
            and ((abs(da) <= wa and abs(db) <= wb) or ((da >= 0) == (db >= 0)))
            and (isn(cd) or abs(d) <= cd)
        )
        return "reversal_within_uncertainty" if near else "reversal"
    if isn(cd):
        return None
    return "discrepant" if abs(d) > cd else "consistent"


def _col(df, name):
    return df[name].cast(pl.Float64).to_numpy()


def _reference(df: pl.DataFrame, pol: PairPolicy) -> dict:
    """numpy reference built on scoring.precision and scoring.scores."""
    n = df.height
    qual = (df["kind"] == "qualitative").fill_null(False).to_numpy()
    model = df["precision_model"].to_numpy().astype(object)
    valid_model = np.isin(model, ["absolute", "relative", "horwitz"])
    scale = _col(df, "horwitz_scale")
    valid_model &= ~((model == "horwitz") & ~(scale > 0))
    item = {
        "precision_model": np.where(valid_model, model, "absolute"),
        "reproducibility_sd": np.where(valid_model, _col(df, "reproducibility_sd"), np.nan),
        "repeatability_sd": np.where(valid_model, _col(df, "repeatability_sd"), np.nan),
        "horwitz_scale": scale,
    }
    lo, up = _col(df, "lower_limit"), _col(df, "upper_limit")
    side = {}
    for j in "123":
        cens = df[f"censored_{j}"].fill_null(False).to_numpy() & ~qual
        x = np.where(cens | qual, np.nan, _col(df, f"value_{j}"))
        L = np.where(cens, np.where(np.isnan(_col(df, f"censor_limit_{j}")), _col(df, "lod"),
                                    _col(df, f"censor_limit_{j}")), np.nan)
        k = _col(df, f"coverage_k_{j}")
        k = np.where(k > 0, k, pol.default_coverage_k)
        U = _col(df, f"expanded_uncertainty_{j}")
        u = np.where(U > 0, U / k, np.nan)
        nrep = _col(df, f"replicates_{j}")
        nrep = np.where(nrep >= 1, nrep, 1.0)
        v = df[f"verdict_{j}"].to_list()
        v = [s if s in ("pass", "fail") else None for s in v]
        side[j] = {"x": x, "c": cens, "L": L, "u": u, "U2": 2 * u, "n": nrep, "v": v}

    def pair(a, b):
        A, B = side[a], side[b]
        both = ~np.isnan(A["x"]) & ~np.isnan(B["x"])
        level = np.where(both, (A["x"] + B["x"]) / 2, np.where(np.isnan(A["x"]), B["x"], A["x"]))
        sR = np.asarray(precision.reproducibility_at(level, item), dtype=float)
        sr_raw = np.asarray(precision.repeatability_at(level, item), dtype=float)
        sr_raw = np.where(np.isnan(sr_raw) & ~np.isnan(sR), 0.0, sr_raw)
        sr = np.minimum(sr_raw, sR)
        cd = np.asarray(
            precision.critical_difference(sR, sr, A["n"], B["n"], prob=pol.cd_probability)
        )
        d = A["x"] - B["x"]
        s = np.where(sR > 0, d / (math.sqrt(2) * np.where(sR > 0, sR, 1.0)), np.nan)
        out = [
            _ref_outcome(qual[i], A["x"][i], B["x"][i], A["c"][i], B["c"][i], A["L"][i],
                         B["L"][i], A["v"][i], B["v"][i], lo[i], up[i], A["U2"][i],
                         B["U2"][i], sR[i], cd[i])
            for i in range(n)
        ]
        return {"level": level, "sR": sR, "sr": sr, "cd": cd, "d": d, "s": s, "outcome": out}

    p12, p13, p23 = pair("1", "2"), pair("1", "3"), pair("2", "3")
    S1, S2 = side["1"], side["2"]
    ref = {
        "level": p12["level"], "sigma_R_at": p12["sR"], "sigma_r_at": p12["sr"], "d": p12["d"],
        "s": p12["s"], "cd": p12["cd"], "outcome": p12["outcome"],
        "s_13": p13["s"], "s_23": p23["s"], "outcome_13": p13["outcome"],
        "outcome_23": p23["outcome"],
        "en": np.asarray(scores.en(S1["x"], S2["x"], S1["U2"], S2["U2"])),
        "zeta": np.asarray(scores.zeta(S1["x"], S2["x"], S1["u"], S2["u"])),
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        sR_pos = np.where(p12["sR"] > 0, p12["sR"], np.nan)
        for j in "12":
            x = side[j]["x"]
            dx = np.minimum(
                np.where(np.isnan(lo), np.inf, x - lo), np.where(np.isnan(up), np.inf, up - x)
            )
            dx = np.where((np.isnan(lo) & np.isnan(up)) | np.isnan(x), np.nan, dx)
            ref[f"dist_sigma_{j}"] = dx / sR_pos
            ref[f"dist_u_{j}"] = dx / side[j]["U2"]
        ref["d_rel"] = p12["d"] / np.where(p12["level"] != 0, p12["level"], np.nan)
        dl = np.minimum(np.where(np.isnan(lo), np.inf, p12["level"] - lo),
                     np.where(np.isnan(up), np.inf, up - p12["level"]))
        dl = np.where(np.isnan(lo) & np.isnan(up), np.nan, dl)
        delta = np.abs(dl) / np.where(p12["sR"] > 0, p12["sR"], np.nan)
        ref["p_disagree"] = 2 * norm.cdf(delta) * norm.sf(delta)
    bad = set(DISCREPANT_OUTCOMES)
    sides = []
    for o13, o23 in zip(p13["outcome"], p23["outcome"], strict=True):
        if o13 is None or o23 is None:
            sides.append(None)
        else:
            ok = (o13 not in bad, o23 not in bad)
            sides.append({(True, True): "both", (True, False): "original",
                          (False, True): "retest", (False, False): "neither"}[ok])
    ref["arbiter_sides_with"] = sides
    ref["reversal"] = [a is not None and b is not None and a != b
                       for a, b in zip(S1["v"], S2["v"], strict=True)]
    ref["discrepant"] = [None if o is None else o in bad for o in p12["outcome"]]
    return ref


def _perturb(df: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Knock holes in generated data: missing values, verdicts, precision, odd U/k/n."""
    rng = np.random.default_rng(seed)
    n = df.height

    def holes(col, p, value=None):
        mask = pl.Series(rng.random(n) < p)
        new = pl.lit(value, dtype=df.schema[col])
        return pl.when(mask).then(new).otherwise(pl.col(col)).alias(col)

    return df.with_columns(
        holes("value_1", 0.02), holes("value_2", 0.02), holes("verdict_1", 0.03),
        holes("verdict_2", 0.03), holes("verdict_3", 0.03), holes("reproducibility_sd", 0.01),
        holes("repeatability_sd", 0.03), holes("precision_model", 0.01, "bogus"),
        holes("upper_limit", 0.02), holes("coverage_k_1", 0.02, 0.0),
        holes("expanded_uncertainty_2", 0.02, 0.0), holes("replicates_1", 0.02, 0),
        holes("kind", 0.01),
    ).with_columns(
        holes("verdict_2", 0.01, "unknown"),
        holes("repeatability_sd", 0.02, 1e6),  # sigma_r > sigma_R -> capped
    )


@pytest.mark.parametrize(
    "pol", [PairPolicy(), PairPolicy(cd_probability=0.9, default_coverage_k=3.0)]
)
def test_agrees_with_scalar_reference_on_100k_pairs(pol):
    df = _perturb(generate_pairs(100_000, seed=20240601), seed=7)
    # the generated data covers every branch
    models = set(df["precision_model"].drop_nulls().unique())
    assert models >= {"absolute", "relative", "horwitz", "bogus"}
    out = score_pairs(df.lazy(), Policy(pairs=pol)).collect()
    ref = _reference(df, pol)
    for col in ("level", "sigma_R_at", "sigma_r_at", "d", "d_rel", "s", "cd", "en", "zeta",
                "s_13", "s_23", "p_disagree", "dist_sigma_1", "dist_sigma_2", "dist_u_1",
                "dist_u_2"):
        got = out[col].cast(pl.Float64).to_numpy()
        np.testing.assert_allclose(
            got, ref[col], rtol=1e-9, atol=1e-300, equal_nan=True, err_msg=col
        )
    for col in ("outcome", "outcome_13", "outcome_23", "arbiter_sides_with", "reversal",
                "discrepant"):
        got = out[col].to_list()
        mism = [i for i, (g, r) in enumerate(zip(got, ref[col], strict=True)) if g != r]
        assert not mism, (col, mism[:5], [(got[i], ref[col][i]) for i in mism[:5]])
    counts = out["outcome"].value_counts()
    # every outcome occurs in the 100k sample, and enough arbitration rows
    assert set(counts["outcome"].drop_nulls()) == set(OUTCOMES)
    assert out["outcome"].null_count() > 0
    assert out["arbiter_sides_with"].drop_nulls().n_unique() == 4
    en_ok = ~np.isnan(ref["en"])
    signal = out["en_signal"].to_numpy()[en_ok]
    assert list(signal) == list(np.abs(ref["en"][en_ok]) >= 1.0)


# ---------------------------------------------------------------- benchmark smoke


def test_bench_runs_small():
    res = run(pairs=2_000, seed=1, repeats=1)
    assert res["pairs"] == 2_000
    assert res["seconds"] > 0 and res["floor_seconds"] > 0
    assert res["ratio"] == pytest.approx(res["seconds"] / res["floor_seconds"])
    assert "2,000 pairs" in render(res)


def test_optional_columns_may_be_left_out():
    # Only the item, the two values and their verdicts: side 3, uncertainties, replicates and
    # dates default to null. hand computation as in test_consistent_pair_all_scores: d = -0.3,
    # CD = 2.8·0.2 = 0.56 -> consistent.
    frame = pl.DataFrame({
        "pair_id": [1], "kind": ["quantitative"], "precision_model": ["absolute"],
        "repeatability_sd": [0.1], "reproducibility_sd": [0.2], "upper_limit": [10.0],
        "lab_1": ["A"], "value_1": [5.0], "verdict_1": ["pass"],
        "lab_2": ["B"], "value_2": [5.3], "verdict_2": ["pass"],
    })
    r = score_pairs(frame.lazy()).collect().row(0, named=True)
    assert r["d"] == pytest.approx(-0.3) and r["cd"] == pytest.approx(0.56)
    assert r["outcome"] == "consistent" and r["arbiter_sides_with"] is None and r["en"] is None
