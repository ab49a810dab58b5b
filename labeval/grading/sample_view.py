"""A sample as an officer reads it: item by item, every lab's current result and the pairs."""

from __future__ import annotations

from datetime import date

import asyncpg

from labeval.db import labs as q
from labeval.grading.pair_view import pair_views
from labeval.models import ItemLimits, SampleItem, SampleView
from scoring.policy import Policy


async def sample_view(conn: asyncpg.Connection, code: str, policy: Policy, as_of: date) -> SampleView:
    sample = await q.get_sample(conn, code)
    results = await q.sample_results(conn, code)
    pairs = pair_views(await q.sample_pairs(conn, code, as_of), policy)
    items = []
    for item in await q.sample_items(conn, code):
        mine = [r for r in results if r.item_code == item["item_code"]]
        items.append(SampleItem(
            item=ItemLimits(**item),
            original=[r for r in mine if r.role == "original"],
            retest=[r for r in mine if r.role == "retest"],
            arbitration=[r for r in mine if r.role == "arbitration"],
            pairs=[p for p in pairs if p.item_code == item["item_code"]],
        ))
    return SampleView(code=sample.sample_code, category_code=sample.category_code, enterprise=sample.enterprise,
                      sampled_on=sample.sampled_on, province=sample.province,
                      original_lab_code=sample.original_lab_code, items=items)
