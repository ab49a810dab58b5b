"""Exact binomial power, one-sided, and the pure steps of a retest plan."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from scoring.power import critical_count, power, required_pairs
from scoring.retest_plan import CategoryStats, LabStanding, allocate, choose_samples, rank_categories


# Reference figures, exact binomial power, one-sided (α = 0.05, power 0.8): 15 % against 5 %
# needs 52 pairs, 10 % against 5 % needs 169, and 10 pairs detect 15 % with power 0.18.
def test_published_power_figures():
    assert required_pairs(0.05, 0.15, 0.05, 0.8) == 52
    assert required_pairs(0.05, 0.10, 0.05, 0.8) == 169
    assert power(10, 0.05, 0.15, 0.05) == pytest.approx(0.18, abs=0.005)


def test_figures_by_hand_with_scipy():
    # n = 52: reject at X >= 6 since P(X >= 6 | 0.05) = 0.0445 <= 0.05 < P(X >= 5 | 0.05) = 0.1174.
    assert critical_count(52, 0.05, 0.05) == 6
    assert binom.sf(5, 52, 0.05) == pytest.approx(0.04454, abs=1e-5)
    assert binom.sf(4, 52, 0.05) == pytest.approx(0.11742, abs=1e-5)
    assert power(52, 0.05, 0.15, 0.05) == pytest.approx(binom.sf(5, 52, 0.15))
    assert power(51, 0.05, 0.15, 0.05) < 0.8 <= power(52, 0.05, 0.15, 0.05)
    # The saw-tooth: at 54 pairs the critical count steps up to 7 and power falls below 0.8.
    assert critical_count(54, 0.05, 0.05) == 7 and power(54, 0.05, 0.15, 0.05) < 0.8
    # n = 10: X >= 3 (P = 0.0115; X >= 2 has P = 0.0861); power P(X >= 3 | 0.15) = 0.1798.
    assert critical_count(10, 0.05, 0.05) == 3
    assert power(10, 0.05, 0.15, 0.05) == pytest.approx(0.17980, abs=1e-5)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 400), p0=st.floats(0.001, 0.5), alpha=st.floats(0.001, 0.2))
def test_critical_count_is_the_least_with_size_at_most_alpha(n, p0, alpha):
    c = critical_count(n, p0, alpha)
    assert c == n + 1 or binom.sf(c - 1, n, p0) <= alpha
    assert c == 0 or binom.sf(c - 2, n, p0) > alpha


def test_refuses_rates_that_cannot_be_told_apart():
    with pytest.raises(ValueError, match="must exceed"):
        required_pairs(0.05, 0.05, 0.05, 0.8)


def test_allocation_favours_thin_unidentifiable_and_rising_labs():
    labs = [
        LabStanding(lab_code="WELL", pairs=200, identifiable=True, cusum_current=0.1, cusum_limit=4.0, candidates=100),
        LabStanding(lab_code="THIN", pairs=10, identifiable=True, candidates=100),
        LabStanding(lab_code="UNID", pairs=60, identifiable=False, candidates=100),
        LabStanding(lab_code="RISE", pairs=80, identifiable=True, cusum_current=3.6, cusum_limit=4.0, candidates=100),
    ]
    got = {a.lab_code: a for a in allocate(labs, budget=60, required_pairs=52)}
    # WELL: need 0, not flagged: nothing. THIN: need 42, priority 42/52; UNID: priority 1;
    # RISE: priority 0.9. D'Hondt gives 60 retests in proportion 0.81 : 1 : 0.9.
    assert got["WELL"].retests == 0 and got["WELL"].cap == 0
    assert got["UNID"].retests > got["RISE"].retests > got["THIN"].retests > 0
    assert sum(a.retests for a in got.values()) == 60
    assert got["THIN"].need == 42 and got["THIN"].priority == pytest.approx(42 / 52)
    assert got["UNID"].cap == 52 and got["RISE"].cap == 52 and got["THIN"].cap == 42


_standing = st.builds(
    LabStanding, lab_code=st.text("ABCDEFGH", min_size=3, max_size=3), pairs=st.integers(0, 120),
    identifiable=st.booleans(), arbitration_suggested=st.booleans(),
    cusum_current=st.none() | st.floats(0.0, 8.0), cusum_limit=st.none() | st.floats(0.5, 6.0),
    candidates=st.integers(0, 60),
)


@settings(max_examples=80, deadline=None)
@given(labs=st.lists(_standing, max_size=12, unique_by=lambda s: s.lab_code), budget=st.integers(1, 400))
def test_allocation_is_highest_averages_within_caps(labs, budget):
    got = allocate(labs, budget=budget, required_pairs=52)
    assert sum(a.retests for a in got) <= budget
    assert all(0 <= a.retests <= a.cap <= a.candidates for a in got)
    assert all(a.retests == 0 for a in got if a.priority == 0)
    waiting = [a.priority / (a.retests + 1) for a in got if a.retests < a.cap and a.priority > 0]
    # Budget left over only when no lab can take more; otherwise no lab left waiting had a better
    # claim than the last retest given (D'Hondt).
    if sum(a.retests for a in got) < budget:
        assert not waiting
    given_ = [a.priority / a.retests for a in got if a.retests]
    if given_ and waiting:
        assert min(given_) >= max(waiting) - 1e-12


def test_allocation_stops_at_caps_and_candidates():
    labs = [LabStanding(lab_code="A", pairs=50, identifiable=True, candidates=100),
            LabStanding(lab_code="B", pairs=0, candidates=3)]
    got = {a.lab_code: a for a in allocate(labs, budget=1000, required_pairs=52)}
    assert (got["A"].retests, got["B"].retests) == (2, 3)


def test_choice_is_reproducible_and_changes_with_the_seed():
    cands = {"A": [f"S{i:03d}" for i in range(50)], "B": [f"T{i:03d}" for i in range(50)]}
    one = choose_samples(cands, {"A": 5, "B": 7}, seed=42)
    assert one == choose_samples(cands, {"B": 7, "A": 5}, seed=42)
    assert len(one["A"]) == 5 and len(set(one["B"])) == 7 and set(one["A"]) <= set(cands["A"])
    assert one != choose_samples(cands, {"A": 5, "B": 7}, seed=43)
    with pytest.raises(ValueError, match="only 50"):
        choose_samples(cands, {"A": 51}, seed=1)


def test_category_score_by_hand():
    stats = [
        CategoryStats(category_code="HOT", numeric_pairs=100, numeric_discrepancies=20, compared_pairs=100,
                      reversals=5, verdicts=100, fails=10, labs=2, candidates=5),
        CategoryStats(category_code="OK", numeric_pairs=100, numeric_discrepancies=0, compared_pairs=100,
                      reversals=1, verdicts=100, fails=10, labs=2, candidates=5),
    ]
    ranks = rank_categories(stats, required_pairs=52, prior_pairs=20.0, chosen=None, top=1)
    assert [r.category_code for r in ranks] == ["HOT", "OK"] and [r.chosen for r in ranks] == [True, False]
    hot = ranks[0]
    # Pooled discrepancy rate 0.1: HOT (20 + 20·0.1)/(100 + 20) = 0.18333 → ratio 1.8333;
    # reversals pooled 0.03: (5 + 0.6)/120 = 0.046667 → 1.5556; fails equal → 1; 50 pairs per lab
    # of 52 needed → thinness 2/52.
    assert hot.discrepancy_ratio == pytest.approx(1.833333, abs=1e-6)
    assert hot.reversal_ratio == pytest.approx(1.555556, abs=1e-6)
    assert hot.thinness == pytest.approx(2 / 52, abs=1e-6)
    assert hot.score == pytest.approx((1.833333 + 1.555556 + 1) / 3 + 2 / 52, abs=1e-5)
