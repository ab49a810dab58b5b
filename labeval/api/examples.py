"""Examples in the OpenAPI document, built from the response Structs themselves (so an example
cannot drift from its schema: it is encoded from a value of that type)."""

from __future__ import annotations

from datetime import date

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

from labeval.models import LabPage, LabSummary, PairPage, PairView, SideView


def example(summary: str, value: msgspec.Struct) -> Example:
    return Example(summary=summary, value=msgspec.to_builtins(value))


def ok(container: type[msgspec.Struct], description: str, *examples: Example) -> ResponseSpec:
    """A 200 answer with its examples (no generated ones)."""
    return ResponseSpec(data_container=container, description=description, generate_examples=False,
                        examples=list(examples))


LAB_PAGE = example("A page of two labs and the cursor of the next page", LabPage(
    items=[
        LabSummary(code="L0001", name="浙江省检验检测研究院", province="浙江", status="active", current_class="II",
                   score=82.5, last_run=12, last_run_as_of=date(2026, 6, 30), effective_class="II"),
        LabSummary(code="L0002", name="江苏省产品质量监督检验研究院", province="江苏", status="active",
                   current_class="III", score=64.0, last_run=12, last_run_as_of=date(2026, 6, 30),
                   effective_class="III"),
    ],
    next="L0002",
))

PAIR_PAGE = example("The last page of a lab's pairs", PairPage(
    run_id=12, as_of=date(2026, 6, 30), window_start=date(2023, 7, 2),
    items=[PairView(
        pair_id=4711, sample_code="S2026-0001", item_code="HCHO", category_code="TEX", role="original",
        partner="L0002",
        original=SideView(role="original", lab_code="L0001", value=48.2, censored=False, censor_limit=None,
                          expanded_uncertainty=3.1, verdict="pass", reported_on=date(2026, 3, 1)),
        retest=SideView(role="retest", lab_code="L0002", value=57.9, censored=False, censor_limit=None,
                        expanded_uncertainty=3.4, verdict="pass", reported_on=date(2026, 4, 2)),
        outcome="discrepant",
    )],
    next=None,
))
