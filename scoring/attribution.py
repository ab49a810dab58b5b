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
from scipy import sparse, stats
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
    ones = np.ones(len(lab_a))
    adj = sparse.csr_matrix((ones, (lab_a, lab_b)), shape=(n_labs, n_labs))
    adj = ((adj + adj.T) > 0).astype(np.int8).tocsr()
    adj.setdiag(0)
    adj.eliminate_zeros()
    _, comp = csgraph.connected_components(adj, directed=False)
    sizes = np.bincount(comp)
    partners = np.diff(adj.indptr).astype(np.int64)
    involved = np.bincount(np.r_[lab_a, lab_b], minlength=n_labs) > 0
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


def _solve_weighted(x: sparse.csr_matrix, y: np.ndarray, w: np.ndarray, ridge: float) -> np.ndarray:
    xtw = x.T.multiply(w).tocsr()
    m = (xtw @ x + ridge * sparse.identity(x.shape[1], format="csr")).tocsc()
    return np.asarray(splinalg.spsolve(m, xtw @ y)).reshape(-1)


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


def fit_lab_bias(
    lab_a: np.ndarray, lab_b: np.ndarray, s: np.ndarray, n_labs: int, ep: EvidencePolicy
) -> BiasFit:
    """Robust weighted least squares of s ≈ b[lab_a] − b[lab_b] over the comparison graph.

    Rows are comparisons (original vs retest, and each side vs the arbitration lab); s is
    clipped at ±clip_s. Alternates (twice) between
      1. Huber IRLS (k = huber_k on residual / row sd) for b with weights huber / var_row and a
         tiny ridge on b, which makes the solution sum to zero within each component (every row
         of the incidence matrix sums to zero);
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
    """
    lab_a = np.asarray(lab_a, dtype=np.int64)
    lab_b = np.asarray(lab_b, dtype=np.int64)
    y = np.clip(np.asarray(s, dtype=float), -ep.clip_s, ep.clip_s)
    m = len(y)
    graph = comparison_graph(lab_a, lab_b, n_labs)
    if m == 0 or n_labs == 0:
        return BiasFit(
            b=np.zeros(n_labs), se=np.full(n_labs, np.nan), excess_variance=np.zeros(n_labs),
            graph=graph,
        )
    rows = np.arange(m)
    x = sparse.csr_matrix(
        (np.r_[np.ones(m), -np.ones(m)], (np.r_[rows, rows], np.r_[lab_a, lab_b])),
        shape=(m, n_labs),
    )
    z = sparse.csr_matrix(
        (np.full(2 * m, 0.5), (np.r_[rows, rows], np.r_[lab_a, lab_b])), shape=(m, n_labs)
    )
    var_row = np.ones(m)
    huber = np.ones(m)
    b = np.zeros(n_labs)
    u = np.zeros(n_labs)
    for _outer in range(2):
        for _ in range(ep.irls_iterations):
            b = _solve_weighted(x, y, huber / var_row, ep.ridge)
            r = y - x @ b
            zr = np.abs(r) / np.sqrt(var_row)
            new = np.minimum(1.0, ep.huber_k / np.maximum(zr, 1e-12))
            converged = np.max(np.abs(new - huber)) < 1e-6
            huber = new
            if converged:
                break
        r = y - x @ b
        target = np.minimum(r**2, ep.clip_s**2) - 1.0
        u = _solve_weighted(z, target, np.ones(m), _VARIANCE_RIDGE)
        var_row = np.maximum(1.0, 1.0 + z @ u)
    w = huber / var_row
    b = _solve_weighted(x, y, w, ep.ridge)
    r = y - x @ b
    b = b - _component_medians(b, graph.component, graph.involved)

    comp = graph.component
    sizes = np.bincount(comp)
    involved = graph.involved
    rank = int(involved.sum()) - len(np.unique(comp[involved]))
    dof = m - rank
    sigma2 = max(1.0, float(np.sum(w * r**2) / dof)) if dof > 0 else 1.0
    mat = (x.T.multiply(w).tocsr() @ x).tocsr()
    if n_labs <= ep.dense_limit:
        proj = (comp[:, None] == comp[None, :]) / sizes[comp][:, None]
        diag = np.diag(np.linalg.inv(mat.toarray() + proj) - proj)
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
    rows = qualitative
    rev = discrepant & rows
    share = np.full(len(i1), 0.5)
    if not rev.any():
        return share
    known = np.full(len(i1), np.nan)
    if sides is not None:
        sides = np.asarray(sides, dtype=object)
        known = np.where(sides == "original", 0.0, np.where(sides == "retest", 1.0, known))
        known = np.where(sides == "neither", 0.5, known)  # both wrong: one error each, halved
    n = np.bincount(i1[rows], minlength=n_labs) + np.bincount(i2[rows], minlength=n_labs)
    # Each disagreement is one error among two verdicts.
    pooled = rev.sum() / max(2.0 * rows.sum(), 1.0)
    pooled = min(max(pooled, 1e-4), 0.5)
    q = np.full(n_labs, pooled)
    for _ in range(iterations):
        a = q[i1] * (1.0 - q[i2])
        b = q[i2] * (1.0 - q[i1])
        share = np.where(np.isfinite(known), known, a / np.maximum(a + b, 1e-300))
        w1 = np.where(rev, share, 0.0)
        w2 = np.where(rev, 1.0 - share, 0.0)
        errors = np.bincount(i1[rows], weights=w1[rows], minlength=n_labs) + np.bincount(
            i2[rows], weights=w2[rows], minlength=n_labs
        )
        new_q = np.clip((errors + prior_pairs * pooled) / (n + prior_pairs), 1e-6, 0.5)
        converged = np.max(np.abs(new_q - q)) < 1e-9
        q = new_q
        if converged:
            break
    return np.where(rev, share, 0.5)
