"""msgspec Structs at the service's boundaries (API responses, CLI JSON)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

import msgspec

from scoring.classes import ClassLabel
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
    evidence: dict[str, Any] | None
    history: list[GradeRow]
    override: Override | None = None
    effective_class: ClassCode | None = None


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
