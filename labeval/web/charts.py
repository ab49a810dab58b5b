"""Charts for the officers' pages: numbers in, accessible SVG out, rendered on the server.

Every chart is a pure function: arrays of numbers, already-translated text (:class:`ChartText`,
legend labels) and a number formatter in; a :class:`markupsafe.Markup` ``<svg>`` out. No network,
no JavaScript, no fonts or styles fetched: the pages work offline and print.

What every chart guarantees (the pages' tests rely on it):

* ``role="img"`` with ``aria-labelledby`` pointing at its ``<title>`` and ``<desc>``; the
  description says how many values were left out because they were not finite (NaN, ±inf).
* each data point is one element of class ``point`` carrying ``data-*`` attributes (``data-x``,
  ``data-y`` and what identifies it, e.g. ``data-sample``) and a ``<title>`` of its own, which a
  browser shows on hover and a screen reader reads;
* categories are told apart by marker SHAPE and line dash, never by colour alone; colours are
  CSS classes (``outcome-…``, ``series-…``, ``highlight``), so the page's stylesheet decides them
  and black-and-white print stays readable;
* all text is escaped; an empty data set gives a readable "no data" chart, not an error.

Why not a charting library: the pure-Python SVG chart libraries on PyPI were weighed. pygal is
the closest fit (server-side SVG, no native dependency), but its markers are told apart by colour
only, its points carry no attributes of our choosing (``data-sample``), it writes its own
``<title>``/``<desc>`` structure and inline styles, and its hover labels need its JavaScript;
matplotlib's SVG backend draws text as paths or with font lookups, cannot tag points with
classes or data attributes, and is a heavy dependency for five small charts; plotly and bokeh
render in the browser with their JavaScript. What the charts need (linear scales, nice ticks, a
few markers and lines) is a few hundred lines, so the plotting layer is written here.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from markupsafe import Markup, escape

__all__ = [
    "ChartText",
    "LinearScale",
    "bias_chart",
    "class_bars_chart",
    "cusum_chart",
    "date_ticks",
    "differences_chart",
    "funnel_chart",
    "nice_ticks",
]

NumberFormat = Callable[[float], str]
DateFormat = Callable[[dt.date], str]

# The mantissas a tick step may have (steps are m · 10^k).
NICE_MANTISSAS = (1.0, 2.0, 2.5, 5.0)


def _default_dropped(n: int) -> str:
    return f"{n} value(s) without a finite number were left out."


@dataclass(frozen=True, slots=True)
class ChartText:
    """A chart's visible text, already translated by the caller.

    ``dropped`` turns the count of non-finite values left out into a sentence (the caller's
    ngettext); it is appended to ``desc`` when the count is not zero.
    """

    title: str
    desc: str
    x_title: str = ""
    y_title: str = ""
    no_data: str = "No data"
    dropped: Callable[[int], str] = field(default=_default_dropped)


# ----------------------------------------------------------------------------- scales and ticks


def _clean(v: float) -> float:
    """Drop the binary noise of k · step (0.30000000000000004 → 0.3)."""
    return float(f"{v:.12g}")


def nice_step(span: float, max_ticks: int) -> float:
    """The smallest step m · 10^k (m in NICE_MANTISSAS) with span / step ≤ max_ticks − 1."""
    raw = span / max(max_ticks - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (*NICE_MANTISSAS, 10.0):
        if m * mag >= raw * (1 - 1e-12):
            return m * mag
    return 10.0 * mag  # pragma: no cover - 10 · mag ≥ raw always


def _next_step(step: float) -> float:
    mag = 10.0 ** math.floor(math.log10(step) + 1e-12)
    m = step / mag
    for cand in (*NICE_MANTISSAS, 10.0):
        if cand > m * (1 + 1e-9):
            return cand * mag
    return 2.0 * step  # pragma: no cover


def nice_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Evenly spaced ticks at multiples of a nice step, the first ≤ lo, the last ≥ hi.

    At least 2 and at most max(max_ticks, 3) ticks. A zero-width range is widened (by 10 % of
    its value, or 1 around 0) so that it still gets an axis. lo and hi must be finite.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("tick range must be finite")
    lo, hi = min(lo, hi), max(lo, hi)
    max_ticks = max(max_ticks, 3)
    width = hi - lo
    # Below 1e-12 of the values (or 1e-200 absolute, where a fifth of it could underflow) the
    # range is taken as a point.
    if width <= max(1e-12 * max(abs(lo), abs(hi)), 1e-200):
        pad = abs(lo) * 0.1 if abs(lo) > 1e-200 else 1.0
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, max_ticks)
    while True:
        k0 = math.floor(lo / step)
        k1 = math.ceil(hi / step)
        while _clean(k0 * step) > lo:
            k0 -= 1
        while _clean(k1 * step) < hi:
            k1 += 1
        if k1 - k0 + 1 <= max_ticks:
            return [_clean(k * step) for k in range(k0, k1 + 1)]
        step = _next_step(step)


@dataclass(frozen=True, slots=True)
class LinearScale:
    """Maps the domain [d0, d1] linearly onto the range [r0, r1] (r1 < r0 flips, as for y)."""

    d0: float
    d1: float
    r0: float
    r1: float

    def __call__(self, v: float) -> float:
        if self.d1 == self.d0:
            return (self.r0 + self.r1) / 2
        return self.r0 + (v - self.d0) * (self.r1 - self.r0) / (self.d1 - self.d0)


_MONTH_STEPS = (1, 2, 3, 6)


def _add_months(d: dt.date, months: int) -> dt.date:
    total = d.year * 12 + d.month - 1 + months
    return dt.date(total // 12, total % 12 + 1, 1)


def date_ticks(lo: dt.date, hi: dt.date, max_ticks: int = 6) -> list[dt.date]:
    """Calendar ticks covering [lo, hi]: every 1, 2, 7 or 14 days, the first of every 1, 2, 3 or
    6 months, or the first of January every nice number of years; the finest that fits."""
    lo, hi = min(lo, hi), max(lo, hi)
    max_ticks = max(max_ticks, 3)
    for days in (1, 2, 7, 14):
        # Weekly ticks fall on Mondays (ordinal 1 was a Monday); others on ordinals divisible
        # by the step.
        offset = 1 if days >= 7 else 0
        k0 = (lo.toordinal() - offset) // days
        k1 = -((offset - hi.toordinal()) // days)
        if k1 - k0 + 1 <= max_ticks:
            if k1 == k0:
                k1 += 1
            return [dt.date.fromordinal(k * days + offset) for k in range(k0, k1 + 1)]
    for step in _MONTH_STEPS:
        start = dt.date(lo.year, lo.month - (lo.month - 1) % step, 1)
        ticks = [start]
        while ticks[-1] < hi:
            ticks.append(_add_months(ticks[-1], step))
        if len(ticks) <= max_ticks:
            return ticks
    years = nice_ticks(float(lo.year), float(hi.year + 1), max_ticks)
    step = max(1, round(years[1] - years[0]))
    y0 = (lo.year // step) * step
    out = [dt.date(y0, 1, 1)]
    while out[-1] < hi:
        out.append(dt.date(out[-1].year + step, 1, 1))
    return out


# ------------------------------------------------------------------------------ SVG primitives

WIDTH, HEIGHT = 640, 360
# Room on the right for the last x tick's label (a date is about 60 px wide, centred on it).
_RIGHT = 36


@dataclass(frozen=True, slots=True)
class _Frame:
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int

    @property
    def x0(self) -> float:
        return float(self.left)

    @property
    def x1(self) -> float:
        return float(self.width - self.right)

    @property
    def y0(self) -> float:  # bottom of the plot area (SVG y grows downwards)
        return float(self.height - self.bottom)

    @property
    def y1(self) -> float:
        return float(self.top)


def _f(v: float) -> str:
    """A coordinate in the markup: two decimals are well below a pixel."""
    return f"{v:.2f}"


def _data(v: float) -> str:
    """A value in a data-* attribute: machine-readable, full enough to identify the point."""
    return repr(float(v)) if math.isfinite(v) else ""


def _esc(v: object) -> str:
    return str(escape(str(v)))


def _open(chart_id: str, kind: str, frame: _Frame, text: ChartText, dropped: int) -> list[str]:
    desc = text.desc
    if dropped:
        desc = f"{desc} {text.dropped(dropped)}".strip()
    cid = _esc(chart_id)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{_esc(kind)}" id="{cid}" '
        f'role="img" aria-labelledby="{cid}-title {cid}-desc" viewBox="0 0 {frame.width} {frame.height}" '
        f'width="{frame.width}" height="{frame.height}" preserveAspectRatio="xMidYMid meet" '
        f'data-dropped="{dropped}">',
        f'<title id="{cid}-title">{_esc(text.title)}</title>',
        f'<desc id="{cid}-desc">{_esc(desc)}</desc>',
    ]


def _no_data(chart_id: str, kind: str, text: ChartText, dropped: int) -> Markup:
    frame = _Frame(WIDTH, 160, 16, 16, 16, 16)
    parts = _open(chart_id, kind, frame, text, dropped)
    parts.append(
        f'<rect class="frame" x="1" y="1" width="{frame.width - 2}" height="{frame.height - 2}" '
        'fill="none" stroke="#999" stroke-width="1" stroke-dasharray="4 3"/>'
    )
    parts.append(
        f'<text class="no-data" x="{frame.width / 2:.0f}" y="{frame.height / 2:.0f}" '
        f'text-anchor="middle" dominant-baseline="middle" font-size="16">{_esc(text.no_data)}</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def _x_axis(frame: _Frame, sx: LinearScale, ticks: Sequence[float], labels: Sequence[str], title: str) -> list[str]:
    out = ['<g class="axis x-axis" font-size="11">',
           f'<line x1="{_f(frame.x0)}" y1="{_f(frame.y0)}" x2="{_f(frame.x1)}" y2="{_f(frame.y0)}" '
           'stroke="#000" stroke-width="1"/>']
    for t, lab in zip(ticks, labels, strict=True):
        x = sx(t)
        out.append(f'<line class="tick" x1="{_f(x)}" y1="{_f(frame.y0)}" x2="{_f(x)}" y2="{_f(frame.y0 + 5)}" '
                   'stroke="#000" stroke-width="1"/>')
        out.append(f'<text class="tick-label" x="{_f(x)}" y="{_f(frame.y0 + 18)}" text-anchor="middle">'
                   f'{_esc(lab)}</text>')
    if title:
        out.append(f'<text class="axis-title" x="{_f((frame.x0 + frame.x1) / 2)}" y="{_f(frame.height - 8)}" '
                   f'text-anchor="middle" font-size="12">{_esc(title)}</text>')
    out.append("</g>")
    return out


def _y_axis(frame: _Frame, sy: LinearScale, ticks: Sequence[float], labels: Sequence[str], title: str) -> list[str]:
    out = ['<g class="axis y-axis" font-size="11">',
           f'<line x1="{_f(frame.x0)}" y1="{_f(frame.y0)}" x2="{_f(frame.x0)}" y2="{_f(frame.y1)}" '
           'stroke="#000" stroke-width="1"/>']
    for t, lab in zip(ticks, labels, strict=True):
        y = sy(t)
        out.append(f'<line class="grid" x1="{_f(frame.x0)}" y1="{_f(y)}" x2="{_f(frame.x1)}" y2="{_f(y)}" '
                   'stroke="#ddd" stroke-width="0.5"/>')
        out.append(f'<line class="tick" x1="{_f(frame.x0 - 5)}" y1="{_f(y)}" x2="{_f(frame.x0)}" y2="{_f(y)}" '
                   'stroke="#000" stroke-width="1"/>')
        out.append(f'<text class="tick-label" x="{_f(frame.x0 - 8)}" y="{_f(y)}" text-anchor="end" '
                   f'dominant-baseline="middle">{_esc(lab)}</text>')
    if title:
        cx, cy = 14.0, (frame.y0 + frame.y1) / 2
        out.append(f'<text class="axis-title" x="{_f(cx)}" y="{_f(cy)}" text-anchor="middle" font-size="12" '
                   f'transform="rotate(-90 {_f(cx)} {_f(cy)})">{_esc(title)}</text>')
    out.append("</g>")
    return out


# Marker shapes as path data around (0, 0) for a marker of half-size r.
def _shape(kind: str, x: float, y: float, r: float = 4.5) -> str:
    if kind == "circle":
        return (f"M{_f(x - r)},{_f(y)}a{_f(r)},{_f(r)} 0 1,0 {_f(2 * r)},0"
                f"a{_f(r)},{_f(r)} 0 1,0 {_f(-2 * r)},0Z")
    if kind == "square":
        s = r * 0.9
        return f"M{_f(x - s)},{_f(y - s)}h{_f(2 * s)}v{_f(2 * s)}h{_f(-2 * s)}Z"
    if kind == "triangle":
        return f"M{_f(x)},{_f(y - r * 1.15)}L{_f(x + r)},{_f(y + r * 0.75)}L{_f(x - r)},{_f(y + r * 0.75)}Z"
    if kind == "triangle-down":
        return f"M{_f(x)},{_f(y + r * 1.15)}L{_f(x + r)},{_f(y - r * 0.75)}L{_f(x - r)},{_f(y - r * 0.75)}Z"
    if kind == "diamond":
        return f"M{_f(x)},{_f(y - r * 1.2)}L{_f(x + r)},{_f(y)}L{_f(x)},{_f(y + r * 1.2)}L{_f(x - r)},{_f(y)}Z"
    if kind == "cross":
        return f"M{_f(x - r)},{_f(y - r)}L{_f(x + r)},{_f(y + r)}M{_f(x - r)},{_f(y + r)}L{_f(x + r)},{_f(y - r)}"
    # plus
    return f"M{_f(x - r)},{_f(y)}L{_f(x + r)},{_f(y)}M{_f(x)},{_f(y - r)}L{_f(x)},{_f(y + r)}"


# Open shapes (lines only) are stroked, closed ones filled: both print in black.
_OPEN_SHAPES = frozenset({"cross", "plus"})
SHAPES = ("circle", "triangle", "square", "diamond", "cross", "plus", "triangle-down")

# The outcomes a difference can have and their marker: the worse the outcome, the more angular.
OUTCOME_SHAPES: dict[str, str] = {
    "consistent": "circle",
    "reversal_within_uncertainty": "diamond",
    "discrepant": "triangle",
    "reversal": "cross",
    "censored_consistent": "square",
    "censored_discrepant": "triangle-down",
}


def _marker(kind: str, x: float, y: float, css: str, attrs: Mapping[str, str], tip: str, r: float = 4.5) -> str:
    paint = ('fill="none" stroke="#000" stroke-width="1.6"' if kind in _OPEN_SHAPES
             else 'fill="#333" stroke="#000" stroke-width="0.8"')
    data = "".join(f' data-{_esc(k)}="{_esc(v)}"' for k, v in attrs.items())
    return (f'<path class="point {_esc(css)}" data-shape="{kind}" d="{_shape(kind, x, y, r)}" {paint}{data}>'
            f"<title>{_esc(tip)}</title></path>")


def _text_width(label: str) -> float:
    # Text is not measurable here: 6 px per character is a fair average at 11 px, and a CJK
    # character is about as wide as it is high.
    return sum(11.0 if ord(ch) > 0x2E80 else 6.0 for ch in label)


def _key_width(kind: str) -> float:
    return 22.0 if kind.startswith("line:") else 16.0 if kind.startswith("rect:") else 14.0


def _legend_layout(entries: Sequence[tuple[str, str, str]], x0: float, x1: float) -> list[tuple[float, int]]:
    """(x, row) of each legend entry, wrapping onto a new row where the next would overflow."""
    out = []
    x, row = x0, 0
    for kind, _, label in entries:
        w = _key_width(kind) + _text_width(label)
        if x > x0 and x + w > x1:
            x, row = x0, row + 1
        out.append((x, row))
        x += w + 14
    return out


def _top(entries: Sequence[tuple[str, str, str]], left: int, right: int, width: int = WIDTH) -> int:
    """The top margin that leaves room for the legend's rows."""
    if not entries:
        return 16
    rows = max(r for _, r in _legend_layout(entries, left, width - right)) + 1
    return 16 + 16 * rows


def _legend(frame: _Frame, entries: Sequence[tuple[str, str, str]]) -> list[str]:
    """entries: (marker shape, 'line:<dash>' or 'rect:<fill>'; css class; label), in rows above
    the plot (the frame's top margin comes from :func:`_top`)."""
    if not entries:
        return []
    out = ['<g class="legend" font-size="11">']
    for (kind, css, label), (x, row) in zip(entries, _legend_layout(entries, frame.x0, frame.x1), strict=True):
        y = 12.0 + 16 * row
        if kind.startswith("line:"):
            dash = kind[5:]
            dash_attr = f' stroke-dasharray="{_esc(dash)}"' if dash else ""
            out.append(f'<line class="legend-key {_esc(css)}" x1="{_f(x)}" y1="{_f(y)}" x2="{_f(x + 18)}" '
                       f'y2="{_f(y)}" stroke="#000" stroke-width="1.5"{dash_attr}/>')
        elif kind.startswith("rect:"):
            out.append(f'<rect class="legend-key {_esc(css)}" x="{_f(x)}" y="{_f(y - 5)}" width="12" height="10" '
                       f'fill="{_esc(kind[5:])}" stroke="#000" stroke-width="0.8"/>')
        else:
            paint = ('fill="none" stroke="#000" stroke-width="1.6"' if kind in _OPEN_SHAPES
                     else 'fill="#333" stroke="#000" stroke-width="0.8"')
            out.append(f'<path class="legend-key {_esc(css)}" d="{_shape(kind, x + 5, y, 4.5)}" {paint}/>')
        out.append(f'<text x="{_f(x + _key_width(kind))}" y="{_f(y)}" dominant-baseline="middle">{_esc(label)}</text>')
    out.append("</g>")
    return out


def _hline(frame: _Frame, y: float, css: str, dash: str = "", width: float = 1.0, label: str = "") -> list[str]:
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    out = [f'<line class="ref {_esc(css)}" x1="{_f(frame.x0)}" y1="{_f(y)}" x2="{_f(frame.x1)}" y2="{_f(y)}" '
           f'stroke="#000" stroke-width="{width}"{dash_attr}/>']
    if label:
        out.append(f'<text class="ref-label" x="{_f(frame.x1 - 2)}" y="{_f(y - 3)}" text-anchor="end" '
                   f'font-size="10">{_esc(label)}</text>')
    return out


def _as_float(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=float).reshape(-1)


def _padded(lo: float, hi: float, frac: float = 0.04) -> tuple[float, float]:
    pad = (hi - lo) * frac
    return lo - pad, hi + pad


def _fmt_all(fmt: NumberFormat, ticks: Sequence[float]) -> list[str]:
    return [fmt(t) for t in ticks]


def _plain(v: float) -> str:
    return f"{v:g}"


# ---------------------------------------------------------------------------- 1. differences


def differences_chart(
    x: Sequence[float] | np.ndarray,
    s: Sequence[float] | np.ndarray,
    outcomes: Sequence[str],
    samples: Sequence[str],
    *,
    text: ChartText,
    outcome_labels: Mapping[str, str],
    fmt: NumberFormat = _plain,
    chart_id: str = "chart-differences-svg",
    items: Sequence[str] | None = None,
) -> Markup:
    """Bland–Altman style: x (the pair's level, or another position), y = s = d / (√2 σR).

    Reference lines at 0 (solid), ±2 (dashed) and ±3 (dotted); one marker per pair, its shape
    by outcome (OUTCOME_SHAPES; unknown outcomes get a plus). ``outcome_labels`` maps outcome
    codes to the legend's words; only outcomes present get a legend entry.
    """
    xa, ya = _as_float(x), _as_float(s)
    n = len(xa)
    if not (len(ya) == n == len(outcomes) == len(samples)) or (items is not None and len(items) != n):
        raise ValueError("x, s, outcomes, samples (and items) must have the same length")
    ok = np.isfinite(xa) & np.isfinite(ya)
    dropped = int(n - ok.sum())
    if not ok.any():
        return _no_data(chart_id, "differences", text, dropped)
    present: list[str] = []
    for i in np.flatnonzero(ok):
        if str(outcomes[i]) not in present:
            present.append(str(outcomes[i]))
    order = [o for o in OUTCOME_SHAPES if o in present] + [o for o in present if o not in OUTCOME_SHAPES]
    entries = [(OUTCOME_SHAPES.get(o, "plus"), f"outcome-{o}", outcome_labels.get(o, o)) for o in order]
    frame = _Frame(WIDTH, HEIGHT, 64, _RIGHT, _top(entries, 64, _RIGHT), 44)
    xs, ys = xa[ok], ya[ok]
    xt = nice_ticks(*_padded(float(xs.min()), float(xs.max())))
    yt = nice_ticks(min(-3.5, float(ys.min())), max(3.5, float(ys.max())), 8)
    sx = LinearScale(xt[0], xt[-1], frame.x0, frame.x1)
    sy = LinearScale(yt[0], yt[-1], frame.y0, frame.y1)
    parts = _open(chart_id, "differences", frame, text, dropped)
    parts += _y_axis(frame, sy, yt, _fmt_all(fmt, yt), text.y_title)
    parts += _x_axis(frame, sx, xt, _fmt_all(fmt, xt), text.x_title)
    parts.append('<g class="refs">')
    parts += _hline(frame, sy(0.0), "zero", width=1.2)
    for k, dash in ((2.0, "6 4"), (3.0, "2 3")):
        for sign in (1.0, -1.0):
            parts += _hline(frame, sy(sign * k), f"limit-{int(k)}", dash, 1.0, ("+" if sign > 0 else "−") + fmt(k))
    parts.append("</g>")
    parts.append('<g class="points">')
    for i in np.flatnonzero(ok):
        outcome = str(outcomes[i])
        shape = OUTCOME_SHAPES.get(outcome, "plus")
        label = outcome_labels.get(outcome, outcome)
        item = f" {items[i]}" if items is not None else ""
        attrs = {"x": _data(xa[i]), "y": _data(ya[i]), "sample": str(samples[i]), "outcome": outcome}
        if items is not None:
            attrs["item"] = str(items[i])
        parts.append(_marker(shape, sx(xa[i]), sy(ya[i]), f"outcome-{outcome}", attrs,
                             f"{samples[i]}{item}: {label}, s = {fmt(float(ya[i]))}"))
    parts.append("</g>")
    parts += _legend(frame, entries)
    parts.append("</svg>")
    return Markup("".join(parts))


# ----------------------------------------------------------------------------------- 2. funnel


def funnel_chart(
    n: Sequence[float] | np.ndarray,
    rate: Sequence[float] | np.ndarray,
    labs: Sequence[str],
    *,
    highlight: str,
    curve_n: Sequence[float] | np.ndarray,
    lower_95: Sequence[float] | np.ndarray,
    upper_95: Sequence[float] | np.ndarray,
    lower_998: Sequence[float] | np.ndarray,
    upper_998: Sequence[float] | np.ndarray,
    target: float,
    text: ChartText,
    legend: Mapping[str, str],
    fmt: NumberFormat = _plain,
    chart_id: str = "chart-funnel-svg",
) -> Markup:
    """All labs as points (x = pairs n, y = rate), the 95 % (dashed) and 99.8 % (dotted) limits as
    curves over ``curve_n``, the target as a line; the lab ``highlight`` drawn larger, as a
    triangle, with class ``highlight``. ``legend`` keys: labs, this_lab, limits_95, limits_998,
    target."""
    na, ra = _as_float(n), _as_float(rate)
    if not (len(na) == len(ra) == len(labs)):
        raise ValueError("n, rate and labs must have the same length")
    ok = np.isfinite(na) & np.isfinite(ra)
    dropped = int(len(na) - ok.sum())
    if not ok.any():
        return _no_data(chart_id, "funnel", text, dropped)
    cn = _as_float(curve_n)
    curves = [(_as_float(c), css, dash) for c, css, dash in (
        (lower_95, "limit-95", "6 4"), (upper_95, "limit-95", "6 4"),
        (lower_998, "limit-998", "2 3"), (upper_998, "limit-998", "2 3"))]
    entries = [
        ("circle", "lab", legend.get("labs", "")), ("triangle", "highlight", legend.get("this_lab", "")),
        ("line:", "target", legend.get("target", "")), ("line:6 4", "limit-95", legend.get("limits_95", "")),
        ("line:2 3", "limit-998", legend.get("limits_998", "")),
    ]
    frame = _Frame(WIDTH, HEIGHT, 64, _RIGHT, _top(entries, 64, _RIGHT), 44)
    ys_all = [ra[ok]] + [c[np.isfinite(c) & np.isfinite(cn)] for c, _, _ in curves]
    if math.isfinite(target):
        ys_all.append(np.array([target]))
    ys = np.concatenate(ys_all)
    xt = nice_ticks(0.0, float(na[ok].max()))
    yt = nice_ticks(max(0.0, float(ys.min())), float(ys.max()))
    sx = LinearScale(xt[0], xt[-1], frame.x0, frame.x1)
    sy = LinearScale(yt[0], yt[-1], frame.y0, frame.y1)
    parts = _open(chart_id, "funnel", frame, text, dropped)
    parts += _y_axis(frame, sy, yt, _fmt_all(fmt, yt), text.y_title)
    parts += _x_axis(frame, sx, xt, _fmt_all(fmt, xt), text.x_title)
    parts.append('<g class="limits">')
    if math.isfinite(target):
        parts += _hline(frame, sy(target), "target", width=1.2)
    for c, css, dash in curves:
        keep = np.isfinite(c) & np.isfinite(cn) & (cn > 0)
        if keep.sum() < 2:
            continue
        order = np.argsort(cn[keep], kind="stable")
        pts = " ".join(f"{_f(sx(a))},{_f(sy(b))}" for a, b in zip(cn[keep][order], c[keep][order], strict=True))
        parts.append(f'<polyline class="curve {css}" points="{pts}" fill="none" stroke="#000" '
                     f'stroke-width="1.2" stroke-dasharray="{dash}"/>')
    parts.append("</g>")
    parts.append('<g class="points">')
    mine: list[str] = []
    for i in np.flatnonzero(ok):
        attrs = {"x": _data(na[i]), "y": _data(ra[i]), "lab": str(labs[i])}
        tip = f"{labs[i]}: n = {fmt(float(na[i]))}, {fmt(float(ra[i]))}"
        if labs[i] == highlight:
            # Drawn last, on top of the others.
            mine.append(_marker("triangle", sx(na[i]), sy(ra[i]), "highlight", attrs, tip, r=7.0))
        else:
            parts.append(_marker("circle", sx(na[i]), sy(ra[i]), "lab", attrs, tip, r=3.0))
    parts += mine
    parts.append("</g>")
    parts += _legend(frame, entries)
    parts.append("</svg>")
    return Markup("".join(parts))


# ------------------------------------------------------------------------------------ 3. CUSUM


def cusum_chart(
    dates: Sequence[dt.date | None],
    values: Sequence[float] | np.ndarray,
    samples: Sequence[str],
    *,
    limit: float,
    text: ChartText,
    legend: Mapping[str, str],
    fmt: NumberFormat = _plain,
    fmt_date: DateFormat = dt.date.isoformat,
    chart_id: str = "chart-cusum-svg",
) -> Markup:
    """The lab's CUSUM statistic by completion date, joined in chart order; the decision limit h
    as a dashed line; points at or above h (an alarm) are triangles of class ``alarm``, the
    rest small circles. Undated or non-finite entries are left out (and counted). ``legend``
    keys: statistic, alarm, limit."""
    va = _as_float(values)
    if not (len(va) == len(dates) == len(samples)):
        raise ValueError("dates, values and samples must have the same length")
    ok = np.array([d is not None for d in dates], dtype=bool) & np.isfinite(va)
    dropped = int(len(va) - ok.sum())
    if not ok.any():
        return _no_data(chart_id, "cusum", text, dropped)
    idx = np.flatnonzero(ok)
    days = np.array([dates[i].toordinal() for i in idx], dtype=float)  # type: ignore[union-attr]
    entries = [("circle", "step", legend.get("statistic", "")), ("triangle", "alarm", legend.get("alarm", "")),
               ("line:6 4", "decision-limit", legend.get("limit", ""))]
    frame = _Frame(WIDTH, HEIGHT, 64, _RIGHT, _top(entries, 64, _RIGHT), 44)
    d_lo, d_hi = dt.date.fromordinal(int(days.min())), dt.date.fromordinal(int(days.max()))
    dts = date_ticks(d_lo, d_hi)
    top = float(va[ok].max())
    if math.isfinite(limit):
        top = max(top, limit * 1.1)
    yt = nice_ticks(0.0, max(top, 1e-9))
    sx = LinearScale(float(dts[0].toordinal()), float(dts[-1].toordinal()), frame.x0, frame.x1)
    sy = LinearScale(yt[0], yt[-1], frame.y0, frame.y1)
    parts = _open(chart_id, "cusum", frame, text, dropped)
    parts += _y_axis(frame, sy, yt, _fmt_all(fmt, yt), text.y_title)
    parts += _x_axis(frame, sx, [float(d.toordinal()) for d in dts], [fmt_date(d) for d in dts], text.x_title)
    if math.isfinite(limit):
        parts += _hline(frame, sy(limit), "decision-limit", "6 4", 1.4, f"h = {fmt(limit)}")
    path = " ".join(f"{_f(sx(d))},{_f(sy(v))}" for d, v in zip(days, va[idx], strict=True))
    parts.append(f'<polyline class="series cusum-path" points="{path}" fill="none" stroke="#000" stroke-width="1.2"/>')
    parts.append('<g class="points">')
    for d, i in zip(days, idx, strict=True):
        v = float(va[i])
        alarm = math.isfinite(limit) and v > 0 and v >= limit
        when = dt.date.fromordinal(int(d))
        attrs = {"x": when.isoformat(), "y": _data(v), "sample": str(samples[i]), "alarm": "true" if alarm else "false"}
        tip = f"{fmt_date(when)} {samples[i]}: {fmt(v)}"
        parts.append(_marker("triangle" if alarm else "circle", sx(d), sy(v), "alarm" if alarm else "step",
                             attrs, tip, r=5.5 if alarm else 2.5))
    parts.append("</g>")
    parts += _legend(frame, entries)
    parts.append("</svg>")
    return Markup("".join(parts))


# ------------------------------------------------------------------------------------- 4. bias


def bias_chart(
    groups: Sequence[str],
    bias: Sequence[float] | np.ndarray,
    lower: Sequence[float] | np.ndarray,
    upper: Sequence[float] | np.ndarray,
    *,
    peer_limit: float | Sequence[float] | np.ndarray,
    text: ChartText,
    legend: Mapping[str, str],
    fmt: NumberFormat = _plain,
    chart_id: str = "chart-bias-svg",
) -> Markup:
    """One row per group (overall, item groups): the lab's bias as a diamond with its interval
    [lower, upper] as a bar, over the peers' band ±peer_limit (= peer_z · τ) shaded and edged
    with dashed lines, and a line at 0. x is in the bias's unit (σR). ``peer_limit`` is one
    number for every row or one per row (each group has its own peers' spread). ``legend``
    keys: bias, interval, peers."""
    ba, la, ua = _as_float(bias), _as_float(lower), _as_float(upper)
    pa = np.full(len(ba), float(peer_limit)) if np.isscalar(peer_limit) else _as_float(peer_limit)
    if not (len(ba) == len(la) == len(ua) == len(groups) == len(pa)):
        raise ValueError("groups, bias, lower, upper (and per-row peer limits) must have the same length")
    ok = np.isfinite(ba)
    dropped = int(len(ba) - ok.sum())
    if not ok.any():
        return _no_data(chart_id, "bias", text, dropped)
    rows = np.flatnonzero(ok)
    longest = max(sum(2 if ord(ch) > 0x2E80 else 1 for ch in str(groups[i])) for i in rows)
    left = int(min(200, max(64, 7 * longest + 16)))
    row_h = 28
    entries = [("diamond", "bias", legend.get("bias", "")), ("line:", "interval", legend.get("interval", "")),
               ("rect:#e6e6e6", "peer-band", legend.get("peers", ""))]
    top = _top(entries, left, _RIGHT)
    frame = _Frame(WIDTH, top + 44 + row_h * len(rows), left, _RIGHT, top, 44)
    vals = [ba[ok], la[ok & np.isfinite(la)], ua[ok & np.isfinite(ua)], np.array([0.0]),
            np.abs(pa[ok & np.isfinite(pa)])]
    allv = np.concatenate(vals)
    span = float(np.abs(allv).max()) or 1.0
    xt = nice_ticks(-span * 1.05, span * 1.05)
    sx = LinearScale(xt[0], xt[-1], frame.x0, frame.x1)
    parts = _open(chart_id, "bias", frame, text, dropped)
    parts.append('<g class="axis y-axis" font-size="11">')
    parts.append(f'<line x1="{_f(frame.x0)}" y1="{_f(frame.y0)}" x2="{_f(frame.x0)}" y2="{_f(frame.y1)}" '
                 'stroke="#000" stroke-width="1"/>')
    for k, i in enumerate(rows):
        y = frame.y1 + row_h * (k + 0.5)
        parts.append(f'<text class="tick-label" x="{_f(frame.x0 - 8)}" y="{_f(y)}" text-anchor="end" '
                     f'dominant-baseline="middle">{_esc(groups[i])}</text>')
    parts.append("</g>")
    parts += _x_axis(frame, sx, xt, _fmt_all(fmt, xt), text.x_title)
    for k, i in enumerate(rows):
        limit = float(pa[i])
        if not (math.isfinite(limit) and limit > 0):
            continue
        x0, x1 = sx(-limit), sx(limit)
        top = frame.y1 + row_h * k + 2
        parts.append(f'<rect class="peer-band" x="{_f(x0)}" y="{_f(top)}" width="{_f(x1 - x0)}" '
                     f'height="{_f(row_h - 4)}" fill="#e6e6e6" stroke="none" data-limit="{_data(limit)}"/>')
        for xv in (x0, x1):
            parts.append(f'<line class="peer-edge" x1="{_f(xv)}" y1="{_f(top)}" x2="{_f(xv)}" '
                         f'y2="{_f(top + row_h - 4)}" stroke="#666" stroke-width="1" stroke-dasharray="4 3"/>')
    parts.append(f'<line class="ref zero" x1="{_f(sx(0.0))}" y1="{_f(frame.y1)}" x2="{_f(sx(0.0))}" '
                 f'y2="{_f(frame.y0)}" stroke="#000" stroke-width="1"/>')
    parts.append('<g class="points">')
    for k, i in enumerate(rows):
        y = frame.y1 + row_h * (k + 0.5)
        if math.isfinite(la[i]) and math.isfinite(ua[i]):
            parts.append(f'<line class="interval" x1="{_f(sx(la[i]))}" y1="{_f(y)}" x2="{_f(sx(ua[i]))}" '
                         f'y2="{_f(y)}" stroke="#000" stroke-width="2"/>')
            for xv in (sx(la[i]), sx(ua[i])):
                parts.append(f'<line class="interval-end" x1="{_f(xv)}" y1="{_f(y - 5)}" x2="{_f(xv)}" '
                             f'y2="{_f(y + 5)}" stroke="#000" stroke-width="2"/>')
        attrs = {"x": _data(ba[i]), "y": str(groups[i]), "group": str(groups[i]),
                 "lower": _data(la[i]), "upper": _data(ua[i])}
        tip = f"{groups[i]}: {fmt(float(ba[i]))}"
        if math.isfinite(la[i]) and math.isfinite(ua[i]):
            tip += f" [{fmt(float(la[i]))}, {fmt(float(ua[i]))}]"
        parts.append(_marker("diamond", sx(ba[i]), y, "bias", attrs, tip, r=5.5))
    parts.append("</g>")
    parts += _legend(frame, entries)
    parts.append("</svg>")
    return Markup("".join(parts))


# ------------------------------------------------------------------------------- 5. class bars


def class_bars_chart(
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float] | np.ndarray]],
    *,
    text: ChartText,
    fmt: NumberFormat = _plain,
    chart_id: str = "chart-classes-svg",
) -> Markup:
    """Grouped bars: for each category (class), one bar per series (e.g. this run, the previous
    run). Series are told apart by fill pattern (solid dark, hatched, light, dotted) as well as
    by their class ``series-k``; each bar is a ``point`` with data-category, data-series, data-y.
    A non-finite value draws no bar (and is counted in the description)."""
    cats = [str(c) for c in categories]
    arrays = [(_esc(name), _as_float(v)) for name, v in series]
    for _, v in arrays:
        if len(v) != len(cats):
            raise ValueError("every series needs one value per category")
    finite = [np.isfinite(v) for _, v in arrays]
    dropped = int(sum(int((~f).sum()) for f in finite))
    if not cats or not arrays or not any(f.any() for f in finite):
        return _no_data(chart_id, "classes", text, dropped)
    legend_fills = ["#333", f"url(#{chart_id}-hatch)", "#bbb", f"url(#{chart_id}-dots)"]
    entries = [(f"rect:{legend_fills[k % len(legend_fills)]}", f"series-{k}", str(name))
               for k, (name, _) in enumerate(series)]
    top = _top(entries, 56, _RIGHT)
    frame = _Frame(WIDTH, 260 + top, 56, _RIGHT, top, 44)
    top = max(float(v[f].max()) for (_, v), f in zip(arrays, finite, strict=True) if f.any())
    yt = nice_ticks(0.0, max(top, 1.0), 6)
    sy = LinearScale(yt[0], yt[-1], frame.y0, frame.y1)
    cid = _esc(chart_id)
    fills = [
        ('fill="#333"', None),
        (f'fill="url(#{cid}-hatch)"', "hatch"),
        ('fill="#bbb"', None),
        (f'fill="url(#{cid}-dots)"', "dots"),
    ]
    parts = _open(chart_id, "classes", frame, text, dropped)
    parts.append(
        f'<defs><pattern id="{cid}-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#000" stroke-width="2"/></pattern>'
        f'<pattern id="{cid}-dots" width="5" height="5" patternUnits="userSpaceOnUse">'
        '<rect width="5" height="5" fill="#fff"/><circle cx="2.5" cy="2.5" r="1.2" fill="#000"/></pattern></defs>'
    )
    parts += _y_axis(frame, sy, yt, _fmt_all(fmt, yt), text.y_title)
    band = (frame.x1 - frame.x0) / len(cats)
    bar_w = band * 0.8 / len(arrays)
    parts.append('<g class="axis x-axis" font-size="11">')
    parts.append(f'<line x1="{_f(frame.x0)}" y1="{_f(frame.y0)}" x2="{_f(frame.x1)}" y2="{_f(frame.y0)}" '
                 'stroke="#000" stroke-width="1"/>')
    for c, cat in enumerate(cats):
        parts.append(f'<text class="tick-label" x="{_f(frame.x0 + band * (c + 0.5))}" y="{_f(frame.y0 + 18)}" '
                     f'text-anchor="middle">{_esc(cat)}</text>')
    if text.x_title:
        parts.append(f'<text class="axis-title" x="{_f((frame.x0 + frame.x1) / 2)}" y="{_f(frame.height - 8)}" '
                     f'text-anchor="middle" font-size="12">{_esc(text.x_title)}</text>')
    parts.append("</g>")
    parts.append('<g class="points">')
    for k, ((name, v), f) in enumerate(zip(arrays, finite, strict=True)):
        paint = fills[k % len(fills)][0]
        for c, cat in enumerate(cats):
            if not f[c]:
                continue
            x = frame.x0 + band * c + band * 0.1 + bar_w * k
            y = sy(max(float(v[c]), 0.0))
            parts.append(
                f'<rect class="point bar series-{k}" x="{_f(x)}" y="{_f(y)}" width="{_f(bar_w)}" '
                f'height="{_f(frame.y0 - y)}" {paint} stroke="#000" stroke-width="0.8" '
                f'data-category="{_esc(cat)}" data-series="{name}" data-x="{_esc(cat)}" data-y="{_data(v[c])}">'
                f"<title>{name} · {_esc(cat)}: {_esc(fmt(float(v[c])))}</title></rect>"
            )
            parts.append(f'<text class="bar-label" x="{_f(x + bar_w / 2)}" y="{_f(y - 3)}" text-anchor="middle" '
                         f'font-size="10">{_esc(fmt(float(v[c])))}</text>')
    parts.append("</g>")
    parts += _legend(frame, entries)
    parts.append("</svg>")
    return Markup("".join(parts))
