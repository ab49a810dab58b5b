"""What the pages say, read from the templates and the page code: the message ids they pass to
the catalogue, and any visible text they do not. Used by tests/test_web_i18n.py (and handy to
list what a new page still needs translated: python -m tests.web_catalogue)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

WEB = Path(__file__).resolve().parents[1] / "labeval" / "web"
TEMPLATES = WEB / "templates"

# _("…"), t("…") and ngettext("…", "…") with a literal first argument; both quote styles.
_STRING = r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\''
_CALL = re.compile(r"(?<![\w.])(?:_|t|gettext)\(\s*(?:" + _STRING + r")")
_NCALL = re.compile(r"(?<![\w.])ngettext\(\s*(?:" + _STRING + r")\s*,\s*(?:" + _STRING + r")")

# Written the same in every language: the languages' own names in the switch, and units.
UNTRANSLATED = {"English", "中文", "UTC", "CSV", "XLSX", "Parquet", "CUSUM", "FDR", "σR", "Ⅰ", "Ⅱ", "Ⅲ", "Ⅳ"}
_USER_ATTRS = ("title", "placeholder", "aria-label", "alt", "aria-description", "summary")


def _unescape(s: str) -> str:
    return s.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8") if "\\" in s else s


def message_ids(text: str) -> set[str]:
    ids = set()
    for m in _CALL.finditer(text):
        ids.add(_unescape(m.group(1) if m.group(1) is not None else m.group(2)))
    for m in _NCALL.finditer(text):
        # The catalogue keys a plural message by its singular id.
        ids.add(_unescape(m.group(1) if m.group(1) is not None else m.group(2)))
    return ids


def sources() -> list[Path]:
    return sorted(TEMPLATES.rglob("*.html")) + sorted(p for p in WEB.rglob("*.py"))


def all_message_ids() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sources():
        for mid in message_ids(path.read_text(encoding="utf-8")):
            found.setdefault(mid, path)
    return found


def _has_words(text: str) -> bool:
    for token in re.split(r"[\s,;:()\[\]/·—–\-#%|+*=<>!?.…\"'“”]+", text):
        if not token or token in UNTRANSLATED:
            continue
        if any(unicodedata.category(c).startswith("L") for c in token):
            return True
    return False


def untranslated_text(template: str) -> list[str]:
    """Visible text of a template outside {{ … }}, {% … %} and {# … #}, and user-facing attribute
    values written literally: each is a string a reader of the other language would see
    untranslated."""
    text = re.sub(r"\{#.*?#\}", " ", template, flags=re.S)
    problems = []
    for attr in _USER_ATTRS:
        for m in re.finditer(rf'\b{attr}="([^"]*)"', text):
            literal = re.sub(r"\{\{.*?\}\}|\{%.*?%\}", " ", m.group(1), flags=re.S)
            if _has_words(literal):
                problems.append(f'{attr}="{m.group(1)}"')
    text = re.sub(r"\{%.*?%\}|\{\{.*?\}\}", " ", text, flags=re.S)
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.S | re.I)
    text = re.sub(r"<[^>]*>", " ", text, flags=re.S)
    text = re.sub(r"&[#\w]+;", " ", text)
    for chunk in re.split(r"\n", text):
        if _has_words(chunk):
            problems.append(chunk.strip())
    return problems


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(WEB.parents[1]))
    from labeval.web.i18n import read_catalogue

    catalogue = read_catalogue("zh-CN")
    for mid, path in sorted(all_message_ids().items(), key=lambda kv: (str(kv[1]), kv[0])):
        msg = catalogue.get(mid)
        if msg is None or not msg.string:
            print(f"{path.relative_to(WEB)}\t{mid}")
    for path in sorted(TEMPLATES.rglob("*.html")):
        for p in untranslated_text(path.read_text(encoding="utf-8")):
            print(f"UNTRANSLATED {path.name}: {p}")
