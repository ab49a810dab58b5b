"""The import kinds: one declaration each (columns, enums, checks, cross-row rules, load),
registered by name. Adding a kind is one _add(Spec(...)) here: its table must exist (a
migration); the pipeline, the CLI and the API pick it up by name.

Header aliases are shared by every kind (labeval.ingest.spec.HEADER_ALIASES): a header means the
same column wherever it appears.
"""

from __future__ import annotations

import polars as pl

from labeval.db import intake
from labeval.ingest import crossrow
from labeval.ingest.errors import UnknownKind
from labeval.ingest.spec import Check, Col, RefData, Spec, norm_word
from labeval.ingest.validate import ENGINE, C, T, by_cell, num_text, unparsed_cells, word

# The spellings of "not detected" (compared after NFKC, lower case, whitespace collapsed).
NOT_DETECTED = ("未检出", "nd", "n.d.", "n.d", "not detected", "未检出(nd)", "nd(未检出)", "<lod", "<检出限")
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_LESS_THAN = rf"^(?:<|≤|<=|小于)\s*({_NUM})$"
_ND_WITH_LIMIT = rf"^(?:未检出|nd|n\.d\.)\s*\(\s*(?:<|≤|<=)?\s*({_NUM})\s*\)$"


def _syn(**groups: tuple[str, ...]) -> dict[str, str | None]:
    """Enum synonyms: canonical=(spellings...); canonical "_none" maps to None."""
    out: dict[str, str | None] = {}
    for canonical, spellings in groups.items():
        value = None if canonical == "_none" else canonical
        out[norm_word(canonical)] = value
        for s in spellings:
            out[norm_word(s)] = value
    return out


ROLE = _syn(
    original=("原检", "初检", "原始检验", "监督抽查", "抽检"),
    retest=("复检", "复验", "复测", "re-test", "re-examination"),
    arbitration=("仲裁", "仲裁检验"),
)
VERDICT = _syn(
    **{
        "pass": ("合格", "符合", "conform", "conforming", "p", "ok"),
        "fail": ("不合格", "不符合", "nonconform", "non-conform", "nonconforming", "f", "ng"),
        "_none": ("none", "无", "/", "-", "—", "--", "不判定", "n/a", "na", "未判定"),
    }
)
KIND = _syn(quantitative=("定量", "quant"), qualitative=("定性", "qual"))
PRECISION = _syn(absolute=("绝对",), relative=("相对",), horwitz=("霍维茨", "horwitz function"))
STATUS = _syn(active=("正常", "有效", "在用"), suspended=("暂停",), revoked=("撤销", "注销", "吊销"))
DECISION_RULE = _syn(
    simple=("simple acceptance", "简单接受", "简单判定"),
    guard_band=("guard band", "guardband", "guarded acceptance", "保护带", "防护带"),
)
SEVERITY = _syn(minor=("一般", "轻微"), major=("严重", "主要"), critical=("重大", "关键"))
FINDING = _syn(inaccurate=("不实", "不实报告", "不实检验报告"), falsified=("虚假", "虚假报告", "虚假检验报告"))
OUTCOME = _syn(
    satisfactory=("满意", "s"),
    questionable=("有问题", "可疑", "q"),
    unsatisfactory=("不满意", "u"),
)

LAB = ("labs", "lab_code")
CATEGORY = ("product_categories", "category_code")
ITEM = ("test_items", "item_code")
SAMPLE = ("samples", "sample_code")

# ---------------------------------------------------------------------------------------------
# Checks that need more than one column


def value_parts(cells: pl.Series) -> pl.DataFrame:
    """cell, censored, lt (the limit written with it), num: what a value cell says."""
    raw = pl.col("cell")
    v = num_text(raw)
    w = word(raw)
    lt = pl.coalesce([v.str.extract(_LESS_THAN, 1), w.str.extract(_ND_WITH_LIMIT, 1)]).cast(pl.Float64, strict=False)
    nd = w.is_in(list(NOT_DETECTED)).fill_null(False)
    return pl.DataFrame({"cell": cells}, schema={"cell": pl.String}).select(
        raw, (lt.is_not_null() | nd).alias("censored"), lt.alias("lt"), v.cast(pl.Float64, strict=False).alias("num"))


def _results_prepare(lf: pl.LazyFrame, refs: RefData) -> tuple[pl.LazyFrame, list[Check]]:
    """value -> (value, censored, censor_limit, raw_value); unit and item-kind checks."""
    unit_norm = lambda e: e.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"\s+", "")  # noqa: E731
    items = refs.tables["items"].lazy().select(
        pl.col("item_code").alias("__item"),
        pl.col("unit").alias("__item_unit"),
        pl.col("lod").alias("__item_lod"),
        pl.col("kind").alias("__item_kind"),
        unit_norm(pl.col("unit")).alias("__item_unit_norm"),
    )
    raw = pl.col(C("value"))
    # A cell that is a plain ASCII number is that number, uncensored (no spelling of "less than"
    # or "not detected" parses as one): cast directly. The parsing below (Unicode normalisation,
    # regular expressions) runs once per distinct other cell of the batch, then a hash lookup
    # per row (per row, it was half of validation's time).
    cells = value_parts(unparsed_cells(lf.select(raw).collect(engine=ENGINE).to_series()))
    direct = raw.cast(pl.Float64, strict=False)
    if cells.height:
        cell = cells.get_column("cell")
        censored = by_cell(cell, cells.get_column("censored"), raw).fill_null(False)
        lt = by_cell(cell, cells.get_column("lt"), raw)
        num = pl.coalesce(direct, by_cell(cell, cells.get_column("num"), raw))
    else:
        censored, lt, num = pl.lit(False), pl.lit(None, pl.Float64), direct
    # The unit check compares normalised spellings: the file's few distinct units normalised
    # once each, the items' once per batch.
    units = lf.select(pl.col(T("unit")).drop_nulls().unique()).collect(engine=ENGINE).to_series()
    file_unit = by_cell(units, pl.DataFrame({"u": units}).select(unit_norm(pl.col("u"))).to_series(), pl.col(T("unit")))
    lf = lf.join(items, left_on=T("item_code"), right_on="__item", how="left", maintain_order="left")
    lf = lf.with_columns(
        censored.alias("__censored"),
        lt.alias("__lt"),
        num.alias("__num"),
    ).with_columns(
        pl.when(pl.col("__censored")).then(None).otherwise(pl.col("__num")).alias(T("value")),
        pl.col("__censored").alias(T("censored")),
        pl.when(pl.col("__lt").is_not_null()).then(pl.col("__lt"))
        .when(pl.col("__censored")).then(pl.col("__item_lod"))
        .otherwise(None).alias(T("censor_limit")),
        raw.alias(T("raw_value")),
    )
    quantitative = pl.col("__item_kind") == "quantitative"
    qualitative = pl.col("__item_kind") == "qualitative"
    checks = [
        Check(
            "value",
            raw.is_not_null() & ~pl.col("__censored") & pl.col("__num").is_null() & ~qualitative,
            "not_a_value",
        ),
        Check("value", pl.col("__num").is_not_null() & ~pl.col("__num").is_finite(), "not_finite"),
        Check(
            "value",
            pl.col("__lt").is_not_null() & (~pl.col("__lt").is_finite() | (pl.col("__lt") < 0)),
            "censor_limit",
        ),
        Check("value", raw.is_null() & quantitative, "quantitative_value_empty"),
        Check(
            "value", raw.is_null() & qualitative & pl.col(T("verdict")).is_null(),
            "qualitative_needs_value",
        ),
        Check(
            "unit",
            pl.col(T("unit")).is_not_null() & pl.col("__item_unit").is_not_null()
            & (file_unit != pl.col("__item_unit_norm")),
            "unit_mismatch", {"unit": pl.col("__item_unit")},
        ),
    ]
    return lf, checks


def _items_rules() -> list[Check]:
    t = lambda n: pl.col(T(n))  # noqa: E731
    return [
        Check("precision_model", (t("kind") == "quantitative") & t("precision_model").is_null(),
              "quantitative_required"),
        Check("horwitz_scale", (t("precision_model") == "horwitz") & t("horwitz_scale").is_null(),
              "horwitz_required"),
        Check("reproducibility_sd", t("precision_model").is_in(["absolute", "relative"]) & t("reproducibility_sd").is_null(),
              "sd_model_required"),
        Check("repeatability_sd", t("repeatability_sd") > t("reproducibility_sd"),
              "repeatability_above_reproducibility"),
        Check("lower_limit", t("lower_limit") > t("upper_limit"), "lower_above_upper"),
    ]


def _timeliness_rules() -> list[Check]:
    t = lambda n: pl.col(T(n))  # noqa: E731
    return [Check("reported_on", (t("reported_on") < t("due_on") - pl.duration(days=366)).fill_null(False),
                  "reported_too_early")]


def _pt_rules() -> list[Check]:
    t = lambda n: pl.col(T(n))  # noqa: E731
    return [Check("z_score", t("z_score").is_null() & t("en_score").is_null() & t("outcome").is_null(),
                  "pt_score_required")]


# ---------------------------------------------------------------------------------------------
# Registry: a kind is one _add(Spec(...)) below, with its hooks beside it.
SPECS: dict[str, Spec] = {}


def _add(spec: Spec) -> None:
    SPECS[spec.kind] = spec


_add(
    Spec(
        kind="categories",
        table="product_categories",
        key=("category_code",),
        columns=(
            Col("category_code", "code", required=True),
            Col("name", "text", required=True),
            Col("name_en", "text"),
        ),
    )
)
_add(
    Spec(
        kind="labs",
        table="labs",
        key=("lab_code",),
        virtual={"scopes": intake.LAB_SCOPES},
        has_updated_at=True,
        after_load=(intake.replace_lab_scopes,),
        columns=(
            Col("lab_code", "code", required=True),
            Col("name", "text", required=True),
            Col("province", "text"),
            Col("accreditation_no", "text"),
            Col("status", "enum", enum=STATUS, default="active"),
            Col("scopes", "codes", ref=CATEGORY),
        ),
    )
)
_add(
    Spec(
        kind="items",
        table="test_items",
        key=("item_code",),
        row_checks=_items_rules,
        columns=(
            Col("item_code", "code", required=True),
            Col("category_code", "code", required=True, ref=CATEGORY),
            Col("name", "text", required=True),
            Col("name_en", "text"),
            Col("unit", "text"),
            Col("kind", "enum", required=True, enum=KIND),
            Col("method", "text"),
            Col("repeatability_sd", "float", min=0.0, sql="double precision"),
            Col("reproducibility_sd", "float", min=0.0, min_exclusive=True, sql="double precision"),
            Col("precision_model", "enum", enum=PRECISION),
            Col("horwitz_scale", "float", min=0.0, min_exclusive=True, sql="double precision"),
            Col("lower_limit", "float", sql="double precision"),
            Col("upper_limit", "float", sql="double precision"),
            Col("lod", "float", min=0.0, sql="double precision"),
        ),
    )
)
_add(
    Spec(
        kind="samples",
        table="samples",
        key=("sample_code",),
        columns=(
            Col("sample_code", "code", required=True),
            Col("category_code", "code", required=True, ref=CATEGORY),
            Col("enterprise", "text"),
            Col("sampled_on", "date", no_future=True, sql="date"),
            Col("province", "text"),
            Col("original_lab_code", "code", ref=LAB),
        ),
    )
)
_add(
    Spec(
        kind="results",
        table="results",
        key=("sample_code", "item_code", "role", "lab_code"),
        mode="versioned",
        has_import_id=True,
        lookups={"items": intake.items, crossrow.REGISTER: intake.original_labs},
        codes_from={SAMPLE: (crossrow.REGISTER, "sample_code")},
        prepare=_results_prepare,
        cross_row=(crossrow.reject_dependent_results,),
        direct_check=crossrow.DIRECT_RESULTS_CHECK,
        # What the pairs query, the lab pages and the intake's own lookups join, filter and sort on.
        analyse=("sample_code", "item_code", "lab_code", "role", "reported_on", "result_id", "import_id"),
        columns=(
            Col("sample_code", "code", required=True, ref=SAMPLE),
            Col("item_code", "code", required=True, ref=ITEM),
            Col("lab_code", "code", required=True, ref=LAB),
            Col("role", "enum", required=True, enum=ROLE),
            Col("value", "value", header=True, sql="double precision"),
            Col("unit", "text"),
            Col("expanded_uncertainty", "float", min=0.0, sql="double precision"),
            Col("coverage_k", "float", min=0.0, min_exclusive=True, sql="double precision"),
            Col("replicates", "int", min=1, sql="integer"),
            Col("verdict", "enum", enum=VERDICT),
            Col("decision_rule", "enum", enum=DECISION_RULE),
            Col("reported_on", "date", no_future=True, sql="date"),
        ),
        derived=(
            Col("censored", "bool", sql="boolean"),
            Col("censor_limit", "float", sql="double precision"),
            Col("raw_value", "text"),
        ),
    )
)
_add(
    Spec(
        kind="pt",
        table="pt_results",
        has_import_id=True,
        row_checks=_pt_rules,
        key=("lab_code", "scheme_code", "round_code", "item_code"),
        nullable_key=("item_code",),
        columns=(
            Col("lab_code", "code", required=True, ref=LAB),
            Col("provider", "text"),
            Col("scheme_code", "code", required=True),
            Col("round_code", "code", required=True),
            Col("round_date", "date", required=True, no_future=True, sql="date"),
            Col("item_code", "code", ref=ITEM),
            Col("z_score", "float", header=True, sql="double precision"),
            Col("en_score", "float", sql="double precision"),
            Col("outcome", "enum", enum=OUTCOME),
        ),
    )
)
_add(
    Spec(
        kind="timeliness",
        table="lab_reports",
        has_import_id=True,
        row_checks=_timeliness_rules,
        key=("lab_code", "report_no"),
        columns=(
            Col("lab_code", "code", required=True, ref=LAB),
            Col("report_no", "code", required=True),
            # Due date may lie ahead (an outstanding report); the issue date may not.
            Col("due_on", "date", required=True, sql="date"),
            Col("reported_on", "date", no_future=True, sql="date"),
        ),
    )
)
_add(
    Spec(
        kind="complaints",
        table="lab_complaints",
        has_import_id=True,
        key=("lab_code", "complaint_no"),
        columns=(
            Col("lab_code", "code", required=True, ref=LAB),
            Col("complaint_no", "code", required=True),
            Col("received_on", "date", required=True, no_future=True, sql="date"),
            Col("upheld", "bool", required=True, sql="boolean"),
            Col("subject", "text"),
        ),
    )
)
_add(
    Spec(
        kind="audit_findings",
        table="lab_audit_findings",
        has_import_id=True,
        key=("lab_code", "finding_no"),
        columns=(
            Col("lab_code", "code", required=True, ref=LAB),
            Col("finding_no", "code", required=True),
            Col("found_on", "date", required=True, no_future=True, sql="date"),
            Col("severity", "enum", required=True, enum=SEVERITY),
            Col("description", "text"),
        ),
    )
)
_add(
    Spec(
        kind="report_findings",
        table="lab_report_findings",
        has_import_id=True,
        key=("lab_code", "report_no"),
        columns=(
            Col("lab_code", "code", required=True, ref=LAB),
            Col("report_no", "code", required=True),
            Col("found_on", "date", required=True, no_future=True, sql="date"),
            Col("finding", "enum", required=True, enum=FINDING),
            Col("decision_no", "text"),
            Col("description", "text"),
        ),
    )
)

# Accepted spellings of a kind on the command line / in the URL.
KIND_ALIASES = {
    "category": "categories",
    "lab": "labs",
    "item": "items",
    "test_items": "items",
    "sample": "samples",
    "result": "results",
    "pt_results": "pt",
    "proficiency": "pt",
    "complaint": "complaints",
    "audit": "audit_findings",
    "audits": "audit_findings",
    "report_finding": "report_findings",
}


def resolve_kind(kind: str) -> Spec:
    k = kind.strip().lower().replace("-", "_")
    k = KIND_ALIASES.get(k, k)
    if k not in SPECS:
        raise UnknownKind(kind, sorted(SPECS))
    return SPECS[k]
