"""Accessibility basics of the officers' pages, checked on the rendered HTML: a language on the
page, one h1, a label for every form control, a name for every chart, table headers with scope,
a way past the navigation; and the style sheet's text colours against their background (WCAG 2.1
contrast ratio ≥ 4.5:1 for normal text)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from litestar.testing import AsyncTestClient
from test_web import HTML, site  # noqa: F401  (the fixture)

from labeval.web.routes import STATIC_DIR

from web_client import sign_in

# Pages rendered from the hand-built set of tests/test_web.py (A–E graded, R revoked).
PAGES = ["/signin", "/", "/labs", "/labs?sort=rate&dir=desc", "/no/such/page"]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.html_lang: str | None = None
        self.h1 = 0
        self.ids: set[str] = set()
        self.label_for: set[str] = set()
        self.controls: list[dict[str, str | None]] = []
        self.svgs: list[dict[str, str | None]] = []
        self.svg_titles = 0
        self.th_without_scope = 0
        self.skip_link = False
        self._in_label = 0
        self._in_thead = False
        self._svg_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "html":
            self.html_lang = a.get("lang")
        elif tag == "h1":
            self.h1 += 1
        elif tag == "label":
            self._in_label += 1
            if a.get("for"):
                self.label_for.add(a["for"])
        elif tag in ("input", "select", "textarea") and a.get("type") not in ("hidden", "submit", "button"):
            self.controls.append({**a, "_wrapped": "yes" if self._in_label else None})
        elif tag == "svg":
            if self._svg_depth == 0:
                self.svgs.append(a)
            self._svg_depth += 1
        elif tag == "title" and self._svg_depth:
            self.svg_titles += 1
        elif tag == "thead":
            self._in_thead = True
        elif tag == "th" and self._in_thead and not a.get("scope"):
            self.th_without_scope += 1
        elif tag == "a" and a.get("href") == "#main":
            self.skip_link = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._in_label -= 1
        elif tag == "svg":
            self._svg_depth -= 1
        elif tag == "thead":
            self._in_thead = False


def problems(html: str) -> list[str]:
    p = _Page()
    p.feed(html)
    out = []
    if p.html_lang not in ("en", "zh-CN"):
        out.append(f"html lang {p.html_lang!r}")
    if p.h1 != 1:
        out.append(f"{p.h1} h1 elements")
    if not p.skip_link:
        out.append("no skip link to #main")
    for c in p.controls:
        if not (c.get("_wrapped") or c.get("aria-label") or (c.get("id") and c["id"] in p.label_for)):
            out.append(f"control without a label: {c.get('name')}")
    for s in p.svgs:
        if s.get("role") != "img":
            out.append("svg without role=img")
    if p.svgs and p.svg_titles < len(p.svgs):
        out.append("svg without a title")
    if p.th_without_scope:
        out.append(f"{p.th_without_scope} column headers without scope")
    return out


def test_the_checker_finds_what_it_looks_for() -> None:
    bad = '<html><body><h1>a</h1><h1>b</h1><input name="q"><svg></svg><table><thead><tr><th>x</th></tr></thead></table>'
    found = problems(bad)
    assert "html lang None" in found and "2 h1 elements" in found and "control without a label: q" in found
    assert "svg without role=img" in found and "1 column headers without scope" in found


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
async def test_pages_meet_the_basics(site: AsyncTestClient, lang: str) -> None:  # noqa: F811
    headers = {**HTML, "Accept-Language": lang}
    first = await site.get("/signin", headers=headers)
    assert problems(first.text) == []
    await sign_in(site, "officer.one")
    for path in PAGES[1:]:
        r = await site.get(path, headers=headers)
        assert r.status_code in (200, 404), path
        assert problems(r.text) == [], path


def _luminance(hex_colour: str) -> float:
    rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_contrast_formula_matches_wcag_reference_values() -> None:
    # WCAG 2.1 (definition of contrast ratio): black on white is 21:1, white on white 1:1;
    # #767676 on white is the well-known 4.54:1 lightest grey that passes AA.
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#ffffff", "#ffffff") == pytest.approx(1.0)
    assert contrast("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)


def test_text_colours_of_the_style_sheet_have_enough_contrast() -> None:
    css = (STATIC_DIR / "style.css").read_text(encoding="utf-8")
    variables = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})", css))
    assert {"ink", "muted", "accent", "bad", "ok", "warn"} <= set(variables)
    for name in ("ink", "muted", "accent", "bad", "ok", "warn"):
        for background in ("#ffffff", variables["band"]):
            assert contrast(variables[name], background) >= 4.5, (name, background)
    # The button: white text on the accent colour.
    assert contrast("#ffffff", variables["accent"]) >= 4.5
