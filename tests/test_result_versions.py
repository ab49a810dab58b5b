"""Migration 0015: results holds current rows only; the versions a correction replaced live in
result_versions, and every reader of history reads both."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_schema import SEED

from labeval.db import runs
from labeval.db.migrate import default_migrations_dir, migrate
from labeval.db.results import result_history
from labeval.ingest import ingest_frame


async def test_the_migration_moves_superseded_rows_and_keeps_every_version(empty_db_url: str, tmp_path: Path) -> None:
    before = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), before)
    # The schema as 0014 left it: 0015 and every later migration taken out.
    for later in before.glob("*.sql"):
        if later.name >= "0015":
            later.unlink()
    conn = await asyncpg.connect(empty_db_url)
    try:
        await migrate(conn, before)
        await conn.execute(SEED)
        # As 0001-0014 stored corrections: every version in results, the replaced ones with
        # superseded_at. S1/A/original has three versions, S2/B/retest two, S2/A/original one.
        ins = """INSERT INTO results (sample_code, item_code, lab_code, role, value, version, superseded_at)
                 VALUES ($1, 'Q', $2, $3, $4, $5, $6)"""
        t1, t2 = datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 2, 7, tzinfo=UTC)
        for row in (("S1", "A", "original", 1.0, 1, t1), ("S1", "A", "original", 1.1, 2, t2),
                    ("S2", "A", "original", 5.0, 1, None), ("S2", "B", "retest", 6.0, 1, t1),
                    ("S1", "A", "original", 1.2, 3, None), ("S2", "B", "retest", 6.5, 2, None)):
            await conn.execute(ins, *row)
        ids = {tuple(r)[:-1]: r["result_id"] for r in await conn.fetch(
            "SELECT sample_code, role, version, result_id FROM results")}

        await migrate(conn)

        current = await conn.fetch("SELECT sample_code, role, version, value FROM results ORDER BY 1, 2")
        assert [tuple(r) for r in current] == [
            ("S1", "original", 3, 1.2), ("S2", "original", 1, 5.0), ("S2", "retest", 2, 6.5)]
        moved = await conn.fetch(
            "SELECT sample_code, role, version, value, superseded_at, result_id FROM result_versions ORDER BY 1, 3")
        assert [tuple(r) for r in moved] == [
            ("S1", "original", 1, 1.0, t1, ids["S1", "original", 1]),
            ("S1", "original", 2, 1.1, t2, ids["S1", "original", 2]),
            ("S2", "retest", 1, 6.0, t1, ids["S2", "retest", 1]),
        ]
        history = await result_history(conn, "S1", "Q", "original", "A")
        assert [(h.version, h.value, h.superseded_at, h.result_id) for h in history] == [
            (1, 1.0, t1, ids["S1", "original", 1]), (2, 1.1, t2, ids["S1", "original", 2]),
            (3, 1.2, None, ids["S1", "original", 3])]
        columns = await conn.fetch(
            """SELECT column_name FROM information_schema.columns WHERE table_name = 'results'
               AND column_name = 'superseded_at'""")
        assert columns == []
    finally:
        await conn.close()


async def _seed_intake(conn: asyncpg.Connection) -> None:
    await ingest_frame(conn, "categories", [{"category_code": "C1", "name": "食品"}], file_name="c")
    await ingest_frame(conn, "labs", [{"lab_code": f"L{i}", "name": f"Lab {i}", "scopes": "C1"} for i in (1, 2)],
                       file_name="l")
    await ingest_frame(
        conn, "items",
        [{"item_code": "PB", "category_code": "C1", "name": "铅", "unit": "mg/kg", "kind": "quantitative",
          "precision_model": "absolute", "repeatability_sd": "0.02", "reproducibility_sd": "0.05", "lod": "0.01"}],
        file_name="i",
    )
    await ingest_frame(conn, "samples", [{"sample_code": "S1", "category_code": "C1", "original_lab_code": "L1"}],
                       file_name="s")


def _result(value: str, role: str = "original", lab: str = "L1") -> dict[str, str]:
    return {"sample_code": "S1", "item_code": "PB", "lab_code": lab, "role": role, "value": value,
            "unit": "mg/kg", "reported_on": "2025-01-02"}


async def test_a_correction_moves_the_old_row_and_the_history_lists_every_version(conn: asyncpg.Connection) -> None:
    await _seed_intake(conn)
    first = await ingest_frame(conn, "results", [_result("0.30"), _result("0.20", "retest", "L2")], file_name="r1")
    first_id = await conn.fetchval("SELECT result_id FROM results WHERE role = 'original'")
    for n, value in enumerate(("0.35", "0.40"), start=2):
        report = await ingest_frame(conn, "results", [_result(value), _result("0.20", "retest", "L2")],
                                    file_name=f"r{n}")
        assert (report.accepted, report.corrections, report.duplicates) == (1, 1, 1)
    current = await conn.fetch("SELECT role, version, value FROM results ORDER BY role")
    assert [tuple(r) for r in current] == [("original", 3, 0.40), ("retest", 1, 0.20)]
    moved = await conn.fetch("SELECT version, value, import_id FROM result_versions ORDER BY version")
    assert [tuple(r) for r in moved] == [(1, 0.30, first.import_id), (2, 0.35, first.import_id + 1)]
    history = await result_history(conn, "S1", "PB", "original", "L1")
    assert [(h.version, h.value, h.superseded_at is None) for h in history] == [
        (1, 0.30, False), (2, 0.35, False), (3, 0.40, True)]
    # The replaced version keeps its id (a run's pair id is a retest's result_id).
    assert history[0].result_id == first_id
    assert history[0].superseded_at <= history[1].superseded_at


async def test_an_as_of_read_sees_a_result_as_it_was_before_its_correction(conn: asyncpg.Connection) -> None:
    await _seed_intake(conn)
    await ingest_frame(conn, "results", [_result("0.30")], file_name="r1")
    between = await conn.fetchval("SELECT clock_timestamp()")
    await ingest_frame(conn, "results", [_result("0.35")], file_name="r2")
    async with conn.transaction():
        await runs.shadow_inputs_as_of(conn, between)
        rows = await conn.fetch("SELECT version, value FROM results")
        assert [tuple(r) for r in rows] == [(1, 0.30)]
    async with conn.transaction():
        await runs.shadow_inputs_as_of(conn, await conn.fetchval("SELECT clock_timestamp()"))
        rows = await conn.fetch("SELECT version, value FROM results")
        assert [tuple(r) for r in rows] == [(2, 0.35)]


# The CHECKs 0015 rewrote as plain comparisons, with the forms of 0001 they replaced.
_OLD_CHECKS = {
    "results_value_check": "labeval_is_finite(value)",
    "results_censor_limit_check": "labeval_is_finite(censor_limit) AND censor_limit >= 0",
    "results_expanded_uncertainty_check": "labeval_is_finite(expanded_uncertainty) AND expanded_uncertainty >= 0",
    "results_coverage_k_check": "labeval_is_finite(coverage_k) AND coverage_k > 0",
}
_COLUMN = {
    "results_value_check": "value", "results_censor_limit_check": "censor_limit",
    "results_expanded_uncertainty_check": "expanded_uncertainty", "results_coverage_k_check": "coverage_k",
}


async def _refusals(db_url: str, values: list[float | None]) -> dict[str, tuple[list[bool], list[bool]]]:
    """Per rewritten CHECK: which values it refuses (its expression false) as installed, and which
    the 0001 form refuses, both evaluated by PostgreSQL on the values as the column's name."""
    conn = await asyncpg.connect(db_url)
    try:
        out = {}
        for name, old in _OLD_CHECKS.items():
            installed = await conn.fetchval(
                "SELECT pg_get_expr(conbin, conrelid) FROM pg_constraint WHERE conname = $1 AND conrelid = 'results'::regclass",
                name)
            assert "labeval_is_finite" not in installed
            col = _COLUMN[name]
            rows = await conn.fetch(
                f"""SELECT ({installed}) IS FALSE AS new, ({old}) IS FALSE AS old
                    FROM unnest($1::float8[]) WITH ORDINALITY AS t ({col}, i) ORDER BY i""",
                values)
            out[name] = ([r["new"] for r in rows], [r["old"] for r in rows])
        return out
    finally:
        await conn.close()


_SPECIAL = [None, float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 5e-324, -5e-324, 1.7976931348623157e308,
            -1.7976931348623157e308, 1.0, -1.0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.none() | st.floats(allow_nan=True, allow_infinity=True), max_size=40))
@example(values=_SPECIAL)
def test_the_rewritten_checks_refuse_exactly_what_labeval_is_finite_refused(db_url: str, values) -> None:
    for name, (new, old) in asyncio.run(_refusals(db_url, values)).items():
        assert new == old, name


@pytest.mark.parametrize("column", ["value", "censor_limit", "expanded_uncertainty", "coverage_k"])
async def test_the_rewritten_checks_refuse_nan_and_infinities(conn: asyncpg.Connection, column: str) -> None:
    await conn.execute(SEED)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(asyncpg.CheckViolationError) as err:
            await conn.execute(
                f"INSERT INTO results (sample_code, item_code, lab_code, role, {column}) VALUES ('S2', 'Q', 'A', 'original', $1)",
                bad)
        assert err.value.constraint_name == f"results_{column}_check"
    await conn.execute(
        f"INSERT INTO results (sample_code, item_code, lab_code, role, {column}) VALUES ('S2', 'Q', 'A', 'original', 2.5)")
