"""One lab's page (class, reasons, override, history, charts, pairs), its printable report, and a
sample's page (every result of the sample side by side).

The numbers come from the functions the API uses (labeval.db.labs, labeval.grading.overrides,
pair_view, sample_view) and from labeval.grading.lab_charts for the charts; nothing here
queries on its own."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.response import Redirect, Template

from labeval.db import labs as q
from labeval.db import overrides
from labeval.db.overview import categories
from labeval.grading.lab_charts import lab_charts
from labeval.grading.overrides import OverrideRefused, set_override, today_utc
from labeval.grading.pair_view import pair_views
from labeval.grading.sample_view import sample_view
from labeval.web.lab_figures import lab_figures, outcome_labels
from labeval.web.reasons import reason_text
from labeval.web.session import OFFICER, VIEW, may
from labeval.web.templating import page, request_translator
from scoring.classes import CLASSES, DISPLAY
from scoring.policy import Policy

# A busy lab has thousands of pairs in its window; the page lists the first ones (by pair id)
# and says how many there are; the API pages through all of them.
PAIRS_SHOWN = 300
# The printed report lists the pairs that did not agree among all of them (a bound, not a page).
REPORT_PAIRS = 100_000
_FORM = Body(media_type=RequestEncodingType.URL_ENCODED)


class OverrideForm(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    class_code: Annotated[str, msgspec.Meta(max_length=10)] = ""
    reason: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    until: Annotated[str, msgspec.Meta(max_length=20)] = ""


def _form_errors(t: Any, form: OverrideForm, today: date) -> tuple[dict[str, str], date | None]:
    """Field → message for what the form got wrong, and the parsed date."""
    errors: dict[str, str] = {}
    if form.class_code not in CLASSES:
        errors["class_code"] = t("Choose a class.")
    if not form.reason.strip():
        errors["reason"] = t("Give the reason for the override.")
    until = None
    try:
        until = date.fromisoformat(form.until.strip())
    except ValueError:
        errors["until"] = t("Give the last day the override applies (a date).")
    else:
        if until < today:
            errors["until"] = t("The last day cannot be in the past (today is {today}, UTC).", today=t.date(today))
    return errors, until


async def _lab_context(request: Request, conn: asyncpg.Connection, code: str,
                       pairs_shown: int = PAIRS_SHOWN) -> dict[str, Any]:
    """Everything the lab page and the report show (the first `pairs_shown` pairs)."""
    t = request_translator(request)
    lab = await q.get_lab(conn, code)
    override = (await overrides.active(conn, today_utc())).get(code)
    latest = lab.history[0] if lab.history else None
    reasons = [reason_text(t, r) for r in latest.reasons] if latest else []
    names = dict(await categories(conn))
    data = await lab_charts(conn, code, cache=request.app.state.get("lab_series"))
    figures = lab_figures(data, t, group_names=names) if data else None
    window = await q.latest_window(conn, code)
    pairs, total = [], 0
    if window is not None:
        rows = await q.lab_pairs(conn, code, window, after=None, limit=pairs_shown + 1)
        pairs = pair_views(rows[:pairs_shown], msgspec.convert(window.policy, Policy), lab_code=code)
        total = len(data.differences) if data else len(rows)
    return {
        "lab": lab, "override": override, "effective": override.class_ if override else lab.current_class,
        "latest": latest, "reasons": reasons, "figures": figures, "charts": data, "window": window,
        "pairs": pairs, "pairs_total": total, "pairs_more": total > len(pairs), "outcomes": outcome_labels(t),
        "display": DISPLAY, "classes": CLASSES, "category_names": names,
    }


class LabPageController(Controller):
    path = "/labs"
    include_in_schema = False
    opt = {"session_roles": VIEW}

    @get("/{code:str}")
    async def lab(self, request: Request, conn: NamedDependency[asyncpg.Connection], code: FromPath[str]) -> Template:
        context = await _lab_context(request, conn, code)
        return page(request, "lab.html", **context, may_override=may(request, OFFICER), form=OverrideForm(),
                    errors={}, saved=request.query_params.get("saved") == "1", today=today_utc())

    @post("/{code:str}/override", opt={"session_roles": OFFICER}, status_code=303)
    async def override(self, request: Request, conn: NamedDependency[asyncpg.Connection], code: FromPath[str],
                       data: Annotated[OverrideForm, _FORM]) -> Response:
        t = request_translator(request)
        today = today_utc()
        await q.lab_exists(conn, code)
        errors, until = _form_errors(t, data, today)
        if not errors and until is not None:
            try:
                await set_override(conn, lab_code=code, class_=data.class_code, reason=data.reason,
                                   valid_until=until, set_by=request.scope["user"].actor, today=today)
            except OverrideRefused as exc:
                errors["form"] = t("The override was refused: {why}", why=str(exc))
            else:
                return Redirect(f"/labs/{code}?saved=1#override", status_code=303)
        context = await _lab_context(request, conn, code)
        return page(request, "lab.html", status_code=422, **context, may_override=True, form=data, errors=errors,
                    saved=False, today=today)

    @get("/{code:str}/report")
    async def report(self, request: Request, conn: NamedDependency[asyncpg.Connection], code: FromPath[str]) -> Template:
        # The report lists every pair that did not agree, so it reads the whole window.
        context = await _lab_context(request, conn, code, pairs_shown=REPORT_PAIRS)
        return page(request, "lab_report.html", **context, today=today_utc())


class SamplePageController(Controller):
    path = "/samples"
    include_in_schema = False
    opt = {"session_roles": VIEW}

    @get("/{code:str}")
    async def sample(self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection],
                     code: FromPath[str]) -> Template:
        t = request_translator(request)
        view = await sample_view(conn, code, state.policy, today_utc())
        return page(request, "sample.html", sample=view, outcomes=outcome_labels(t), display=DISPLAY)
