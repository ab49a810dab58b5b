"""Terminal and JSON renderings of a grading run."""

from __future__ import annotations

import msgspec
from rich.table import Table

from labeval.models import GradingRun

ROMAN = {"I": "Ⅰ", "II": "Ⅱ", "III": "Ⅲ", "IV": "Ⅳ"}
_encoder = msgspec.json.Encoder()


def run_json(run: GradingRun) -> bytes:
    return _encoder.encode(run)


def grade_table(run: GradingRun, *, planted: dict[str, str] | None = None) -> Table:
    planted = planted or {}
    table = Table(
        title=f"grading run {run.run_id} · as of {run.as_of} · policy {run.policy_name} v{run.policy_version} "
        f"({run.policy_hash[:12]}) · {run.n_pairs} pairs"
    )
    for col in ("lab", "class", "score", "prev", "change", "pairs", "main reason"):
        table.add_column(col)
    if planted:
        table.add_column("planted")
    order = {"IV": 0, "III": 1, "II": 2, "I": 3}
    for g in sorted(run.grades, key=lambda g: (order[g.class_], g.score if g.score is not None else 0, g.lab_code)):
        main = next((r for r in g.reasons if r.get("effect") not in (None, "", "none")), g.reasons[0] if g.reasons else {})
        style = {"IV": "bold red", "III": "red", "II": "", "I": "green"}[g.class_]
        row = [
            g.lab_code, f"[{style}]{ROMAN[g.class_]}[/]" if style else ROMAN[g.class_],
            "" if g.score is None else f"{g.score:.1f}", ROMAN.get(g.previous_class or "", "—"), g.change,
            str(g.pairs), str(main.get("rule", "")) + (f": {main.get('effect')}" if main.get("effect") else ""),
        ]
        if planted:
            row.append(planted.get(g.lab_code, ""))
        table.add_row(*row)
    return table
