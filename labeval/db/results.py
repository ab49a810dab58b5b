"""Results: the version history of one result (corrections are kept as versions)."""

from __future__ import annotations

from datetime import date, datetime

import asyncpg
import msgspec

# Every column of a results row, in table order; result_versions has them all and superseded_at.
STORED_COLUMNS = (
    "result_id", "sample_code", "item_code", "lab_code", "role", "value", "censored", "censor_limit",
    "raw_value", "unit", "expanded_uncertainty", "coverage_k", "replicates", "verdict", "decision_rule",
    "reported_on", "version", "import_id", "created_at",
)


class ResultVersion(msgspec.Struct, kw_only=True, frozen=True):
    result_id: int
    version: int
    value: float | None
    censored: bool
    censor_limit: float | None
    raw_value: str | None
    unit: str | None
    expanded_uncertainty: float | None
    coverage_k: float | None
    replicates: int | None
    verdict: str | None
    decision_rule: str | None
    reported_on: date | None
    import_id: int | None
    created_at: datetime
    superseded_at: datetime | None


async def result_history(
    conn: asyncpg.Connection, sample_code: str, item_code: str, role: str, lab_code: str
) -> list[ResultVersion]:
    """Every version of one result (natural key), oldest first: the replaced ones from
    result_versions, then the current one from results (superseded_at null)."""
    rows = await conn.fetch(
        """SELECT result_id, version, value, censored, censor_limit, raw_value, unit, expanded_uncertainty,
                  coverage_k, replicates, verdict, decision_rule, reported_on, import_id, created_at, superseded_at
           FROM result_versions WHERE sample_code = $1 AND item_code = $2 AND role = $3 AND lab_code = $4
           UNION ALL
           SELECT result_id, version, value, censored, censor_limit, raw_value, unit, expanded_uncertainty,
                  coverage_k, replicates, verdict, decision_rule, reported_on, import_id, created_at,
                  NULL::timestamptz
           FROM results WHERE sample_code = $1 AND item_code = $2 AND role = $3 AND lab_code = $4
           ORDER BY version""",
        sample_code, item_code, role, lab_code,
    )
    return [ResultVersion(**dict(r)) for r in rows]
