"""The dashboard: classes now and at the run before, who moved and why, who is flagged, the last
and the next run, imports with rejects."""

from __future__ import annotations

import asyncpg
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Template

from labeval.db import overview
from labeval.grading.diff import diff_runs
from labeval.grading.overrides import today_utc
from labeval.scheduler import next_grading_run
from labeval.web.charts_basic import grouped_bars
from labeval.web.reasons import reason_text
from labeval.web.session import VIEW
from labeval.web.templating import page, request_translator
from scoring.classes import CLASSES, DISPLAY
from scoring.grading import STATISTICAL_CAPS


class DashboardController(Controller):
    path = "/"
    include_in_schema = False
    opt = {"session_roles": VIEW}

    @get("/")
    async def dashboard(self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection]) -> Template:
        t = request_translator(request)
        runs = await overview.last_runs(conn, 2)
        last = runs[0] if runs else None
        previous = runs[1] if len(runs) > 1 else None
        now = await overview.class_counts(conn, last.run_id) if last else {}
        before = await overview.class_counts(conn, previous.run_id) if previous else {}
        effective = await overview.effective_class_counts(conn, today_utc())
        moved = (await diff_runs(conn, previous.run_id, last.run_id)).moved if last and previous else []
        flagged = await overview.flagged(conn, last.run_id, sorted(STATISTICAL_CAPS)) if last else []
        distribution = [
            {"class": c, "label": DISPLAY[c], "now": now.get(c, 0), "before": before.get(c, 0),
             "effective": effective.get(c, 0)}
            for c in CLASSES
        ]
        moves = [
            {"code": m.lab_code, "from": DISPLAY.get(m.class_a or "", "—"), "to": DISPLAY.get(m.class_b or "", "—"),
             "rule": m.rule,
             "why": next((reason_text(t, r) for r in m.reasons_b if r.rule == m.rule), reason_text(t, None, m.rule))}
            for m in moved
        ]
        chart = grouped_bars(
            [d["label"] for d in distribution],
            [(t("Run before"), [d["before"] for d in distribution]), (t("Last run"), [d["now"] for d in distribution])],
            title=t("Labs per class"), x_title=t("Class"), y_title=t("Labs"), number=t.number,
        )
        return page(
            request, "dashboard.html", distribution_chart=chart, last=last, previous=previous, distribution=distribution,
            moves=moves, flagged=flagged, next_run=next_grading_run(state),
            imports=await overview.imports_with_rejects(conn), display=DISPLAY,
        )
