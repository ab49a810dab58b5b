"""`labeval demo`: a simulated world (labeval.devtools.world) loaded through intake and graded.

The data go through the same intake code as real files (CSV files in a temporary directory), then
a grading run scores them. The planted labs (each bad kind, and the labs of the isolated groups)
are returned with a description so the class table can show them next to their grades.
"""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

import asyncpg
import polars as pl

from labeval.devtools.world import World, WorldConfig, build_world
from labeval.grading.run import run_grading
from labeval.ingest import ingest_path
from labeval.models import GradingRun
from scoring.policy import Policy

_GROUP_NOTE = {"isolated_pair": "isolated pair", "isolated_triangle": "isolated triangle"}


def demo_world(n_labs: int, seed: int, *, today: date | None = None) -> World:
    """The demo's world: default knobs, everything reported by `today`; the isolated pair and
    triangle when there are enough labs to leave a main group around them."""
    return build_world(WorldConfig(n_labs=n_labs, seed=seed, as_of=today or date.today(),
                                   isolated_groups=n_labs >= 20))


def describe(kind: str, magnitude: float) -> str:
    """A few words saying what a planted lab does."""
    match kind:
        case "biased":
            return f"biased {magnitude:+.1f} σR"
        case "noisy":
            return f"noisy σr × {magnitude:g}"
        case "shading":
            return "shades results at the limit"
        case "nd_hider":
            return f"hides {magnitude:.0%} of detections as ND"
        case "verdict_flipper":
            return f"{magnitude:.0%} verdicts contradict the number"
        case "careless_qualitative":
            return f"{magnitude:.0%} wrong qualitative verdicts"
        case "gross_errors":
            return f"{magnitude:.0%} unit slips / transpositions"
        case _:
            return "normal"


def planted_labs(world: World) -> dict[str, str]:
    """lab_code -> description, for every bad lab and every lab of an isolated group."""
    shown = world.truth.filter((pl.col("kind") != "normal") | (pl.col("group") != "main"))
    out = {}
    for row in shown.iter_rows(named=True):
        text = describe(row["kind"], row["magnitude"])
        if row["group"] in _GROUP_NOTE:
            text += f" · {_GROUP_NOTE[row['group']]}"
        out[row["lab_code"]] = text
    return out


async def run_demo(conn: asyncpg.Connection, policy: Policy, *, n_labs: int, seed: int,
                   today: date | None = None) -> tuple[GradingRun, dict[str, str]]:
    """Build the world, write CSV files, load them through intake, run a grading run."""
    today = today or date.today()
    world = demo_world(n_labs, seed, today=today)
    with tempfile.TemporaryDirectory(prefix="labeval-demo-") as tmp:
        for kind, frame in world.intake_tables().items():
            path = Path(tmp) / f"{kind}.csv"
            frame.write_csv(path)
            report = await ingest_path(conn, kind, path, source="demo")
            if report.rejected:
                raise RuntimeError(f"demo data rejected by intake ({kind}): {report.rejects[:5]}")
    result = await run_grading(conn, policy, as_of=today, trigger="demo")
    return result, planted_labs(world)

