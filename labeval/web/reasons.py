"""A grade's reasons in plain words: what each rule measured, the threshold, and what it did to
the grade, in the reader's language.

The reasons are stored as scoring produced them (rule, metric, value, threshold, effect), which
keeps them exact and comparable between runs; this module only says them. A rule it does not
know is shown by its name, never dropped."""

from __future__ import annotations

import re
from collections.abc import Callable

from scoring.classes import DISPLAY
from scoring.grading import Reason

Gettext = Callable[..., str]


def _rules(_: Callable[[str], str]) -> dict[str, str]:
    # Marked with _ so that the catalogue test finds them; translated at call time.
    return {
        "evidence": _("Pairs compared (enough to judge the lab statistically?)"),
        "identifiability": _("Can the pairs tell this lab apart from its partners?"),
        "base": _("Starting score"),
        "discrepancy_rate": _("Rate of discrepant pairs beyond the peers' spread"),
        "bias": _("Bias against the peers, beyond their spread"),
        "precision": _("Scatter against the peers, beyond their spread"),
        "qualitative_rate": _("Rate of wrong qualitative verdicts"),
        "pt_unsatisfactory": _("Unsatisfactory proficiency-test results"),
        "pt_questionable": _("Questionable proficiency-test results"),
        "late_reports": _("Share of late reports"),
        "complaints": _("Upheld complaints"),
        "audit_major": _("Major audit findings"),
        "audit_minor": _("Minor audit findings"),
        "inaccurate_reports": _("Inaccurate reports"),
        "falsified_report": _("Falsified test reports"),
        "pt_unsuccessful": _("Unsuccessful proficiency testing (too many unsatisfactory rounds of one scheme)"),
        "score": _("Score"),
        "class_from_score": _("Class from the score"),
        "fdr_excess": _("Discrepancy rate significant after the false-discovery-rate correction"),
        "fdr_bias": _("Bias significant after the false-discovery-rate correction"),
        "fdr_precision": _("Scatter significant after the false-discovery-rate correction"),
        "fdr_qualitative": _("Qualitative error rate significant after the false-discovery-rate correction"),
        "cusum_signal": _("CUSUM alarm: a sustained run of discrepancies"),
        "data_shading": _("Results shaded just inside the limit"),
        "data_nd_hiding": _("“Not detected” where the retest found a clear amount"),
        "data_verdict_contradiction": _("Verdicts that contradict the lab's own numbers"),
        "data_outliers": _("Gross errors"),
        "candidate": _("Class before history is taken into account"),
        "insufficient_evidence": _("Too few pairs to change the class"),
        "new": _("First grade of this lab"),
        "hysteresis": _("Upgrades wait for consecutive good runs"),
    }


def rule_title(t: Gettext, rule: str) -> str:
    return _rules(t).get(rule, rule)


def _class(code: str) -> str:
    return DISPLAY.get(code, code)


def effect_text(t: Gettext, effect: str) -> str:
    """The effect in words (the numbers in it kept as they are)."""
    if effect == "start":
        return t("the starting point")
    if effect == "base minus deductions":
        return t("the starting score minus the deductions")
    if effect == "sufficient":
        return t("enough pairs: the statistical rules apply")
    if effect.startswith("insufficient"):
        return t("too few pairs: the statistical rules are skipped")
    if effect == "skipped":
        return t("skipped (too few pairs)")
    if effect == "skipped: not identifiable":
        return t("skipped: the lab cannot be told apart from its partners")
    if effect == "no data":
        return t("no data")
    if effect.startswith("not identifiable"):
        return t("not identifiable: rules that blame one side of a pair are skipped; send the pairs to arbitration")
    if m := re.fullmatch(r"deduct (\d+(?:\.\d+)?)(?: \((.*)\))?", effect):
        points, note = m.group(1), m.group(2)
        text = t("{points} points deducted", points=points)
        if note is None:
            return text
        if note.startswith("not significant"):
            return t("no deduction: not significant ({detail})", detail=note.removeprefix("not significant: "))
        if note.startswith("explained by"):
            return t("no deduction: explained by a bias and scatter within the peers' spread")
        return f"{text} ({note})"
    # Longest class first: (.*) takes the rest, so "cap IV" must not match as "I" + "V".
    if m := re.fullmatch(r"cap (IV|III|II|I)(.*)", effect):
        return t("class capped at {cls}", cls=_class(m.group(1))) + m.group(2)
    if m := re.fullmatch(r"no cap(.*)", effect):
        return t("no cap") + m.group(1)
    if m := re.fullmatch(r"class (I|II|III|IV)(?: \(candidate worse than (hold|default) (I|II|III|IV)\))?", effect):
        if m.group(2):
            return t("class {cls} (worse than the class held, {held})", cls=_class(m.group(1)), held=_class(m.group(3)))
        return t("class {cls}", cls=_class(m.group(1)))
    if m := re.fullmatch(r"(hold|default|up) (I|II|III|IV)", effect):
        verb = {"hold": t("class {cls} held"), "default": t("class {cls} by default"),
                "up": t("raised to class {cls}")}[m.group(1)]
        return verb.format(cls=_class(m.group(2)))
    return effect


def _num(t: Gettext, value: float | None) -> str:
    if value is None:
        return "—"
    number = getattr(t, "number", None)
    return number(value, 2 if abs(value) < 100 and value != int(value) else None) if number else f"{value:.3g}"


def reason_text(t: Gettext, reason: Reason | None, rule: str | None = None) -> str:
    """One sentence: what was measured (value, threshold) and the effect."""
    if reason is None:
        return rule_title(t, rule or "")
    parts = [rule_title(t, reason.rule)]
    if reason.value is not None and reason.rule not in ("candidate", "new"):
        measured = t("measured {value}", value=_num(t, reason.value))
        if reason.threshold is not None:
            measured += t(", threshold {threshold}", threshold=_num(t, reason.threshold))
        parts.append(measured)
    parts.append(effect_text(t, reason.effect))
    return t(": ").join(parts[:1]) + t(": ") + t("; ").join(parts[1:])
