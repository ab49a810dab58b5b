"""Prometheus metrics: HTTP requests, grading runs and imports served by this process.

Each app gets a registry of its own (made in create_app) instead of prometheus_client's global
one, so that two apps in one process (the tests make many) never share or collide on series.
Counts are per process: a replica's /metrics reports what that replica served and ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from time import perf_counter
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# Seconds. Requests: a list page is milliseconds, an upload or a synchronous run many seconds.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# A run over a province's pairs takes seconds; a national backlog minutes.
_RUN_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "labeval_http_requests", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.request_seconds = Histogram(
            "labeval_http_request_duration_seconds", "Time to answer an HTTP request, by route template, "
            "method and status.", ["route", "method", "status"], buckets=_REQUEST_BUCKETS, registry=self.registry,
        )
        self.grading_runs = Counter(
            "labeval_grading_runs", "Grading runs started by this process, by trigger (api, schedule) and outcome "
            "(succeeded, failed, refused: another run held the run lock, or the scheduled period's run was "
            "already made).", ["trigger", "outcome"],
            registry=self.registry,
        )
        self.grading_run_seconds = Histogram(
            "labeval_grading_run_duration_seconds", "Duration of grading runs that ran (succeeded or failed).",
            ["trigger", "outcome"], buckets=_RUN_BUCKETS, registry=self.registry,
        )
        self.imports = Counter(
            "labeval_imports", "Imports over the API, by kind and outcome (clean, with_rejects, failed).",
            ["kind", "outcome"], registry=self.registry,
        )
        self.import_rows = Counter(
            "labeval_import_rows", "Rows of imports over the API, by kind and outcome (accepted, rejected, "
            "duplicate).", ["kind", "outcome"], registry=self.registry,
        )
        # The request series by (route, method, status): labels() takes a lock and builds its key
        # on every call, a cost on every request (py-spy under `labeval bench api`). Bounded like
        # the series themselves: by the routes' templates (never paths), methods and statuses.
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (CONTENT_TYPE_LATEST)."""
        return generate_latest(self.registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        series = self._request_series.get(key)
        if series is None:
            labels = (route, method, str(status))
            series = self._request_series[key] = (self.requests.labels(*labels),
                                                  self.request_seconds.labels(*labels))
        series[0].inc()
        series[1].observe(seconds)

    @contextlib.contextmanager
    def grading_run(
        self, trigger: str, refused: type[BaseException] | tuple[type[BaseException], ...]
    ) -> Iterator[None]:
        """Count and time the grading run made inside the block; `refused` is the exception (or
        exceptions) that say no run was made: another run holds the lock, or the scheduled
        period's run was already made (nothing ran, so no duration)."""
        t0 = perf_counter()
        try:
            yield
        except refused:
            self.grading_runs.labels(trigger, "refused").inc()
            raise
        except BaseException:
            self._ran(trigger, "failed", perf_counter() - t0)
            raise
        self._ran(trigger, "succeeded", perf_counter() - t0)

    def _ran(self, trigger: str, outcome: str, seconds: float) -> None:
        self.grading_runs.labels(trigger, outcome).inc()
        self.grading_run_seconds.labels(trigger, outcome).observe(seconds)

    def import_failed(self, kind: str) -> None:
        self.imports.labels(kind, "failed").inc()

    def import_done(self, kind: str, *, accepted: int, rejected: int, duplicates: int) -> None:
        self.imports.labels(kind, "with_rejects" if rejected else "clean").inc()
        for outcome, n in (("accepted", accepted), ("rejected", rejected), ("duplicate", duplicates)):
            self.import_rows.labels(kind, outcome).inc(n)
