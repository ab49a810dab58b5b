"""Operations against real PostgreSQL: the request id in responses and JSON log lines, the
Prometheus metrics, LABEVAL_METRICS=off, and a graceful shutdown that lets in-flight work finish
(or marks a grading run failed and frees the run lock when it cannot)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading

import asyncpg
import httpx
import pytest
import uvicorn
from apscheduler.schedulers.base import STATE_STOPPED
from click.testing import CliRunner
from conftest import TEST_PEPPER
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families
from test_grading_run import AS_OF, seed, small_policy

import labeval.api.labs
import labeval.cli
import labeval.grading.run
import labeval.serving
from labeval.app import create_app
from labeval.cli import main
from labeval.config import Settings
from labeval.db.runs import RUN_LOCK_KEY
from labeval.logs import accept_request_id, configure_logging, request_context
from labeval.scheduler import scheduled_grading

HEX_ID = re.compile(r"[0-9a-f]{32}")


def log_lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


class Hold:
    """Stands in for the run's test hook: a run that has written its grades (not yet committed)
    signals `reached` and then takes `seconds` more. A thread-safe event: AsyncTestClient serves
    the app on an event loop of its own."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.reached = threading.Event()

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, 30), "the run never reached its hold"

    async def __call__(self) -> None:
        self.reached.set()
        await asyncio.sleep(self.seconds)


@pytest.fixture
def hold(monkeypatch: pytest.MonkeyPatch) -> Hold:
    h = Hold(0.5)
    monkeypatch.setattr(labeval.grading.run, "_hold_for_tests", h)
    return h


async def seeded(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await seed(conn)
    finally:
        await conn.close()


async def run_rows(db_url: str) -> list[tuple[str, str | None]]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT status, error FROM grading_runs ORDER BY run_id")
        return [(r["status"], r["error"]) for r in rows]
    finally:
        await conn.close()


async def lock_is_free(db_url: str) -> bool:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetchval("SELECT pg_try_advisory_lock($1)", RUN_LOCK_KEY)
    finally:
        await conn.close()


def samples(exposition: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def test_request_ids_are_short_tokens() -> None:
    assert accept_request_id("trace-42.a:b_C") == "trace-42.a:b_C"
    for bad in (None, "", "has space", 'q"uote', "new\nline", "x" * 129, "-leading-dash"):
        assert HEX_ID.fullmatch(accept_request_id(bad)), bad


async def test_log_lines_carry_the_request_id_into_threads_and_extras(json_log: io.StringIO) -> None:
    log = logging.getLogger("labeval.test")
    with request_context("req-1"):
        log.warning("run %d: %s", 7, "late", extra={"route": "/api/v1/runs"})
        # asyncio.to_thread copies the context: work done in a worker thread logs under the request.
        await asyncio.to_thread(log.info, "in a thread")
    log.info("outside")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, thread, outside, failed = log_lines(json_log)
    assert (first["level"], first["logger"], first["message"]) == ("WARNING", "labeval.test", "run 7: late")
    assert first["request_id"] == "req-1" and first["route"] == "/api/v1/runs"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["timestamp"])
    assert (thread["message"], thread["request_id"]) == ("in a thread", "req-1")
    assert (outside["message"], outside["request_id"]) == ("outside", None)
    assert failed["exception"].startswith("Traceback") and "ValueError: boom" in failed["exception"]


def test_text_lines_show_the_request_id_when_there_is_one() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buf = io.StringIO()
    configure_logging("INFO", "text", stream=buf, force=True)
    try:
        with request_context("req-9"):
            logging.getLogger("labeval.test").info("inside")
        logging.getLogger("labeval.test").info("outside")
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)
    inside, outside = buf.getvalue().splitlines()
    assert inside.endswith(" INFO labeval.test [req-9]: inside")
    assert outside.endswith(" INFO labeval.test: outside")


def test_logging_is_configured_once_and_leaves_a_host_configuration_alone() -> None:
    root = logging.getLogger()
    before = root.handlers[:]
    assert before  # pytest's own capture handlers: a host that configured logging
    configure_logging("DEBUG", "json")
    assert root.handlers == before


async def test_request_id_is_echoed_and_on_every_log_line_of_the_request(
    role_headers: dict, db_url: str, json_log: io.StringIO
) -> None:
    await seeded(db_url)
    app = create_app(Settings(database_url=db_url, key_pepper=TEST_PEPPER, grading_cron=""), small_policy())
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["admin"])
        given = await client.get("/api/v1/labs", headers={"X-Request-ID": "trace-123"})
        assert given.status_code == 200 and given.headers["x-request-id"] == "trace-123"
        refused = await client.get("/api/v1/labs", headers={"X-Request-ID": "two words"})
        made = refused.headers["x-request-id"]
        assert HEX_ID.fullmatch(made)
        run = await client.post("/api/v1/runs", json={"as_of": AS_OF.isoformat()},
                                headers={"X-Request-ID": "run-req-1"})
        assert run.status_code == 201 and run.headers["x-request-id"] == "run-req-1"
        missing = await client.get("/api/v1/runs/999")
        assert missing.status_code == 404 and HEX_ID.fullmatch(missing.headers["x-request-id"])

    lines = log_lines(json_log)
    assert lines and all({"timestamp", "level", "logger", "message", "request_id"} <= set(x) for x in lines)
    access = [x for x in lines if x["logger"] == "labeval.access"]
    assert [(x["request_id"], x["method"], x["route"], x["status"]) for x in access] == [
        ("trace-123", "GET", "/api/v1/labs", 200),
        (made, "GET", "/api/v1/labs", 200),
        ("run-req-1", "POST", "/api/v1/runs", 201),
        (missing.headers["x-request-id"], "GET", "/api/v1/runs/{run_id}", 404),
    ]
    # Logged by the grading run itself, inside the request: it carries the request's id.
    graded = [x for x in lines if x["logger"] == "labeval.grading.run" and "graded" in x["message"]]
    assert len(graded) == 1 and graded[0]["request_id"] == "run-req-1"
    # Start-up and shutdown lines belong to no request.
    assert all(x["request_id"] is None for x in lines if x["logger"] not in ("labeval.access", "labeval.grading.run"))


async def test_metrics_count_requests_runs_and_imports(role_headers: dict, db_url: str) -> None:
    await seeded(db_url)
    app = create_app(Settings(database_url=db_url, key_pepper=TEST_PEPPER, grading_cron=""), small_policy())
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["admin"])
        assert (await client.get("/api/v1/labs")).status_code == 200
        assert (await client.get("/api/v1/labs/NOPE")).status_code == 404
        assert (await client.post("/api/v1/runs", json={"as_of": AS_OF.isoformat()})).status_code == 201
        cats = await client.post("/api/v1/imports/categories", json=[{"category_code": "C1", "name": "x"}])
        assert (cats.json()["accepted"], cats.json()["rejected"]) == (1, 0)
        csv = "机构编号,机构名称,承检范围\nL1,Lab 1,C1\nL2,Lab 2,C9\n".encode("gb18030")
        labs = await client.post("/api/v1/imports/labs", files={"file": ("labs.csv", csv, "text/csv")})
        assert (labs.json()["accepted"], labs.json()["rejected"]) == (1, 1)
        assert (await client.post("/api/v1/imports/labs", json=[{"name": "no code"}])).status_code == 400

        scraped = await client.get("/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        got = samples(scraped.text)

    def value(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    req = "labeval_http_requests_total"
    assert value(req, route="/api/v1/labs", method="GET", status="200") == 1
    # The route template, not the path: one series whatever the lab code.
    assert value(req, route="/api/v1/labs/{code}", method="GET", status="404") == 1
    assert value(req, route="/api/v1/runs", method="POST", status="201") == 1
    assert value("labeval_http_request_duration_seconds_count", route="/api/v1/runs", method="POST",
                 status="201") == 1
    assert value("labeval_grading_runs_total", trigger="api", outcome="succeeded") == 1
    assert value("labeval_grading_run_duration_seconds_count", trigger="api", outcome="succeeded") == 1
    assert value("labeval_imports_total", kind="categories", outcome="clean") == 1
    assert value("labeval_imports_total", kind="labs", outcome="with_rejects") == 1
    assert value("labeval_imports_total", kind="labs", outcome="failed") == 1
    assert value("labeval_import_rows_total", kind="labs", outcome="accepted") == 1
    assert value("labeval_import_rows_total", kind="labs", outcome="rejected") == 1

    # Another app in the same process starts from zero: its registry is its own.
    other = create_app(Settings(database_url=db_url, key_pepper=TEST_PEPPER, grading_cron=""), small_policy())
    async with AsyncTestClient(other) as client:
        client.headers.update(role_headers["admin"])
        fresh = samples((await client.get("/metrics")).text)
    assert ("labeval_grading_runs_total", frozenset({"trigger": "api", "outcome": "succeeded"}.items())) not in fresh


async def test_a_refused_run_is_counted_without_a_duration(role_headers: dict, db_url: str) -> None:
    await seeded(db_url)
    app = create_app(Settings(database_url=db_url, key_pepper=TEST_PEPPER, grading_cron=""), small_policy())
    holder = await asyncpg.connect(db_url)
    try:
        # Another process holds the run lock.
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", RUN_LOCK_KEY)
        async with AsyncTestClient(app) as client:
            client.headers.update(role_headers["admin"])
            assert (await client.post("/api/v1/runs", json={"as_of": AS_OF.isoformat()})).status_code == 409
            got = samples((await client.get("/metrics")).text)
    finally:
        await holder.close()
    assert got[("labeval_grading_runs_total", frozenset({"trigger": "api", "outcome": "refused"}.items()))] == 1
    assert ("labeval_grading_run_duration_seconds_count",
            frozenset({"trigger": "api", "outcome": "refused"}.items())) not in got
    assert ("labeval_http_requests_total",
            frozenset({"route": "/api/v1/runs", "method": "POST", "status": "409"}.items())) in got


async def test_metrics_off_removes_the_route(role_headers: dict, db_url: str) -> None:
    settings = Settings.from_env({"LABEVAL_METRICS": "OFF"}, database_url=db_url, grading_cron="", key_pepper=TEST_PEPPER)
    assert settings.metrics == "off"
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(role_headers["admin"])
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/health")).status_code == 200


async def _serve(app, timeout: float) -> tuple[uvicorn.Server, asyncio.Task, str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False,
                                           timeout_graceful_shutdown=timeout))
    task = asyncio.create_task(server.serve())
    for _ in range(600):
        if server.started:
            break
        await asyncio.sleep(0.05)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


async def test_shutdown_lets_an_in_flight_request_finish(role_headers: dict, db_url: str, hold: Hold) -> None:
    await seeded(db_url)
    app = create_app(Settings(database_url=db_url, key_pepper=TEST_PEPPER, grading_cron="0 2 * * *"), small_policy())
    server, serving, base = await _serve(app, timeout=30)
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=role_headers["admin"]) as client:
        request = asyncio.create_task(client.post("/api/v1/runs", json={"as_of": AS_OF.isoformat()}))
        await hold.wait_reached()
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        response = await request
    await asyncio.wait_for(serving, 60)
    assert response.status_code == 201 and response.json()["status"] == "succeeded"
    assert app.state.scheduler.state == STATE_STOPPED
    assert await run_rows(db_url) == [("succeeded", None)]


async def test_shutdown_timeout_cancels_a_run_marks_it_failed_and_frees_the_lock(role_headers: dict, db_url: str, hold: Hold) -> None:
    await seeded(db_url)
    hold.seconds = 60
    app = create_app(Settings(database_url=db_url, key_pepper=TEST_PEPPER, grading_cron=""), small_policy())
    server, serving, base = await _serve(app, timeout=0.5)
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=role_headers["admin"]) as client:
        request = asyncio.create_task(client.post("/api/v1/runs", json={"as_of": AS_OF.isoformat()}))
        await hold.wait_reached()
        server.should_exit = True
        # Cancelled after the timeout: uvicorn answers 500 for a handler that never answered.
        assert (await request).status_code == 500
    await asyncio.wait_for(serving, 30)
    [(status, error)] = await run_rows(db_url)
    assert status == "failed" and error.startswith("CancelledError")
    assert await lock_is_free(db_url)


@pytest.mark.parametrize(("timeout", "expected"), [(30.0, "succeeded"), (0.2, "failed")])
async def test_shutdown_waits_for_a_running_scheduled_job_up_to_the_timeout(
    role_headers: dict, db_url: str, hold: Hold, timeout: float, expected: str
) -> None:
    await seeded(db_url)
    hold.seconds = 1.0 if expected == "succeeded" else 60
    app = create_app(Settings(database_url=db_url, key_pepper=TEST_PEPPER, grading_cron="", shutdown_timeout=timeout), small_policy())
    async with AsyncTestClient(app):
        app.state.scheduler.add_job(scheduled_grading, args=[app.state], id="test-run")
        await hold.wait_reached()
    assert app.state.scheduler.state == STATE_STOPPED
    assert [s for s, _ in await run_rows(db_url)] == [expected]
    assert await lock_is_free(db_url)


@pytest.mark.parametrize(
    ("env", "args", "expected_format"),
    [({}, ["serve"], "json"), ({}, ["db", "status", "--help"], "text"), ({"LABEVAL_LOG_FORMAT": "TEXT"}, ["serve"], "text"),
     ({"LABEVAL_LOG_FORMAT": "json"}, ["db", "status", "--help"], "json")],
)
def test_the_command_configures_logging_once_json_for_serve(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: list[str], expected_format: str
) -> None:
    configured: list[tuple[str, str]] = []
    served: list[dict] = []
    monkeypatch.setattr(labeval.cli, "configure_logging", lambda level, fmt: configured.append((level, fmt)))
    monkeypatch.setattr(labeval.serving.uvicorn, "run", lambda app, **kw: served.append(kw))
    # --help: the group has configured logging by then; the URL points nowhere and is never used.
    result = CliRunner().invoke(main, ["--database-url", "postgresql://nowhere/x", *args],
                                env={"LABEVAL_SHUTDOWN_TIMEOUT": "7.5", **env}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert configured == [("INFO", expected_format)]
    if args == ["serve"]:
        [kw] = served
        assert (kw["timeout_graceful_shutdown"], kw["log_config"], kw["access_log"]) == (7.5, None, False)


async def test_a_server_error_is_logged_with_its_traceback_and_request_id(
    role_headers: dict, db_url: str, json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(conn: asyncpg.Connection, **_kw) -> list:
        raise RuntimeError("disk on fire")

    # the query the lab list runs (labeval.api.labs reads it as q.list_labs)
    monkeypatch.setattr(labeval.api.labs.q, "list_labs", broken)
    app = create_app(Settings(database_url=db_url, key_pepper=TEST_PEPPER, grading_cron=""))
    async with AsyncTestClient(app) as client:
        client.headers.update(role_headers["admin"])
        answer = await client.get("/api/v1/labs", headers={"X-Request-ID": "err-1"})
        assert answer.status_code == 500 and answer.headers["x-request-id"] == "err-1"
        got = samples((await client.get("/metrics")).text)
    [line] = [x for x in log_lines(json_log) if x["logger"] == "labeval.access" and x["status"] == 500]
    assert (line["level"], line["request_id"], line["route"]) == ("ERROR", "err-1", "/api/v1/labs")
    assert "RuntimeError: disk on fire" in line["exception"]
    assert got[("labeval_http_requests_total",
                frozenset({"route": "/api/v1/labs", "method": "GET", "status": "500"}.items()))] == 1
