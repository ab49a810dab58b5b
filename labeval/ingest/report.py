"""What an import reports back: counts and the first rejects."""

from __future__ import annotations

import msgspec

from labeval.db.imports import Reject

# The report carries this many rejects; the database keeps all of them.
REPORT_REJECTS = 100


class ImportReport(msgspec.Struct, kw_only=True, frozen=True):
    """Counts of one import. rows = accepted + rejected + duplicates.

    accepted: rows written (new rows and corrections); corrections is the part of accepted that
    replaced an existing row with a different value; duplicates: rows identical to what the
    database already holds (nothing written); rejected: rows refused (reasons in rejects).
    """

    import_id: int
    kind: str
    file_name: str | None
    format: str | None
    encoding: str | None
    checksum: str | None
    rows: int
    accepted: int
    rejected: int
    duplicates: int
    corrections: int
    rejects: list[Reject]
    # Number of reject lines in the database (a row may have several).
    reject_lines: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """CLI convention: 0 all rows accepted (or duplicates), 3 some rows rejected."""
        return 3 if self.rejected else 0


_encoder = msgspec.json.Encoder()


def report_json(report: ImportReport) -> bytes:
    return _encoder.encode(report)


def render(report: ImportReport, *, max_rejects: int = 20) -> str:
    """A human summary for the terminal."""
    head = (
        f"import #{report.import_id} {report.kind} from {report.file_name or '-'}"
        f" ({report.format or '?'}{', ' + report.encoding if report.encoding else ''})"
    )
    lines = [
        head,
        f"  rows {report.rows}: accepted {report.accepted} (corrections {report.corrections}),"
        f" duplicates {report.duplicates}, rejected {report.rejected}",
    ]
    if report.seconds:
        rate = report.rows / report.seconds if report.seconds > 0 else 0.0
        lines.append(f"  {report.seconds:.2f} s, {rate:,.0f} rows/s")
    if report.rejects:
        lines.append("  rejects (row, column, value: reason):")
        for r in report.rejects[:max_rejects]:
            lines.append(f"    row {r.row}, {r.column or '-'}, {r.value!r}: {r.reason}")
        more = report.reject_lines - min(len(report.rejects), max_rejects)
        if more > 0:
            lines.append(f"    … {more} more (all kept: labeval imports rejects {report.import_id})")
    return "\n".join(lines)
