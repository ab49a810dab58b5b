"""The numbers behind a lab's charts, on a demo world loaded through intake and graded in
PostgreSQL: what the run stored is read back, what it did not store is recomputed to match it."""

from __future__ import annotations

import asyncio
import math
import xml.etree.ElementTree as ET
from datetime import date

import msgspec
import numpy as np
import pytest
from test_grading_run import AS_OF, seed, small_policy

from labeval.db import labs as lq
from labeval.db.errors import NotFound
from labeval.db.pool import create_pool
from labeval.devtools.demo import run_demo
from labeval.grading.lab_charts import SeriesCache, lab_charts
from labeval.grading.run import run_grading
from labeval.models import Evidence
from labeval.web.i18n import translator
from labeval.web.lab_figures import _x_of_differences, lab_figures
from scoring.policy import Policy
from scoring.rates import Z95, funnel_band

TODAY = date(2026, 11, 28)


async def _evidence(conn, run_id: int) -> dict[str, Evidence]:
    rows = await conn.fetch("SELECT lab_code, evidence FROM lab_grades WHERE run_id = $1", run_id)
    return {r["lab_code"]: msgspec.convert(r["evidence"], Evidence) for r in rows if r["evidence"]}


async def test_lab_charts_match_the_run_and_the_pairs(conn) -> None:
    run, _ = await run_demo(conn, Policy(), n_labs=30, seed=11, today=TODAY)
    ev = await _evidence(conn, run.run_id)
    # The busiest lab: every chart has something to show.
    code = max(ev, key=lambda c: ev[c].pairs_quantitative or 0)
    mine = ev[code]
    charts = await lab_charts(conn, code)
    assert charts is not None
    # Computed again for a second page (no cache here): the same numbers.
    assert await lab_charts(conn, code) == charts
    assert (charts.run_id, charts.as_of, charts.window_start) == (run.run_id, TODAY, mine.window_start)
    assert charts.peer_z == Policy().evidence.peer_z

    # Differences: exactly the lab's pairs in the window (the API's query), seen from the lab.
    window = await lq.latest_window(conn, code)
    rows = await lq.lab_pairs(conn, code, window, after=None, limit=10**6)
    assert sorted(p.pair_id for p in charts.differences) == [r["pair_id"] for r in rows]
    by_id = {r["pair_id"]: r for r in rows}
    checked = 0
    for p in charts.differences:
        r = by_id[p.pair_id]
        assert p.sample_code == r["sample_code"]
        if p.s is None or p.role == "arbitration" or r["value_1"] is None or r["value_2"] is None:
            continue
        mine_value, other = (r["value_1"], r["value_2"]) if p.role == "original" else (r["value_2"], r["value_1"])
        # s > 0: the lab read higher than its partner.
        assert np.sign(p.s) == np.sign(mine_value - other)
        assert p.level == pytest.approx((r["value_1"] + r["value_2"]) / 2)
        checked += 1
    assert checked > 10
    assert sum(p.s is not None for p in charts.differences) >= mine.pairs_quantitative

    # Funnel: every lab of the run with quantitative pairs, at its stored coordinates.
    f = charts.funnel
    assert {p.lab_code for p in f.points} == {c for c, e in ev.items() if e.funnel_n}
    assert (f.lab_n, f.lab_rate) == (mine.funnel_n, mine.funnel_rate)
    assert f.target == mine.funnel_target
    assert len(f.curve_n) == len(f.lower_95) == len(f.upper_998) > 10
    assert all(lo <= f.target <= hi for lo, hi in zip(f.lower_95, f.upper_95, strict=True))
    # The curves pass through the lab's own stored limits at its n.
    lo, hi = funnel_band(f.target, f.tau2, np.array([float(mine.funnel_n)]), Z95)
    assert (lo[0], hi[0]) == pytest.approx((mine.funnel_lower_95, mine.funnel_upper_95), abs=1e-12)

    # CUSUM: recomputed pair by pair, it ends where the run's evidence says (no data came in since).
    c = charts.cusum
    assert len(c.points) == mine.pairs_quantitative
    values = [pt.cusum for pt in c.points]
    assert max(values) == pytest.approx(mine.cusum_max, abs=1e-9)
    assert values[-1] == pytest.approx(mine.cusum_current, abs=1e-9)
    assert c.limit == mine.cusum_limit and c.stored_max == mine.cusum_max
    dates = [pt.completed_on for pt in c.points]
    assert dates == sorted(dates)
    assert {pt.sample_code for pt in c.points} <= {r["sample_code"] for r in rows}

    # Bias: the run's overall figure first, then the lab's item groups (categories).
    overall, *groups = charts.bias
    assert overall.group is None
    assert (overall.bias, overall.se, overall.tau) == (mine.bias, mine.bias_se, mine.bias_tau)
    assert overall.lower == pytest.approx(mine.bias - 2 * mine.bias_se)
    assert overall.peer_limit == pytest.approx(charts.peer_z * mine.bias_tau)
    categories = {p.category_code for p in charts.differences if p.s is not None and p.role != "arbitration"}
    assert {g.group for g in groups} == categories
    assert sum(g.pairs for g in groups) == mine.pairs_quantitative
    for g in groups:
        if g.bias is not None and g.se is not None:
            assert g.lower < g.bias < g.upper
            assert math.isfinite(g.tau) and g.peer_limit == pytest.approx(charts.peer_z * g.tau)

    # The same numbers drawn: one point per finite value in each chart.
    figures = lab_figures(charts, translator("en"))
    roots = {k: ET.fromstring(str(v)) for k, v in figures.items()}
    assert all(r.get("role") == "img" for r in roots.values())
    xs, _title = _x_of_differences(charts.differences, translator("en"))
    assert _n_points(roots["differences"]) == sum(
        p.s is not None and x is not None for p, x in zip(charts.differences, xs, strict=True)) > 10
    assert _n_points(roots["funnel"]) == len(charts.funnel.points)
    assert _n_points(roots["cusum"]) == len(charts.cusum.points)
    assert _n_points(roots["bias"]) == sum(r.bias is not None for r in charts.bias)
    (highlighted,) = [e for e in roots["funnel"].iter() if (e.get("class") or "").split() == ["point", "highlight"]]
    assert highlighted.get("data-lab") == code


def _n_points(root: ET.Element) -> int:
    return sum("point" in (e.get("class") or "").split() for e in root.iter())


async def test_unknown_lab_or_run_and_a_lab_never_graded(conn) -> None:
    with pytest.raises(NotFound):
        await lab_charts(conn, "NO-SUCH-LAB")
    await conn.execute("INSERT INTO labs (lab_code, name, status) VALUES ('L-NEW', 'New lab', 'active')")
    assert await lab_charts(conn, "L-NEW") is None
    with pytest.raises(NotFound):
        await lab_charts(conn, "L-NEW", run_id=12345)


async def test_a_pair_imported_after_the_run_shows_at_once(conn, db_url: str) -> None:
    # Through the application's cache: the new results change the pairs' version, so the series
    # kept for the run are not served stale.
    pool = await create_pool(db_url, min_size=1, max_size=2)
    cache = SeriesCache(pool)
    await seed(conn)
    await run_grading(conn, small_policy(), as_of=AS_OF, trigger="test")
    before = await lab_charts(conn, "A", cache=cache)
    assert await lab_charts(conn, "A", cache=cache) == before and len(cache.keys()) == 1
    assert len(before.differences) == 14 and {p.s for p in before.differences} == {0.0}
    # A new pair reported within the run's window: A (original) reads 50, B (retest) 53.
    await conn.execute("INSERT INTO samples (sample_code, category_code, original_lab_code) VALUES ('S999', 'TEX', 'A')")
    await conn.executemany(
        "INSERT INTO results (sample_code, item_code, lab_code, role, value, verdict, reported_on) "
        "VALUES ('S999', 'Q', $1, $2, $3, 'pass', $4)",
        [("A", "original", 50.0, date(2026, 5, 1)), ("B", "retest", 53.0, date(2026, 5, 20))],
    )
    after = await lab_charts(conn, "A", cache=cache)
    assert after.run_id == before.run_id
    (new,) = [p for p in after.differences if p.sample_code == "S999"]
    # Hand: σR = 1 (absolute), d = 50 − 53 = −3, s = −3 / √2 = −2.1213; CD = 2.8 √(1 − 0.25 · 0) = 2.8 < 3.
    assert new.s == pytest.approx(-3 / math.sqrt(2))
    assert (new.role, new.partner, new.outcome, new.level) == ("original", "B", "discrepant", 51.5)
    # B sees the same pair from its side.
    b = await lab_charts(conn, "B", cache=cache)
    (mirror,) = [p for p in b.differences if p.sample_code == "S999"]
    assert mirror.s == pytest.approx(3 / math.sqrt(2)) and mirror.role == "retest"
    assert len(cache.keys()) == 2
    await cache.close()
    await pool.close()


async def test_closing_the_cache_lets_a_computation_finish_and_cancels_one_past_the_grace() -> None:
    # Shutdown does not cancel a computation at once (cancelled in the middle of reading the
    # pairs, its connection could wait forever and hang the pool's close): it waits for up to
    # the grace, then cancels what is left.
    finished: list[str] = []

    async def work(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        finished.append(name)

    cache = SeriesCache(None)  # type: ignore[arg-type]  # no computation here reads the database
    quick = asyncio.get_running_loop().create_task(work("quick", 0.05))
    cache._warming.add(quick)
    await cache.close(grace=5.0)
    assert finished == ["quick"] and not quick.cancelled()

    slow = asyncio.get_running_loop().create_task(work("slow", 60.0))
    cache._warming.add(slow)
    await cache.close(grace=0.05)
    assert slow.cancelled() and finished == ["quick"]
