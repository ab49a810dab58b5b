"""Fair lab-level evidence from scored retest pairs.

The retest lab is not the truth. Evidence against a lab comes from a pattern over many pairs with
different partners (a sparse least-squares fit of every lab's bias on the comparison graph) or
from arbitration. Discrepancies are shared out between the two labs of a pair in proportion to
each lab's estimated contribution to the pair's excess mean square, so an innocent partner of a
bad lab carries little of the blame; counts, rates, tests and the CUSUM all use these attributed
counts against a baseline expectation of half a typical pair's discrepancy probability.

Entry point: :func:`lab_evidence`. Everything here is pure (no I/O); the in-control CUSUM limit is
simulated from a seeded generator and cached, so a run is reproducible.
"""

from __future__ import annotations

import datetime as dt
import functools

import numpy as np
import polars as pl
from scipy import sparse, special, stats
from scipy.sparse import csgraph
from scipy.sparse import linalg as splinalg

from scoring.policy import CusumPolicy, EvidencePolicy, Policy

__all__ = [
    "EVIDENCE_SCHEMA",
    "benjamini_hochberg",
    "beta_binomial_moments",
    "cusum_limit",
    "fit_lab_bias",
    "funnel_limits",
    "garwood_interval",
    "lab_evidence",
    "poisson_excess_p",
    "risk_adjusted_cusum",
]

# Ridge (in pseudo-pairs' worth of information) pulling each lab's excess variance towards 0 in
# the variance-attribution fit: an algorithmic regulariser, not a grading threshold.
_VARIANCE_RIDGE = 1.0
_Z95 = float(stats.norm.ppf(0.975))
_Z998 = float(stats.norm.ppf(0.999))

EVIDENCE_SCHEMA: dict[str, pl.DataType] = {
    "lab_code": pl.String(),
    "as_of": pl.Date(),
    "window_start": pl.Date(),
    "pairs": pl.Int64(),
    "pairs_original": pl.Int64(),
    "pairs_retest": pl.Int64(),
    "pairs_arbitration": pl.Int64(),
    "pairs_compared": pl.Int64(),
    "pairs_quantitative": pl.Int64(),
    "discrepancies": pl.Int64(),
    "reversals": pl.Int64(),
    "reversals_within_uncertainty": pl.Int64(),
    "censored_disagreements": pl.Int64(),
    "arbitrations_lost": pl.Int64(),
    "bias": pl.Float64(),
    "bias_se": pl.Float64(),
    "bias_z": pl.Float64(),
    "bias_p": pl.Float64(),
    "bias_q": pl.Float64(),
    "excess_variance": pl.Float64(),
    "component_size": pl.Int64(),
    "attributed_discrepancies": pl.Float64(),
    "expected_discrepancies": pl.Float64(),
    "oe_ratio": pl.Float64(),
    "oe_lower": pl.Float64(),
    "oe_upper": pl.Float64(),
    "excess_p": pl.Float64(),
    "excess_q": pl.Float64(),
    "eb_rate": pl.Float64(),
    "pairs_qualitative": pl.Int64(),
    "qualitative_errors": pl.Float64(),
    "qualitative_rate": pl.Float64(),
    "eb_lower": pl.Float64(),
    "eb_upper": pl.Float64(),
    "eb_p_above_target": pl.Float64(),
    "eb_alpha": pl.Float64(),
    "eb_beta": pl.Float64(),
    "sign_n": pl.Int64(),
    "sign_positive": pl.Int64(),
    "sign_p": pl.Float64(),
    "sign_q": pl.Float64(),
    "wilcoxon_n": pl.Int64(),
    "wilcoxon_statistic": pl.Float64(),
    "wilcoxon_z": pl.Float64(),
    "wilcoxon_p": pl.Float64(),
    "wilcoxon_q": pl.Float64(),
    "median_s": pl.Float64(),
    "cusum_current": pl.Float64(),
    "cusum_max": pl.Float64(),
    "cusum_limit": pl.Float64(),
    "cusum_signal": pl.Boolean(),
    "cusum_signal_on": pl.Date(),
    "funnel_n": pl.Int64(),
    "funnel_rate": pl.Float64(),
    "funnel_target": pl.Float64(),
    "funnel_lower_95": pl.Float64(),
    "funnel_upper_95": pl.Float64(),
    "funnel_lower_998": pl.Float64(),
    "funnel_upper_998": pl.Float64(),
    "funnel_z": pl.Float64(),
    "funnel_phi": pl.Float64(),
    "funnel_tau2": pl.Float64(),
}


# ---------------------------------------------------------------------------------------------
# Small pure building blocks (array in, array out)
# ---------------------------------------------------------------------------------------------


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg (1995) adjusted p-values (q-values); NaN in, NaN out.

    The family is the non-NaN entries. q_(i) = min_{j >= i} m p_(j) / j, capped at 1.
    """
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def garwood_interval(observed: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Garwood 1936) interval for a Poisson mean given observed count(s).

    lower = chi2(a/2; 2 O)/2 (0 when O = 0), upper = chi2(1 - a/2; 2 O + 2)/2. Non-integer O
    (attributed counts) use the same gamma-quantile formula, its continuous extension.
    """
    o = np.asarray(observed, dtype=float)
    a = 1.0 - level
    with np.errstate(invalid="ignore"):
        lower = np.where(o > 0, stats.chi2.ppf(a / 2, 2 * np.maximum(o, 1e-300)) / 2, 0.0)
    upper = stats.chi2.ppf(1 - a / 2, 2 * o + 2) / 2
    return lower, upper


def poisson_excess_p(observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """One-sided P(X >= O) for X ~ Poisson(E): the regularised lower incomplete gamma P(O, E).

    Exact for integer O; its continuous extension for attributed (fractional) O. O = 0 gives 1;
    E = 0 gives NaN (no expectation, no test).
    """
    o = np.asarray(observed, dtype=float)
    e = np.asarray(expected, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(o > 0, special.gammainc(np.maximum(o, 1e-300), e), 1.0)
    return np.where(e > 0, p, np.nan)


def beta_binomial_moments(
    x: np.ndarray, n: np.ndarray, max_prior: float = 1000.0
) -> tuple[float, float]:
    """Method-of-moments beta-binomial prior (alpha, beta) from counts x out of n per lab.

    With mu = sum x / sum n and S = sum n_i (x_i/n_i - mu)^2, the beta-binomial gives
    E[S] = mu (1 - mu) [(N - 1) + rho (sum(n_i - 1) - sum n_i (n_i - 1) / sum n)], with
    intra-lab correlation rho = 1 / (alpha + beta + 1); solve for rho, then alpha + beta =
    1/rho - 1, capped at max_prior (no overdispersion -> nearly complete pooling). Labs with
    n = 0 are ignored. Degenerate: fewer than two labs, or mu in {0, 1}, gives a prior with
    mean mu (clamped to [1e-6, 1 - 1e-6]) and strength max_prior.
    """
    x = np.asarray(x, dtype=float)
    n = np.asarray(n, dtype=float)
    keep = n > 0
    x, n = x[keep], n[keep]
    total = n.sum()
    mu = float(x.sum() / total) if total > 0 else 0.0
    mu_c = min(max(mu, 1e-6), 1 - 1e-6)
    strength = max_prior
    if len(n) >= 2 and 0.0 < mu < 1.0:
        s = float(np.sum(n * (x / n - mu) ** 2))
        denom = float(np.sum(n - 1) - np.sum(n * (n - 1)) / total)
        if denom > 0:
            rho = (s / (mu * (1 - mu)) - (len(n) - 1)) / denom
            if rho > 0:
                strength = min(max_prior, max(1.0 / rho - 1.0, 1e-6))
    return mu_c * strength, (1 - mu_c) * strength


def funnel_limits(
    observed: np.ndarray, n: np.ndarray, winsor: float = 0.1
) -> dict[str, np.ndarray | float]:
    """Spiegelhalter (2005) funnel for proportions with additive overdispersion.

    target p0 = sum O / sum n; s_i^2 = p0 (1 - p0) / n_i; z_i = (y_i - p0)/s_i; phi = mean of the
    squared z winsorised at (winsor, 1 - winsor); tau^2 = max(0, (N phi - (N - 1)) /
    (sum w - sum w^2 / sum w)), w = 1/s^2. Limits p0 +- z_c sqrt(s^2 + tau^2), z_c = 1.96 and 3.09,
    clipped to [0, 1]. Entries with n = 0 get NaN. Degenerate p0 in {0, 1}: limits collapse to
    p0 and z = 0.
    """
    o = np.asarray(observed, dtype=float)
    n = np.asarray(n, dtype=float)
    ok = n > 0
    nan = np.full(o.shape, np.nan)
    out: dict[str, np.ndarray | float] = {
        "rate": nan.copy(), "target": float("nan"), "lower_95": nan.copy(),
        "upper_95": nan.copy(), "lower_998": nan.copy(), "upper_998": nan.copy(),
        "z": nan.copy(), "phi": float("nan"), "tau2": float("nan"),
    }
    if not ok.any():
        return out
    y = o[ok] / n[ok]
    p0 = float(o[ok].sum() / n[ok].sum())
    out["target"] = p0
    rate = nan.copy()
    rate[ok] = y
    out["rate"] = rate
    if p0 <= 0.0 or p0 >= 1.0:
        for key in ("lower_95", "upper_95", "lower_998", "upper_998"):
            arr = nan.copy()
            arr[ok] = p0
            out[key] = arr
        z = nan.copy()
        z[ok] = 0.0
        out["z"], out["phi"], out["tau2"] = z, 1.0, 0.0
        return out
    s2 = p0 * (1 - p0) / n[ok]
    z0 = (y - p0) / np.sqrt(s2)
    if winsor > 0 and len(z0) > 2:
        lo, hi = np.quantile(z0, [winsor, 1 - winsor])
        zw = np.clip(z0, lo, hi)
    else:
        zw = z0
    big_n = len(z0)
    phi = float(np.mean(zw**2))
    w = 1.0 / s2
    denom = float(w.sum() - (w**2).sum() / w.sum())
    tau2 = max(0.0, (big_n * phi - (big_n - 1)) / denom) if denom > 0 else 0.0
    sd = np.sqrt(s2 + tau2)
    for key, zc, sign in (
        ("lower_95", _Z95, -1), ("upper_95", _Z95, 1),
        ("lower_998", _Z998, -1), ("upper_998", _Z998, 1),
    ):
        arr = nan.copy()
        arr[ok] = np.clip(p0 + sign * zc * sd, 0.0, 1.0)
        out[key] = arr
    z = nan.copy()
    z[ok] = (y - p0) / sd
    out["z"], out["phi"], out["tau2"] = z, phi, tau2
    return out


def _solve_weighted(x: sparse.csr_matrix, y: np.ndarray, w: np.ndarray, ridge: float) -> np.ndarray:
    xtw = x.T.multiply(w).tocsr()
    m = (xtw @ x + ridge * sparse.identity(x.shape[1], format="csr")).tocsc()
    return np.asarray(splinalg.spsolve(m, xtw @ y)).reshape(-1)


def fit_lab_bias(
    lab_a: np.ndarray, lab_b: np.ndarray, s: np.ndarray, n_labs: int, ep: EvidencePolicy
) -> dict[str, np.ndarray]:
    """Robust weighted least squares of s ≈ b[lab_a] - b[lab_b] over the comparison graph.

    Rows are comparisons (original vs retest, and each side vs the arbitration lab); s is
    clipped at +-clip_s. Alternates (twice) between
      1. Huber IRLS (k = huber_k on residual / row sd) for b with weights huber / var_row,
         ridge `ridge` on b, which makes sum(b) = 0 within each connected component exactly
         (every row of the incidence matrix sums to zero);
      2. a variance-attribution fit min(r^2, clip_s^2) - 1 ≈ (u[a] + u[b]) / 2 (u = a lab's
         excess variance over sigma_R^2, ridge 1 towards 0), giving var_row = max(1,
         1 + (u[a] + u[b]) / 2): a noisy lab's comparisons get less weight.
    Standard errors: sigma^2 diag(M^+), M = X'WX, M^+ = (M + P)^-1 - P with P the
    per-component averaging projector, sigma^2 = max(1, sum w r^2 / (rows - rank)); above
    `dense_limit` labs the diagonal approximation sigma^2 / diag(M) is used (it ignores the
    partners' uncertainty). Labs with no comparison get b = 0, se = NaN, u = 0.

    Returns b, se, u, component_size (labs in the lab's connected component).
    """
    lab_a = np.asarray(lab_a, dtype=np.int64)
    lab_b = np.asarray(lab_b, dtype=np.int64)
    y = np.clip(np.asarray(s, dtype=float), -ep.clip_s, ep.clip_s)
    m = len(y)
    b = np.zeros(n_labs)
    u = np.zeros(n_labs)
    se = np.full(n_labs, np.nan)
    comp_size = np.ones(n_labs, dtype=np.int64)
    if m == 0 or n_labs == 0:
        return {"b": b, "se": se, "u": u, "component_size": comp_size}
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
    for _outer in range(2):
        for _ in range(ep.irls_iterations):
            b = _solve_weighted(x, y, huber / var_row, ep.ridge)
            r = y - x @ b
            zr = np.abs(r) / np.sqrt(var_row)
            new = np.minimum(1.0, ep.huber_k / np.maximum(zr, 1e-12))
            if np.max(np.abs(new - huber)) < 1e-6:
                huber = new
                break
            huber = new
        r = y - x @ b
        target = np.minimum(r**2, ep.clip_s**2) - 1.0
        u = _solve_weighted(z, target, np.ones(m), _VARIANCE_RIDGE)
        var_row = np.maximum(1.0, 1.0 + z @ u)
    w = huber / var_row
    b = _solve_weighted(x, y, w, ep.ridge)
    r = y - x @ b

    adj = sparse.csr_matrix((np.ones(m), (lab_a, lab_b)), shape=(n_labs, n_labs))
    n_comp, comp = csgraph.connected_components(adj, directed=False)
    sizes = np.bincount(comp, minlength=n_comp)
    comp_size = sizes[comp].astype(np.int64)
    involved = np.bincount(np.r_[lab_a, lab_b], minlength=n_labs) > 0
    rank = int(involved.sum()) - int(len(np.unique(comp[involved])))
    dof = m - rank
    sigma2 = max(1.0, float(np.sum(w * r**2) / dof)) if dof > 0 else 1.0
    mat = (x.T.multiply(w).tocsr() @ x).tocsr()
    if n_labs <= ep.dense_limit:
        dense = mat.toarray()
        proj = (comp[:, None] == comp[None, :]) / sizes[comp][:, None]
        diag = np.diag(np.linalg.inv(dense + proj) - proj)
    else:
        d = mat.diagonal()
        diag = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), np.nan)
    se = np.where(involved, np.sqrt(np.maximum(sigma2 * diag, 0.0)), np.nan)
    u = np.where(involved, u, 0.0)
    return {"b": b, "se": se, "u": u, "component_size": comp_size}


def risk_adjusted_cusum(y: np.ndarray, p: np.ndarray, odds_ratio: float) -> np.ndarray:
    """Risk-adjusted Bernoulli CUSUM path (Steiner et al. 2000), starting from 0.

    W_t = y_t ln R - ln(1 - p_t + R p_t); C_t = max(0, C_{t-1} + W_t), computed without a loop as
    C_t = S_t - min(0, min_{j<=t} S_j) with S the cumulative sum of W (the floor at 0 is a
    reflection at the running minimum). y may be a fraction in [0, 1] (an attributed share).
    Empty input gives an empty path.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    w = y * np.log(odds_ratio) - np.log1p((odds_ratio - 1.0) * p)
    cs = np.cumsum(w)
    if len(cs) == 0:
        return cs
    return cs - np.minimum(np.minimum.accumulate(cs), 0.0)


def _simulate_max_paths(
    p_grid: tuple[float, ...], odds_ratio: float, n_sim: int, steps: int, seed: int
) -> np.ndarray:
    """Running maximum (n_sim x steps, float32) of in-control CUSUM paths, via the closed form.

    Simulated in blocks of paths so that memory stays near n_sim x steps x 4 bytes however long
    the runs are (arl0 of several thousand pairs is realistic for busy labs).
    """
    rng = np.random.default_rng(seed)
    grid = np.asarray(p_grid)
    grid32 = grid.astype(np.float32)
    w_fail = -np.log1p((odds_ratio - 1.0) * grid)
    w_disc = np.log(odds_ratio) + w_fail
    out = np.empty((n_sim, steps), dtype=np.float32)
    block = max(1, min(n_sim, 4_000_000 // max(steps, 1)))
    for start in range(0, n_sim, block):
        m = min(block, n_sim - start)
        k = rng.integers(0, len(grid), (m, steps), dtype=np.int32)
        y = rng.random((m, steps), dtype=np.float32) < grid32[k]
        cs = np.cumsum(np.where(y, w_disc[k], w_fail[k]), axis=1)
        c = cs - np.minimum(np.minimum.accumulate(cs, axis=1), 0.0)
        out[start : start + m] = np.maximum.accumulate(c, axis=1)
    return out


@functools.lru_cache(maxsize=32)
def _cusum_limit_cached(
    p_grid: tuple[float, ...], odds_ratio: float, arl0: int, n_sim: int, seed: int, factor: int
) -> float:
    steps = arl0 * factor
    paths = _simulate_max_paths(p_grid, odds_ratio, n_sim, steps, seed)

    def arl(h: float) -> float:
        # run length = first t with max-so-far >= h (each row is non-decreasing, so a binary
        # search finds it); truncated runs count as `steps`.
        first = np.fromiter((np.searchsorted(row, h, side="left") for row in paths), dtype=np.int64,
                            count=len(paths))
        return float(np.mean(np.minimum(first + 1, steps)))

    lo, hi = 0.0, 1.0
    while arl(hi) < arl0 and hi < 1e3:
        hi *= 2.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if arl(mid) >= arl0:
            hi = mid
        else:
            lo = mid
    return round(hi, 6)


def cusum_limit(p: np.ndarray, cp: CusumPolicy) -> float:
    """Control limit h giving an in-control average run length of cp.arl0 pairs.

    In-control sequences draw each pair's probability from the 101 percentiles (rounded to 1e-4)
    of the run's own per-lab expected probabilities p, and y ~ Bernoulli(p); the chart is the
    risk-adjusted Bernoulli CUSUM C_t = max(0, C_{t-1} + y ln R - ln(1 - p + R p)). h is the
    smallest value (bisection, 1e-6) whose simulated ARL (runs truncated at
    max_steps_factor * arl0, which can only make h larger) reaches arl0. Attributed y are
    fractions in [0, 1] with the same mean but less variance than Bernoulli, so the true
    in-control ARL is at least arl0. Seeded and cached on its inputs: reproducible, computed
    once per distinct run. Empty p: NaN.
    """
    p = np.asarray(p, dtype=float)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return float("nan")
    quantiles = np.clip(np.percentile(p, np.arange(101)), 1e-4, 0.9999)
    grid = tuple(float(v) for v in np.round(quantiles, 4))
    return _cusum_limit_cached(
        grid,
        float(cp.odds_ratio),
        int(cp.arl0),
        int(cp.n_sim),
        int(cp.seed),
        int(cp.max_steps_factor),
    )


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

    A qualitative item has no standardised difference to fit a bias from, so the quantitative
    fit says nothing about who read a label or a flame test wrong. Model: lab i gives a wrong
    verdict with probability q_i, independently; two labs disagree when exactly one errs, and
    the original erred with probability q1(1 − q2) / (q1(1 − q2) + q2(1 − q1)). The q_i are
    estimated by EM from all qualitative pairs, shrunk towards the pooled rate with
    `prior_pairs` pseudo-pairs; pairs settled by arbitration enter with their known blame.
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
        if np.max(np.abs(new_q - q)) < 1e-9:
            q = new_q
            break
        q = new_q
    return np.where(rev, share, 0.5)


# ---------------------------------------------------------------------------------------------
# The lab evidence frame
# ---------------------------------------------------------------------------------------------


def _baseline(df: pl.DataFrame, ep: EvidencePolicy) -> pl.Expr:
    """Expression for each pair's baseline discrepancy probability (shrunk hierarchically)."""
    k = ep.baseline_prior_pairs
    y = pl.col("discrepant").cast(pl.Float64)
    overall = df.select(y.mean()).item()
    overall = 0.0 if overall is None else float(overall)
    cat = (y.sum().over("category_code") + k * overall) / (y.count().over("category_code") + k)
    cat = pl.when(y.count().over("category_code") + k > 0).then(cat).otherwise(overall)
    if ep.baseline == "overall":
        return pl.lit(overall)
    if ep.baseline == "category":
        return cat
    item_n = y.count().over(["category_code", "item_code"])
    item = (y.sum().over(["category_code", "item_code"]) + k * cat) / (item_n + k)
    return pl.when(item_n + k > 0).then(item).otherwise(cat)


def _empty_evidence() -> pl.DataFrame:
    return pl.DataFrame(schema=EVIDENCE_SCHEMA)


def lab_evidence(scored_pairs: pl.LazyFrame, policy: Policy, *, as_of: dt.date) -> pl.DataFrame:
    """Evidence per lab from scored pairs (output of scoring.pairs.score_pairs).

    Pairs count when completed (the later of reported_on_1/_2; pairs with neither date are kept)
    within policy.evidence.window_days before ``as_of`` (inclusive) and not after it. Pairs with a
    null `discrepant` count as not discrepant. One row per lab that took part in any such pair;
    sorted by lab_code. Units: s, bias and its se are in units of the standardised difference
    s = (x1 - x2)/(sqrt(2) sigma_R), so a lab shifted by delta sigma_R has bias delta/sqrt(2).

    Columns (EVIDENCE_SCHEMA):

    - lab_code; as_of; window_start (first date of the window).
    - pairs: distinct pairs the lab took part in as original, retest or arbitration lab;
      pairs_original, pairs_retest, pairs_arbitration: by role; pairs_compared: as original or
      retest (the denominator of every rate below); pairs_quantitative: of those, with an s.
    - discrepancies, reversals, reversals_within_uncertainty (reported, never penalised),
      censored_disagreements: pairs (as original or retest) with discrepant = true, reversal =
      true, outcome "reversal_within_uncertainty", outcome "censored_discrepant" — raw
      involvement, before attribution. arbitrations_lost: arbitrated pairs where the arbiter
      sided against this lab ("neither" counts against both).
    - bias, bias_se, bias_z = bias/bias_se, bias_p (two-sided normal), bias_q (BH over labs):
      robust WLS fit (see fit_lab_bias); bias is relative to the mean of the lab's connected
      component of the comparison graph (component_size labs). null without a quantitative
      comparison. excess_variance: the lab's estimated variance in excess of sigma_R^2 (units of
      sigma_R^2; 0 = as noisy as the method's reproducibility).
    - attributed_discrepancies (O): sum over the lab's discrepant pairs of its blame share.
      Share = m_lab / (m_lab + m_partner), m = max(bias^2 - se^2, 0) + max(excess_variance, 0)/2
      + blame_floor (the lab's part of the pair's excess mean square); for qualitative pairs, the
      EM error-rate model of qualitative_shares. An arbitration overrides
      the split: arbiter sides with original -> retest lab 1, original 0 (and vice versa);
      "neither" -> both 1; "both"/null -> fitted split.
    - expected_discrepancies (E): sum over the lab's pairs of p/2, p the pair's baseline
      discrepancy rate (policy.evidence.baseline: item rate shrunk to category rate shrunk to the
      overall rate with baseline_prior_pairs pseudo-pairs) — indirect standardisation.
      oe_ratio = O/E; oe_lower, oe_upper: Garwood interval of O divided by E at credible_level;
      excess_p = P(Poisson(E) >= O) (one-sided), excess_q: BH over labs.
    - pairs_qualitative, qualitative_errors, qualitative_rate: the lab's qualitative pairs (as
      original or retest), its attributed wrong verdicts among them, and (errors + k·pooled) /
      (pairs + k) with k = baseline_prior_pairs and pooled = all attributed errors / all
      qualitative pair-sides (null without qualitative pairs).
    - eb_rate = (O + alpha)/(n + alpha + beta), n = pairs_compared, with the beta-binomial prior
      fitted by moments over all labs (beta_binomial_moments; eb_alpha, eb_beta); eb_lower,
      eb_upper: equal-tailed credible interval of Beta(O + alpha, n - O + beta);
      eb_p_above_target: posterior P(rate > policy.evidence.target_rate).
    - sign_n, sign_positive, sign_p, sign_q: exact two-sided sign test on the lab's own
      oriented s values (positive = this lab higher than its partner; zeros dropped), including
      its comparisons with/as arbitration lab. wilcoxon_n, wilcoxon_statistic (W+ : sum of
      ranks of |s| of positive s), wilcoxon_z, wilcoxon_p (normal approximation with tie and
      continuity correction), wilcoxon_q. median_s: median oriented s.
    - cusum_current, cusum_max: risk-adjusted Bernoulli CUSUM over the lab's pairs (as
      original or retest) in completion-date order (undated first, then pair_id), with y = blame share and
      p = expected probability p/2, weight y ln R - ln(1 - p + R p); cusum_limit: h (see
      cusum_limit); cusum_signal: cusum_max > 0 and cusum_max >= h; cusum_signal_on: completion date of the pair
      at which it first crossed (null if never).
    - funnel_n (= pairs_compared), funnel_rate (= O/n), funnel_target (overall O/n),
      funnel_lower_95, funnel_upper_95, funnel_lower_998, funnel_upper_998 (limits with
      additive overdispersion), funnel_z (z with overdispersion), funnel_phi, funnel_tau2
      (run-level; see funnel_limits).

    Degenerate cases: no pairs in the window -> an empty frame with EVIDENCE_SCHEMA; a lab only
    ever arbitrating has pairs_compared = 0 and null rates/tests; E = 0 -> null O/E and
    excess_p.
    """
    ep = policy.evidence
    window_start = as_of - dt.timedelta(days=ep.window_days - 1)
    df = (
        scored_pairs.with_columns(
            completed_on=pl.max_horizontal("reported_on_1", "reported_on_2"),
            discrepant=pl.col("discrepant").fill_null(False),
            # score_pairs marks every verdict disagreement as a reversal; the evidence counts only
            # those outside measurement uncertainty (the others are reported separately).
            reversal=pl.col("outcome").is_in(["reversal", "qualitative_reversal"]).fill_null(False),
        )
        .filter(
            pl.col("completed_on").is_null()
            | ((pl.col("completed_on") <= as_of) & (pl.col("completed_on") >= window_start))
        )
        .collect()
    )
    if df.height == 0:
        return _empty_evidence()
    df = df.with_columns(p_expected=_baseline(df, ep))

    labs = (
        pl.concat(
            [df.select(pl.col(c).alias("lab_code")) for c in ("lab_1", "lab_2", "lab_3")]
        )
        .drop_nulls()
        .unique()
        .sort("lab_code")
        .get_column("lab_code")
    )
    n_labs = len(labs)
    lab_index = pl.DataFrame({"lab_code": labs, "idx": np.arange(n_labs, dtype=np.int64)})

    def idx(col: str) -> np.ndarray:
        return (
            df.select(pl.col(col).alias("lab_code"))
            .join(lab_index, on="lab_code", how="left", maintain_order="left")
            .get_column("idx")
            .fill_null(-1)
            .to_numpy()
        )

    i1, i2, i3 = idx("lab_1"), idx("lab_2"), idx("lab_3")

    # comparisons for the fit and the per-lab tests
    s12 = df.get_column("s").cast(pl.Float64).to_numpy()
    s13 = df.get_column("s_13").cast(pl.Float64).to_numpy()
    s23 = df.get_column("s_23").cast(pl.Float64).to_numpy()
    has3 = i3 >= 0
    pieces = [
        (i1, i2, s12, np.isfinite(s12)),
        (i1, i3, s13, np.isfinite(s13) & has3),
        (i2, i3, s23, np.isfinite(s23) & has3),
    ]
    ca = np.concatenate([a[k] for a, _, _, k in pieces])
    cb = np.concatenate([b[k] for _, b, _, k in pieces])
    cs = np.concatenate([s[k] for _, _, s, k in pieces])
    fit = fit_lab_bias(ca, cb, cs, n_labs, ep)
    b, se, u = fit["b"], fit["se"], fit["u"]

    # blame shares
    excess_sq = np.maximum(b**2 - np.nan_to_num(se, nan=0.0) ** 2, 0.0)
    m = excess_sq + np.maximum(u, 0.0) / 2 + ep.blame_floor
    share1 = m[i1] / (m[i1] + m[i2])
    if "kind" in df.columns:
        qual = (df.get_column("kind") == "qualitative").fill_null(False).to_numpy()
        if qual.any():
            share1 = np.where(
                qual,
                qualitative_shares(
                    i1, i2, df.get_column("discrepant").fill_null(False).to_numpy().astype(bool), qual,
                    df.get_column("arbiter_sides_with").to_numpy() if "arbiter_sides_with" in df.columns else None,
                    n_labs, prior_pairs=ep.baseline_prior_pairs,
                ),
                share1,
            )
    side = (
        df.get_column("arbiter_sides_with").to_numpy()
        if "arbiter_sides_with" in df.columns
        else None
    )
    blame1 = share1.copy()
    blame2 = 1.0 - share1
    if side is not None:
        side = np.asarray(side, dtype=object)
        blame1 = np.where(side == "original", 0.0, np.where(side == "retest", 1.0, blame1))
        blame2 = np.where(side == "original", 1.0, np.where(side == "retest", 0.0, blame2))
        blame1 = np.where(side == "neither", 1.0, blame1)
        blame2 = np.where(side == "neither", 1.0, blame2)
        lost1 = np.isin(side, ["retest", "neither"])
        lost2 = np.isin(side, ["original", "neither"])
    else:
        lost1 = lost2 = np.zeros(df.height, dtype=bool)
    disc = df.get_column("discrepant").to_numpy().astype(bool)
    blame1 = np.where(disc, blame1, 0.0)
    blame2 = np.where(disc, blame2, 0.0)

    outcome = df.get_column("outcome")
    is_qual = (
        (df.get_column("kind") == "qualitative").fill_null(False).to_numpy()
        if "kind" in df.columns
        else np.zeros(df.height, dtype=bool)
    )
    common = {
        "qual": is_qual,
        "pair_id": df.get_column("pair_id"),
        "completed_on": df.get_column("completed_on"),
        "discrepant": df.get_column("discrepant"),
        "reversal": df.get_column("reversal"),
        "within": outcome == "reversal_within_uncertainty",
        "censored_disc": outcome == "censored_discrepant",
        "p_lab": df.get_column("p_expected") / 2.0,
    }
    roles = pl.concat(
        [
            pl.DataFrame({**common, "idx": i1, "role": "original", "blame": blame1,
                          "lost": lost1, "has_s": np.isfinite(s12)}),
            pl.DataFrame({**common, "idx": i2, "role": "retest", "blame": blame2,
                          "lost": lost2, "has_s": np.isfinite(s12)}),
        ]
    )
    arb = pl.DataFrame({"pair_id": df.get_column("pair_id"), "idx": i3}).filter(pl.col("idx") >= 0)

    counts = roles.group_by("idx").agg(
        pairs_original=(pl.col("role") == "original").sum().cast(pl.Int64),
        pairs_retest=(pl.col("role") == "retest").sum().cast(pl.Int64),
        pairs_compared=pl.len().cast(pl.Int64),
        pairs_quantitative=pl.col("has_s").sum().cast(pl.Int64),
        discrepancies=pl.col("discrepant").sum().cast(pl.Int64),
        reversals=pl.col("reversal").sum().cast(pl.Int64),
        reversals_within_uncertainty=pl.col("within").sum().cast(pl.Int64),
        censored_disagreements=pl.col("censored_disc").sum().cast(pl.Int64),
        arbitrations_lost=pl.col("lost").sum().cast(pl.Int64),
        attributed_discrepancies=pl.col("blame").sum(),
        expected_discrepancies=pl.col("p_lab").sum(),
        pairs_qualitative=pl.col("qual").sum().cast(pl.Int64),
        qualitative_errors=(pl.col("blame") * pl.col("qual")).sum(),
    )
    all_pairs = (
        pl.concat([roles.select("pair_id", "idx"), arb])
        .group_by("idx")
        .agg(pairs=pl.col("pair_id").n_unique().cast(pl.Int64))
    )
    arb_counts = arb.group_by("idx").agg(pairs_arbitration=pl.len().cast(pl.Int64))

    # oriented s for sign / Wilcoxon tests
    oriented = pl.DataFrame(
        {"idx": np.r_[ca, cb], "s": np.r_[cs, -cs]}, schema={"idx": pl.Int64, "s": pl.Float64}
    )
    nz = oriented.filter(pl.col("s") != 0).with_columns(a=pl.col("s").abs())
    ties = (
        nz.group_by("idx", "a")
        .agg(t=pl.len().cast(pl.Float64))
        .group_by("idx")
        .agg(tie=((pl.col("t") ** 3 - pl.col("t")) / 48.0).sum())
    )
    ranks = (
        nz.with_columns(r=pl.col("a").rank("average").over("idx"))
        .group_by("idx")
        .agg(
            sign_n=pl.len().cast(pl.Int64),
            sign_positive=(pl.col("s") > 0).sum().cast(pl.Int64),
            wilcoxon_statistic=pl.col("r").filter(pl.col("s") > 0).sum().cast(pl.Float64),
        )
        .join(ties, on="idx", how="left")
    )
    medians = oriented.group_by("idx").agg(median_s=pl.col("s").median())

    # CUSUM over time
    log_r = float(np.log(policy.cusum.odds_ratio))
    h = cusum_limit(roles.get_column("p_lab").to_numpy(), policy.cusum)
    cus = (
        roles.sort("idx", "completed_on", "pair_id", nulls_last=False)
        .with_columns(
            w=pl.col("blame").clip(0.0, 1.0) * log_r
            - (1.0 - pl.col("p_lab") + policy.cusum.odds_ratio * pl.col("p_lab")).log()
        )
        .with_columns(cs=pl.col("w").cum_sum().over("idx"))
        .with_columns(c=pl.col("cs") - pl.min_horizontal(pl.col("cs").cum_min().over("idx"), 0.0))
        .group_by("idx", maintain_order=True)
        .agg(
            cusum_current=pl.col("c").last(),
            cusum_max=pl.col("c").max(),
            cusum_signal_on=pl.col("completed_on").filter((pl.col("c") > 0) & (pl.col("c") >= h)).first(),
        )
    )

    base = pl.DataFrame({"idx": np.arange(n_labs, dtype=np.int64), "lab_code": labs})
    out = (
        base.join(all_pairs, on="idx", how="left")
        .join(counts, on="idx", how="left")
        .join(arb_counts, on="idx", how="left")
        .join(ranks, on="idx", how="left")
        .join(medians, on="idx", how="left")
        .join(cus, on="idx", how="left")
        .sort("idx")
        .with_columns(
            pl.col(
                "pairs", "pairs_original", "pairs_retest", "pairs_arbitration", "pairs_compared",
                "pairs_quantitative", "discrepancies", "reversals", "reversals_within_uncertainty",
                "censored_disagreements", "arbitrations_lost", "sign_n", "sign_positive",
                "pairs_qualitative",
            ).fill_null(0),
            pl.col("attributed_discrepancies", "expected_discrepancies", "qualitative_errors").fill_null(0.0),
        )
    )

    n = out.get_column("pairs_compared").to_numpy().astype(float)
    o = out.get_column("attributed_discrepancies").to_numpy()
    e = out.get_column("expected_discrepancies").to_numpy()
    has_n = n > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        oe = np.where(e > 0, o / e, np.nan)
        lo, hi = garwood_interval(o, ep.credible_level)
        oe_lo = np.where(e > 0, lo / e, np.nan)
        oe_hi = np.where(e > 0, hi / e, np.nan)
    excess_p = np.where(has_n, poisson_excess_p(o, e), np.nan)

    alpha, beta = beta_binomial_moments(o, n, ep.eb_max_prior_pairs)
    a_post = o + alpha
    b_post = np.maximum(n - o, 0.0) + beta
    tail = (1.0 - ep.credible_level) / 2
    eb_rate = np.where(has_n, a_post / (a_post + b_post), np.nan)
    eb_lo = np.where(has_n, stats.beta.ppf(tail, a_post, b_post), np.nan)
    eb_hi = np.where(has_n, stats.beta.ppf(1 - tail, a_post, b_post), np.nan)
    eb_above = np.where(has_n, stats.beta.sf(ep.target_rate, a_post, b_post), np.nan)

    # Wrong qualitative verdicts: the lab's attributed errors over its qualitative pairs, shrunk
    # towards the pooled rate with baseline_prior_pairs pseudo-pairs (a lab with 5 such pairs
    # and one error is not a 20 % lab).
    nq = out.get_column("pairs_qualitative").to_numpy().astype(float)
    oq = out.get_column("qualitative_errors").to_numpy()
    pooled_q = oq.sum() / nq.sum() if nq.sum() > 0 else 0.0
    k = ep.baseline_prior_pairs
    with np.errstate(divide="ignore", invalid="ignore"):
        qual_rate = np.where(nq > 0, (oq + k * pooled_q) / (nq + k), np.nan)

    involved = np.isfinite(se)
    bias = np.where(involved, b, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        bias_z = np.where(involved & (se > 0), b / se, np.nan)
    bias_p = 2.0 * stats.norm.sf(np.abs(bias_z))

    sn = out.get_column("sign_n").to_numpy().astype(float)
    sk = out.get_column("sign_positive").to_numpy().astype(float)
    sign_tail = stats.binom.cdf(np.minimum(sk, sn - sk), sn, 0.5)
    sign_p = np.where(sn > 0, np.minimum(1.0, 2.0 * sign_tail), np.nan)

    wplus = out.get_column("wilcoxon_statistic").fill_null(0.0).to_numpy()
    tie = out.get_column("tie").fill_null(0.0).to_numpy()
    mean_w = sn * (sn + 1) / 4.0
    var_w = sn * (sn + 1) * (2 * sn + 1) / 24.0 - tie
    with np.errstate(divide="ignore", invalid="ignore"):
        d = wplus - mean_w
        d = d - 0.5 * np.sign(d)
        wz = np.where((sn > 0) & (var_w > 0), d / np.sqrt(var_w), np.nan)
    wp = np.where(np.isfinite(wz), 2.0 * stats.norm.sf(np.abs(wz)), np.where(sn > 0, 1.0, np.nan))

    fun = funnel_limits(o, n, ep.funnel_winsor)

    def col(a: np.ndarray) -> pl.Series:
        return pl.Series(np.asarray(a, dtype=float)).fill_nan(None)

    out = out.with_columns(
        as_of=pl.lit(as_of, dtype=pl.Date),
        window_start=pl.lit(window_start, dtype=pl.Date),
        bias=col(bias),
        bias_se=col(np.where(involved, se, np.nan)),
        bias_z=col(bias_z),
        bias_p=col(bias_p),
        bias_q=col(benjamini_hochberg(bias_p)),
        excess_variance=col(np.where(involved, u, np.nan)),
        component_size=pl.Series(fit["component_size"], dtype=pl.Int64),
        oe_ratio=col(oe),
        oe_lower=col(oe_lo),
        oe_upper=col(oe_hi),
        excess_p=col(excess_p),
        excess_q=col(benjamini_hochberg(excess_p)),
        eb_rate=col(eb_rate),
        qualitative_rate=col(qual_rate),
        eb_lower=col(eb_lo),
        eb_upper=col(eb_hi),
        eb_p_above_target=col(eb_above),
        eb_alpha=pl.lit(alpha, dtype=pl.Float64),
        eb_beta=pl.lit(beta, dtype=pl.Float64),
        sign_p=col(sign_p),
        sign_q=col(benjamini_hochberg(sign_p)),
        wilcoxon_n=pl.col("sign_n"),
        wilcoxon_statistic=pl.when(pl.col("sign_n") > 0).then(
            pl.col("wilcoxon_statistic").fill_null(0.0)
        ),
        wilcoxon_z=col(wz),
        wilcoxon_p=col(wp),
        wilcoxon_q=col(benjamini_hochberg(wp)),
        cusum_current=pl.col("cusum_current").fill_null(0.0),
        cusum_max=pl.col("cusum_max").fill_null(0.0),
        cusum_limit=pl.lit(h, dtype=pl.Float64),
        cusum_signal=(pl.col("cusum_max").fill_null(0.0) > 0) & (pl.col("cusum_max").fill_null(0.0) >= h),
        funnel_n=pl.col("pairs_compared"),
        funnel_rate=col(fun["rate"]),
        funnel_target=pl.lit(fun["target"], dtype=pl.Float64).fill_nan(None),
        funnel_lower_95=col(fun["lower_95"]),
        funnel_upper_95=col(fun["upper_95"]),
        funnel_lower_998=col(fun["lower_998"]),
        funnel_upper_998=col(fun["upper_998"]),
        funnel_z=col(fun["z"]),
        funnel_phi=pl.lit(fun["phi"], dtype=pl.Float64).fill_nan(None),
        funnel_tau2=pl.lit(fun["tau2"], dtype=pl.Float64).fill_nan(None),
    )
    return out.select([pl.col(c).cast(t) for c, t in EVIDENCE_SCHEMA.items()])
