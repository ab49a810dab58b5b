from __future__ import annotations

from datetime import date

from rich.table import Table

from labeval.models import GradingRun, LabGrade
from labeval.render import _main_reason, grade_table
from scoring.grading import Reason


def R(rule: str, effect: str, value: float | None = None) -> Reason:
    return Reason(rule=rule, metric=rule, value=value, effect=effect)


def test_main_reason_prefers_fired_caps_then_the_largest_deduction() -> None:
    reasons = [
        R("evidence", "sufficient", 40.0),
        R("complaints", "deduct 5.00", 1.0),
        R("bias", "deduct 16.00", 0.9),
        R("fdr_excess", "no cap", 0.2),
    ]
    assert _main_reason(reasons) == "bias (0.9): deduct 16.00"
    capped = [*reasons, R("falsified_report", "cap IV", 1.0)]
    assert _main_reason(capped) == "falsified_report (1): cap IV"
    held = [R("evidence", "insufficient"), R("insufficient_evidence", "default II", 3.0)]
    assert _main_reason(held) == "insufficient_evidence (3): default II"
    assert _main_reason([R("complaints", "deduct 0.00", 0.0)]) == "—"
    # a lab of an isolated pair: nothing deducted, nothing held, but it cannot be judged
    unjudged = [R("evidence", "sufficient", 90.0), R("identifiability", "not identifiable (…)", 2.0),
                R("bias", "skipped: not identifiable", 1.2)]
    assert _main_reason(unjudged) == "not identifiable: send to arbitration"


def _run(n_labs: int) -> GradingRun:
    # Classes cycle I, I, I, II, III, IV…: scores fall with the lab number inside a class.
    classes = ["I", "I", "I", "II", "III", "IV"]
    grades = [
        LabGrade(lab_code=f"L{i:04d}", class_=classes[i % len(classes)], score=100.0 - i / 100,
                 previous_class=None, change="new", pairs=10, reasons=[])
        for i in range(n_labs)
    ]
    return GradingRun(run_id=7, as_of=date(2026, 6, 30), policy_hash="0" * 64, policy_name="default",
                      policy_version="2", trigger="cli", n_pairs=1000, n_labs=n_labs, status="succeeded",
                      grades=grades)


def _rows(table: Table) -> list[str]:
    return list(table.columns[0].cells)


def test_grade_table_limit_shows_the_lowest_labs_every_planted_one_and_counts_the_rest() -> None:
    run = _run(150)  # 75 in class I, 25 each in II, III and IV
    everything = grade_table(run)
    assert len(_rows(everything)) == 150 and everything.caption is None
    limited = grade_table(run, limit=40)
    rows = _rows(limited)
    # Lowest first: the 25 labs of class IV, then 15 of class III (lowest score first).
    assert len(rows) == 40
    assert rows[:2] == ["L0149", "L0143"] and rows[24] == "L0005" and rows[25] == "L0148"
    assert limited.caption == ("150 labs (Ⅰ 75, Ⅱ 25, Ⅲ 25, Ⅳ 25); the 40 shown are the lowest. "
                               "Every lab: --all, or `labeval runs show 7`.")
    # A planted lab graded I is shown too (a miss), in its place at the end of the order.
    planted = grade_table(run, planted={"L0000": "bias", "L0005": "bias"}, limit=40)
    prow = _rows(planted)
    assert len(prow) == 41 and prow[-1] == "L0000" and "L0005" in prow
    assert "every planted one" in str(planted.caption)
    # A limit at or above the number of labs changes nothing.
    assert _rows(grade_table(run, limit=150)) == _rows(everything)
    assert grade_table(run, limit=150).caption is None
