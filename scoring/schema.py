"""Column contracts between the service and the statistics.

The service (labeval) builds a LazyFrame with PAIR_INPUT_SCHEMA, one row per original/retest pair
(one test item on one sample); scoring.pairs.score_pairs adds scoring.pairs.PAIR_SCORE_SCHEMA. Side 1 is
the original lab, side 2 the retest lab, side 3 the arbitration lab (all side-3 columns null when
there was no arbitration).
"""

from __future__ import annotations

import polars as pl

SIDES = ("1", "2", "3")

_ITEM = {
    "pair_id": pl.Int64,
    "sample_code": pl.String,
    "item_code": pl.String,
    "category_code": pl.String,
    # "quantitative" | "qualitative"
    "kind": pl.String,
    # "absolute" | "relative" | "horwitz"; for "relative" the two sd are fractions of the level,
    # for "horwitz" they are ignored and sigma_R comes from the Horwitz function of the level
    # (expressed as a mass fraction through `horwitz_scale`: level * horwitz_scale = mass fraction).
    "precision_model": pl.String,
    "repeatability_sd": pl.Float64,
    "reproducibility_sd": pl.Float64,
    "horwitz_scale": pl.Float64,
    "lower_limit": pl.Float64,
    "upper_limit": pl.Float64,
    "lod": pl.Float64,
}

_SIDE = {
    "lab": pl.String,
    # The reported number; null when censored or qualitative.
    "value": pl.Float64,
    # True for "<L" / 未检出 / ND; the limit L goes in censor_limit (null when only "ND" was
    # reported and the item has no LOD).
    "censored": pl.Boolean,
    "censor_limit": pl.Float64,
    "expanded_uncertainty": pl.Float64,
    "coverage_k": pl.Float64,
    "replicates": pl.Int32,
    # "pass" | "fail" | null
    "verdict": pl.String,
    # "simple" | "guard_band" | null (ILAC-G8)
    "decision_rule": pl.String,
    "reported_on": pl.Date,
}


def _side_schema(side: str) -> dict[str, pl.DataType]:
    return {f"{name}_{side}": dtype for name, dtype in _SIDE.items()}


PAIR_INPUT_SCHEMA: dict[str, pl.DataType] = {
    **_ITEM,
    **_side_schema("1"),
    **_side_schema("2"),
    **_side_schema("3"),
}

OUTCOMES = (
    "consistent",
    "discrepant",
    "reversal_within_uncertainty",
    "reversal",
    "censored_consistent",
    "censored_discrepant",
    "qualitative_agree",
    "qualitative_reversal",
)
# Outcomes that count as a discrepancy against the pair (reversal_within_uncertainty is reported
# but never penalised: the verdicts differ only within the results' uncertainty).
DISCREPANT_OUTCOMES = ("discrepant", "reversal", "censored_discrepant", "qualitative_reversal")


def empty_pairs() -> pl.DataFrame:
    return pl.DataFrame(schema=PAIR_INPUT_SCHEMA)
