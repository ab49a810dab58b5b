"""双随机 draws and retest plans on the officers' pages: list, make (the same request the API and
the CLI take, through the same functions), read, verify and download.

Who may do what: every reader of the pages (docs/web.md) reads draws and plans and may ask for a
verification (it changes nothing); making a draw or a plan takes the API's write roles (officer,
admin). Readers who may not make one see no form.
"""

from __future__ import annotations

import io
import re
from typing import Any

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect, Template

from labeval.api.paging import cut
from labeval.db import draws as draw_q
from labeval.db import overview
from labeval.db import plans as plan_q
from labeval.grading.draws import NotEnoughLabs
from labeval.grading.overrides import today_utc
from labeval.grading.plans import PlanRefused, PlanRequest, create_plan, export_bytes, get_plan, verify_plan
from labeval.grading.selection import (
    Draw,
    DrawRequest,
    UnknownCategory,
    as_draw,
    draw_frame,
    excluded_candidates,
    make_draw,
    pool_probabilities,
    verify_draw,
)
from labeval.web.i18n import Translator
from labeval.web.session import OFFICER, VIEW, may
from labeval.web.templating import page, request_translator
from scoring.classes import DISPLAY

PAGE_SIZE = 50
# "17" or "17.csv": one path segment, because litestar routes a whole segment to a parameter.
_REF = re.compile(r"(\d{1,18})(\.csv)?")
# Lab codes in a text field: separated by commas (also the Chinese ones), semicolons or spaces.
_SPLIT = re.compile(r"[\s,;，、；]+")
_AT = re.compile(r"at `\$\.(\w+)")
CSV_MEDIA = "text/csv; charset=utf-8"


def _ref(ref: str) -> tuple[int, bool]:
    m = _REF.fullmatch(ref)
    if m is None:
        raise NotFoundException()
    return int(m.group(1)), m.group(2) is not None


def _before(request: Request) -> int | None:
    raw = request.query_params.get("before", "")
    return int(raw) if raw.isdigit() and len(raw) <= 18 else None


def _csv(body: bytes, filename: str) -> Response[bytes]:
    return Response(body, media_type=CSV_MEDIA,
                    headers={"content-disposition": f'attachment; filename="{filename}"'})


def _field_error(t: Translator, exc: msgspec.ValidationError, messages: dict[str, str]) -> str:
    """The form field a validation error is about, said in the reader's language."""
    m = _AT.search(str(exc))
    return messages.get(m.group(1) if m else "", t("The form could not be read; check every field."))


def _draw_messages(t: Translator) -> dict[str, str]:
    return {
        "product_category": t("Choose a product category."),
        "count": t("The number of labs is a whole number from 1 to 1000."),
        "exclude_labs": t("Lab codes are separated by commas or spaces."),
        "exclude_provinces": t("Choose provinces from the list."),
        "seed": t("The seed is a whole number from 0 to 9223372036854775807, or empty."),
    }


def _plan_messages(t: Translator) -> dict[str, str]:
    return {
        "budget": t("The budget is a whole number of retests from 1 to 100000."),
        "period_start": t("Give the first day of the period."),
        "period_end": t("Give the last day of the period."),
        "product_categories": t("Choose product categories from the list."),
        "top_categories": t("The number of categories is a whole number from 1 to 1000."),
        "seed": t("The seed is a whole number from 0 to 9223372036854775807, or empty."),
        "bad_rate_ratio": t("The bad rate is a multiple of the baseline above 1 and at most 100."),
        "power": t("The power is a number from 0.5 to below 1."),
    }


def _blank_none(value: str) -> str | None:
    value = value.strip()
    return value or None


class DrawPages(Controller):
    path = "/draws"
    include_in_schema = False
    opt = {"session_roles": VIEW}

    async def _list(self, request: Request, conn: asyncpg.Connection, *, status_code: int = 200,
                    form: dict[str, Any] | None = None, error: str | None = None) -> Template:
        before = _before(request)
        rows = [as_draw(r) for r in await draw_q.list_draws(conn, limit=PAGE_SIZE + 1, before=before)]
        items, older = cut(rows, PAGE_SIZE, lambda d: d.id)
        return page(
            request, "draws.html", status_code=status_code, draws=items, older=older, newest=before is not None,
            may_draw=may(request, OFFICER), categories=await overview.categories(conn),
            provinces=await overview.provinces(conn), display=DISPLAY, error=error,
            form=form or {"product_category": "", "count": "1", "exclude_labs": "", "exclude_provinces": [],
                          "seed": ""},
        )

    @get("/")
    async def index(self, request: Request, conn: NamedDependency[asyncpg.Connection]) -> Template:
        return await self._list(request, conn)

    @post("/", opt={"session_roles": OFFICER}, status_code=303)
    async def create(self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection]
                     ) -> Response | Template:
        t = request_translator(request)
        data = await request.form()
        # What was entered, shown again as it was when the draw is refused.
        form = {"product_category": data.get("product_category", ""), "count": data.get("count", ""),
                "exclude_labs": data.get("exclude_labs", ""), "exclude_provinces": data.getall("exclude_provinces", []),
                "seed": data.get("seed", "")}
        raw = {
            "product_category": form["product_category"].strip(), "count": form["count"].strip(),
            "exclude_labs": [c for c in _SPLIT.split(form["exclude_labs"]) if c],
            "exclude_provinces": [p for p in form["exclude_provinces"] if p],
            "seed": _blank_none(form["seed"]),
        }
        try:
            # strict=False: a form sends every value as text; "3" is read as the number 3.
            req = msgspec.convert({k: v for k, v in raw.items() if v is not None}, DrawRequest, strict=False)
        except msgspec.ValidationError as exc:
            return await self._list(request, conn, status_code=400, form=form,
                                    error=_field_error(t, exc, _draw_messages(t)))
        try:
            draw = await make_draw(conn, req, state.policy, today=today_utc(), actor=request.user.actor)
        except UnknownCategory as exc:
            return await self._list(request, conn, status_code=400, form=form,
                                    error=t("There is no product category {code}.", code=exc.code))
        except NotEnoughLabs as exc:
            return await self._list(request, conn, status_code=422, form=form, error=t(
                "Not enough eligible labs: {asked} asked for, {eligible} eligible after the exclusions.",
                asked=t.number(exc.asked), eligible=t.number(exc.eligible)))
        return Redirect(f"/draws/{draw.id}", status_code=303)

    async def _detail(self, request: Request, conn: asyncpg.Connection, draw_id: int,
                      verification: Any = None) -> Template:
        draw = as_draw(await draw_q.get(conn, draw_id))
        is_draw = isinstance(draw, Draw)
        return page(
            request, "draw.html", draw=draw, is_draw=is_draw, display=DISPLAY, verification=verification,
            excluded=excluded_candidates(draw) if is_draw else set(),
            chances=pool_probabilities(draw) if is_draw else {},
            order={code: i + 1 for i, code in enumerate(draw.chosen)} if is_draw else {},
            assigned={} if is_draw else {a.sample_code: a.lab_code for a in draw.assignments},
        )

    @get("/{ref:str}")
    async def detail(self, request: Request, conn: NamedDependency[asyncpg.Connection], ref: FromPath[str]
                     ) -> Template | Response[bytes]:
        draw_id, as_csv = _ref(ref)
        if not as_csv:
            return await self._detail(request, conn, draw_id)
        frame = draw_frame(as_draw(await draw_q.get(conn, draw_id)))
        # With a byte-order mark: Excel opens a CSV without one in the machine's legacy code page
        # (GBK on Chinese Windows) and garbles the provinces; with it, Excel reads UTF-8, and
        # other readers (polars, pandas, Python's csv with utf-8-sig) skip it.
        buf = io.BytesIO()
        frame.write_csv(buf, include_bom=True)
        return _csv(buf.getvalue(), f"draw-{draw_id}.csv")

    @post("/{draw_id:int}/verify", status_code=200)
    async def verify(self, request: Request, conn: NamedDependency[asyncpg.Connection],
                     draw_id: FromPath[int]) -> Template:
        return await self._detail(request, conn, draw_id, verification=await verify_draw(conn, draw_id))


_REASONS = (
    (re.compile(r"thin evidence: (\d+) of (\d+) pairs"), "thin"),
    (re.compile(r"not identifiable"), "unidentifiable"),
    (re.compile(r"arbitration suggested"), "arbitration"),
    (re.compile(r"CUSUM rising: (\d+)% of its limit"), "cusum"),
)


def allocation_reason(t: Translator, text: str) -> str:
    """A lab's allocation reason (stored in English by scoring.retest_plan.allocate) in the
    reader's language; one this does not know is shown as stored, never dropped."""
    for pattern, key in _REASONS:
        m = pattern.fullmatch(text.strip())
        if m is None:
            continue
        if key == "thin":
            return t("thin evidence: {pairs} of {needed} pairs", pairs=t.number(int(m.group(1))),
                     needed=t.number(int(m.group(2))))
        if key == "unidentifiable":
            return t("not identifiable")
        if key == "arbitration":
            return t("arbitration suggested")
        return t("CUSUM rising: {percent} of its limit", percent=t.percent(int(m.group(1)) / 100, 0))
    return text


def sample_reason(t: Translator, text: str) -> str:
    return "; ".join(allocation_reason(t, part) for part in text.split("; ")) if text else "—"


class PlanPages(Controller):
    path = "/plans"
    include_in_schema = False
    # A plan names the samples to be retested next: only those who run the oversight see it
    # (as in the API), so that no lab learns in advance which of its samples will be checked.
    opt = {"session_roles": OFFICER}

    async def _list(self, request: Request, conn: asyncpg.Connection, *, status_code: int = 200,
                    form: dict[str, Any] | None = None, error: str | None = None) -> Template:
        before = _before(request)
        items, older = cut(await plan_q.list_plans(conn, limit=PAGE_SIZE + 1, before=before), PAGE_SIZE,
                           lambda p: p.plan_id)
        # The form starts from the request's own defaults (as the API and the CLI apply them).
        defaults = {f.name: f.default for f in msgspec.structs.fields(PlanRequest)}
        return page(
            request, "plans.html", status_code=status_code, plans=items, older=older, newest=before is not None,
            may_plan=may(request, OFFICER), categories=await overview.categories(conn), error=error,
            form=form or {"budget": "", "from": "", "to": "", "categories": [], "top": str(defaults["top_categories"]),
                          "seed": "", "bad_rate_ratio": f"{defaults['bad_rate_ratio']:g}",
                          "power": f"{defaults['power']:g}"},
        )

    @get("/")
    async def index(self, request: Request, conn: NamedDependency[asyncpg.Connection]) -> Template:
        return await self._list(request, conn)

    @post("/", opt={"session_roles": OFFICER}, status_code=303)
    async def create(self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection]
                     ) -> Response | Template:
        t = request_translator(request)
        data = await request.form()
        form = {k: data.get(k, "") for k in ("budget", "from", "to", "top", "seed", "bad_rate_ratio", "power")}
        form["categories"] = data.getall("categories", [])
        raw = {
            "budget": form["budget"].strip(), "period_start": form["from"].strip(), "period_end": form["to"].strip(),
            "product_categories": [c for c in form["categories"] if c] or None,
            "top_categories": _blank_none(form["top"]), "seed": _blank_none(form["seed"]),
            "bad_rate_ratio": _blank_none(form["bad_rate_ratio"]), "power": _blank_none(form["power"]),
        }
        try:
            # strict=False: a form sends every value as text; "30" is read as the number 30.
            req = msgspec.convert({k: v for k, v in raw.items() if v is not None}, PlanRequest, strict=False)
        except msgspec.ValidationError as exc:
            return await self._list(request, conn, status_code=400, form=form,
                                    error=_field_error(t, exc, _plan_messages(t)))
        try:
            plan = await create_plan(conn, state.policy, req, actor=request.user.actor)
        except PlanRefused as exc:
            return await self._list(request, conn, status_code=422, form=form, error=_refusal(t, exc))
        return Redirect(f"/plans/{plan.plan_id}", status_code=303)

    async def _detail(self, request: Request, conn: asyncpg.Connection, plan_id: int,
                      verification: Any = None) -> Template:
        t = request_translator(request)
        plan = await get_plan(conn, plan_id)
        return page(
            request, "plan.html", plan=plan, verification=verification,
            reasons={a.lab_code: [allocation_reason(t, r) for r in a.reasons] for a in plan.allocation},
            sample_reason=lambda text: sample_reason(t, text),
        )

    @get("/{ref:str}")
    async def detail(self, request: Request, conn: NamedDependency[asyncpg.Connection], ref: FromPath[str]
                     ) -> Template | Response[bytes]:
        plan_id, as_csv = _ref(ref)
        if not as_csv:
            return await self._detail(request, conn, plan_id)
        # The API's export, with a byte-order mark in front for Excel (see the draw's CSV).
        return _csv(b"\xef\xbb\xbf" + export_bytes(await get_plan(conn, plan_id), "csv"), f"retest-plan-{plan_id}.csv")

    @post("/{plan_id:int}/verify", status_code=200)
    async def verify(self, request: Request, conn: NamedDependency[asyncpg.Connection],
                     plan_id: FromPath[int]) -> Template:
        return await self._detail(request, conn, plan_id, verification=await verify_plan(conn, plan_id))


def _refusal(t: Translator, exc: PlanRefused) -> str:
    v = exc.values
    if exc.reason == "period":
        return t("The period starts ({start}) after it ends ({end}).", start=t.date(v["start"]), end=t.date(v["end"]))
    if exc.reason == "unknown_categories":
        return t("There is no product category {code}.", code=", ".join(v["codes"]))
    if exc.reason == "bad_rate":
        return t("The bad rate ({rate}) is not below 100 %: choose a smaller multiple of the baseline.",
                 rate=t.percent(v["bad_rate"]))
    return str(exc)
