"""The read cache (labeval.api.cache) against real PostgreSQL: two apps on one database stand for
two replicas; a change committed through one (an override, a revocation, a key revoked) is what
the other answers next, with no wait (the guard's sync: every change committed before a request
arrived has been heard before the cache is used); while the change listener is down nothing is served from the cache; the
day is part of an answer's key; every table the cached answers are read from announces its
changes (migration 0013), and last_used_at, written by authentication itself, does not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from labeval.api.cache import CACHE_READY, Answer, ReadCache
from labeval.app import create_app
from labeval.config import Settings
from labeval.db.changes import CHANNEL, ChangeListener
from labeval.db.pool import connect
from labeval.grading.overrides import today_utc
from scoring.policy import Policy, policy_hash

C1 = {"product_category": "C1"}
# Bound on waiting for a replica to hear a committed change (delivery takes about a millisecond;
# the bound only keeps a broken listener from hanging the suite).
HEAR_TIMEOUT = 30.0
# The scope of a request whose guard found the cache ready.
READY = {CACHE_READY: True}


async def _seed(conn: asyncpg.Connection) -> int:
    await conn.execute("INSERT INTO product_categories (category_code, name) VALUES ('C1', 'C1')")
    for code in ("A", "B"):
        await conn.execute("INSERT INTO labs (lab_code, name, province, status) VALUES ($1, $1, 'BJ', 'active')",
                           code)
        await conn.execute("INSERT INTO lab_scopes VALUES ($1, 'C1')", code)
    p = Policy()
    run_id = await conn.fetchval(
        """INSERT INTO grading_runs (as_of, trigger, policy_name, policy_version, policy_hash, policy,
                                     status, finished_at)
           VALUES ('2026-02-28', 'test', $1, $2, $3, '{}', 'succeeded', now()) RETURNING run_id""",
        p.name, p.version, policy_hash(p))
    await conn.executemany("INSERT INTO lab_grades (run_id, lab_code, class, change) VALUES ($1, $2, $3, 'new')",
                           [(run_id, "A", "I"), (run_id, "B", "II")])
    return run_id


@pytest.fixture
async def seeded(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await connect(db_url)
    await _seed(c)
    try:
        yield c
    finally:
        await c.close()


def _cache(app: Litestar) -> ReadCache:
    return app.state.read_cache


async def _live(app: Litestar, live: bool) -> None:
    async with asyncio.timeout(HEAR_TIMEOUT):
        while _cache(app).live is not live:
            await asyncio.sleep(0.01)


async def _start(listener: ChangeListener) -> None:
    listener.start()


async def _drop(listener: ChangeListener) -> None:
    listener.drop_connection()


def _classes(r: object) -> dict[str, str]:
    return {x["lab_code"]: x["effective_class"] for x in r.json()["labs"]}  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def _replicas(settings: Settings) -> AsyncIterator[tuple[Litestar, AsyncTestClient, Litestar, AsyncTestClient]]:
    one, two = create_app(settings), create_app(settings)
    async with AsyncTestClient(one) as c1, AsyncTestClient(two) as c2:
        yield one, c1, two, c2


async def test_an_override_set_and_revoked_on_one_replica_is_what_the_other_answers_next(
    seeded: asyncpg.Connection, app_settings: Settings, role_headers: dict
) -> None:
    async with _replicas(app_settings) as (one, c1, two, c2):
        officer = role_headers["officer"]
        first = await c2.get("/api/v1/feed/eligibility", params=C1, headers=officer)
        assert first.status_code == 200 and _classes(first) == {"A": "I", "B": "II"}
        lab = await c2.get("/api/v1/labs/A", headers=officer)
        assert lab.status_code == 200 and lab.json()["effective_class"] == "I"
        # Replica two now answers both from its cache: the same bytes, no database read.
        assert _cache(two).live
        assert _cache(two).answer(("eligibility", "C1", today_utc(), None), READY).body == first.content
        assert _cache(two).answer(("lab", "A", today_utc()), READY).etag == lab.headers["etag"]

        made = await c1.post("/api/v1/overrides", headers=officer, json={
            "lab_code": "A", "class": "III", "reason": "audit", "set_by": "o",
            "valid_until": (today_utc() + timedelta(days=5)).isoformat()})
        assert made.status_code == 201, made.text
        after = await c2.get("/api/v1/feed/eligibility", params=C1, headers=officer)
        assert _classes(after) == {"A": "III", "B": "II"} and after.headers["etag"] != first.headers["etag"]
        # An If-None-Match with the old tag is answered in full; with the new one, 304.
        stale = await c2.get("/api/v1/labs/A", headers={**officer, "If-None-Match": lab.headers["etag"]})
        assert stale.status_code == 200 and stale.json()["effective_class"] == "III"
        same = await c2.get("/api/v1/labs/A", headers={**officer, "If-None-Match": stale.headers["etag"]})
        assert same.status_code == 304 and same.content == b""

        revoked = await c1.post(f"/api/v1/overrides/{made.json()['override_id']}/revoke", headers=officer,
                                json={"revoked_by": "o", "reason": "mistake"})
        assert revoked.status_code == 200, revoked.text
        assert _classes(await c2.get("/api/v1/feed/eligibility", params=C1, headers=officer)) == {"A": "I", "B": "II"}
        assert (await c2.get("/api/v1/labs/A", headers=officer)).json()["effective_class"] == "I"
        # The writer hears its own change like any replica: the guard's sync comes first.
        assert (await c1.get("/api/v1/labs/A", headers=officer)).json()["effective_class"] == "I"


async def test_a_key_revoked_on_one_replica_is_refused_by_the_other(
    seeded: asyncpg.Connection, app_settings: Settings, role_headers: dict
) -> None:
    async with _replicas(app_settings) as (_one, c1, two, c2):
        made = await c1.post("/api/v1/keys", headers=role_headers["admin"], json={"name": "tender", "role": "feed"})
        assert made.status_code == 201, made.text
        feed = {"Authorization": f"Bearer {made.json()['key']}"}
        assert (await c2.get("/api/v1/feed/eligibility", params=C1, headers=feed)).status_code == 200
        assert (await c2.get("/api/v1/feed/eligibility", params=C1, headers=feed)).status_code == 200
        r = await c1.post(f"/api/v1/keys/{made.json()['id']}/revoke", headers=role_headers["admin"])
        assert r.status_code == 200, r.text
        refused = await c2.get("/api/v1/feed/eligibility", params=C1, headers=feed)
        assert refused.status_code == 401
        assert (await c1.get("/api/v1/feed/eligibility", params=C1, headers=feed)).status_code == 401
        # Other keys are looked up again and still work.
        assert (await c2.get("/api/v1/feed/eligibility", params=C1, headers=role_headers["officer"])).status_code == 200


async def test_while_the_listener_is_down_answers_come_from_the_database(
    seeded: asyncpg.Connection, app_settings: Settings, role_headers: dict
) -> None:
    app = create_app(app_settings)
    officer = role_headers["officer"]
    async with AsyncTestClient(app) as client:
        assert _classes(await client.get("/api/v1/feed/eligibility", params=C1, headers=officer)) == {"A": "I",
                                                                                                     "B": "II"}
        listener = app.state.change_listener
        # The test client serves the app on a loop of its own (its portal's thread).
        client.blocking_portal.call(listener.stop)
        assert not _cache(app).live
        # A change no one hears: with the listener down it is still what the next request reads.
        await seeded.execute("UPDATE labs SET status = 'suspended' WHERE lab_code = 'B'")
        assert _classes(await client.get("/api/v1/feed/eligibility", params=C1, headers=officer)) == {"A": "I"}
        assert _cache(app).answer(("eligibility", "C1", today_utc(), None), READY) is None
        client.blocking_portal.call(_start, listener)
        await _live(app, True)
        await seeded.execute("UPDATE labs SET status = 'active' WHERE lab_code = 'B'")
        assert _classes(await client.get("/api/v1/feed/eligibility", params=C1, headers=officer)) == {"A": "I",
                                                                                                     "B": "II"}


async def test_a_lost_listening_connection_turns_the_cache_off_until_it_is_back(
    seeded: asyncpg.Connection, app_settings: Settings, role_headers: dict
) -> None:
    app = create_app(app_settings)
    officer = role_headers["officer"]
    async with AsyncTestClient(app) as client:
        await client.get("/api/v1/labs/A", headers=officer)
        assert _cache(app).answer(("lab", "A", today_utc()), READY) is not None
        app.state.change_listener.retry_seconds = 0.05
        client.blocking_portal.call(_drop, app.state.change_listener)
        await _live(app, False)
        assert _cache(app).answer(("lab", "A", today_utc()), READY) is None
        # It reconnects by itself and caches again.
        await _live(app, True)
        assert (await client.get("/api/v1/labs/A", headers=officer)).status_code == 200
        assert _cache(app).answer(("lab", "A", today_utc()), READY) is not None


async def test_the_day_is_part_of_the_cached_answer(
    seeded: asyncpg.Connection, app_settings: Settings, role_headers: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    today = today_utc()
    app = create_app(app_settings)
    officer = role_headers["officer"]
    async with AsyncTestClient(app) as client:
        made = await client.post("/api/v1/overrides", headers=officer, json={
            "lab_code": "B", "class": "IV", "reason": "audit", "set_by": "o", "valid_until": today.isoformat()})
        assert made.status_code == 201, made.text
        # The override's last day: B's weight is 0 (class IV), so B is not eligible.
        assert _classes(await client.get("/api/v1/feed/eligibility", params=C1, headers=officer)) == {"A": "I"}
        assert (await client.get("/api/v1/labs/B", headers=officer)).json()["effective_class"] == "IV"
        # The next day, with nothing changed in the database, the computed class applies again.
        for module in ("labeval.api.feed", "labeval.api.labs"):
            monkeypatch.setattr(f"{module}.today_utc", lambda: today + timedelta(days=1))
        assert _classes(await client.get("/api/v1/feed/eligibility", params=C1, headers=officer)) == {"A": "I",
                                                                                                     "B": "II"}
        assert (await client.get("/api/v1/labs/B", headers=officer)).json()["effective_class"] == "II"


def test_a_read_that_overlapped_a_change_is_not_cached() -> None:
    cache = ReadCache()
    answer = Answer(b"{}")
    cache.put_answer("k", answer, cache.generation)
    assert cache.answer("k", READY) is None  # not live: nothing is kept
    cache.up()
    started = cache.generation
    cache.changed("labs")
    cache.put_answer("k", answer, started)
    assert cache.answer("k", READY) is None
    cache.put_answer("k", answer, cache.generation)
    assert cache.answer("k", READY) is answer
    assert cache.answer("k", {}) is None  # a request whose guard did not find the cache ready
    # A change of keys leaves answers alone, and the reverse.
    cache.changed("api_keys")
    assert cache.answer("k", READY) is answer
    cache.down()
    assert cache.answer("k", READY) is None and not cache.live


# (statement, the table it should announce or None for no announcement)
STATEMENTS = [
    ("INSERT INTO product_categories (category_code, name) VALUES ('C9', 'C9')", "product_categories"),
    ("UPDATE labs SET province = 'SH' WHERE lab_code = 'A'", "labs"),
    ("DELETE FROM lab_scopes WHERE lab_code = 'B'", "lab_scopes"),
    ("UPDATE grading_runs SET n_labs = 2", "grading_runs"),
    ("UPDATE lab_grades SET score = 1.0 WHERE lab_code = 'A'", "lab_grades"),
    ("INSERT INTO grade_overrides (lab_code, class, reason, valid_until, set_by) "
     "VALUES ('A', 'II', 'r', current_date + 3, 'o')", "grade_overrides"),
    ("UPDATE api_keys SET revoked_at = now() WHERE name = 'test-viewer'", "api_keys"),
    ("UPDATE api_keys SET last_used_at = now()", None),
    ("UPDATE grade_overrides SET reason = 'r' WHERE false", "grade_overrides"),
]


async def test_every_table_the_answers_are_read_from_announces_its_changes(
    seeded: asyncpg.Connection, db_url: str, role_headers: dict
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await connect(db_url)
    try:
        await listener.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[3]))
        for sql, table in STATEMENTS:
            await seeded.execute(sql)
            # A marker after each statement: what arrives before it is what the statement announced.
            await seeded.execute("SELECT pg_notify($1, 'marker')", CHANNEL)
            got = []
            async with asyncio.timeout(HEAR_TIMEOUT):
                while (payload := await heard.get()) != "marker":
                    got.append(payload)
            assert got == ([table] if table else []), sql
        # A rolled-back change announces nothing.
        with contextlib.suppress(RuntimeError):
            async with seeded.transaction():
                await seeded.execute("UPDATE labs SET province = 'GD'")
                raise RuntimeError("roll back")
        await seeded.execute("SELECT pg_notify($1, 'marker')", CHANNEL)
        async with asyncio.timeout(HEAR_TIMEOUT):
            assert await heard.get() == "marker"
    finally:
        await listener.close()


async def test_sync_returns_after_every_change_committed_before_it_was_heard(
    seeded: asyncpg.Connection, db_url: str
) -> None:
    # The guarantee the guard relies on: a change committed (on another connection) before sync()
    # is called has been reported when sync() returns, every time, with no sleep in between.
    heard: list[str] = []
    listener = ChangeListener(db_url, on_change=heard.append, on_down=lambda: None, on_up=lambda: None)
    listener.start()
    try:
        assert await listener.wait_listening(timeout=HEAR_TIMEOUT)
        for i in range(50):
            await seeded.execute("UPDATE labs SET name = $1 WHERE lab_code = 'A'", f"A{i}")
            assert await listener.sync()
            assert heard.count("labs") == i + 1, i
        # Callers of one moment share round trips, and each still sees what committed before it.
        await seeded.execute("UPDATE labs SET name = 'last' WHERE lab_code = 'A'")
        assert all(await asyncio.gather(*(listener.sync() for _ in range(20))))
        assert heard.count("labs") == 51
    finally:
        await listener.stop()
    assert not await listener.sync()  # stopped: not listening
