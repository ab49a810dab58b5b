"""The numbers behind a lab's four charts, for one grading run (the lab's latest by default).

What the run stored is read back as stored: every lab's funnel coordinates and limits, the
lab's bias, its se, the peers' spread τ and the CUSUM's decision limit h. What a run does not
store (each pair's standardised difference, the CUSUM path pair by pair, the bias within each
item group) is recomputed from the pairs as of the run's as_of with scoring's own functions
(score_pairs, pairs_in_window, cusum_series, bias_by_group, funnel_band), under the policy the
run stored. Like the lab's pairs in the API, results imported after the run but reported by its
as_of are included, so a path can differ from the stored evidence when data came in since; the
stored h and the stored end points say what the run saw.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date

import asyncpg
import msgspec
import numpy as np
import polars as pl

from labeval.db import grading as gq
from labeval.db import lab_charts as q
from labeval.db.errors import NotFound
from labeval.db.labs import lab_exists
from labeval.grading.run import pairs_frame
from scoring.evidence import bias_by_group, cusum_series, pairs_in_window
from scoring.pairs import score_pairs
from scoring.policy import Policy
from scoring.rates import Z95, Z998, funnel_band

log = logging.getLogger(__name__)

# The funnel's curves are drawn through this many sizes between 1 pair and the largest lab.
_CURVE_POINTS = 80


class DifferencePoint(msgspec.Struct, kw_only=True, frozen=True):
    """One of the lab's pairs seen from the lab: s > 0 means the lab read higher than its
    partner (for the arbitration lab: than the original lab)."""

    pair_id: int
    sample_code: str
    item_code: str
    category_code: str
    role: str  # original | retest | arbitration
    partner: str
    completed_on: date | None
    level: float | None  # mean of the two results, in the item's unit
    # The level's distance to the nearest specification limit in σR (mean of the two sides'
    # distances; positive inside the conforming region); None for an item without limits.
    position: float | None
    s: float | None  # d / (√2 σR), oriented as above
    outcome: str | None


class FunnelPoint(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    n: int  # quantitative pairs
    rate: float  # attributed discrepancies per pair


class FunnelSeries(msgspec.Struct, kw_only=True, frozen=True):
    """All labs of the run on the funnel, the limits along a grid of n, and the lab."""

    points: list[FunnelPoint]
    target: float | None
    tau2: float | None
    curve_n: list[float]
    lower_95: list[float]
    upper_95: list[float]
    lower_998: list[float]
    upper_998: list[float]
    lab_n: int | None
    lab_rate: float | None


class CusumPoint(msgspec.Struct, kw_only=True, frozen=True):
    pair_id: int
    sample_code: str
    completed_on: date | None
    share: float  # the lab's attributed share of the pair's discrepancy (0 when consistent)
    p: float  # in-control probability
    cusum: float  # the chart after this pair


class CusumSeries(msgspec.Struct, kw_only=True, frozen=True):
    points: list[CusumPoint]
    limit: float | None  # h, as the run calibrated it
    signal_on: date | None  # first date the chart reached h, as the run stored it
    stored_max: float | None  # the run's cusum_max (the recomputed path's max, unless data came in)


class BiasRow(msgspec.Struct, kw_only=True, frozen=True):
    """The lab's bias (σR) overall (group None, the run's figure) or within one item group."""

    group: str | None
    pairs: int
    identifiable: bool
    bias: float | None
    se: float | None
    lower: float | None  # bias − 2 se (the interval the grading's conservative bias uses)
    upper: float | None
    tau: float | None
    peer_limit: float | None  # peer_z τ: the peers' band is ±peer_limit


class LabCharts(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    run_id: int
    as_of: date
    window_start: date
    peer_z: float
    differences: list[DifferencePoint]
    funnel: FunnelSeries
    cusum: CusumSeries
    bias: list[BiasRow]


def _finite(v: float | None) -> float | None:
    return v if v is not None and np.isfinite(v) else None


def _differences(window: pl.DataFrame, code: str) -> list[DifferencePoint]:
    mine = window.filter((pl.col("lab_1") == code) | (pl.col("lab_2") == code) | (pl.col("lab_3") == code))
    out = []
    for r in mine.sort("completed_on", "pair_id", nulls_last=False).iter_rows(named=True):
        if r["lab_1"] == code:
            role, partner, s, outcome = "original", r["lab_2"], r["s"], r["outcome"]
        elif r["lab_2"] == code:
            role, partner, s, outcome = "retest", r["lab_1"], None if r["s"] is None else -r["s"], r["outcome"]
        else:
            # The arbiter against the original lab, whose result was disputed (s_13 = original − arbiter).
            role, partner = "arbitration", r["lab_1"]
            s = None if r["s_13"] is None else -r["s_13"]
            outcome = r["outcome_13"]
        d1, d2 = r["dist_sigma_1"], r["dist_sigma_2"]
        position = (d1 + d2) / 2 if d1 is not None and d2 is not None else None
        out.append(DifferencePoint(
            pair_id=r["pair_id"], sample_code=r["sample_code"], item_code=r["item_code"],
            category_code=r["category_code"], role=role, partner=partner, completed_on=r["completed_on"],
            level=_finite(r["level"]), position=_finite(position), s=_finite(s), outcome=outcome,
        ))
    return out


def _funnel(evidence: list[q.RunEvidence], code: str) -> FunnelSeries:
    pts = [FunnelPoint(lab_code=e.lab_code, n=e.evidence.funnel_n, rate=e.evidence.funnel_rate)
           for e in evidence
           if e.evidence.funnel_n and e.evidence.funnel_rate is not None]
    mine = next((e.evidence for e in evidence if e.lab_code == code), None)
    # target and τ² are the same for every lab of a run.
    any_ev = next((e.evidence for e in evidence if e.evidence.funnel_target is not None), None)
    target = any_ev.funnel_target if any_ev else None
    tau2 = (any_ev.funnel_tau2 or 0.0) if any_ev else None
    grid: np.ndarray = np.array([])
    bands: list[list[float]] = [[], [], [], []]
    if target is not None and pts:
        top = max(p.n for p in pts)
        grid = np.unique(np.round(np.geomspace(1.0, max(top, 2), _CURVE_POINTS), 3))
        lo95, hi95 = funnel_band(target, tau2 or 0.0, grid, Z95)
        lo998, hi998 = funnel_band(target, tau2 or 0.0, grid, Z998)
        bands = [a.tolist() for a in (lo95, hi95, lo998, hi998)]
    return FunnelSeries(
        points=pts, target=target, tau2=tau2, curve_n=grid.tolist(),
        lower_95=bands[0], upper_95=bands[1], lower_998=bands[2], upper_998=bands[3],
        lab_n=mine.funnel_n if mine else None, lab_rate=mine.funnel_rate if mine else None,
    )


@dataclass(frozen=True, slots=True)
class _RunSeries:
    """Every lab's recomputed series for one run and one state of the pairs."""

    window: pl.DataFrame
    paths: pl.DataFrame
    groups: pl.DataFrame


# Cached per (run, pairs version): new results or a new import change the version
# (q.pairs_version), so nothing stale is served, and an unchanged version costs two index lookups.
_Key = tuple[int, tuple[str, int | None, int | None]]


def _compute(pairs: pl.DataFrame, policy: Policy, as_of: date) -> _RunSeries:
    """CPU-bound part, for every lab at once."""
    scored = score_pairs(pairs.lazy(), policy).collect().lazy()
    # The differences chart reads more of a pair than the evidence does.
    window = pairs_in_window(scored, as_of, policy.evidence,
                             keep=("sample_code", "outcome_13", "dist_sigma_1", "dist_sigma_2", "level"))
    paths = cusum_series(scored, policy, as_of=as_of).join(
        window.select("pair_id", "sample_code"), on="pair_id", how="left", maintain_order="left"
    )
    groups = bias_by_group(scored, policy, as_of=as_of, by="category_code")
    return _RunSeries(window=window, paths=paths, groups=groups)


async def _read_and_compute(conn: asyncpg.Connection, policy: Policy, as_of: date) -> _RunSeries:
    csv = await gq.pairs_csv(conn, as_of)
    return await asyncio.to_thread(_compute, pairs_frame(csv), policy, as_of)


# How long a shutdown waits for chart series being computed before it cancels them.
CLOSE_GRACE_SECONDS = 10.0


class SeriesCache:
    """Every lab's recomputed series for the last few (run, pairs version) keys, held by the
    application (made in its lifespan, one per app), not by the module.

    The recomputation costs about what the run's own evidence did (all labs are fitted
    together): it is started when a run completes (warm, in the background, on a connection of
    its own), so the first lab page after a run finds it ready or in progress and only filters.
    A page that asks while it is computed waits for the same computation instead of starting a
    second one."""

    def __init__(self, pool: asyncpg.Pool, size: int = 4) -> None:
        self._pool = pool
        self._size = size
        self._entries: OrderedDict[_Key, asyncio.Task[_RunSeries]] = OrderedDict()
        self._warming: set[asyncio.Task[None]] = set()

    def _entry(self, key: _Key, policy: Policy, as_of: date) -> asyncio.Task[_RunSeries]:
        task = self._entries.get(key)
        if task is not None and not (task.done() and (task.cancelled() or task.exception() is not None)):
            self._entries.move_to_end(key)
            return task
        task = asyncio.get_running_loop().create_task(self._compute(policy, as_of))
        self._entries[key] = task
        while len(self._entries) > self._size:
            # Not cancelled: a page may be waiting for it; it is dropped once done.
            self._entries.popitem(last=False)
        return task

    async def _compute(self, policy: Policy, as_of: date) -> _RunSeries:
        # Its own connection: the computation may outlive the request (or run) that started it.
        async with self._pool.acquire() as conn:
            return await _read_and_compute(conn, policy, as_of)

    async def series(self, conn: asyncpg.Connection, run_id: int, policy: Policy, as_of: date) -> _RunSeries:
        key = (run_id, await q.pairs_version(conn))
        # Shielded: a page whose client goes away does not cancel what the next page will read.
        return await asyncio.shield(self._entry(key, policy, as_of))

    def warm(self, run_id: int, policy: Policy, as_of: date) -> None:
        """Start computing the series of run `run_id` (just completed) in the background."""
        task = asyncio.get_running_loop().create_task(self._warm(run_id, policy, as_of))
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _warm(self, run_id: int, policy: Policy, as_of: date) -> None:
        try:
            async with self._pool.acquire() as conn:
                version = await q.pairs_version(conn)
            await self._entry((run_id, version), policy, as_of)
        except Exception:
            # A page computes it again when asked; the run itself has succeeded.
            log.exception("the chart series of grading run %d could not be computed", run_id)

    def keys(self) -> list[_Key]:
        """The keys whose series are computed (or being computed), oldest first."""
        return list(self._entries)

    async def settled(self) -> None:
        """Wait for the computations started after runs (for shutdown, and for tests)."""
        while self._warming:
            await asyncio.gather(*self._warming, return_exceptions=True)

    async def close(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Before the pool closes: let what is being computed finish for up to `grace` seconds,
        then cancel the rest. Not cancelled at once: a task cancelled in the middle of reading
        the pairs (a COPY) can leave its connection waiting for the cancellation forever, and the
        pool's close waits for that connection (seen as a hung shutdown in a test run)."""
        pending = [*self._warming, *(t for t in self._entries.values() if not t.done())]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._entries.clear()


def warm_after_run(cache: SeriesCache | None, run_id: int, policy: Policy, as_of: date) -> None:
    """Called by the server's run flows (API, pages, schedule) when a run has succeeded; the
    command line has no cache and does nothing."""
    if cache is not None:
        cache.warm(run_id, policy, as_of)


async def lab_charts(
    conn: asyncpg.Connection, code: str, run_id: int | None = None, *, cache: SeriesCache | None = None,
) -> LabCharts | None:
    """The chart series of lab `code` in run `run_id` (default: the latest succeeded run that
    graded it); None when no run graded it. NotFound for an unknown lab or a run that did not
    grade it. With the application's `cache` every lab of a run shares one recomputation;
    without one (the command line, tests) it is computed for this call."""
    await lab_exists(conn, code)
    run = await q.lab_run(conn, code, run_id)
    if run is None:
        if run_id is not None:
            raise NotFound("grading run", run_id)
        return None
    policy = msgspec.convert(run.policy, Policy)
    evidence = await q.run_evidence(conn, run.run_id)
    mine = next((e.evidence for e in evidence if e.lab_code == code), None)
    series = (await cache.series(conn, run.run_id, policy, run.as_of) if cache is not None
              else await _read_and_compute(conn, policy, run.as_of))
    differences = _differences(series.window, code)
    path = series.paths.filter(pl.col("lab_code") == code)
    groups = series.groups.filter(pl.col("lab_code") == code)

    bias_rows = []
    if mine is not None and mine.bias is not None:
        se = mine.bias_se
        bias_rows.append(BiasRow(
            group=None, pairs=mine.pairs_quantitative or 0, identifiable=bool(mine.identifiable),
            bias=mine.bias, se=se,
            lower=mine.bias - 2 * se if se is not None else None,
            upper=mine.bias + 2 * se if se is not None else None,
            tau=mine.bias_tau, peer_limit=mine.bias_peer_limit,
        ))
    for g in groups.iter_rows(named=True):
        b, se = _finite(g["bias"]), _finite(g["bias_se"])
        bias_rows.append(BiasRow(
            group=g["group"], pairs=g["pairs_quantitative"], identifiable=g["identifiable"], bias=b, se=se,
            lower=b - 2 * se if b is not None and se is not None else None,
            upper=b + 2 * se if b is not None and se is not None else None,
            tau=_finite(g["bias_tau"]), peer_limit=_finite(g["bias_peer_limit"]),
        ))
    cusum = CusumSeries(
        points=[CusumPoint(pair_id=r["pair_id"], sample_code=r["sample_code"], completed_on=r["completed_on"],
                           share=r["y"], p=r["p"], cusum=r["cusum"]) for r in path.iter_rows(named=True)],
        limit=mine.cusum_limit if mine else None, signal_on=mine.cusum_signal_on if mine else None,
        stored_max=mine.cusum_max if mine else None,
    )
    return LabCharts(
        lab_code=code, run_id=run.run_id, as_of=run.as_of, window_start=run.window_start,
        peer_z=policy.evidence.peer_z, differences=differences, funnel=_funnel(evidence, code), cusum=cusum,
        bias=bias_rows,
    )
