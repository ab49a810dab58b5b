"""The audit trail of the API: every state-changing request is recorded by one middleware, and
officers read the log at GET /api/v1/audit.

Recorded centrally, not by each route, so a new route is audited without doing anything: every
authenticated POST/PUT/PATCH/DELETE under /api/v1/, and every form an officer submits on the
pages (actor user:<id>:<username>), writes one row (actor, action = method and
path template, target = path parameters, SHA-256 of the body, request id, status) before its
answer leaves the server, refused attempts (403, 4xx) included.

The row is written in the request's own transaction: a change and its audit row commit together
or not at all, so no crash between them can leave a committed change unaudited. The handler's
work runs in a savepoint inside that transaction (labeval.app.provide_conn): a request that fails
rolls its changes back to the savepoint, and its audit row (with the error's status) still commits.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.transaction import Transaction
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.middleware import ASGIMiddleware
from litestar.params import FromQuery
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from labeval.api.auth import AUDIT, Principal
from labeval.api.paging import Limit, Seq
from labeval.db import audit
from labeval.db.audit import AuditEntry
from labeval.db.users import User
from labeval.logs import current_request_id

_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Page forms that change no state of the service (sessions have their own table).
_NOT_AUDITED = ("/signin", "/signout", "/lang/")


def _audited(method: str, path: str) -> bool:
    if method not in _STATE_CHANGING:
        return False
    return path.startswith("/api/v1/") or not path.startswith(("/api/", *_NOT_AUDITED))


# Scope key of an audited request's transaction (RequestTransaction), read by provide_conn.
REQUEST_TRANSACTION = "labeval.request_transaction"

log = logging.getLogger(__name__)


class RequestTransaction:
    """The one connection and transaction of an audited request: opened when the handler first
    asks for a connection (a request refused by the guard opens none), committed with the audit
    row when the answer starts, rolled back if the request ends without an answer."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None
        self._tx: Transaction | None = None

    async def connection(self) -> asyncpg.Connection:
        if self._conn is None:
            conn = await self._pool.acquire()
            self._conn = conn
            tx = conn.transaction()
            await tx.start()
            self._tx = tx
        return self._conn

    @property
    def open(self) -> bool:
        return self._tx is not None

    async def commit_with(self, row: dict[str, Any] | None) -> None:
        """Append the audit row (if any) and commit. On a failure the transaction is rolled back
        (the change did not happen) and the error raised."""
        assert self._conn is not None and self._tx is not None
        tx, self._tx = self._tx, None
        try:
            if row is not None:
                await audit.append(self._conn, **row)
            await tx.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await tx.rollback()
            raise

    async def close(self) -> None:
        """Roll back what was not committed (a request that ended without an answer) and give the
        connection back."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            if self._tx is not None:
                tx, self._tx = self._tx, None
                with contextlib.suppress(Exception):
                    await tx.rollback()
        finally:
            await self._pool.release(conn)


class AuditMiddleware(ASGIMiddleware):
    """Writes the audit row of a state-changing API request, in the request's transaction, before
    its answer starts, under the request id that labeval.api.middleware gave the request (it runs
    first)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope["type"] != "http":
            await next_app(scope, receive, send)
            return
        if not _audited(scope["method"], scope["path"]):
            # Reads and unaudited forms pass straight through (no wrapper on every message).
            await next_app(scope, receive, send)
            return
        request_id = current_request_id()
        pool: asyncpg.Pool = scope["app"].state.pool
        request_tx = RequestTransaction(pool)
        scope[REQUEST_TRANSACTION] = request_tx  # type: ignore[literal-required]
        body = hashlib.sha256()
        seen_body = False
        written = False

        async def receive_hashed() -> Message:
            nonlocal seen_body
            message = await receive()
            if message["type"] == "http.request" and message.get("body"):
                body.update(message["body"])
                seen_body = True
            return message

        def audit_row(status: int) -> dict[str, Any] | None:
            principal = scope.get("user")
            if not isinstance(principal, Principal | User):
                return None
            return {
                "actor": principal.actor,
                "action": f"{scope['method']} {scope.get('path_template', scope['path'])}",
                "target": dict(scope.get("path_params") or {}),
                "payload_digest": body.hexdigest() if seen_body else None,
                "request_id": request_id, "status": status,
            }

        async def append_alone(row: dict[str, Any]) -> None:
            async with pool.acquire() as conn:
                await audit.append(conn, **row)

        async def send_audited(message: Message) -> None:
            nonlocal written
            if message["type"] == "http.response.start" and not written:
                row = audit_row(message["status"])
                if request_tx.open:
                    try:
                        await request_tx.commit_with(row)
                    except Exception:
                        # Neither the change nor its row committed; the answer must not say it
                        # succeeded. The attempt is audited on its own, as a server error.
                        log.exception("the request's transaction failed to commit")
                        written = True
                        if row is not None:
                            await append_alone({**row, "status": 500})
                        raise
                elif row is not None:
                    # Nothing of the request's own to commit (refused by the guard, or a handler
                    # that keeps its own connections, like a grading run): the row alone.
                    await append_alone(row)
                written = True
            await send(message)

        try:
            await next_app(scope, receive_hashed, send_audited)
        finally:
            await request_tx.close()


class AuditController(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]

    @get("/", opt={"roles": AUDIT})
    async def list_(
        self, conn: NamedDependency[asyncpg.Connection],
        after: Seq = 0,
        limit: Limit = 100,
        actor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
    ) -> list[AuditEntry]:
        """Audit rows with id > after, oldest first, filtered by actor (e.g. key:3:ci), action
        (e.g. `POST /api/v1/runs`) and time [since, until). The last id is the next `after`."""
        return await audit.after(conn, after, limit=limit, actor=actor, action=action, since=since, until=until)
