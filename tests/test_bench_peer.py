"""The `peer` benchmark target: labeval's ISO 13528 scores and Algorithm A per item group agree
with the pt13528 package's (an independent implementation; installed with the `bench` extra).
Agreement with published reference values is tested in test_robust.py and test_scores.py."""

from __future__ import annotations

import numpy as np
import pytest

from labeval.devtools import bench_peer
from labeval.devtools.bench_types import Measurement


def test_groups_have_the_promised_shape():
    group, x, u_x = bench_peer.make_groups(2_000, seed=3)
    assert group.size == x.size == u_x.size == 2_000
    sizes = np.bincount(group)
    # Every group has 8 to 60 results, the last (cut to fit n) too.
    assert sizes.min() >= 8 and sizes.max() <= 60
    # Sizes where cutting the last group to fit left it 1 to 7 results (seed 0 at 3 000 000
    # left it 2; pt13528 then has no scale and refuses the z score).
    for n in (3_000_000, 2_001, 2_007):
        sizes = np.bincount(bench_peer.make_groups(n, seed=0)[0])
        assert sizes.sum() == n and sizes.min() >= 8 and sizes.max() <= 60
    assert np.all(np.diff(group) >= 0) and np.all(x > 0) and np.all(u_x > 0)


def test_labeval_agrees_with_pt13528():
    pytest.importorskip("pt13528")
    group, x, u_x = bench_peer.make_groups(3_000, seed=1)
    _, ours = bench_peer._labeval(group, x, u_x)
    _, theirs = bench_peer._pt13528(group, x, u_x)
    off = bench_peer.disagreement(ours, theirs)
    assert set(off) == {"x_pt", "s", "z", "zeta", "en"}
    assert all(v <= 1e-9 for v in off.values()), off
    # The scores are not all trivially zero: some results are outliers by any measure.
    assert np.max(np.abs(ours["z"])) > 3


def test_measure_reports_each_score():
    pytest.importorskip("pt13528")
    m = bench_peer.measure(2_000, seed=2)
    assert isinstance(m, Measurement)
    for k in bench_peer.SCORES:
        assert m.details[f"{k}_seconds"] > 0 and m.details[f"{k}_pt13528_seconds"] > 0
        assert m.details[f"{k}_speedup"] == pytest.approx(
            m.details[f"{k}_pt13528_seconds"] / m.details[f"{k}_seconds"])
    assert m.details["min_speedup"] == min(m.details[f"{k}_speedup"] for k in bench_peer.SCORES)
    assert bench_peer.passed(m) == (m.details["min_speedup"] >= 100)


def test_without_the_extra_the_target_says_so(monkeypatch):
    monkeypatch.setattr(bench_peer, "pt_robust", None)
    with pytest.raises(RuntimeError, match=r"\.\[bench\]"):
        bench_peer.measure(100)
