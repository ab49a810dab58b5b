from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest
from litestar.datastructures import State
from litestar.testing import AsyncTestClient

from labeval.app import create_app
from labeval.config import Settings
from labeval.db.pool import create_pool
from labeval.grading.run import run_grading
from labeval.metrics import Metrics
from labeval.scheduler import (
    EXPIRY_JOB_ID,
    GRADING_JOB_ID,
    _cron_day_of_week,
    build_scheduler,
    cron_trigger,
    missed_run,
    scheduled_grading,
    scheduled_period,
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


@pytest.mark.parametrize(
    ("cron", "now", "period"),
    [
        # Daily at 02:00: later that day, just before the next one, on the dot.
        ("0 2 * * *", datetime(2026, 3, 10, 9, 0, tzinfo=UTC), datetime(2026, 3, 10, 2, 0, tzinfo=UTC)),
        ("0 2 * * *", datetime(2026, 3, 11, 1, 59, 59, tzinfo=UTC), datetime(2026, 3, 10, 2, 0, tzinfo=UTC)),
        ("0 2 * * *", datetime(2026, 3, 10, 2, 0, tzinfo=UTC), datetime(2026, 3, 10, 2, 0, tzinfo=UTC)),
        # Mondays at 03:30 (cron's 1): 10 March 2026 is a Tuesday, so the period began on the 9th.
        ("30 3 * * 1", datetime(2026, 3, 10, 9, 0, tzinfo=UTC), datetime(2026, 3, 9, 3, 30, tzinfo=UTC)),
        # Every 15 minutes.
        ("*/15 * * * *", datetime(2026, 3, 10, 9, 44, 59, tzinfo=UTC), datetime(2026, 3, 10, 9, 30, tzinfo=UTC)),
        # Once in four years: the last 29 February was in 2024.
        ("0 0 29 2 *", datetime(2027, 1, 1, tzinfo=UTC), datetime(2024, 2, 29, tzinfo=UTC)),
    ],
)
def test_the_period_of_a_firing_is_the_latest_fire_time(cron: str, now: datetime, period: datetime) -> None:
    assert scheduled_period(cron_trigger(cron), now) == period


def _replica(pool: asyncpg.Pool, cron: str) -> tuple[State, Callable[..., Awaitable[None]], tuple[object, ...]]:
    """A replica's state and its scheduler's grading job as APScheduler would call it."""
    state = State({"policy": Policy(), "pool": pool, "metrics": Metrics()})
    job = build_scheduler(Settings(grading_cron=cron), state).get_job(GRADING_JOB_ID)
    assert job is not None
    return state, job.func, tuple(job.args)


async def _with_lab(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("INSERT INTO labs (lab_code, name) VALUES ('A', 'Lab A')")
    finally:
        await conn.close()


async def _scheduled_runs(db_url: str) -> list[tuple[int, datetime | None, str]]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT run_id, scheduled_for, status FROM grading_runs WHERE trigger = 'schedule' ORDER BY run_id"
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


PERIOD = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)


async def test_replicas_firing_one_after_another_make_one_run_per_period(db_url: str, caplog) -> None:
    await _with_lab(db_url)
    pools = [await create_pool(db_url, min_size=1, max_size=2) for _ in range(3)]
    try:
        replicas = [_replica(p, "0 2 * * *") for p in pools]
        # Three replicas fire the 02:00 period, each after the previous one's run has finished
        # (their clocks and start-up delays differ by seconds).
        for i, (_, job, args) in enumerate(replicas):
            with caplog.at_level("INFO", logger="labeval.scheduler"):
                await job(*args, now=PERIOD + timedelta(seconds=3 * i))
        runs = await _scheduled_runs(db_url)
        assert [(r[1], r[2]) for r in runs] == [(PERIOD, "succeeded")]
        skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert len(skipped) == 2
        assert all(f"already made: run {runs[0][0]} (succeeded)" in m for m in skipped)
        # The next day's period gets its own run, once.
        for _, job, args in replicas:
            await job(*args, now=PERIOD + timedelta(days=1, seconds=5))
        assert [r[1] for r in await _scheduled_runs(db_url)] == [PERIOD, PERIOD + timedelta(days=1)]
    finally:
        for p in pools:
            await p.close()


async def test_replicas_firing_together_make_one_run_per_period(db_url: str) -> None:
    await _with_lab(db_url)
    pools = [await create_pool(db_url, min_size=1, max_size=2) for _ in range(4)]
    try:
        replicas = [_replica(p, "0 2 * * *") for p in pools]
        await asyncio.gather(*(job(*args, now=PERIOD + timedelta(seconds=1)) for _, job, args in replicas))
        assert [(r[1], r[2]) for r in await _scheduled_runs(db_url)] == [(PERIOD, "succeeded")]
        # Skips are counted as refused, not as failed runs, in each replica's metrics.
        outcomes = [
            {o: s.metrics.registry.get_sample_value("labeval_grading_runs_total", {"trigger": "schedule", "outcome": o})
             for o in ("succeeded", "refused", "failed")}
            for s, _, _ in replicas
        ]
        assert sum(o["succeeded"] or 0 for o in outcomes) == 1
        assert sum(o["refused"] or 0 for o in outcomes) == 3
        assert all(not o["failed"] for o in outcomes)
    finally:
        for p in pools:
            await p.close()


async def test_an_abandoned_run_leaves_its_period_owed_and_on_demand_runs_do_not_take_it(db_url: str) -> None:
    await _with_lab(db_url)
    conn = await asyncpg.connect(db_url)
    try:
        # A replica died in the middle of the 02:00 run (its row is still 'running', no lock held).
        await conn.execute(
            """INSERT INTO grading_runs (as_of, trigger, policy_name, policy_version, policy_hash, policy,
                                         started_at, scheduled_for, status)
               VALUES ($1, 'schedule', 'default', '1', 'x', '{}', $2, $2, 'running')""",
            PERIOD.date(), PERIOD,
        )
    finally:
        await conn.close()
    pool = await create_pool(db_url, min_size=1, max_size=2)
    try:
        _, job, args = _replica(pool, "0 2 * * *")
        # An officer's run after 02:00 is not the schedule's: the period is still owed.
        async with pool.acquire() as c:
            await run_grading(c, Policy(), trigger="api", actor="key:1:ci")
        await job(*args, now=PERIOD + timedelta(minutes=10))
        await job(*args, now=PERIOD + timedelta(minutes=20))
        async with pool.acquire() as c:
            rows = await c.fetch("SELECT trigger, scheduled_for, status FROM grading_runs ORDER BY run_id")
    finally:
        await pool.close()
    assert [tuple(r) for r in rows] == [
        ("schedule", PERIOD, "abandoned"), ("api", None, "succeeded"), ("schedule", PERIOD, "succeeded"),
    ]
