"""Compare two runs: the labs whose class moved, the reasons on both sides, and the rule that
made the difference."""

from __future__ import annotations

import asyncpg
import msgspec

from labeval.db import runs
from scoring.grading import Reason


class ClassMove(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    class_a: str | None
    class_b: str | None
    score_a: float | None
    score_b: float | None
    # The rule whose outcome differs and decides the move (see deciding_rule).
    rule: str
    reasons_a: list[Reason]
    reasons_b: list[Reason]


class RunDiff(msgspec.Struct, kw_only=True, frozen=True):
    run_a: int
    run_b: int
    labs_compared: int
    moved: list[ClassMove]


def _deduction(reason: Reason | None) -> float:
    effect = _effect(reason)
    if effect.startswith("deduct "):
        try:
            return float(effect.removeprefix("deduct "))
        except ValueError:
            return 0.0
    return 0.0


def _effect(reason: Reason | None) -> str:
    return reason.effect if reason is not None else ""


def deciding_rule(reasons_a: list[Reason], reasons_b: list[Reason]) -> str:
    """The rule that made the class differ, read from the two reason lists (scoring.grading
    writes one reason per step): when the candidate classes differ, a cap that fired on one
    side only, else the score rule whose deduction changed most, else the evidence rule; when
    the candidates agree, the step after them (too little evidence, hysteresis, new lab)."""
    a = {r.rule: r for r in reasons_a}
    b = {r.rule: r for r in reasons_b}
    if not a or not b:
        return "new" if not a else "removed"
    if _effect(a.get("candidate")) != _effect(b.get("candidate")):
        caps = [rule for rule in a.keys() | b.keys()
                if _effect(a.get(rule)).startswith("cap ") != _effect(b.get(rule)).startswith("cap ")]
        if caps:
            order = [r.rule for r in reasons_b]
            return min(caps, key=lambda r: order.index(r) if r in order else len(order))
        changed = [(abs(_deduction(a.get(rule)) - _deduction(b.get(rule))), rule)
                   for rule in a.keys() | b.keys() if str(rule).strip()]
        changed = [c for c in changed if c[0] > 0]
        if changed:
            return max(changed, key=lambda c: (c[0], c[1]))[1]
        if _effect(a.get("evidence")) != _effect(b.get("evidence")):
            return "evidence"
        return "class_from_score"
    for rule in ("insufficient_evidence", "hysteresis", "new"):
        if _effect(a.get(rule)) != _effect(b.get(rule)):
            return rule
    return "candidate"


async def diff_runs(conn: asyncpg.Connection, run_a: int, run_b: int) -> RunDiff:
    await runs.get_record(conn, run_a)  # NotFound for an unknown run
    await runs.get_record(conn, run_b)
    ga = {g.lab_code: g for g in await runs.stored_grades(conn, run_a)}
    gb = {g.lab_code: g for g in await runs.stored_grades(conn, run_b)}
    moved = []
    for lab in sorted(ga.keys() | gb.keys()):
        x, y = ga.get(lab), gb.get(lab)
        if x is not None and y is not None and x.class_ == y.class_:
            continue
        moved.append(ClassMove(
            lab_code=lab, class_a=x.class_ if x else None, class_b=y.class_ if y else None,
            score_a=x.score if x else None, score_b=y.score if y else None,
            rule=deciding_rule(x.reasons if x else [], y.reasons if y else []),
            reasons_a=x.reasons if x else [], reasons_b=y.reasons if y else [],
        ))
    return RunDiff(run_a=run_a, run_b=run_b, labs_compared=len(ga.keys() | gb.keys()), moved=moved)
