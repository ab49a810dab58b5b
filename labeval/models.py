"""msgspec Structs at the service's boundaries (API responses, CLI JSON)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

import msgspec

from scoring.grading import Reason

ClassCode = Literal["I", "II", "III", "IV"]
Change = Literal["up", "down", "held", "new"]


class Health(msgspec.Struct, kw_only=True, frozen=True):
    status: str


class Ready(msgspec.Struct, kw_only=True, frozen=True):
    status: str
    database: str
    schema_version: int | None = None


class LabSummary(msgspec.Struct, kw_only=True, frozen=True):
    code: str
    name: str
    province: str | None
    status: str
    current_class: ClassCode | None
    score: float | None
    last_run: int | None
    last_run_as_of: date | None


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


class LabGrade(_Grade, kw_only=True, frozen=True):
    """One lab's grade (a run's grades)."""

    lab_code: str


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
    grades: list[LabGrade] = []
