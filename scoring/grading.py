"""Turn lab evidence and other indicators into a score, a class and reasons.

Procedure for one lab (every step leaves a :class:`Reason`, in this order, so an officer can
recompute the class by hand from the reasons alone):

1. ``evidence``: pairs_compared against grading.min_pairs. Below it, statistical rules (those
   marked statistical below) are skipped.
   ``identifiability`` (only for a lab that is not identifiable): rules that blame one side of a
   pair (the bias, rate and qualitative rules, the FDR and CUSUM caps, shading and not-detected
   patterns) are skipped and the lab is sent to arbitration.
2. ``base``: the score starts at score.base.
3. One reason per score rule in the policy (``score.rules``, fixed order below): deduction =
   min(cap, per_unit * max(0, metric - threshold)); effect "deduct X". The statistical rules
   deduct only when their Benjamini–Hochberg q-value is below evidence.fdr_alpha (otherwise
   "deduct 0.00 (not significant …)"), and their metrics already measure only what lies beyond
   the spread of normal labs. Missing metric: "no data".
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
from typing import Any, NamedTuple

import msgspec
import polars as pl

from scoring.classes import CLASSES, rank
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

_REASON_FIELDS = tuple(Reason.__struct_fields__)

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

class _Rule(NamedTuple):
    metric: str
    from_evidence: bool
    # BH q-value column that must be below fdr_alpha before the rule deducts (None: no gate)
    gate: str | None
    statistical: bool
    # needs the lab's attribution to be identifiable (its partners' share is known)
    attributed: bool
    # evidence column that must be true as well (None: none): a high discrepancy rate counts
    # only against a lab whose bias or precision lies outside its peers' spread, since a normal
    # lab's bias, however well measured, raises its rate too
    requires: str | None = None


_SCORE_RULES: dict[str, _Rule] = {
    "discrepancy_rate": _Rule("rate_beyond_peers", True, "excess_q", True, True, "outside_peers"),
    "bias": _Rule("bias_beyond_peers", True, "bias_q", True, True),
    "precision": _Rule("precision_beyond_peers", True, "precision_q", True, True),
    "qualitative_rate": _Rule("qualitative_rate", True, "qualitative_q", True, True),
    "pt_unsatisfactory": _Rule("pt_unsatisfactory_results", False, None, False, False),
    "pt_questionable": _Rule("pt_questionable_results", False, None, False, False),
    "late_reports": _Rule("late_share", False, None, False, False),
    "complaints": _Rule("upheld_complaints", False, None, False, False),
    "audit_major": _Rule("audit_major", False, None, False, False),
    "audit_minor": _Rule("audit_minor", False, None, False, False),
    "inaccurate_reports": _Rule("inaccurate_reports", False, None, False, False),
}
STATISTICAL_RULES = frozenset(k for k, r in _SCORE_RULES.items() if r.statistical)
STATISTICAL_CAPS = frozenset(
    {"fdr_excess", "fdr_bias", "fdr_precision", "fdr_qualitative", "cusum_signal",
     "data_shading", "data_nd_hiding", "data_verdict_contradiction", "data_outliers"}
)
# Caps that rest on who is wrong in a pair: they need an identifiable lab.
_ATTRIBUTED_CAPS = frozenset(
    {"fdr_excess", "fdr_bias", "fdr_precision", "fdr_qualitative", "cusum_signal",
     "data_shading", "data_nd_hiding", "data_outliers"}
)
_CAP_ORDER = (
    "falsified_report", "pt_unsuccessful", "fdr_excess", "fdr_bias", "fdr_precision",
    "fdr_qualitative", "cusum_signal",
    "data_shading", "data_nd_hiding", "data_verdict_contradiction", "data_outliers",
)
_PEER_CAPS = {
    "fdr_excess": ("excess_q", "rate_beyond_peers", "rate"),
    "fdr_bias": ("bias_q", "bias_beyond_peers", "bias"),
    "fdr_precision": ("precision_q", "precision_beyond_peers", "excess variance"),
}
_PATTERN_CAPS = {
    "data_shading": "shading",
    "data_nd_hiding": "nd_hiding",
    "data_verdict_contradiction": "verdict_contradiction",
    "data_outliers": "outliers",
}


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
    if name in _PEER_CAPS:
        q_col, beyond_col, what = _PEER_CAPS[name]
        q, beyond = _num(ev.get(q_col)), _num(ev.get(beyond_col))
        if q is None or beyond is None:
            return q_col, q, alpha, None, ""
        note = f" ({what} beyond the peers' spread by {beyond:.3g})" if beyond > 0 else (
            f" ({what} within the peers' spread)"
        )
        fired = q < alpha and beyond > 0
        if name == "fdr_excess" and fired and not ev.get("outside_peers"):
            fired = False
            note = f" ({what} high, but explained by a bias and precision within the peers' spread)"
        return q_col, q, alpha, fired, note
    if name == "fdr_qualitative":
        q, rate = _num(ev.get("qualitative_q")), _num(ev.get("qualitative_rate"))
        rule = policy.score.rules.get("qualitative_rate")  # type: ignore[call-overload]
        limit = rule.threshold if rule is not None else 0.0
        if q is None or rate is None:
            return "qualitative_q", q, alpha, None, ""
        note = f" (shrunk wrong-verdict rate {rate:.3g} vs {limit:g})"
        return "qualitative_q", q, alpha, q < alpha and rate > limit, note
    if name == "cusum_signal":
        # The chart's value now, not its maximum over the window: with hundreds of pairs per
        # lab, a chart with an in-control run length of arl0 pairs crosses h at some point for
        # many clean labs, while one that is above h now is in alarm. A chart that never rose
        # (C = 0) has not signalled, even when h is 0.
        cur = _num(ev.get("cusum_current"))
        h = _num(ev.get("cusum_limit"))
        if cur is None or h is None:
            return "cusum_current", cur, h, None, ""
        alarm = cur > 0 and cur >= h
        if alarm and not ev.get("outside_peers"):
            # In control is a normal lab's rate; a lab whose bias and precision are within the
            # peers' spread runs above the average rate for ever without being worse than normal.
            return "cusum_current", cur, h, False, " (alarm, but bias and precision within the peers' spread)"
        return "cusum_current", cur, h, alarm, ""
    if name in _PATTERN_CAPS:
        pat = _PATTERN_CAPS[name]
        q, obs = _num(ev.get(f"{pat}_q")), _num(ev.get(f"{pat}_observed"))
        exp = _num(ev.get(f"{pat}_expected"))
        if q is None or obs is None:
            return f"{pat}_q", q, alpha, None, ""
        enough = obs >= policy.evidence.pattern_min_observed
        note = f" (observed {obs:.0f}, expected {exp or 0.0:.2f})"
        return f"{pat}_q", q, alpha, q < alpha and enough, note
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

    evidence: scoring.evidence.lab_evidence output. indicators: scoring.indicators
    .summarise_indicators output, or None. previous_grades: PREVIOUS_GRADES_SCHEMA, or None (all
    labs new). Output sorted by lab_code; `reasons` is a List(Struct) of Reason fields. Every
    deduction is rounded to 2 decimals first and the score is base minus their sum (floored at
    0), so the reasons add up exactly. No lab at all gives an empty frame with GRADE_SCHEMA.
    A lab absent from evidence has pairs_compared 0 (too little evidence).
    """
    gp = policy.grading
    alpha = policy.evidence.fdr_alpha
    labels = list(CLASSES)
    ev_rows = _rows(evidence)
    ind_rows = _rows(indicators)
    prev_rows = _rows(previous_grades)
    if labs is None:
        labs = set(ev_rows) | set(ind_rows) | set(prev_rows)
    labs = sorted(set(labs))
    phash = policy_hash(policy)

    out: dict[str, list[Any]] = {k: [] for k in GRADE_SCHEMA}
    flat: dict[str, list[Any]] = {f: [] for f in _REASON_FIELDS}
    reason_lab: list[int] = []
    for lab in labs:
        ev = ev_rows.get(lab, {})
        ind = ind_rows.get(lab, {})
        prev = prev_rows.get(lab)
        n = int(ev.get("pairs_compared") or 0)
        sufficient = n >= gp.min_pairs
        # A lab without evidence is not "not identifiable": it simply has no pairs.
        identifiable = bool(ev.get("identifiable", True)) if ev else True
        reasons: list[Reason] = [
            Reason(
                rule="evidence",
                metric="pairs_compared",
                value=float(n),
                threshold=float(gp.min_pairs),
                effect="sufficient" if sufficient else "insufficient: statistical rules skipped",
            ),
        ]
        if ev and not identifiable:
            reasons.append(
                Reason(
                    rule="identifiability",
                    metric="component_size",
                    value=_num(ev.get("component_size")),
                    threshold=float(policy.evidence.min_component_labs),
                    effect=(
                        f"not identifiable ({_num(ev.get('partners')) or 0:.0f} distinct partners, "
                        f"at least {policy.evidence.min_partners} needed in a group of at least "
                        f"{policy.evidence.min_component_labs} labs): rules that blame one side "
                        "of a pair are skipped; send to arbitration"
                    ),
                )
            )
        reasons.append(Reason(rule="base", metric="score", value=policy.score.base, effect="start"))
        total = 0.0
        for name, rule_def in _SCORE_RULES.items():
            rule = policy.score.rules.get(name)  # type: ignore[call-overload]
            if rule is None:
                continue
            value = _num((ev if rule_def.from_evidence else ind).get(rule_def.metric))
            gate = _num(ev.get(rule_def.gate)) if rule_def.gate else None
            if rule_def.statistical and not sufficient:
                effect = "skipped"
            elif rule_def.attributed and not identifiable:
                effect = "skipped: not identifiable"
            elif value is None:
                effect = "no data"
            elif rule_def.gate and (gate is None or gate >= alpha):
                shown = "no test" if gate is None else f"q {gate:.3g} >= {alpha:g}"
                effect = f"deduct 0.00 (not significant: {shown})"
            elif rule_def.requires and not ev.get(rule_def.requires):
                effect = "deduct 0.00 (explained by a bias and precision within the peers' spread)"
            else:
                d = round(min(rule.cap, rule.per_unit * max(0.0, value - rule.threshold)), 2)
                total += d
                effect = f"deduct {d:.2f}"
                if rule_def.gate:
                    effect += f" (q {gate:.3g} < {alpha:g})"
            reasons.append(
                Reason(
                    rule=name, metric=rule_def.metric, value=value, threshold=rule.threshold,
                    effect=effect,
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
            elif name in _ATTRIBUTED_CAPS and not identifiable:
                effect = "skipped: not identifiable"
            elif fired is None:
                effect = "no data"
            elif fired:
                effect = f"cap {cap}{note}"
                if rank(cap) > rank(candidate):
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
        if prev_class is not None and prev_class not in CLASSES:
            raise ValueError(f"previous class {prev_class!r} of {lab} is not a class")
        prev_count = int((prev or {}).get("consecutive_qualifying") or 0)
        count = 0
        if not sufficient:
            held = prev_class if prev_class is not None else gp.new_lab_class
            final = candidate if rank(candidate) > rank(held) else held
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
        elif rank(candidate) >= rank(prev_class):
            final = candidate
        else:
            count = prev_count + 1
            upgrade = count >= gp.upgrade_after_runs
            final = labels[max(rank(candidate), rank(prev_class) - gp.max_classes_up)] if upgrade else prev_class
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
        elif rank(final) < rank(prev_class):
            change = "up"
        elif rank(final) > rank(prev_class):
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
        ):
            out[key].append(val)
        reason_lab.extend([len(out["lab_code"]) - 1] * len(reasons))
        for r in reasons:
            for field in _REASON_FIELDS:
                flat[field].append(getattr(r, field))
    # The reasons go in as flat columns grouped back per lab: polars builds a List(Struct)
    # column from Python dicts one value at a time, which took most of grade()'s time (5 000 labs).
    reason_schema = {"lab": pl.Int64(), **REASON_DTYPE.to_schema()}
    reasons_col = (
        pl.DataFrame({"lab": reason_lab, **flat}, schema=reason_schema)
        .group_by("lab", maintain_order=True)
        .agg(reasons=pl.struct(*_REASON_FIELDS))
        .get_column("reasons")
    )
    del out["reasons"]
    schema = {k: v for k, v in GRADE_SCHEMA.items() if k != "reasons"}
    return pl.DataFrame(out, schema=schema).with_columns(reasons_col.cast(GRADE_SCHEMA["reasons"]))


def carry_forward(grades: pl.DataFrame) -> pl.DataFrame:
    """The previous_grades frame for the next run, from grade()'s output."""
    return grades.select([pl.col(c).cast(t) for c, t in PREVIOUS_GRADES_SCHEMA.items()])
