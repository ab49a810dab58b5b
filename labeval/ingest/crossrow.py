"""Cross-row rules worked out over the staged keys in polars (hash joins in memory), the rows
they reject then moved out of the stage in one statement each (labeval.db.intake).

In SQL the rules were correlated lookups of the stage in itself: they needed an index on the
stage, its statistics and a delete per rule (13 s of a million-row import). Over the keys
alone (row number, key columns: a few tens of MB for a million rows) they are joins of a
fraction of a second. The outcome is the same: the same rows rejected with the same reasons,
each rule applied to the rows the previous ones left.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import asyncpg
import polars as pl

from labeval.db import intake
from labeval.db.intake import Target
from labeval.ingest.spec import DirectCheck, RefData

ROW = "_row"


def file_duplicates(keys: pl.DataFrame, key: tuple[str, ...], nullable: tuple[str, ...]) -> pl.DataFrame:
    """(later, first_row): every row whose key an earlier row of the file has, with that first
    row. Nullable key columns match when both are empty (COALESCE(col, '')); a row with an empty
    column of any other key column matches no row (SQL's NULL = NULL is not true)."""
    norm = keys.with_columns([pl.col(k).fill_null("") for k in nullable])
    strict = [k for k in key if k not in nullable]
    if strict:
        norm = norm.filter(pl.all_horizontal([pl.col(k).is_not_null() for k in strict]))
    first = norm.with_columns(pl.col(ROW).min().over(list(key)).alias("first_row"))
    return first.filter(pl.col(ROW) != pl.col("first_row")).select(pl.col(ROW).alias("later"), "first_row")


_CODE3 = ["sample_code", "item_code", "lab_code"]
_OTHER_ROLES = ("retest", "arbitration")


def _hits(candidates: pl.DataFrame, *others: pl.DataFrame, on: list[str]) -> pl.Series:
    """Row numbers of the candidates that match a row of any of `others` on `on`."""
    # A semi join keeps each candidate once however many rows match it: no need to dedupe `others`.
    found = [candidates.join(o.select(on), on=on, how="semi").get_column(ROW) for o in others]
    return pl.concat(found).unique() if found else pl.Series(ROW, [], pl.Int64)


def _by_register_lab(results: pl.DataFrame, register: pl.DataFrame) -> pl.DataFrame:
    """The rows of `results` by the lab the register names as their sample's original lab (rule
    1's register half; `register` as intake.original_labs, null labs matching nothing)."""
    return results.join(
        register.rename({"original_lab_code": "lab_code"}), on=["sample_code", "lab_code"], how="semi"
    )


def dependent_results(staged: pl.DataFrame, current: pl.DataFrame, originals: pl.DataFrame) -> pl.DataFrame:
    """(_row, rule): the staged results that break the independence of a retest, rule numbers as
    in labeval.db.intake.RESULT_RULE_REASONS. `staged`: _row, sample_code, item_code, role,
    lab_code of the file's rows left after its duplicates; `current`: the database's current
    results of those sample items; `originals`: sample_code, original_lab_code from the samples
    register. Each rule looks at the file as the previous rules left it (the trigger's rules first,
a missing original last)."""
    role = pl.col("role")
    bad: list[pl.DataFrame] = []

    def drop(f: pl.DataFrame, rows: pl.Series, rule: int) -> pl.DataFrame:
        if rows.len():
            bad.append(pl.DataFrame({ROW: rows, "rule": pl.repeat(rule, rows.len(), dtype=pl.Int32, eager=True)}))
            return f.filter(~pl.col(ROW).is_in(rows.implode()))
        return f

    f = staged
    # 1: a retest or arbitration by the sample's original lab (the register's, or the lab of an
    # original result in the database or the file).
    cand = f.filter(role.is_in(_OTHER_ROLES))
    by_register = _by_register_lab(cand, originals).get_column(ROW)
    by_result = _hits(cand, current.filter(role == "original"), f.filter(role == "original"), on=_CODE3)
    f = drop(f, pl.concat([by_register, by_result]).unique(), 1)
    # 2: an original by a lab that also retested or arbitrated the sample item.
    cand = f.filter(role == "original")
    f = drop(f, _hits(cand, current.filter(role.is_in(_OTHER_ROLES)), f.filter(role.is_in(_OTHER_ROLES)),
                      on=_CODE3), 2)
    # 3: an arbitration by the lab that did the retest.
    cand = f.filter(role == "arbitration")
    f = drop(f, _hits(cand, current.filter(role == "retest"), f.filter(role == "retest"), on=_CODE3), 3)
    # 4: a retest by the lab whose arbitration of the sample item is stored already. An arbitration
    # by the retest lab in the same file went at rule 3 (which keeps the retest): only the
    # database is looked at here.
    cand = f.filter(role == "retest")
    f = drop(f, _hits(cand, current.filter(role == "arbitration"), on=_CODE3), 4)
    # 5: a retest or arbitration with no original result of the sample item anywhere.
    cand = f.filter(role.is_in(_OTHER_ROLES))
    with_original = _hits(cand, current.filter(role == "original"), f.filter(role == "original"),
                          on=["sample_code", "item_code"])
    drop(f, cand.filter(~pl.col(ROW).is_in(with_original.implode())).get_column(ROW), 5)
    if not bad:
        return pl.DataFrame(schema={ROW: pl.Int64, "rule": pl.Int32})
    return pl.concat(bad)


async def reject_file_duplicates(
    conn: asyncpg.Connection, target: Target, stage: str, import_id: int, values: list[str], keys: pl.DataFrame
) -> pl.DataFrame:
    """A key seen again later in the file: the later rows are rejected (as a duplicate when the
    `values` columns are the same, as a conflict when they differ). Returns the keys left."""
    dups = await asyncio.to_thread(file_duplicates, keys, target.key, target.nullable_key)
    if not dups.height:
        return keys
    await intake.reject_file_duplicates(
        conn, target, stage, import_id, values, dups.get_column("later").to_list(),
        dups.get_column("first_row").to_list(),
    )
    return keys.filter(~pl.col(ROW).is_in(dups.get_column("later").implode()))


async def reject_dependent_results(
    conn: asyncpg.Connection, target: Target, stage: str, import_id: int, keys: pl.DataFrame, refs: RefData
) -> pl.DataFrame:
    """Results that break the independence of a retest (against the database and the file).
    Returns the keys left."""
    current = await intake.current_results_of_stage(conn, stage)
    bad = await asyncio.to_thread(dependent_results, keys, current, refs.tables[REGISTER])
    if not bad.height:
        return keys
    await intake.reject_dependent_results(
        conn, stage, import_id, bad.get_column(ROW).to_list(), bad.get_column("rule").to_list()
    )
    return keys.filter(~pl.col(ROW).is_in(bad.get_column(ROW).implode()))


# The lookup (labeval.ingest.kinds) holding each sample's original lab from the samples register.
REGISTER = "register"


def without_original(keys: pl.DataFrame) -> pl.DataFrame:
    """(sample_code, item_code), once each, of the retests and arbitrations among `keys` whose
    sample item has no original result among them."""
    role = pl.col("role")
    originals = keys.filter(role == "original").select("sample_code", "item_code")
    return (
        keys.filter(role.is_in(_OTHER_ROLES))
        .select("sample_code", "item_code")
        .unique()
        .join(originals, on=["sample_code", "item_code"], how="anti")
    )




class DirectSummary(NamedTuple):
    """What a direct load of results leaves to check once every batch is in."""

    # The sample items whose retests have no original in the file (without_original).
    lacking: pl.DataFrame
    # Retests and arbitrations by the register's original lab (their count).
    by_register: int


def summarise_direct(keys: pl.DataFrame, refs: RefData) -> DirectSummary:
    """The direct check's first step, over the file's valid keys (in the worker thread)."""
    others = keys.filter(pl.col("role").is_in(_OTHER_ROLES))
    return DirectSummary(without_original(keys), _by_register_lab(others, refs.tables[REGISTER]).height)


async def _direct_stands(conn: asyncpg.Connection, import_id: int, summary: DirectSummary) -> bool:
    """After a direct load of results: would the independence rules have rejected nothing?

    The load got this far, so the database refused no row: no key was stored already or came
    twice, no lab holds two roles of a sample item (the primary key of results), and every code
    was in the reference data read under the load's lock. Rule 1's other half, a retest or
    arbitration by the register's original lab, is counted in the summary (the trigger on results
    that would refuse it is suspended for the load). Rule 5 (a retest or arbitration with no
    original anywhere) looks forward in the file, so no constraint can say it while the rows
    arrive. `summary.lacking` holds the sample items whose retests have no original in the file
    itself (usually none); each needs one stored by an earlier import."""
    if summary.by_register:
        return False
    lacking = summary.lacking
    if not lacking.height:
        return True
    found = await intake.current_originals(
        conn, import_id, lacking.get_column("sample_code").to_list(), lacking.get_column("item_code").to_list()
    )
    return found == lacking.height


DIRECT_RESULTS_CHECK = DirectCheck(summarise=summarise_direct, passes=_direct_stands, trigger="results_check_insert")
