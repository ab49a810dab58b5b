"""Lab selection for tenders and 双随机 draws: which labs are eligible for a product category,
and draws and assignments among them, stored so that they can be verified.

A lab is eligible for a category when it is active, the category is in its accredited scope,
and its effective class (the override in force, else the class of its newest succeeded run) has
a selection weight above 0 under the policy. A lab never graded has no class and is not eligible.

valid_until of an eligible lab is the last day its entry is known to hold: the earlier of the
override's valid_until (when an override sets the class) and the day of the next scheduled
grading run (from which a new class may apply); null when neither exists.
"""

from __future__ import annotations

import secrets
from datetime import date, datetime
from typing import Annotated

import asyncpg
import msgspec
import polars as pl

from labeval.db import draws as q
from labeval.db.draws import DrawRecord
from labeval.grading.draws import (
    ALGORITHM,
    Assignment,
    Candidate,
    SampleRequest,
    assign,
    draw_labs,
    first_pick_probabilities,
    not_excluded,
)
from scoring.policy import Policy, policy_hash

# Seeds are kept below 2^63 so that they fit PostgreSQL's bigint.
Seed = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class UnknownCategory(LookupError):
    def __init__(self, code: str) -> None:
        super().__init__(f"no product category {code!r}")
        self.code = code


class EligibleLab(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    province: str | None
    # The class that applies: an override's in force, else the computed one.
    effective_class: str
    # The class of the lab's newest succeeded run (null: graded only by an override).
    computed_class: str | None
    overridden: bool
    selection_weight: float
    # The run that computed computed_class.
    run_id: int | None
    valid_until: date | None


class Eligibility(msgspec.Struct, kw_only=True, frozen=True):
    product_category: str
    policy_hash: str
    labs: list[EligibleLab]


class DrawRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    product_category: Code
    count: Annotated[int, msgspec.Meta(ge=1, le=1000)]
    # E.g. the lab that tested the sample originally.
    exclude_labs: list[Code] = []
    # E.g. the province of the enterprise whose product is sampled.
    exclude_provinces: list[Code] = []
    # Omitted: the server chooses one (secrets.randbits(63)) and stores it.
    seed: Seed | None = None


class AssignmentRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    samples: Annotated[list[SampleRequest], msgspec.Meta(min_length=1, max_length=10000)]
    # Leave out the labs in each sample's enterprise province.
    exclude_own_province: bool = False
    seed: Seed | None = None


class Draw(msgspec.Struct, kw_only=True, frozen=True, tag="draw", tag_field="kind"):
    id: int
    product_category: str
    count: int
    exclude_labs: list[str]
    exclude_provinces: list[str]
    # Lab codes in the order drawn.
    chosen: list[str]
    # Every eligible lab with its class and weight when drawn (before the exclusions).
    candidates: list[Candidate]
    seed: int
    algorithm: str
    policy_hash: str
    actor: str | None
    created_at: datetime


class AssignmentBatch(msgspec.Struct, kw_only=True, frozen=True, tag="assignment", tag_field="kind"):
    id: int
    samples: list[SampleRequest]
    exclude_own_province: bool
    assignments: list[Assignment]
    # Eligible labs per product category when drawn.
    candidates: dict[str, list[Candidate]]
    seed: int
    algorithm: str
    policy_hash: str
    actor: str | None
    created_at: datetime


class DrawVerification(msgspec.Struct, kw_only=True, frozen=True):
    id: int
    verified: bool
    algorithm: str
    seed: int
    # The stored result and the one recomputed from the stored candidates and seed: lab codes
    # for a draw, {sample_code, lab_code} for an assignment.
    stored: list[str | Assignment]
    recomputed: list[str | Assignment] | None
    detail: str


def _eligible(lab: q.ScopedLab, policy: Policy, next_run: date | None) -> EligibleLab | None:
    effective = lab.override_class or lab.computed_class
    if effective is None:
        return None
    weight = float(policy.selection.weights[effective])
    if weight <= 0:
        return None
    ends = [d for d in (lab.override_valid_until, next_run) if d is not None]
    return EligibleLab(
        lab_code=lab.lab_code, province=lab.province, effective_class=effective, computed_class=lab.computed_class,
        overridden=lab.override_class is not None, selection_weight=weight, run_id=lab.run_id,
        valid_until=min(ends) if ends else None,
    )


async def eligible_labs(conn: asyncpg.Connection, categories: list[str], policy: Policy, *, today: date,
                        next_run: date | None = None) -> dict[str, list[EligibleLab]]:
    """Eligible labs per category (lab_code order). Raises UnknownCategory."""
    for c in categories:
        if not await q.category_exists(conn, c):
            raise UnknownCategory(c)
    scoped = await q.scoped_labs(conn, sorted(set(categories)), today)
    return {c: [e for lab in labs if (e := _eligible(lab, policy, next_run)) is not None]
            for c, labs in scoped.items()}


async def eligibility(conn: asyncpg.Connection, category: str, policy: Policy, *, today: date,
                      next_run: date | None = None) -> Eligibility:
    labs = (await eligible_labs(conn, [category], policy, today=today, next_run=next_run))[category]
    return Eligibility(product_category=category, policy_hash=policy_hash(policy), labs=labs)


def _candidates(labs: list[EligibleLab]) -> list[Candidate]:
    return [Candidate(lab_code=e.lab_code, class_=e.effective_class, weight=e.selection_weight, province=e.province)
            for e in labs]


def as_draw(record: DrawRecord) -> Draw | AssignmentBatch:
    fields = {"id": record.draw_id, "seed": record.seed, "algorithm": record.algorithm,
              "policy_hash": record.policy_hash, "actor": record.actor, "created_at": record.created_at,
              "candidates": record.candidates}
    if record.kind == "draw":
        return msgspec.convert({**record.request, **fields, "chosen": record.result}, Draw)
    return msgspec.convert({**record.request, **fields, "assignments": record.result}, AssignmentBatch)


async def make_draw(conn: asyncpg.Connection, req: DrawRequest, policy: Policy, *, today: date,
                    actor: str | None) -> Draw:
    """Draw and store. Raises UnknownCategory, NotEnoughLabs."""
    seed = secrets.randbits(63) if req.seed is None else req.seed
    candidates = _candidates((await eligible_labs(conn, [req.product_category], policy, today=today))[
        req.product_category])
    chosen = draw_labs(candidates, req.count, seed, exclude_labs=req.exclude_labs,
                       exclude_provinces=req.exclude_provinces)
    record = await q.insert(
        conn, kind="draw", request=msgspec.structs.replace(req, seed=seed), candidates=candidates, seed=seed,
        algorithm=ALGORITHM, policy_hash=policy_hash(policy), result=chosen, actor=actor,
    )
    return as_draw(record)


async def make_assignment(conn: asyncpg.Connection, req: AssignmentRequest, policy: Policy, *, today: date,
                          actor: str | None) -> AssignmentBatch:
    """Assign a lab to every sample and store the batch. Raises UnknownCategory, NotEnoughLabs."""
    seed = secrets.randbits(63) if req.seed is None else req.seed
    eligible = await eligible_labs(conn, [s.product_category for s in req.samples], policy, today=today)
    candidates = {c: _candidates(labs) for c, labs in eligible.items()}
    result = assign(req.samples, candidates, seed, exclude_own_province=req.exclude_own_province)
    record = await q.insert(
        conn, kind="assignment", request=msgspec.structs.replace(req, seed=seed), candidates=candidates,
        seed=seed, algorithm=ALGORITHM, policy_hash=policy_hash(policy), result=result, actor=actor,
    )
    return as_draw(record)


def recompute(draw: Draw | AssignmentBatch) -> list[str | Assignment]:
    if isinstance(draw, Draw):
        return draw_labs(draw.candidates, draw.count, draw.seed, exclude_labs=draw.exclude_labs,
                         exclude_provinces=draw.exclude_provinces)
    return assign(draw.samples, draw.candidates, draw.seed, exclude_own_province=draw.exclude_own_province)


async def verify_draw(conn: asyncpg.Connection, draw_id: int) -> DrawVerification:
    """Recompute a stored draw from its stored candidates, request and seed. Raises NotFound."""
    draw = as_draw(await q.get(conn, draw_id))
    stored = draw.chosen if isinstance(draw, Draw) else draw.assignments
    if draw.algorithm != ALGORITHM:
        return DrawVerification(id=draw.id, verified=False, algorithm=draw.algorithm, seed=draw.seed, stored=stored,
                                recomputed=None, detail=f"unknown algorithm {draw.algorithm!r} (this is {ALGORITHM})")
    try:
        again = recompute(draw)
    except ValueError as exc:
        return DrawVerification(id=draw.id, verified=False, algorithm=draw.algorithm, seed=draw.seed, stored=stored,
                                recomputed=None, detail=f"the stored record does not re-derive: {exc}")
    same = again == stored
    return DrawVerification(
        id=draw.id, verified=same, algorithm=draw.algorithm, seed=draw.seed, stored=stored, recomputed=again,
        detail="recomputed from the stored candidates and seed: identical" if same
        else "recomputed from the stored candidates and seed: the result differs",
    )


def excluded_candidates(draw: Draw) -> set[str]:
    """The candidates a draw's request left out (named, or in a named province)."""
    kept = {c.lab_code for c in not_excluded(draw.candidates, exclude_labs=draw.exclude_labs,
                                              exclude_provinces=draw.exclude_provinces)}
    return {c.lab_code for c in draw.candidates} - kept


def pool_probabilities(draw: Draw) -> dict[str, float]:
    """Each lab's chance of being drawn first from the pool the draw actually drew from."""
    return first_pick_probabilities(not_excluded(draw.candidates, exclude_labs=draw.exclude_labs,
                                                 exclude_provinces=draw.exclude_provinces))


def draw_frame(draw: Draw | AssignmentBatch) -> pl.DataFrame:
    """A stored draw as a table, every column needed to re-derive it: for a draw one row per
    candidate (drawn_order is its place among the labs drawn, null when not drawn); for an
    assignment one row per sample with the lab assigned."""
    common = {"draw_id": pl.Int64, "seed": pl.Int64, "algorithm": pl.String, "policy_hash": pl.String}
    head = (draw.id, draw.seed, draw.algorithm, draw.policy_hash)
    if isinstance(draw, Draw):
        order = {code: i + 1 for i, code in enumerate(draw.chosen)}
        out = excluded_candidates(draw)
        return pl.DataFrame(
            [(*head, draw.product_category, c.lab_code, c.class_, c.weight, c.province, c.lab_code in out,
              order.get(c.lab_code)) for c in draw.candidates],
            schema={**common, "product_category": pl.String, "lab_code": pl.String, "class": pl.String,
                    "weight": pl.Float64, "province": pl.String, "excluded": pl.Boolean, "drawn_order": pl.Int64},
            orient="row",
        )
    lab = {a.sample_code: a.lab_code for a in draw.assignments}
    return pl.DataFrame(
        [(*head, s.sample_code, s.product_category, s.enterprise_province, s.sampling_body, lab.get(s.sample_code))
         for s in draw.samples],
        schema={**common, "sample_code": pl.String, "product_category": pl.String,
                "enterprise_province": pl.String, "sampling_body": pl.String, "lab_code": pl.String},
        orient="row",
    )
