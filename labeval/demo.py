"""A realistic synthetic data set, loaded through the same intake code as real files.

Real product categories and test items (labeval/data/catalogue.csv, from shared/catalogue: limits
sourced where found, precision assumed) with labs that test samples and retest each other's
backup samples. A few labs are planted: biased (results shifted by 1.5 σR), noisy (3× σR), or
careless with qualitative items. Everything is drawn from one seeded generator, so a seed gives
the same data set every time.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources
from pathlib import Path

import asyncpg
import numpy as np
import polars as pl

from labeval.config import Settings
from labeval.models import GradingRun

PROVINCES = (
    "北京", "天津", "河北", "山西", "内蒙古", "辽宁", "吉林", "黑龙江", "上海", "江苏", "浙江", "安徽",
    "福建", "江西", "山东", "河南", "湖北", "湖南", "广东", "广西", "海南", "重庆", "四川", "贵州",
    "云南", "陕西", "甘肃", "青海", "宁夏", "新疆",
)
LAB_KINDS = ("产品质量监督检验研究院", "产品质量检验检测中心", "纤维质量监测中心", "计量测试研究院",
             "质量技术检测有限公司", "检验认证集团有限公司")
ENTERPRISE_SUFFIX = ("制衣有限公司", "玩具厂", "电线电缆有限公司", "家具有限公司", "鞋业有限公司",
                     "卫生用品有限公司", "电器有限公司", "化肥有限公司", "塑料制品厂", "钢铁集团", "水泥有限公司")


@dataclass(frozen=True)
class Planted:
    lab_code: str
    kind: str  # "bias" | "noise" | "qualitative"
    description: str
    shift: float = 0.0  # bias in units of σR


def catalogue() -> pl.DataFrame:
    raw = resources.files("labeval").joinpath("data/catalogue.csv").read_bytes()
    return pl.read_csv(raw, infer_schema=False)


def _planted(lab_codes: list[str], rng: np.random.Generator) -> list[Planted]:
    picks = rng.choice(len(lab_codes), size=4, replace=False)
    return [
        Planted(lab_codes[picks[0]], "bias", "results shifted by +1.5 σR", 1.5),
        Planted(lab_codes[picks[1]], "bias", "results shifted by −1.5 σR", -1.5),
        Planted(lab_codes[picks[2]], "noise", "scatter 3 × σR"),
        Planted(lab_codes[picks[3]], "qualitative", "wrong verdict on 25 % of qualitative items"),
    ]


def generate(n_labs: int, seed: int, *, today: date | None = None, samples_per_lab: int = 30) -> dict[str, pl.DataFrame]:
    """Return the data set as canonical intake tables: categories, labs, items, samples, results."""
    rng = np.random.default_rng(seed)
    today = today or date.today()
    cat = catalogue()

    categories = cat.select(
        pl.col("category_code"), pl.col("category_name_zh").alias("name"), pl.col("category_name_en").alias("name_en")
    ).unique("category_code", keep="first", maintain_order=True)
    cat_codes = categories["category_code"].to_list()

    items = cat.select(
        "item_code", "category_code", pl.col("item_name_zh").alias("name"), pl.col("item_name_en").alias("name_en"),
        "unit", "kind", pl.col("method_standard").alias("method"), "repeatability_sd", "reproducibility_sd",
        "precision_model", "lower_limit", "upper_limit", "lod",
    )

    lab_codes = [f"L{i:04d}" for i in range(1, n_labs + 1)]
    provinces = [PROVINCES[i % len(PROVINCES)] for i in rng.permutation(n_labs)]
    scopes: list[list[str]] = []
    for _ in lab_codes:
        k = int(rng.integers(4, len(cat_codes) + 1))
        scopes.append(sorted(rng.choice(cat_codes, size=k, replace=False).tolist()))
    labs = pl.DataFrame({
        "lab_code": lab_codes,
        "name": [f"{p}{LAB_KINDS[int(rng.integers(len(LAB_KINDS)))]}（{c}）" for p, c in zip(provinces, lab_codes)],
        "province": provinces,
        "accreditation_no": [f"CNAS L{int(rng.integers(1000, 20000)):05d}" for _ in lab_codes],
        "status": ["active"] * n_labs,
        "scopes": [";".join(s) for s in scopes],
    })
    planted = _planted(lab_codes, rng)
    bias = {p.lab_code: p.shift for p in planted if p.kind == "bias"}
    noise = {p.lab_code: 3.0 for p in planted if p.kind == "noise"}
    careless = {p.lab_code for p in planted if p.kind == "qualitative"}
    # Every lab claims an uncertainty near 2σR; some under-state it.
    u_factor = {c: float(rng.uniform(0.7, 1.1)) for c in lab_codes}
    reports_u = {c: bool(rng.random() < 0.7) for c in lab_codes}
    guard_band = {c: bool(rng.random() < 0.2) for c in lab_codes}

    labs_by_cat = {c: [lab for lab, s in zip(lab_codes, scopes) if c in s] for c in cat_codes}
    item_rows = items.to_dicts()
    items_by_cat: dict[str, list[dict]] = {}
    for it in item_rows:
        items_by_cat.setdefault(it["category_code"], []).append(it)

    n_samples = n_labs * samples_per_lab
    sample_rows = []
    result_rows = []
    for s in range(n_samples):
        c = cat_codes[int(rng.integers(len(cat_codes)))]
        candidates = labs_by_cat[c]
        if len(candidates) < 3:
            continue
        orig, retest, arb = rng.choice(candidates, size=3, replace=False).tolist()
        # Late enough that the retest and any arbitration are reported by today.
        sampled = today - timedelta(days=int(rng.integers(130, 720)))
        code = f"S{seed % 100:02d}{s:06d}"
        sample_rows.append({
            "sample_code": code, "category_code": c,
            "enterprise": f"{provinces[int(rng.integers(n_labs))]}{'华宏信达恒瑞金诚永昌'[int(rng.integers(10))]}"
                          f"{ENTERPRISE_SUFFIX[cat_codes.index(c) % len(ENTERPRISE_SUFFIX)]}",
            "sampled_on": sampled.isoformat(), "province": provinces[int(rng.integers(n_labs))],
            "original_lab_code": orig,
        })
        d_orig = sampled + timedelta(days=int(rng.integers(7, 25)))
        d_retest = d_orig + timedelta(days=int(rng.integers(20, 60)))
        for it in items_by_cat[c]:
            rows = _item_results(it, code, orig, retest, arb, d_orig, d_retest, rng, bias, noise, careless,
                                 u_factor, reports_u, guard_band)
            result_rows.extend(rows)

    samples = pl.DataFrame(sample_rows)
    results = pl.DataFrame(result_rows, schema={
        "sample_code": pl.String, "item_code": pl.String, "lab_code": pl.String, "role": pl.String,
        "value": pl.String, "unit": pl.String, "expanded_uncertainty": pl.String, "coverage_k": pl.String,
        "replicates": pl.String, "verdict": pl.String, "decision_rule": pl.String, "reported_on": pl.String,
    })
    return {"categories": categories, "labs": labs, "items": items, "samples": samples, "results": results,
            "planted": pl.DataFrame([p.__dict__ for p in planted])}


def _f(x: str | None) -> float | None:
    return None if x in (None, "") else float(x)


def _true_level(lo: float | None, hi: float | None, rng: np.random.Generator) -> float:
    """Most products conform comfortably; about one in six sits near a limit."""
    near = rng.random() < 0.17
    if hi is not None and lo is not None:
        width = hi - lo
        if near:
            return (hi if rng.random() < 0.5 else lo) + rng.normal(0, 0.03 * width)
        return rng.uniform(lo + 0.2 * width, hi - 0.2 * width)
    if hi is not None:
        scale = abs(hi)
        return hi * rng.uniform(0.85, 1.12) if near else scale * rng.uniform(0.05, 0.7)
    assert lo is not None
    return lo * rng.uniform(0.97, 1.04) if near else lo * rng.uniform(1.08, 1.35)


def _item_results(it, sample, orig, retest, arb, d_orig, d_retest, rng, bias, noise, careless, u_factor,
                  reports_u, guard_band) -> list[dict]:
    lo, hi, lod = _f(it["lower_limit"]), _f(it["upper_limit"]), _f(it["lod"])
    unit = it["unit"]
    if it["kind"] == "qualitative":
        truth = "pass" if rng.random() < 0.93 else "fail"
        out = []
        for lab, role, day in ((orig, "original", d_orig), (retest, "retest", d_retest)):
            flip = rng.random() < (0.25 if lab in careless else 0.01)
            verdict = ("fail" if truth == "pass" else "pass") if flip else truth
            out.append(_row(sample, it["item_code"], lab, role, None, unit, None, verdict, "simple", day))
        if out[0]["verdict"] != out[1]["verdict"] and rng.random() < 0.6:
            flip = rng.random() < (0.25 if arb in careless else 0.01)
            verdict = ("fail" if truth == "pass" else "pass") if flip else truth
            out.append(_row(sample, it["item_code"], arb, "arbitration", None, unit, None, verdict, "simple",
                            d_retest + timedelta(days=int(rng.integers(10, 30)))))
        return out
    level = _true_level(lo, hi, rng)
    sd = float(it["reproducibility_sd"])
    sigma_R = sd * abs(level) if it["precision_model"] == "relative" else sd
    # A trace analyte has a reporting limit: below it labs write "<L" or 未检出.
    report_limit = lod if lod is not None else (0.1 * hi if hi is not None and lo is None and level >= 0 else None)
    out = []
    values = {}
    for lab, role, day in ((orig, "original", d_orig), (retest, "retest", d_retest)):
        x = level + bias.get(lab, 0.0) * sigma_R + rng.normal(0.0, sigma_R * noise.get(lab, 1.0))
        values[role] = x
        U = 2.0 * sigma_R * u_factor[lab] if reports_u[lab] else None
        rule = "guard_band" if guard_band[lab] and U is not None else "simple"
        out.append(_measured(sample, it["item_code"], lab, role, x, U, rule, lo, hi, report_limit, unit, day, rng))
    # Reversals go to a third lab, as the regulator would do with disputed results.
    if out[0]["verdict"] != out[1]["verdict"] and rng.random() < 0.6:
        x = level + bias.get(arb, 0.0) * sigma_R + rng.normal(0.0, sigma_R * noise.get(arb, 1.0))
        U = 2.0 * sigma_R * u_factor[arb] if reports_u[arb] else None
        out.append(_measured(sample, it["item_code"], arb, "arbitration", x, U, "simple", lo, hi, report_limit,
                             unit, d_retest + timedelta(days=int(rng.integers(10, 30))), rng))
    return out


def _measured(sample, item, lab, role, x, U, rule, lo, hi, report_limit, unit, day, rng) -> dict:
    guard = U if rule == "guard_band" and U is not None else 0.0
    fail = (hi is not None and x > hi - guard) or (lo is not None and x < lo + guard)
    if report_limit is not None and x < report_limit:
        text = "未检出" if rng.random() < 0.5 else f"<{_fmt(report_limit)}"
        return _row(sample, item, lab, role, text, unit, None, "pass", rule, day)
    return _row(sample, item, lab, role, _fmt(x), unit, U, "fail" if fail else "pass", rule, day)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _row(sample, item, lab, role, value, unit, U, verdict, rule, day) -> dict:
    # Chinese verdict words for some rows, as exports from the sampling system have them.
    return {
        "sample_code": sample, "item_code": item, "lab_code": lab, "role": role, "value": value, "unit": unit,
        "expanded_uncertainty": None if U is None else _fmt(U), "coverage_k": None if U is None else "2",
        "replicates": "1" if role != "arbitration" else "2",
        "verdict": {"pass": "合格", "fail": "不合格"}[verdict] if int(sample[-1]) % 2 else verdict,
        "decision_rule": rule, "reported_on": day.isoformat(),
    }


async def run_demo(conn: asyncpg.Connection, settings: Settings, *, n_labs: int, seed: int,
                   today: date | None = None) -> tuple[GradingRun, dict[str, str]]:
    """Generate, write CSV files, load them through intake, run a grading run."""
    from labeval.grading.run import run_grading
    from labeval.ingest import ingest_path

    data = generate(n_labs, seed, today=today)
    with tempfile.TemporaryDirectory(prefix="labeval-demo-") as tmp:
        for kind in ("categories", "labs", "items", "samples", "results"):
            path = Path(tmp) / f"{kind}.csv"
            data[kind].write_csv(path)
            report = await ingest_path(conn, kind, path, source="demo")
            if report.rejected:
                raise RuntimeError(f"demo data rejected by intake: {report.rejects[:5]}")
    result = await run_grading(conn, settings, as_of=today or date.today(), trigger="demo")
    planted = {r["lab_code"]: r["description"] for r in data["planted"].to_dicts()}
    return result, planted
