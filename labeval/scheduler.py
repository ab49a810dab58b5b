"""Scheduled jobs (APScheduler 3.x AsyncIOScheduler, started and stopped in the app lifespan).

The job store is in memory: a run whose time passes while the service is down is not known to
APScheduler when it starts again. The database knows: at start, if the cron expression fell due
after the last scheduled run started (grading_runs, trigger "schedule"), one run is made at
once, however many were missed. With no scheduled run at all in the database (a new
installation) nothing is caught up: the first run is the next one due.

Every replica's scheduler fires at the same minute. A scheduled run is made for one period of the
schedule (its latest fire time at or before the moment the job runs) and records it; under the
run lock, a job whose period already has its run skips (logged), so N replicas make one run per
period whether they fire together (the lock refuses the others) or one after another.

At shutdown (stop_scheduler) no new job starts, the job that is running may finish within the
shutdown timeout, and one still running after it is cancelled: a cancelled grading run marks its
row failed and gives the run lock back before the pool closes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import ParamSpec

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from litestar.datastructures import State

from labeval.config import Settings
from labeval.db import audit, users
from labeval.db.grading import last_scheduled_start
from labeval.grading.lab_charts import warm_after_run
from labeval.grading.overrides import expire_due, today_utc
from labeval.grading.run import PeriodAlreadyRun, RunInProgress, run_grading
from labeval.metrics import Metrics

log = logging.getLogger(__name__)

GRADING_JOB_ID = "grading-run"
EXPIRY_JOB_ID = "override-expiry"
CATCH_UP_JOB_ID = "grading-run-catch-up"

# State key: the tasks of the jobs running now, which stop_scheduler lets finish.
_IN_FLIGHT = "scheduler_jobs_in_flight"

P = ParamSpec("P")

# Cancelled jobs get this long to clean up (mark their run failed) before the pool closes.
_CANCEL_GRACE_S = 5.0


def _drained_at_shutdown(job: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
    @functools.wraps(job)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        state: State = args[0]  # type: ignore[assignment]
        in_flight: set[asyncio.Task[object]] = state.setdefault(_IN_FLIGHT, set())
        task = asyncio.current_task()
        if task is not None:
            in_flight.add(task)
        try:
            await job(*args, **kwargs)
        finally:
            in_flight.discard(task)  # type: ignore[arg-type]

    return run


# Far enough back to find the previous fire time of any 5-field cron (at most once in 4 years:
# 29 February on a given weekday needs up to 28).
_PERIOD_LOOKBACK_LIMIT = timedelta(days=366 * 29)


def scheduled_period(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The period a firing at `now` belongs to: the schedule's latest fire time at or before now.

    Every replica computes the same fire time from the same cron expression, whatever the small
    differences between their clocks and however late each one's job starts."""
    span = timedelta(minutes=1)
    while span <= _PERIOD_LOOKBACK_LIMIT:
        fire = trigger.get_next_fire_time(None, now - span)
        if fire is not None and fire <= now:
            # Walk forward to the last fire time not after now (a few steps: span < 2 gaps).
            while (nxt := trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))) is not None and nxt <= now:
                fire = nxt
            return fire
        span *= 2
    return None


@_drained_at_shutdown
async def scheduled_grading(state: State, trigger: CronTrigger | None = None, now: datetime | None = None) -> None:
    """One scheduled grading run for the period of `trigger` that `now` (default: the clock) is
    in; skipped (logged) when another run holds the lock or this period's run was already made.
    Without a trigger (no schedule to say the period) it runs whenever it is called."""
    metrics: Metrics = state.metrics
    period = scheduled_period(trigger, now or datetime.now(UTC)) if trigger is not None else None
    async with state.pool.acquire() as conn:
        try:
            with metrics.grading_run("schedule", refused=(RunInProgress, PeriodAlreadyRun)):
                result = await run_grading(conn, state.policy, trigger="schedule", actor="scheduler",
                                           scheduled_for=period)
        except RunInProgress as exc:
            # Same lock as the CLI and the API: another replica or an officer is running one.
            log.warning("scheduled grading run skipped: %s", exc)
            return
        except PeriodAlreadyRun as exc:
            # The normal case behind N replicas: another one ran this period first.
            log.info("scheduled grading run skipped: %s", exc)
            return
        await audit.append(conn, actor="scheduler", action="grade",
                           target={"run_id": result.run_id, "as_of": result.as_of.isoformat()})
    # The lab pages' chart series of the new run, before anyone opens one.
    warm_after_run(state.get("lab_series"), result.run_id, state.policy, result.as_of)


@_drained_at_shutdown
async def scheduled_expiry(state: State) -> None:
    """Append the expiry events of overrides past their date (reads already ignore them), and
    delete expired sign-in sessions."""
    async with state.pool.acquire() as conn:
        expired = await expire_due(conn, today_utc())
        # Sign-in sessions past their expiry are of no use; the hourly job keeps the table small.
        await users.purge_expired(conn)
    if expired:
        log.info("overrides expired: %s", [o.override_id for o in expired])


_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _cron_day_of_week(field: str) -> str:
    """Standard cron weekday numbers (0 or 7 = Sunday) as names.

    APScheduler 3 numbers weekdays from Monday = 0 (its from_crontab documents the mismatch), so
    "1" would silently mean Tuesday. Names mean the same to both.
    """
    out: list[str] = []
    for part in field.split(","):
        base, _, step = part.partition("/")
        if base == "*" and step:
            out.extend(_CRON_DAYS[d] for d in range(0, 7, int(step)))
            continue
        lo, dash, hi = base.partition("-")
        names = [_CRON_DAYS[int(x)] if x.isdigit() else x for x in ((lo, hi) if dash else (lo,))]
        if step:
            if not all(x.isdigit() for x in (lo, hi) if x):
                raise ValueError(f"unsupported day-of-week step {part!r}")
            out.extend(_CRON_DAYS[d] for d in range(int(lo), int(hi or 6) + 1, int(step)))
        else:
            out.append("-".join(names))
    return ",".join(out)


def cron_trigger(expr: str) -> CronTrigger:
    """A trigger from a standard 5-field crontab expression, evaluated in UTC."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"a cron expression has 5 fields, got {len(fields)}: {expr!r}")
    minute, hour, day, month, dow = fields
    return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                       day_of_week=_cron_day_of_week(dow), timezone="UTC")


def build_scheduler(settings: Settings, state: State) -> AsyncIOScheduler:
    # UTC keeps the schedule independent of the host's zone; the cron string says when.
    scheduler = AsyncIOScheduler(timezone="UTC")
    if settings.grading_cron.strip():
        trigger = cron_trigger(settings.grading_cron)
        scheduler.add_job(
            scheduled_grading,
            trigger,
            args=[state, trigger],
            id=GRADING_JOB_ID,
            # One run at a time. coalesce and the grace time only cover fire times missed while this
            # process was running but busy; runs missed while it was down: catch_up_missed_run.
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
            replace_existing=True,
        )
    # Hourly: an override lapses at midnight UTC; its event follows within the hour (sooner if a
    # run or an override command comes first, each of which also calls expire_due).
    scheduler.add_job(scheduled_expiry, CronTrigger(minute=5, timezone="UTC"), args=[state], id=EXPIRY_JOB_ID,
                      max_instances=1, coalesce=True, replace_existing=True)
    return scheduler


async def missed_run(state: State, trigger: CronTrigger, now: datetime) -> bool:
    """Whether the schedule fell due, at or before `now`, after the last scheduled run started."""
    async with state.pool.acquire() as conn:
        last = await last_scheduled_start(conn)
    if last is None:
        return False
    # The run that started at a fire time is that fire time's run: look from just after it.
    due = trigger.get_next_fire_time(None, last + timedelta(seconds=1))
    return due is not None and due <= now


async def catch_up_missed_run(scheduler: AsyncIOScheduler, settings: Settings, state: State, now: datetime) -> bool:
    """At start: queue one grading run now if a scheduled run was missed. Returns whether it did."""
    if not settings.grading_cron.strip():
        return False
    trigger = cron_trigger(settings.grading_cron)
    if not await missed_run(state, trigger, now):
        return False
    log.warning("a scheduled grading run was missed while the service was down: running one now")
    # For the latest period missed: replicas starting together make one catch-up run between them.
    scheduler.add_job(scheduled_grading, args=[state, trigger], id=CATCH_UP_JOB_ID, replace_existing=True)
    return True


async def stop_scheduler(scheduler: AsyncIOScheduler, state: State, timeout: float) -> None:
    """Start no new job, let the running ones finish for up to `timeout` seconds, cancel the rest
    and wait (briefly) for their cleanup."""
    scheduler.pause()
    running = {t for t in state.get(_IN_FLIGHT, ()) if not t.done()}
    late: set[asyncio.Task[object]] = set()
    if running:
        log.info("waiting up to %.0f s for %d scheduled job(s) to finish", timeout, len(running))
        _, late = await asyncio.wait(running, timeout=timeout) if timeout > 0 else (set(), running)
    scheduler.shutdown(wait=False)
    if late:
        log.warning("cancelling %d scheduled job(s) still running after %.0f s", len(late), timeout)
        for task in late:
            task.cancel()
        await asyncio.wait(late, timeout=_CANCEL_GRACE_S)


def next_grading_run(state: State) -> datetime | None:
    """When the scheduled grading run fires next (None: no schedule, or no scheduler running)."""
    sched: AsyncIOScheduler | None = getattr(state, "scheduler", None)
    job = sched.get_job(GRADING_JOB_ID) if sched is not None else None
    return job.next_run_time if job is not None else None
