"""Scheduled jobs (APScheduler 3.x AsyncIOScheduler, started and stopped in the app lifespan)."""

from __future__ import annotations

import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from litestar.datastructures import State

from labeval.config import Settings

log = logging.getLogger(__name__)

GRADING_JOB_ID = "grading-run"


async def scheduled_grading(state: State) -> None:
    from labeval.grading.run import run_grading

    settings: Settings = state.settings
    async with state.pool.acquire() as conn:
        result = await run_grading(conn, settings, trigger="schedule")
    log.info("scheduled grading run %s graded %d labs", result.run_id, len(result.grades))


def build_scheduler(settings: Settings, state: State) -> AsyncIOScheduler:
    # UTC keeps the schedule independent of the host's zone; the cron string says when.
    scheduler = AsyncIOScheduler(timezone="UTC")
    if settings.grading_cron.strip():
        scheduler.add_job(
            scheduled_grading,
            CronTrigger.from_crontab(settings.grading_cron, timezone="UTC"),
            args=[state],
            id=GRADING_JOB_ID,
            # One run at a time; a run missed while the server was down is run once, late.
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
            replace_existing=True,
        )
    return scheduler
