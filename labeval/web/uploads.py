"""Closing the files of a multipart form once its request is answered.

The CSRF check reads a page's form before any handler runs, so a POST refused there, or by a
page's role guard, leaves its uploaded files (spooled temporary files) open until the garbage
collector finds them. This middleware wraps the whole request and closes every file part of the
parsed form when the answer is out, whoever answered."""

from __future__ import annotations

from litestar.datastructures import UploadFile
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.utils.empty import value_or_default
from litestar.utils.scope.state import ScopeState

# Requests that carry no form: nothing to close (and the API's reads pass straight through).
_NO_FORM = frozenset({"GET", "HEAD", "OPTIONS"})


class CloseUploadsMiddleware(ASGIMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope.get("method") in _NO_FORM:
            await next_app(scope, receive, send)
            return
        try:
            await next_app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                form = value_or_default(ScopeState.from_scope(scope).form, None)
                for part in (form or {}).values():
                    for item in part if isinstance(part, list) else [part]:
                        if isinstance(item, UploadFile):
                            await item.close()
