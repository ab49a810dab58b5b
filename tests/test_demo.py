"""The demo data set, loaded through intake and graded: the planted labs stand out."""

from __future__ import annotations

from datetime import date

from labeval.config import Settings
from labeval.demo import generate, run_demo

TODAY = date(2026, 11, 28)


def test_generation_is_reproducible_from_the_seed() -> None:
    a = generate(12, seed=3, today=TODAY, samples_per_lab=5)
    b = generate(12, seed=3, today=TODAY, samples_per_lab=5)
    assert all(a[k].equals(b[k]) for k in a)
    assert not a["results"].equals(generate(12, seed=4, today=TODAY, samples_per_lab=5)["results"])
    # Nothing reported after "today", or intake would reject it as a future date.
    assert a["results"]["reported_on"].max() <= TODAY.isoformat()


async def test_demo_grades_planted_labs_down(conn, db_url: str) -> None:
    run, planted = await run_demo(conn, Settings(database_url=db_url), n_labs=30, seed=11, today=TODAY)
    classes = {g.lab_code: g.class_ for g in run.grades}
    assert len(classes) == 30
    biased_or_noisy = [lab for lab, desc in planted.items() if "σR" in desc]
    assert len(biased_or_noisy) == 3
    # Planted bias (±1.5 σR) and noise (3 σR) with hundreds of pairs each: caught.
    assert all(classes[lab] in ("III", "IV") for lab in biased_or_noisy), {lab: classes[lab] for lab in biased_or_noisy}
    # Clean labs are not downgraded (Ⅲ/Ⅳ) by this seed's data.
    clean = [lab for lab in classes if lab not in planted]
    assert sum(classes[lab] in ("III", "IV") for lab in clean) <= 1
