"""The 双随机 draw algorithm without a database: reproducible from the seed, never an excluded or
weight-0 lab, and first-pick frequencies over many seeds that follow the weights."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from labeval.grading.draws import (
    Candidate,
    NotEnoughLabs,
    SampleRequest,
    assign,
    draw_labs,
    first_pick_probabilities,
    weighted_sample,
)

WEIGHTS = {"I": 1.0, "II": 0.7, "III": 0.3, "IV": 0.0}  # the shipped policy's selection weights


def _lab(i: int, cls: str, province: str | None = None) -> Candidate:
    return Candidate(lab_code=f"L{i:03d}", class_=cls, weight=WEIGHTS[cls], province=province)


labs_st = st.lists(
    st.tuples(st.sampled_from(list(WEIGHTS)), st.sampled_from(["BJ", "SH", "GD", None])), min_size=1, max_size=25,
).map(lambda xs: [_lab(i, c, p) for i, (c, p) in enumerate(xs)])
seeds = st.integers(min_value=0, max_value=2**63 - 1)


@settings(max_examples=200, deadline=None)
@given(labs_st, seeds, st.data())
def test_a_draw_is_reproducible_and_never_picks_an_excluded_or_weight_zero_lab(labs, seed, data) -> None:
    excluded = set(data.draw(st.lists(st.sampled_from([c.lab_code for c in labs]), max_size=5)))
    provinces = set(data.draw(st.lists(st.sampled_from(["BJ", "SH", "GD"]), max_size=2)))
    allowed = {c.lab_code for c in labs
               if c.weight > 0 and c.lab_code not in excluded and c.province not in provinces}
    count = data.draw(st.integers(min_value=1, max_value=max(1, len(allowed))))
    if count > len(allowed):
        with pytest.raises(NotEnoughLabs):
            draw_labs(labs, count, seed, exclude_labs=excluded, exclude_provinces=provinces)
        return
    chosen = draw_labs(labs, count, seed, exclude_labs=excluded, exclude_provinces=provinces)
    assert len(chosen) == count == len(set(chosen))
    assert set(chosen) <= allowed
    # The same seed gives the same draw whatever order the candidates come in.
    assert draw_labs(list(reversed(labs)), count, seed, exclude_labs=excluded, exclude_provinces=provinces) == chosen
    # Drawing every allowed lab is a permutation of them.
    assert sorted(draw_labs(labs, len(allowed), seed, exclude_labs=excluded, exclude_provinces=provinces)) == sorted(
        allowed)


def test_a_draw_is_pinned_for_a_fixed_seed() -> None:
    # Worked by hand from the algorithm: a change of algorithm or of numpy's PCG64 stream would
    # make stored draws unverifiable and must show up here. PCG64(20261129).random() gives
    # u = 0.22077989903349038, 0.15993027572187757, 0.27288635899457514.
    # Pool (IV dropped): L000 1, L001 .7, L002 .3, L003 1, L005 .7; sum 3.7.
    #   u1·3.7 = 0.817 < 1.0 → L000. Left: L001 .7, L002 .3, L003 1, L005 .7; sum 2.7.
    #   u2·2.7 = 0.432 < 0.7 → L001. Left: L002 .3, L003 1, L005 .7; sum 2.0.
    #   u3·2.0 = 0.546, ≥ 0.3 and < 1.3 → L003.
    g = np.random.Generator(np.random.PCG64(20261129))
    assert [g.random() for _ in range(3)] == [0.22077989903349038, 0.15993027572187757, 0.27288635899457514]
    labs = [_lab(i, c) for i, c in enumerate(["I", "II", "III", "I", "IV", "II"])]
    assert weighted_sample(labs, 3, 20261129) == ["L000", "L001", "L003"]


def test_first_pick_frequencies_follow_the_weights() -> None:
    labs = [_lab(i, c) for i, c in enumerate(["I", "I", "II", "II", "III", "III", "IV"])]
    expected = first_pick_probabilities(labs)
    # I: 1/4, II: 0.7/4, III: 0.3/4 (sum of weights 2×1 + 2×0.7 + 2×0.3 = 4); IV never.
    assert expected == pytest.approx({"L000": 0.25, "L001": 0.25, "L002": 0.175, "L003": 0.175,
                                      "L004": 0.075, "L005": 0.075})
    n = 8000
    firsts = Counter(weighted_sample(labs, 1, seed)[0] for seed in range(n))
    assert "L006" not in firsts
    codes = sorted(expected)
    result = stats.chisquare([firsts[c] for c in codes], [n * expected[c] for c in codes])
    # Fixed seeds, so the outcome is fixed; a biased pick (e.g. uniform) gives p < 1e-50 at n = 8000.
    assert result.pvalue > 0.01, (firsts, result)
    uniform = stats.chisquare([firsts[c] for c in codes])
    assert uniform.pvalue < 1e-6


def test_second_pick_frequencies_follow_the_remaining_weights() -> None:
    # Without replacement: given L000 (weight 1) first, L001 (1.0) and L002 (0.3) share the rest 1.3.
    labs = [_lab(0, "I"), _lab(1, "I"), _lab(2, "III")]
    seconds = Counter(d[1] for seed in range(20000) if (d := weighted_sample(labs, 2, seed))[0] == "L000")
    n = sum(seconds.values())
    result = stats.chisquare([seconds["L001"], seconds["L002"]], [n / 1.3, n * 0.3 / 1.3])
    assert result.pvalue > 0.01, (seconds, result)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["BJ", "SH"]), st.sampled_from(["L000", "L001", None])),
                min_size=1, max_size=30), seeds, st.booleans())
def test_an_assignment_separates_sampling_and_testing_and_spreads_the_labs(samples_spec, seed, own) -> None:
    labs = [_lab(0, "I", "BJ"), _lab(1, "II", "SH"), _lab(2, "III", "BJ"), _lab(3, "II", "SH"), _lab(4, "IV", "SH")]
    samples = [SampleRequest(sample_code=f"S{i}", product_category="C", enterprise_province=p, sampling_body=body)
               for i, (p, body) in enumerate(samples_spec)]
    out = assign(samples, {"C": labs}, seed, exclude_own_province=own)
    assert out == assign(samples, {"C": labs}, seed, exclude_own_province=own)
    assert [a.sample_code for a in out] == [s.sample_code for s in samples]
    used: Counter[str] = Counter()
    for s, a in zip(samples, out, strict=True):
        assert a.lab_code != s.sampling_body and a.lab_code != "L004"  # IV has weight 0
        if own:
            assert a.lab_code not in {c.lab_code for c in labs if c.province == s.enterprise_province}
        pool = {c.lab_code for c in labs if c.weight > 0 and c.lab_code != s.sampling_body
                and not (own and c.province == s.enterprise_province)}
        # A lab is used again only when every lab this sample could have had is used as often.
        assert used[a.lab_code] == min(used[c] for c in pool)
        used[a.lab_code] += 1


def test_an_assignment_with_no_possible_lab_names_the_sample() -> None:
    labs = [_lab(0, "I", "BJ")]
    samples = [SampleRequest(sample_code="S1", product_category="C", sampling_body="L000")]
    with pytest.raises(NotEnoughLabs, match="S1"):
        assign(samples, {"C": labs}, 1, exclude_own_province=False)


@settings(max_examples=50, deadline=None)
@given(labs_st, seeds, st.data())
def test_the_re_derivation_in_the_integrators_guide_gives_the_same_draws(labs, seed, data) -> None:
    # docs/integrators.md gives integrators a Python re-derivation; it must agree with the service.
    text = (Path(__file__).resolve().parents[1] / "docs" / "integrators.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    excluded = data.draw(st.lists(st.sampled_from([c.lab_code for c in labs]), max_size=3))
    provinces = data.draw(st.lists(st.sampled_from(["BJ", "SH", "GD"]), max_size=1))
    allowed = [c for c in labs if c.weight > 0 and c.lab_code not in excluded and c.province not in provinces]
    count = len(allowed) // 2 + (1 if allowed else 0)
    if not allowed:
        return
    as_dicts = [msgspec.to_builtins(c) for c in labs]
    assert namespace["redraw"](as_dicts, count, seed, excluded, provinces) == draw_labs(
        labs, count, seed, exclude_labs=excluded, exclude_provinces=provinces)
