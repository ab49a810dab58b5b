"""Who is wrong when two labs disagree: the comparison graph, lab biases and blame shares.

The retest lab is not the truth. Every quantitative comparison gives a standardised difference
s ≈ b[a] − b[b] + noise, so all lab biases are fitted at once from the whole comparison graph;
a lab retested by a biased partner is then not blamed, because the partner's bias is known from
its other comparisons. Biases are only known up to a constant within each connected component of
the graph: each component is anchored on the median of its labs' biases (a minority of biased
labs cannot drag the anchor), and a lab in a component too small, or with too few distinct
partners, is *not identifiable*: its pairs cannot tell whether it or its partners are wrong.

* :func:`comparison_graph`: components, sizes and distinct partners per lab;
* :func:`fit_lab_bias`: robust weighted least squares of the biases and each lab's excess
  variance, anchored per component;
* :func:`peer_spread`: the between-lab spread τ of biases among identifiable labs (normal labs
  differ from each other; that is not a defect), estimated robustly;
* :func:`blame_shares`: each lab's share of a discrepant pair;
* :func:`qualitative_shares`: the same for verdict-only items, from an error-rate model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import sparse, stats
from scipy.linalg import lapack
from scipy.sparse import csgraph
from scipy.sparse import linalg as splinalg

from scoring.policy import EvidencePolicy

__all__ = [
    "BiasFit",
    "ComparisonGraph",
    "PeerSpread",
    "blame_shares",
    "comparison_graph",
    "fit_lab_bias",
    "peer_spread",
    "precision_against_peers",
    "qualitative_shares",
]

# Ridge (in pseudo-pairs' worth of information) pulling each lab's excess variance towards 0 in
# the variance-attribution fit: an algorithmic regulariser, not a grading threshold.
_VARIANCE_RIDGE = 1.0
# A bias fitted from s is in units of s = d / (√2 σR); a lab shifted by δ σR has b = δ / √2.
SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class ComparisonGraph:
    """Connected components of the graph whose edges are comparisons between two labs."""

    component: np.ndarray  # component id per lab
    component_size: np.ndarray  # labs in the lab's component
    partners: np.ndarray  # distinct labs the lab was compared with
    involved: np.ndarray  # the lab has at least one comparison


def comparison_graph(lab_a: np.ndarray, lab_b: np.ndarray, n_labs: int) -> ComparisonGraph:
    """Components and distinct partners from comparison endpoints (lab indices)."""
    lab_a = np.asarray(lab_a, dtype=np.int64)
    lab_b = np.asarray(lab_b, dtype=np.int64)
    return _graph(_edges(lab_a, lab_b, n_labs), n_labs)


@dataclass(frozen=True, slots=True)
class _Edges:
    """The distinct ordered lab pairs (a, b) of the comparisons and the edge of every comparison.

    Everything the fit needs from millions of comparisons is a sum per edge (weights, weighted
    differences, counts), so the per-comparison work is a few bincounts and gathers and the linear
    algebra runs on the lab graph, whose size does not grow with the number of pairs.
    """

    a: np.ndarray
    b: np.ndarray
    inv: np.ndarray  # edge index of each comparison


def _edges(lab_a: np.ndarray, lab_b: np.ndarray, n_labs: int) -> _Edges:
    if len(lab_a) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Edges(a=empty, b=empty, inv=empty)
    key = lab_a.astype(np.int64) * n_labs + lab_b
    if n_labs * n_labs <= max(8 * len(key), 1 << 16):
        # A lookup table over all ordered lab pairs is cheaper than sorting the comparisons.
        present = np.zeros(n_labs * n_labs, dtype=bool)
        present[key] = True
        uniq = np.flatnonzero(present)
        del present
        table = np.empty(n_labs * n_labs, dtype=np.int32 if len(uniq) < 2**31 else np.int64)
        table[uniq] = np.arange(len(uniq))
        inv = table[key]
        del table
    else:
        uniq, inv = np.unique(key, return_inverse=True)
    return _Edges(a=uniq // n_labs, b=uniq % n_labs, inv=inv.reshape(-1))


def _edges_by_sort(lab_a: np.ndarray, lab_b: np.ndarray, n_labs: int) -> tuple[_Edges, np.ndarray] | None:
    """The edges from one sort of the comparisons, and that order: (edges with ``inv`` ascending,
    order), a stable sort by edge. The row in the low 32 bits makes every key distinct, so
    polars' parallel (unstable) sort is stable here. None when the keys would not fit in 63 bits.
    """
    m = len(lab_a)
    if m == 0 or m >= 1 << 32 or n_labs * n_labs >= 1 << 31:
        return None
    key = lab_a.astype(np.int64)
    key *= n_labs
    key += lab_b
    key <<= 32
    key |= np.arange(m, dtype=np.int64)
    key = pl.Series(key).sort().to_numpy()
    order = key & 0xFFFFFFFF
    pair = key >> 32
    del key
    new = np.empty(m, dtype=bool)
    new[0] = True
    np.not_equal(pair[1:], pair[:-1], out=new[1:])
    uniq = pair[new]
    inv = np.cumsum(new, dtype=np.int64) - 1
    return _Edges(a=uniq // n_labs, b=uniq % n_labs, inv=inv), order


def _graph(edges: _Edges, n_labs: int) -> ComparisonGraph:
    ea, eb = edges.a, edges.b
    adj = sparse.csr_matrix(
        (np.ones(2 * len(ea), dtype=np.int8), (np.r_[ea, eb], np.r_[eb, ea])), shape=(n_labs, n_labs)
    )
    adj.sum_duplicates()
    adj.setdiag(0)
    adj.eliminate_zeros()
    _, comp = csgraph.connected_components(adj, directed=False)
    sizes = np.bincount(comp)
    partners = np.diff(adj.indptr).astype(np.int64)
    involved = np.zeros(n_labs, dtype=bool)
    involved[ea] = True
    involved[eb] = True
    return ComparisonGraph(
        component=comp.astype(np.int64),
        component_size=sizes[comp].astype(np.int64),
        partners=partners,
        involved=involved,
    )


@dataclass(frozen=True, slots=True)
class BiasFit:
    """Lab biases from the comparison graph, in units of σR (a lab shifted by δ σR has δ).

    ``b`` is relative to the median lab of its component; ``se`` its standard error (NaN for a
    lab without comparisons); ``excess_variance`` the lab's variance beyond the method's σR²
    (units of σR² in the s scale, 0 = as noisy as the method).
    """

    b: np.ndarray
    se: np.ndarray
    excess_variance: np.ndarray
    graph: ComparisonGraph


class _LabSystem:
    """Normal equations on the lab graph: Σ w (e_a ∓ e_b)(e_a ∓ e_b)ᵀ from per-edge weights.

    The sparsity pattern (the edges and the diagonal) is fixed for a fit, so it is laid out once
    and each solve only refills the values. ``sign`` −1 gives the weighted graph Laplacian of the
    bias fit (rows b[a] − b[b]), +1 the signless one of the variance fit (rows (u[a] + u[b]) / 2,
    with the ½ folded into the weights by the caller).
    """

    def __init__(self, edges: _Edges, n_labs: int) -> None:
        ea, eb = edges.a, edges.b
        n_e = len(ea)
        lab = np.arange(n_labs)
        rows = np.r_[ea, eb, lab]
        cols = np.r_[eb, ea, lab]
        pattern = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_labs, n_labs))
        pattern.sum_duplicates()
        pattern.sort_indices()
        self.indptr, self.indices = pattern.indptr, pattern.indices
        # Where each ordered edge's two off-diagonal entries and each diagonal entry sit in the
        # data array. An edge (a, b) and an edge (b, a) share their entries, so the values are
        # added in two scatters, each with distinct positions.
        pos = _csr_positions(pattern.indptr, pattern.indices, rows, cols)
        self.pos_ab = pos[:n_e]
        self.pos_ba = pos[n_e : 2 * n_e]
        self.pos_diag = pos[2 * n_e :]
        self.ea, self.eb = ea, eb
        self.n_labs = n_labs
        self.nnz = len(pattern.indices)

    def matrix(self, w_edge: np.ndarray, sign: float, ridge: float, keep: np.ndarray) -> sparse.csr_matrix:
        n = self.n_labs
        diag = np.bincount(self.ea, weights=w_edge, minlength=n) + np.bincount(self.eb, weights=w_edge, minlength=n)
        # Each scatter has distinct positions, so a bincount is the scatter-add (faster than
        # fancy-index assignment), and the entries are added in the same order.
        data = np.bincount(self.pos_ab, weights=sign * w_edge, minlength=self.nnz)
        data += np.bincount(self.pos_ba, weights=sign * w_edge, minlength=self.nnz)
        # A lab without comparisons gets a unit diagonal (its unknown is 0) instead of an empty row.
        data += np.bincount(self.pos_diag, weights=diag + ridge + np.where(keep, 0.0, 1.0), minlength=self.nnz)
        return sparse.csr_matrix((data, self.indices, self.indptr), shape=(n, n))


def _csr_positions(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Index into a sorted CSR matrix's data of each (row, col), all present in the pattern."""
    keys = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr)) * (len(indptr) - 1) + indices
    return np.searchsorted(keys, rows.astype(np.int64) * (len(indptr) - 1) + cols)


# Conjugate gradients stop when the residual is this small relative to the right-hand side; the
# biases then agree with a direct solve of the same equations to about 1e-9 σR (the test
# compares them on a national-scale graph).
_CG_RTOL = 1e-11


def _pcg(mat: sparse.csr_matrix, rhs: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients, warm-started at x0.

    The bias system is a weighted graph Laplacian plus a tiny ridge: nearly singular along a
    constant per connected component, but the right-hand side has no part there (every
    comparison adds +w s to one lab and −w s to the other, so each component's sums to zero), so
    CG never has to resolve that direction (as on a consistent semi-definite system, Kaasschieter
    1988); the rounding that leaks into it is taken out by :func:`_center`. The diagonal (a lab's total weight) varies over orders of magnitude between busy and small labs,
    which is what the Jacobi preconditioner takes out.
    """
    d = mat.diagonal()
    inv_d = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 1.0)
    precond = splinalg.LinearOperator(mat.shape, matvec=lambda v: inv_d * v, dtype=np.float64)
    x, info = splinalg.cg(mat, rhs, x0=x0, rtol=_CG_RTOL, atol=0.0, M=precond, maxiter=20 * mat.shape[0])
    if info != 0:  # pragma: no cover - a safety net; the tolerance is reached in tens of steps
        x = np.asarray(splinalg.spsolve(mat.tocsc(), rhs)).reshape(-1)
    return x


def _center(x: np.ndarray, comp: np.ndarray, involved: np.ndarray) -> np.ndarray:
    """x with each component's mean over its involved labs taken out (the ridge solution's gauge)."""
    n_comp = int(comp.max()) + 1 if len(comp) else 0
    cnt = np.bincount(comp[involved], minlength=n_comp)
    tot = np.bincount(comp[involved], weights=x[involved], minlength=n_comp)
    mean = np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0)
    return np.where(involved, x - mean[comp], 0.0)


def _component_medians(values: np.ndarray, comp: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median of ``values`` over the masked labs of each component, broadcast back per lab."""
    out = np.zeros(len(values))
    order = np.lexsort((values, comp))
    order = order[mask[order]]
    if len(order) == 0:
        return out
    sorted_comp = comp[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_comp)) + 1]
    ends = np.r_[starts[1:], len(order)]
    sorted_vals = values[order]
    medians = {
        int(sorted_comp[s]): 0.5 * (sorted_vals[s + (e - s - 1) // 2] + sorted_vals[s + (e - s) // 2])
        for s, e in zip(starts, ends)
    }
    for c, m in medians.items():
        out[comp == c] = m
    return out


def _pinv_diagonal(lap: sparse.spmatrix, comp: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """diag(M⁺) of a weighted graph Laplacian M (sparse, symmetric), component by component.

    M is block-diagonal by component, and so is M⁺. Within a component of k labs the null space
    of M is the constant vector, so M_c + J/k (J all ones) is symmetric positive definite and
    M_c⁺ = (M_c + J/k)⁻¹ − J/k. Its Cholesky factor L gives diag((M_c + J/k)⁻¹)_i = Σ_j (L⁻¹)_ji²:
    a factor and a triangular inverse, about a third of the work of a general inverse, and the
    cost is the sum of the components' k³, not n³. A lab alone has M⁺ = 0.
    """
    out = np.zeros(len(comp))
    csr = sparse.csr_matrix(lap)
    for c in np.flatnonzero(sizes > 1):
        idx = np.flatnonzero(comp == c)
        block = csr[idx][:, idx].toarray()
        block += 1.0 / sizes[c]
        factor, info = lapack.dpotrf(block, lower=1, overwrite_a=1, clean=1)
        if info != 0:  # pragma: no cover - M_c + J/k is positive definite by construction
            raise np.linalg.LinAlgError(f"Cholesky of the bias fit's matrix failed (info={info})")
        inverse, info = lapack.dtrtri(factor, lower=1, overwrite_c=1)
        if info != 0:  # pragma: no cover - the factor of a definite matrix is invertible
            raise np.linalg.LinAlgError(f"inverse of the Cholesky factor failed (info={info})")
        out[idx] = np.einsum("ji,ji->i", inverse, inverse) - 1.0 / sizes[c]
    return out


def _huber_update(zr: np.ndarray, huber: np.ndarray, down: np.ndarray, k: float) -> tuple[float, np.ndarray]:
    """Huber weights min(1, k / max(zr, 1e-12)) of the scaled residuals |r| / sd written into
    ``huber`` in place; ``down`` holds the indices where huber is below 1 before the step.
    Returns the largest change of any weight and the indices below 1 after it.

    Only a residual beyond k gets a weight below 1 (a few comparisons in a hundred), and there
    zr > k, so the floor at 1e-12 never applies; everywhere else the weight is exactly 1. So the
    weights, and the largest change, are those of the formula over every comparison (the same
    doubles), from one comparison and a few sparse gathers instead of six full passes.
    """
    if k <= 1e-12:  # pragma: no cover - a Huber constant this small is not a policy anyone sets
        new = np.minimum(1.0, k / np.maximum(zr, 1e-12))
        change = float(np.max(np.abs(huber - new))) if huber.size else 0.0
        huber[:] = new
        return change, np.flatnonzero(new < 1.0)
    below = np.flatnonzero(zr > k)
    values = np.divide(k, zr[below])
    change = float(np.max(np.abs(huber[below] - values))) if below.size else 0.0
    before = huber[down]
    huber[down] = 1.0
    huber[below] = values
    if down.size:
        # where a weight stays below 1 this is the change counted above; elsewhere it is back at 1
        change = max(change, float(np.max(np.abs(before - huber[down]))))
    return change, below


def fit_lab_bias(
    lab_a: np.ndarray, lab_b: np.ndarray, s: np.ndarray, n_labs: int, ep: EvidencePolicy
) -> BiasFit:
    """Robust weighted least squares of s ≈ b[lab_a] − b[lab_b] over the comparison graph.

    Rows are comparisons (original vs retest, and each side vs the arbitration lab); s is
    clipped at ±clip_s. Alternates (twice) between
      1. Huber IRLS (k = huber_k on residual / row sd) for b with weights huber / var_row, each
         step solving the weighted graph Laplacian by Jacobi-preconditioned conjugate gradients
         warm-started from the previous step's b, with a tiny ridge on b, which makes the
         solution sum to zero within each component (every row of the incidence matrix sums
         to zero);
      2. a variance-attribution fit min(r², clip_s²) − 1 ≈ (u[a] + u[b]) / 2 (u = a lab's excess
         variance, ridge 1 towards 0), giving var_row = max(1, 1 + (u[a] + u[b]) / 2): a noisy
         lab's comparisons get less weight.
    Then each component is re-anchored on the median bias of its labs.
    Standard errors: σ² diag(M⁺), M = XᵀWX, M⁺ = (M + P)⁻¹ − P with P the per-component
    averaging projector, σ² = max(1, Σ w r² / (rows − rank)); above ``dense_limit`` labs the
    diagonal approximation σ² / diag(M) is used (it ignores the partners' uncertainty). The
    errors are those of the sum-to-zero anchor; the median anchor moves every lab of a component
    by the same constant, which for components of more than a few labs changes them little.
    Labs with no comparison get b = 0, se = NaN, u = 0.

    Every sum over comparisons is a sum per edge of the lab graph (a distinct pair of labs), so
    the linear algebra is on the labs and the per-comparison work is a few vector passes.
    """
    # Lab indices in their own integer type (int32 from the evidence): the edge keys are
    # computed in int64 without a 64-bit copy of both columns.
    lab_a = np.asarray(lab_a)
    lab_b = np.asarray(lab_b)
    y = np.clip(np.asarray(s, dtype=float), -ep.clip_s, ep.clip_s)
    m = len(y)
    # The comparisons grouped by edge, in their given order within an edge: every per-edge sum
    # and gather below then runs through memory in sequence (3-5x faster at millions of
    # comparisons than scattering into a table of a million edges) and adds the same terms in
    # the same order as in the given order, so the fit is the same to the last bit.
    by_sort = _edges_by_sort(lab_a, lab_b, n_labs)
    if by_sort is None:
        edges, order = _edges(lab_a, lab_b, n_labs), None
    else:
        edges, order = by_sort
        y = y[order]
    del order
    graph = _graph(edges, n_labs)
    if m == 0 or n_labs == 0:
        return BiasFit(
            b=np.zeros(n_labs), se=np.full(n_labs, np.nan), excess_variance=np.zeros(n_labs),
            graph=graph,
        )
    del lab_a, lab_b
    inv, ea, eb = edges.inv, edges.a, edges.b
    n_e = len(ea)
    comp, involved = graph.component, graph.involved
    system = _LabSystem(edges, n_labs)
    # The variance fit's matrix does not depend on the weights: Z'Z + I with Z rows (e_a + e_b)/2.
    count_e = np.bincount(inv, minlength=n_e).astype(float)
    u_mat = system.matrix(0.25 * count_e, 1.0, _VARIANCE_RIDGE, involved)

    # Three comparison-sized buffers serve every step: a fresh array of millions of doubles per
    # operation costs as much in page faults as the arithmetic does. Every value is computed by
    # the same operations in the same order as with temporaries.
    work = np.empty(m)
    spare = np.empty(m)

    def solve_b(huber: np.ndarray, var_e: np.ndarray, b0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # weights huber / var_row, with var_row a function of the edge: summed per edge first
        w_e = np.bincount(inv, weights=huber, minlength=n_e) / var_e
        wy_e = np.bincount(inv, weights=np.multiply(huber, y, out=spare), minlength=n_e) / var_e
        rhs = np.bincount(ea, weights=wy_e, minlength=n_labs) - np.bincount(eb, weights=wy_e, minlength=n_labs)
        mat = system.matrix(w_e, -1.0, ep.ridge, involved)
        return _center(_pcg(mat, rhs, b0), comp, involved), w_e

    def residual(b: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.take(b[ea] - b[eb], inv, out=out)
        return np.subtract(y, out, out=out)

    var_e = np.ones(n_e)  # var_row is a function of the edge
    huber = np.ones(m)
    down = np.zeros(0, dtype=np.intp)  # where huber < 1
    b = np.zeros(n_labs)
    u = np.zeros(n_labs)
    for outer in range(2):
        # the first pass has var_row = 1 everywhere: dividing by it changes nothing
        sd_row = np.sqrt(var_e)[inv] if outer else None
        for _ in range(ep.irls_iterations):
            b, _w_e = solve_b(huber, var_e, b)
            zr = np.abs(residual(b, work), out=work)
            if sd_row is not None:
                zr /= sd_row
            change, down = _huber_update(zr, huber, down, ep.huber_k)
            if change < 1e-6:
                break
        del sd_row
        r = residual(b, work)
        target = np.multiply(r, r, out=r)
        np.minimum(target, ep.clip_s**2, out=target)
        target -= 1.0
        t_e = np.bincount(inv, weights=target, minlength=n_e)
        u_rhs = 0.5 * (np.bincount(ea, weights=t_e, minlength=n_labs) + np.bincount(eb, weights=t_e, minlength=n_labs))
        u = _pcg(u_mat, u_rhs, u)
        var_e = np.maximum(1.0, 1.0 + 0.5 * (u[ea] + u[eb]))
    b, w_e = solve_b(huber, var_e, b)
    r = residual(b, work)
    b = b - _component_medians(b, comp, involved)
    # Σ w r² with w = huber / var_row, summed per edge
    hr2 = np.multiply(huber, r, out=spare)
    hr2 *= r
    wr2 = float(np.sum(np.bincount(inv, weights=hr2, minlength=n_e) / var_e))
    del hr2, r

    sizes = np.bincount(comp)
    rank = int(involved.sum()) - len(np.unique(comp[involved]))
    dof = m - rank
    sigma2 = max(1.0, wr2 / dof) if dof > 0 else 1.0
    mat = system.matrix(w_e, -1.0, 0.0, np.ones(n_labs, dtype=bool))
    if n_labs <= ep.dense_limit:
        diag = _pinv_diagonal(mat, comp, sizes)
    else:
        d = mat.diagonal()
        diag = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), np.nan)
    se = np.where(involved, np.sqrt(np.maximum(sigma2 * diag, 0.0)), np.nan)
    return BiasFit(
        b=np.where(involved, b, 0.0) * SQRT2,
        se=se * SQRT2,
        excess_variance=np.where(involved, u, 0.0),
        graph=graph,
    )


@dataclass(frozen=True, slots=True)
class PeerSpread:
    """The spread of biases among normal labs: τ (σR units) and each lab's standing against it."""

    tau: float
    labs_used: int
    # z against the peers: b / sqrt(τ² + se²) (NaN where b is not identifiable)
    z: np.ndarray
    # half-width of the peers' band at the policy's z: peer_z · sqrt(τ² + se²)
    limit: np.ndarray


def peer_spread(
    b: np.ndarray, se: np.ndarray, use: np.ndarray, *, peer_z: float, tau_floor: float
) -> PeerSpread:
    """Random-effects view of lab biases: τ² = max(τ_floor², MADe(b)² − median(se²)).

    Estimated from the labs in ``use`` (identifiable, with enough quantitative pairs). MADe
    (1.4826 × median absolute deviation from the median) ignores the few biased labs that the
    estimate must not absorb; subtracting the typical se² leaves the spread of true biases.
    ``tau_floor`` keeps a handful of labs from claiming that normal labs do not differ. With
    fewer than 5 labs to use, τ = tau_floor.
    """
    b = np.asarray(b, dtype=float)
    se = np.asarray(se, dtype=float)
    use = np.asarray(use, dtype=bool) & np.isfinite(b) & np.isfinite(se)
    tau2 = tau_floor**2
    if use.sum() >= 5:
        bu = b[use]
        made = 1.4826 * float(np.median(np.abs(bu - np.median(bu))))
        tau2 = max(tau2, made**2 - float(np.median(se[use] ** 2)))
    sd = np.sqrt(tau2 + np.where(np.isfinite(se), se, np.nan) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = b / sd
    return PeerSpread(tau=math.sqrt(tau2), labs_used=int(use.sum()), z=z, limit=peer_z * sd)


@dataclass(frozen=True, slots=True)
class PrecisionEvidence:
    """A lab's excess variance judged against its peers' (units of σR² in the s scale)."""

    se: np.ndarray
    centre: float  # median excess variance of the judged labs
    tau: float  # the peers' spread of excess variance beyond sampling noise
    p: np.ndarray  # one-sided: more variable than the median lab
    beyond: np.ndarray  # max(0, u − centre − 2 se − peer_z τ)


def precision_against_peers(
    u: np.ndarray, n: np.ndarray, partners: np.ndarray, use: np.ndarray, *, peer_z: float,
    floor: float,
) -> PrecisionEvidence:
    """Is a lab noisier than normal labs are? A random-effects view of the excess variance u.

    The fit estimates u from the lab's squared residuals, r² − 1 ≈ (u_lab + u_partner) / 2, so
    over n comparisons the sampling error is about √(8/n) (1 + max(u, 0)/2) (the variance of a
    squared normal residual is twice its square). Normal labs differ in precision too (their item
    biases vary around their overall bias, which the fit sees as variance): the peers' centre is
    the median u and their spread τ² = max(floor², MADe(u)² − median(sampling error²)) over the
    labs in ``use``. With few distinct partners the split of each comparison's variance between
    the lab and its partners is itself uncertain by about τ² / partners, which is added to the
    sampling error (``se``). The significance test is one-sided against the centre; the relevance
    bound is conservative, as for bias. With fewer than 5 labs to use: centre 0, τ = floor.
    """
    u = np.asarray(u, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        sampling = np.where(n > 0, np.sqrt(8.0 / n) * (1.0 + np.maximum(u, 0.0) / 2.0), np.nan)
    use = np.asarray(use, dtype=bool) & np.isfinite(u) & np.isfinite(sampling)
    centre, tau2 = 0.0, floor**2
    if use.sum() >= 5:
        uu = u[use]
        centre = float(np.median(uu))
        made = 1.4826 * float(np.median(np.abs(uu - centre)))
        tau2 = max(tau2, made**2 - float(np.median(sampling[use] ** 2)))
    tau = math.sqrt(tau2)
    se = np.sqrt(sampling**2 + tau2 / np.maximum(np.asarray(partners, dtype=float), 1.0))
    with np.errstate(invalid="ignore"):
        z = (u - centre) / se
        p = np.where(np.isfinite(z), stats.norm.sf(z), np.nan)
        beyond = np.maximum(0.0, u - centre - 2.0 * se - peer_z * tau)
    return PrecisionEvidence(se=se, centre=centre, tau=tau, p=p, beyond=beyond)


def blame_shares(
    i1: np.ndarray, i2: np.ndarray, fit: BiasFit, blame_floor: float
) -> np.ndarray:
    """Share of each pair's discrepancy that falls on side 1 (the other side takes the rest).

    A lab's part of a pair's excess mean square is m = max(b² − se², 0) + max(u, 0)/2 + floor
    (b, se in s units); the share is m₁ / (m₁ + m₂). Two labs with no estimated excess share
    equally.
    """
    b = fit.b / SQRT2
    se = np.nan_to_num(fit.se / SQRT2, nan=0.0)
    m = np.maximum(b**2 - se**2, 0.0) + np.maximum(fit.excess_variance, 0.0) / 2 + blame_floor
    return m[i1] / (m[i1] + m[i2])


def qualitative_shares(
    i1: np.ndarray,
    i2: np.ndarray,
    discrepant: np.ndarray,
    qualitative: np.ndarray,
    sides: np.ndarray | None,
    n_labs: int,
    *,
    prior_pairs: float = 20.0,
    iterations: int = 50,
) -> np.ndarray:
    """Share of each qualitative pair's disagreement that falls on the original lab (side 1).

    A qualitative item has no standardised difference to fit a bias from. Model: lab i gives a
    wrong verdict with probability q_i, independently; two labs disagree when exactly one errs,
    and the original erred with probability q1(1 − q2) / (q1(1 − q2) + q2(1 − q1)). The q_i are
    estimated by EM from all qualitative pairs, shrunk towards the pooled rate with
    ``prior_pairs`` pseudo-pairs; pairs settled by arbitration enter with their known blame.
    Returns an array over all rows (0.5 where not qualitative or not discrepant).
    """
    rows = np.asarray(qualitative, dtype=bool)
    rev = np.asarray(discrepant, dtype=bool) & rows
    share = np.full(len(i1), 0.5)
    if not rev.any():
        return share
    i1 = np.asarray(i1, dtype=np.int64)
    i2 = np.asarray(i2, dtype=np.int64)
    r_rows = np.flatnonzero(rev)
    known = np.full(r_rows.size, np.nan)
    if sides is not None:
        sr = np.asarray(sides, dtype=object)[r_rows]
        known = np.where(sr == "original", 0.0, np.where(sr == "retest", 1.0, known))
        known = np.where(sr == "neither", 0.5, known)  # both wrong: one error each, halved
    n = np.bincount(i1[rows], minlength=n_labs) + np.bincount(i2[rows], minlength=n_labs)
    # Each disagreement is one error among two verdicts.
    pooled = r_rows.size / max(2.0 * rows.sum(), 1.0)
    pooled = min(max(pooled, 1e-4), 0.5)
    # Only the disagreements carry errors, and an unsettled one's share depends only on its two
    # labs: the EM runs on the distinct (original, retest) lab pairs, each with its count.
    settled = np.isfinite(known)
    a1, a2 = i1[r_rows], i2[r_rows]
    fixed = np.bincount(a1[settled], weights=known[settled], minlength=n_labs) + np.bincount(
        a2[settled], weights=1.0 - known[settled], minlength=n_labs
    )
    key = a1[~settled] * max(n_labs, 1) + a2[~settled]
    uniq, inv, count = np.unique(key, return_inverse=True, return_counts=True)
    e1, e2 = uniq // max(n_labs, 1), uniq % max(n_labs, 1)
    count = count.astype(float)
    share_e = np.full(uniq.size, 0.5)
    q = np.full(n_labs, pooled)
    for _ in range(iterations):
        a = q[e1] * (1.0 - q[e2])
        b = q[e2] * (1.0 - q[e1])
        share_e = a / np.maximum(a + b, 1e-300)
        errors = fixed + np.bincount(e1, weights=count * share_e, minlength=n_labs) + np.bincount(
            e2, weights=count * (1.0 - share_e), minlength=n_labs
        )
        new_q = np.clip((errors + prior_pairs * pooled) / (n + prior_pairs), 1e-6, 0.5)
        converged = np.max(np.abs(new_q - q)) < 1e-9
        q = new_q
        if converged:
            break
    row_share = known.copy()
    row_share[~settled] = share_e[inv.reshape(-1)]
    share[r_rows] = row_share
    return share
