"""An import's reject reasons in the reader's language.

Intake stores each reason as English text, "<column>: <what is wrong>" (the CSV of rejects and
the API keep it so, exactly as stored). The page says it again in the reader's language: the
column name stays as it is (it is the file's header), the known kinds of problem are translated,
the values inside them are kept. A reason of a kind not listed here is shown as stored."""

from __future__ import annotations

import re
from collections.abc import Callable

Gettext = Callable[..., str]

# (pattern of the text after "<column>: ", message id with {placeholders} named after the groups)
_KINDS: tuple[tuple[str, str], ...] = (
    (r"required, empty", "required, but empty"),
    (r"not a number", "not a number"),
    (r"not a finite number", "not a finite number"),
    (r"not a whole number", "not a whole number"),
    (r"not a date \(expected YYYY-MM-DD\)", "not a date (write it as YYYY-MM-DD)"),
    (r"date in the future", "a date in the future"),
    (r"not a yes/no value", "not a yes/no value"),
    (r"unknown value; expected one of (?P<allowed>.+)", "not one of the allowed values: {allowed}"),
    (r"unknown (?P<what>[\w ]+) code\(s\): (?P<codes>.+)", "unknown code(s): {codes}"),
    (r"unknown (?P<what>[\w ]+) code", "an unknown code"),
    (r"must be greater than (?P<min>\S+)", "must be greater than {min}"),
    (r"must not be less than (?P<min>\S+)", "must not be less than {min}"),
    (r"required for a quantitative item, empty", "required for a quantitative item, but empty"),
    (r"neither a number nor a recognised censored form \(<L, 未检出, ND\)",
     "neither a number nor a recognised “not detected” form (<L, 未检出, ND)"),
    (r"a qualitative result needs a value or a verdict", "a qualitative result needs a value or a verdict"),
    (r"the censoring limit must be a finite number >= 0", "the limit of a “not detected” result must be a finite number ≥ 0"),
    (r"does not match the item's unit \((?P<unit>.*)\)", "does not match the item's unit ({unit})"),
    (r"greater than upper_limit", "greater than the upper limit"),
    (r"greater than reproducibility_sd \(σr ≤ σR, ISO 5725-1\)",
     "greater than the reproducibility SD (σr ≤ σR, ISO 5725-1)"),
    (r"required for a quantitative item", "required for a quantitative item"),
    (r"required for the horwitz precision model", "required for the Horwitz precision model"),
    (r"required for the absolute and relative precision models",
     "required for the absolute and relative precision models"),
    (r"more than a year before the report was due", "more than a year before the report was due"),
    (r"one of z_score, en_score, outcome is required", "one of z_score, en_score, outcome is required"),
    (r"a (?P<role>retest|arbitration) by the lab that did the original test \(it must be another lab\)",
     "a {role} by the lab that did the original test (it must be another lab)"),
    (r"an original result by a lab that also retested this sample item",
     "an original result by a lab that also retested this sample item"),
    (r"arbitration by the lab that did the retest \(it must be a third lab\)",
     "an arbitration by the lab that did the retest (it must be a third lab)"),
    (r"a retest by the lab that did the arbitration \(it must be another lab\)",
     "a retest by the lab that did the arbitration (it must be another lab)"),
    (r"a (?P<role>retest|arbitration) with no original result for this sample and item \(in the database or the file\)",
     "a {role} with no original result for this sample and item (in the database or the file)"),
)
_WHOLE: tuple[tuple[str, str], ...] = (
    (r"duplicate row in the file: same as row (?P<row>\d+)", "a duplicate row in the file: the same as row {row}"),
    (r"conflicting rows in the file: same key \((?P<key>[^)]*)\) as row (?P<row>\d+) with different values",
     "conflicting rows in the file: the same key ({key}) as row {row} with different values"),
)


def _messages(_: Callable[[str], str]) -> None:
    # Marked so that the catalogue test finds every message id above; never called.
    _("required, but empty"), _("not a number"), _("not a finite number"), _("not a whole number")
    _("not a date (write it as YYYY-MM-DD)"), _("a date in the future"), _("not a yes/no value")
    _("not one of the allowed values: {allowed}"), _("unknown code(s): {codes}"), _("an unknown code")
    _("must be greater than {min}"), _("must not be less than {min}")
    _("required for a quantitative item, but empty")
    _("neither a number nor a recognised “not detected” form (<L, 未检出, ND)")
    _("a qualitative result needs a value or a verdict")
    _("the limit of a “not detected” result must be a finite number ≥ 0")
    _("does not match the item's unit ({unit})"), _("greater than the upper limit")
    _("greater than the reproducibility SD (σr ≤ σR, ISO 5725-1)"), _("required for a quantitative item")
    _("required for the Horwitz precision model"), _("required for the absolute and relative precision models")
    _("more than a year before the report was due"), _("one of z_score, en_score, outcome is required")
    _("a {role} by the lab that did the original test (it must be another lab)")
    _("an original result by a lab that also retested this sample item")
    _("an arbitration by the lab that did the retest (it must be a third lab)")
    _("a retest by the lab that did the arbitration (it must be another lab)")
    _("a {role} with no original result for this sample and item (in the database or the file)")
    _("a duplicate row in the file: the same as row {row}")
    _("conflicting rows in the file: the same key ({key}) as row {row} with different values")
    _("retest result"), _("arbitration result")


def _say(t: Gettext, message: str, groups: dict[str, str]) -> str:
    if "role" in groups:
        role = t("retest result") if groups["role"] == "retest" else t("arbitration result")
        groups = {**groups, "role": role}
    return t(message, **{k: v for k, v in groups.items() if v is not None})


def reject_reason(t: Gettext, reason: str | None) -> str:
    """The stored reason in the reader's words (the stored text when its kind is unknown, and
    for an English reader, who reads it as the CSV and the API give it)."""
    if not reason:
        return "—"
    if getattr(t, "lang", None) == "en":
        return reason
    for pattern, message in _WHOLE:
        if m := re.fullmatch(pattern, reason):
            return _say(t, message, m.groupdict())
    column, sep, rest = reason.partition(": ")
    if sep and re.fullmatch(r"[\w.]+", column):
        for pattern, message in _KINDS:
            if m := re.fullmatch(pattern, rest):
                return column + t(": ") + _say(t, message, m.groupdict())
    return reason
