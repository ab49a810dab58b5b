"""Pairs as an officer reads them: the sides side by side and the outcome scoring gives them."""

from __future__ import annotations

from typing import Any

import polars as pl

from labeval.models import PairView, SideView
from scoring.pairs import score_pairs
from scoring.policy import Policy
from scoring.schema import PAIR_INPUT_SCHEMA

_ROLES = {"1": "original", "2": "retest", "3": "arbitration"}


def _side(row: dict[str, Any], n: str) -> SideView | None:
    if row[f"lab_{n}"] is None:
        return None
    return SideView(
        role=_ROLES[n], lab_code=row[f"lab_{n}"], value=row[f"value_{n}"], censored=bool(row[f"censored_{n}"]),
        censor_limit=row[f"censor_limit_{n}"], expanded_uncertainty=row[f"expanded_uncertainty_{n}"],
        verdict=row[f"verdict_{n}"], reported_on=row[f"reported_on_{n}"],
    )


def pair_views(rows: list[dict[str, Any]], policy: Policy, lab_code: str | None = None) -> list[PairView]:
    """Score PAIRS_QUERY rows (pair scores depend on the pair alone, so any subset scores as in
    the run) and shape them; `lab_code` names whose point of view sets role and partner (None:
    the original lab's)."""
    if not rows:
        return []
    frame = pl.DataFrame([{c: r[c] for c in PAIR_INPUT_SCHEMA} for r in rows], schema=PAIR_INPUT_SCHEMA,
                         orient="row")
    scored = score_pairs(frame.lazy(), policy).select("pair_id", "outcome", "arbiter_sides_with").collect()
    by_id = {s["pair_id"]: s for s in scored.iter_rows(named=True)}
    out = []
    for r in rows:
        original, retest = _side(r, "1"), _side(r, "2")
        me = lab_code or r["lab_1"]
        role = "original" if me == r["lab_1"] else "retest" if me == r["lab_2"] else "arbitration"
        # The arbiter's partner is the original lab (the one whose result was disputed).
        partner = r["lab_2"] if role == "original" else r["lab_1"]
        s = by_id[r["pair_id"]]
        out.append(PairView(
            pair_id=r["pair_id"], sample_code=r["sample_code"], item_code=r["item_code"],
            category_code=r["category_code"], role=role, partner=partner, original=original, retest=retest,
            arbitration=_side(r, "3"), outcome=s["outcome"], arbiter_sides_with=s["arbiter_sides_with"],
        ))
    return out
