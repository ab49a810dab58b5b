"""Rates of events per lab judged against expectation and against the spread of peers.

Array in, array out. The pieces a lab's discrepancy (or pattern) count goes through:

* :func:`poisson_excess_p` and :func:`garwood_interval`: an observed count O against an expected
  count E (indirect standardisation), one-sided test and exact interval;
* :func:`fit_beta_binomial` and :func:`shrunk_rates`: the empirical-Bayes prior of per-lab rates,
  fitted by maximum likelihood on whole counts, and each lab's posterior;
* :func:`funnel_limits`: Spiegelhalter's funnel with additive overdispersion, so that the normal
  spread between labs is not read as a signal;
* :func:`benjamini_hochberg`: false-discovery-rate adjustment across labs;
* :func:`baseline_rate`: each pair's expected discrepancy probability, shrunk item → category →
  overall (:func:`baseline_probabilities`: the same from integer codes, without a frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import optimize, special, stats

__all__ = [
    "Z95",
    "Z998",
    "BetaBinomialPrior",
    "FunnelLimits",
    "ShrunkRates",
    "baseline_probabilities",
    "baseline_rate",
    "benjamini_hochberg",
    "fit_beta_binomial",
    "funnel_band",
    "funnel_limits",
    "garwood_interval",
    "poisson_excess_p",
    "shrunk_rates",
]

Z95 = float(stats.norm.ppf(0.975))
Z998 = float(stats.norm.ppf(0.999))


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


@dataclass(frozen=True, slots=True)
class BetaBinomialPrior:
    """Beta(alpha, beta) prior of per-lab rates. ``strength`` = alpha + beta (pseudo-pairs)."""

    alpha: float
    beta: float
    mean: float
    strength: float
    # "ml" (maximum likelihood), "no_overdispersion" (the likelihood keeps rising as the prior
    # tightens: strength = the cap), or "degenerate" (fewer than two labs with pairs, or a
    # pooled rate of 0 or 1).
    method: str


def fit_beta_binomial(
    x: np.ndarray, n: np.ndarray, max_strength: float = 1000.0
) -> BetaBinomialPrior:
    """Maximum-likelihood beta-binomial prior from whole counts x out of n per lab.

    Maximises sum_i log BetaBinom(x_i; n_i, mu s, (1 - mu) s) over the mean mu and the strength
    s = alpha + beta (optimised as logit mu and log s, from the pooled rate and a moderate
    strength). Labs with n = 0 carry no information and are ignored. x is rounded to whole
    counts (the likelihood is of counts). When no overdispersion is visible the optimum runs off
    to s = infinity (complete pooling); s is capped at ``max_strength`` and ``method`` says so.
    Degenerate cases (fewer than two labs with pairs, or a pooled rate of 0 or 1): the pooled
    mean clamped to [1e-6, 1 - 1e-6] with strength ``max_strength``.
    """
    x = np.rint(np.asarray(x, dtype=float))
    n = np.asarray(n, dtype=float)
    keep = n > 0
    x, n = np.minimum(x[keep], n[keep]), n[keep]
    total = float(n.sum())
    pooled = float(x.sum() / total) if total > 0 else 0.0
    mu0 = min(max(pooled, 1e-6), 1 - 1e-6)
    if len(n) < 2 or pooled <= 0.0 or pooled >= 1.0:
        return BetaBinomialPrior(
            alpha=mu0 * max_strength, beta=(1 - mu0) * max_strength, mean=mu0,
            strength=max_strength, method="degenerate",
        )

    def nll(theta: np.ndarray) -> float:
        mu = special.expit(theta[0])
        s = np.exp(theta[1])
        return -float(stats.betabinom.logpmf(x, n, mu * s, (1 - mu) * s).sum())

    log_cap = np.log(max_strength)
    res = optimize.minimize(
        nll, x0=np.array([special.logit(mu0), min(np.log(50.0), log_cap)]), method="L-BFGS-B",
        bounds=[(-20.0, 20.0), (np.log(1e-3), log_cap)],
    )
    mu = float(special.expit(res.x[0]))
    s = float(np.exp(res.x[1]))
    method = "no_overdispersion" if res.x[1] >= log_cap - 1e-6 else "ml"
    return BetaBinomialPrior(alpha=mu * s, beta=(1 - mu) * s, mean=mu, strength=s, method=method)


@dataclass(frozen=True, slots=True)
class ShrunkRates:
    """Posterior of each lab's rate: Beta(events + alpha, n - events + beta)."""

    rate: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    p_above_target: np.ndarray


def shrunk_rates(
    events: np.ndarray, n: np.ndarray, prior_mean: float, prior_strength: float,
    *, level: float, target: float,
) -> ShrunkRates:
    """Posterior mean, equal-tailed credible interval and P(rate > target) per lab.

    events may be fractional (attributed counts); the posterior is then the Beta with those
    pseudo-counts. Labs with n = 0 get NaN.
    """
    events = np.asarray(events, dtype=float)
    n = np.asarray(n, dtype=float)
    has = n > 0
    a = events + prior_mean * prior_strength
    b = np.maximum(n - events, 0.0) + (1 - prior_mean) * prior_strength
    tail = (1.0 - level) / 2
    return ShrunkRates(
        rate=np.where(has, a / (a + b), np.nan),
        lower=np.where(has, stats.beta.ppf(tail, a, b), np.nan),
        upper=np.where(has, stats.beta.ppf(1 - tail, a, b), np.nan),
        p_above_target=np.where(has, stats.beta.sf(target, a, b), np.nan),
    )


@dataclass(frozen=True, slots=True)
class FunnelLimits:
    """A funnel plot of per-lab proportions (NaN where a lab has n = 0)."""

    rate: np.ndarray
    target: float
    lower_95: np.ndarray
    upper_95: np.ndarray
    lower_998: np.ndarray
    upper_998: np.ndarray
    # z with overdispersion: (rate - target) / sqrt(s_i^2 + tau^2)
    z: np.ndarray
    phi: float
    tau2: float


def funnel_band(target: float, tau2: float, n: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """The funnel's limits at sizes n: target ± z sqrt(target (1 − target) / n + τ²), clipped to
    [0, 1]; NaN where n ≤ 0. Drawing a funnel evaluates this on a grid of n."""
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.where(n > 0, np.sqrt(target * (1 - target) / n + tau2), np.nan)
    return np.clip(target - z * sd, 0.0, 1.0), np.clip(target + z * sd, 0.0, 1.0)


def funnel_limits(observed: np.ndarray, n: np.ndarray, winsor: float = 0.1) -> FunnelLimits:
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
    if not ok.any():
        return FunnelLimits(nan, float("nan"), nan, nan, nan, nan, nan, float("nan"), float("nan"))
    y = o[ok] / n[ok]
    p0 = float(o[ok].sum() / n[ok].sum())
    rate = nan.copy()
    rate[ok] = y

    def spread(values: np.ndarray) -> np.ndarray:
        arr = nan.copy()
        arr[ok] = values
        return arr

    if p0 <= 0.0 or p0 >= 1.0:
        flat = spread(np.full(len(y), p0))
        return FunnelLimits(rate, p0, flat, flat, flat, flat, spread(np.zeros(len(y))), 1.0, 0.0)
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
    lo95, hi95 = funnel_band(p0, tau2, n[ok], Z95)
    lo998, hi998 = funnel_band(p0, tau2, n[ok], Z998)
    return FunnelLimits(
        rate=rate,
        target=p0,
        lower_95=spread(lo95),
        upper_95=spread(hi95),
        lower_998=spread(lo998),
        upper_998=spread(hi998),
        z=spread((y - p0) / sd),
        phi=phi,
        tau2=tau2,
    )


def baseline_rate(frame: pl.DataFrame, event: str, level: str, prior_pairs: float) -> pl.Expr:
    """Expression for each row's expected probability of ``event`` (a boolean column).

    level "overall": the pooled rate. "category": the category's rate shrunk towards the
    overall rate with ``prior_pairs`` pseudo-pairs. "item": the item's rate shrunk towards its
    category's (itself shrunk). Rows with a null event do not count.
    """
    y = pl.col(event).cast(pl.Float64)
    overall = frame.select(y.mean()).item()
    overall = 0.0 if overall is None else float(overall)
    if level == "overall":
        return pl.lit(overall)
    k = prior_pairs
    cat_n = y.count().over("category_code")
    cat = pl.when(cat_n + k > 0).then((y.sum().over("category_code") + k * overall) / (cat_n + k))
    cat = cat.otherwise(overall)
    if level == "category":
        return cat
    item_n = y.count().over(["category_code", "item_code"])
    item = (y.sum().over(["category_code", "item_code"]) + k * cat) / (item_n + k)
    return pl.when(item_n + k > 0).then(item).otherwise(cat)


def _dense_codes(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes (non-negative integers, e.g. Categorical ids) renumbered 0..k−1 without sorting."""
    if codes.size == 0:
        return codes.astype(np.int64), 0
    seen = np.bincount(codes)
    present = np.flatnonzero(seen)
    lookup = np.zeros(seen.size, dtype=np.int64)
    lookup[present] = np.arange(present.size)
    return lookup[codes], int(present.size)


def baseline_probabilities(
    counted: np.ndarray, event: np.ndarray, category: np.ndarray, item: np.ndarray, level: str,
    prior_pairs: float,
) -> np.ndarray:
    """:func:`baseline_rate` from arrays: every row's expected probability of ``event`` among the
    ``counted`` rows (both boolean), by ``category`` and ``item`` codes (non-negative integers,
    one code standing for a missing one). Groups are bincounts over the codes instead of window
    expressions over the frame; the counts are whole numbers, so every rate is the same double
    :func:`baseline_rate` gives."""
    counted = np.asarray(counted, dtype=bool)
    hit = (np.asarray(event, dtype=bool) & counted).astype(float)
    n_counted = int(counted.sum())
    overall = float(hit.sum() / n_counted) if n_counted else 0.0
    n = counted.size
    if level == "overall":
        return np.full(n, overall)
    k = prior_pairs
    cat, n_cat = _dense_codes(np.asarray(category, dtype=np.int64))
    w = counted.astype(float)
    cat_n = np.bincount(cat, weights=w, minlength=n_cat)
    cat_sum = np.bincount(cat, weights=hit, minlength=n_cat)
    with np.errstate(divide="ignore", invalid="ignore"):
        cat_rate = np.where(cat_n + k > 0, (cat_sum + k * overall) / (cat_n + k), overall)
    if level == "category":
        return cat_rate[cat]
    it, n_item = _dense_codes(np.asarray(item, dtype=np.int64))
    key, n_key = _dense_codes(cat * max(n_item, 1) + it)
    item_n = np.bincount(key, weights=w, minlength=n_key)
    item_sum = np.bincount(key, weights=hit, minlength=n_key)
    # an item's category (every row of a key has the same one)
    key_cat = np.zeros(n_key, dtype=np.int64)
    key_cat[key] = cat
    parent = cat_rate[key_cat]
    with np.errstate(divide="ignore", invalid="ignore"):
        item_rate = np.where(item_n + k > 0, (item_sum + k * parent) / (item_n + k), parent)
    return item_rate[key]
