"""Languages of the officers' pages: the message catalogue, the choice of language per request,
and numbers and dates written the way each language writes them.

Message ids are the English text; Chinese translations live in gettext .po files under
locales/zh_CN/LC_MESSAGES/ (one file per area of the platform, merged at start). They are read
and compiled in memory with Babel when the app is built, so there is no build step and a broken
catalogue stops the start instead of showing English to a Chinese reader.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Literal

from babel import Locale, dates, numbers
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

Lang = Literal["en", "zh-CN"]
LANGS: tuple[Lang, ...] = ("en", "zh-CN")
DEFAULT_LANG: Lang = "en"
LANG_COOKIE = "labeval_lang"
LOCALE_DIR = Path(__file__).parent / "locales"
# Babel's name of each language (zh-CN is written zh_Hans_CN in CLDR).
_BABEL = {"en": "en", "zh-CN": "zh_Hans_CN"}
_GETTEXT_DIR = {"zh-CN": "zh_CN"}


class CatalogueError(RuntimeError):
    """A .po file that cannot be read."""


def catalogue_files(lang: Lang) -> list[Path]:
    sub = _GETTEXT_DIR.get(lang)
    return sorted((LOCALE_DIR / sub / "LC_MESSAGES").glob("*.po")) if sub else []


def read_catalogue(lang: Lang) -> Catalog:
    """Every .po file of a language merged into one catalogue; a msgid in two files must carry
    the same translation (two areas must not disagree on one English phrase)."""
    merged = Catalog(locale=_GETTEXT_DIR.get(lang, "en"))
    seen: dict[str, tuple[str, Path]] = {}
    for path in catalogue_files(lang):
        try:
            with path.open("rb") as f:
                part = read_po(f, abort_invalid=True)
        except Exception as exc:  # babel raises several kinds; the file name is what matters
            raise CatalogueError(f"{path.name}: {exc}") from exc
        for message in part:
            if not message.id:
                continue
            key = message.id if isinstance(message.id, str) else message.id[0]
            text = message.string if isinstance(message.string, str) else "\x00".join(message.string)
            if key in seen and seen[key][0] != text:
                raise CatalogueError(f"{path.name}: {key!r} is translated differently in {seen[key][1].name}")
            seen[key] = (text, path)
            merged[message.id] = message
    return merged


@cache
def translations(lang: Lang) -> NullTranslations:
    if lang == "en":
        return NullTranslations()
    buf = io.BytesIO()
    write_mo(buf, read_catalogue(lang))
    buf.seek(0)
    return Translations(buf)


def negotiate(cookie: str | None, accept_language: str | None) -> Lang:
    """The language cookie (set by the switch) wins; else the best match of Accept-Language;
    else English."""
    if cookie in LANGS:
        return cookie  # type: ignore[return-value]
    if accept_language:
        wanted = []
        for part in accept_language.split(","):
            tag, _, q = part.strip().partition(";q=")
            try:
                weight = float(q) if q else 1.0
            except ValueError:
                continue
            if tag and weight > 0:
                wanted.append((weight, tag.strip()))
        for _, tag in sorted(wanted, key=lambda w: -w[0]):
            low = tag.lower()
            if low.startswith("zh"):
                return "zh-CN"
            if low.startswith("en") or low == "*":
                return "en"
    return DEFAULT_LANG


class Translator:
    """One language's gettext and formatters, as the templates and page code use them."""

    def __init__(self, lang: Lang) -> None:
        self.lang: Lang = lang
        self.locale = Locale.parse(_BABEL[lang])
        t = translations(lang)
        self.gettext: Callable[[str], str] = t.gettext
        self.ngettext: Callable[[str, str, int], str] = t.ngettext

    def __call__(self, message: str, **values: object) -> str:
        text = self.gettext(message)
        return text.format(**values) if values else text

    def number(self, value: float | int | None, digits: int | None = None) -> str:
        if value is None:
            return "—"
        if isinstance(value, float) and value != value:
            return "—"
        if isinstance(value, int) and digits is None:
            return numbers.format_decimal(value, locale=self.locale)
        fmt = None if digits is None else "#,##0." + "0" * digits if digits > 0 else "#,##0"
        return numbers.format_decimal(value, format=fmt, locale=self.locale)

    def percent(self, value: float | None, digits: int = 1) -> str:
        if value is None or value != value:
            return "—"
        return numbers.format_percent(value, format="#,##0." + "0" * digits + "%", locale=self.locale)

    def date(self, value: date | datetime | None) -> str:
        if value is None:
            return "—"
        return dates.format_date(value, format="medium", locale=self.locale)

    def datetime(self, value: datetime | None) -> str:
        if value is None:
            return "—"
        return dates.format_datetime(value, format="medium", locale=self.locale, tzinfo=dates.UTC)


@cache
def translator(lang: Lang) -> Translator:
    return Translator(lang)
