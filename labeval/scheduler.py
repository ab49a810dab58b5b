"""Scheduled jobs (APScheduler 3.x AsyncIOScheduler, started and stopped in the app lifespan)."""

from __future__ import annotations

import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from litestar.datastructures import State

from labeval.config import Settings
from labeval.grading.run import run_grading

log = logging.getLogger(__name__)

GRADING_JOB_ID = "grading-run"


async def scheduled_grading(state: State) -> None:
    async with state.pool.acquire() as conn:
        result = await run_grading(conn, state.policy, trigger="schedule")
    log.info("scheduled grading run %s graded %d labs", result.run_id, len(result.grades))


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
        scheduler.add_job(
            scheduled_grading,
            cron_trigger(settings.grading_cron),
            args=[state],
            id=GRADING_JOB_ID,
            # One run at a time; a run missed while the server was down is run once, late.
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
            replace_existing=True,
        )
    return scheduler
