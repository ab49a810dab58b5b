"""The cached-read layer (labeval.api.cached_reads) answers exactly as litestar does: every request
here is sent twice, once with the layer on and once with it off (litestar's routing, guard and
handler), and the two answers must have the same status, the same headers in the same order (but
the date and the request id's value) and the same body; the access line and the metrics must
match too. Each case also checks which way the layer took (served from the cache, handed a refusal
to litestar, or left the request alone), so that a case cannot pass by never using the layer.
Real PostgreSQL, two apps on one database for a change committed by another replica."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import msgspec
import pytest
from conftest import configured_json_log
from hypothesis import example, given
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import AsyncTestClient
from test_cache import C1, _seed

from labeval.api.cached_reads import CachedReads
from labeval.app import create_app
from labeval.config import Settings
from labeval.db import apikeys
from labeval.db.pool import connect
from labeval.grading.overrides import today_utc
from labeval.logs import _only_json_handler, iso_milliseconds, log_fields, request_context

# Headers whose values differ between any two answers.
_VARYING = {"date", "x-request-id"}


@pytest.fixture
async def seeded(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await connect(db_url)
    await _seed(c)
    try:
        yield c
    finally:
        await c.close()


def _layer(app: Litestar) -> CachedReads:
    return app.state.cached_reads


def _headers(r: httpx.Response) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in r.headers.multi_items() if k.lower() not in _VARYING]


class Way(msgspec.Struct, kw_only=True, frozen=True):
    served: int
    refused: int


def _way(app: Litestar) -> Way:
    return Way(served=_layer(app).served, refused=_layer(app).refused)


async def _both(app: Litestar, client: AsyncTestClient, path: str, *, params: dict | None = None,
                headers: dict | None = None, expect: str) -> httpx.Response:
    """The request with the layer on, then off; the two answers must be the same. `expect` is
    what the layer did with the first: 'served', 'refused' or 'passed' (left to litestar)."""
    before = _way(app)
    fast = await client.get(path, params=params, headers=headers)
    after = _way(app)
    assert (after.served - before.served, after.refused - before.refused) == {
        "served": (1, 0), "refused": (0, 1), "passed": (0, 0)}[expect]
    _layer(app).enabled = False
    try:
        slow = await client.get(path, params=params, headers=headers)
    finally:
        _layer(app).enabled = True
    assert _way(app) == after  # with the layer off, nothing went through it
    assert (fast.status_code, _headers(fast), fast.content) == (slow.status_code, _headers(slow), slow.content)
    # The request id: both or neither (a request refused by the router has none), the caller's
    # when it sent one.
    assert ("x-request-id" in fast.headers) is ("x-request-id" in slow.headers)
    given = (headers or {}).get("X-Request-ID")
    if given and "x-request-id" in fast.headers:
        assert fast.headers["x-request-id"] == slow.headers["x-request-id"] == given
    return fast


def _access(buf: io.StringIO) -> list[dict]:
    # Per line, what does not vary between two answers to the same request.
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    return [{k: v for k, v in x.items() if k not in ("timestamp", "request_id", "duration_ms", "message")}
            | {"message": x["message"].rsplit(" ", 2)[0]} for x in lines if x["logger"] == "labeval.access"]


async def test_cached_reads_answer_as_litestar_does(
    seeded: asyncpg.Connection, app_settings: Settings, role_headers: dict, json_log: io.StringIO
) -> None:
    app = create_app(app_settings)
    feed, viewer, officer = role_headers["feed"], role_headers["viewer"], role_headers["officer"]
    async with AsyncTestClient(app) as client:
        # Not cached yet: litestar answers, and caches the answer (and the key).
        first = await _both(app, client, "/api/v1/feed/eligibility", params=C1, headers=feed, expect="passed")
        assert first.status_code == 200 and first.headers["etag"].startswith('"')
        ok = await _both(app, client, "/api/v1/feed/eligibility", params=C1, headers=feed, expect="served")
        assert ok.content == first.content and ok.headers["content-type"] == "application/json"
        etag = ok.headers["etag"]
        for inm in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            r = await _both(app, client, "/api/v1/feed/eligibility", params=C1,
                            headers={**feed, "If-None-Match": inm}, expect="served")
            assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
        r = await _both(app, client, "/api/v1/feed/eligibility", params=C1,
                        headers={**feed, "If-None-Match": '"other"', "X-Request-ID": "trace-7"}, expect="served")
        assert r.status_code == 200 and r.content == first.content

        await _both(app, client, "/api/v1/labs/A", headers=viewer, expect="passed")
        lab = await _both(app, client, "/api/v1/labs/A", headers=viewer, expect="served")
        assert lab.status_code == 200 and lab.json()["code"] == "A"
        same = await _both(app, client, "/api/v1/labs/A", headers={**viewer, "If-None-Match": lab.headers["etag"]},
                           expect="served")
        assert same.status_code == 304
        # admin may call every route.
        await _both(app, client, "/api/v1/labs/A", headers=role_headers["admin"], expect="passed")
        assert (await _both(app, client, "/api/v1/labs/A", headers=role_headers["admin"],
                            expect="served")).status_code == 200

        # The wrong role: refused by the same rule, answered by litestar.
        r = await _both(app, client, "/api/v1/labs/A", headers=feed, expect="refused")
        assert r.status_code == 403 and r.json()["title"] == "Forbidden"
        r = await _both(app, client, "/api/v1/feed/eligibility", params=C1, headers=viewer, expect="refused")
        assert r.status_code == 403
        # No key, a malformed header, an unknown key: nothing cached to look at.
        for h in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer lbv_nope_nope"}):
            r = await _both(app, client, "/api/v1/labs/A", headers=h, expect="passed")
            assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="labeval"'
        # Unknown lab and category: not cached, so litestar's 404s.
        assert (await _both(app, client, "/api/v1/labs/NOPE", headers=viewer, expect="passed")).status_code == 404
        assert (await _both(app, client, "/api/v1/feed/eligibility", params={"product_category": "ZZ"},
                            headers=feed, expect="passed")).status_code == 404
        # What the layer does not parse goes to litestar, which answers it as it always did.
        for path, params in (("/api/v1/feed/eligibility", {**C1, "x": "1"}),
                             ("/api/v1/feed/eligibility", {"product_category": "C 1"}),
                             ("/api/v1/feed/eligibility", {}),
                             ("/api/v1/labs/A", {"x": "1"}), ("/api/v1/labs/A/", None),
                             ("/api/v1/labs/A/pairs", None), ("/api/v1/labs", None)):
            await _both(app, client, path, params=params, headers=officer, expect="passed")
        r = await _both(app, client, "/api/v1/labs/A", headers={**viewer, "Host": "bad host"}, expect="passed")
        assert r.status_code == 400

    # The access lines of the two ways are the same (but for time and request id), in pairs.
    lines = _access(json_log)
    # 27 requests each sent both ways; litestar's router refuses the bad Host before any line.
    assert len(lines) == 2 * 26
    assert lines[0::2] == lines[1::2]
    assert {"method": "GET", "path": "/api/v1/labs/A", "route": "/api/v1/labs/{code}", "status": 304,
            "level": "INFO", "logger": "labeval.access", "message": "GET /api/v1/labs/A 304"} in lines
    # And so are the metrics: every route, method and status counted an even number of times.
    counts = [ln for ln in app.state.metrics.exposition().decode().splitlines()
              if ln.startswith("labeval_http_requests_total{")]
    assert 'labeval_http_requests_total{method="GET",route="/api/v1/labs/{code}",status="304"} 2.0' in counts
    assert counts and all(float(ln.rsplit(" ", 1)[1]) % 2 == 0 for ln in counts)


async def test_a_revoked_key_and_a_spent_budget_are_refused_alike(
    seeded: asyncpg.Connection, app_settings: Settings, role_headers: dict
) -> None:
    app = create_app(msgspec.structs.replace(app_settings, rate_limit_per_minute=4))
    made = await apikeys.create(seeded, app_settings.key_pepper.encode(), name="tender", role="feed")
    feed = {"Authorization": f"Bearer {made.key}"}
    async with AsyncTestClient(app) as client:
        await _both(app, client, "/api/v1/feed/eligibility", params=C1, headers=feed, expect="passed")
        # Two of the four requests of the budget are spent; the next two, one each way.
        await _both(app, client, "/api/v1/feed/eligibility", params=C1, headers=feed, expect="served")
        r = await _both(app, client, "/api/v1/feed/eligibility", params=C1, headers=feed, expect="refused")
        assert r.status_code == 429 and int(r.headers["retry-after"]) == 15  # 1 token at 4 per minute

        viewer = role_headers["viewer"]
        await _both(app, client, "/api/v1/labs/A", headers=viewer, expect="passed")
        await _both(app, client, "/api/v1/labs/A", headers=viewer, expect="served")
        key_id = next(k.id for k in await apikeys.list_all(seeded) if k.name == "test-viewer")
        await apikeys.revoke(seeded, key_id)
        # Committed before the request: the sync hears it, the key is no longer cached.
        r = await _both(app, client, "/api/v1/labs/A", headers=viewer, expect="passed")
        assert r.status_code == 401


async def test_a_change_committed_by_another_replica_is_what_the_layer_answers_next(
    seeded: asyncpg.Connection, app_settings: Settings, role_headers: dict
) -> None:
    one, two = create_app(app_settings), create_app(app_settings)
    officer = role_headers["officer"]
    async with AsyncTestClient(one) as c1, AsyncTestClient(two) as c2:
        await _both(two, c2, "/api/v1/labs/A", headers=officer, expect="passed")
        old = await _both(two, c2, "/api/v1/labs/A", headers=officer, expect="served")
        assert old.json()["effective_class"] == "I"
        made = await c1.post("/api/v1/overrides", headers=officer, json={
            "lab_code": "A", "class": "III", "reason": "audit", "set_by": "o",
            "valid_until": (today_utc() + timedelta(days=5)).isoformat()})
        assert made.status_code == 201, made.text
        # The first request after the commit is not answered from the cache: the change was heard.
        new = await _both(two, c2, "/api/v1/labs/A", headers={**officer, "If-None-Match": old.headers["etag"]},
                          expect="passed")
        assert new.status_code == 200 and new.json()["effective_class"] == "III"
        again = await _both(two, c2, "/api/v1/labs/A", headers=officer, expect="served")
        assert again.content == new.content
        # And the same goes for a change made straight in the database (the command line).
        await _both(two, c2, "/api/v1/feed/eligibility", params=C1, headers=officer, expect="passed")
        both = await _both(two, c2, "/api/v1/feed/eligibility", params=C1, headers=officer, expect="served")
        assert [x["lab_code"] for x in both.json()["labs"]] == ["A", "B"]
        await seeded.execute("UPDATE labs SET status = 'suspended' WHERE lab_code = 'B'")
        await _both(two, c2, "/api/v1/feed/eligibility", params=C1, headers=officer, expect="passed")
        listed = await _both(two, c2, "/api/v1/feed/eligibility", params=C1, headers=officer, expect="served")
        assert [x["lab_code"] for x in listed.json()["labs"]] == ["A"]


def test_the_access_line_written_directly_is_the_line_logging_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Configured here, not by a fixture: pytest adds its capture handlers after the fixtures.
    with configured_json_log() as json_log:
        _direct_and_logged(json_log, monkeypatch)


def _direct_and_logged(json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    # 2025-12-06T05:46:40.123 UTC, a time with milliseconds to round.
    monkeypatch.setattr(time, "time", lambda: 1_765_000_000.1234)
    access = logging.getLogger("labeval.access")
    # The JSON handler alone: the line is written without logging's record.
    assert _only_json_handler(access, logging.INFO) is logging.getLogger().handlers[0]
    fields = {"method": "GET", "path": "/api/v1/labs/A", "route": "/api/v1/labs/{code}", "status": 200,
              "duration_ms": 1.25}
    args = ("GET", "/api/v1/labs/A", 200, 1.25)
    with request_context("req-1"):
        log_fields(access, logging.INFO, "%s %s %d %.1f ms", args, fields)
        access.log(logging.INFO, "%s %s %d %.1f ms", *args, extra=fields)
        # Below the level: nothing, as with logging.
        log_fields(access, logging.DEBUG, "%s %s %d %.1f ms", args, fields)
    direct, logged = json_log.getvalue().splitlines()
    assert direct == logged
    assert json.loads(direct) == {
        "timestamp": "2025-12-06T05:46:40.123+00:00", "level": "INFO", "logger": "labeval.access",
        "message": "GET /api/v1/labs/A 200 1.2 ms", "request_id": "req-1", **fields}
    # Another handler on the way: logging writes the line (to both), not the shortcut.
    other = io.StringIO()
    extra = logging.StreamHandler(other)
    access.addHandler(extra)
    try:
        assert _only_json_handler(access, logging.INFO) is None
        with request_context("req-1"):
            log_fields(access, logging.INFO, "%s %s %d %.1f ms", args, fields)
    finally:
        access.removeHandler(extra)
    assert json_log.getvalue().splitlines()[-1] == logged
    assert other.getvalue() == "GET /api/v1/labs/A 200 1.2 ms\n"


@given(st.floats(min_value=0.0, max_value=4e9, allow_nan=False))
@example(1_765_000_000.9999996)  # rounds up into the next second
@example(1_765_000_000.0009995)
@example(0.0)
def test_a_line_time_is_what_datetime_writes(t: float) -> None:
    assert iso_milliseconds(t) == datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
