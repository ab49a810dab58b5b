"""The floor of the `api` benchmark: a bare litestar app answering a small JSON object, served
exactly as `labeval serve` serves labeval (same server, one worker, same options).

``python -m labeval.devtools.bench_hello PORT``.
"""

from __future__ import annotations

import sys

from litestar import Litestar, get

from labeval.serving import serve


@get("/hello", sync_to_thread=False)
def hello() -> dict[str, str]:
    return {"hello": "world"}


def create_hello_app() -> Litestar:
    return Litestar(route_handlers=[hello], logging_config=None, debug=False)


app = create_hello_app()


def main(argv: list[str]) -> None:
    port = int(argv[0])
    serve(app, host="127.0.0.1", port=port, log_level="warning", shutdown_timeout=5.0)


if __name__ == "__main__":
    main(sys.argv[1:])
