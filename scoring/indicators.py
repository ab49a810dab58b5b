"""Indicators other than retest pairs, as inputs with documented schemas.

The service supplies any of five LazyFrames (each optional):

- PT_RESULTS_SCHEMA: one row per proficiency-testing result: lab_code, scheme_code (the PT
  scheme / analyte programme), round_code, round_date (Date), item_code, z (z or z' score,
  ISO 13528 9.4/9.5).
- TIMELINESS_SCHEMA: one row per supervision test report: lab_code, report_code, due_on,
  reported_on (Date; null = not yet reported, late if due before as_of).
- COMPLAINTS_SCHEMA: lab_code, complaint_code, received_on (Date), upheld (Boolean; only upheld
  complaints count).
- AUDIT_FINDINGS_SCHEMA: lab_code, finding_code, found_on (Date), severity ("major" | "minor" |
  "observation"; observations are counted nowhere).
- REPORT_FINDINGS_SCHEMA: lab_code, finding_code, decided_on (Date), kind ("inaccurate" =
  不实检验检测报告, SAMR Order 39 art. 13 | "falsified" = 虚假检验检测报告,
  art. 14).

:func:`summarise_indicators` reduces them to one row per lab (INDICATOR_SCHEMA), counting events
dated within policy.indicators.window_days before as_of (inclusive), never after it; that frame
is what scoring.grading.grade takes as ``indicators``.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from scoring.policy import Policy

__all__ = [
    "AUDIT_FINDINGS_SCHEMA",
    "COMPLAINTS_SCHEMA",
    "INDICATOR_SCHEMA",
    "PT_RESULTS_SCHEMA",
    "REPORT_FINDINGS_SCHEMA",
    "TIMELINESS_SCHEMA",
    "empty_indicators",
    "pt_rounds",
    "summarise_indicators",
]

PT_RESULTS_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(),
    "scheme_code": pl.String(),
    "round_code": pl.String(),
    "round_date": pl.Date(),
    "item_code": pl.String(),
    "z": pl.Float64(),
}
TIMELINESS_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(),
    "report_code": pl.String(),
    "due_on": pl.Date(),
    "reported_on": pl.Date(),
}
COMPLAINTS_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(),
    "complaint_code": pl.String(),
    "received_on": pl.Date(),
    "upheld": pl.Boolean(),
}
AUDIT_FINDINGS_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(),
    "finding_code": pl.String(),
    "found_on": pl.Date(),
    "severity": pl.String(),
}
REPORT_FINDINGS_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(),
    "finding_code": pl.String(),
    "decided_on": pl.Date(),
    "kind": pl.String(),
}

# One row per lab. Counts are 0 (never null) for labs that appear in any input; late_share is
# null for a lab without reports; pt_unsuccessful_scheme / _on are null unless unsuccessful.
INDICATOR_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(),
    "pt_results": pl.Int64(),
    "pt_questionable_results": pl.Int64(),
    "pt_unsatisfactory_results": pl.Int64(),
    "pt_rounds": pl.Int64(),
    "pt_unsatisfactory_rounds": pl.Int64(),
    "pt_unsuccessful": pl.Boolean(),
    "pt_unsuccessful_scheme": pl.String(),
    "pt_unsuccessful_on": pl.Date(),
    "reports": pl.Int64(),
    "late_reports": pl.Int64(),
    "late_share": pl.Float64(),
    "upheld_complaints": pl.Int64(),
    "audit_major": pl.Int64(),
    "audit_minor": pl.Int64(),
    "inaccurate_reports": pl.Int64(),
    "falsified_reports": pl.Int64(),
}

_COUNTS = [
    "pt_results", "pt_questionable_results", "pt_unsatisfactory_results", "pt_rounds",
    "pt_unsatisfactory_rounds", "reports", "late_reports", "upheld_complaints", "audit_major",
    "audit_minor", "inaccurate_reports", "falsified_reports",
]


def empty_indicators() -> pl.DataFrame:
    return pl.DataFrame(schema=INDICATOR_SCHEMA)


def _in_window(col: str, as_of: dt.date, days: int) -> pl.Expr:
    start = as_of - dt.timedelta(days=days - 1)
    return (pl.col(col) <= as_of) & (pl.col(col) >= start)


def pt_rounds(pt: pl.LazyFrame, policy: Policy) -> pl.LazyFrame:
    """PT rounds per lab and scheme with the CLIA-style rule over rounds.

    A result is questionable when questionable_z <= |z| < unsatisfactory_z and unsatisfactory
    when |z| >= unsatisfactory_z (null z: neither). A round is unsatisfactory when its share of
    unsatisfactory results is >= pt_round_unsatisfactory_share. Rounds of one (lab, scheme) are
    ordered by round_date then round_code; `unsuccessful` is true at a round when at least
    pt_unsuccessful_count of the last pt_unsuccessful_window rounds (this one included) are
    unsatisfactory — with the defaults, 2 of 3, which covers "2 consecutive" (42 CFR 493.803).
    Columns: lab_code, scheme_code, round_code, round_date, results, questionable, unsatisfactory,
    round_unsatisfactory, unsatisfactory_in_window, unsuccessful.
    """
    ip = policy.indicators
    az = pl.col("z").abs()
    return (
        pt.group_by("lab_code", "scheme_code", "round_code")
        .agg(
            round_date=pl.col("round_date").max(),
            results=pl.len().cast(pl.Int64),
            questionable=((az >= ip.pt_questionable_z) & (az < ip.pt_unsatisfactory_z))
            .sum()
            .cast(pl.Int64),
            unsatisfactory=(az >= ip.pt_unsatisfactory_z).sum().cast(pl.Int64),
        )
        .with_columns(
            round_unsatisfactory=(
                pl.col("unsatisfactory") / pl.col("results") >= ip.pt_round_unsatisfactory_share
            )
        )
        .sort("lab_code", "scheme_code", "round_date", "round_code")
        .with_columns(
            unsatisfactory_in_window=pl.col("round_unsatisfactory")
            .cast(pl.Int64)
            .rolling_sum(ip.pt_unsuccessful_window, min_samples=1)
            .over("lab_code", "scheme_code")
        )
        .with_columns(unsuccessful=pl.col("unsatisfactory_in_window") >= ip.pt_unsuccessful_count)
    )


def summarise_indicators(
    *,
    policy: Policy,
    as_of: dt.date,
    pt: pl.LazyFrame | None = None,
    timeliness: pl.LazyFrame | None = None,
    complaints: pl.LazyFrame | None = None,
    audits: pl.LazyFrame | None = None,
    report_findings: pl.LazyFrame | None = None,
) -> pl.DataFrame:
    """One row per lab (INDICATOR_SCHEMA) from whichever inputs are given; sorted by lab_code.

    PT rounds dated in the window are judged by :func:`pt_rounds` (the 2-of-3 rule looks only at
    rounds in the window); pt_unsuccessful_on is the first round date at which the rule fired,
    pt_unsuccessful_scheme that round's scheme. A report is late when reported_on > due_on, or
    when still unreported and due_on < as_of; reports count by due_on in the window. No input
    at all gives an empty frame.
    """
    ip = policy.indicators
    days = ip.window_days
    parts: list[pl.LazyFrame] = []
    if pt is not None:
        rounds = pt_rounds(pt.filter(_in_window("round_date", as_of, days)), policy)
        parts.append(
            rounds.group_by("lab_code").agg(
                pt_results=pl.col("results").sum(),
                pt_questionable_results=pl.col("questionable").sum(),
                pt_unsatisfactory_results=pl.col("unsatisfactory").sum(),
                pt_rounds=pl.len().cast(pl.Int64),
                pt_unsatisfactory_rounds=pl.col("round_unsatisfactory").sum().cast(pl.Int64),
                pt_unsuccessful=pl.col("unsuccessful").any(),
                pt_unsuccessful_on=pl.col("round_date").filter(pl.col("unsuccessful")).min(),
                pt_unsuccessful_scheme=pl.col("scheme_code")
                .filter(pl.col("unsuccessful"))
                .sort_by(pl.col("round_date").filter(pl.col("unsuccessful")))
                .first(),
            )
        )
    if timeliness is not None:
        late = (pl.col("reported_on") > pl.col("due_on")) | (
            pl.col("reported_on").is_null() & (pl.col("due_on") < as_of)
        )
        parts.append(
            timeliness.filter(_in_window("due_on", as_of, days))
            .group_by("lab_code")
            .agg(reports=pl.len().cast(pl.Int64), late_reports=late.sum().cast(pl.Int64))
        )
    if complaints is not None:
        parts.append(
            complaints.filter(_in_window("received_on", as_of, days))
            .group_by("lab_code")
            .agg(upheld_complaints=pl.col("upheld").fill_null(False).sum().cast(pl.Int64))
        )
    if audits is not None:
        parts.append(
            audits.filter(_in_window("found_on", as_of, days))
            .group_by("lab_code")
            .agg(
                audit_major=(pl.col("severity") == "major").sum().cast(pl.Int64),
                audit_minor=(pl.col("severity") == "minor").sum().cast(pl.Int64),
            )
        )
    if report_findings is not None:
        parts.append(
            report_findings.filter(_in_window("decided_on", as_of, days))
            .group_by("lab_code")
            .agg(
                inaccurate_reports=(pl.col("kind") == "inaccurate").sum().cast(pl.Int64),
                falsified_reports=(pl.col("kind") == "falsified").sum().cast(pl.Int64),
            )
        )
    if not parts:
        return empty_indicators()
    labs = pl.concat([p.select("lab_code") for p in parts]).unique()
    out = labs
    for p in parts:
        out = out.join(p, on="lab_code", how="left")
    out = out.with_columns(
        [
            pl.lit(None, dtype=t).alias(c)
            for c, t in INDICATOR_SCHEMA.items()
            if c not in out.collect_schema()
        ]
    )
    return (
        out.with_columns(
            pl.col(_COUNTS).fill_null(0),
            pl.col("pt_unsuccessful").fill_null(False),
        )
        .with_columns(
            late_share=pl.when(pl.col("reports") > 0).then(
                pl.col("late_reports") / pl.col("reports")
            )
        )
        .select([pl.col(c).cast(t) for c, t in INDICATOR_SCHEMA.items()])
        .sort("lab_code")
        .collect()
    )
