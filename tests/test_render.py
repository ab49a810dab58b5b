from __future__ import annotations

from labeval.render import _main_reason


def test_main_reason_prefers_fired_caps_then_the_largest_deduction() -> None:
    reasons = [
        {"rule": "evidence", "value": 40.0, "effect": "sufficient"},
        {"rule": "complaints", "value": 1.0, "effect": "deduct 5.00"},
        {"rule": "bias", "value": 0.9, "effect": "deduct 16.00"},
        {"rule": "fdr_excess", "value": 0.2, "effect": "no cap"},
    ]
    assert _main_reason(reasons) == "bias (0.9): deduct 16.00"
    capped = [*reasons, {"rule": "falsified_report", "value": 1.0, "effect": "cap IV"}]
    assert _main_reason(capped) == "falsified_report (1): cap IV"
    held = [{"rule": "evidence", "effect": "insufficient"}, {"rule": "insufficient_evidence", "value": 3.0,
                                                              "effect": "default II"}]
    assert _main_reason(held) == "insufficient_evidence (3): default II"
    assert _main_reason([{"rule": "complaints", "value": 0.0, "effect": "deduct 0.00"}]) == "—"
