"""The direct load of results (batches COPYed straight into the table, in a savepoint) must end
exactly as staging the file does: the same rows stored with the same versions, the same counts,
the same rejects with the same reasons and raw records. It is only a faster road to the same
place, so the staged path is the reference here, on files drawn to break every rule the two
roads handle differently: keys stored already (duplicates, corrections), keys repeated in the
file, labs in two roles, retests by the register's original lab, retests with no original,
across batch boundaries."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import asyncpg
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ingest import TODAY, res, seed

from labeval.db import intake
from labeval.db.imports import list_rejects
from labeval.db.pool import connect
from labeval.ingest import ingest_frame, pipeline
from labeval.ingest.kinds import resolve_kind
from labeval.ingest.pipeline import ingest_path

ROLES = ("original", "retest", "arbitration")
# S1's register names L1 as its original lab (tests/test_ingest.py seed); S2 has none.
row_st = st.builds(
    lambda s, i, role, lab, v: res(sample_code=s, item_code=i, role=role, lab_code=lab,
                                   **({"value": v} if i == "PB" else {"value": None, "unit": None})),
    st.sampled_from(["S1", "S2"]), st.sampled_from(["PB", "LBL"]), st.sampled_from(ROLES),
    st.sampled_from(["L1", "L2", "L3"]), st.sampled_from(["0.3", "0.30", "0.4", "<0.01"]),
)


async def _outcome(conn: asyncpg.Connection, path: Path, direct: bool) -> tuple:
    timings: dict[str, float] = {}
    r = await ingest_path(conn, "results", path, today=TODAY, batch_size=3, direct=direct, timings=timings)
    rejects = sorted((x.row, x.column, x.reason, str(sorted(x.raw.items()))) for x in await list_rejects(conn, r.import_id))
    # Current versions in results, the ones corrections replaced in result_versions.
    cols = "sample_code, item_code, role, lab_code, version, value, censored, censor_limit, raw_value, import_id"
    stored = await conn.fetch(
        f"""SELECT *, import_id = $1 AS this_import FROM (
                SELECT {cols}, true AS current FROM results
                UNION ALL SELECT {cols}, false FROM result_versions) x
            ORDER BY sample_code, item_code, role, lab_code, version""", r.import_id)
    stored = [tuple(v for k, v in x.items() if k != "import_id") for x in stored]
    counts = (r.rows, r.accepted, r.rejected, r.duplicates, r.corrections)
    return counts, rejects, stored, "stage" not in timings


async def _both(url: str, before: list[dict], rows: list[dict]) -> tuple[tuple, tuple]:
    conn = await connect(url)
    try:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "results.csv"
            pl.DataFrame(rows, schema={k: pl.String for k in res()}).write_csv(path)
            got = []
            for direct in (True, False):
                tx = conn.transaction()
                await tx.start()
                try:
                    if before:
                        await ingest_frame(conn, "results", before, file_name="before.json", today=TODAY)
                    got.append(await _outcome(conn, path, direct))
                finally:
                    await tx.rollback()
            return got[0], got[1]
    finally:
        await conn.close()


def test_direct_and_staged_loads_end_alike(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches of 3 rows, the first cut after its first row: every rule meets batch boundaries.
    monkeypatch.setattr(pipeline, "FIRST_ROWS", 1)
    asyncio.run(_seeded(db_url))
    took_direct: list[bool] = []

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(before=st.lists(row_st, max_size=4), rows=st.lists(row_st, min_size=1, max_size=9))
    def check(before: list[dict], rows: list[dict]) -> None:
        direct, staged = asyncio.run(_both(db_url, before, rows))
        assert direct[:3] == staged[:3]
        # The staged road never takes the direct one.
        assert not staged[3]
        took_direct.append(direct[3])

    check()
    # Both roads were exercised: clean files went direct, the others gave way to the stage.
    assert any(took_direct) and not all(took_direct)


async def _seeded(url: str) -> None:
    conn = await connect(url)
    try:
        await seed(conn)
    finally:
        await conn.close()


async def test_a_clean_file_is_loaded_directly_and_a_correction_is_staged(conn: asyncpg.Connection) -> None:
    await seed(conn)
    rows = [res(), res(lab_code="L2", role="retest", value="0.4"), res(item_code="LBL", value=None, unit=None),
            res(item_code="LBL", lab_code="L3", role="retest", value=None, unit=None)]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.csv"
        pl.DataFrame(rows, schema={k: pl.String for k in res()}).write_csv(path)
        rooms: dict[str, float] = {}
        r = await ingest_path(conn, "results", path, today=TODAY, timings=rooms)
        assert (r.accepted, r.rejected) == (4, 0) and "direct" in rooms and "stage" not in rooms
        # The same file again: every row is stored already, so the direct load gives way and
        # the staged one counts them as duplicates.
        rooms = {}
        r = await ingest_path(conn, "results", path, today=TODAY, timings=rooms)
        assert (r.accepted, r.duplicates) == (0, 4) and "stage" in rooms
        # One value corrected: a new version.
        pl.DataFrame([res(value="0.35")], schema={k: pl.String for k in res()}).write_csv(path)
        r = await ingest_path(conn, "results", path, today=TODAY)
        assert (r.accepted, r.corrections) == (1, 1)
    versions = await conn.fetch(
        "SELECT version, value, true AS current FROM results WHERE sample_code = 'S1' AND item_code = 'PB' "
        "AND role = 'original' UNION ALL SELECT version, value, false FROM result_versions "
        "WHERE sample_code = 'S1' AND item_code = 'PB' AND role = 'original' ORDER BY version")
    assert [tuple(v) for v in versions] == [(1, 0.3, False), (2, 0.35, True)]


def test_the_first_batch_is_cut_short_and_no_row_is_lost() -> None:
    batches = [pl.DataFrame({"_row": range(i, i + n)}) for i, n in ((1, 100), (101, 5))]
    got = list(pipeline._sooner(iter(batches), 10))
    # 10, then 30, then the remaining 60 (not more than twice the next piece of 90), then the rest.
    assert [b.height for b in got] == [10, 30, 60, 5]
    assert pl.concat(got).get_column("_row").to_list() == list(range(1, 106))
    # A first batch not much longer than the cut is left whole.
    assert [b.height for b in pipeline._sooner(iter(batches[1:]), 10)] == [5]
    assert list(pipeline._sooner(iter([]), 10)) == []


# The trigger on results is suspended while a direct load holds the table (the intake checks the
# same rules itself, against reference data read under that lock): these tests pin when it is
# suspended, that it always comes back, and that the lock keeps every removal of a code out.

TRIGGER = "results_check_insert"


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    said: list[bool] = []
    real = intake.suspend_trigger

    async def spy(conn: asyncpg.Connection, table: str, trigger: str) -> bool:
        said.append(await real(conn, table, trigger))
        return said[-1]

    monkeypatch.setattr(intake, "suspend_trigger", spy)
    return said


async def _trigger_on(conn: asyncpg.Connection) -> bool:
    # 'O': fires in the origin replication role, the normal state ('D' is disabled).
    return await conn.fetchval("SELECT tgenabled = 'O' FROM pg_trigger WHERE tgname = $1", TRIGGER)


async def _by_register_lab_refused(conn: asyncpg.Connection) -> None:
    # S1's register names L1 as its original lab: a retest by L1 written past the intake (in a
    # transaction rolled back, without L1's own results of S1, which the unique index would
    # refuse first).
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("DELETE FROM results WHERE sample_code = 'S1' AND lab_code = 'L1'")
        with pytest.raises(asyncpg.CheckViolationError) as err:
            await conn.execute("INSERT INTO results (sample_code, item_code, lab_code, role, value) "
                               "VALUES ('S1', 'LBL', 'L1', 'retest', NULL)")
        assert err.value.constraint_name == "results_retest_by_other_lab"
    finally:
        await tx.rollback()


async def test_the_trigger_is_suspended_for_a_direct_load_only(conn: asyncpg.Connection,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(conn)
    said = _spy(monkeypatch)
    # Clean: loaded directly, with the trigger suspended for it.
    r = await ingest_frame(conn, "results", [res(), res(lab_code="L2", role="retest", value="0.4")], today=TODAY)
    assert (r.accepted, r.rejected, said) == (2, 0, [True])
    assert await _trigger_on(conn)
    await _by_register_lab_refused(conn)
    # A retest by the register's original lab: the direct load gives way (the intake's own count,
    # the trigger being suspended), the staged file rejects that row under rule 1 and loads the
    # other, with the trigger back for it.
    r = await ingest_frame(conn, "results", [res(item_code="LBL", value=None, unit=None),
                                              res(item_code="LBL", lab_code="L1", role="arbitration", value=None,
                                                  unit=None)], today=TODAY)
    assert (r.accepted, r.rejected, said) == (1, 1, [True, True])
    assert [x.column for x in r.rejects] == ["lab_code"] and "original" in r.rejects[0].reason
    assert await _trigger_on(conn)
    await _by_register_lab_refused(conn)


async def test_under_repeatable_read_the_trigger_keeps_checking(conn: asyncpg.Connection,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(conn)
    said = _spy(monkeypatch)
    await conn.execute("SET default_transaction_isolation = 'repeatable read'")
    r = await ingest_frame(conn, "results", [res(), res(lab_code="L2", role="retest", value="0.4")], today=TODAY)
    assert (r.accepted, said) == (2, [False])
    assert await _trigger_on(conn)


async def test_a_role_that_does_not_own_results_keeps_the_trigger(conn: asyncpg.Connection,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(conn)
    said = _spy(monkeypatch)
    role = f"loader_{conn.get_server_pid()}"
    await conn.execute(f"CREATE ROLE {role}")
    try:
        await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; "
                           f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
        await conn.execute(f"SET ROLE {role}")
        r = await ingest_frame(conn, "results", [res(), res(lab_code="L2", role="retest", value="0.4")], today=TODAY)
        assert (r.accepted, said) == (2, [False])
        await conn.execute("RESET ROLE")
        assert await _trigger_on(conn)
    finally:
        await conn.execute("RESET ROLE")
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_a_removal_of_a_code_waits_and_the_load_sees_it_gone(db_url: str, conn: asyncpg.Connection) -> None:
    await seed(conn)
    other = await connect(db_url)
    try:
        # A removal of lab L3 under way (uncommitted) when the import starts: the import must wait
        # for it before it reads the codes, or it would load L3's row unchecked.
        tx = other.transaction()
        await tx.start()
        await other.execute("DELETE FROM labs WHERE lab_code = 'L3'")
        load = asyncio.ensure_future(ingest_frame(
            conn, "results", [res(), res(lab_code="L3", role="retest", value="0.4")], today=TODAY))
        waiting = False
        for _ in range(200):
            waiting = await other.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", conn.get_server_pid())
            if waiting or load.done():
                break
            await asyncio.sleep(0.02)
        assert waiting and not load.done()
        await tx.commit()
        r = await load
        assert (r.accepted, r.rejected) == (1, 1)
        assert [(x.column, x.reason_code) for x in await list_rejects(conn, r.import_id)] == [("lab_code", "unknown_code")]
        # And the other way round: while a load holds results, a removal waits for it.
        async with conn.transaction():
            assert await intake.suspend_trigger(conn, "results", TRIGGER)
            await other.execute("SET lock_timeout = '200ms'")
            with pytest.raises(asyncpg.LockNotAvailableError):
                await other.execute("DELETE FROM labs WHERE lab_code = 'L2'")
            await intake.resume_trigger(conn, "results", TRIGGER)
        assert await _trigger_on(conn)
    finally:
        await other.close()


async def test_the_register_gives_the_sample_codes_and_the_original_labs(conn: asyncpg.Connection) -> None:
    # One read of samples serves both: every code (S2 has no original lab and is a sample all the
    # same), sorted for the binary search, and the labs the independence rules compare with.
    await seed(conn)
    await conn.execute("INSERT INTO samples (sample_code, category_code) VALUES ('S0', 'C1')")
    refs = await pipeline.load_refs(conn, resolve_kind("results"))
    assert refs.codes[("samples", "sample_code")].to_list() == ["S0", "S1", "S2"]
    register = refs.tables["register"].sort("sample_code")
    assert register.rows() == [("S0", None), ("S1", "L1"), ("S2", None)]
