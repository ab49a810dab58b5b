"""The labeval command against a real database (click's runner, in process)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from labeval.cli import main

from intake_data import reference, results


def invoke(db_url: str, *args: str):
    return CliRunner().invoke(main, ["--database-url", db_url, *args], catch_exceptions=False)


def test_db_status_lists_applied_migrations(db_url: str) -> None:
    r = invoke(db_url, "db", "status")
    assert r.exit_code == 0
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("0001 schema_v1") and lines[0].endswith("applied")
    assert all(line.endswith("applied") for line in lines)


def test_ingest_exit_codes_and_grade_json(db_url: str, tmp_path: Path) -> None:
    # 12 labs, 3 items, 48 samples: 144 pairs, every lab in 24 of them.
    data = {**reference(12, 3, 48), "results": results(12, 3, 48)}
    for kind in ("categories", "labs", "items", "samples", "results"):
        path = tmp_path / f"{kind}.csv"
        data[kind].write_csv(path)
        r = invoke(db_url, "ingest", kind, str(path), "--json")
        assert r.exit_code == 0, r.output
        report = json.loads(r.output)
        assert report["rejected"] == 0 and report["accepted"] == data[kind].height

    # One bad row among good ones: exit 3, the good rows loaded, the bad one named.
    bad = tmp_path / "more_labs.csv"
    bad.write_text(
        "lab_code,name,province,accreditation_no,status,scopes\n"
        "X01,新检验所,江苏,CNAS L1,active,TEX\n"
        "X02,坏数据所,江苏,CNAS L2,closed,TEX\n",
        encoding="utf-8",
    )
    r = invoke(db_url, "ingest", "labs", str(bad), "--json")
    assert r.exit_code == 3
    report = json.loads(r.output)
    assert (report["accepted"], report["rejected"]) == (1, 1)
    assert report["rejects"][0]["row"] == 3 and report["rejects"][0]["column"] == "status"

    r = invoke(db_url, "ingest", "labs", str(tmp_path / "missing.csv"))
    assert r.exit_code == 2

    r = invoke(db_url, "grade", "--as-of", "2030-01-01", "--json")
    assert r.exit_code == 0, r.output
    run = json.loads(r.output)
    assert set(run) >= {"run_id", "as_of", "policy_hash", "grades"}
    assert run["as_of"] == "2030-01-01"
    graded = {g["lab_code"] for g in run["grades"]}
    assert graded == set(data["labs"]["lab_code"]) | {"X01"}
    for g in run["grades"]:
        assert g["class"] in ("I", "II", "III", "IV")
        assert set(g) >= {"lab_code", "class", "score", "previous_class", "pairs", "reasons", "change"}
        assert g["reasons"] and all({"rule", "metric", "value", "threshold", "effect"} <= set(x) for x in g["reasons"])
