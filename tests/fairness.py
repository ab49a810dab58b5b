"""Fairness of grading on simulated worlds (labeval.devtools.world): helpers, not tests.

``evaluate(world, policy)`` scores a world's pairs without a database (score_pairs ->
lab_evidence -> grade) and joins each lab's class with the truth; ``summarise(frame)`` turns one
or more evaluated worlds into the figures the fairness targets are about:

* ``normal_below_mode``: share of normal labs with >= 30 pairs graded below the modal class of
  those labs (mode taken per world);
* ``caught[kind]``: share of each bad kind's labs with >= 80 pairs put in class III or IV (main
  group; the biased labs of the isolated groups have their own figures);
* ``isolated_innocent_downgraded``: normal labs of an isolated pair or triangle put in III/IV;
* ``triangle_biased_caught``: the biased lab of the isolated triangle (>= 80 pairs) in III/IV;
* ``partners_downgraded`` vs ``others_downgraded``: normal labs (>= 30 pairs, main group) with at
  least 30 % of their pairs against bad labs, against those with less than 10 %, put in III/IV.

``python -m tests.fairness --seeds 5`` prints the figures per seed and pooled (on FAIR_CONFIG
worlds; ``--default-shares`` for the default world).
"""

from __future__ import annotations

import argparse
import math

import msgspec
import polars as pl

from labeval.devtools.world import BAD_KINDS, World, WorldConfig, build_world
from labeval.policy_file import load_policy
from scoring.evidence import lab_evidence
from scoring.grading import grade
from scoring.pairs import score_pairs
from scoring.policy import Policy

# The worlds the fairness targets are checked on: 300 labs, more biased, noisy and shading labs
# than the default so that enough of them reach 80 pairs; everything else realistic (defaults).
FAIR_CONFIG = WorldConfig(n_labs=300, biased_share=0.06, noisy_share=0.06, shading_share=0.06)
MIN_PAIRS_NORMAL = 30
MIN_PAIRS_BAD = 80
PARTNER_SHARE_HIGH = 0.3
PARTNER_SHARE_LOW = 0.1
DOWN = ("III", "IV")


def partner_shares(world: World) -> pl.DataFrame:
    """Per lab: pairs as original or retest lab and the share of them against a bad lab."""
    kind = dict(zip(world.truth["lab_code"], world.truth["kind"]))
    bad = [lab for lab, k in kind.items() if k != "normal"]
    p = world.pairs
    sides = pl.concat([
        p.select(lab=pl.col("lab_1"), partner=pl.col("lab_2")),
        p.select(lab=pl.col("lab_2"), partner=pl.col("lab_1")),
    ])
    return sides.group_by("lab").agg(
        pl.len().alias("world_pairs"), pl.col("partner").is_in(bad).mean().alias("bad_partner_share")
    ).rename({"lab": "lab_code"})


def evaluate(world: World, policy: Policy | None = None) -> pl.DataFrame:
    """One row per lab: truth (kind, magnitude, group), class, score, pairs_compared, partner shares."""
    policy = policy or load_policy()
    as_of = world.config.as_of
    scored = score_pairs(world.pairs.lazy(), policy)
    evidence = lab_evidence(scored, policy, as_of=as_of)
    grades = grade(evidence, None, None, policy, labs=world.truth["lab_code"].to_list())
    return (
        world.truth.select("lab_code", "kind", "magnitude", "group")
        .join(grades.select("lab_code", "class", "score", "pairs_compared"), on="lab_code", how="left")
        .join(partner_shares(world), on="lab_code", how="left")
        .with_columns(
            pl.col("pairs_compared").fill_null(0),
            pl.col("world_pairs").fill_null(0),
            pl.col("bad_partner_share").fill_null(0.0),
            seed=pl.lit(world.config.seed),
        )
    )


def _share(frame: pl.DataFrame, cond: pl.Expr) -> tuple[int, int, float]:
    n = frame.height
    k = frame.select(cond.sum()).item() if n else 0
    return int(k), n, (k / n if n else math.nan)


def summarise(frame: pl.DataFrame, labels: tuple[str, ...] = ("I", "II", "III", "IV")) -> dict:
    """The fairness figures of one or more evaluated worlds (frames of evaluate, concatenated)."""
    rank = {c: i for i, c in enumerate(labels)}
    down = pl.col("class").is_in(DOWN)
    graded = frame.with_columns(pl.col("class").replace_strict(rank, default=None, return_dtype=pl.Int32).alias("rank"))

    normal = graded.filter((pl.col("kind") == "normal") & (pl.col("world_pairs") >= MIN_PAIRS_NORMAL))
    mode = normal.group_by("seed").agg(pl.col("rank").mode().min().alias("mode_rank"))
    normal = normal.join(mode, on="seed")
    out: dict = {"seeds": frame["seed"].n_unique(), "labs": frame.height}
    k, n, s = _share(normal, pl.col("rank") > pl.col("mode_rank"))
    out |= {"normal_30": n, "normal_below_mode_n": k, "normal_below_mode": s}
    k, n, s = _share(normal, down)
    out |= {"normal_downgraded_n": k, "normal_downgraded": s}

    out["caught"] = {}
    for kind in BAD_KINDS:
        sub = graded.filter((pl.col("kind") == kind) & (pl.col("group") == "main")
                            & (pl.col("world_pairs") >= MIN_PAIRS_BAD))
        out["caught"][kind] = dict(zip(("caught", "n", "share"), _share(sub, down)))

    isolated = graded.filter(pl.col("group") != "main")
    innocent = isolated.filter(pl.col("kind") == "normal")
    k, n, _ = _share(innocent, down)
    out |= {"isolated_innocent_downgraded": k, "isolated_innocent": n}
    tri = isolated.filter((pl.col("group") == "isolated_triangle") & (pl.col("kind") == "biased")
                          & (pl.col("world_pairs") >= MIN_PAIRS_BAD))
    k, n, _ = _share(tri, down)
    out |= {"triangle_biased_caught": k, "triangle_biased": n}
    pair_b = isolated.filter((pl.col("group") == "isolated_pair") & (pl.col("kind") == "biased")
                             & (pl.col("world_pairs") >= MIN_PAIRS_BAD))
    k, n, _ = _share(pair_b, down)
    out |= {"pair_biased_caught": k, "pair_biased": n}

    main_normal = normal.filter(pl.col("group") == "main")
    k, n, s = _share(main_normal.filter(pl.col("bad_partner_share") >= PARTNER_SHARE_HIGH), down)
    out |= {"partners_downgraded_n": k, "partners": n, "partners_downgraded": s}
    k, n, s = _share(main_normal.filter(pl.col("bad_partner_share") < PARTNER_SHARE_LOW), down)
    out |= {"others_downgraded_n": k, "others": n, "others_downgraded": s}
    return out


def run(seeds: range, config: WorldConfig | None = None, policy: Policy | None = None) -> pl.DataFrame:
    """Evaluated worlds for each seed (the config's other knobs kept), concatenated."""
    base = config or FAIR_CONFIG
    policy = policy or load_policy()
    return pl.concat([evaluate(build_world(msgspec.structs.replace(base, seed=s)), policy) for s in seeds])


def _fmt(k: int, n: int) -> str:
    return f"{k}/{n}" + (f" ({k / n:.0%})" if n else "")


def table(frame: pl.DataFrame) -> str:
    """The summary per seed and pooled, as text."""
    rows = [(str(s), summarise(frame.filter(pl.col("seed") == s))) for s in sorted(frame["seed"].unique())]
    rows.append(("pooled", summarise(frame)))
    head = ["seed", "normal<mode", "normal III/IV", *BAD_KINDS, "iso innocent III/IV", "triangle biased",
            "pair biased", "partners III/IV", "others III/IV"]
    lines = ["\t".join(head)]
    for name, s in rows:
        cells = [
            name, _fmt(s["normal_below_mode_n"], s["normal_30"]), _fmt(s["normal_downgraded_n"], s["normal_30"]),
            *[_fmt(s["caught"][k]["caught"], s["caught"][k]["n"]) for k in BAD_KINDS],
            _fmt(s["isolated_innocent_downgraded"], s["isolated_innocent"]),
            _fmt(s["triangle_biased_caught"], s["triangle_biased"]),
            _fmt(s["pair_biased_caught"], s["pair_biased"]),
            _fmt(s["partners_downgraded_n"], s["partners"]), _fmt(s["others_downgraded_n"], s["others"]),
        ]
        lines.append("\t".join(cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--labs", type=int, default=FAIR_CONFIG.n_labs)
    ap.add_argument("--default-shares", action="store_true", help="the default shares of bad kinds, not FAIR_CONFIG's")
    args = ap.parse_args()
    base = WorldConfig() if args.default_shares else FAIR_CONFIG
    config = msgspec.structs.replace(base, n_labs=args.labs)
    frame = run(range(args.first_seed, args.first_seed + args.seeds), config)
    print(table(frame))


if __name__ == "__main__":
    main()
