"""The four classes of the lab classification scheme, fixed here and nowhere else.

The classification supervision scheme grades labs into classes Ⅰ–Ⅳ (Ⅰ best). The policy chooses
cut-offs, caps and weights per class; it does not choose the classes themselves.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["CLASSES", "DISPLAY", "ClassLabel", "rank", "worst"]

ClassLabel = Literal["I", "II", "III", "IV"]
# Best first.
CLASSES: tuple[str, ...] = get_args(ClassLabel)
# How a class is written for people (Roman numerals as printed in the scheme).
DISPLAY: dict[str, str] = {"I": "Ⅰ", "II": "Ⅱ", "III": "Ⅲ", "IV": "Ⅳ"}
_RANK = {label: i for i, label in enumerate(CLASSES)}


def rank(label: str) -> int:
    """0 for the best class; KeyError for anything that is not a class."""
    return _RANK[label]


def worst(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b
