"""The demo world, loaded through intake and graded: every planted lab is listed with its grade."""

from __future__ import annotations

from datetime import date

import polars as pl

from labeval.devtools.demo import demo_world, planted_labs, run_demo
from scoring.policy import Policy

TODAY = date(2026, 11, 28)


def test_generation_is_reproducible_from_the_seed() -> None:
    a = demo_world(12, seed=3, today=TODAY)
    b = demo_world(12, seed=3, today=TODAY)
    assert all(a.intake_tables()[k].equals(b.intake_tables()[k]) for k in a.intake_tables())
    assert a.truth.equals(b.truth)
    assert not a.results.equals(demo_world(12, seed=4, today=TODAY).results)
    # Nothing reported after "today", or intake would reject it as a future date.
    assert a.results["reported_on"].max() <= TODAY.isoformat()


def test_planted_labs_are_the_bad_kinds_and_the_isolated_groups() -> None:
    world = demo_world(40, seed=2018, today=TODAY)
    planted = planted_labs(world)
    truth = world.truth
    bad = set(truth.filter(pl.col("kind") != "normal")["lab_code"])
    isolated = set(truth.filter(pl.col("group") != "main")["lab_code"])
    assert set(planted) == bad | isolated
    assert len(isolated) == 5
    # The triangle always has one biased lab; its description says so, with the group.
    tri_biased = truth.filter((pl.col("group") == "isolated_triangle") & (pl.col("kind") == "biased"))
    assert tri_biased.height == 1
    shift = tri_biased["magnitude"].item()
    assert abs(shift) == 2.5
    assert planted[tri_biased["lab_code"].item()] == f"biased {shift:+.1f} σR · isolated triangle"


async def _graded(conn, db_url: str) -> tuple[dict[str, str], dict[str, int], pl.DataFrame]:
    run, planted = await run_demo(conn, Policy(), n_labs=30, seed=11, today=TODAY)
    truth = demo_world(30, seed=11, today=TODAY).truth
    assert set(planted) == set(truth.filter((pl.col("kind") != "normal") | (pl.col("group") != "main"))["lab_code"])
    return {g.lab_code: g.class_ for g in run.grades}, {g.lab_code: g.pairs for g in run.grades}, truth


async def test_demo_loads_through_intake_and_grades_every_lab(conn, db_url: str) -> None:
    classes, pairs, truth = await _graded(conn, db_url)
    assert set(classes) == set(truth["lab_code"])
    assert set(classes.values()) <= {"I", "II", "III", "IV"}
    # Every pair the world made reached the grading run (intake rejected nothing).
    world = demo_world(30, seed=11, today=TODAY)
    assert sum(pairs.values()) == 2 * world.pairs.height


async def test_the_default_demo_grades_its_planted_labs_and_spares_the_normal_ones(conn, db_url: str) -> None:
    # The demo an officer starts (40 labs, seed 2018). Its normal labs carry their own bias inside
    # the method's between-lab spread: none of them is put in III/IV, including the innocent
    # labs of the isolated pair and triangle.
    run, _ = await run_demo(conn, Policy(), n_labs=40, seed=2018, today=TODAY)
    classes = {g.lab_code: g.class_ for g in run.grades}
    truth = demo_world(40, seed=2018, today=TODAY).truth
    normal = truth.filter(pl.col("kind") == "normal")["lab_code"].to_list()
    assert [lab for lab in normal if classes[lab] in ("III", "IV")] == []
    # Both biased labs that can be told apart are caught: the one in the main group (41 pairs)
    # and the biased corner of the triangle (120 pairs). The isolated pair's biased lab cannot
    # be told from its partner: both stay as they are and are listed for arbitration.
    biased = {r["lab_code"]: r["group"] for r in truth.filter(pl.col("kind") == "biased").iter_rows(named=True)}
    assert {lab: classes[lab] for lab, group in biased.items() if group != "isolated_pair"} == {
        "L0035": "IV", "L0038": "III"}
    pair = truth.filter(pl.col("group") == "isolated_pair")["lab_code"].to_list()
    assert {classes[lab] for lab in pair} == {"I"}
