"""What each import kind looks like: columns, types, enums, keys, references, target table.

One generic pipeline (labeval.ingest.pipeline) is driven by these specs; the only per-kind code
is a small hook for checks that need more than one column (results' value/unit/LOD, items'
precision data, labs' scope list).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from labeval.ingest.errors import UnknownKind

ColType = Literal["code", "text", "float", "int", "date", "bool", "enum", "value", "codes"]


@dataclass(frozen=True)
class Col:
    name: str
    type: ColType
    # The cell must not be empty.
    required: bool = False
    # The file must have the column (implied by required).
    header: bool = False
    # enum: normalised spelling -> canonical value (None: recognised, means "no value").
    enum: Mapping[str, str | None] | None = None
    # Numeric bounds (finite is always required).
    min: float | None = None
    min_exclusive: bool = False
    # Dates: reject a date after today.
    no_future: bool = False
    # Code reference (table, column) checked against the database.
    ref: tuple[str, str] | None = None
    # Value used when the cell is empty and the column is present (e.g. labs.status).
    default: str | None = None
    # SQL type in the staging table.
    sql: str = "text"

    @property
    def needs_header(self) -> bool:
        return self.header or self.required


@dataclass(frozen=True)
class Spec:
    kind: str
    table: str
    columns: tuple[Col, ...]
    key: tuple[str, ...]
    # versioned: corrections insert a new version (results); upsert: update in place, logged.
    mode: Literal["versioned", "upsert"] = "upsert"
    # Key columns that may be null (joined through COALESCE(col, '')).
    nullable_key: tuple[str, ...] = ()
    # Columns that are not columns of `table` (handled by a post-load step), e.g. labs.scopes.
    virtual: tuple[str, ...] = ()
    # Extra generated columns written to the target (results: censored, censor_limit, raw_value).
    derived: tuple[Col, ...] = field(default_factory=tuple)

    def col(self, name: str) -> Col:
        for c in self.columns:
            if c.name == name:
                return c
        for c in self.derived:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def _syn(**groups: tuple[str, ...]) -> dict[str, str | None]:
    """Enum synonyms: canonical=(spellings...); canonical "_none" maps to None."""
    out: dict[str, str | None] = {}
    for canonical, spellings in groups.items():
        value = None if canonical == "_none" else canonical
        out[norm_word(canonical)] = value
        for s in spellings:
            out[norm_word(s)] = value
    return out


def norm_word(text: str) -> str:
    """Normalisation used for enum words (mirrors the polars expression in validate.py)."""
    return " ".join(unicodedata.normalize("NFKC", text).strip().lower().split())


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
        virtual=("scopes",),
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

# ---------------------------------------------------------------------------------------------
# Header aliases (Chinese and English variants) -> canonical column. One table for every kind:
# a header means the same thing wherever it appears; each kind keeps only its own columns.
HEADER_ALIASES: dict[str, tuple[str, ...]] = {
    "category_code": ("产品类别代码", "产品类别编号", "类别代码", "类别编号", "产品分类代码", "category"),
    "name": ("名称", "类别名称", "产品类别名称", "机构名称", "检验机构名称", "项目名称", "检验项目名称"),
    "name_en": ("英文名称", "english name"),
    "lab_code": (
        "机构编号", "机构代码", "检验机构", "检验机构编号", "检验机构代码", "承检机构", "承检机构编号",
        "实验室编号", "lab",
    ),
    "province": ("省份", "所在省份", "省", "省(区、市)", "地区"),
    "accreditation_no": ("资质认定证书编号", "资质认定编号", "cma编号", "认可证书编号", "证书编号"),
    "status": ("状态", "机构状态"),
    "scopes": ("承检范围", "检验范围", "业务范围", "承检产品类别", "scope"),
    "item_code": ("项目编号", "项目代码", "检验项目", "检验项目编号", "检验项目代码", "item"),
    "unit": ("单位", "计量单位", "结果单位"),
    "kind": ("项目类型", "类型", "定量/定性"),
    "method": ("检验方法", "检测方法", "方法", "方法标准", "检验依据"),
    "repeatability_sd": ("重复性标准差", "重复性限标准差"),
    "reproducibility_sd": ("再现性标准差", "复现性标准差"),
    "precision_model": ("精密度模型", "精密度类型"),
    "horwitz_scale": ("horwitz系数", "质量分数换算系数"),
    "lower_limit": ("下限", "标准下限", "指标下限", "最小允许值"),
    "upper_limit": ("上限", "标准上限", "指标上限", "限量", "最大允许限量"),
    "lod": ("检出限", "方法检出限"),
    "sample_code": ("样品编号", "样品代码", "抽样单编号", "sample"),
    "enterprise": ("企业名称", "生产企业", "受检企业", "被抽样单位", "生产者"),
    "sampled_on": ("抽样日期", "抽样时间"),
    "original_lab_code": ("原检机构", "原检机构编号", "初检机构编号"),
    "role": ("复检/复验", "检验类别", "检验性质", "检验类型", "角色"),
    "value": ("检测值", "检测结果", "检验结果", "实测值", "结果", "测定值"),
    "expanded_uncertainty": ("扩展不确定度", "不确定度", "u"),
    "coverage_k": ("包含因子", "覆盖因子", "k"),
    "replicates": ("平行样数", "平行测定次数", "测定次数", "重复次数"),
    "verdict": ("判定", "单项判定", "判定结果", "结论", "单项结论"),
    "decision_rule": ("判定规则", "判定方法"),
    "reported_on": ("报告日期", "签发日期", "检验报告日期"),
    "provider": ("能力验证提供者", "提供者", "组织机构"),
    "scheme_code": ("能力验证计划编号", "计划编号", "能力验证计划", "scheme"),
    "round_code": ("轮次", "轮次编号", "round"),
    "round_date": ("轮次日期", "结果日期", "能力验证日期"),
    "z_score": ("z值", "z比分数", "z分数", "z", "z score"),
    "en_score": ("en值", "en", "en score"),
    "outcome": ("结果评价", "评价结果", "能力验证结果"),
    "report_no": ("报告编号", "检验报告编号", "报告号"),
    "due_on": ("应出报告日期", "报告期限", "截止日期", "应完成日期"),
    "complaint_no": ("投诉编号", "投诉单号"),
    "received_on": ("受理日期", "投诉日期", "收到日期"),
    "upheld": ("是否成立", "投诉成立", "成立"),
    "subject": ("事由", "投诉内容", "投诉事项"),
    "finding_no": ("问题编号", "不符合项编号", "发现编号"),
    "found_on": ("发现日期", "认定日期", "检查日期"),
    "severity": ("严重程度", "等级", "不符合项等级"),
    "description": ("描述", "问题描述", "情况说明"),
    "finding": ("认定结果", "认定", "问题类型", "报告问题"),
    "decision_no": ("处罚决定书编号", "决定书编号", "文号"),
}

_PAREN = re.compile(r"\(.*\)$")
_SEP = re.compile(r"[\s_\-.·:：]+")


def norm_header(text: str) -> str:
    """Header key: NFKC (full-width -> ASCII), lower case, no spaces/underscores/hyphens/dots.

    A trailing parenthesised note ("检测值（mg/kg）") is handled by the caller, which retries
    without it when the full header is unknown.
    """
    t = unicodedata.normalize("NFKC", text).strip().lower()
    return _SEP.sub("", t)


def _build_alias_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for canonical, spellings in HEADER_ALIASES.items():
        for s in (canonical, *spellings):
            k = norm_header(s)
            # Symbols that differ only by case (σr / σR) are deliberately not aliases: matching
            # is case-insensitive. The first canonical column listed wins a clash.
            index.setdefault(k, canonical)
    return index


ALIAS_INDEX = _build_alias_index()


def canonical_header(text: str) -> str | None:
    key = norm_header(text)
    if key in ALIAS_INDEX:
        return ALIAS_INDEX[key]
    stripped = _PAREN.sub("", unicodedata.normalize("NFKC", text).strip())
    if stripped != text:
        key = norm_header(stripped)
        return ALIAS_INDEX.get(key)
    return None


def resolve_kind(kind: str) -> Spec:
    k = kind.strip().lower().replace("-", "_")
    k = KIND_ALIASES.get(k, k)
    if k not in SPECS:
        raise UnknownKind(kind, sorted(SPECS))
    return SPECS[k]
