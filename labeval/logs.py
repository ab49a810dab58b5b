"""Process logging: one handler on the root logger writing JSON objects or text lines, and the id
of the HTTP request being served on every line emitted while serving it.

The request id lives in a context variable: set by the request middleware around the handler, it
follows the request into everything the handler awaits and into worker threads started with
asyncio.to_thread (which copy the context), so a query or a grading step logs under its request.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import re
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import msgspec

LogFormat = Literal["json", "text"]

REQUEST_ID_HEADER = "x-request-id"

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("labeval_request_id", default=None)

# A caller's id is taken as it is only when it is a short token: it is written into every log
# line and echoed in a header, so free text (spaces, quotes, newlines) is never accepted.
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
# (uvicorn adds color_message: the message again with terminal colour codes.)
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "request_tag", "taskName", "color_message",
}


def current_request_id() -> str | None:
    """The id of the request being served, None outside a request (scheduled jobs, the CLI)."""
    return _request_id.get()


def accept_request_id(offered: str | None) -> str:
    """The caller's X-Request-ID when it is a short token, else a new random id."""
    if offered and _TOKEN.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


class _RequestIdFilter(logging.Filter):
    """Stamps the record with the request id when it is made (in the emitting task or thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = _request_id.get()
        record.request_id = rid
        record.request_tag = f" [{rid}]" if rid else ""
        return True


# str() for anything JSON has no type for, rather than losing the line.
_ENCODER = msgspec.json.Encoder(enc_hook=str)


# (whole second, its text up to the seconds): a line's time is formatted once per second.
_second: tuple[int, str] = (-1, "")


def iso_milliseconds(t: float) -> str:
    """datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds"), the date and time of
    day formatted once per second (it cost as much as the rest of an access line's fields).
    For t >= 0 (a clock's time)."""
    global _second  # noqa: PLW0603 - a one-entry cache
    # As datetime rounds a timestamp: its fraction to microseconds, half to even, carried over.
    frac, whole = math.modf(t)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        us -= 1_000_000
        whole += 1
    second = int(whole)
    known = _second
    if known[0] != second:
        known = _second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{known[1]}.{us // 1000:03d}+00:00"


def _json_head(created: float, level: str, logger: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {
        "timestamp": iso_milliseconds(created),
        "level": level,
        "logger": logger,
        "message": message,
        "request_id": request_id,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ISO 8601), level, logger, message, request_id
    (null outside a request), the record's `extra` fields, and the exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = _json_head(record.created, record.levelname, record.name, record.getMessage(),
                          getattr(record, "request_id", None))
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(line).decode()


# The handler configure_logging made for JSON lines (None for text, or a host's own logging).
_json_handler: logging.StreamHandler | None = None  # type: ignore[type-arg]


def _only_json_handler(logger: logging.Logger, level: int) -> logging.StreamHandler | None:  # type: ignore[type-arg]
    """The JSON handler when a record of `logger` at `level` would reach it and nothing else
    (no other handler, no filter but the request id's, the standard record factory), else None."""
    handler = _json_handler
    root = logging.root
    if (handler is None or not logger.isEnabledFor(level) or level < handler.level
            or len(root.handlers) != 1 or root.handlers[0] is not handler or root.filters
            or len(handler.filters) != 1 or logging.getLogRecordFactory() is not logging.LogRecord):
        return None
    node: logging.Logger = logger
    while node is not root:
        if node.handlers or node.filters or not node.propagate or node.parent is None:
            return None
        node = node.parent
    return handler


def log_fields(logger: logging.Logger, level: int, msg: str, args: tuple[object, ...],
               fields: dict[str, object]) -> None:
    """logger.log(level, msg, *args, extra=fields), for the lines written on every request (the
    access line): when only labeval's JSON handler would write it, the line is encoded and
    written here directly, the same JSON object to the same stream, without the LogRecord (the
    caller's frame lookup, the process and thread names) and the formatter's walk over its
    attributes, which cost more than twice the line itself (measured with timeit)."""
    handler = _only_json_handler(logger, level)
    if handler is None:
        logger.log(level, msg, *args, extra=fields)
        return
    line = _json_head(time.time(), logging.getLevelName(level), logger.name, msg % args, _request_id.get())
    for key, value in fields.items():
        line.setdefault(key, value)
    text = _ENCODER.encode(line).decode() + "\n"
    with handler.lock:  # type: ignore[union-attr]
        try:
            handler.stream.write(text)
            handler.flush()
        except Exception:  # noqa: BLE001 - as logging does: a failed write must not fail the request
            handler.handleError(logging.makeLogRecord({"msg": msg, "args": args, "name": logger.name}))


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to sys.stderr as it is when a line is written (click's runner swaps it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def configure_logging(level: str, fmt: LogFormat, *, stream: TextIO | None = None, force: bool = False) -> None:
    """Configure the root logger once, for the whole process (the `labeval` command calls it).

    Like logging.basicConfig it leaves a root logger that already has handlers alone (a host that
    embeds labeval, or a test runner, has configured logging its own way) unless `force`.
    """
    root = logging.getLogger()
    if root.handlers and not force:
        return
    for old in root.handlers[:]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    global _json_handler  # noqa: PLW0603 - the process's one logging configuration
    _json_handler = handler if fmt == "json" else None
    root.addHandler(handler)
    root.setLevel(level)
