"""Grading runs on the pages: the history and the form that starts a run, one run with its grades,
verifying it, the labs that moved between two runs, and a run's grades as CSV, XLSX or Parquet.

Everything here is said by the functions the API and the CLI use (labeval.grading: run, verify,
diff, overrides; labeval.db.grading); this module only arranges it for a reader."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_409_CONFLICT

from labeval.api.paging import After, cut
from labeval.api.problems import ProblemError
from labeval.api.runs import RunRequest
from labeval.db.grading import get_run, list_runs
from labeval.db.labs import lab_names
from labeval.grading.diff import diff_runs
from labeval.grading.lab_charts import warm_after_run
from labeval.grading.run import RunInProgress, run_grading
from labeval.grading.verify import RunNotVerifiable, VerifyReport, verify_run
from labeval.metrics import Metrics
from labeval.models import GradingRun
from labeval.render import main_reasons
from labeval.web.i18n import Translator
from labeval.web.reasons import reason_text, rule_title
from labeval.web.run_export import FORMATS, grade_lines, grades_frame
from labeval.web.session import START_RUN, VIEW, may
from labeval.web.templating import page, request_translator
from scoring.classes import CLASSES, DISPLAY
from scoring.grading import Reason

RUNS_PAGE = 25
# Runs offered to compare with (the newest succeeded ones).
_COMPARE_CHOICES = 50
_FORM = Body(media_type=RequestEncodingType.URL_ENCODED)


class StartRunForm(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    # Empty: today (UTC), as for the API and `labeval grade`.
    as_of: Annotated[str, msgspec.Meta(max_length=40)] = ""


class VerifyForm(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    # A ticked checkbox sends "on": recompute on today's data instead of the data as the run read it.
    current: Annotated[str, msgspec.Meta(max_length=10)] = ""


def in_progress_text(t: Translator, exc: RunInProgress) -> str:
    if exc.current is None:
        return t("Another grading run is in progress. Start this one when it has finished.")
    return t("Grading run {run} (as of {as_of}) is in progress since {since}. Start this one when it has finished.",
             run=exc.current.run_id, as_of=t.date(exc.current.as_of), since=t.datetime(exc.current.started_at))


def _rule_words(t: Translator, rule: str) -> str:
    # diff_runs names a lab graded only in the earlier run "removed"; it is no rule of scoring.
    if rule == "removed":
        return t("Not graded in the later run (revoked or removed)")
    return rule_title(t, rule)


def _reason_for(t: Translator, reasons: list[Reason], rule: str) -> str:
    """What a run's reasons say on the rule that decided a move (its main reasons when the rule
    is not among them, e.g. a lab new in that run)."""
    hit = next((r for r in reasons if r.rule == rule), None)
    if hit is not None:
        return reason_text(t, hit)
    main = main_reasons(reasons)
    return "; ".join(reason_text(t, r) for r in main) if main else "—"


async def _choices(conn: asyncpg.Connection) -> list[GradingRun]:
    return await list_runs(conn, limit=_COMPARE_CHOICES, status="succeeded")


class RunPagesController(Controller):
    path = "/runs"
    include_in_schema = False
    opt = {"session_roles": VIEW}

    async def _list(self, request: Request, conn: asyncpg.Connection, *, after: int | None, status_code: int = 200,
                    problem: str | None = None, as_of: str = "") -> Template:
        rows = await list_runs(conn, limit=RUNS_PAGE + 1, before=after)
        items, nxt = cut(rows, RUNS_PAGE, lambda r: r.run_id)
        return page(request, "runs.html", status_code=status_code, runs=items, next_after=nxt, after=after,
                    may_start=may(request, START_RUN), problem=problem, as_of=as_of, display=DISPLAY)

    @get("/")
    async def history(self, request: Request, conn: NamedDependency[asyncpg.Connection], after: After = None
                      ) -> Template:
        return await self._list(request, conn, after=after)

    @post("/", opt={"session_roles": START_RUN}, status_code=303)
    async def start(self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection],
                    data: Annotated[StartRunForm, _FORM]) -> Response[Any]:
        """The API's POST /api/v1/runs from a form: the run is made in the request (seconds on a
        province's data) and the browser is sent to it."""
        t = request_translator(request)
        try:
            as_of = msgspec.convert({"as_of": data.as_of.strip() or None}, RunRequest).as_of
        except msgspec.ValidationError:
            return await self._list(request, conn, after=None, status_code=400, as_of=data.as_of,
                                    problem=t("The as-of date must be a date from 1900 on (year-month-day)."))
        metrics: Metrics = state.metrics
        # Its own connection, as in the API: the run holds the run lock on its session and commits
        # on its own, which cannot nest inside the request's transaction.
        async with state.pool.acquire() as run_conn:
            try:
                with metrics.grading_run("web", refused=RunInProgress):
                    run = await run_grading(run_conn, state.policy, as_of=as_of, trigger="web",
                                            actor=request.user.actor)
            except RunInProgress as exc:
                return await self._list(request, conn, after=None, status_code=HTTP_409_CONFLICT,
                                        problem=in_progress_text(t, exc), as_of=data.as_of)
        # The lab pages' chart series of the new run, computed off this request.
        warm_after_run(state.get("lab_series"), run.run_id, state.policy, run.as_of)
        return Redirect(f"/runs/{run.run_id}", status_code=303)

    async def _detail(self, request: Request, conn: asyncpg.Connection, run_id: int, *, status_code: int = 200,
                      report: VerifyReport | None = None, verify_problem: str | None = None) -> Template:
        t = request_translator(request)
        run = await get_run(conn, run_id)
        lines = await grade_lines(conn, run, t)
        choices = [r for r in await _choices(conn) if r.run_id != run_id]
        # Compare with the run before this one by default (else the newest other run).
        before = next((r.run_id for r in choices if r.run_id < run_id), choices[0].run_id if choices else None)
        differences = []
        if report is not None:
            differences = [
                {"code": d.lab_code, "fields": d.fields, "stored_class": d.stored_class,
                 "recomputed_class": d.recomputed_class, "stored_score": d.stored_score,
                 "recomputed_score": d.recomputed_score,
                 "stored_reason": "; ".join(reason_text(t, r) for r in main_reasons(d.stored_reasons)) or "—",
                 "recomputed_reason": "; ".join(reason_text(t, r) for r in main_reasons(d.recomputed_reasons)) or "—"}
                for d in report.differences
            ]
        return page(request, "run.html", status_code=status_code, run=run, lines=lines, choices=choices,
                    compare_with=before, report=report, differences=differences, verify_problem=verify_problem,
                    classes=CLASSES, display=DISPLAY)

    @get("/{run_id:int}")
    async def detail(self, request: Request, conn: NamedDependency[asyncpg.Connection], run_id: FromPath[int]
                     ) -> Template:
        return await self._detail(request, conn, run_id)

    @post("/{run_id:int}/verify", status_code=200)
    async def verify(self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection],
                     run_id: FromPath[int], data: Annotated[VerifyForm, _FORM]) -> Template:
        """Recompute the run (labeval.grading.verify) and show the run with the outcome."""
        t = request_translator(request)
        run = await get_run(conn, run_id)  # an unknown run is a 404 page before any work
        # Its own connection, as in the API: verify builds the past state as temporary tables in
        # one transaction of its own.
        async with state.pool.acquire() as verify_conn:
            try:
                report = await verify_run(verify_conn, run_id, current=data.current == "on")
            except RunNotVerifiable as exc:
                problem = (t("Only a run that succeeded has grades to verify.") if run.status != "succeeded"
                           else t("This run cannot be recomputed: {detail}", detail=str(exc)))
                return await self._detail(request, conn, run_id, status_code=HTTP_409_CONFLICT,
                                          verify_problem=problem)
        return await self._detail(request, conn, run_id, report=report)

    @get("/diff")
    async def diff(self, request: Request, conn: NamedDependency[asyncpg.Connection],
                   a: FromQuery[int | None] = None, b: FromQuery[int | None] = None) -> Template:
        """The labs whose class differs between run a (earlier) and run b, with the reasons on both
        sides and the rule that made the difference (labeval.grading.diff)."""
        t = request_translator(request)
        choices = await _choices(conn)
        result, moves, names = None, [], {}
        if a is not None and b is not None:
            result = await diff_runs(conn, a, b)
            names = await lab_names(conn, [m.lab_code for m in result.moved])
            moves = [
                {"code": m.lab_code, "name": names.get(m.lab_code), "class_a": m.class_a, "class_b": m.class_b,
                 "score_a": m.score_a, "score_b": m.score_b, "rule": m.rule, "rule_text": _rule_words(t, m.rule),
                 "reason_a": _reason_for(t, m.reasons_a, m.rule) if m.reasons_a else "—",
                 "reason_b": _reason_for(t, m.reasons_b, m.rule) if m.reasons_b else "—"}
                for m in result.moved
            ]
        return page(request, "runs_diff.html", choices=choices, a=a, b=b, result=result, moves=moves,
                    display=DISPLAY)

    async def _export(self, request: Request, conn: asyncpg.Connection, run_id: int, fmt: str) -> Response[bytes]:
        run = await get_run(conn, run_id)
        if run.status != "succeeded":
            raise ProblemError(HTTP_409_CONFLICT, "Run has no grades",
                               f"grading run {run_id} is {run.status}: only a run that succeeded has grades")
        frame = grades_frame(run, await grade_lines(conn, run, request_translator(request)))
        write, media_type = FORMATS[fmt]
        return Response(content=write(frame), media_type=media_type, headers={
            "Content-Disposition": f'attachment; filename="labeval-run-{run_id}-grades.{fmt}"'})

    @get("/{run_id:int}/grades.csv")
    async def grades_csv(self, request: Request, conn: NamedDependency[asyncpg.Connection], run_id: FromPath[int]
                         ) -> Response[bytes]:
        return await self._export(request, conn, run_id, "csv")

    @get("/{run_id:int}/grades.xlsx")
    async def grades_xlsx(self, request: Request, conn: NamedDependency[asyncpg.Connection], run_id: FromPath[int]
                          ) -> Response[bytes]:
        return await self._export(request, conn, run_id, "xlsx")

    @get("/{run_id:int}/grades.parquet")
    async def grades_parquet(self, request: Request, conn: NamedDependency[asyncpg.Connection],
                             run_id: FromPath[int]) -> Response[bytes]:
        return await self._export(request, conn, run_id, "parquet")
