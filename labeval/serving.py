"""How an ASGI app is served: one place, so that `labeval serve` and the `api` benchmark's floor
(a bare hello-world app) are served alike, with the same server and options."""

from __future__ import annotations

import gc

import uvicorn


def serve(app: object, *, host: str, port: int, log_level: str, shutdown_timeout: float) -> None:
    # What exists now (the imported modules, the app and its routes) lives as long as the process.
    # Frozen, the collector's full passes skip it: measured under load (`labeval bench api`'s
    # server), a full pass of labeval's heap stalled every request for about 150 ms, 45 ms frozen.
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(),
                # The root handler (labeval.logs) formats uvicorn's lines too; the app writes
                # its own access lines.
                log_config=None, access_log=False,
                # On SIGTERM/SIGINT: stop accepting, let in-flight requests finish, then cancel them.
                timeout_graceful_shutdown=shutdown_timeout)
