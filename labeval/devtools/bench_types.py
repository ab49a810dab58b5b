"""What every benchmark target returns: the measured time, the floor it is judged against, and
extra figures. The framework (labeval.devtools.bench) adds target, n, ratio, peak RSS and goal."""

from __future__ import annotations

import msgspec


class Measurement(msgspec.Struct, kw_only=True, frozen=True):
    seconds: float          # the measured thing, wall clock (best or median of repeats, say which in `details`)
    floor_seconds: float    # the floor, same process, same data
    details: dict[str, float | int | str] = {}   # extra figures (rows/s, stage timings, slope, …)
