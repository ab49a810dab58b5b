"""scoring.cusum: the risk-adjusted Bernoulli CUSUM and its calibrated limit."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.cusum import _lab_cusum_frame, cusum_limit, lab_cusum, risk_adjusted_cusum
from scoring.policy import CusumPolicy


def test_risk_adjusted_cusum_hand():
    # hand computation, R = 2, p = 0.1: W(y=1) = ln 2 - ln 1.1 = 0.597837,
    # W(y=0) = -ln 1.1 = -0.095310; path for y = 0,1,0,1,1: 0 (floored), 0.597837, 0.502527,
    # 1.100364, 1.698201
    c = risk_adjusted_cusum(np.array([0, 1, 0, 1, 1]), np.full(5, 0.1), 2.0)
    np.testing.assert_allclose(c, [0.0, 0.597837, 0.502527, 1.100364, 1.698201], atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0.001, 0.5)), min_size=1, max_size=50),
    st.floats(1.1, 5.0),
)
def test_cusum_closed_form_equals_recursion(obs, r):
    y = np.array([o[0] for o in obs])
    p = np.array([o[1] for o in obs])
    c, out = 0.0, []
    for yi, pi in zip(y, p):
        c = max(0.0, c + yi * math.log(r) - math.log(1 - pi + r * pi))
        out.append(c)
    np.testing.assert_allclose(risk_adjusted_cusum(y, p, r), out, atol=1e-9)


def test_lab_cusum_is_the_same_chart_per_lab():
    days = [dt.date(2025, 1, d) for d in (1, 2, 3, 4, 5)]
    rows = pl.DataFrame({
        "idx": [0, 0, 0, 1, 1],
        "y": [0.0, 1.0, 1.0, 1.0, 0.0],
        "p": [0.1] * 5,
        "completed_on": days,
    })
    out = lab_cusum(rows, odds_ratio=2.0, limit=1.0)
    a = risk_adjusted_cusum(np.array([0.0, 1.0, 1.0]), np.full(3, 0.1), 2.0)
    b = risk_adjusted_cusum(np.array([1.0, 0.0]), np.full(2, 0.1), 2.0)
    assert out.get_column("cusum_current").to_list() == [a[-1], b[-1]]
    # lab 0 crosses 1.0 at its third row (1.100364), lab 1 never (max 0.597837)
    assert out.get_column("cusum_signal_on").to_list() == [days[2], None]


def test_cusum_limit_reaches_target_arl_and_is_reproducible():
    cp = CusumPolicy(odds_ratio=2.0, arl0=200, n_sim=1000, seed=7)
    p = np.full(10, 0.05)
    h = cusum_limit(p, cp)
    assert h == cusum_limit(p, cp)
    assert cusum_limit(p, CusumPolicy(odds_ratio=2.0, arl0=400, n_sim=1000, seed=7)) > h
    # independent check with another generator: mean run length at h is close to 200
    rng = np.random.default_rng(12345)
    n, steps = 3000, 1600
    c = np.zeros(n)
    rl = np.full(n, steps)
    for t in range(steps):
        y = rng.random(n) < 0.05
        c = np.maximum(0.0, c + y * math.log(2.0) - math.log(1.05))
        newly = (c >= h) & (rl == steps)
        rl[newly] = t + 1
    assert 170 <= rl.mean() <= 240


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.2, 4.0))
def test_lab_cusum_per_lab_slices_equal_the_window_expressions(seed, limit):
    # The numpy path (labs contiguous) must give the window expressions' result to the last bit:
    # the same sequential sums, running minimum and first crossing. Rows of a lab interleaved
    # with another's take the window path; both must agree with it.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    idx = np.sort(rng.integers(0, 9, n))
    rows = pl.DataFrame({
        "idx": idx,
        "completed_on": pl.Series(rng.integers(19_000, 19_400, n)).cast(pl.Date),
        "y": np.where(rng.random(n) < 0.2, rng.random(n), 0.0),
        "p": rng.random(n) * 0.3,
    })
    fast = lab_cusum(rows, odds_ratio=2.0, limit=limit)
    assert fast.equals(_lab_cusum_frame(rows, odds_ratio=2.0, limit=limit))
    shuffled = rows.with_row_index("r").sort("idx", descending=True, maintain_order=True).drop("r")
    assert lab_cusum(shuffled, odds_ratio=2.0, limit=limit).sort("idx").equals(fast)
