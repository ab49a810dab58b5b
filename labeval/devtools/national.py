"""A national data set at scale, generated in memory: thousands of labs, up to ten million pairs.

``build_national(NationalConfig(n_pairs=…))`` gives the pair frame in scoring's
``PAIR_INPUT_SCHEMA`` directly (``National.pairs``, what the evidence and scoring benchmarks feed
to scoring with no database) and the tables behind it in the intake layout (categories, labs,
items, samples; results on demand with ``National.results()``, every cell text as a file has it),
for the benchmarks that go through intake and PostgreSQL. The pairs are exactly what a grading
run's query would join from those results.

Unlike labeval.devtools.world (the fairness tests' world, which carries the truth behind every
number) this one is built for size: every per-pair quantity is one numpy or polars operation over
all pairs, a lab's bias on an item is a hash of (seed, lab, item) turned into a normal deviate
(no labs × items matrix), and partners are drawn by binary search in cumulative weights. It is
deterministic for a given config.

The model, in short (ISO 5725-1/-2: σR² = σL² + σr²):

* 5 000 labs in 31 provinces grouped in 7 regions; province sizes are very unequal (gamma
  weights) and so are lab volumes (lognormal, σ = 1.4 on the log scale: the busiest labs have
  hundreds of times the median's pairs). Each lab covers a subset of the 300 product categories
  (popular categories are covered by many labs; busy labs cover more); some labs mostly test
  originals, some mostly retest.
* 3 000 items spread unevenly over the categories: qualitative (≈ 8 %), or quantitative with an
  absolute, relative or Horwitz precision model, an upper limit (most), a lower one, both or
  none, and an LOD on about a quarter of them.
* A sample belongs to one category and is tested on a few of its items (one pair per item). The
  original lab is drawn among the labs with the category in scope (by volume); the retest lab,
  always another lab, from the same province with probability ``same_province``, else from the
  same region with probability ``same_region``, else from the whole country. A few isolated groups
  (pairs and triangles of labs that only retest each other) make the comparison graph realistic.
* A lab's bias on an item is σL·(√ρ·z_lab + √(1−ρ)·z_lab,item) (a normal lab's bias lies within
  the method's between-lab spread), plus a shift of ±``biased_shift`` σR for the few biased labs;
  noisy labs have a larger repeatability. A reported value is x = t + b + σr·ε/√n.
* Values below the LOD are reported censored ("<LOD", sometimes a bare ND), verdicts follow the
  number (simple acceptance, or a guard band of U for some labs), qualitative verdicts are wrong
  now and then (often for careless labs). Reversals and large discrepancies go to arbitration by
  a third lab of the region now and then (a few % of pairs).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import msgspec
import numpy as np
import polars as pl
from scipy.special import ndtri

from labeval.devtools.world import PROVINCES
from scoring.schema import PAIR_INPUT_SCHEMA

__all__ = ["CODE_COLUMNS", "LAB_KINDS", "PAIR_BLOCK", "National", "NationalConfig", "build_national"]

LAB_KINDS = ("normal", "biased", "noisy", "careless_qualitative")
_ABS, _REL, _HOR = 0, 1, 2
_MODELS = ("absolute", "relative", "horwitz")
# Thirty-one provinces: the thirty of the fairness world and Tibet; seven regions by the usual
# geographic grouping (the index of each province's region).
_PROVINCES = (*PROVINCES, "西藏")
_REGION = (0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 5)
_UNITS = ("mg/kg", "g/100g", "%", "mg/L", "N", "mm", "MPa", "cd/m2")


class NationalConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Knobs of the national data set (defaults: the national scale of issue 13)."""

    n_pairs: int = 1_000_000
    n_labs: int = 5_000
    n_categories: int = 300
    n_items: int = 3_000
    seed: int = 0
    as_of: date = date(2026, 11, 28)
    # Every pair is completed within this many days before as_of.
    window_days: int = 365

    volume_sigma: float = 1.4
    # Categories per lab: 1 + Binomial(n_categories − 1, p); busy labs (top 5 % by volume) busy_scope_p.
    scope_p: float = 0.04
    busy_scope_p: float = 0.25
    mostly_original_share: float = 0.15
    mostly_retest_share: float = 0.15
    same_province: float = 0.7
    same_region: float = 0.2
    # Items tested per sample: 1 + Poisson(items_per_sample − 1), at most the category's items.
    items_per_sample: float = 3.0
    # Isolated groups alternate pairs and triangles of labs that only retest each other.
    isolated_groups: int = 6
    isolated_volume: float = 150.0

    qualitative_share: float = 0.08
    lod_share: float = 0.25
    nonconform_rate: float = 0.06
    near_limit_rate: float = 0.10
    qualitative_fail_rate: float = 0.05
    qualitative_error: float = 0.01
    lab_share_rho: float = 0.5
    reports_u_share: float = 0.8
    guard_band_share: float = 0.2
    arbitrate_reversals: float = 0.6
    arbitrate_discrepancies: float = 0.3

    biased_share: float = 0.03
    noisy_share: float = 0.02
    careless_share: float = 0.01
    biased_shift: float = 2.5
    noisy_factor: float = 4.0
    careless_error: float = 0.2


@dataclass(frozen=True)
class _Items:
    cat: np.ndarray
    quant: np.ndarray
    model: np.ndarray  # _ABS / _REL / _HOR, −1 for qualitative
    sr: np.ndarray  # absolute sd, or fraction of the level (relative); NaN for Horwitz
    sR: np.ndarray
    hscale: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    typical: np.ndarray  # a typical level (items without limits)
    lod: np.ndarray
    unit: np.ndarray  # index into _UNITS

    def sigmas(self, it: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(σR, σr) of items ``it`` at ``level`` (NaN for qualitative items)."""
        model = self.model[it]
        a = np.abs(level)
        hs = self.hscale[it]
        with np.errstate(invalid="ignore", divide="ignore"):
            hor = _horwitz(a * hs) / hs
            sR = np.where(model == _ABS, self.sR[it], np.where(model == _REL, self.sR[it] * a, hor))
            sr = np.where(model == _ABS, self.sr[it], np.where(model == _REL, self.sr[it] * a, 0.5 * hor))
        return sR, sr

    def sigma_L(self) -> np.ndarray:
        """σL/σR of each item (level-free for every model)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(self.model == _HOR, 0.5, self.sr / self.sR)
        return np.sqrt(np.clip(1.0 - ratio**2, 0.0, 1.0))


@dataclass(frozen=True)
class _Labs:
    province: np.ndarray
    volume: np.ndarray
    orig_tendency: np.ndarray
    scope: np.ndarray  # bool labs × categories
    group: np.ndarray  # 0 main, g > 0 isolated group g
    kind: np.ndarray  # index into LAB_KINDS
    shift: np.ndarray  # σR units
    noise: np.ndarray
    z_lab: np.ndarray
    replicates: np.ndarray  # 0: not stated
    reports_u: np.ndarray
    u_factor: np.ndarray
    rule: np.ndarray  # 0 simple, 1 guard band, −1 not stated
    q_error: np.ndarray


@dataclass(frozen=True)
class National:
    config: NationalConfig
    categories: pl.DataFrame
    labs: pl.DataFrame
    items: pl.DataFrame
    # One row per lab: lab_code, kind (LAB_KINDS), shift (σR), group (0 = main), province, volume.
    truth: pl.DataFrame
    _gen: _PairGen

    def pair_blocks(self, *, categorical: bool = False) -> Iterator[pl.DataFrame]:
        """The pairs (scoring.schema.PAIR_INPUT_SCHEMA, pair_id 1..n_pairs) block by block, each
        generated when asked for: a consumer that reduces each block holds only one at a time.

        categorical: the code columns (CODE_COLUMNS) as Categorical instead of String, the same
        values in 4 bytes a cell instead of a 16-byte string view (a third of the pair frame's
        memory at 10 M pairs); scoring reads either."""
        for k in range(-(-self.config.n_pairs // PAIR_BLOCK)):
            yield self._gen.block(k, categorical=categorical)

    @functools.cached_property
    def samples(self) -> pl.DataFrame:
        """The samples table in the intake layout (built on first use)."""
        return self._gen.tables["samples"]()

    @functools.cached_property
    def pairs(self) -> pl.DataFrame:
        """All pairs in one frame (scoring.schema.PAIR_INPUT_SCHEMA, pair_id 1..n_pairs)."""
        return pl.concat(list(self.pair_blocks())) if self.config.n_pairs else pl.DataFrame(
            schema=PAIR_INPUT_SCHEMA
        )

    def results(self) -> pl.DataFrame:
        """The results file(s) behind the pairs in the intake layout (every cell text)."""
        return _results(self.pairs, self.items)

    def intake_tables(self) -> dict[str, pl.DataFrame]:
        """The intake tables in load order (results built now: they are the big one)."""
        return {
            "categories": self.categories, "labs": self.labs, "items": self.items,
            "samples": self.samples, "results": self.results(),
        }


def _horwitz(c: np.ndarray) -> np.ndarray:
    # Thompson's (2000) modification of the Horwitz function, as in scoring.pairs; c a mass fraction.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c < 1.2e-7, 0.22 * c, np.where(c <= 0.138, 0.02 * c**0.8495, 0.01 * np.sqrt(c)))


def _hash_normal(seed: int, key: np.ndarray) -> np.ndarray:
    """A standard normal deviate per key, the same for the same (seed, key): splitmix64 → (0, 1)."""
    with np.errstate(over="ignore"):
        z = key.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)
    return ndtri(u)


def _codes(prefix: str, n: int, width: int) -> pl.Series:
    return pl.select(
        pl.format(f"{prefix}{{}}", pl.int_range(1, n + 1, eager=False).cast(pl.String).str.zfill(width))
    ).to_series()


# --------------------------------------------------------------------------------- items, labs


def _items(cfg: NationalConfig, rng: np.random.Generator) -> _Items:
    n, n_cat = cfg.n_items, cfg.n_categories
    # Every category gets at least two items; the rest go to categories unevenly.
    weight = rng.gamma(1.5, 1.0, n_cat)
    extra = rng.choice(n_cat, max(n - 2 * n_cat, 0), p=weight / weight.sum())
    cat = np.sort(np.r_[np.repeat(np.arange(n_cat), 2), extra][:n])
    quant = rng.random(n) >= cfg.qualitative_share
    model = np.where(quant, rng.choice(3, n, p=[0.25, 0.60, 0.15]), -1)
    typical = np.exp(rng.normal(1.0, 2.0, n))
    rel = rng.uniform(0.03, 0.2, n)
    hscale = np.where(model == _HOR, 1e-6, np.nan)  # mg/kg → mass fraction
    sR = np.where(model == _ABS, rel * typical, np.where(model == _REL, rel, np.nan))
    sr = sR * rng.uniform(0.3, 0.8, n)
    spec = rng.choice(4, n, p=[0.70, 0.12, 0.10, 0.08])  # upper, both, lower, none
    hi = np.where(quant & (spec <= 1), typical, np.nan)
    lo = np.where(quant & (spec == 1), 0.5 * typical, np.where(quant & (spec == 2), typical, np.nan))
    lod = np.where(quant & (spec == 0) & (rng.random(n) < cfg.lod_share / 0.7),
                   typical * rng.uniform(0.02, 0.3, n), np.nan)
    return _Items(cat=cat, quant=quant, model=model, sr=sr, sR=sR, hscale=hscale, lo=lo, hi=hi,
                  typical=typical, lod=lod, unit=rng.integers(0, len(_UNITS), n))


def _labs(cfg: NationalConfig, rng: np.random.Generator) -> _Labs:
    n, n_cat = cfg.n_labs, cfg.n_categories
    n_groups = cfg.isolated_groups
    sizes = [2 if g % 2 == 0 else 3 for g in range(n_groups)]
    if n < sum(sizes) + 10 or n_cat < 2:
        raise ValueError("too few labs or categories for the isolated groups and a main group")
    prov_w = rng.gamma(1.0, 1.0, len(_PROVINCES))
    province = rng.choice(len(_PROVINCES), n, p=prov_w / prov_w.sum())
    volume = rng.lognormal(0.0, cfg.volume_sigma, n)
    busy = volume >= np.quantile(volume, 0.95)
    side = rng.choice(3, n, p=[cfg.mostly_original_share, cfg.mostly_retest_share,
                               1.0 - cfg.mostly_original_share - cfg.mostly_retest_share])
    orig_tendency = np.where(side == 0, 0.85, np.where(side == 1, 0.15, rng.uniform(0.35, 0.65, n)))

    # Scopes without a per-lab loop: each lab keeps the categories whose popularity-weighted
    # exponential key is among its k smallest (weighted sampling without replacement).
    pop = rng.gamma(2.0, 1.0, n_cat)
    k = 1 + rng.binomial(n_cat - 1, np.where(busy, cfg.busy_scope_p, cfg.scope_p))
    keys = rng.exponential(1.0, (n, n_cat)) / pop[None, :]
    kth = np.partition(keys, k - 1, axis=1)[np.arange(n), k - 1] if n else np.zeros(0)
    scope = keys <= kth[:, None]
    del keys

    group = np.zeros(n, dtype=np.int64)
    order = rng.permutation(n)
    start = 0
    for g, size in enumerate(sizes, start=1):
        members = order[start:start + size]
        start += size
        group[members] = g
        scope[members] = False
        scope[members, rng.integers(0, n_cat)] = True
        volume[members] = cfg.isolated_volume / cfg.n_pairs * rng.lognormal(0.0, 0.2, size)
    main = group == 0
    # Every category is covered by at least three main labs (a retest and an arbiter can be found).
    main_idx = np.flatnonzero(main)
    for c in np.flatnonzero(scope[main].sum(axis=0) < 3):
        scope[rng.choice(main_idx, 3, replace=False), c] = True

    kind = np.zeros(n, dtype=np.int64)
    picks = rng.permutation(main_idx)
    counts = [int(round(s * main_idx.size)) for s in (cfg.biased_share, cfg.noisy_share, cfg.careless_share)]
    start = 0
    for j, c in enumerate(counts, start=1):
        kind[picks[start:start + c]] = j
        start += c
    shift = np.where(kind == 1, cfg.biased_shift * rng.choice([-1.0, 1.0], n), 0.0)
    reports_u = rng.random(n) < cfg.reports_u_share
    guard = reports_u & (rng.random(n) < cfg.guard_band_share / max(cfg.reports_u_share, 1e-9))
    rule = np.where(guard, 1, np.where(~reports_u & (rng.random(n) < 0.5), -1, 0))
    return _Labs(
        province=province, volume=volume, orig_tendency=orig_tendency, scope=scope, group=group,
        kind=kind, shift=shift, noise=np.where(kind == 2, cfg.noisy_factor, 1.0),
        z_lab=rng.standard_normal(n), replicates=rng.choice([0, 1, 2, 3], n, p=[0.1, 0.45, 0.3, 0.15]),
        reports_u=reports_u, u_factor=rng.uniform(0.7, 1.3, n), rule=rule,
        q_error=np.where(kind == 3, cfg.careless_error, cfg.qualitative_error),
    )


# ------------------------------------------------------------------------------------ partners


@dataclass(frozen=True)
class _Pool:
    """Scope entries (category, lab) sorted by category, region, province, lab, with cumulative
    weights, so that the labs of a category (in a region, in a province) are one contiguous run."""

    lab: np.ndarray
    key_cat: np.ndarray
    key_reg: np.ndarray
    key_prov: np.ndarray
    cum_orig: np.ndarray  # cumulative weights with a leading 0
    cum_ret: np.ndarray


def _pool(labs: _Labs, n_regions: int) -> _Pool:
    main = labs.group == 0
    cat, lab = np.nonzero((labs.scope & main[:, None]).T)
    region = np.asarray(_REGION)[labs.province]
    order = np.lexsort((lab, labs.province[lab], region[lab], cat))
    lab, cat = lab[order], cat[order]
    n_prov = len(_PROVINCES)
    per_lab = labs.scope.sum(axis=1)
    w = labs.volume[lab] / per_lab[lab]
    t = labs.orig_tendency[lab]
    return _Pool(
        lab=lab, key_cat=cat,
        key_reg=cat * n_regions + region[lab],
        key_prov=(cat * n_regions + region[lab]) * n_prov + labs.province[lab],
        cum_orig=np.r_[0.0, np.cumsum(w * t)],
        cum_ret=np.r_[0.0, np.cumsum(w * (1.0 - t))],
    )


def _draw(rng: np.random.Generator, keys: np.ndarray, cum: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pool position per key, by weight within the run of entries with that key, and the run's
    weight (0 where the key has no entries, the position is then meaningless)."""
    start = np.searchsorted(keys, key, side="left")
    end = np.searchsorted(keys, key, side="right")
    total = cum[end] - cum[start]
    target = cum[start] + rng.random(key.size) * total
    pos = np.clip(np.searchsorted(cum, target, side="right") - 1, start, np.maximum(end - 1, start))
    return np.minimum(pos, keys.size - 1), total


def _partner(rng: np.random.Generator, pool: _Pool, labs: _Labs, cat: np.ndarray, avoid: list[np.ndarray],
             p_prov: float, p_reg: float) -> np.ndarray:
    """Another lab with the category in scope (−1 when none is found), nearby by preference."""
    n_reg, n_prov = 7, len(_PROVINCES)
    home = avoid[0]
    region = np.asarray(_REGION)[labs.province[home]]
    k_reg = cat * n_reg + region
    k_prov = k_reg * n_prov + labs.province[home]
    u = rng.random(cat.size)
    level = np.where(u < p_prov, 0, np.where(u < p_prov + p_reg, 1, 2))
    out = np.full(cat.size, -1, dtype=np.int64)
    pending = np.arange(cat.size)
    for attempt in range(12):
        if not pending.size:
            break
        lv = level[pending] if attempt < 8 else np.full(pending.size, 2)
        pos = np.empty(pending.size, dtype=np.int64)
        total = np.empty(pending.size)
        for value, keys, key in ((0, pool.key_prov, k_prov), (1, pool.key_reg, k_reg), (2, pool.key_cat, cat)):
            sel = lv == value
            pos[sel], total[sel] = _draw(rng, keys, pool.cum_ret, key[pending[sel]])
        lab = pool.lab[pos]
        ok = total > 0
        for a in avoid:
            ok &= lab != a[pending]
        out[pending[ok]] = lab[ok]
        # A nearby run with no other lab widens the search next time.
        level[pending[~ok]] = np.minimum(level[pending[~ok]] + (attempt % 3 == 2), 2)
        pending = pending[~ok]
    return out


def _samples(cfg: NationalConfig, rng: np.random.Generator, labs: _Labs, items: _Items,
             n_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(category, original lab, retest lab) per sample: the main group, then the isolated groups."""
    pool = _pool(labs, 7)
    # A category's share of samples follows the weight of the labs that cover it.
    cat_w = np.bincount(pool.key_cat, weights=np.diff(pool.cum_orig), minlength=cfg.n_categories)
    per_cat = np.bincount(items.cat, minlength=cfg.n_categories)
    cat_w = cat_w / np.maximum(np.minimum(per_cat, cfg.items_per_sample), 1.0)
    iso = labs.group > 0
    iso_pairs = labs.volume[iso].sum() * cfg.n_pairs / 2.0
    n_iso = int(round(iso_pairs / cfg.items_per_sample))
    n_main = max(n_samples - n_iso, 1)
    cat = rng.choice(cfg.n_categories, n_main, p=cat_w / cat_w.sum())
    pos, _ = _draw(rng, pool.key_cat, pool.cum_orig, cat)
    orig = pool.lab[pos]
    ret = _partner(rng, pool, labs, cat, [orig], cfg.same_province, cfg.same_region)
    keep = ret >= 0
    cats, origs, rets = [cat[keep]], [orig[keep]], [ret[keep]]
    for g in range(1, cfg.isolated_groups + 1):
        members = np.flatnonzero(labs.group == g)
        m = max(int(round(n_iso / max(cfg.isolated_groups, 1))), 1)
        o = rng.integers(0, members.size, m)
        r = (o + rng.integers(1, members.size, m)) % members.size
        cats.append(np.full(m, np.flatnonzero(labs.scope[members[0]])[0]))
        origs.append(members[o])
        rets.append(members[r])
    cat, orig, ret = (np.concatenate(a) for a in (cats, origs, rets))
    shuffle = rng.permutation(cat.size)
    return cat[shuffle], orig[shuffle], ret[shuffle]


# ------------------------------------------------------------------------------------- values


def _true_values(cfg: NationalConfig, rng: np.random.Generator, items: _Items,
                 it: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True level of each (sample, item) (NaN for qualitative items) and the true verdict."""
    n = it.size
    lo, hi = items.lo[it], items.hi[it]
    two = ~np.isnan(lo) & ~np.isnan(hi)
    upper = np.where(two, rng.random(n) < 0.5, ~np.isnan(hi))
    none = np.isnan(lo) & np.isnan(hi)
    lim = np.where(upper, hi, lo)
    d = np.where(upper, 1.0, -1.0)
    s, _ = items.sigmas(it, np.where(none, items.typical[it], lim))
    u = rng.random(n)
    beyond = u < cfg.nonconform_rate
    near = ~beyond & (u < cfg.nonconform_rate + cfg.near_limit_rate)
    v = rng.random(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        inner = lim - 3.0 * d * s
        hi_only = np.isnan(lo) & ~np.isnan(hi)
        top = np.maximum(inner, 0.06 * hi)
        comfy_hi = np.exp(np.log(0.02 * hi) + v * (np.log(top) - np.log(0.02 * hi)))
        comfy_lo = inner + v * np.maximum(7.0 * s, 0.3 * np.abs(lo))
        a, b = lo + 3.0 * s, hi - 3.0 * s
        comfy_two = np.where(a < b, a + v * (b - a), 0.5 * (lo + hi))
        comfy = np.where(two, comfy_two, np.where(hi_only, comfy_hi, comfy_lo))
        value = np.where(beyond, lim + d * rng.exponential(2.0, n) * s,
                         np.where(near, lim - d * 3.0 * rng.random(n) * s, comfy))
        value = np.where(none, items.typical[it] * rng.lognormal(0.0, 0.5, n), value)
        fail = (value > hi) | (value < lo)
    quant = items.quant[it]
    value = np.where(quant, value, np.nan)
    true_pass = np.where(quant, ~fail, rng.random(n) >= cfg.qualitative_fail_rate)
    return value, true_pass


def _report(cfg: NationalConfig, rng: np.random.Generator, items: _Items, labs: _Labs, lab: np.ndarray,
            it: np.ndarray, true: np.ndarray, true_pass: np.ndarray) -> dict[str, np.ndarray]:
    """What each lab reports on (item, true value)."""
    n = lab.size
    quant = items.quant[it]
    sR, sr = items.sigmas(it, true)
    z_item = _hash_normal(cfg.seed, lab.astype(np.int64) * cfg.n_items + it)
    rho = cfg.lab_share_rho
    bias = items.sigma_L()[it] * (math.sqrt(rho) * labs.z_lab[lab] + math.sqrt(1.0 - rho) * z_item)
    reps = labs.replicates[lab]
    noise = sr * labs.noise[lab] / np.sqrt(np.maximum(reps, 1))
    with np.errstate(invalid="ignore"):
        x = true + (bias + labs.shift[lab]) * sR + noise * rng.standard_normal(n)
        lod = items.lod[it]
        censored = quant & (x < lod)
        U = np.where(labs.reports_u[lab] & quant, 2.0 * sR * labs.u_factor[lab], np.nan)
        lo, hi = items.lo[it], items.hi[it]
        fail = (x > hi) | (x < lo)
        # A guard band of U: a conforming number within U of a limit is declared a fail.
        guard = (labs.rule[lab] == 1) & ~np.isnan(U) & (((hi - x) < U) | ((x - lo) < U))
        fail = np.where(censored, lod < lo, fail | guard)
    wrong = rng.random(n) < labs.q_error[lab]
    fail = np.where(quant, fail, true_pass == wrong)
    return {
        "x": np.where(censored | ~quant, np.nan, x), "censored": censored,
        "limit": np.where(censored, lod, np.nan), "U": U, "reps": reps, "fail": fail,
        "rule": labs.rule[lab],
    }


# ---------------------------------------------------------------------------------------- build


def build_national(config: NationalConfig | None = None) -> National:
    cfg = config or NationalConfig()
    rng = np.random.default_rng(cfg.seed)
    items = _items(cfg, rng)
    labs = _labs(cfg, rng)
    per_cat = np.bincount(items.cat, minlength=cfg.n_categories)
    n_samples = int(math.ceil(cfg.n_pairs / max(cfg.items_per_sample - 0.2, 0.5)))
    for _ in range(8):
        s_cat, s_orig, s_ret = _samples(cfg, rng, labs, items, n_samples)
        m = np.minimum(1 + rng.poisson(cfg.items_per_sample - 1.0, s_cat.size), per_cat[s_cat])
        end = np.cumsum(m)
        cut = int(np.searchsorted(end, cfg.n_pairs, side="left"))
        if cut < s_cat.size:
            break
        # small categories (few items) or partners not found: more samples, drawn afresh
        n_samples = 2 * n_samples + 10
    else:
        raise ValueError("n_pairs too large for the samples drawn")
    m = m[: cut + 1].copy()
    m[-1] -= int(end[cut] - cfg.n_pairs)
    s_cat, s_orig, s_ret = s_cat[: cut + 1], s_orig[: cut + 1], s_ret[: cut + 1]
    n_s = s_cat.size

    # Each sample's items: a run of m consecutive items of its category from a random start.
    by_cat_start = np.r_[0, np.cumsum(per_cat)[:-1]]
    first = rng.integers(0, per_cat[s_cat])
    p_sample = np.repeat(np.arange(n_s), m)
    offset = np.arange(p_sample.size) - np.repeat(np.cumsum(m) - m, m)
    it = by_cat_start[s_cat[p_sample]] + (first[p_sample] + offset) % per_cat[s_cat[p_sample]]

    span = max(cfg.window_days - 120, 1)
    s_day = np.sort(rng.integers(0, span, n_s))  # sample codes in sampling order
    d1 = s_day + rng.integers(7, 26, n_s)
    d2 = d1 + rng.integers(20, 61, n_s)
    d3 = d2 + rng.integers(10, 31, n_s)
    earliest = cfg.as_of - timedelta(days=cfg.window_days - 1)

    tables = _tables(cfg, rng, items, labs, s_cat, s_orig, s_day, earliest)
    lab_codes = tables["lab_codes"]
    gen = _PairGen(cfg=cfg, items=items, labs=labs, tables=tables, p_sample=p_sample.astype(np.int32),
                   it=it.astype(np.int32), s_orig=s_orig, s_ret=s_ret, d1=d1, d2=d2, d3=d3,
                   earliest=earliest)
    return National(
        config=cfg, categories=tables["categories"], labs=tables["labs"], items=tables["items"],
        truth=pl.DataFrame({
            "lab_code": lab_codes, "kind": np.array(LAB_KINDS)[labs.kind], "shift": labs.shift,
            "group": labs.group, "province": np.array(_PROVINCES)[labs.province],
            "volume": labs.volume * cfg.n_pairs / labs.volume.sum(),
        }),
        _gen=gen,
    )


# Pairs are drawn in blocks of this many, each from its own generator seeded by (seed, block), so
# that the data do not depend on how a consumer reads them and the temporaries stay block-sized.
PAIR_BLOCK = 1_000_000

# The pair frame's code columns: a few thousand distinct values each over millions of rows
# (sample codes, nearly one per sample, stay strings).
CODE_COLUMNS = ("item_code", "category_code", "kind", "lab_1", "lab_2", "lab_3")


@dataclass(frozen=True)
class _PairGen:
    cfg: NationalConfig
    items: _Items
    labs: _Labs
    tables: dict
    p_sample: np.ndarray
    it: np.ndarray
    s_orig: np.ndarray
    s_ret: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    d3: np.ndarray
    earliest: date

    def block(self, k: int, *, categorical: bool = False) -> pl.DataFrame:
        cfg, items, labs = self.cfg, self.items, self.labs
        lo, hi = k * PAIR_BLOCK, min((k + 1) * PAIR_BLOCK, self.it.size)
        rng = np.random.default_rng([cfg.seed, 1 + k])
        p_sample = self.p_sample[lo:hi].astype(np.int64)
        it = self.it[lo:hi].astype(np.int64)
        s_orig, s_ret = self.s_orig[p_sample], self.s_ret[p_sample]
        true, true_pass = _true_values(cfg, rng, items, it)
        o = _report(cfg, rng, items, labs, s_orig, it, true, true_pass)
        r = _report(cfg, rng, items, labs, s_ret, it, true, true_pass)

        # Arbitration of reversals and large discrepancies, by a third lab of the region.
        both = ~np.isnan(o["x"]) & ~np.isnan(r["x"])
        sR_lvl, _ = items.sigmas(it, np.where(both, 0.5 * (o["x"] + r["x"]), 0.0))
        with np.errstate(invalid="ignore"):
            big = both & (np.abs(o["x"] - r["x"]) > 2.8 * sR_lvl)
        u = rng.random(it.size)
        want = (((o["fail"] != r["fail"]) & (u < cfg.arbitrate_reversals))
                | (big & (u < cfg.arbitrate_discrepancies)))
        want &= labs.group[s_orig] == 0
        a_rows = np.flatnonzero(want)
        a_lab = _partner(rng, _pool(labs, 7), labs, items.cat[it[a_rows]], [s_orig[a_rows], s_ret[a_rows]],
                         0.0, 1.0)
        a_rows, a_lab = a_rows[a_lab >= 0], a_lab[a_lab >= 0]
        a = _report(cfg, rng, items, labs, a_lab, it[a_rows], true[a_rows], true_pass[a_rows])
        return _pair_frame(items, self.tables, lo, p_sample, it, o, r, a, a_rows, a_lab, s_orig, s_ret,
                           self.d1[p_sample], self.d2[p_sample], self.d3[p_sample][a_rows], self.earliest,
                           categorical)


def _tables(cfg: NationalConfig, rng: np.random.Generator, items: _Items, labs: _Labs, s_cat: np.ndarray,
            s_orig: np.ndarray, s_day: np.ndarray, earliest: date) -> dict:
    cat_codes = _codes("C", cfg.n_categories, 3)
    item_codes = _codes("I", cfg.n_items, 4)
    lab_codes = _codes("L", cfg.n_labs, 4)
    sample_codes = _codes("S", s_cat.size, 8)
    provinces = pl.Series(_PROVINCES, dtype=pl.String)

    def text(a: np.ndarray) -> pl.Series:
        return pl.Series(a, dtype=pl.Float64, nan_to_null=True).cast(pl.String)

    categories = pl.DataFrame({
        "category_code": cat_codes,
        "name": "产品类别" + cat_codes,
        "name_en": "Product category " + cat_codes,
    })
    model = pl.Series(_MODELS, dtype=pl.String).gather(pl.Series(items.model).filter(items.model >= 0))
    model_full = pl.Series([None] * cfg.n_items, dtype=pl.String).scatter(np.flatnonzero(items.model >= 0), model)
    items_table = pl.DataFrame({
        "item_code": item_codes,
        "category_code": cat_codes.gather(items.cat),
        "name": "检验项目" + item_codes,
        "name_en": "Test item " + item_codes,
        "unit": pl.Series(_UNITS).gather(items.unit).set(pl.Series(~items.quant), None),
        "kind": np.where(items.quant, "quantitative", "qualitative"),
        "method": pl.Series(["GB/T " + str(10000 + i % 9000) for i in range(cfg.n_items)]),
        "repeatability_sd": text(np.where(items.model == _HOR, np.nan, items.sr)),
        "reproducibility_sd": text(np.where(items.model == _HOR, np.nan, items.sR)),
        "precision_model": model_full,
        "horwitz_scale": text(items.hscale),
        "lower_limit": text(items.lo),
        "upper_limit": text(items.hi),
        "lod": text(items.lod),
    })
    scope_lab, scope_cat = np.nonzero(labs.scope)
    scopes = (
        pl.DataFrame({"lab": scope_lab, "code": cat_codes.gather(scope_cat)})
        .group_by("lab", maintain_order=True)
        .agg(pl.col("code").str.join(";"))
    )
    labs_table = pl.DataFrame({
        "lab_code": lab_codes,
        "name": provinces.gather(labs.province) + "检验检测机构" + lab_codes,
        "province": provinces.gather(labs.province),
        "accreditation_no": "CNAS L" + pl.Series(rng.integers(10000, 99999, cfg.n_labs)).cast(pl.String),
        "status": pl.repeat("active", cfg.n_labs, eager=True, dtype=pl.String),
    }).with_row_index("lab").join(scopes, on="lab", how="left").rename({"code": "scopes"}).drop("lab")

    def samples() -> pl.DataFrame:
        # Built when asked for (millions of rows the in-memory benchmarks never read), from a
        # generator of its own so that the data do not depend on when.
        srng = np.random.default_rng([cfg.seed, 0])
        own = srng.random(s_cat.size) < 0.8
        prov = np.where(own, labs.province[s_orig], srng.integers(0, len(_PROVINCES), s_cat.size))
        return pl.DataFrame({
            "sample_code": sample_codes,
            "category_code": cat_codes.gather(s_cat),
            "enterprise": "企业" + pl.Series(srng.integers(1, 200_000, s_cat.size)).cast(pl.String),
            "sampled_on": pl.Series(s_day, dtype=pl.Int64),
            "province": provinces.gather(prov),
            "original_lab_code": lab_codes.gather(s_orig),
        }).with_columns(
            (pl.lit(earliest) + pl.duration(days=pl.col("sampled_on"))).cast(pl.Date).cast(pl.String)
            .alias("sampled_on")
        )

    return {"categories": categories, "items": items_table, "labs": labs_table, "samples": samples,
            "lab_codes": lab_codes, "item_codes": item_codes, "cat_codes": cat_codes,
            "sample_codes": sample_codes}


def _pair_frame(items: _Items, tables: dict, first_id: int, p_sample: np.ndarray, it: np.ndarray,
                o: dict, r: dict, a: dict, a_rows: np.ndarray, a_lab: np.ndarray, lab1: np.ndarray,
                lab2: np.ndarray, d1: np.ndarray, d2: np.ndarray, d3: np.ndarray,
                earliest: date, categorical: bool = False) -> pl.DataFrame:
    n = it.size
    # Code tables cast once (a few thousand codes): the gathers below then copy 4-byte ids.
    tables = {
        k: (v.cast(pl.Categorical) if categorical and k in ("item_codes", "cat_codes", "lab_codes")
            else v)
        for k, v in tables.items()
    }
    kinds = pl.Series(["qualitative", "quantitative"], dtype=pl.Categorical if categorical else pl.String)
    models = pl.Series([*_MODELS, None], dtype=pl.String)
    verdicts = pl.Series(["pass", "fail"], dtype=pl.String)
    rules = pl.Series(["simple", "guard_band", None], dtype=pl.String)

    def f64(x: np.ndarray) -> pl.Series:
        return pl.Series(x, dtype=pl.Float64, nan_to_null=True)

    item_model = np.where(items.model >= 0, items.model, 3)
    cols: dict[str, pl.Series] = {
        "pair_id": pl.Series(np.arange(first_id + 1, first_id + n + 1, dtype=np.int64)),
        "sample_code": tables["sample_codes"].gather(p_sample),
        "item_code": tables["item_codes"].gather(it),
        "category_code": tables["cat_codes"].gather(items.cat[it]),
        "kind": kinds.gather(items.quant[it].astype(np.int8)),
        "precision_model": models.gather(item_model[it]),
        "repeatability_sd": f64(np.where(items.model == _HOR, np.nan, items.sr)[it]),
        "reproducibility_sd": f64(np.where(items.model == _HOR, np.nan, items.sR)[it]),
        "horwitz_scale": f64(items.hscale[it]),
        "lower_limit": f64(items.lo[it]),
        "upper_limit": f64(items.hi[it]),
        "lod": f64(items.lod[it]),
    }
    lab_codes = tables["lab_codes"]
    day0 = (earliest - date(1970, 1, 1)).days
    for j, rep, lab, day in (("1", o, lab1, d1), ("2", r, lab2, d2)):
        cols.update(_side_columns(j, rep, lab, day, lab_codes, verdicts, rules, day0))
    side3 = _side_columns("3", a, a_lab, d3, lab_codes, verdicts, rules, day0)
    frame = pl.DataFrame(cols)
    # The arbitration side is present on a few % of pairs: scatter it into null columns.
    full3 = {}
    for name, s in side3.items():
        full3[name] = pl.Series(name, [None], dtype=s.dtype).extend_constant(None, n - 1).scatter(a_rows, s)
    schema = {c: pl.Categorical() if categorical and c in CODE_COLUMNS else t for c, t in PAIR_INPUT_SCHEMA.items()}
    return frame.with_columns(**full3).select([pl.col(c).cast(t) for c, t in schema.items()])


def _side_columns(j: str, rep: dict, lab: np.ndarray, day: np.ndarray, lab_codes: pl.Series,
                  verdicts: pl.Series, rules: pl.Series, day0: int) -> dict[str, pl.Series]:
    reps = rep["reps"]
    rule = np.where(rep["rule"] < 0, 2, rep["rule"])
    return {
        f"lab_{j}": lab_codes.gather(lab),
        f"value_{j}": pl.Series(rep["x"], dtype=pl.Float64, nan_to_null=True),
        f"censored_{j}": pl.Series(rep["censored"], dtype=pl.Boolean),
        f"censor_limit_{j}": pl.Series(rep["limit"], dtype=pl.Float64, nan_to_null=True),
        f"expanded_uncertainty_{j}": pl.Series(rep["U"], dtype=pl.Float64, nan_to_null=True),
        f"coverage_k_{j}": pl.Series(np.where(np.isnan(rep["U"]), np.nan, 2.0), dtype=pl.Float64, nan_to_null=True),
        f"replicates_{j}": pl.Series(np.where(reps > 0, reps, 0), dtype=pl.Int32).replace(0, None),
        f"verdict_{j}": verdicts.gather(rep["fail"].astype(np.int8)),
        f"decision_rule_{j}": rules.gather(rule),
        f"reported_on_{j}": pl.Series((day + day0).astype(np.int32)).cast(pl.Date),
    }


def _results(pairs: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """Result rows (original, retest, arbitration) in the intake layout, every cell text."""
    unit = items.select("item_code", "unit")
    parts = []
    for j, role in (("1", "original"), ("2", "retest"), ("3", "arbitration")):
        side = pairs.lazy().filter(pl.col(f"lab_{j}").is_not_null())
        limit = pl.col(f"censor_limit_{j}").cast(pl.String)
        # One in ten censored results is written as a bare ND (intake reads the item's LOD).
        value = (
            pl.when(pl.col(f"censored_{j}") & (pl.col("pair_id") % 10 == 0)).then(pl.lit("ND"))
            .when(pl.col(f"censored_{j}")).then(pl.lit("<") + limit)
            .otherwise(pl.col(f"value_{j}").cast(pl.String))
        )
        parts.append(side.select(
            "sample_code", "item_code", pl.col(f"lab_{j}").alias("lab_code"), pl.lit(role).alias("role"),
            value.alias("value"),
            pl.col(f"expanded_uncertainty_{j}").cast(pl.String).alias("expanded_uncertainty"),
            pl.col(f"coverage_k_{j}").cast(pl.Int64).cast(pl.String).alias("coverage_k"),
            pl.col(f"replicates_{j}").cast(pl.String).alias("replicates"),
            pl.col(f"verdict_{j}").alias("verdict"),
            pl.col(f"decision_rule_{j}").alias("decision_rule"),
            pl.col(f"reported_on_{j}").cast(pl.String).alias("reported_on"),
        ))
    return (
        pl.concat(parts)
        .join(unit.lazy(), on="item_code", how="left", maintain_order="left")
        .select("sample_code", "item_code", "lab_code", "role", "value", "unit", "expanded_uncertainty",
                "coverage_k", "replicates", "verdict", "decision_rule", "reported_on")
        .collect()
    )
