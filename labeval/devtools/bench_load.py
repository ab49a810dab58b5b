"""A small HTTP/1.1 load generator, used by the `api` benchmark when wrk is not installed.

``python -m labeval.devtools.bench_load URL CONNECTIONS REQUESTS TIMEOUT [HEADER …]`` keeps
CONNECTIONS keep-alive connections to URL busy until REQUESTS answers have come back (or TIMEOUT
seconds have passed) and prints one JSON object: answers, non-2xx answers, transport errors,
start and end (time.monotonic, comparable between processes on Linux) and every latency in
seconds. Only for loopback: it refuses any other host.

Why not an HTTP client library: a client's own per-request work (headers objects, cookie jars,
pools) would be measured along with the server; this writes one prepared request and reads the
answer's status line, headers and body, nothing more.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
import time
from urllib.parse import urlsplit

import msgspec


class LoadResult(msgspec.Struct, kw_only=True):
    answers: int
    non_2xx: int
    errors: int
    start: float
    end: float
    latencies: list[float]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


async def _read_answer(reader: asyncio.StreamReader) -> int:
    """Read one response; return its status."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split(b" ", 2)[1])
    length, chunked = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def load(url: str, connections: int, requests: int, timeout: float, headers: list[str]) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if not _loopback(host):
        raise ValueError(f"{host} is not a loopback address: this generator only loads this machine")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode("latin-1")
    remaining = requests
    latencies: list[float] = []
    non_2xx = errors = 0
    deadline = time.monotonic() + timeout

    async def one_connection() -> None:
        nonlocal remaining, non_2xx, errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                t0 = time.perf_counter()
                writer.write(request)
                status = await _read_answer(reader)
                latencies.append(time.perf_counter() - t0)
                if not 200 <= status < 300:
                    non_2xx += 1
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            errors += 1
        finally:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return LoadResult(answers=len(latencies), non_2xx=non_2xx, errors=errors, start=start,
                      end=time.monotonic(), latencies=latencies)


def main(argv: list[str]) -> int:
    url, connections, requests, timeout, *headers = argv
    result = asyncio.run(load(url, int(connections), int(requests), float(timeout), headers))
    sys.stdout.buffer.write(msgspec.json.encode(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
