from __future__ import annotations

from labeval.render import _main_reason
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
