"""Cross-row rules of the intake: worked out in polars over the staged keys, they must reject
exactly what the rules say, row by row (a direct reading of each rule below is the reference),
against the file and against what the database already holds."""

from __future__ import annotations

from datetime import date

import asyncpg
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ingest import TODAY, res, seed

from labeval.db.imports import list_rejects
from labeval.ingest import ingest_frame
from labeval.ingest.crossrow import dependent_results, file_duplicates

ROLES = ("original", "retest", "arbitration")
KEY = ("sample_code", "item_code", "role", "lab_code")

key_st = st.tuples(st.sampled_from(["S1", "S2"]), st.sampled_from(["I1", "I2"]), st.sampled_from(ROLES),
                   st.sampled_from(["A", "B", "C"]))


def reference_rules(staged: list[tuple], current: list[tuple], originals: dict[str, str]) -> set[tuple[int, int]]:
    """Each rule as its wording reads, over (row, sample, item, role, lab), applied in order to
    the rows the previous rules left; a rule sees the file as it was before it ran."""
    left = list(staged)
    out: set[tuple[int, int]] = set()

    def has(rows, s, i, lab, roles) -> bool:
        return any(r[-4] == s and r[-3] == i and r[-1] == lab and r[-2] in roles for r in rows)

    rules = (
        (1, lambda x, f: x[3] in ("retest", "arbitration") and (
            originals.get(x[1]) == x[4] or has(current, x[1], x[2], x[4], ("original",))
            or has(f, x[1], x[2], x[4], ("original",)))),
        (2, lambda x, f: x[3] == "original" and (
            has(current, x[1], x[2], x[4], ("retest", "arbitration"))
            or has(f, x[1], x[2], x[4], ("retest", "arbitration")))),
        (3, lambda x, f: x[3] == "arbitration" and (
            has(current, x[1], x[2], x[4], ("retest",)) or has(f, x[1], x[2], x[4], ("retest",)))),
        # a retest by the lab whose arbitration is already stored (the file's went at rule 3)
        (4, lambda x, f: x[3] == "retest" and has(current, x[1], x[2], x[4], ("arbitration",))),
        (5, lambda x, f: x[3] in ("retest", "arbitration")
            and not any(r[-4] == x[1] and r[-3] == x[2] and r[-2] == "original" for r in [*current, *f])),
    )
    for n, bad in rules:
        snapshot = list(left)
        hit = [x for x in left if bad(x, snapshot)]
        out |= {(x[0], n) for x in hit}
        left = [x for x in left if x not in hit]
    return out


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(key_st, max_size=24),
    current=st.lists(key_st, max_size=8, unique=True),
    originals=st.dictionaries(st.sampled_from(["S1", "S2"]), st.sampled_from(["A", "B", "C"])),
)
def test_independence_rules_match_their_wording(keys, current, originals) -> None:
    staged = [(row, *k) for row, k in enumerate(dict.fromkeys(keys), start=2)]
    frame = pl.DataFrame(staged, schema={"_row": pl.Int64, **{k: pl.String for k in KEY}}, orient="row")
    cur = pl.DataFrame(current, schema={k: pl.String for k in KEY}, orient="row")
    orig = pl.DataFrame(list(originals.items()), schema={"sample_code": pl.String, "original_lab_code": pl.String},
                        orient="row")
    got = set(dependent_results(frame, cur, orig).iter_rows())
    assert got == reference_rules(staged, current, originals)


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["x", None])), max_size=20))
def test_file_duplicates_name_the_first_row_of_the_key(keys) -> None:
    frame = pl.DataFrame(
        [(row, *k) for row, k in enumerate(keys, start=2)], schema={"_row": pl.Int64, "k": pl.String, "n": pl.String},
        orient="row",
    )
    got = set(file_duplicates(frame, ("k", "n"), ("n",)).iter_rows())
    first: dict[tuple, int] = {}
    want = set()
    for row, k in enumerate(keys, start=2):
        # The nullable column matches when both are empty (COALESCE(n, '')).
        norm = (k[0], k[1] or "")
        if norm in first:
            want.add((row, first[norm]))
        else:
            first[norm] = row
    assert got == want


def test_a_null_in_a_required_key_column_matches_no_row() -> None:
    frame = pl.DataFrame({"_row": [2, 3, 4], "k": [None, None, "a"]}, schema={"_row": pl.Int64, "k": pl.String})
    assert file_duplicates(frame, ("k",), ()).height == 0


async def test_rules_against_the_database(conn: asyncpg.Connection) -> None:
    await seed(conn)
    # In the database: S2/PB original by L2, retest by L3.
    first = await ingest_frame(conn, "results", [res(sample_code="S2", lab_code="L2"),
                                                 res(sample_code="S2", lab_code="L3", role="retest")],
                               file_name="a.json", today=TODAY)
    assert first.accepted == 2
    rows = [
        res(sample_code="S2", lab_code="L2", role="arbitration"),  # 1: by the database's original lab
        res(sample_code="S1", lab_code="L1"),                      # fine
        res(sample_code="S2", lab_code="L3", role="arbitration"),  # 3: by the database's retest lab
        res(sample_code="S2", lab_code="L1", role="arbitration"),  # fine: a third lab
        res(sample_code="S1", lab_code="L2", role="retest"),       # fine: the file has the original
        res(sample_code="S2", item_code="LBL", lab_code="L2", role="retest", value=None, unit=None),  # 4: no original
    ]
    r = await ingest_frame(conn, "results", rows, file_name="b.json", today=TODAY)
    got = {(x.row, x.column, x.reason) for x in r.rejects}
    assert got == {
        (1, "lab_code", "lab_code: a arbitration by the lab that did the original test (it must be another lab)"),
        (3, "lab_code", "lab_code: arbitration by the lab that did the retest (it must be a third lab)"),
        (6, "role", "role: a retest with no original result for this sample and item (in the database or the file)"),
    }
    assert (r.accepted, r.rejected) == (3, 3)
    # The reject keeps the row as staged, for the officer to correct.
    raw = {x.row: x.raw for x in await list_rejects(conn, r.import_id)}[3]
    assert (raw["lab_code"], raw["role"], raw["value"]) == ("L3", "arbitration", 0.3) and "_rule" not in raw
    # An original by the lab the database has as the retest lab.
    r = await ingest_frame(conn, "results", [res(sample_code="S2", lab_code="L3")], file_name="c.json", today=TODAY)
    assert [(x.row, x.reason) for x in r.rejects] == [
        (1, "lab_code: an original result by a lab that also retested this sample item")]


async def test_duplicates_and_conflicts_in_one_file(conn: asyncpg.Connection) -> None:
    await seed(conn)
    rows = [res(), res(value="0.30"), res(value="0.4"), res(sample_code="S2")]
    r = await ingest_frame(conn, "results", rows, file_name="d.json", today=date(2025, 6, 1))
    got = {(x.row, x.reason) for x in r.rejects}
    # "0.30" is the same number as "0.3" (raw_value is not compared).
    assert got == {
        (2, "duplicate row in the file: same as row 1"),
        (3, "conflicting rows in the file: same key (sample_code, item_code, role, lab_code) as row 1 with "
            "different values"),
    }
    assert r.accepted == 2


@pytest.mark.parametrize("offender", ["original_lab", "retest_lab"])
async def test_a_large_insert_with_one_offending_row_is_refused(conn: asyncpg.Connection, offender: str) -> None:
    """Large enough for the trigger to plan hash joins (0011), not a probe per row."""
    await conn.execute("INSERT INTO product_categories (category_code, name) VALUES ('C', 'c')")
    await conn.execute("INSERT INTO test_items (item_code, category_code, name, kind) VALUES ('Q', 'C', 'q', 'qualitative')")
    await conn.execute("INSERT INTO labs (lab_code, name) VALUES ('A', 'A'), ('B', 'B')")
    # original_lab: the register names B, which retested S20000, as its original lab.
    named = "B" if offender == "original_lab" else None
    await conn.execute(
        "INSERT INTO samples (sample_code, category_code, original_lab_code) "
        "SELECT 'S' || i, 'C', CASE WHEN i = 20000 THEN $1 END FROM generate_series(1, 20000) i", named,
    )
    insert = """INSERT INTO results (sample_code, item_code, lab_code, role, verdict)
                SELECT 'S' || i, 'Q', lab, role, 'pass'
                FROM generate_series(1, 20000) i, (VALUES ('A', 'original'), ('B', 'retest')) AS v (lab, role)"""
    if offender == "retest_lab":
        # An arbitration of S1 by A, which did the original test.
        insert += " UNION ALL SELECT 'S1', 'Q', 'A', 'arbitration', 'pass'"
    # Since 0015 the register's original lab is the trigger's to refuse, a lab in two roles the
    # unique index results_one_role_per_lab's.
    refused = asyncpg.CheckViolationError if offender == "original_lab" else asyncpg.UniqueViolationError
    with pytest.raises(refused):
        await conn.execute(insert)
    assert await conn.fetchval("SELECT count(*) FROM results") == 0
