"""How an ASGI app is served: one place, so that `labeval serve` and the `api` benchmark's floor
(a bare hello-world app) are served alike, with the same server and options."""

from __future__ import annotations

import uvicorn


def serve(app: object, *, host: str, port: int, log_level: str, shutdown_timeout: float) -> None:
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(),
                # The root handler (labeval.logs) formats uvicorn's lines too; the app writes
                # its own access lines.
                log_config=None, access_log=False,
                # On SIGTERM/SIGINT: stop accepting, let in-flight requests finish, then cancel them.
                timeout_graceful_shutdown=shutdown_timeout)
