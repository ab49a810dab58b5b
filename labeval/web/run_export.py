"""A run's grades as the pages show them and as files: one line per lab (computed class, the
override in force today and the class that applies, the main reason in the reader's language),
built once as a polars DataFrame and written as CSV, XLSX or Parquet."""

from __future__ import annotations

import io
from datetime import date

import asyncpg
import msgspec
import polars as pl

from labeval.db.labs import lab_names
from labeval.grading.overrides import effective_grades
from labeval.models import GradingRun, Override
from labeval.render import main_reasons
from labeval.web.i18n import Translator
from labeval.web.reasons import reason_text


class GradeLine(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    lab_name: str | None
    computed_class: str
    score: float | None
    effective_class: str
    override: Override | None
    change: str
    previous_class: str | None
    pairs: int
    # The rule(s) that weighed most (labeval.render.main_reasons), and the same in plain words.
    main_rule: str | None
    main_reason: str


async def grade_lines(conn: asyncpg.Connection, run: GradingRun, t: Translator) -> list[GradeLine]:
    """The run's grades with today's overrides (as the API's /runs/{id}/grades serves them)."""
    grades = await effective_grades(conn, run.grades)
    names = await lab_names(conn, [g.lab_code for g in grades])
    lines = []
    for g in grades:
        main = main_reasons(g.reasons)
        lines.append(GradeLine(
            lab_code=g.lab_code, lab_name=names.get(g.lab_code), computed_class=g.class_, score=g.score,
            effective_class=g.effective_class, override=g.override, change=g.change,
            previous_class=g.previous_class, pairs=g.pairs,
            main_rule="; ".join(r.rule for r in main) or None,
            main_reason="; ".join(reason_text(t, r) for r in main) or t("Nothing deducted from the starting score"),
        ))
    return lines


# Column order and types of every export (the same in the three formats).
EXPORT_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(), "lab_name": pl.String(), "computed_class": pl.String(), "score": pl.Float64(),
    "effective_class": pl.String(), "override_id": pl.Int64(), "override_until": pl.Date(), "change": pl.String(),
    "previous_class": pl.String(), "pairs": pl.Int64(), "main_rule": pl.String(), "main_reason": pl.String(),
    "policy_name": pl.String(), "policy_version": pl.String(), "policy_hash": pl.String(), "run_id": pl.Int64(),
    "as_of": pl.Date(),
}


def grades_frame(run: GradingRun, lines: list[GradeLine]) -> pl.DataFrame:
    rows: list[dict[str, str | float | int | date | None]] = [
        {"lab_code": g.lab_code, "lab_name": g.lab_name, "computed_class": g.computed_class, "score": g.score,
         "effective_class": g.effective_class, "override_id": g.override.override_id if g.override else None,
         "override_until": g.override.valid_until if g.override else None, "change": g.change,
         "previous_class": g.previous_class, "pairs": g.pairs, "main_rule": g.main_rule,
         "main_reason": g.main_reason, "policy_name": run.policy_name, "policy_version": run.policy_version,
         "policy_hash": run.policy_hash, "run_id": run.run_id, "as_of": run.as_of}
        for g in lines
    ]
    return pl.DataFrame(rows, schema=EXPORT_SCHEMA)


def to_csv(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    # With the UTF-8 byte-order mark, Excel (which otherwise reads a CSV in the system's ANSI code
    # page, GBK on a Chinese Windows) recognises UTF-8 and shows the labs' Chinese names right.
    frame.write_csv(buf, include_bom=True)
    return buf.getvalue()


def to_xlsx(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_excel(buf, worksheet="grades", autofit=True)
    return buf.getvalue()


def to_parquet(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


# Suffix → (writer, media type).
FORMATS = {
    "csv": (to_csv, "text/csv; charset=utf-8"),
    "xlsx": (to_xlsx, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    "parquet": (to_parquet, "application/vnd.apache.parquet"),
}
