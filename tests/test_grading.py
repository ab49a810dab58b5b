"""Grading (scoring.grading) and other indicators (scoring.indicators)."""

from __future__ import annotations

import datetime as dt

import msgspec
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.classes import CLASSES
from scoring.evidence import EVIDENCE_SCHEMA
from scoring.grading import (
    GRADE_SCHEMA,
    PREVIOUS_GRADES_SCHEMA,
    Reason,
    carry_forward,
    grade,
)
from scoring.indicators import (
    AUDIT_FINDINGS_SCHEMA,
    COMPLAINTS_SCHEMA,
    INDICATOR_SCHEMA,
    PT_RESULTS_SCHEMA,
    REPORT_FINDINGS_SCHEMA,
    TIMELINESS_SCHEMA,
    empty_indicators,
    pt_rounds,
    summarise_indicators,
)
from scoring.policy import Policy, policy_hash

POLICY = Policy()
AS_OF = dt.date(2026, 1, 1)
CLEAN = {
    "pairs_compared": 60, "identifiable": True, "outside_peers": False, "eb_rate": 0.03,
    "rate_beyond_peers": 0.0, "bias": 0.1, "bias_beyond_peers": 0.0, "bias_q": 0.8,
    "excess_q": 0.9, "precision_beyond_peers": 0.0, "precision_q": 0.7, "cusum_current": 0.5,
    "cusum_limit": 2.0,
}


def evidence(**labs: dict) -> pl.DataFrame:
    rows = [{"lab_code": code, **{**CLEAN, **vals}} for code, vals in labs.items()]
    return pl.DataFrame(rows).with_columns(
        [pl.lit(None, dtype=t).alias(c) for c, t in EVIDENCE_SCHEMA.items() if c not in rows[0]]
    ).select([pl.col(c).cast(t) for c, t in EVIDENCE_SCHEMA.items()])


def previous(**labs: tuple[str, int]) -> pl.DataFrame:
    return pl.DataFrame(
        [{"lab_code": k, "class": c, "score": None, "consecutive_qualifying": n} for k, (c, n) in labs.items()],
        schema=PREVIOUS_GRADES_SCHEMA,
    )


def one(frame: pl.DataFrame, lab: str) -> dict:
    return frame.filter(pl.col("lab_code") == lab).row(0, named=True)


def effects(row: dict) -> dict[str, str]:
    return {r["rule"]: r["effect"] for r in row["reasons"]}


# --------------------------------------------------------------------------- score and reasons


def test_score_and_class_recomputed_from_reasons():
    # hand computation: rate beyond the peers' funnel 0.05 (q 0.01) -> 400 * 0.05 = 20.00;
    # conservative bias 0.2 σR beyond the peers (q 0.001) -> 20 * 0.2 = 4.00; 2 upheld
    # complaints -> 10.00; score 100 - 34 = 66.00 -> class III (60 <= 66 < 75)
    ind = pl.DataFrame([{"lab_code": "A", "upheld_complaints": 2}]).with_columns(
        [pl.lit(None, dtype=t).alias(c) for c, t in INDICATOR_SCHEMA.items() if c not in ("lab_code", "upheld_complaints")]
    ).select([pl.col(c).cast(t) for c, t in INDICATOR_SCHEMA.items()])
    vals = {"rate_beyond_peers": 0.05, "excess_q": 0.01, "outside_peers": True,
            "bias_beyond_peers": 0.2, "bias_q": 0.001}
    g = grade(evidence(A=vals), ind, None, POLICY)
    a = one(g, "A")
    assert a["score"] == 66.0
    assert (a["class_from_score"], a["candidate_class"], a["class"], a["change"]) == ("III", "III", "III", "new")
    e = effects(a)
    assert e["discrepancy_rate"] == "deduct 20.00 (q 0.01 < 0.05)"
    assert e["bias"] == "deduct 4.00 (q 0.001 < 0.05)"
    assert e["complaints"] == "deduct 10.00"
    assert e["pt_unsatisfactory"] == "no data"
    assert e["class_from_score"] == "class III"
    # the officer's recomputation: base minus every "deduct" equals the score
    deducted = sum(float(r["effect"].split()[1]) for r in a["reasons"] if r["effect"].startswith("deduct"))
    assert deducted == 34.0
    base = next(r["value"] for r in a["reasons"] if r["rule"] == "base")
    assert base - deducted == a["score"]
    assert a["policy_hash"] == policy_hash(POLICY)
    assert g.schema == pl.Schema(GRADE_SCHEMA)


def test_reasons_are_json_serialisable_reason_structs():
    g = grade(evidence(A={}), None, None, POLICY)
    raw = msgspec.json.encode(g.get_column("reasons").to_list())
    decoded = msgspec.json.decode(raw, type=list[list[Reason]])
    assert decoded[0][0] == Reason(rule="evidence", metric="pairs_compared", value=60.0, threshold=30.0, effect="sufficient")


def test_clean_lab_is_class_one_and_eligible():
    a = one(grade(evidence(A={}), None, None, POLICY), "A")
    assert (a["score"], a["class"], a["eligible"], a["selection_weight"]) == (100.0, "I", True, 1.0)


def test_none_and_empty_indicators_agree():
    ev = evidence(A={"eb_rate": 0.08})
    assert grade(ev, None, None, POLICY).equals(grade(ev, empty_indicators(), None, POLICY))


# --------------------------------------------------------------------------- hard caps


@pytest.mark.parametrize(
    ("vals", "rule", "expected"),
    [
        ({"excess_q": 0.01, "rate_beyond_peers": 0.001, "outside_peers": True}, "fdr_excess", "III"),
        # a high rate explained by a bias and precision within the peers' spread
        ({"excess_q": 0.01, "rate_beyond_peers": 0.001, "outside_peers": False}, "fdr_excess", "I"),
        ({"excess_q": 0.05, "rate_beyond_peers": 0.01, "outside_peers": True}, "fdr_excess", "I"),  # q < alpha
        ({"bias_q": 0.001, "bias_beyond_peers": 0.2}, "fdr_bias", "III"),
        ({"bias_q": 0.001, "bias_beyond_peers": 0.0}, "fdr_bias", "I"),  # significant, within peers
        ({"precision_q": 0.001, "precision_beyond_peers": 0.5}, "fdr_precision", "III"),
        ({"cusum_current": 2.5, "cusum_limit": 2.0, "outside_peers": True}, "cusum_signal", "II"),
        ({"cusum_current": 2.0, "cusum_limit": 2.0, "outside_peers": True}, "cusum_signal", "II"),  # >= h
        ({"cusum_current": 2.5, "cusum_limit": 2.0}, "cusum_signal", "I"),  # a normal lab's rate
        ({"shading_q": 0.01, "shading_observed": 5.0, "shading_expected": 0.5}, "data_shading", "III"),
        # fewer observed cases than pattern_min_observed
        ({"shading_q": 0.01, "shading_observed": 2.0, "shading_expected": 0.01}, "data_shading", "I"),
        ({"nd_hiding_q": 0.02, "nd_hiding_observed": 4.0, "nd_hiding_expected": 0.3}, "data_nd_hiding", "III"),
        ({"verdict_contradiction_q": 0.001, "verdict_contradiction_observed": 6.0,
          "verdict_contradiction_expected": 0.2}, "data_verdict_contradiction", "III"),
    ],
)
def test_statistical_caps(vals, rule, expected):
    a = one(grade(evidence(A=vals), None, None, POLICY), "A")
    assert a["score"] >= 90.0
    assert a["class"] == expected
    assert effects(a)[rule].startswith("cap" if expected != "I" else "no cap")


def test_falsified_report_caps_to_four_even_without_evidence():
    findings = pl.LazyFrame(
        [{"lab_code": "A", "finding_code": "F1", "decided_on": dt.date(2025, 3, 1), "kind": "falsified"}],
        schema=REPORT_FINDINGS_SCHEMA,
    )
    ind = summarise_indicators(policy=POLICY, as_of=AS_OF, report_findings=findings)
    for ev in (evidence(A={}), evidence(A={"pairs_compared": 3})):
        a = one(grade(ev, ind, previous(A=("I", 0)), POLICY), "A")
        assert (a["class"], a["change"], a["eligible"]) == ("IV", "down", False)
        assert effects(a)["falsified_report"] == "cap IV"


def test_statistical_caps_need_minimum_evidence():
    a = one(grade(evidence(A={"pairs_compared": 29, "excess_q": 1e-9, "eb_rate": 0.5}), None, None, POLICY), "A")
    assert a["class"] == POLICY.grading.new_lab_class == "II"
    assert a["sufficient_evidence"] is False
    assert effects(a)["fdr_excess"] == "skipped"
    assert effects(a)["discrepancy_rate"] == "skipped"
    assert effects(a)["insufficient_evidence"] == "default II"


# --------------------------------------------------------------------------- hold and hysteresis


def test_insufficient_evidence_holds_previous_class():
    g = grade(evidence(A={"pairs_compared": 5}), None, previous(A=("III", 1), B=("I", 0)), POLICY)
    a, b = one(g, "A"), one(g, "B")
    assert (a["class"], a["change"], a["consecutive_qualifying"]) == ("III", "held", 0)
    assert effects(a)["insufficient_evidence"] == "hold III"
    # B has no evidence at all this run
    assert (b["class"], b["pairs_compared"], b["change"]) == ("I", 0, "held")


def test_hysteresis_one_class_up_after_consecutive_runs():
    prev = previous(A=("III", 0))
    classes = []
    for _ in range(5):
        g = grade(evidence(A={}), None, prev, POLICY)
        a = one(g, "A")
        classes.append((a["class"], a["change"], a["consecutive_qualifying"]))
        prev = carry_forward(g)
    # upgrade_after_runs = 2, max_classes_up = 1: III -> (hold) -> II -> (hold) -> I -> I
    assert classes == [
        ("III", "held", 1), ("II", "up", 0), ("II", "held", 1), ("I", "up", 0), ("I", "held", 0)
    ]


def test_hysteresis_counter_resets_on_non_qualifying_run_and_downgrade_is_immediate():
    g1 = grade(evidence(A={}), None, previous(A=("III", 1)), POLICY)  # 2nd qualifying -> up
    assert one(g1, "A")["class"] == "II"
    # rate 0.1 beyond the peers, significant, outside them: 400 * 0.1 = 40 -> score 60 -> III
    bad = {"rate_beyond_peers": 0.1, "excess_q": 0.2, "outside_peers": True}
    g2 = grade(evidence(A={**bad, "excess_q": 0.01}), None, previous(A=("III", 1)), POLICY)
    a = one(g2, "A")  # III: not better than III, counter resets
    assert (a["class"], a["consecutive_qualifying"], a["change"]) == ("III", 0, "held")
    g3 = grade(evidence(A={**bad, "excess_q": 0.001}), None, previous(A=("I", 1)), POLICY)
    assert (one(g3, "A")["class"], one(g3, "A")["change"]) == ("III", "down")


@settings(max_examples=150, deadline=None)
@given(
    eb=st.floats(0.0, 0.5), bias=st.floats(-2, 2), q=st.floats(0.0, 1.0), n=st.integers(0, 100),
    cmax=st.floats(0, 5), prev=st.sampled_from([None, "I", "II", "III", "IV"]), count=st.integers(0, 3),
)
def test_grade_invariants(eb, bias, q, n, cmax, prev, count):
    vals = {"eb_rate": eb, "bias": bias, "bias_q": q, "excess_q": q, "pairs_compared": n, "cusum_current": cmax}
    prev_df = None if prev is None else previous(A=(prev, count))
    a = one(grade(evidence(A=vals), None, prev_df, POLICY), "A")
    labels = list(CLASSES)
    rank = labels.index
    assert 0.0 <= a["score"] <= 100.0
    cut = dict(zip(labels, POLICY.grading.cutoffs))
    assert a["score"] >= cut.get(a["class_from_score"], 0.0)
    for r in a["reasons"]:
        if r["effect"].startswith("cap "):
            assert rank(a["candidate_class"]) >= rank(r["effect"].split()[1])
    if prev is not None:
        # never more than max_classes_up better than the previous class
        assert rank(a["class"]) >= rank(prev) - POLICY.grading.max_classes_up
    if n >= POLICY.grading.min_pairs and (prev is None or rank(a["candidate_class"]) >= rank(prev)):
        assert a["class"] == a["candidate_class"]


# --------------------------------------------------------------------------- indicators


def pt_frame(pattern: str, scheme: str = "S1") -> pl.LazyFrame:
    """One result per round: 'U' -> z = 3.5 (unsatisfactory), 'Q' -> 2.5, 'S' -> 0.5."""
    z = {"U": 3.5, "Q": -2.5, "S": 0.5}
    rows = [
        {"lab_code": "A", "scheme_code": scheme, "round_code": f"R{i}",
         "round_date": dt.date(2024, 1 + i, 1), "item_code": "Pb", "z": z[c]}
        for i, c in enumerate(pattern)
    ]
    return pl.LazyFrame(rows, schema=PT_RESULTS_SCHEMA)


@pytest.mark.parametrize(
    ("pattern", "unsuccessful"),
    [
        ("UU", True),  # 2 consecutive
        ("USU", True),  # 2 of 3
        ("USSU", False),  # 2 of 4, never 2 within 3 rounds
        ("U", False),
        ("SQQS", False),  # questionable is not unsatisfactory
        ("SSUSSSUU", True),
    ],
)
def test_pt_two_of_three_rule(pattern, unsuccessful):
    ind = summarise_indicators(policy=POLICY, as_of=AS_OF, pt=pt_frame(pattern))
    a = one(ind, "A")
    assert a["pt_unsuccessful"] is unsuccessful
    assert a["pt_unsatisfactory_rounds"] == pattern.count("U")
    assert a["pt_questionable_results"] == pattern.count("Q")
    if unsuccessful:
        first = next(i for i in range(len(pattern)) if pattern[max(0, i - 2): i + 1].count("U") >= 2)
        assert a["pt_unsuccessful_on"] == dt.date(2024, 1 + first, 1)


def test_pt_rule_is_per_scheme():
    pt = pl.concat([pt_frame("US", "S1"), pt_frame("SU", "S2")])
    rounds = pt_rounds(pt, POLICY).collect()
    assert rounds.get_column("unsuccessful").to_list() == [False, False, False, False]


def test_pt_unsuccessful_caps_to_three():
    ind = summarise_indicators(policy=POLICY, as_of=AS_OF, pt=pt_frame("UU"))
    a = one(grade(evidence(A={}), ind, None, POLICY), "A")
    # 2 unsatisfactory results -> deduct 10 -> 90 -> I from score; cap III
    assert (a["score"], a["class_from_score"], a["class"]) == (90.0, "I", "III")


def test_other_indicators_summary_hand():
    d = dt.date
    timeliness = pl.LazyFrame(
        [
            {"lab_code": "A", "report_code": "r1", "due_on": d(2025, 5, 1), "reported_on": d(2025, 4, 30)},
            {"lab_code": "A", "report_code": "r2", "due_on": d(2025, 5, 1), "reported_on": d(2025, 5, 2)},
            {"lab_code": "A", "report_code": "r3", "due_on": d(2025, 12, 1), "reported_on": None},
            {"lab_code": "A", "report_code": "r4", "due_on": d(2026, 2, 1), "reported_on": None},
        ],
        schema=TIMELINESS_SCHEMA,
    )
    complaints = pl.LazyFrame(
        [
            {"lab_code": "B", "complaint_code": "c1", "received_on": d(2025, 1, 1), "upheld": True},
            {"lab_code": "B", "complaint_code": "c2", "received_on": d(2025, 1, 1), "upheld": False},
            {"lab_code": "B", "complaint_code": "c3", "received_on": d(2019, 1, 1), "upheld": True},
        ],
        schema=COMPLAINTS_SCHEMA,
    )
    audits = pl.LazyFrame(
        [
            {"lab_code": "A", "finding_code": "a1", "found_on": d(2025, 1, 1), "severity": "major"},
            {"lab_code": "A", "finding_code": "a2", "found_on": d(2025, 1, 1), "severity": "minor"},
            {"lab_code": "A", "finding_code": "a3", "found_on": d(2025, 1, 1), "severity": "observation"},
        ],
        schema=AUDIT_FINDINGS_SCHEMA,
    )
    ind = summarise_indicators(
        policy=POLICY, as_of=AS_OF, timeliness=timeliness, complaints=complaints, audits=audits
    )
    a, b = one(ind, "A"), one(ind, "B")
    # r4 is due after as_of: outside the window; r2 late, r3 overdue -> 2 of 3
    assert (a["reports"], a["late_reports"], a["late_share"]) == (3, 2, pytest.approx(2 / 3))
    assert (a["audit_major"], a["audit_minor"], a["upheld_complaints"]) == (1, 1, 0)
    assert (b["upheld_complaints"], b["reports"], b["late_share"]) == (1, 0, None)
    assert ind.schema == pl.Schema(INDICATOR_SCHEMA)
    g = grade(None, ind, None, POLICY)
    # A: late 2/3 -> min(10, 50 * (0.6667 - 0.05)) = 10; major 5; minor 1 -> 84 -> II, no evidence
    ga = one(g, "A")
    assert (ga["score"], ga["class_from_score"], ga["class"]) == (84.0, "II", "II")
    assert summarise_indicators(policy=POLICY, as_of=AS_OF).equals(empty_indicators())


def test_labs_argument_selects_exactly_the_graded_labs():
    g = grade(evidence(A={}, X={}), None, previous(B=("III", 0)), POLICY, labs=["A", "B", "C"])
    assert g.get_column("lab_code").to_list() == ["A", "B", "C"]
    c = one(g, "C")  # registered, nothing known: new-lab default
    assert (c["class"], c["change"], c["pairs_compared"], c["sufficient_evidence"]) == ("II", "new", 0, False)
    assert one(g, "B")["class"] == "III"
    assert grade(None, None, None, POLICY).equals(pl.DataFrame(schema=GRADE_SCHEMA))


def test_previous_class_outside_policy_labels_is_rejected():
    with pytest.raises(ValueError, match="not a class"):
        grade(evidence(A={}), None, previous(A=("V", 0)), POLICY)


def test_qualitative_rate_rule_deducts_with_enough_evidence_only():
    # hand computation: qualitative_rate 0.20 (q 0.001) -> min(30, 200 * (0.20 - 0.05)) = 30.00
    # -> 70 -> III, and the FDR cap agrees; 0.06 with q 0.2 -> not significant, no deduction ->
    # I; no qualitative pairs -> "no data"; 10 pairs -> skipped.
    g = grade(evidence(A={"qualitative_rate": 0.20, "qualitative_q": 0.001},
                       B={"qualitative_rate": 0.06, "qualitative_q": 0.2}, C={},
                       D={"qualitative_rate": 0.20, "qualitative_q": 0.001, "pairs_compared": 10}),
              None, None, POLICY)
    a, b, c, d = (one(g, x) for x in "ABCD")
    assert (a["score"], a["class"], effects(a)["qualitative_rate"]) == (70.0, "III", "deduct 30.00 (q 0.001 < 0.05)")
    assert effects(a)["fdr_qualitative"].startswith("cap III")
    assert (b["score"], b["class"]) == (100.0, "I")
    assert effects(b)["qualitative_rate"] == "deduct 0.00 (not significant: q 0.2 >= 0.05)"
    assert effects(c)["qualitative_rate"] == "no data"
    assert effects(d)["qualitative_rate"] == "skipped"  # 10 pairs < min_pairs 30


def test_not_identifiable_lab_is_never_downgraded_by_attribution_and_goes_to_arbitration():
    # An isolated pair: the evidence against this lab cannot say who is wrong.
    vals = {"identifiable": False, "component_size": 2, "partners": 1, "bias_q": 1e-9,
            "bias_beyond_peers": 2.0, "excess_q": 1e-9, "rate_beyond_peers": 0.3,
            "outside_peers": True, "cusum_current": 9.0}
    a = one(grade(evidence(A=vals), None, None, POLICY), "A")
    assert (a["score"], a["class"]) == (100.0, "I")
    e = effects(a)
    assert e["identifiability"].startswith("not identifiable") and "arbitration" in e["identifiability"]
    for rule in ("bias", "discrepancy_rate", "fdr_bias", "fdr_excess", "cusum_signal"):
        assert e[rule] == "skipped: not identifiable", rule
