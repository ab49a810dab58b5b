"""Number and value cells are parsed on a fast path (plain ASCII numbers cast directly, every
other distinct cell of a batch through Unicode normalisation and the censored forms): it must
give what parsing every cell the long way gives, cell for cell."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from labeval.ingest.kinds import _LESS_THAN, _ND_WITH_LIMIT, NOT_DETECTED, _results_prepare
from labeval.ingest.spec import RefData
from labeval.ingest.validate import C, T, in_sorted, num_text, number, word

# Cells a lab's file holds: plain numbers, their full-width and U+2212 spellings, the censored
# forms, words, and Unicode noise around them.
_pieces = st.sampled_from([
    "1", "0", "-", "+", ".", "e", "E", "5", "9", "１", "２", "．", "\u2212", "<", "≤", "<=", "小于", "未检出", "nd",
    "ND", "n.d.", "(", ")", " ", "\u3000", "\u00a0", "inf", "nan", "阴性", "x", "_", ",", "0x",
])
cell_st = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**6, 10**6).map(str),
    st.lists(_pieces, min_size=1, max_size=6).map("".join),
    st.text(max_size=6),
)


def _same(a: pl.Series, b: pl.Series) -> bool:
    # NaN equals NaN here: both paths must give the same float, whatever it is.
    return a.to_list() == b.to_list() or all(
        (x is None and y is None) or x == y or (x != x and y != y) for x, y in zip(a.to_list(), b.to_list(), strict=True))


@settings(max_examples=300, deadline=None)
@given(st.lists(cell_st, min_size=1, max_size=40))
def test_number_fast_path_is_num_text(cells):
    frame = pl.DataFrame({"c": cells}, schema={"c": pl.String})
    fast = frame.select(number(frame, "c")).to_series()
    slow = frame.select(num_text(pl.col("c")).cast(pl.Float64, strict=False)).to_series()
    assert _same(fast, slow)


@settings(max_examples=300, deadline=None)
@given(st.lists(cell_st, min_size=1, max_size=40))
def test_value_fast_path_is_the_row_parsing(cells):
    """What the results kind derives from a value cell (censored, the limit written with it, the
    number), the long way per row against kinds._results_prepare."""
    frame = pl.DataFrame({C("value"): cells, T("item_code"): "I1", T("unit"): "mg/kg", T("verdict"): None},
                         schema={C("value"): pl.String, T("item_code"): pl.String, T("unit"): pl.String,
                                 T("verdict"): pl.String})
    refs = RefData()
    refs.tables["items"] = pl.DataFrame({"item_code": ["I1"], "unit": ["mg/kg"], "lod": [0.01], "kind": ["quantitative"]})
    lf, _ = _results_prepare(frame.lazy(), refs)
    fast = lf.select("__censored", "__lt", "__num").collect()
    raw = pl.col(C("value"))
    v, w = num_text(raw), word(raw)
    lt = pl.coalesce([v.str.extract(_LESS_THAN, 1), w.str.extract(_ND_WITH_LIMIT, 1)]).cast(pl.Float64, strict=False)
    nd = w.is_in(list(NOT_DETECTED)).fill_null(False)
    slow = frame.select((lt.is_not_null() | nd).alias("__censored"), lt.alias("__lt"),
                        v.cast(pl.Float64, strict=False).alias("__num"))
    for name in ("__censored", "__lt", "__num"):
        assert _same(fast.get_column(name), slow.get_column(name)), name


@settings(max_examples=300, deadline=None)
@given(known=st.lists(st.text(max_size=4), unique=True, max_size=12),
       values=st.lists(st.one_of(st.none(), st.text(max_size=4)), max_size=20))
def test_in_sorted_agrees_with_is_in(known: list[str], values: list[str | None]) -> None:
    """The reference check's binary search answers exactly as a hash lookup would, nulls
    included."""
    codes = pl.Series(known, dtype=pl.String).sort()
    frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
    want = frame.select(pl.col("v").is_in(codes.implode())).to_series().to_list()
    # Both ways: a register this small is hashed; the binary search is what a large one gets.
    assert frame.select(in_sorted(pl.col("v"), codes)).to_series().to_list() == want
    assert frame.select(in_sorted(pl.col("v"), codes, search_above=-1)).to_series().to_list() == want
