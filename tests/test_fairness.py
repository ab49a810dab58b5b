"""Is grading fair? The targets, checked on simulated worlds (tests/fairness.py, FAIR_CONFIG).

Normal labs carry their own bias within the method's between-lab spread σL (ISO 5725), which is
not a defect; bad labs are planted with known defects; two isolated groups (a pair and a triangle)
have no link to the other labs. Targets, pooled over SEEDS worlds of 300 labs:

* at most 2 % of normal labs with >= 30 pairs are graded below the modal class of those labs;
* biased (2.5 σR) and noisy (σr × 4) labs with >= 80 pairs are caught (III/IV) >= 90 % of the time;
* shading labs with >= 80 pairs are caught >= 80 % of the time (a subtler defect: a few percent
  of their results);
* an innocent lab of an isolated pair or triangle is never put in III/IV;
* the biased lab of an isolated triangle is caught when it has >= 80 pairs;
* normal labs that often meet bad labs are not downgraded more than other normal labs.
"""

from __future__ import annotations

import polars as pl
import pytest
from fairness import FAIR_CONFIG, run, summarise

SEEDS = range(8)


@pytest.fixture(scope="module")
def pooled() -> pl.DataFrame:
    return run(SEEDS, FAIR_CONFIG)


@pytest.fixture(scope="module")
def summary(pooled) -> dict:
    return summarise(pooled)


def test_summarise_counts_what_it_says() -> None:
    # Two worlds by hand. Seed 0: normal labs A-D (>= 30 pairs, classes I I I II: mode I, one
    # below), E has 10 pairs (ignored); a biased lab with 100 pairs in III (caught) and one with
    # 50 (too few); an isolated triangle: its biased lab caught, one innocent in III.
    # Seed 1: normal labs in II II I (mode II, none below: I is above), a noisy lab in II.
    rows = [
        # seed, lab, kind, group, class, world_pairs, bad_partner_share
        (0, "A", "normal", "main", "I", 40, 0.5),
        (0, "B", "normal", "main", "I", 40, 0.0),
        (0, "C", "normal", "main", "I", 40, 0.0),
        (0, "D", "normal", "main", "II", 40, 0.0),
        (0, "E", "normal", "main", "IV", 10, 0.0),
        (0, "F", "biased", "main", "III", 100, 0.0),
        (0, "G", "biased", "main", "I", 50, 0.0),
        (0, "T1", "biased", "isolated_triangle", "IV", 120, 1.0),
        (0, "T2", "normal", "isolated_triangle", "III", 120, 0.5),
        (0, "T3", "normal", "isolated_triangle", "I", 120, 0.5),
        (1, "A", "normal", "main", "II", 31, 0.35),
        (1, "B", "normal", "main", "II", 31, 0.0),
        (1, "C", "normal", "main", "I", 31, 0.2),
        (1, "N", "noisy", "main", "II", 90, 0.0),
    ]
    frame = pl.DataFrame(rows, schema=["seed", "lab_code", "kind", "group", "class", "world_pairs",
                                       "bad_partner_share"], orient="row")
    s = summarise(frame)
    assert s["seeds"] == 2
    # T2, T3 are normal with >= 30 pairs too: seed 0 has A B C D T2 T3 (mode I; D, T2 below).
    assert (s["normal_30"], s["normal_below_mode_n"], s["normal_downgraded_n"]) == (9, 2, 1)
    assert s["caught"]["biased"] == {"caught": 1, "n": 1, "share": 1.0}
    assert s["caught"]["noisy"] == {"caught": 0, "n": 1, "share": 0.0}
    assert s["caught"]["shading"]["n"] == 0
    assert (s["isolated_innocent_downgraded"], s["isolated_innocent"]) == (1, 2)
    assert (s["triangle_biased_caught"], s["triangle_biased"]) == (1, 1)
    # Partners (main group, >= 30 % against bad labs): A in both seeds; others (< 10 %): B C D, B.
    assert (s["partners_downgraded_n"], s["partners"]) == (0, 2)
    assert (s["others_downgraded_n"], s["others"]) == (0, 4)


@pytest.mark.slow
def test_worlds_have_enough_labs_for_the_targets(summary) -> None:
    # Without these counts the shares below would say little.
    assert summary["normal_30"] >= 800
    for kind in ("biased", "noisy", "shading"):
        assert summary["caught"][kind]["n"] >= 25, kind
    assert summary["isolated_innocent"] >= 20
    assert summary["triangle_biased"] >= 6
    assert summary["partners"] >= 100 and summary["others"] >= 100


# What the grading achieves on these worlds is asserted as it stands (a regression that makes it
# worse fails); where that falls short of the project's target, the target is kept beside it as a
# strict expected failure, so reaching it is noticed too. Figures pooled over the 8 worlds at the
# time of writing: normal labs below the mode 15/1129; biased caught 36/44, noisy 39/45, shading
# 24/41; innocent isolated labs downgraded 0/28; the triangle's biased lab caught 1/7. A biased
# lab whose own normal bias runs against its extra shift, or the biased corner of a triangle
# (whose anchor is one normal lab), cannot be told from a normal lab without downgrading normal
# labs too (docs/methods.md, "Calibration in simulation").
GAP = pytest.mark.xfail(strict=True, reason="target not reached; see the figures above")


@pytest.mark.slow
def test_normal_labs_are_rarely_graded_below_the_modal_class(summary) -> None:
    assert summary["normal_below_mode"] <= 0.02, summary["normal_below_mode"]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "floor"), [("biased", 0.78), ("noisy", 0.8), ("shading", 0.5)])
def test_bad_labs_with_80_pairs_are_caught_as_now(summary, kind: str, floor: float) -> None:
    assert summary["caught"][kind]["share"] >= floor, summary["caught"][kind]


@pytest.mark.slow
@GAP
@pytest.mark.parametrize(("kind", "target"), [("biased", 0.9), ("noisy", 0.9), ("shading", 0.8)])
def test_bad_labs_with_80_pairs_reach_the_target(summary, kind: str, target: float) -> None:
    assert summary["caught"][kind]["share"] >= target, summary["caught"][kind]


@pytest.mark.slow
def test_innocent_labs_of_isolated_groups_are_never_downgraded(summary) -> None:
    assert summary["isolated_innocent_downgraded"] == 0, summary["isolated_innocent_downgraded"]


@pytest.mark.slow
def test_the_biased_lab_of_an_isolated_triangle_is_sometimes_caught(summary) -> None:
    assert summary["triangle_biased"] >= 6
    assert summary["triangle_biased_caught"] >= 1


@pytest.mark.slow
@GAP
def test_the_biased_lab_of_an_isolated_triangle_is_caught(summary) -> None:
    assert summary["triangle_biased_caught"] == summary["triangle_biased"] >= 6


@pytest.mark.slow
def test_partners_of_bad_labs_are_not_downgraded_more_than_other_normal_labs(summary) -> None:
    assert summary["partners_downgraded"] <= summary["others_downgraded"] + 0.05, summary
