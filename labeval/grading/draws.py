"""双随机 draws without I/O: weighted sampling of labs without replacement, and the random
assignment of a batch of samples to testing labs (抽检分离). Everything here is a function of
its arguments, so a stored draw (candidates, seed, request) re-derives to the same result.

The algorithm, ALGORITHM = "pcg64-sequential-v1", stated so that anyone can re-implement it:

1. Named labs and labs in named provinces are removed from the candidates; the rest are put
   in ascending lab_code order; labs with weight 0 are dropped.
2. rng = numpy.random.Generator(numpy.random.PCG64(seed)) (PCG64 seeded through SeedSequence).
3. Each pick: u = rng.random() (one double in [0, 1)); with the remaining labs' weights
   w_1..w_n in lab_code order and their running sums c_k = w_1 + … + w_k (left to right, in
   binary64), the pick is the first k with u·c_n < c_k. The picked lab leaves the pool.
   So at every step a lab is picked with probability weight / sum of the remaining weights.

An assignment uses one generator for the whole batch and takes the samples in request order; for
each sample the pool is the labs of its category that are neither its sampling body nor (when
asked) in its enterprise's province, narrowed to those used least so far in this batch, then one
pick as in step 3. A lab is therefore used a second time only once every lab of that pool has been
used once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec
import numpy as np

ALGORITHM = "pcg64-sequential-v1"


class Candidate(msgspec.Struct, kw_only=True, frozen=True):
    lab_code: str
    class_: str = msgspec.field(name="class")
    weight: float
    province: str | None = None


class SampleRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    sample_code: str
    product_category: str
    # The enterprise's province: its labs are left out when the assignment excludes own province.
    enterprise_province: str | None = None
    # The lab code of the body that took the sample; it never tests it.
    sampling_body: str | None = None


class Assignment(msgspec.Struct, kw_only=True, frozen=True):
    sample_code: str
    lab_code: str


class NotEnoughLabs(ValueError):
    """Fewer eligible labs than the draw asks for. `asked` and `eligible` are set when a draw is
    refused (the pages say it in the reader's language); an assignment names its sample instead."""

    def __init__(self, message: str, *, asked: int | None = None, eligible: int | None = None) -> None:
        super().__init__(message)
        self.asked = asked
        self.eligible = eligible


def generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _pick(pool: Sequence[Candidate], rng: np.random.Generator) -> int:
    """Index into pool (positive weights, lab_code order) of one weighted pick."""
    cumulative = []
    total = 0.0
    for c in pool:
        total += c.weight
        cumulative.append(total)
    target = rng.random() * total
    for k, ck in enumerate(cumulative):
        if target < ck:
            return k
    return len(pool) - 1  # only if rounding put target at total itself


def _pool(candidates: Iterable[Candidate]) -> list[Candidate]:
    return sorted((c for c in candidates if c.weight > 0), key=lambda c: c.lab_code)


def weighted_sample(candidates: Iterable[Candidate], count: int, seed: int) -> list[str]:
    """`count` distinct lab codes, in the order drawn (module docstring, steps 1–3)."""
    pool = _pool(candidates)
    if count > len(pool):
        raise NotEnoughLabs(f"{count} labs asked for, {len(pool)} eligible", asked=count, eligible=len(pool))
    rng = generator(seed)
    chosen = []
    for _ in range(count):
        chosen.append(pool.pop(_pick(pool, rng)).lab_code)
    return chosen


def draw_labs(candidates: Iterable[Candidate], count: int, seed: int, *, exclude_labs: Iterable[str] = (),
              exclude_provinces: Iterable[str] = ()) -> list[str]:
    """A draw: the candidates less the named labs and the labs in the named provinces, then
    `weighted_sample`."""
    return weighted_sample(not_excluded(candidates, exclude_labs=exclude_labs, exclude_provinces=exclude_provinces),
                           count, seed)


def not_excluded(candidates: Iterable[Candidate], *, exclude_labs: Iterable[str] = (),
                 exclude_provinces: Iterable[str] = ()) -> list[Candidate]:
    """The candidates a draw draws from: less the named labs and the labs in the named provinces."""
    labs, provinces = set(exclude_labs), set(exclude_provinces)
    return [c for c in candidates if c.lab_code not in labs and (c.province is None or c.province not in provinces)]


def first_pick_probabilities(candidates: Iterable[Candidate]) -> dict[str, float]:
    """Exact probability of each lab being drawn first: weight / sum of weights."""
    pool = _pool(candidates)
    total = sum(c.weight for c in pool)
    return {c.lab_code: c.weight / total for c in pool}


def eligible_for(sample: SampleRequest, candidates: Iterable[Candidate], *, exclude_own_province: bool
                 ) -> list[Candidate]:
    """The labs that may test this sample, before the batch's use counts."""
    return _pool(
        c for c in candidates
        if c.lab_code != sample.sampling_body
        and not (exclude_own_province and sample.enterprise_province is not None
                 and c.province == sample.enterprise_province)
    )


def assign(samples: Sequence[SampleRequest], candidates: dict[str, list[Candidate]], seed: int, *,
           exclude_own_province: bool) -> list[Assignment]:
    """One lab per sample (module docstring). `candidates` holds the eligible labs per product
    category. Raises NotEnoughLabs naming the first sample no lab may test."""
    rng = generator(seed)
    used: Counter[str] = Counter()
    out = []
    for s in samples:
        pool = eligible_for(s, candidates.get(s.product_category, []), exclude_own_province=exclude_own_province)
        if not pool:
            raise NotEnoughLabs(f"no eligible lab for sample {s.sample_code} ({s.product_category})")
        fewest = min(used[c.lab_code] for c in pool)
        pool = [c for c in pool if used[c.lab_code] == fewest]
        lab = pool[_pick(pool, rng)].lab_code
        used[lab] += 1
        out.append(Assignment(sample_code=s.sample_code, lab_code=lab))
    return out
