"""An import's reject reasons in the reader's language.

Intake stores each reason as English text, "<column>: <what is wrong>" (the CSV of rejects and
the API keep it so, exactly as stored), and beside it the kind of problem as a code with its
arguments (labeval.ingest.reasons). The page says the reason again in the reader's language by
its code: the column name stays as it is (it is the file's header), the arguments inside are
kept. A line without a code (stored before migration 0012) is shown as stored."""

from __future__ import annotations

from collections.abc import Callable

from labeval.db.imports import CodedReject
from labeval.ingest.reasons import WHOLE_ROW

Gettext = Callable[..., str]

# reason code -> message id, with {placeholders} named after the code's arguments (a message may
# leave an argument out: "unknown lab code" says "an unknown code", the column names the kind).
MESSAGES: dict[str, str] = {
    "required": "required, but empty",
    "not_number": "not a number",
    "not_finite": "not a finite number",
    "not_whole_number": "not a whole number",
    "not_date": "not a date (write it as YYYY-MM-DD)",
    "future_date": "a date in the future",
    "not_yes_no": "not a yes/no value",
    "unknown_value": "not one of the allowed values: {allowed}",
    "unknown_codes": "unknown code(s): {codes}",
    "unknown_code": "an unknown code",
    "greater_than": "must be greater than {min}",
    "not_less_than": "must not be less than {min}",
    "quantitative_value_empty": "required for a quantitative item, but empty",
    "not_a_value": "neither a number nor a recognised “not detected” form (<L, 未检出, ND)",
    "qualitative_needs_value": "a qualitative result needs a value or a verdict",
    "censor_limit": "the limit of a “not detected” result must be a finite number ≥ 0",
    "unit_mismatch": "does not match the item's unit ({unit})",
    "lower_above_upper": "greater than the upper limit",
    "repeatability_above_reproducibility": "greater than the reproducibility SD (σr ≤ σR, ISO 5725-1)",
    "quantitative_required": "required for a quantitative item",
    "horwitz_required": "required for the Horwitz precision model",
    "sd_model_required": "required for the absolute and relative precision models",
    "reported_too_early": "more than a year before the report was due",
    "pt_score_required": "one of z_score, en_score, outcome is required",
    "by_original_lab": "a {role} by the lab that did the original test (it must be another lab)",
    "original_by_retest_lab": "an original result by a lab that also retested this sample item",
    "arbitration_by_retest_lab": "an arbitration by the lab that did the retest (it must be a third lab)",
    "retest_by_arbitration_lab": "a retest by the lab that did the arbitration (it must be another lab)",
    "no_original": "a {role} with no original result for this sample and item (in the database or the file)",
    "duplicate_row": "a duplicate row in the file: the same as row {row}",
    "conflicting_rows": "conflicting rows in the file: the same key ({key}) as row {row} with different values",
}


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


def reject_reason(t: Gettext, reject: CodedReject) -> str:
    """The reject's reason in the reader's words (as stored for an English reader, who reads it
    as the CSV and the API give it, and for a line without a known code)."""
    if not reject.reason:
        return "—"
    message = MESSAGES.get(reject.reason_code or "")
    if getattr(t, "lang", None) == "en" or message is None:
        return reject.reason
    args = dict(reject.reason_args or {})
    if "role" in args:
        args["role"] = t("retest result") if args["role"] == "retest" else t("arbitration result")
    said = t(message, **args)
    if reject.reason_code in WHOLE_ROW or not reject.column:
        return said
    return reject.column + t(": ") + said
