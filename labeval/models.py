"""msgspec Structs at the service's boundaries (API responses, CLI JSON)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

import msgspec
import polars as pl

from scoring.classes import ClassLabel
from scoring.evidence import EVIDENCE_SCHEMA
from scoring.grading import Reason

# The classes are fixed in scoring.classes; this is their name at the service boundary.
ClassCode = ClassLabel
Change = Literal["up", "down", "held", "new"]


class Health(msgspec.Struct, kw_only=True, frozen=True):
    status: str


class Ready(msgspec.Struct, kw_only=True, frozen=True):
    status: str
    database: str
    schema_version: int | None = None


class Override(msgspec.Struct, kw_only=True, frozen=True):
    """An officer's class for a lab, applied over the computed class through valid_until."""

    override_id: int
    lab_code: str
    class_: ClassCode = msgspec.field(name="class")
    reason: str
    valid_until: date
    set_by: str
    set_at: datetime
    revoked_by: str | None = None
    revoked_at: datetime | None = None
    revoke_reason: str | None = None
    expired_at: datetime | None = None


class LabSummary(msgspec.Struct, kw_only=True, frozen=True):
    code: str
    name: str
    province: str | None
    status: str
    current_class: ClassCode | None
    score: float | None
    last_run: int | None
    last_run_as_of: date | None
    # current_class is the computed class; an open override, if any, is what applies.
    override: Override | None = None
    effective_class: ClassCode | None = None


class _Grade(msgspec.Struct, kw_only=True, frozen=True):
    class_: ClassCode = msgspec.field(name="class")
    score: float | None
    previous_class: ClassCode | None
    change: Change
    pairs: int
    reasons: list[Reason]


class GradeRow(_Grade, kw_only=True, frozen=True):
    """A lab's grade in one run (a lab's history)."""

    run_id: int
    as_of: date


_PYTHON_TYPE = {pl.Float64: float, pl.Int64: int, pl.Boolean: bool, pl.Date: date, pl.String: str}

# A lab's evidence from a run: one field per column of scoring's EVIDENCE_SCHEMA (described in the
# methods documentation), null when the run had no value. Built from the schema so the two agree.
Evidence = msgspec.defstruct(
    "Evidence",
    [(name, _PYTHON_TYPE[dtype.base_type()] | None, None) for name, dtype in EVIDENCE_SCHEMA.items()],
    kw_only=True, frozen=True,
)


class LabDetail(msgspec.Struct, kw_only=True, frozen=True):
    code: str
    name: str
    province: str | None
    accreditation_no: str | None
    status: str
    scopes: list[str]
    current_class: ClassCode | None
    score: float | None
    last_run: int | None
    evidence: Evidence | None
    history: list[GradeRow]
    override: Override | None = None
    effective_class: ClassCode | None = None
    # Pairs the latest run compared for the lab, and where to read them and the lab's results.
    pairs: int = 0
    pairs_href: str = ""
    results_href: str = ""


class LabGrade(_Grade, kw_only=True, frozen=True):
    """One lab's grade (a run's grades)."""

    lab_code: str


class EffectiveGrade(LabGrade, kw_only=True, frozen=True):
    """A run's grade with the override in force today, if any, and the class that applies."""

    override: Override | None = None
    effective_class: ClassCode


RunStatus = Literal["running", "succeeded", "failed", "abandoned"]


class GradingRun(msgspec.Struct, kw_only=True, frozen=True):
    run_id: int
    as_of: date
    policy_hash: str
    policy_name: str
    policy_version: str
    trigger: str
    n_pairs: int
    n_labs: int
    data_hash: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    status: RunStatus
    actor: str | None = None
    window_start: date | None = None
    window_end: date | None = None
    code_version: str | None = None
    error: str | None = None
    # The read time: the data as committed at this instant is what the run graded.
    snapshot_at: datetime | None = None
    timings: dict[str, float] = {}
    class_counts: dict[str, int] = {}
    # SHA-256 of the canonical encoding of every input (pairs, labs, indicators, previous grades).
    input_digest: str | None = None
    grades: list[LabGrade] = []


class LabPage(msgspec.Struct, kw_only=True, frozen=True):
    """One page of labs by code; `next` is the `after` of the next page (null on the last)."""

    items: list[LabSummary]
    next: str | None = None


class RunPage(msgspec.Struct, kw_only=True, frozen=True):
    """One page of runs, newest first; `next` is the `after` of the next page (null on the last)."""

    items: list[GradingRun]
    next: int | None = None


class OverridePage(msgspec.Struct, kw_only=True, frozen=True):
    """One page of overrides, newest first; `next` is the `after` of the next page."""

    items: list[Override]
    next: int | None = None


Role = Literal["original", "retest", "arbitration"]


class SideView(msgspec.Struct, kw_only=True, frozen=True):
    """One lab's result in a pair (or a sample's result)."""

    role: Role
    lab_code: str
    value: float | None
    censored: bool
    censor_limit: float | None
    expanded_uncertainty: float | None
    verdict: str | None
    reported_on: date | None


class PairView(msgspec.Struct, kw_only=True, frozen=True):
    """A pair of a lab: the original and the retest of one item on one sample (and the
    arbitration, if any), with the outcome scored under the latest run's policy."""

    pair_id: int
    sample_code: str
    item_code: str
    category_code: str
    # The lab's own role in the pair, and the other side's lab.
    role: Role
    partner: str
    original: SideView
    retest: SideView
    arbitration: SideView | None = None
    # Null when undecidable (e.g. a side without a value).
    outcome: str | None = None
    arbiter_sides_with: str | None = None


class PairPage(msgspec.Struct, kw_only=True, frozen=True):
    """A lab's pairs in the latest run's window, by pair_id; `next` is the `after` of the next page."""

    run_id: int | None
    as_of: date | None
    window_start: date | None
    items: list[PairView]
    next: int | None = None


class ResultRow(msgspec.Struct, kw_only=True, frozen=True):
    """A current result (corrections superseded) of a lab."""

    result_id: int
    sample_code: str
    item_code: str
    role: Role
    lab_code: str
    value: float | None
    censored: bool
    censor_limit: float | None
    raw_value: str | None
    unit: str | None
    expanded_uncertainty: float | None
    verdict: str | None
    reported_on: date | None
    version: int


class ResultPage(msgspec.Struct, kw_only=True, frozen=True):
    """One page of results by result_id; `next` is the `after` of the next page."""

    items: list[ResultRow]
    next: int | None = None


class ItemLimits(msgspec.Struct, kw_only=True, frozen=True):
    item_code: str
    name: str
    unit: str | None
    kind: str
    lower_limit: float | None
    upper_limit: float | None
    lod: float | None


class SampleItem(msgspec.Struct, kw_only=True, frozen=True):
    """One item of a sample: its limits, every current result side by side, and the pair outcomes
    (one per retest) under the start-up policy."""

    item: ItemLimits
    original: list[ResultRow]
    retest: list[ResultRow]
    arbitration: list[ResultRow]
    pairs: list[PairView]


class SampleView(msgspec.Struct, kw_only=True, frozen=True):
    code: str
    category_code: str
    enterprise: str | None
    sampled_on: date | None
    province: str | None
    original_lab_code: str | None
    items: list[SampleItem]
