"""A grouped bar chart as SVG for the dashboard (counts per class, two runs side by side)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

_W, _H = 520, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 120, 28, 44
# Fill patterns (not colour alone) tell the series apart in print.
_FILLS = ("series-a", "series-b", "series-c")


def _nice_step(value: float, ticks: int = 4) -> int:
    """A whole step of 1, 2 or 5 × 10^k such that `ticks` steps cover `value` (counts are whole)."""
    if value <= 0:
        return 1
    raw = value / ticks
    mag = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return int(m * mag)
    return int(10 * mag)


def grouped_bars(groups: Sequence[str], series: Sequence[tuple[str, Sequence[int]]], *, title: str, x_title: str,
                 y_title: str, number: Callable[[int], str]) -> Markup:
    highest = max((v for _, vs in series for v in vs), default=0)
    step = _nice_step(highest)
    n_ticks = max(1, math.ceil(highest / step))
    top = step * n_ticks
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    band = plot_w / max(1, len(groups))
    bar = band * 0.8 / max(1, len(series))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" class="chart" '
           f'aria-labelledby="cd-title cd-desc">',
           f'<title id="cd-title">{escape(title)}</title>',
           f'<desc id="cd-desc">{escape("; ".join(f"{g}: " + ", ".join(f"{n} {number(vs[i])}" for n, vs in series) for i, g in enumerate(groups)))}</desc>',
           '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
           '<line x1="0" y1="0" x2="0" y2="6" stroke="#1b1f24" stroke-width="2"/></pattern></defs>']
    for k in range(n_ticks + 1):
        v = step * k
        y = _TOP + plot_h - plot_h * k / n_ticks
        out.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c9d1d9"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="12">{escape(number(v))}</text>')
    for i, g in enumerate(groups):
        x0 = _LEFT + band * i + band * 0.1
        for j, (name, values) in enumerate(series):
            v = values[i]
            h = plot_h * v / top
            fill = "url(#hatch)" if j == 1 else "#4a5560"
            out.append(f'<rect class="point bar {_FILLS[j % 3]}" data-group="{escape(g)}" data-series="{escape(name)}" '
                       f'data-value="{v}" x="{x0 + j * bar:.1f}" y="{_TOP + plot_h - h:.1f}" width="{bar - 2:.1f}" '
                       f'height="{h:.1f}" fill="{fill}" stroke="#1b1f24"><title>{escape(name)}: {escape(number(v))}</title></rect>')
        out.append(f'<text x="{_LEFT + band * (i + 0.5):.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle" font-size="13">{escape(g)}</text>')
    out.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{_TOP + plot_h}" y2="{_TOP + plot_h}" stroke="#1b1f24"/>')
    out.append(f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_TOP + plot_h}" stroke="#1b1f24"/>')
    out.append(f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_H - 6}" text-anchor="middle" font-size="13">{escape(x_title)}</text>')
    out.append(f'<text transform="translate(14 {_TOP + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" font-size="13">{escape(y_title)}</text>')
    for j, (name, _) in enumerate(series):
        y = _TOP + 10 + j * 20
        fill = "url(#hatch)" if j == 1 else "#4a5560"
        out.append(f'<rect x="{_LEFT + plot_w + 12}" y="{y - 9}" width="14" height="12" fill="{fill}" stroke="#1b1f24"/>')
        out.append(f'<text x="{_LEFT + plot_w + 32}" y="{y + 2}" font-size="12">{escape(name)}</text>')
    out.append("</svg>")
    return Markup("".join(out))
