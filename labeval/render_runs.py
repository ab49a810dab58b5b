"""Terminal renderings of run history, run diffs, verify reports, overrides, events and retest plans."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from labeval.db.events import GradeEvent
from labeval.grading.diff import RunDiff
from labeval.grading.plans import PlanVerification, RetestPlan
from labeval.grading.verify import VerifyReport
from labeval.models import EffectiveGrade, GradingRun, Override
from labeval.render import ROMAN, _main_reason
from scoring.classes import rank


def _roman(c: str | None) -> str:
    return ROMAN.get(c or "", "—")


def runs_table(rows: list[GradingRun]) -> Table:
    table = Table(title="grading runs")
    for col in ("run", "status", "as of", "by", "policy", "pairs", "classes", "started", "input"):
        table.add_column(col)
    for r in rows:
        classes = " ".join(f"{_roman(k)}:{v}" for k, v in sorted(r.class_counts.items(), key=lambda kv: rank(kv[0])))
        table.add_row(
            str(r.run_id), r.status + (f" ({r.error})" if r.error and r.status != "succeeded" else ""),
            str(r.as_of), f"{r.trigger}{' ' + r.actor if r.actor else ''}",
            f"{r.policy_version} {r.policy_hash[:8]}", str(r.n_pairs), classes,
            f"{r.started_at:%Y-%m-%d %H:%M}" if r.started_at else "", (r.input_digest or "")[:8],
        )
    return table


def run_detail(run: GradingRun, grades: list[EffectiveGrade]) -> Table:
    timings = ", ".join(f"{k} {run.timings[k]:g}" for k in ("read_s", "compute_s", "write_s") if k in run.timings)
    table = Table(
        title=f"grading run {run.run_id} · {run.status} · as of {run.as_of} · window {run.window_start}"
        f"–{run.window_end} · {run.trigger}{' by ' + run.actor if run.actor else ''} · policy "
        f"{run.policy_name} v{run.policy_version} ({run.policy_hash[:12]}) · code {run.code_version} · "
        f"{run.n_pairs} pairs · input {(run.input_digest or '')[:12]} · {timings}"
    )
    for col in ("lab", "computed", "override", "effective", "score", "prev", "change", "main reason"):
        table.add_column(col)
    for g in grades:
        o = g.override
        table.add_row(
            g.lab_code, _roman(g.class_),
            f"{_roman(o.class_)} until {o.valid_until} ({o.set_by}: {o.reason})" if o else "",
            _roman(g.effective_class), "" if g.score is None else f"{g.score:.1f}",
            _roman(g.previous_class), g.change, _main_reason(g.reasons),
        )
    return table


def diff_table(diff: RunDiff) -> Table:
    table = Table(title=f"run {diff.run_a} → run {diff.run_b}: {len(diff.moved)} of {diff.labs_compared} labs moved")
    for col in ("lab", f"run {diff.run_a}", f"run {diff.run_b}", "rule", f"reason in {diff.run_a}",
                f"reason in {diff.run_b}"):
        table.add_column(col)
    for m in diff.moved:
        table.add_row(
            m.lab_code, f"{_roman(m.class_a)} {'' if m.score_a is None else f'{m.score_a:.1f}'}",
            f"{_roman(m.class_b)} {'' if m.score_b is None else f'{m.score_b:.1f}'}", m.rule,
            _main_reason(m.reasons_a), _main_reason(m.reasons_b),
        )
    return table


def verify_text(report: VerifyReport) -> str:
    what = "the data as the run read it" if report.data == "read_time" else "today's data"
    if report.identical:
        return (f"run {report.run_id}: identical — {report.labs} labs recomputed from {what} "
                f"(input digest {report.recomputed_input_digest[:12]})")
    lines = [f"run {report.run_id}: {len(report.differences)} labs differ when recomputed from {what} "
             f"(input digest stored {(report.stored_input_digest or '')[:12]}, now "
             f"{report.recomputed_input_digest[:12]})"]
    for d in report.differences:
        lines.append(
            f"  {d.lab_code}: {', '.join(d.fields)} — stored {_roman(d.stored_class)} {d.stored_score}, "
            f"recomputed {_roman(d.recomputed_class)} {d.recomputed_score}"
        )
    return "\n".join(lines)


def overrides_table(rows: list[Override]) -> Table:
    table = Table(title="overrides")
    for col in ("id", "lab", "class", "valid until", "reason", "set by", "set at", "state"):
        table.add_column(col)
    for o in rows:
        state = ("revoked by " + (o.revoked_by or "") + f": {o.revoke_reason}" if o.revoked_at
                 else "expired" if o.expired_at else "open")
        table.add_row(str(o.override_id), o.lab_code, _roman(o.class_), str(o.valid_until), o.reason, o.set_by,
                      f"{o.set_at:%Y-%m-%d %H:%M}", state)
    return table


def events_table(rows: list[GradeEvent]) -> Table:
    table = Table(title="grade-change events")
    for col in ("seq", "lab", "old", "computed", "effective", "cause", "run", "override", "at"):
        table.add_column(col)
    for e in rows:
        table.add_row(str(e.seq), e.lab_code, _roman(e.old_class), _roman(e.new_class), _roman(e.effective_class),
                      e.cause, str(e.run_id or ""), str(e.override_id or ""), f"{e.created_at:%Y-%m-%d %H:%M:%S}")
    return table


def plan_tables(plan: RetestPlan) -> Group:
    """A retest plan: the categories, the retests per lab and why (samples: --json or export)."""
    p = plan.power
    cats = Table(title=(
        f"retest plan {plan.plan_id} · budget {plan.budget} · {plan.period_start} – {plan.period_end} · "
        f"seed {plan.seed} · run {plan.run_id if plan.run_id is not None else '—'} · "
        f"{p.required_pairs} pairs per lab detect {p.bad_rate:.0%} against {p.baseline_rate:.0%} "
        f"(α {p.alpha:g}, power {p.achieved_power:.2f})"
    ))
    for col in ("rank", "category", "score", "disc ×", "rev ×", "fail ×", "pairs/lab", "candidates", "chosen"):
        cats.add_column(col)
    for r in plan.ranking:
        cats.add_row(str(r.rank), r.category_code, f"{r.score:.3f}", f"{r.discrepancy_ratio:.2f}",
                     f"{r.reversal_ratio:.2f}", f"{r.fail_ratio:.2f}", f"{r.pairs_per_lab:.1f}", str(r.candidates),
                     "yes" if r.chosen else "")
    labs = Table(title=f"{plan.retests_planned} retests planned, {plan.unallocated} of the budget unallocated")
    for col in ("lab", "pairs", "need", "priority", "cap", "candidates", "retests", "why"):
        labs.add_column(col)
    for a in sorted(plan.allocation, key=lambda a: (-a.retests, a.lab_code)):
        labs.add_row(a.lab_code, str(a.pairs), str(a.need), f"{a.priority:.3f}", str(a.cap), str(a.candidates),
                     str(a.retests), "; ".join(a.reasons))
    return Group(cats, labs)


def plan_verify_text(report: PlanVerification) -> str:
    if report.verified:
        return f"retest plan {report.plan_id}: verified (seed {report.seed} draws the stored samples)"
    return (f"retest plan {report.plan_id}: NOT verified; the stored samples of "
            f"{', '.join(report.differing_labs)} are not what seed {report.seed} draws")
