"""A simulated world of testing labs and retest pairs, with the truth behind every number.

Used by the fairness tests (is grading fair to normal labs, does it catch bad ones?) and by
`labeval demo`. Everything is drawn from one ``numpy.random.default_rng(seed)``, so a config gives
the same world every time, and everything on pair-sized data is vectorised numpy/polars.

The model (ISO 5725-1/-2: σR² = σL² + σr²):

* Items, units, limits, LODs and precision come from the real catalogue
  (``labeval/data/catalogue.csv``). For a relative precision model σ scales with the level; for the
  Horwitz model σR is the Horwitz function of the level and σr = σR/2 (as scoring assumes).
* Every lab has its own bias on every item, drawn from the between-lab spread σL of the method,
  with a share ρ common to all of the lab's items:
  ``b = σL·(√ρ·z_lab + √(1−ρ)·z_lab,item)``. This spread is what a method's σR allows; it is not a
  defect. A reported value is the mean of n replicates: ``x = t + b + σr·ε/√n``.
* Volumes are very unequal (a few busy labs with over a thousand pairs, most with tens, some with
  a handful); each lab covers a subset of the product categories; retest partners are drawn among
  labs with the category in scope, preferably in the same province; some labs mostly test
  originals and some mostly retest.
* Optionally two isolated groups: a pair of labs that only retest each other (one of them biased
  in about half of the worlds) and a triangle with one biased lab.
* True values spread over the conforming region with some near and beyond the limit; values below
  the reporting limit are written as not detected; some labs use a guard band (ILAC-G8) and most
  report an expanded uncertainty (k = 2). Reversals and large discrepancies are often arbitrated
  by a third lab.
* Planted bad labs, one knob per kind (``BAD_KINDS``), recorded in ``World.truth``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources

import msgspec
import numpy as np
import polars as pl

from scoring.schema import PAIR_INPUT_SCHEMA

BAD_KINDS = (
    "biased",  # extra bias of ±magnitude σR on every item
    "noisy",  # repeatability sd × magnitude
    "shading",  # results just over (or just under) the limit reported just under it, with a pass
    "nd_hider",  # not detected reported for a share (magnitude) of results clearly above the LOD
    "verdict_flipper",  # a verdict contradicting its own number, far from the limit (rate = magnitude)
    "careless_qualitative",  # wrong qualitative verdicts (rate = magnitude)
    "gross_errors",  # unit slips (×10, ×0.1) and digit transpositions (rate = magnitude)
)
KINDS = ("normal", *BAD_KINDS)
GROUPS = ("main", "isolated_pair", "isolated_triangle")
# Per-result defect labels in World.result_truth.defect (null: an honest result).
DEFECTS = ("shaded", "hidden_nd", "flipped_verdict", "wrong_qualitative", "unit_slip", "transposition")
INTAKE_KINDS = ("categories", "labs", "items", "samples", "results")

PROVINCES = (
    "北京", "天津", "河北", "山西", "内蒙古", "辽宁", "吉林", "黑龙江", "上海", "江苏", "浙江", "安徽",
    "福建", "江西", "山东", "河南", "湖北", "湖南", "广东", "广西", "海南", "重庆", "四川", "贵州",
    "云南", "陕西", "甘肃", "青海", "宁夏", "新疆",
)
_LAB_NAMES = ("产品质量监督检验研究院", "产品质量检验检测中心", "纤维质量监测中心", "计量测试研究院",
              "质量技术检测有限公司", "检验认证集团有限公司")
_ENTERPRISE_WORDS = ("华宏", "信达", "恒瑞", "金诚", "永昌", "鑫源", "东方", "宏远", "天成", "嘉禾")
_ENTERPRISE_SUFFIX = ("制衣有限公司", "玩具厂", "电线电缆有限公司", "家具有限公司", "鞋业有限公司",
                      "卫生用品有限公司", "电器有限公司", "化肥有限公司", "塑料制品厂", "钢铁集团", "水泥有限公司")
# Units of trace contaminants: below a reporting limit these are written as not detected.
_TRACE_UNITS = ("mg/kg", "% (mass fraction)", "mg/m3", "CFU/g", "mg/dm2")

_ABS, _REL, _HOR = 0, 1, 2
_ROLE_ORIGINAL, _ROLE_RETEST, _ROLE_ARBITRATION = 0, 1, 2
_ROLES = ("original", "retest", "arbitration")


class WorldConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Knobs of a world. Shares of bad kinds are of the labs in the main (connected) group."""

    n_labs: int = 120
    seed: int = 0
    as_of: date = date(2026, 11, 28)
    # Samples are taken so that every result is reported within this many days before as_of.
    window_days: int = 1095

    # Between-lab bias: share of a lab's bias variance common to all its items.
    lab_share_rho: float = 0.5

    # Volumes, in pairs (as original or retest lab) per lab: lognormal for most labs, a few busy ones.
    volume_median: float = 35.0
    volume_sigma: float = 1.0
    busy_share: float = 0.03
    busy_volume: float = 1500.0
    min_volume: float = 3.0
    # Scope: each lab covers 1 + Binomial(n_categories − 1, p) categories (busy labs: busy_scope_p).
    scope_p: float = 0.2
    busy_scope_p: float = 0.7
    # Probability that the retest lab is drawn from the original lab's province (when possible).
    same_province: float = 0.5
    # Shares of labs that mostly test originals / mostly retest (85 % of their pairs on that side).
    mostly_original_share: float = 0.15
    mostly_retest_share: float = 0.15

    # True values: share beyond a limit, share just inside it (within 3 σR), qualitative fails.
    nonconform_rate: float = 0.06
    near_limit_rate: float = 0.10
    qualitative_fail_rate: float = 0.05
    # Normal labs' wrong qualitative verdicts.
    qualitative_error: float = 0.01

    # Reporting habits.
    reports_u_share: float = 0.8
    guard_band_share: float = 0.2
    # Arbitration by a third lab: share of reversals / of other pairs with |d| > 2.8 σR.
    arbitrate_reversals: float = 0.6
    arbitrate_discrepancies: float = 0.3

    # Planted bad labs: share of main-group labs of each kind, and each kind's magnitude.
    biased_share: float = 0.04
    noisy_share: float = 0.03
    shading_share: float = 0.03
    nd_hider_share: float = 0.02
    verdict_flipper_share: float = 0.02
    careless_qualitative_share: float = 0.02
    gross_errors_share: float = 0.02
    biased_shift: float = 2.5  # σR
    noisy_factor: float = 4.0  # × σr
    # Shading: true values in [limit − lo·σR, limit + hi·σR] (upper limit; mirrored for a lower one)
    # are reported just inside the limit with probability shading_prob.
    shading_window: tuple[float, float] = (0.5, 3.0)
    shading_prob: float = 0.9
    nd_hide_share: float = 0.3
    flip_rate: float = 0.04
    careless_error: float = 0.2
    gross_rate: float = 0.03

    # Isolated groups: a pair (second lab biased in about half of the worlds) and a triangle
    # with one biased lab, each lab with about isolated_volume pairs.
    isolated_groups: bool = True
    isolated_volume: float = 150.0


@dataclass(frozen=True)
class World:
    config: WorldConfig
    # Canonical intake tables (every cell text, as a file would have it).
    categories: pl.DataFrame
    labs: pl.DataFrame
    items: pl.DataFrame
    samples: pl.DataFrame
    results: pl.DataFrame
    # scoring.schema.PAIR_INPUT_SCHEMA, built from the results as the grading run's SQL does.
    pairs: pl.DataFrame
    # One row per lab: lab_code, kind (KINDS), magnitude (signed shift in σR for biased), group
    # (GROUPS), province, planned_pairs (the volume drawn; realised counts vary around it).
    truth: pl.DataFrame
    # Planted bias of every lab on every item, in units of σR: bias (the normal between-lab part,
    # without a biased lab's extra shift), sigma_L (σL/σR of the item), in_scope.
    biases: pl.DataFrame
    # One row per result: sample_code, item_code, lab_code, role, true_value, value (the number
    # reported, null when censored or qualitative), true_verdict, defect (DEFECTS, or null).
    result_truth: pl.DataFrame

    def intake_tables(self) -> dict[str, pl.DataFrame]:
        """The intake tables in load order."""
        return {k: getattr(self, k) for k in INTAKE_KINDS}


def catalogue() -> pl.DataFrame:
    raw = resources.files("labeval").joinpath("data/catalogue.csv").read_bytes()
    return pl.read_csv(raw, infer_schema=False)


@dataclass(frozen=True)
class _Items:
    """The catalogue's items as numpy arrays (NaN for an empty number)."""

    code: np.ndarray
    unit: np.ndarray
    cat: np.ndarray  # category index
    quant: np.ndarray
    model: np.ndarray
    sr: np.ndarray
    sR: np.ndarray
    hscale: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    lod: np.ndarray
    # Reporting limit: below it a value is written as not detected (the LOD, else 10 % of the
    # upper limit for a trace contaminant); NaN when values are always written as numbers.
    rl: np.ndarray
    # A physically non-negative quantity (an upper limit only, and a positive one).
    nonneg: np.ndarray

    def sigmas(self, idx: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(σR, σr) of items idx at level (NaN for qualitative items)."""
        model = self.model[idx]
        a = np.abs(level)
        with np.errstate(invalid="ignore", divide="ignore"):
            hs = self.hscale[idx]
            hor = _horwitz(a * hs) / hs if (self.model == _HOR).any() else np.full(idx.size, np.nan)
            sR = np.where(model == _ABS, self.sR[idx], np.where(model == _REL, self.sR[idx] * a, hor))
            sr = np.where(model == _ABS, self.sr[idx], np.where(model == _REL, self.sr[idx] * a, 0.5 * hor))
        return sR, sr

    def sigma_L(self) -> np.ndarray:
        """σL/σR of each item (level-free for every model)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(self.model == _HOR, 0.5, self.sr / self.sR)
        return np.sqrt(np.clip(1.0 - ratio**2, 0.0, 1.0))


def _horwitz(c: np.ndarray) -> np.ndarray:
    # Thompson's (2000) modification, as in scoring.pairs; c is a mass fraction.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c < 1.2e-7, 0.22 * c, np.where(c <= 0.138, 0.02 * c**0.8495, 0.01 * np.sqrt(c)))


def _num(s: pl.Series) -> np.ndarray:
    return s.cast(pl.Float64, strict=False).fill_null(float("nan")).to_numpy()


def _items(cat: pl.DataFrame, cat_codes: list[str]) -> _Items:
    hscale = _num(cat["horwitz_scale"]) if "horwitz_scale" in cat.columns else np.full(cat.height, np.nan)
    model = cat["precision_model"].fill_null("").replace_strict(
        {"absolute": _ABS, "relative": _REL, "horwitz": _HOR}, default=-1, return_dtype=pl.Int8
    ).to_numpy()
    lo, hi, lod = _num(cat["lower_limit"]), _num(cat["upper_limit"]), _num(cat["lod"])
    quant = (cat["kind"] == "quantitative").to_numpy()
    nonneg = quant & np.isnan(lo) & (hi > 0)
    trace = nonneg & cat["unit"].is_in(_TRACE_UNITS).fill_null(False).to_numpy()
    rl = np.where(~np.isnan(lod), lod, np.where(trace, 0.1 * hi, np.nan))
    index = {c: i for i, c in enumerate(cat_codes)}
    return _Items(
        code=cat["item_code"].to_numpy(), unit=cat["unit"].fill_null("").to_numpy(),
        cat=np.array([index[c] for c in cat["category_code"]]),
        quant=quant, model=model, sr=_num(cat["repeatability_sd"]), sR=_num(cat["reproducibility_sd"]),
        hscale=hscale, lo=lo, hi=hi, lod=lod, rl=rl, nonneg=nonneg,
    )


@dataclass(frozen=True)
class _Labs:
    code: np.ndarray
    province: np.ndarray  # index into PROVINCES
    volume: np.ndarray
    orig_tendency: np.ndarray
    scope: np.ndarray  # bool (labs × categories)
    group: np.ndarray  # index into GROUPS
    kind: np.ndarray  # index into KINDS
    magnitude: np.ndarray
    bias: np.ndarray  # labs × items, σR units (the normal part)
    shift: np.ndarray  # extra bias of a biased lab, σR units
    noise: np.ndarray  # multiplier of σr
    replicates: np.ndarray
    reports_u: np.ndarray
    u_factor: np.ndarray
    guard_band: np.ndarray
    rule_blank: np.ndarray  # writes no decision rule
    chinese_verdicts: np.ndarray
    nd_style: np.ndarray  # 0: 未检出, 1: ND, 2: <L


def build_world(config: WorldConfig | None = None) -> World:
    cfg = config or WorldConfig()
    rng = np.random.default_rng(cfg.seed)
    cat = catalogue()
    categories = cat.select(
        pl.col("category_code"), pl.col("category_name_zh").alias("name"), pl.col("category_name_en").alias("name_en")
    ).unique("category_code", keep="first", maintain_order=True)
    cat_codes = categories["category_code"].to_list()
    items = _items(cat, cat_codes)
    labs = _labs(cfg, rng, items, len(cat_codes))

    s_cat, s_orig, s_ret, s_arb = _samples(cfg, rng, labs, items, len(cat_codes))
    # _samples draws category by category: shuffle, then number the samples in the order they
    # were taken (sorted days), so codes are chronological and categories mixed over time.
    n_s = s_cat.size
    shuffle = rng.permutation(n_s)
    s_cat, s_orig, s_ret, s_arb = s_cat[shuffle], s_orig[shuffle], s_ret[shuffle], s_arb[shuffle]
    earliest = cfg.as_of - timedelta(days=cfg.window_days - 1)
    span = max(1, cfg.window_days - 115)
    s_day = np.sort(rng.integers(0, span, n_s))
    d_orig = s_day + rng.integers(7, 26, n_s)
    d_ret = d_orig + rng.integers(20, 61, n_s)
    d_arb = d_ret + rng.integers(10, 31, n_s)

    # One (sample, item) per item of the sample's category.
    per_cat = np.bincount(items.cat, minlength=len(cat_codes))
    by_cat = np.argsort(items.cat, kind="stable")
    cat_start = np.concatenate([[0], np.cumsum(per_cat)[:-1]])
    m = per_cat[s_cat]
    p_sample = np.repeat(np.arange(n_s), m)
    offset = np.arange(p_sample.size) - np.repeat(np.cumsum(m) - m, m)
    p_item = by_cat[cat_start[s_cat][p_sample] + offset]
    n_p = p_item.size

    true, true_pass = _true_values(cfg, rng, items, p_item)
    o = _report(cfg, rng, items, labs, s_orig[p_sample], p_item, true, true_pass, arbitration=False)
    r = _report(cfg, rng, items, labs, s_ret[p_sample], p_item, true, true_pass, arbitration=False)

    # Arbitration of reversals and of large discrepancies, by the sample's third lab.
    both = ~np.isnan(o["x"]) & ~np.isnan(r["x"])
    lvl = np.where(both, 0.5 * (o["x"] + r["x"]), 0.0)
    sR_lvl, _ = items.sigmas(p_item, lvl)
    with np.errstate(invalid="ignore"):
        big = both & (np.abs(o["x"] - r["x"]) > 2.8 * sR_lvl)
    reversal = o["fail"] != r["fail"]
    u = rng.random(n_p)
    arb = (s_arb[p_sample] >= 0) & (
        (reversal & (u < cfg.arbitrate_reversals)) | (~reversal & big & (u < cfg.arbitrate_discrepancies))
    )
    a_pairs = np.flatnonzero(arb)
    a = _report(cfg, rng, items, labs, s_arb[p_sample[a_pairs]], p_item[a_pairs], true[a_pairs],
                true_pass[a_pairs], arbitration=True)

    sample_codes = pl.select(
        pl.format("S{}", pl.int_range(0, n_s, eager=False).cast(pl.String).str.zfill(7))
    ).to_series()
    rows = _result_rows(
        items, labs, sample_codes, earliest,
        [(o, np.arange(n_p), _ROLE_ORIGINAL, d_orig), (r, np.arange(n_p), _ROLE_RETEST, d_ret),
         (a, a_pairs, _ROLE_ARBITRATION, d_arb)],
        p_sample, p_item, true, true_pass,
    )
    typed = rows["typed"]
    return World(
        config=cfg,
        categories=categories,
        labs=_labs_table(labs, cat_codes, rng),
        items=_items_table(cat),
        samples=_samples_table(rng, labs, sample_codes, s_cat, s_orig, s_day, earliest, cat_codes),
        results=_results_text(typed, rows["text"]),
        pairs=_pairs(typed, cat, items),
        truth=pl.DataFrame({
            "lab_code": labs.code,
            "kind": np.array(KINDS)[labs.kind],
            "magnitude": labs.magnitude,
            "group": np.array(GROUPS)[labs.group],
            "province": np.array(PROVINCES)[labs.province],
            "planned_pairs": labs.volume,
        }),
        biases=pl.DataFrame({
            "lab_code": np.repeat(labs.code, items.code.size),
            "item_code": np.tile(items.code, labs.code.size),
            "bias": labs.bias.ravel(),
            "sigma_L": np.tile(items.sigma_L(), labs.code.size),
            "in_scope": labs.scope[:, items.cat].ravel(),
        }).filter(pl.col("bias").is_not_nan()),
        result_truth=rows["truth"],
    )


def _labs(cfg: WorldConfig, rng: np.random.Generator, items: _Items, n_cat: int) -> _Labs:
    n = cfg.n_labs
    n_iso = 5 if cfg.isolated_groups else 0
    if n < n_iso + 6:
        raise ValueError(f"n_labs must be at least {n_iso + 6}")
    order = rng.permutation(n)
    group = np.zeros(n, dtype=np.int8)
    if n_iso:
        group[order[:2]] = 1
        group[order[2:5]] = 2
    main = np.sort(order[n_iso:])

    busy = rng.random(n) < cfg.busy_share
    volume = np.where(
        busy,
        cfg.busy_volume * rng.lognormal(0.0, 0.3, n),
        cfg.volume_median * rng.lognormal(0.0, cfg.volume_sigma, n),
    )
    volume = np.maximum(volume, cfg.min_volume)
    iso = group > 0
    volume[iso] = cfg.isolated_volume * rng.lognormal(0.0, 0.2, int(iso.sum()))

    side = rng.choice(3, n, p=[cfg.mostly_original_share, cfg.mostly_retest_share,
                               1.0 - cfg.mostly_original_share - cfg.mostly_retest_share])
    orig_tendency = np.where(side == 0, 0.85, np.where(side == 1, 0.15, rng.uniform(0.35, 0.65, n)))
    prov_w = rng.gamma(1.5, 1.0, len(PROVINCES))
    province = rng.choice(len(PROVINCES), n, p=prov_w / prov_w.sum())

    # Scopes: popular categories are covered by more labs; every category by at least 4 main labs.
    pop = rng.gamma(3.0, 1.0, n_cat)
    pop /= pop.sum()
    k = 1 + rng.binomial(n_cat - 1, np.where(busy, cfg.busy_scope_p, cfg.scope_p))
    scope = np.zeros((n, n_cat), dtype=bool)
    for i in range(n):  # per lab, not per pair
        scope[i, rng.choice(n_cat, k[i], replace=False, p=pop)] = True
    for c in range(n_cat):
        have = scope[main, c].sum()
        if have < 4:
            scope[rng.choice(main[~scope[main, c]], 4 - have, replace=False), c] = True
    if n_iso:
        scope[iso] = False
        pair_cat, tri_cat = rng.choice(n_cat, 2, replace=True)
        scope[group == 1, pair_cat] = True
        scope[group == 2, tri_cat] = True

    kind = np.zeros(n, dtype=np.int8)
    shares = [cfg.biased_share, cfg.noisy_share, cfg.shading_share, cfg.nd_hider_share,
              cfg.verdict_flipper_share, cfg.careless_qualitative_share, cfg.gross_errors_share]
    counts = [int(round(s * main.size)) for s in shares]
    if sum(counts) > main.size:
        raise ValueError("the shares of bad kinds add up to more than the labs")
    picks = rng.permutation(main)
    start = 0
    for j, c in enumerate(counts):
        kind[picks[start:start + c]] = j + 1
        start += c
    if n_iso:
        pair = order[:2]
        if rng.random() < 0.5:
            kind[pair[1]] = KINDS.index("biased")
        kind[order[2 + rng.integers(3)]] = KINDS.index("biased")
    sign = rng.choice([-1.0, 1.0], n)
    mag_of_kind = np.array([0.0, cfg.biased_shift, cfg.noisy_factor, cfg.shading_prob, cfg.nd_hide_share,
                            cfg.flip_rate, cfg.careless_error, cfg.gross_rate])
    magnitude = mag_of_kind[kind] * np.where(kind == 1, sign, 1.0)

    rho = cfg.lab_share_rho
    z = math.sqrt(rho) * rng.standard_normal((n, 1)) + math.sqrt(1.0 - rho) * rng.standard_normal((n, items.code.size))
    bias = z * items.sigma_L()[None, :]

    reports_u = rng.random(n) < cfg.reports_u_share
    return _Labs(
        code=np.array([f"L{i:04d}" for i in range(1, n + 1)]),
        province=province, volume=volume, orig_tendency=orig_tendency, scope=scope, group=group,
        kind=kind, magnitude=magnitude, bias=bias,
        shift=np.where(kind == 1, magnitude, 0.0),
        noise=np.where(kind == 2, cfg.noisy_factor, 1.0),
        replicates=rng.choice([1, 2, 3], n, p=[0.5, 0.35, 0.15]),
        reports_u=reports_u,
        u_factor=rng.uniform(0.7, 1.2, n),
        guard_band=reports_u & (rng.random(n) < cfg.guard_band_share / max(cfg.reports_u_share, 1e-9)),
        rule_blank=~reports_u & (rng.random(n) < 0.5),
        chinese_verdicts=rng.random(n) < 0.5,
        nd_style=rng.integers(0, 3, n),
    )


def _samples(cfg: WorldConfig, rng: np.random.Generator, labs: _Labs, items: _Items,
             n_cat: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(category, original lab, retest lab, arbiter lab or −1) per sample."""
    per_cat = np.bincount(items.cat, minlength=n_cat)
    k = labs.scope.sum(axis=1)
    out = []
    pools = [(c, np.flatnonzero(labs.scope[:, c] & (labs.group == 0))) for c in range(n_cat)]
    for g in (1, 2):
        members = np.flatnonzero(labs.group == g)
        if members.size:
            pools.append((int(np.flatnonzero(labs.scope[members[0]])[0]), members))
    for c, pool in pools:
        if pool.size < 2:
            continue
        w = labs.volume[pool] / k[pool]
        n = int(rng.poisson(w.sum() / (2.0 * per_cat[c])))
        o, r, a = _draw_partners(cfg, rng, labs, pool, w, n)
        out.append((np.full(n, c), pool[o], pool[r], np.where(a >= 0, pool[np.maximum(a, 0)], -1)))
    return tuple(np.concatenate(col) for col in zip(*out))  # type: ignore[return-value]


def _draw_partners(cfg: WorldConfig, rng: np.random.Generator, labs: _Labs, pool: np.ndarray, w: np.ndarray,
                   n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions in pool of the original, retest and arbitration labs of n samples."""
    K = pool.size
    t = labs.orig_tendency[pool]
    p_orig = w * t / (w * t).sum()
    orig = rng.choice(K, n, p=p_orig)

    # Retest: from the original lab's province with probability same_province (when another lab
    # of that province has the category), else from the whole pool.
    w_ret = w * (1.0 - t)
    prov = labs.province[pool]
    order = np.argsort(prov, kind="stable")
    cum = np.cumsum(w_ret[order])
    sorted_prov = prov[order]
    b_start = np.searchsorted(sorted_prov, prov[orig], side="left")
    b_end = np.searchsorted(sorted_prov, prov[orig], side="right")
    base = np.where(b_start > 0, cum[np.maximum(b_start - 1, 0)], 0.0)
    total = cum[b_end - 1] - base
    local = (rng.random(n) < cfg.same_province) & (total - w_ret[orig] > 1e-9 * cum[-1])
    p_ret = w_ret / w_ret.sum()
    ret = np.empty(n, dtype=np.int64)
    pending = np.arange(n)
    while pending.size:
        loc = local[pending]
        ret[pending[~loc]] = rng.choice(K, int((~loc).sum()), p=p_ret)
        li = pending[loc]
        target = base[li] + rng.random(li.size) * total[li]
        ret[li] = order[np.minimum(np.searchsorted(cum, target, side="right"), b_end[li] - 1)]
        pending = pending[ret[pending] == orig[pending]]

    arb = np.full(n, -1, dtype=np.int64)
    if K >= 3:
        p_arb = w / w.sum()
        pending = np.arange(n)
        while pending.size:
            arb[pending] = rng.choice(K, pending.size, p=p_arb)
            pending = pending[(arb[pending] == orig[pending]) | (arb[pending] == ret[pending])]
    return orig, ret, arb


def _nearest_limit(items: _Items, it: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(limit, direction) of the limit nearest to x: direction +1 for an upper limit (the conforming
    side is below), −1 for a lower one; NaN limit when the item has none."""
    lo, hi = items.lo[it], items.hi[it]
    with np.errstate(invalid="ignore"):
        use_hi = np.isnan(lo) | (~np.isnan(hi) & (np.abs(hi - x) <= np.abs(x - lo)))
    return np.where(use_hi, hi, lo), np.where(use_hi, 1.0, -1.0)


def _true_values(cfg: WorldConfig, rng: np.random.Generator, items: _Items,
                 it: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True level of each (sample, item) (NaN for qualitative items) and the true verdict."""
    n = it.size
    lo, hi = items.lo[it], items.hi[it]
    two = ~np.isnan(lo) & ~np.isnan(hi)
    upper = np.where(two, rng.random(n) < 0.5, ~np.isnan(hi))
    lim = np.where(upper, hi, lo)
    d = np.where(upper, 1.0, -1.0)  # direction from the conforming side towards "beyond"
    s, _ = items.sigmas(it, lim)

    u = rng.random(n)
    beyond = u < cfg.nonconform_rate
    near = ~beyond & (u < cfg.nonconform_rate + cfg.near_limit_rate)
    v = rng.random(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Comfortably conforming: between 3 σR inside the limit and the far end of the range.
        inner = lim - 3.0 * d * s
        hi_only = np.isnan(lo) & ~np.isnan(hi)
        trace_top = np.maximum(inner, 0.06 * hi)
        comfy_hi_only = np.where(
            hi > 0, np.exp(np.log(0.03 * hi) + v * (np.log(trace_top) - np.log(0.03 * hi))), inner - 7.0 * s * v
        )
        comfy_lo_only = inner + v * np.maximum(7.0 * s, 0.3 * np.abs(lo))
        s_lo, _ = items.sigmas(it, lo)
        s_hi, _ = items.sigmas(it, hi)
        a, b = lo + 3.0 * s_lo, hi - 3.0 * s_hi
        comfy_two = np.where(a < b, a + v * (b - a), 0.5 * (lo + hi))
        comfy = np.where(two, comfy_two, np.where(hi_only, comfy_hi_only, comfy_lo_only))
        value = np.where(
            beyond, lim + d * rng.exponential(2.0, n) * s,
            np.where(near, lim - d * 3.0 * rng.random(n) * s, comfy),
        )
    value = np.where(items.quant[it], value, np.nan)
    with np.errstate(invalid="ignore"):
        fail_q = (value > hi) | (value < lo)
    true_pass = np.where(items.quant[it], ~fail_q, rng.random(n) >= cfg.qualitative_fail_rate)
    return value, true_pass


def _round_sig(x: np.ndarray, digits: int) -> np.ndarray:
    """x rounded to `digits` significant digits (0 and NaN unchanged)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = np.floor(np.log10(np.abs(x)))
        scale = 10.0 ** (digits - 1 - np.where(np.isfinite(mag), mag, 0.0))
        return np.where((x == 0) | ~np.isfinite(x), x, np.round(x * scale) / scale)


def _report(cfg: WorldConfig, rng: np.random.Generator, items: _Items, labs: _Labs, lab: np.ndarray,
            it: np.ndarray, true: np.ndarray, true_pass: np.ndarray, *, arbitration: bool) -> dict[str, np.ndarray]:
    """What each lab reports for (item, true value): number (NaN when censored/qualitative),
    censoring, verdict, U, replicates, decision rule, and which defect (if any) shaped it."""
    n = lab.size
    kind = labs.kind[lab]
    quant = items.quant[it]
    nrep = np.full(n, 2) if arbitration else labs.replicates[lab]
    sR, sr = items.sigmas(it, true)
    with np.errstate(invalid="ignore"):
        x = true + sR * (labs.bias[lab, it] + labs.shift[lab]) \
            + sr * labs.noise[lab] * rng.standard_normal(n) / np.sqrt(nrep)
        x = np.where(items.nonneg[it], np.maximum(x, 0.0), x)
    defect = np.full(n, -1, dtype=np.int8)

    # Gross errors: a unit slip (×10 or ×0.1) or two digits transposed.
    gross = quant & (kind == KINDS.index("gross_errors")) & (rng.random(n) < cfg.gross_rate)
    how = rng.integers(0, 3, n)
    slip = gross & (how < 2)
    x = np.where(slip, x * np.where(how == 0, 10.0, 0.1), x)
    x = _round_sig(x, 4)
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = np.floor(np.log10(np.abs(x)))
        scale = 10.0 ** (3 - np.where(np.isfinite(mag), mag, 0.0))
        m = np.round(np.abs(x) * scale)
        d2, d3 = (m // 100) % 10, (m // 10) % 10
        swapped = np.sign(x) * (m - d2 * 100 - d3 * 10 + d3 * 100 + d2 * 10) / scale
    trans = gross & (how == 2) & (d2 != d3)
    x = np.where(trans, swapped, x)
    defect[slip] = DEFECTS.index("unit_slip")
    defect[trans] = DEFECTS.index("transposition")

    # Shading: a true value just inside or beyond the limit reported just inside it.
    lim, d = _nearest_limit(items, it, true)
    s_lim, _ = items.sigmas(it, lim)
    with np.errstate(invalid="ignore"):
        excess = d * (true - lim) / s_lim  # > 0 beyond the limit
        shade = (quant & (kind == KINDS.index("shading")) & (excess >= -cfg.shading_window[0])
                 & (excess <= cfg.shading_window[1]) & (rng.random(n) < cfg.shading_prob))
    x = np.where(shade, _round_sig(lim - d * rng.uniform(0.05, 0.5, n) * s_lim, 4), x)
    defect[shade] = DEFECTS.index("shaded")

    rl = items.rl[it]
    with np.errstate(invalid="ignore"):
        censored = quant & (x < rl) & ~shade
        hide = (quant & ~censored & ~shade & (kind == KINDS.index("nd_hider")) & (true > 3.0 * rl)
                & (rng.random(n) < cfg.nd_hide_share))
    censored |= hide
    defect[hide] = DEFECTS.index("hidden_nd")
    x = np.where(censored | ~quant, np.nan, x)

    numeric = ~np.isnan(x)
    sR_x, _ = items.sigmas(it, np.where(numeric, x, 0.0))
    U = np.where(numeric & labs.reports_u[lab], _round_sig(2.0 * sR_x * labs.u_factor[lab], 2), np.nan)
    U = np.where(U > 0, U, np.nan)
    guard = labs.guard_band[lab] & ~np.isnan(U) & ~arbitration
    gb = np.where(guard, U, 0.0)
    lo, hi = items.lo[it], items.hi[it]
    with np.errstate(invalid="ignore"):
        fail = numeric & ((x > hi - gb) | (x < lo + gb))
    fail &= ~shade

    # A verdict that contradicts its own number, far from the limit.
    lim_x, d_x = _nearest_limit(items, it, np.where(numeric, x, 0.0))
    with np.errstate(invalid="ignore"):
        far = numeric & (np.abs(x - lim_x) > 3.0 * sR_x)
    flip = far & (kind == KINDS.index("verdict_flipper")) & (rng.random(n) < cfg.flip_rate)
    fail = np.where(flip, ~fail, fail)
    defect[flip] = DEFECTS.index("flipped_verdict")

    err = np.where(kind == KINDS.index("careless_qualitative"), cfg.careless_error, cfg.qualitative_error)
    wrong = ~quant & (rng.random(n) < err)
    fail = np.where(quant, fail, true_pass == wrong)
    defect[wrong] = DEFECTS.index("wrong_qualitative")

    rule = np.where(guard, 1, np.where(labs.rule_blank[lab] & ~arbitration, -1, 0))
    return {"lab": lab, "x": x, "censored": censored, "fail": fail, "U": U, "nrep": nrep, "rule": rule,
            "defect": defect}


def _result_rows(items: _Items, labs: _Labs, sample_codes: pl.Series, earliest: date, parts, p_sample,
                 p_item, true, true_pass) -> dict[str, pl.DataFrame]:
    # Strings are gathered from small polars Series: numpy string arrays of millions of rows are
    # slow to turn into polars columns.
    item_codes, lab_codes = pl.Series(items.code, dtype=pl.String), pl.Series(labs.code, dtype=pl.String)
    units = pl.Series(items.unit, dtype=pl.String).replace("", None)
    typed, truth = [], []
    for rep, pairs, role, days in parts:
        s = p_sample[pairs]
        it = p_item[pairs]
        lab = rep["lab"]
        censored = rep["censored"]
        keys = {
            "sample_code": sample_codes.gather(s),
            "item_code": item_codes.gather(it),
            "lab_code": lab_codes.gather(lab),
            "role": pl.repeat(_ROLES[role], s.size, eager=True, dtype=pl.String),
        }
        typed.append(pl.DataFrame({
            **keys,
            "value": rep["x"],
            "censored": censored,
            "censor_limit": np.where(censored, items.rl[it], np.nan),
            "expanded_uncertainty": rep["U"],
            "coverage_k": np.where(np.isnan(rep["U"]), np.nan, 2.0),
            "replicates": rep["nrep"].astype(np.int32),
            "verdict": _labels(rep["fail"].astype(np.int64), ("pass", "fail")),
            "decision_rule": _labels(rep["rule"], ("simple", "guard_band")),
            "day": days[s],
            # text-only helpers
            "__unit": units.gather(it),
            "__has_lod": ~np.isnan(items.lod[it]),
            "__nd_style": labs.nd_style[lab],
            "__chinese": labs.chinese_verdicts[lab],
        }).with_columns(pl.col(pl.Float64).fill_nan(None)))
        truth.append(pl.DataFrame({
            **keys,
            "true_value": true[pairs],
            "value": rep["x"],
            "true_verdict": _labels(true_pass[pairs].astype(np.int64), ("fail", "pass")),
            "defect": _labels(rep["defect"], DEFECTS),
        }).with_columns(pl.col("true_value", "value").fill_nan(None)))
    frame = pl.concat(typed).with_columns(
        (pl.lit(earliest) + pl.duration(days=pl.col("day"))).cast(pl.Date).alias("reported_on")
    ).drop("day")
    helpers = [c for c in frame.columns if c.startswith("__")]
    return {"typed": frame.drop(helpers), "text": frame.select(helpers), "truth": pl.concat(truth)}


def _labels(codes: np.ndarray, names: tuple[str, ...]) -> pl.Series:
    """Codes 0..k−1 as names[code]; −1 as null."""
    idx = pl.Series(codes, dtype=pl.Int64)
    return pl.Series(names, dtype=pl.String).gather(pl.select(pl.when(idx >= 0).then(idx)).to_series())


def _results_text(typed: pl.DataFrame, text: pl.DataFrame) -> pl.DataFrame:
    """The results as a file would have them: numbers as text, censored forms, verdict words."""
    f = pl.concat([typed, text], how="horizontal")
    limit = pl.col("censor_limit").cast(pl.String)
    censored_text = (
        pl.when(pl.col("__has_lod") & (pl.col("__nd_style") == 0)).then(pl.lit("未检出"))
        .when(pl.col("__has_lod") & (pl.col("__nd_style") == 1)).then(pl.lit("ND"))
        .when(pl.col("__nd_style") == 0).then(pl.format("未检出(<{})", limit))
        .otherwise(pl.format("<{}", limit))
    )
    verdict = (
        pl.when(pl.col("__chinese"))
        .then(pl.col("verdict").replace_strict({"pass": "合格", "fail": "不合格"}))
        .otherwise(pl.col("verdict"))
    )
    return f.select(
        "sample_code", "item_code", "lab_code", "role",
        pl.when(pl.col("censored")).then(censored_text).otherwise(pl.col("value").cast(pl.String)).alias("value"),
        pl.col("__unit").replace("", None).alias("unit"),
        pl.col("expanded_uncertainty").cast(pl.String),
        pl.col("coverage_k").cast(pl.Int64).cast(pl.String),
        pl.col("replicates").cast(pl.String),
        verdict.alias("verdict"),
        "decision_rule",
        pl.col("reported_on").cast(pl.String),
    )


def _pairs(typed: pl.DataFrame, cat: pl.DataFrame, items: _Items) -> pl.DataFrame:
    """Original/retest/arbitration joined per sample and item, as labeval.db.grading.PAIRS_QUERY does."""
    item_cols = pl.DataFrame({
        "item_code": items.code,
        "category_code": cat["category_code"],
        "kind": cat["kind"],
        "precision_model": cat["precision_model"].replace("", None),
        "repeatability_sd": items.sr,
        "reproducibility_sd": items.sR,
        "horwitz_scale": items.hscale,
        "lower_limit": items.lo,
        "upper_limit": items.hi,
        "lod": items.lod,
    }).with_columns(pl.col(pl.Float64).fill_nan(None))
    side_cols = ["lab_code", "value", "censored", "censor_limit", "expanded_uncertainty", "coverage_k",
                 "replicates", "verdict", "decision_rule", "reported_on"]

    def side(role: str, n: str) -> pl.DataFrame:
        return typed.filter(pl.col("role") == role).select(
            "sample_code", "item_code",
            *[pl.col(c).alias(f"{'lab' if c == 'lab_code' else c}_{n}") for c in side_cols],
        )

    retest = side("retest", "2").with_row_index("pair_id", offset=1)
    return (
        side("original", "1")
        .join(retest, on=["sample_code", "item_code"], how="inner")
        .join(item_cols, on="item_code", how="inner")
        .join(side("arbitration", "3"), on=["sample_code", "item_code"], how="left")
        .sort("pair_id")
        .select([pl.col(c).cast(t) for c, t in PAIR_INPUT_SCHEMA.items()])
    )


def _items_table(cat: pl.DataFrame) -> pl.DataFrame:
    extra = ["horwitz_scale"] if "horwitz_scale" in cat.columns else []
    return cat.select(
        "item_code", "category_code", pl.col("item_name_zh").alias("name"), pl.col("item_name_en").alias("name_en"),
        "unit", "kind", pl.col("method_standard").alias("method"), "repeatability_sd", "reproducibility_sd",
        "precision_model", *extra, "lower_limit", "upper_limit", "lod",
    )


def _labs_table(labs: _Labs, cat_codes: list[str], rng: np.random.Generator) -> pl.DataFrame:
    n = labs.code.size
    codes = np.array(cat_codes)
    province = np.array(PROVINCES)[labs.province]
    return pl.DataFrame({
        "lab_code": labs.code,
        "name": [f"{p}{_LAB_NAMES[j]}（{c}）"
                 for p, j, c in zip(province, rng.integers(0, len(_LAB_NAMES), n), labs.code)],
        "province": province,
        "accreditation_no": [f"CNAS L{v:05d}" for v in rng.integers(1000, 20000, n)],
        "status": np.full(n, "active"),
        "scopes": [";".join(codes[row]) for row in labs.scope],
    })


def _samples_table(rng: np.random.Generator, labs: _Labs, sample_codes: pl.Series, s_cat: np.ndarray,
                   s_orig: np.ndarray, s_day: np.ndarray, earliest: date, cat_codes: list[str]) -> pl.DataFrame:
    n = sample_codes.len()
    # Supervision sampling is provincial: most samples come from the original lab's province.
    own = rng.random(n) < 0.8
    prov = np.where(own, labs.province[s_orig], rng.integers(0, len(PROVINCES), n))
    provinces = np.array(PROVINCES)
    enterprise = pl.DataFrame({
        "a": provinces[rng.integers(0, len(PROVINCES), n)],
        "b": np.array(_ENTERPRISE_WORDS)[rng.integers(0, len(_ENTERPRISE_WORDS), n)],
        "c": np.array(_ENTERPRISE_SUFFIX)[s_cat % len(_ENTERPRISE_SUFFIX)],
    }, schema={"a": pl.String, "b": pl.String, "c": pl.String}).select(pl.concat_str("a", "b", "c"))["a"]
    return pl.DataFrame({
        "sample_code": sample_codes,
        "category_code": np.array(cat_codes)[s_cat],
        "enterprise": enterprise,
        "sampled_on": s_day,
        "province": provinces[prov],
        "original_lab_code": labs.code[s_orig],
    }, schema_overrides={"sample_code": pl.String, "sampled_on": pl.Int64}).with_columns(
        (pl.lit(earliest) + pl.duration(days=pl.col("sampled_on"))).cast(pl.Date).cast(pl.String).alias("sampled_on")
    )
