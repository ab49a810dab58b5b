"""Terminal and JSON renderings of a grading run."""

from __future__ import annotations

import msgspec
from rich.table import Table

from labeval.models import GradingRun
from scoring.classes import CLASSES, DISPLAY, rank
from scoring.grading import Reason

ROMAN = DISPLAY
_encoder = msgspec.json.Encoder()


def run_json(run: GradingRun) -> bytes:
    return _encoder.encode(run)


def _deduction(effect: str) -> float:
    try:
        return float(effect.removeprefix("deduct "))
    except ValueError:
        return 0.0


def main_reasons(reasons: list[Reason]) -> list[Reason]:
    """The reasons that weighed most: every cap that fired, else the largest deduction, else a
    hold, else the identifiability reason (the lab cannot be judged from its pairs: arbitration);
    none when nothing moved the lab off the starting score. The terminal tables and the pages
    (in the reader's language) say the same reasons."""
    caps = [r for r in reasons if r.effect.startswith("cap ")]
    if caps:
        return caps
    deductions = [(r, _deduction(r.effect)) for r in reasons if r.effect.startswith("deduct ")]
    deductions = [(r, d) for r, d in deductions if d > 0]
    if deductions:
        return [max(deductions, key=lambda x: x[1])[0]]
    held = [r for r in reasons if r.rule in ("insufficient_evidence", "hysteresis")]
    if held:
        return held[:1]
    return [r for r in reasons if r.rule == "identifiability"][:1]


def _main_reason(reasons: list[Reason]) -> str:
    """main_reasons() as one line of the terminal tables."""
    def text(r: Reason) -> str:
        shown = f" ({r.value:.3g})" if r.value is not None else ""
        return f"{r.rule}{shown}: {r.effect}"

    main = main_reasons(reasons)
    if not main:
        return "—"
    if main[0].rule == "identifiability":
        return "not identifiable: send to arbitration"
    return "; ".join(text(r) for r in main)


# Rows of a run's table in the terminal by default: rich lays a table out from every cell, and the
# table of 3 000 labs added about 1.5 s to a 7 s `labeval grade`; the stored run lists them all.
TABLE_ROWS = 100


def grade_table(run: GradingRun, *, planted: dict[str, str] | None = None, limit: int | None = None) -> Table:
    """The run's labs, lowest class and score first. With `limit`, only the first `limit` labs
    and every planted one (a demo's planted lab graded Ⅰ is a miss worth seeing); the caption
    then counts the classes and says how to see the rest."""
    planted = planted or {}
    table = Table(
        title=f"grading run {run.run_id} · as of {run.as_of} · policy {run.policy_name} v{run.policy_version} "
        f"({run.policy_hash[:12]}) · {run.n_pairs} pairs"
    )
    for col in ("lab", "class", "score", "prev", "change", "pairs", "main reason"):
        table.add_column(col)
    if planted:
        table.add_column("planted")
    order = {label: -rank(label) for label in CLASSES}
    ranked = sorted(run.grades, key=lambda g: (order[g.class_], g.score if g.score is not None else 0, g.lab_code))
    shown = ranked if limit is None else [g for i, g in enumerate(ranked) if i < limit or g.lab_code in planted]
    for g in shown:
        main = _main_reason(g.reasons)
        style = {"IV": "bold red", "III": "red", "II": "", "I": "green"}[g.class_]
        row = [
            g.lab_code, f"[{style}]{ROMAN[g.class_]}[/]" if style else ROMAN[g.class_],
            "" if g.score is None else f"{g.score:.1f}", ROMAN.get(g.previous_class or "", "—"), g.change,
            str(g.pairs), main,
        ]
        if planted:
            row.append(planted.get(g.lab_code, ""))
        table.add_row(*row)
    if len(shown) < len(ranked):
        counts: dict[str, int] = {}
        for g in ranked:
            counts[g.class_] = counts.get(g.class_, 0) + 1
        by_class = ", ".join(f"{ROMAN[c]} {counts[c]}" for c in sorted(counts, key=lambda c: -order[c]))
        table.caption = (
            f"{len(ranked)} labs ({by_class}); the {len(shown)} shown are the lowest"
            f"{' and every planted one' if planted else ''}. "
            f"Every lab: --all, or `labeval runs show {run.run_id}`."
        )
    return table
