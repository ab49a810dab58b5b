"""The kinds of reject reason intake writes: a stable code for each, its English text with named
arguments, and the one way a reason's text is made from them.

A reject line stores the text (what the CSV of rejects and the API give, unchanged) and, beside
it, the code and the arguments, so that a reader in another language is given the same reason
by its code rather than by recognising the English words."""

from __future__ import annotations

import string
from collections.abc import Mapping

import polars as pl

# code -> English text after "<column>: " (named {arguments}).
TEXTS: dict[str, str] = {
    "required": "required, empty",
    "not_number": "not a number",
    "not_finite": "not a finite number",
    "not_whole_number": "not a whole number",
    "not_date": "not a date (expected YYYY-MM-DD)",
    "future_date": "date in the future",
    "not_yes_no": "not a yes/no value",
    "unknown_value": "unknown value; expected one of {allowed}",
    "unknown_codes": "unknown {what} code(s): {codes}",
    "unknown_code": "unknown {what} code",
    "greater_than": "must be greater than {min}",
    "not_less_than": "must not be less than {min}",
    "quantitative_value_empty": "required for a quantitative item, empty",
    "not_a_value": "neither a number nor a recognised censored form (<L, 未检出, ND)",
    "qualitative_needs_value": "a qualitative result needs a value or a verdict",
    "censor_limit": "the censoring limit must be a finite number >= 0",
    "unit_mismatch": "does not match the item's unit ({unit})",
    "lower_above_upper": "greater than upper_limit",
    "repeatability_above_reproducibility": "greater than reproducibility_sd (σr ≤ σR, ISO 5725-1)",
    "quantitative_required": "required for a quantitative item",
    "horwitz_required": "required for the horwitz precision model",
    "sd_model_required": "required for the absolute and relative precision models",
    "reported_too_early": "more than a year before the report was due",
    "pt_score_required": "one of z_score, en_score, outcome is required",
    "by_original_lab": "a {role} by the lab that did the original test (it must be another lab)",
    "original_by_retest_lab": "an original result by a lab that also retested this sample item",
    "arbitration_by_retest_lab": "arbitration by the lab that did the retest (it must be a third lab)",
    "retest_by_arbitration_lab": "a retest by the lab that did the arbitration (it must be another lab)",
    "no_original": "a {role} with no original result for this sample and item (in the database or the file)",
    # Of the whole row: not prefixed by a column.
    "duplicate_row": "duplicate row in the file: same as row {row}",
    "conflicting_rows": "conflicting rows in the file: same key ({key}) as row {row} with different values",
}
WHOLE_ROW = frozenset({"duplicate_row", "conflicting_rows"})


def template(column: str | None, code: str) -> str:
    """The English text of `code` for `column`, its {arguments} still to fill."""
    body = TEXTS[code]
    return body if code in WHOLE_ROW or column is None else f"{column}: {body}"


def text(column: str | None, code: str, args: Mapping[str, object]) -> str:
    return template(column, code).format(**args)


def text_expr(column: str | None, code: str, args: Mapping[str, pl.Expr | str]) -> pl.Expr:
    """The text as a polars expression, for arguments that are columns of the rejected rows."""
    literals: list[str] = []
    exprs: list[pl.Expr] = []
    for literal, field, _, _ in string.Formatter().parse(template(column, code)):
        literals.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is not None:
            literals.append("{}")
            value = args[field]
            exprs.append(value.cast(pl.String) if isinstance(value, pl.Expr) else pl.lit(str(value)))
    return pl.format("".join(literals), *exprs) if exprs else pl.lit("".join(literals))


def args_expr(args: Mapping[str, pl.Expr | str]) -> pl.Expr:
    """The arguments as JSON text (null when there are none), a column of the rejected rows."""
    if not args:
        return pl.lit(None, pl.String)
    fields = [(v.cast(pl.String) if isinstance(v, pl.Expr) else pl.lit(str(v))).alias(k) for k, v in args.items()]
    return pl.struct(fields).struct.json_encode()
