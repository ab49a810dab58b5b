from __future__ import annotations

import asyncpg
import pytest
from litestar.datastructures import State

from labeval.config import Settings
from labeval.db.pool import create_pool
from labeval.scheduler import GRADING_JOB_ID, _cron_day_of_week, build_scheduler, scheduled_grading
from scoring.policy import Policy


def test_grading_job_follows_the_cron_setting() -> None:
    state = State({})
    sched = build_scheduler(Settings(grading_cron="30 3 * * 1"), state)
    job = sched.get_job(GRADING_JOB_ID)
    assert job is not None and job.max_instances == 1 and job.coalesce is True
    fields = {f.name: str(f) for f in job.trigger.fields}
    assert (fields["minute"], fields["hour"], fields["day_of_week"]) == ("30", "3", "mon")
    assert build_scheduler(Settings(grading_cron=""), state).get_jobs() == []


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
        await scheduled_grading(State({"policy": Policy(), "pool": pool}))
        async with pool.acquire() as c:
            row = await c.fetchrow("SELECT trigger, n_labs, finished_at IS NOT NULL AS done FROM grading_runs")
            grade = await c.fetchrow("SELECT class, change FROM lab_grades WHERE lab_code = 'A'")
    finally:
        await pool.close()
    assert tuple(row) == ("schedule", 1, True)
    # No pairs at all: a new lab is held at the policy's default class.
    assert tuple(grade) == ("II", "new")
