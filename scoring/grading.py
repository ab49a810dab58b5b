"""Turn lab evidence and other indicators into a score, a class and reasons (docs/policy.md).

Procedure for one lab (every step leaves a :class:`Reason`, in this order, so an officer can
recompute the class by hand from the reasons alone):

1. ``evidence``: pairs_compared against grading.min_pairs. Below it, statistical rules (those
   marked statistical below) are skipped.
2. ``base``: the score starts at score.base.
3. One reason per score rule in the policy (``score.rules``, fixed order below): deduction =
   min(cap, per_unit * max(0, metric - threshold)); effect "deduct X". Missing metric: "no data".
4. ``score``: base minus deductions, floored at 0 (value = final score).
5. ``class_from_score``: the first label whose cut-off the score reaches (grading.cutoffs).
6. One reason per hard cap in the policy (``caps.rules``): effect "cap L" when it fires (the
   class becomes at least as bad as L), else "no cap".
7. ``candidate``: the worst of the class from the score and the fired caps.
8. ``hold`` / ``hysteresis`` / ``new``: too little evidence -> the previous class (new labs:
   grading.new_lab_class) unless the candidate from non-statistical rules is worse; a candidate
   better than the previous class counts one qualifying run and the class moves up (by at most
   max_classes_up) only when grading.upgrade_after_runs consecutive runs qualified; worse or
   equal candidates apply at once.

previous_grades (PREVIOUS_GRADES_SCHEMA) is what the service keeps from the last run for each
lab: lab_code, class, score, consecutive_qualifying (runs in a row, ending with that run, whose
candidate was better than the class then held; reset to 0 on an upgrade, on a non-qualifying
run and on a run with too little evidence). :func:`carry_forward` extracts it from grade()'s
output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import polars as pl

from scoring.policy import Policy, policy_hash

__all__ = [
    "GRADE_SCHEMA",
    "PREVIOUS_GRADES_SCHEMA",
    "REASON_DTYPE",
    "STATISTICAL_CAPS",
    "STATISTICAL_RULES",
    "Reason",
    "carry_forward",
    "grade",
]


class Reason(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a grade's explanation (JSON-serialisable with msgspec)."""

    rule: str
    metric: str
    value: float | None = None
    threshold: float | None = None
    effect: str


REASON_DTYPE = pl.Struct(
    {
        "rule": pl.String(),
        "metric": pl.String(),
        "value": pl.Float64(),
        "threshold": pl.Float64(),
        "effect": pl.String(),
    }
)

PREVIOUS_GRADES_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(),
    "class": pl.String(),
    "score": pl.Float64(),
    "consecutive_qualifying": pl.Int64(),
}

GRADE_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(),
    "score": pl.Float64(),
    "class_from_score": pl.String(),
    "candidate_class": pl.String(),
    "class": pl.String(),
    "previous_class": pl.String(),
    "change": pl.String(),  # "up" | "down" | "held" | "new"
    "consecutive_qualifying": pl.Int64(),
    "sufficient_evidence": pl.Boolean(),
    "pairs_compared": pl.Int64(),
    "selection_weight": pl.Float64(),
    "eligible": pl.Boolean(),
    "policy_version": pl.String(),
    "policy_hash": pl.String(),
    "reasons": pl.List(REASON_DTYPE),
}

# score rule -> (metric column, statistical?)
_SCORE_METRICS: dict[str, tuple[str, bool]] = {
    "discrepancy_rate": ("eb_rate", True),
    "bias": ("abs_bias", True),
    "qualitative_rate": ("qualitative_rate", True),
    "pt_unsatisfactory": ("pt_unsatisfactory_results", False),
    "pt_questionable": ("pt_questionable_results", False),
    "late_reports": ("late_share", False),
    "complaints": ("upheld_complaints", False),
    "audit_major": ("audit_major", False),
    "audit_minor": ("audit_minor", False),
    "inaccurate_reports": ("inaccurate_reports", False),
}
STATISTICAL_RULES = frozenset(k for k, (_, stat) in _SCORE_METRICS.items() if stat)
STATISTICAL_CAPS = frozenset({"fdr_excess", "fdr_bias", "cusum_signal"})
_CAP_ORDER = ("falsified_report", "pt_unsuccessful", "fdr_excess", "fdr_bias", "cusum_signal")


def _num(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def _rows(frame: pl.DataFrame | None) -> dict[str, dict[str, Any]]:
    if frame is None or frame.height == 0:
        return {}
    return {r["lab_code"]: r for r in frame.iter_rows(named=True)}


def _cap_check(
    name: str, ev: Mapping[str, Any], ind: Mapping[str, Any], policy: Policy
) -> tuple[str, float | None, float | None, bool | None, str]:
    """(metric, value, threshold, fired or None when no data, note)."""
    alpha = policy.evidence.fdr_alpha
    if name == "falsified_report":
        v = _num(ind.get("falsified_reports"))
        return "falsified_reports", v, 0.0, None if v is None else v > 0, ""
    if name == "pt_unsuccessful":
        flag = ind.get("pt_unsuccessful")
        v = None if flag is None else float(bool(flag))
        return "pt_unsuccessful", v, 1.0, None if flag is None else bool(flag), ""
    if name == "fdr_excess":
        q = _num(ev.get("excess_q"))
        return "excess_q", q, alpha, None if q is None else q < alpha, ""
    if name == "fdr_bias":
        q = _num(ev.get("bias_q"))
        b = _num(ev.get("bias"))
        if q is None or b is None:
            return "bias_q", q, alpha, None, ""
        big = abs(b) >= policy.caps.bias_min_abs
        note = f" (|bias| {abs(b):.3f} {'>=' if big else '<'} {policy.caps.bias_min_abs:g})"
        return "bias_q", q, alpha, (q < alpha) and big, note
    if name == "cusum_signal":
        # The chart's value now, not its maximum over the window: with hundreds of pairs per
        # lab, a chart with an in-control run length of arl0 pairs crosses h at some point for
        # many clean labs, while one that is above h now is in alarm. A chart that never rose
        # (C = 0) has not signalled, even when h is 0 because the expected discrepancy rates are
        # so low that the in-control chart never moves.
        cur = _num(ev.get("cusum_current"))
        h = _num(ev.get("cusum_limit"))
        if cur is None or h is None:
            return "cusum_current", cur, h, None, ""
        return "cusum_current", cur, h, cur > 0 and cur >= h, ""
    raise ValueError(f"unknown cap rule {name}")  # pragma: no cover - Literal-checked policy


def grade(
    evidence: pl.DataFrame | None,
    indicators: pl.DataFrame | None,
    previous_grades: pl.DataFrame | None,
    policy: Policy,
    *,
    labs: Iterable[str] | None = None,
) -> pl.DataFrame:
    """Grade labs (GRADE_SCHEMA): exactly ``labs`` when given (e.g. every registered lab; rows
    of other labs in the inputs are ignored), else every lab found in evidence, indicators or
    previous_grades.

    evidence: scoring.labs.lab_evidence output (columns used: lab_code, pairs_compared, eb_rate,
    bias, bias_q, excess_q, cusum_current, cusum_limit). indicators: scoring.indicators
    .summarise_indicators output, or None. previous_grades: PREVIOUS_GRADES_SCHEMA, or None (all
    labs new). Output sorted by lab_code; `reasons` is a List(Struct) of Reason fields. Every
    deduction is rounded to 2 decimals first and the score is base minus their sum (floored at
    0), so the reasons add up exactly. No lab at all gives an empty frame with GRADE_SCHEMA.
    A lab absent from evidence has pairs_compared 0 (too little evidence).
    """
    gp = policy.grading
    labels = list(gp.labels)
    rank = {lab: i for i, lab in enumerate(labels)}
    ev_rows = _rows(evidence)
    ind_rows = _rows(indicators)
    prev_rows = _rows(previous_grades)
    if labs is None:
        labs = set(ev_rows) | set(ind_rows) | set(prev_rows)
    labs = sorted(set(labs))
    phash = policy_hash(policy)

    out: dict[str, list[Any]] = {k: [] for k in GRADE_SCHEMA}
    for lab in labs:
        ev = dict(ev_rows.get(lab, {}))
        ind = ind_rows.get(lab, {})
        prev = prev_rows.get(lab)
        if ev.get("bias") is not None:
            ev["abs_bias"] = abs(ev["bias"])
        n = int(ev.get("pairs_compared") or 0)
        sufficient = n >= gp.min_pairs
        reasons: list[Reason] = [
            Reason(
                rule="evidence",
                metric="pairs_compared",
                value=float(n),
                threshold=float(gp.min_pairs),
                effect="sufficient" if sufficient else "insufficient: statistical rules skipped",
            ),
            Reason(rule="base", metric="score", value=policy.score.base, effect="start"),
        ]
        total = 0.0
        for name, (metric, statistical) in _SCORE_METRICS.items():
            rule = policy.score.rules.get(name)  # type: ignore[call-overload]
            if rule is None:
                continue
            src = ev if metric in ("eb_rate", "abs_bias", "qualitative_rate") else ind
            value = _num(src.get(metric))
            if statistical and not sufficient:
                effect = "skipped"
            elif value is None:
                effect = "no data"
            else:
                d = round(min(rule.cap, rule.per_unit * max(0.0, value - rule.threshold)), 2)
                total += d
                effect = f"deduct {d:.2f}"
            reasons.append(
                Reason(
                    rule=name, metric=metric, value=value, threshold=rule.threshold, effect=effect
                )
            )
        score = round(max(0.0, policy.score.base - total), 2)
        reasons.append(
            Reason(rule="score", metric="score", value=score, effect="base minus deductions")
        )
        from_score = labels[-1]
        met = None
        for label, cut in zip(labels, gp.cutoffs):
            if score >= cut:
                from_score, met = label, cut
                break
        reasons.append(
            Reason(
                rule="class_from_score",
                metric="score",
                value=score,
                threshold=met if met is not None else gp.cutoffs[-1],
                effect=f"class {from_score}",
            )
        )
        candidate = from_score
        for name in _CAP_ORDER:
            cap = policy.caps.rules.get(name)  # type: ignore[call-overload]
            if cap is None:
                continue
            metric, value, threshold, fired, note = _cap_check(name, ev, ind, policy)
            if name in STATISTICAL_CAPS and not sufficient:
                effect = "skipped"
            elif fired is None:
                effect = "no data"
            elif fired:
                effect = f"cap {cap}{note}"
                if rank[cap] > rank[candidate]:
                    candidate = cap
            else:
                effect = f"no cap{note}"
            reasons.append(
                Reason(rule=name, metric=metric, value=value, threshold=threshold, effect=effect)
            )
        reasons.append(
            Reason(rule="candidate", metric="class", effect=f"class {candidate}")
        )

        prev_class = prev.get("class") if prev else None
        if prev_class is not None and prev_class not in rank:
            raise ValueError(f"previous class {prev_class!r} of {lab} is not a policy label")
        prev_count = int((prev or {}).get("consecutive_qualifying") or 0)
        count = 0
        if not sufficient:
            held = prev_class if prev_class is not None else gp.new_lab_class
            final = candidate if rank[candidate] > rank[held] else held
            verb = "hold" if prev_class is not None else "default"
            reasons.append(
                Reason(
                    rule="insufficient_evidence",
                    metric="pairs_compared",
                    value=float(n),
                    threshold=float(gp.min_pairs),
                    effect=(
                        f"{verb} {held}"
                        if final == held
                        else f"class {final} (candidate worse than {verb} {held})"
                    ),
                )
            )
        elif prev_class is None:
            final = candidate
            reasons.append(Reason(rule="new", metric="class", effect=f"class {final}"))
        elif rank[candidate] >= rank[prev_class]:
            final = candidate
        else:
            count = prev_count + 1
            upgrade = count >= gp.upgrade_after_runs
            final = labels[max(rank[candidate], rank[prev_class] - gp.max_classes_up)] if upgrade else prev_class
            reasons.append(
                Reason(
                    rule="hysteresis",
                    metric="consecutive_qualifying",
                    value=float(count),
                    threshold=float(gp.upgrade_after_runs),
                    effect=f"up {final}" if upgrade else f"hold {prev_class}",
                )
            )
            if upgrade:
                count = 0
        if prev_class is None:
            change = "new"
        elif rank[final] < rank[prev_class]:
            change = "up"
        elif rank[final] > rank[prev_class]:
            change = "down"
        else:
            change = "held"
        weight = float(policy.selection.weights[final])
        for key, val in (
            ("lab_code", lab),
            ("score", score),
            ("class_from_score", from_score),
            ("candidate_class", candidate),
            ("class", final),
            ("previous_class", prev_class),
            ("change", change),
            ("consecutive_qualifying", count),
            ("sufficient_evidence", sufficient),
            ("pairs_compared", n),
            ("selection_weight", weight),
            ("eligible", weight > 0),
            ("policy_version", policy.version),
            ("policy_hash", phash),
            ("reasons", msgspec.to_builtins(reasons)),
        ):
            out[key].append(val)
    return pl.DataFrame(out, schema=GRADE_SCHEMA)


def carry_forward(grades: pl.DataFrame) -> pl.DataFrame:
    """The previous_grades frame for the next run, from grade()'s output."""
    return grades.select([pl.col(c).cast(t) for c, t in PREVIOUS_GRADES_SCHEMA.items()])
