"""Intake: formats, headers, every rejection reason, idempotency, corrections, API."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from labeval.db.imports import list_imports, list_rejects, rejects_csv
from labeval.db.results import result_history
from labeval.ingest import UnreadableFile, ingest_frame, ingest_path, render, report_json
from labeval.ingest import reasons as reason_kinds
from labeval.ingest.errors import MissingColumn

from intake_data import load_reference, results

TODAY = date(2025, 6, 1)


async def seed(conn) -> None:
    await ingest_frame(conn, "categories", [{"category_code": "C1", "name": "食品"}], file_name="c")
    await ingest_frame(
        conn, "labs",
        [{"lab_code": f"L{i}", "name": f"Lab {i}", "scopes": "C1"} for i in (1, 2, 3)], file_name="l",
    )
    await ingest_frame(
        conn, "items",
        [
            {"item_code": "PB", "category_code": "C1", "name": "铅", "unit": "mg/kg", "kind": "quantitative",
             "precision_model": "absolute", "repeatability_sd": "0.02", "reproducibility_sd": "0.05", "lod": "0.01",
             "upper_limit": "0.5"},
            {"item_code": "LBL", "category_code": "C1", "name": "标签", "kind": "定性"},
        ],
        file_name="i",
    )
    await ingest_frame(
        conn, "samples",
        [{"sample_code": "S1", "category_code": "C1", "original_lab_code": "L1"},
         {"sample_code": "S2", "category_code": "C1"}],
        file_name="s",
    )


def res(**kw) -> dict:
    row = {"sample_code": "S1", "item_code": "PB", "lab_code": "L1", "role": "original", "value": "0.3",
           "unit": "mg/kg", "verdict": "pass", "reported_on": "2025-01-02"}
    row.update(kw)
    return row


async def assert_coded(conn, import_id: int) -> set[str]:
    """Every reject line of the import carries its reason's code and arguments, and the stored
    text is exactly the code's text with those arguments (migration 0012). Returns the codes."""
    rows = await conn.fetch(
        "SELECT column_name, reason, reason_code, reason_args FROM import_rejects WHERE import_id = $1", import_id)
    assert rows
    for r in rows:
        args = r["reason_args"] if isinstance(r["reason_args"], dict) else json.loads(r["reason_args"] or "{}")
        assert r["reason_code"] in reason_kinds.TEXTS, r["reason"]
        assert reason_kinds.text(r["column_name"], r["reason_code"], args) == r["reason"]
    return {r["reason_code"] for r in rows}


async def test_reference_counts(conn):
    await seed(conn)
    assert await conn.fetchval("SELECT count(*) FROM lab_scopes") == 3
    assert await conn.fetchval("SELECT kind FROM test_items WHERE item_code = 'LBL'") == "qualitative"


async def test_every_row_rejection_reason(conn):
    await seed(conn)
    rows = [
        res(),                                                     # 1 ok (original by L1)
        res(sample_code="SX"),                                     # 2 unknown sample
        res(item_code="IX"),                                       # 3 unknown item
        res(lab_code="LX", sample_code="S2"),                      # 4 unknown lab
        res(sample_code="S2", unit="g/kg"),                        # 5 unit mismatch
        res(sample_code="S2", lab_code="L2", expanded_uncertainty="-1"),   # 6 negative U
        res(sample_code="S2", lab_code="L3", expanded_uncertainty="inf"),  # 7 non-finite U
        res(sample_code="S2", role="original", lab_code="L1", verdict="maybe"),  # 8 verdict word
        res(sample_code="S2", item_code="LBL", lab_code="L2", value=None, verdict=None,
            reported_on="2099-01-01"),                             # 9 future date + qualitative empty
        res(sample_code="S2", role="retest", lab_code="L2", value="abc"),  # 10 bad value
        res(sample_code="S2", role="oops", lab_code="L3"),         # 11 unknown enum
        res(sample_code="S2", role="retest", lab_code="L3", replicates="1.5"),  # 12 not a whole number
        res(sample_code="S2", role="retest", lab_code="L3", coverage_k="x"),   # 13 not a number
        res(sample_code=""),                                       # 14 required empty
        res(),                                                     # 15 duplicate of row 1
    ]
    r = await ingest_frame(conn, "results", rows, file_name="r.json", today=TODAY)
    reasons = {(x.row, x.column, x.reason) for x in await list_rejects(conn, r.import_id)}
    assert await assert_coded(conn, r.import_id) >= {
        "unknown_code", "unit_mismatch", "not_less_than", "not_finite", "unknown_value", "future_date",
        "qualitative_needs_value", "not_a_value", "not_whole_number", "not_number", "required", "duplicate_row"}
    # JSON arrays number rows from 1.
    expect = {
        (2, "sample_code", "sample_code: unknown sample code"),
        (3, "item_code", "item_code: unknown item code"),
        (4, "lab_code", "lab_code: unknown lab code"),
        (5, "unit", "unit: does not match the item's unit (mg/kg)"),
        (6, "expanded_uncertainty", "expanded_uncertainty: must not be less than 0"),
        (7, "expanded_uncertainty", "expanded_uncertainty: not a finite number"),
        (8, "verdict", "verdict: unknown value; expected one of fail, pass"),
        (9, "reported_on", "reported_on: date in the future"),
        (9, "value", "value: a qualitative result needs a value or a verdict"),
        (10, "value", "value: neither a number nor a recognised censored form (<L, 未检出, ND)"),
        (11, "role", "role: unknown value; expected one of arbitration, original, retest"),
        (12, "replicates", "replicates: not a whole number"),
        (13, "coverage_k", "coverage_k: not a number"),
        (14, "sample_code", "sample_code: required, empty"),
        (15, "sample_code, item_code, role, lab_code", "duplicate row in the file: same as row 1"),
    }
    assert expect <= reasons, expect - reasons
    assert r.rows == 15 and r.accepted == 1 and r.rejected == 14 and r.duplicates == 0
    assert r.rows == r.accepted + r.rejected + r.duplicates
    assert r.exit_code == 3
    assert b'"rejected":14' in report_json(r)
    assert "rejected 14" in render(r)
    raw = (await list_rejects(conn, r.import_id))[0].raw
    assert raw["sample_code"] == "SX"


async def test_retest_rules(conn):
    await seed(conn)
    rows = [
        res(),
        res(role="retest", lab_code="L1"),                    # by the original lab (samples + file)
        res(sample_code="S2", role="retest", lab_code="L2"),  # no original anywhere
        res(role="retest", lab_code="L2", value="未检出"),      # fine: censored at the LOD
        res(role="arbitration", lab_code="L2", value="<0.05"),  # arbitration by the retest lab
    ]
    r = await ingest_frame(conn, "results", rows, file_name="r.json", today=TODAY)
    got = {(x.row, x.column) for x in r.rejects}
    assert await assert_coded(conn, r.import_id) == {"by_original_lab", "no_original", "arbitration_by_retest_lab"}
    assert got == {(2, "lab_code"), (3, "role"), (5, "lab_code")}
    assert r.accepted == 2
    nd = await conn.fetchrow("SELECT value, censored, censor_limit, raw_value FROM results WHERE role = 'retest'")
    # 未检出 -> censored at the item's LOD 0.01, value kept null, text kept.
    assert tuple(nd) == (None, True, 0.01, "未检出")


async def test_the_arbiter_is_a_third_lab_in_either_order(conn):
    await seed(conn)
    # An arbitration by L3 stored first; then a retest of the same sample item by L3 (the arbiter
    # would be the retest lab) is a reject naming its row and column, not a failed import.
    first = await ingest_frame(conn, "results", [res(), res(role="arbitration", lab_code="L3", value="0.31")],
                               file_name="a.json", today=TODAY)
    assert (first.accepted, first.rejected) == (2, 0)
    later = await ingest_frame(
        conn, "results",
        [res(role="retest", lab_code="L3", value="0.32"), res(role="retest", lab_code="L2", value="0.33")],
        file_name="b.json", today=TODAY,
    )
    assert [(x.row, x.column, x.reason) for x in await list_rejects(conn, later.import_id)] == [
        (1, "lab_code", "lab_code: a retest by the lab that did the arbitration (it must be another lab)")]
    assert (later.accepted, later.rejected, later.exit_code) == (1, 1, 3)
    assert await assert_coded(conn, later.import_id) == {"retest_by_arbitration_lab"}
    # The other order: the retest by L1 stored first, then an arbitration by L1.
    await ingest_frame(conn, "results", [res(sample_code="S2", lab_code="L2"),
                                         res(sample_code="S2", role="retest", lab_code="L1", value="0.32")],
                       file_name="c.json", today=TODAY)
    arb = await ingest_frame(conn, "results", [res(sample_code="S2", role="arbitration", lab_code="L1", value="0.3")],
                             file_name="d.json", today=TODAY)
    assert [(x.row, x.column, x.reason) for x in await list_rejects(conn, arb.import_id)] == [
        (1, "lab_code", "lab_code: arbitration by the lab that did the retest (it must be a third lab)")]
    roles = await conn.fetch("SELECT sample_code, role, lab_code FROM results ORDER BY sample_code, role, lab_code")
    assert [tuple(x) for x in roles] == [
        ("S1", "arbitration", "L3"), ("S1", "original", "L1"), ("S1", "retest", "L2"),
        ("S2", "original", "L2"), ("S2", "retest", "L1"),
    ]


async def test_reimport_noop_and_correction_history(conn, tmp_path: Path):
    await seed(conn)
    f = tmp_path / "r.csv"
    pl.DataFrame([res(), res(role="retest", lab_code="L2", value="<0.1")]).write_csv(f)
    r1 = await ingest_path(conn, "results", f, today=TODAY)
    assert (r1.accepted, r1.duplicates, r1.corrections) == (2, 0, 0)
    r2 = await ingest_path(conn, "results", f, today=TODAY)
    assert (r2.accepted, r2.duplicates, r2.rejected, r2.exit_code) == (0, 2, 0, 0)
    assert r2.checksum == r1.checksum
    assert await conn.fetchval("SELECT count(*) FROM results") == 2
    pl.DataFrame([res(value="0.35"), res(role="retest", lab_code="L2", value="<0.1")]).write_csv(f)
    r3 = await ingest_path(conn, "results", f, today=TODAY)
    assert (r3.accepted, r3.duplicates, r3.corrections) == (1, 1, 1)
    hist = await result_history(conn, "S1", "PB", "original", "L1")
    assert [(h.version, h.value, h.superseded_at is None) for h in hist] == [(1, 0.3, False), (2, 0.35, True)]
    assert [i.import_id for i in await list_imports(conn, kind="results")] == [r3.import_id, r2.import_id, r1.import_id]


async def test_reference_correction_recorded(conn):
    await seed(conn)
    r = await ingest_frame(conn, "labs", [{"lab_code": "L1", "name": "Lab One", "scopes": "C1"}], file_name="l2")
    assert (r.accepted, r.corrections, r.duplicates) == (1, 1, 0)
    assert await conn.fetchval("SELECT name FROM labs WHERE lab_code = 'L1'") == "Lab One"
    ch = await conn.fetchrow("SELECT before, after FROM import_changes WHERE import_id = $1", r.import_id)
    assert ch["before"]["name"] == "Lab 1" and ch["after"]["name"] == "Lab One"


async def test_gb18030_chinese_headers_tab(conn, tmp_path: Path):
    await seed(conn)
    text = "样品编号\t检验项目\t检验机构\t复检/复验\t检测值\t单位\t判定\t报告日期\nS1\tPB\tL1\t原检\t0.2\tmg/kg\t合格\t2025-01-02\nS1\tPB\tL2\t复验\t＜0.05\tmg/kg\t合格\t2025/01/03\n"
    f = tmp_path / "r.csv"
    f.write_bytes(text.encode("gb18030"))
    r = await ingest_path(conn, "results", f, today=TODAY)
    assert (r.encoding, r.accepted, r.rejected) == ("gb18030", 2, 0)
    row = await conn.fetchrow("SELECT censored, censor_limit, reported_on FROM results WHERE role = 'retest'")
    assert tuple(row) == (True, 0.05, date(2025, 1, 3))


async def test_xlsx_and_parquet_round_trip(conn, tmp_path: Path):
    await seed(conn)
    df = pl.DataFrame([res(), res(role="retest", lab_code="L3", value="0.31")])
    x, p = tmp_path / "r.xlsx", tmp_path / "r.parquet"
    df.write_excel(x)
    df.write_parquet(p)
    rx = await ingest_path(conn, "results", x, today=TODAY)
    assert (rx.format, rx.accepted) == ("xlsx", 2)
    rp = await ingest_path(conn, "results", p, today=TODAY)
    assert (rp.format, rp.duplicates, rp.accepted) == ("parquet", 2, 0)


async def test_bad_row_in_middle_of_csv(conn, tmp_path: Path):
    await seed(conn)
    f = tmp_path / "r.csv"
    f.write_text(
        "\ufeffsample_code,item_code,lab_code,role,value,unit\n"
        "S1,PB,L1,original,0.3,mg/kg\nS1,PB,L2,retest,zz,mg/kg\nS1,PB,L3,retest,0.29,mg/kg\n",
        encoding="utf-8",
    )
    r = await ingest_path(conn, "results", f, today=TODAY)
    # Header is row 1: the bad line is row 3.
    assert [(x.row, x.column, x.value) for x in r.rejects] == [(3, "value", "zz")]
    assert r.accepted == 2
    csv = (await rejects_csv(conn, r.import_id)).decode("utf-8-sig")
    assert csv.splitlines()[0] == "row,column,value,reason,raw" and ",zz," in csv


async def test_unreadable_files(conn, tmp_path: Path):
    with pytest.raises(UnreadableFile, match="nope.csv: file not found"):
        await ingest_path(conn, "results", tmp_path / "nope.csv")
    f = tmp_path / "r.csv"
    f.write_text("sample_code,item_code\nS1,PB\n")
    with pytest.raises(MissingColumn, match="lab_code, role, value"):
        await ingest_path(conn, "results", f)
    g = tmp_path / "bin.csv"
    g.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(UnreadableFile, match="bin.csv"):
        await ingest_path(conn, "results", g)
    assert await conn.fetchval("SELECT count(*) FROM imports WHERE status = 'failed'") == 3


async def test_200k_rows_exact_counts(conn, tmp_path: Path):
    # 40 labs, 20 items, 5 000 samples: 100 000 pairs, 200 000 rows, read in 4 batches.
    await load_reference(conn, 40, 20, 5_000)
    results(40, 20, 5_000).write_csv(tmp_path / "r.csv")
    r = await ingest_path(conn, "results", tmp_path / "r.csv", batch_size=50_000)
    assert (r.rows, r.accepted, r.rejected, r.duplicates) == (200_000, 200_000, 0, 0)
    assert await conn.fetchval("SELECT count(*) FROM results") == 200_000
    # Every fifth retest was written "<0.5": censored at 0.5, no value, the text kept.
    censored = await conn.fetchrow(
        "SELECT count(*), min(censor_limit), max(censor_limit), count(value) FROM results WHERE censored"
    )
    assert tuple(censored) == (20_000, 0.5, 0.5, 0)


async def test_indicators(conn):
    await seed(conn)
    r = await ingest_frame(conn, "report_findings", [
        {"lab_code": "L1", "report_no": "R1", "found_on": "2025-01-01", "finding": "虚假"},
        {"lab_code": "L1", "report_no": "R2", "found_on": "2025-01-01", "finding": "bad"},
    ], file_name="f", today=TODAY)
    assert (r.accepted, r.rejected) == (1, 1)
    r = await ingest_frame(conn, "timeliness", [{"lab_code": "L1", "report_no": "R1", "due_on": "2025-06-30", "reported_on": "2024-01-02"}],
                           file_name="t", today=TODAY)
    assert r.rejects[0].reason == "reported_on: more than a year before the report was due"
