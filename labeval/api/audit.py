"""The audit trail of the API: every state-changing request is recorded by one middleware, and
officers read the log at GET /api/v1/audit.

Recorded centrally, not by each route, so a new route is audited without doing anything: every
authenticated POST/PUT/PATCH/DELETE under /api/v1/, and every form an officer submits on the
pages (actor user:<id>:<username>), writes one row (actor, action = method and
path template, target = path parameters, SHA-256 of the body, request id, status) before its
answer leaves the server, refused attempts (403, 4xx) included.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import asyncpg
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


class AuditMiddleware(ASGIMiddleware):
    """Writes the audit row of a state-changing API request before its answer starts, under the
    request id that labeval.api.middleware gave the request (it runs first)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope["type"] != "http":
            await next_app(scope, receive, send)
            return
        if not _audited(scope["method"], scope["path"]):
            # Reads and unaudited forms pass straight through (no wrapper on every message).
            await next_app(scope, receive, send)
            return
        request_id = current_request_id()
        body = hashlib.sha256()
        seen_body = False

        async def receive_hashed() -> Message:
            nonlocal seen_body
            message = await receive()
            if message["type"] == "http.request" and message.get("body"):
                body.update(message["body"])
                seen_body = True
            return message

        async def send_audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                principal = scope.get("user")
                if isinstance(principal, Principal | User):
                    pool: asyncpg.Pool = scope["app"].state.pool
                    async with pool.acquire() as conn:
                        await audit.append(
                            conn, actor=principal.actor,
                            action=f"{scope['method']} {scope.get('path_template', scope['path'])}",
                            target=dict(scope.get("path_params") or {}),
                            payload_digest=body.hexdigest() if seen_body else None,
                            request_id=request_id, status=message["status"],
                        )
            await send(message)

        await next_app(scope, receive_hashed, send_audited)


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
