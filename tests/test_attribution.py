"""scoring.attribution: the comparison graph, the anchored bias fit, peers, blame."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scoring.attribution as attribution
from scoring.attribution import (
    comparison_graph,
    fit_lab_bias,
    peer_spread,
    precision_against_peers,
    qualitative_shares,
)
from scoring.policy import EvidencePolicy

SQRT2 = math.sqrt(2.0)


def test_graph_components_and_partners():
    # 0-1-2 a path, 3-4 a pair, 5 alone
    g = comparison_graph(np.array([0, 1, 1, 3, 3]), np.array([1, 2, 2, 4, 4]), 6)
    assert g.component_size.tolist() == [3, 3, 3, 2, 2, 1]
    assert g.partners.tolist() == [1, 2, 1, 1, 1, 0]
    assert g.involved.tolist() == [True] * 5 + [False]


def test_fit_recovers_exact_biases():
    # noise-free triangle, b = (1, 0, -1) in s units: s(0,1) = 1, s(1,2) = 1, s(0,2) = 2;
    # the median lab is the anchor; reported in σR units (× √2)
    a = np.repeat([0, 1, 0], 5)
    b = np.repeat([1, 2, 2], 5)
    s = np.repeat([1.0, 1.0, 2.0], 5)
    fit = fit_lab_bias(a, b, s, 3, EvidencePolicy())
    np.testing.assert_allclose(fit.b, np.array([1.0, 0.0, -1.0]) * SQRT2, atol=1e-5)


def test_triangle_median_anchor_blames_the_biased_lab_only():
    # Lab 0 reads 2.5 σR high (s = 2.5/√2 against each partner), labs 1 and 2 agree. A mean
    # anchor would give (1.67, -0.83, -0.83) σR and make the innocent labs look biased; the
    # median anchor gives (2.5, 0, 0).
    a = np.repeat([0, 0, 1], 10)
    b = np.repeat([1, 2, 2], 10)
    s = np.repeat([2.5 / SQRT2, 2.5 / SQRT2, 0.0], 10)
    fit = fit_lab_bias(a, b, s, 3, EvidencePolicy())
    np.testing.assert_allclose(fit.b, [2.5, 0.0, 0.0], atol=1e-4)


def test_fit_standard_error_two_labs_hand():
    # hand computation: two labs, 16 comparisons, sum(b) = 0 -> b0 = mean(s)/2 = 0.2 and
    # var(b0) = sigma^2 / (4 * 16) with sigma^2 = 1 (floor) -> se = 0.125 in s units; the median
    # of two labs is their mean, so the anchor does not move them; × √2 for σR units.
    s = np.array([0.3, 0.5] * 8)
    fit = fit_lab_bias(np.zeros(16, int), np.ones(16, int), s, 2, EvidencePolicy())
    np.testing.assert_allclose(fit.b, np.array([0.2, -0.2]) * SQRT2, atol=1e-6)
    np.testing.assert_allclose(fit.se, np.array([0.125, 0.125]) * SQRT2, atol=1e-6)


def test_fit_resists_one_gross_error():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 6, 300)
    b = (a + rng.integers(1, 6, 300)) % 6
    s = rng.normal(0, 1, 300)
    s[0] = 1e4
    fit = fit_lab_bias(a, b, s, 6, EvidencePolicy())
    # clipped at 4 and Huber-weighted: the gross error moves no bias past 3 standard errors
    assert np.all(np.abs(fit.b) < 3 * fit.se)


def test_fit_degenerate():
    fit = fit_lab_bias(np.array([], int), np.array([], int), np.array([]), 2, EvidencePolicy())
    assert np.all(fit.b == 0) and np.all(np.isnan(fit.se))


def test_peer_spread_recovers_tau_and_ignores_a_few_biased_labs():
    # 300 labs with true biases N(0, 0.6²) σR, measured with se 0.2, and 10 labs at +3 σR.
    rng = np.random.default_rng(8)
    true = rng.normal(0, 0.6, 300)
    true[:10] = 3.0
    se = np.full(300, 0.2)
    b = true + rng.normal(0, 0.2, 300)
    peers = peer_spread(b, se, np.ones(300, bool), peer_z=2.326, tau_floor=0.1)
    assert peers.tau == pytest.approx(0.6, rel=0.15)
    np.testing.assert_allclose(peers.limit, 2.326 * math.sqrt(peers.tau**2 + 0.04))
    # too few labs to estimate: the floor
    assert peer_spread(b[:4], se[:4], np.ones(4, bool), peer_z=2.0, tau_floor=0.3).tau == 0.3


def test_precision_against_peers_flags_the_noisy_lab():
    # 100 labs with excess variance N(0.2, 0.1²) beyond noise and one at 2.8 (4× repeatability
    # when σr = 0.43 σR adds (1.72² - 0.43²) ≈ 2.77 σR² of variance); 100 comparisons each.
    rng = np.random.default_rng(2)
    n = np.full(101, 100.0)
    u = rng.normal(0.2, 0.1, 101) + rng.normal(0, math.sqrt(8 / 100), 101)
    u[0] = 2.8
    out = precision_against_peers(u, n, np.full(101, 30), np.ones(101, bool), peer_z=2.326, floor=0.1)
    assert out.beyond[0] > 0.5
    # one-sided z = (2.8 - centre) / 0.679 ≈ 3.8
    assert out.p[0] < 1e-3
    assert (out.beyond[1:] == 0).mean() >= 0.98
    # by hand: sampling sqrt(8/100) * (1 + 2.8/2) = 0.678823, plus τ²/30 for the split between
    # the lab and its 30 partners
    assert out.se[0] == pytest.approx(math.sqrt(0.08 * 2.4**2 + out.tau**2 / 30))


def test_precision_with_few_partners_is_judged_more_cautiously():
    rng = np.random.default_rng(4)
    n = np.full(60, 100.0)
    u = rng.normal(0.2, 0.3, 60)
    many = precision_against_peers(u, n, np.full(60, 30), np.ones(60, bool), peer_z=2.0, floor=0.1)
    few = precision_against_peers(u, n, np.full(60, 2), np.ones(60, bool), peer_z=2.0, floor=0.1)
    assert np.all(few.se > many.se)
    assert np.all(few.beyond <= many.beyond)


def test_qualitative_disagreements_fall_on_the_careless_lab():
    # Qualitative items only, no arbitration: lab 0 gives a wrong verdict 25 % of the time,
    # the others 1 %. The EM error-rate model must put most of each of lab 0's disagreements on
    # lab 0, and clean partners of lab 0 must not look worse than other clean labs.
    rng = np.random.default_rng(5)
    n_labs, n = 20, 6000
    i1 = rng.integers(0, n_labs, n)
    i2 = (i1 + rng.integers(1, n_labs, n)) % n_labs
    q_true = np.full(n_labs, 0.01)
    q_true[0] = 0.25
    disc = (rng.random(n) < q_true[i1]) != (rng.random(n) < q_true[i2])
    share = qualitative_shares(i1, i2, disc, np.ones(n, bool), None, n_labs)
    blame = np.bincount(i1, weights=np.where(disc, share, 0), minlength=n_labs) + np.bincount(
        i2, weights=np.where(disc, 1 - share, 0), minlength=n_labs)
    pairs = np.bincount(i1, minlength=n_labs) + np.bincount(i2, minlength=n_labs)
    rate = blame / pairs
    assert rate[0] > 0.2  # close to its true 0.25
    assert np.all(rate[1:] < 0.03)
    assert abs(rate[1:].mean() - 0.01) < 0.003
    # Arbitration, where present, decides.
    sides = np.where(np.arange(n) % 2 == 0, "retest", None).astype(object)
    settled = qualitative_shares(i1, i2, disc, np.ones(n, bool), sides, n_labs)
    assert np.all(settled[disc & (sides == "retest")] == 1.0)


def _national_comparisons(n_pairs: int, n_labs: int, seed: int):
    # A realistic graph: partners mostly within the province, very unequal volumes, isolated
    # pairs and triangles (the national generator of the benchmarks).
    from labeval.devtools.national import NationalConfig, build_national  # noqa: PLC0415 - test-only helper

    nat = build_national(NationalConfig(n_pairs=n_pairs, n_labs=n_labs, seed=seed))
    codes = nat.labs.get_column("lab_code").to_list()
    index = {c: i for i, c in enumerate(codes)}
    a = np.array([index[c] for c in nat.pairs.get_column("lab_1").to_list()])
    b = np.array([index[c] for c in nat.pairs.get_column("lab_2").to_list()])
    return a, b, len(codes)


def test_conjugate_gradients_match_a_direct_solve_on_a_national_graph():
    """The bias fit's PCG solve of the weighted Laplacian equals scipy's direct solve of the same
    normal equations (XᵀWX + ridge·I) b = XᵀWy built from the comparison incidence matrix,
    to 1e-8 σR after both are centred per component; also when warm-started far away."""
    from scipy import sparse  # noqa: PLC0415 - only this test builds the incidence matrix
    from scipy.sparse import linalg as splinalg  # noqa: PLC0415

    from scoring.attribution import _center, _edges, _graph, _LabSystem, _pcg  # noqa: PLC0415

    a, b, n = _national_comparisons(40_000, 600, seed=5)
    rng = np.random.default_rng(1)
    y = rng.normal(0.0, 1.0, a.size) + rng.normal(0.0, 0.7, n)[a] - rng.normal(0.0, 0.7, n)[b]
    w = rng.uniform(0.2, 1.0, a.size)  # Huber-times-variance weights
    ridge = EvidencePolicy().ridge
    m = a.size
    rows = np.arange(m)
    x = sparse.csr_matrix((np.r_[np.ones(m), -np.ones(m)], (np.r_[rows, rows], np.r_[a, b])), shape=(m, n))
    xtw = x.T.multiply(w).tocsr()
    direct = splinalg.spsolve((xtw @ x + ridge * sparse.identity(n)).tocsc(), xtw @ y)

    edges = _edges(a, b, n)
    graph = _graph(edges, n)
    assert graph.component_size.max() > 0.9 * graph.involved.sum()  # one big component ...
    assert (graph.component_size[graph.involved] <= 3).any()  # ... and isolated groups
    w_e = np.bincount(edges.inv, weights=w, minlength=len(edges.a))
    wy_e = np.bincount(edges.inv, weights=w * y, minlength=len(edges.a))
    rhs = np.bincount(edges.a, weights=wy_e, minlength=n) - np.bincount(edges.b, weights=wy_e, minlength=n)
    mat = _LabSystem(edges, n).matrix(w_e, -1.0, ridge, graph.involved)
    ref = _center(direct, graph.component, graph.involved)
    for x0 in (np.zeros(n), rng.normal(0.0, 5.0, n)):
        cg = _center(_pcg(mat, rhs, x0), graph.component, graph.involved)
        np.testing.assert_allclose(cg, ref, rtol=0.0, atol=1e-8)


def test_pseudo_inverse_diagonal_matches_a_dense_pseudo_inverse():
    # The standard errors' diag(M⁺) taken per component by Cholesky, checked against numpy's
    # SVD-based pseudo-inverse of the whole Laplacian (an independent method) on a graph with a
    # large component, pairs, a triangle and labs alone.
    from scipy import sparse  # noqa: PLC0415 - only this test builds a Laplacian by hand

    from scoring.attribution import _pinv_diagonal  # noqa: PLC0415 - a private helper, tested alone

    rng = np.random.default_rng(11)
    n = 60
    big_a = rng.integers(0, 40, 400)
    big_b = (big_a + rng.integers(1, 39, 400)) % 40
    a = np.r_[big_a, 40, 42, 44, 45, 44]
    b = np.r_[big_b, 41, 43, 45, 46, 46]
    w = rng.uniform(0.2, 3.0, len(a))
    lap = np.zeros((n, n))
    np.add.at(lap, (a, a), w)
    np.add.at(lap, (b, b), w)
    np.add.at(lap, (a, b), -w)
    np.add.at(lap, (b, a), -w)
    g = comparison_graph(a, b, n)
    got = _pinv_diagonal(sparse.csr_matrix(lap), g.component, np.bincount(g.component))
    want = np.diag(np.linalg.pinv(lap, hermitian=True))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert np.all(got[47:] == 0.0)  # labs with no comparison


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_fit_by_sorted_edges_equals_the_fit_in_given_order(seed):
    # The fit groups comparisons by edge with one sort; without that sort (the lookup-table
    # edges, comparisons in their given order) every per-edge sum has the same terms in the same
    # order, so the two fits must agree to the last bit.
    rng = np.random.default_rng(seed)
    n_labs = int(rng.integers(3, 40))
    m = int(rng.integers(1, 3000))
    a = rng.integers(0, n_labs, m)
    b = (a + rng.integers(1, n_labs, m)) % n_labs
    truth = rng.normal(0, 0.5, n_labs)
    s = truth[a] - truth[b] + rng.standard_t(3, m)
    ep = EvidencePolicy()
    sorted_fit = fit_lab_bias(a, b, s, n_labs, ep)
    original = attribution._edges_by_sort
    attribution._edges_by_sort = lambda *args: None
    try:
        given_order = fit_lab_bias(a, b, s, n_labs, ep)
    finally:
        attribution._edges_by_sort = original
    for name in ("b", "se", "excess_variance"):
        np.testing.assert_array_equal(getattr(sorted_fit, name), getattr(given_order, name))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1.5, 1.345, 0.5, 2.0]))
def test_sparse_huber_update_equals_the_formula_over_every_comparison(seed, k):
    # The fit updates only the weights of residuals beyond k; each step must give the weights
    # min(1, k / max(zr, 1e-12)) and the largest change of the dense update, to the last bit,
    # step after step (weights going below 1, changing, and coming back to 1).
    rng = np.random.default_rng(seed)
    m = int(rng.integers(0, 400))
    dense = np.ones(m)
    sparse_w = np.ones(m)
    down = np.zeros(0, dtype=np.intp)
    for _ in range(6):
        zr = np.abs(rng.standard_t(3, m)) * rng.uniform(0.5, 2.0)
        zr[rng.random(m) < 0.05] = 0.0
        zr[rng.random(m) < 0.05] = k  # exactly at the corner: weight 1
        new = np.minimum(1.0, k / np.maximum(zr, 1e-12))
        want = float(np.max(np.abs(dense - new))) if m else 0.0
        dense = new
        change, down = attribution._huber_update(zr, sparse_w, down, k)
        np.testing.assert_array_equal(sparse_w, dense)
        assert change == want
        np.testing.assert_array_equal(down, np.flatnonzero(zr > k))
