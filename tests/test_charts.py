"""The SVG charts: parsed back with xml.etree, points counted, scales and ticks checked."""

from __future__ import annotations

import datetime as dt
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from labeval.web import charts as c

SVG = "{http://www.w3.org/2000/svg}"
TEXT = c.ChartText(title="Differences", desc="Each pair of the lab.", x_title="Level", y_title="s",
                   no_data="Nothing to show", dropped=lambda n: f"{n} left out.")
HOSTILE = '<script>alert("x")</script> & \'q\''


def parse(m: Markup) -> ET.Element:
    assert isinstance(m, Markup)
    return ET.fromstring(str(m))


def points(root: ET.Element) -> list[ET.Element]:
    return [e for e in root.iter() if "point" in (e.get("class") or "").split()]


def desc(root: ET.Element) -> str:
    return root.find(f"{SVG}desc").text or ""


def assert_accessible(root: ET.Element, title: str) -> None:
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    t = root.find(f"{SVG}title")
    d = root.find(f"{SVG}desc")
    assert t is not None and t.text == title
    assert d is not None
    # aria-labelledby names the title and the desc by their ids.
    assert root.get("aria-labelledby").split() == [t.get("id"), d.get("id")]


def tick_values(root: ET.Element, axis: str) -> list[str]:
    g = next(e for e in root.iter(f"{SVG}g") if axis in (e.get("class") or "").split())
    return [e.text for e in g.iter(f"{SVG}text") if e.get("class") == "tick-label"]


# ------------------------------------------------------------------------------------ ticks


def test_nice_ticks_examples() -> None:
    # Worked by hand: span 0.957 over ≤ 5 intervals needs a step ≥ 0.1914 → 0.2.
    assert c.nice_ticks(0.013, 0.97) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert c.nice_ticks(-3.5, 7.0) == [-5.0, -2.5, 0.0, 2.5, 5.0, 7.5]
    assert c.nice_ticks(0.0, 100.0, 6) == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    # A zero-width range is widened by 10 % of its value.
    assert c.nice_ticks(5.0, 5.0) == [4.5, 4.75, 5.0, 5.25, 5.5]
    assert c.nice_ticks(0.0, 0.0) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    with pytest.raises(ValueError):
        c.nice_ticks(0.0, math.inf)


def _is_nice(step: float) -> bool:
    mantissa = step / 10.0 ** math.floor(math.log10(step) + 1e-9)
    return any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (*c.NICE_MANTISSAS, 10.0))


finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(a=finite, b=finite, max_ticks=st.integers(min_value=3, max_value=12))
def test_nice_ticks_cover_the_data_with_a_nice_even_step(a: float, b: float, max_ticks: int) -> None:
    ticks = c.nice_ticks(a, b, max_ticks)
    lo, hi = min(a, b), max(a, b)
    assert 2 <= len(ticks) <= max_ticks
    assert ticks[0] <= lo and ticks[-1] >= hi
    steps = np.diff(ticks)
    assert (steps > 0).all()
    # Even up to the rounding of doubles at the ticks' magnitude (a step of 0.1 around 1e9 is
    # only good to about one unit in the last place there).
    ulp = 4 * np.finfo(float).eps * max(abs(ticks[0]), abs(ticks[-1]))
    step = (ticks[-1] - ticks[0]) / (len(ticks) - 1)
    assert np.allclose(steps, step, rtol=1e-9, atol=ulp)
    assert _is_nice(step)
    # Every tick is a multiple of the step.
    k = np.array(ticks) / step
    assert np.allclose(k, np.round(k), rtol=1e-9, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(d0=finite, width=st.floats(min_value=1e-3, max_value=1e6), r0=st.floats(0, 500), r1=st.floats(0, 500),
       u=st.floats(0, 1), v=st.floats(0, 1))
def test_linear_scale_is_monotonic_and_maps_the_ends(
    d0: float, width: float, r0: float, r1: float, u: float, v: float
) -> None:
    scale = c.LinearScale(d0, d0 + width, r0, r1)
    assert math.isclose(scale(d0), r0, abs_tol=1e-6)
    assert math.isclose(scale(d0 + width), r1, abs_tol=1e-6 * max(1.0, abs(r1)))
    a, b = d0 + min(u, v) * width, d0 + max(u, v) * width
    if r1 >= r0:
        assert scale(a) <= scale(b) + 1e-9
    else:
        assert scale(a) >= scale(b) - 1e-9


@settings(max_examples=200, deadline=None)
@given(start=st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2040, 1, 1)),
       days=st.integers(min_value=0, max_value=20 * 366))
def test_date_ticks_cover_the_range(start: dt.date, days: int) -> None:
    end = start + dt.timedelta(days=days)
    ticks = c.date_ticks(start, end)
    assert ticks[0] <= start and ticks[-1] >= end
    assert 2 <= len(ticks) <= 8
    assert ticks == sorted(set(ticks))


def test_date_ticks_choose_calendar_steps() -> None:
    # Weekly ticks on Mondays (2026-01-05 is a Monday).
    weekly = c.date_ticks(dt.date(2026, 1, 7), dt.date(2026, 1, 30))
    assert weekly[0] == dt.date(2026, 1, 5) and all(d.weekday() == 0 for d in weekly)
    quarterly = c.date_ticks(dt.date(2026, 1, 3), dt.date(2026, 11, 20))
    assert quarterly == [dt.date(2026, 1, 1), dt.date(2026, 4, 1), dt.date(2026, 7, 1), dt.date(2026, 10, 1),
                         dt.date(2027, 1, 1)]


# ------------------------------------------------------------------------------ differences


def _diff_chart(x: list[float], s: list[float], outcomes: list[str] | None = None,
                samples: list[str] | None = None) -> Markup:
    n = len(x)
    return c.differences_chart(
        x, s, outcomes or ["consistent"] * n, samples or [f"S{i}" for i in range(n)], text=TEXT,
        outcome_labels={"consistent": "Consistent", "discrepant": "Discrepant", "reversal": "Reversal"},
        fmt=lambda v: f"{v:g}",
    )


def test_differences_points_shapes_and_lines() -> None:
    root = parse(_diff_chart([1.0, 2.0, 3.0, 4.0], [0.5, -2.5, 3.2, 0.0],
                             ["consistent", "discrepant", "reversal", "consistent"], ["A", "B", "C", "D"]))
    assert_accessible(root, "Differences")
    pts = points(root)
    assert [p.get("data-sample") for p in pts] == ["A", "B", "C", "D"]
    assert [float(p.get("data-y")) for p in pts] == [0.5, -2.5, 3.2, 0.0]
    # Outcomes differ by shape, not only by colour.
    shapes = {p.get("data-outcome"): p.get("data-shape") for p in pts}
    assert len(set(shapes.values())) == 3
    # Reference lines at 0, ±2 and ±3: five lines, dashes tell ±2 from ±3.
    refs = [e for e in root.iter(f"{SVG}line") if "ref" in (e.get("class") or "").split()]
    assert len(refs) == 5
    assert {e.get("stroke-dasharray") for e in refs} == {None, "6 4", "2 3"}
    # The y ticks cover ±3 and the data.
    yt = [float(v) for v in tick_values(root, "y-axis")]
    assert yt[0] <= -3 and yt[-1] >= 3.2


def test_differences_points_sit_where_the_scale_puts_them() -> None:
    root = parse(_diff_chart([0.0, 5.0, 10.0], [-1.0, 0.0, 1.0]))
    pts = points(root)
    # Path data starts at the marker's left edge (x − r, y) for circles: x grows with the data,
    # y (SVG) shrinks as s grows.
    xy = [tuple(float(v) for v in re.match(r"M([-\d.]+),([-\d.]+)", p.get("d")).groups()) for p in pts]
    assert xy[0][0] < xy[1][0] < xy[2][0]
    assert xy[0][1] > xy[1][1] > xy[2][1]


def test_differences_drop_non_finite_and_say_so() -> None:
    root = parse(_diff_chart([1.0, math.nan, 3.0, 4.0, 5.0], [0.1, 0.2, math.inf, -math.inf, 0.3]))
    assert len(points(root)) == 2
    assert root.get("data-dropped") == "3"
    assert desc(root) == "Each pair of the lab. 3 left out."


def test_empty_and_all_nan_render_no_data() -> None:
    for x, s in (([], []), ([math.nan], [1.0])):
        root = parse(_diff_chart(x, s))
        assert_accessible(root, "Differences")
        assert points(root) == []
        no_data = [e for e in root.iter(f"{SVG}text") if e.get("class") == "no-data"]
        assert [e.text for e in no_data] == ["Nothing to show"]
    assert desc(parse(_diff_chart([math.nan], [1.0]))).endswith("1 left out.")


def test_hostile_text_is_escaped() -> None:
    text = c.ChartText(title=HOSTILE, desc=HOSTILE, x_title=HOSTILE, y_title=HOSTILE)
    m = c.differences_chart([1.0], [0.5], [HOSTILE], [HOSTILE], text=text, outcome_labels={HOSTILE: HOSTILE},
                            items=[HOSTILE])
    assert "<script>" not in str(m)
    root = parse(m)  # well-formed XML despite the quotes and angle brackets
    assert root.find(f"{SVG}title").text == HOSTILE
    (p,) = points(root)
    assert p.get("data-sample") == HOSTILE and p.get("data-item") == HOSTILE
    legend_texts = [e.text for g in root.iter(f"{SVG}g") if g.get("class") == "legend" for e in g.iter(f"{SVG}text")]
    assert legend_texts == [HOSTILE]
    assert c.nice_ticks(0, 1)  # the module is usable after all that


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        c.differences_chart([1.0, 2.0], [1.0], ["consistent"], ["A"], text=TEXT, outcome_labels={})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(finite, st.just(math.nan), st.just(math.inf)),
                          st.one_of(st.floats(-50, 50), st.just(math.nan))), max_size=40))
def test_point_count_equals_finite_count(pairs: list[tuple[float, float]]) -> None:
    x = [a for a, _ in pairs]
    s = [b for _, b in pairs]
    root = parse(_diff_chart(x, s))
    n_finite = sum(math.isfinite(a) and math.isfinite(b) for a, b in pairs)
    assert len(points(root)) == n_finite
    assert int(root.get("data-dropped")) == len(pairs) - n_finite


# ---------------------------------------------------------------------------------- funnel


def test_funnel_highlights_the_lab_and_draws_four_limit_curves() -> None:
    n = np.array([10.0, 40.0, 90.0, np.nan])
    rate = np.array([0.2, 0.05, 0.1, 0.3])
    grid = np.array([5.0, 10.0, 50.0, 100.0])
    m = c.funnel_chart(n, rate, ["L1", "L2", "L3", "L4"], highlight="L2", curve_n=grid,
                       lower_95=np.maximum(0, 0.1 - 0.6 / np.sqrt(grid)), upper_95=0.1 + 0.6 / np.sqrt(grid),
                       lower_998=np.maximum(0, 0.1 - 0.95 / np.sqrt(grid)), upper_998=0.1 + 0.95 / np.sqrt(grid),
                       target=0.1, text=TEXT, legend={"labs": "Labs", "this_lab": "This lab"})
    root = parse(m)
    pts = points(root)
    assert sorted(p.get("data-lab") for p in pts) == ["L1", "L2", "L3"]
    (mine,) = [p for p in pts if "highlight" in p.get("class").split()]
    assert mine.get("data-lab") == "L2" and mine.get("data-shape") != pts[0].get("data-shape")
    curves = list(root.iter(f"{SVG}polyline"))
    assert len(curves) == 4
    assert all(len(cv.get("points").split()) == 4 for cv in curves)
    assert root.get("data-dropped") == "1"
    # x ticks start at 0 and cover the largest n.
    xt = [float(v) for v in tick_values(root, "x-axis")]
    assert xt[0] == 0.0 and xt[-1] >= 90.0


# ----------------------------------------------------------------------------------- CUSUM


def test_cusum_marks_alarms_and_skips_undated() -> None:
    dates = [dt.date(2026, 1, 1), dt.date(2026, 2, 1), None, dt.date(2026, 3, 1), dt.date(2026, 4, 1)]
    values = [0.0, 1.5, 2.0, 4.2, 3.0]
    root = parse(c.cusum_chart(dates, values, ["a", "b", "c", "d", "e"], limit=4.0, text=TEXT, legend={}))
    pts = points(root)
    assert [p.get("data-sample") for p in pts] == ["a", "b", "d", "e"]
    assert [p.get("data-alarm") for p in pts] == ["false", "false", "true", "false"]
    assert pts[2].get("data-shape") == "triangle" and pts[0].get("data-shape") == "circle"
    assert pts[0].get("data-x") == "2026-01-01"
    limit = [e for e in root.iter(f"{SVG}line") if e.get("class") == "ref decision-limit"]
    assert len(limit) == 1
    yt = [float(v) for v in tick_values(root, "y-axis")]
    assert yt[0] == 0.0 and yt[-1] >= 4.2
    assert desc(root).endswith("1 left out.")


# ------------------------------------------------------------------------------------ bias


def test_bias_rows_intervals_and_peer_band() -> None:
    root = parse(c.bias_chart(["Overall", "Food", "Toys"], [0.8, -0.2, math.nan], [0.4, -0.9, 0.0],
                              [1.2, 0.5, 1.0], peer_limit=0.6, text=TEXT, legend={"bias": "Bias"}))
    pts = points(root)
    assert [p.get("data-group") for p in pts] == ["Overall", "Food"]
    assert [float(p.get("data-x")) for p in pts] == [0.8, -0.2]
    band = [e for e in root.iter(f"{SVG}rect") if e.get("class") == "peer-band"]
    assert len(band) == 2  # one per drawn row
    # The band is symmetric about the zero line.
    zero = next(e for e in root.iter(f"{SVG}line") if e.get("class") == "ref zero")
    x0, w = float(band[0].get("x")), float(band[0].get("width"))
    assert math.isclose(x0 + w / 2, float(zero.get("x1")), abs_tol=0.02)
    assert len([e for e in root.iter(f"{SVG}line") if e.get("class") == "interval"]) == 2
    labels = tick_values(root, "y-axis")
    assert labels == ["Overall", "Food"]


def test_bias_bands_per_row_follow_each_groups_peers() -> None:
    root = parse(c.bias_chart(["Overall", "Food"], [0.1, 0.2], [0.0, 0.0], [0.2, 0.4],
                              peer_limit=[0.5, 1.0], text=TEXT, legend={}))
    widths = [float(e.get("width")) for e in root.iter(f"{SVG}rect") if e.get("class") == "peer-band"]
    assert widths[1] == pytest.approx(2 * widths[0], abs=0.02)
    with pytest.raises(ValueError):
        c.bias_chart(["a"], [0.1], [0.0], [0.2], peer_limit=[0.5, 1.0], text=TEXT, legend={})


# ------------------------------------------------------------------------------------- bars


def test_class_bars_one_bar_per_finite_value_patterns_differ() -> None:
    root = parse(c.class_bars_chart(["I", "II", "III", "IV"], [("This run", [5, 10, 3, 0]),
                                                              ("Previous", [4, 11, math.nan, 1])],
                                    text=TEXT, fmt=lambda v: f"{v:.0f}"))
    pts = points(root)
    assert len(pts) == 7
    assert {p.get("data-series") for p in pts} == {"This run", "Previous"}
    fills = {p.get("data-series"): p.get("fill") for p in pts}
    assert fills["This run"] != fills["Previous"]
    # A taller bar for a larger count, zero height for 0.
    h = {(p.get("data-series"), p.get("data-category")): float(p.get("height")) for p in pts}
    assert h[("This run", "II")] > h[("This run", "I")] > h[("This run", "III")] > h[("This run", "IV")] == 0.0
    assert root.get("data-dropped") == "1"


def test_two_charts_on_one_page_have_distinct_ids() -> None:
    a = parse(c.class_bars_chart(["I"], [("x", [1])], text=TEXT, chart_id="one"))
    b = parse(c.class_bars_chart(["I"], [("x", [1])], text=TEXT, chart_id="two"))
    ids_a = {e.get("id") for e in a.iter() if e.get("id")}
    ids_b = {e.get("id") for e in b.iter() if e.get("id")}
    assert ids_a and not ids_a & ids_b


def test_a_long_legend_wraps_inside_the_chart_and_pushes_the_plot_down() -> None:
    outcomes = list(c.OUTCOME_SHAPES)
    labels = {o: f"{o} described at some length for the legend" for o in outcomes}
    root = parse(c.differences_chart(list(range(len(outcomes))), [0.0] * len(outcomes), outcomes,
                                     [f"S{i}" for i in range(len(outcomes))], text=TEXT, outcome_labels=labels))
    legend = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "legend")
    texts = list(legend.iter(f"{SVG}text"))
    assert len(texts) == len(outcomes)
    rows = sorted({float(t.get("y")) for t in texts})
    assert len(rows) > 1
    assert all(float(t.get("x")) + c._text_width(t.text) <= c.WIDTH for t in texts)
    # The plot starts below the last legend row.
    y_axis = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "axis y-axis")
    top = min(float(v) for ln in y_axis.iter(f"{SVG}line") for v in (ln.get("y1"), ln.get("y2")))
    assert top > rows[-1] + 4


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-40, 40)), min_size=1, max_size=30))
def test_every_point_lies_inside_the_axes_and_keeps_the_data_order(pairs: list[tuple[float, float]]) -> None:
    x = [a for a, _ in pairs]
    s = [b for _, b in pairs]
    root = parse(_diff_chart(x, s))
    x_axis = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "axis x-axis")
    base = next(iter(x_axis.iter(f"{SVG}line")))
    left, right, bottom = float(base.get("x1")), float(base.get("x2")), float(base.get("y1"))
    y_axis = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "axis y-axis")
    top = float(next(iter(y_axis.iter(f"{SVG}line"))).get("y2"))
    centres = []
    for p in points(root):
        # Circles start at their left edge: M(x − r),y with r = 4.5.
        mx, my = (float(v) for v in re.match(r"M([-\d.]+),([-\d.]+)", p.get("d")).groups())
        cx, cy = mx + 4.5, my
        assert left - 0.01 <= cx <= right + 0.01 and top - 0.01 <= cy <= bottom + 0.01
        centres.append((float(p.get("data-x")), float(p.get("data-y")), cx, cy))
    # Monotonic both ways: a larger x is never left of a smaller one, a larger s never lower.
    for a in centres:
        for b in centres:
            if a[0] < b[0]:
                assert a[2] <= b[2] + 0.01
            if a[1] < b[1]:
                assert a[3] >= b[3] - 0.01
