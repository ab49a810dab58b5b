"""One benchmark target measured in this (fresh) process:
``python -m labeval.devtools.bench_child TARGET N SEED OUT_FILE``.

Writes {"measurement": {...}, "peak_rss_mb": ..., "children_peak_rss_mb": ...} (or {"error": ...})
to OUT_FILE, so
that whatever the target prints cannot garble the result. The scratch database's URL, when the
target needs one, is in LABEVAL_BENCH_DATABASE_URL.
"""

from __future__ import annotations

import importlib
import os
import resource
import sys
import traceback
from pathlib import Path

import msgspec

from labeval.devtools.bench_types import Measurement


def _mb(kilobytes: int) -> float:
    # Linux reports ru_maxrss in kilobytes.
    return round(kilobytes / 1024, 1)


def main(argv: list[str]) -> int:
    target, n, seed, out = argv
    try:
        module = importlib.import_module(f"labeval.devtools.bench_{target}")
        url = os.environ.get("LABEVAL_BENCH_DATABASE_URL") or None
        m = module.measure(int(n), seed=int(seed), database_url=url)
        if not isinstance(m, Measurement):
            raise TypeError(f"{target}.measure returned {type(m).__name__}, not a Measurement")
    except Exception as exc:
        # The parent reports the target as failed with this reason (the traceback is on stderr).
        traceback.print_exc()
        Path(out).write_bytes(msgspec.json.encode({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    result = {
        "measurement": m,
        "peak_rss_mb": _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        # Servers and load generators a target started (the largest of them).
        "children_peak_rss_mb": _mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss),
    }
    Path(out).write_bytes(msgspec.json.encode(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
