from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest
from litestar.datastructures import State
from litestar.testing import AsyncTestClient

from labeval.app import create_app
from labeval.config import Settings
from labeval.db.pool import create_pool
from labeval.metrics import Metrics
from labeval.scheduler import (
    EXPIRY_JOB_ID,
    GRADING_JOB_ID,
    _cron_day_of_week,
    build_scheduler,
    cron_trigger,
    missed_run,
    scheduled_grading,
)
from scoring.policy import Policy


def test_grading_job_follows_the_cron_setting() -> None:
    state = State({})
    sched = build_scheduler(Settings(grading_cron="30 3 * * 1"), state)
    job = sched.get_job(GRADING_JOB_ID)
    assert job is not None and job.max_instances == 1 and job.coalesce is True
    fields = {f.name: str(f) for f in job.trigger.fields}
    assert (fields["minute"], fields["hour"], fields["day_of_week"]) == ("30", "3", "mon")
    # No grading cron: no grading job; the hourly override expiry job stays.
    assert [j.id for j in build_scheduler(Settings(grading_cron=""), state).get_jobs()] == [EXPIRY_JOB_ID]


@pytest.mark.parametrize(
    ("cron", "expected"),
    [("*", "*"), ("0", "sun"), ("7", "sun"), ("1-5", "mon-fri"), ("1,3,5", "mon,wed,fri"),
     ("*/2", "sun,tue,thu,sat"), ("mon-fri", "mon-fri"), ("1-5/2", "mon,wed,fri")],
)
def test_cron_weekdays_keep_their_cron_meaning(cron: str, expected: str) -> None:
    # crontab(5): 0 and 7 are Sunday; APScheduler 3 would read "1" as Tuesday.
    assert _cron_day_of_week(cron) == expected


async def test_scheduled_run_is_stored_with_its_trigger(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("INSERT INTO labs (lab_code, name) VALUES ('A', 'Lab A')")
    finally:
        await conn.close()
    pool = await create_pool(db_url)
    try:
        await scheduled_grading(State({"policy": Policy(), "pool": pool, "metrics": Metrics()}))
        async with pool.acquire() as c:
            row = await c.fetchrow("SELECT trigger, n_labs, status FROM grading_runs")
            grade = await c.fetchrow("SELECT class, change FROM lab_grades WHERE lab_code = 'A'")
            audited = await c.fetchrow("SELECT actor, action, target FROM audit_log")
            run_id = await c.fetchval("SELECT run_id FROM grading_runs")
    finally:
        await pool.close()
    assert tuple(row) == ("schedule", 1, "succeeded")
    assert (audited["actor"], audited["action"], audited["target"]["run_id"]) == ("scheduler", "grade", run_id)
    # No pairs at all: a new lab is held at the policy's default class.
    assert tuple(grade) == ("II", "new")


NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


async def _scheduled_run_started(db_url: str, started_at: datetime) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            """INSERT INTO grading_runs (as_of, trigger, policy_name, policy_version, policy_hash, policy,
                                         started_at, finished_at, status)
               VALUES ($1, 'schedule', 'default', '1', 'x', '{}', $2, $2, 'succeeded')""",
            started_at.date(), started_at,
        )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("last_started", "missed"),
    [
        # Daily at 02:00 UTC, and it is 09:00 on 10 March: the 02:00 run of that day is due.
        (None, False),  # never scheduled before: nothing to catch up
        (datetime(2026, 3, 10, 2, 0, tzinfo=UTC), False),  # today's run, on the dot
        (datetime(2026, 3, 10, 2, 0, 4, tzinfo=UTC), False),  # today's run
        (datetime(2026, 3, 9, 2, 0, 4, tzinfo=UTC), True),  # yesterday's: today's was missed
        (datetime(2026, 3, 1, 2, 0, 4, tzinfo=UTC), True),  # many missed: still one run
    ],
)
async def test_a_missed_scheduled_run_is_found_from_the_database(db_url, last_started, missed) -> None:
    if last_started is not None:
        await _scheduled_run_started(db_url, last_started)
    pool = await create_pool(db_url)
    try:
        assert await missed_run(State({"pool": pool}), cron_trigger("0 2 * * *"), NOW) is missed
    finally:
        await pool.close()


async def test_the_app_catches_up_a_run_missed_while_it_was_down(db_url: str, app_settings: Settings) -> None:
    yesterday = datetime.now(UTC) - timedelta(days=1, minutes=5)
    await _scheduled_run_started(db_url, yesterday)
    # The cron fires every day at the minute it was yesterday, 5 minutes ago: one run is due.
    app = create_app(msgspec.structs.replace(app_settings, grading_cron=f"{yesterday.minute} {yesterday.hour} * * *"))
    async with AsyncTestClient(app):
        conn = await asyncpg.connect(db_url)
        try:
            for _ in range(100):
                n = await conn.fetchval("SELECT count(*) FROM grading_runs WHERE finished_at > $1", NOW)
                if n > 1:
                    break
                await asyncio.sleep(0.1)
            triggers = await conn.fetch("SELECT trigger FROM grading_runs ORDER BY run_id")
        finally:
            await conn.close()
    assert [r["trigger"] for r in triggers] == ["schedule", "schedule"]
