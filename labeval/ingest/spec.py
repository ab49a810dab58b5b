"""The shape of an import kind's declaration (Spec: columns, keys, checks, cross-row rules,
load) and the header aliases every kind shares. The kinds themselves are declared in
labeval.ingest.kinds; one generic pipeline (labeval.ingest.pipeline) runs any of them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import polars as pl

from labeval.db.intake import LoadCounts, Target, load_upsert, load_versioned

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


@dataclass
class RefData:
    """Reference data loaded once per import: the codes of every Col.ref, and the Spec's lookups
    by name."""

    codes: dict[tuple[str, str], pl.Series] = field(default_factory=dict)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)


@dataclass
class Check:
    """A row check: rows where `fails` is true are rejected against `column` with the reason
    `code` (labeval.ingest.reasons) and its arguments (text, or columns of the rejected rows)."""

    column: str
    fails: pl.Expr
    code: str
    args: Mapping[str, pl.Expr | str] = field(default_factory=dict)
    # Column whose raw text goes into the reject's value (default: `column`).
    value_of: str | None = None


# Hooks a kind may declare (see Spec).
Lookup = Callable[[asyncpg.Connection], Awaitable[pl.DataFrame]]
Prepare = Callable[[pl.LazyFrame, RefData], tuple[pl.LazyFrame, list[Check]]]
# (conn, target, stage, import_id, keys of the staged rows, reference data) -> the keys of the rows left.
CrossRowRule = Callable[[asyncpg.Connection, Target, str, int, pl.DataFrame, RefData], Awaitable[pl.DataFrame]]
AfterLoad = Callable[[asyncpg.Connection, Target, str, list[str]], Awaitable[None]]


@dataclass(frozen=True)
class DirectCheck:
    """Whether the rows a direct load wrote are exactly what staging the file would have loaded,
    in two steps: `summarise` (pure, given the file's valid keys with their row numbers and the
    import's reference data) runs in the worker thread while PostgreSQL takes in the last batch;
    `passes` (connection, import id, that summary) decides, with the database where it must.

    `trigger`, when set, names the table's insert trigger whose checks the load makes itself:
    the reference data, read after the load has locked the table against every other writer
    and every removal of a referenced code, holds the codes each row is validated against, and
    `summarise` covers the rest of what the trigger would refuse. The intake then suspends the
    trigger for its own statements (labeval.db.intake.suspend_trigger)."""

    summarise: Callable[[pl.DataFrame, RefData], object]
    passes: Callable[[asyncpg.Connection, int, Any], Awaitable[bool]]
    trigger: str | None = None


@dataclass(frozen=True)
class Spec:
    """One import kind, declared once (labeval.ingest.kinds) and registered by name."""

    kind: str
    table: str
    columns: tuple[Col, ...]
    key: tuple[str, ...]
    # versioned: corrections insert a new version (results); upsert: update in place, logged.
    mode: Literal["versioned", "upsert"] = "upsert"
    # Key columns that may be null (joined through COALESCE(col, '')).
    nullable_key: tuple[str, ...] = ()
    # Columns that are not columns of `table`, each with the SQL of its current value for a
    # target row t (labs.scopes); written by an after_load step.
    virtual: Mapping[str, str] = field(default_factory=dict)
    # Extra generated columns written to the target (results: censored, censor_limit, raw_value).
    derived: tuple[Col, ...] = ()
    # The table has import_id (the import that last wrote a row) / updated_at columns.
    has_import_id: bool = False
    has_updated_at: bool = False
    # Reference tables the checks need beyond Col.ref codes, by name (into RefData.tables).
    lookups: Mapping[str, Lookup] = field(default_factory=dict)
    # Parents whose codes a lookup holds in full: ref -> (lookup, its column of codes).
    codes_from: Mapping[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # A step over the whole batch before the checks: derived columns and the checks on them.
    prepare: Prepare | None = None
    # Checks across the columns of one row (over typed columns, validate.T(name)).
    row_checks: Callable[[], list[Check]] | None = None
    # Rules over the whole staged file, after the in-file duplicates, in this order.
    cross_row: tuple[CrossRowRule, ...] = ()
    # Steps after the load, given the staged column names.
    after_load: tuple[AfterLoad, ...] = ()
    # Set for a kind whose file may first be loaded directly: every batch COPYed straight into
    # `table` (no stage, no INSERT ... SELECT), inside a savepoint. The table's own constraints
    # refuse what the cross-row rules and the versioning would have treated differently (a key
    # stored already, a key twice in the file, a lab in two roles); this check, run once every
    # batch is in, covers what they cannot see. A refusal or a False undoes the attempt and the
    # file is staged as usual, so the outcome is the staged path's either way.
    direct_check: DirectCheck | None = None
    # The columns whose statistics are refreshed after a large load (empty: all of them).
    analyse: tuple[str, ...] = ()

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

    @property
    def target(self) -> Target:
        return Target(
            kind=self.kind, table=self.table, key=self.key, nullable_key=self.nullable_key,
            virtual=dict(self.virtual), has_import_id=self.has_import_id, has_updated_at=self.has_updated_at,
            analyse=self.analyse,
        )

    async def load(self, conn: asyncpg.Connection, stage: str, import_id: int, columns: list[str]) -> LoadCounts:
        loader = load_versioned if self.mode == "versioned" else load_upsert
        return await loader(conn, self.target, stage, import_id, columns)


def norm_word(text: str) -> str:
    """Normalisation used for enum words (mirrors the polars expression in validate.py)."""
    return " ".join(unicodedata.normalize("NFKC", text).strip().lower().split())


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
