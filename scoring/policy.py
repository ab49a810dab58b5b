"""Grading policy: every convention and threshold that is a choice, not a fact.

The policy is a TOML file decoded into frozen msgspec Structs. Its canonical hash (SHA-256 of
the canonical JSON encoding of the decoded Struct, so comments and key order do not matter) is
stored with every grade, so a grading run can be reproduced and audited.

Sections (all optional in the TOML; defaults below are the shipped policy, see
default_policy.toml):

- ``pairs``: conventions for one pair (scoring.pairs).
- ``evidence``: how pairs become lab evidence (scoring.evidence): look-back window, baseline rates,
  robust attribution fit, empirical-Bayes target, FDR level, funnel winsorisation.
- ``cusum``: risk-adjusted Bernoulli CUSUM (Steiner et al. 2000) and its simulated limit.
- ``indicators``: PT round rules (CLIA-style), look-back for other indicators.
- ``grading``: score cut-offs, minimum evidence, hysteresis.
- ``score``: point deductions, chosen by rule name (only rules present in the table apply).
- ``caps``: hard caps, chosen by rule name -> worst-allowed class.
- ``selection``: tender/双随机 selection weight per class (0 = excluded).
"""

from __future__ import annotations

import hashlib
import tomllib
from typing import Annotated, Literal

import msgspec

from scoring.classes import CLASSES, ClassLabel

Probability = Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)]
Positive = Annotated[float, msgspec.Meta(gt=0.0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class PairPolicy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Conventions for scoring one original/retest pair (scoring.pairs)."""

    # ISO 13528:2022 9.7.2 treats |En| >= 1.0 as a signal ("iso"); many PT providers write
    # |En| <= 1 satisfactory, i.e. only |En| > 1 is a signal ("inclusive").
    en_boundary: Literal["iso", "inclusive"] = "iso"
    # Probability level of the critical difference (ISO 5725-6 §5.3 uses 95 %).
    cd_probability: Probability = 0.95
    # Coverage factor assumed when a result has U but no k.
    default_coverage_k: Annotated[float, msgspec.Meta(gt=0.0)] = 2.0


class EvidencePolicy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How scored pairs become lab-level evidence (scoring.evidence)."""

    # Pairs completed within this many days before as_of are evidence.
    window_days: PositiveInt = 1095
    # Level of the baseline discrepancy rate used for expected counts (indirect standardisation):
    # "item" shrinks each item's rate to its category's, which shrinks to the overall rate;
    # "category" stops at category; "overall" uses one rate.
    baseline: Literal["item", "category", "overall"] = "item"
    # Pseudo-pairs of the parent rate added when shrinking a child rate (0 = no shrinkage).
    baseline_prior_pairs: NonNegative = 20.0
    # Standardised differences are clipped at +-clip_s before fitting (a gross error cannot swamp).
    clip_s: Positive = 4.0
    # Huber tuning constant for the robust bias fit (in units of the row's standard deviation).
    huber_k: Positive = 1.5
    irls_iterations: PositiveInt = 10
    # Ridge on lab biases; with a tiny ridge the solution satisfies sum(b) = 0 per component.
    ridge: Positive = 1e-6
    # Floor added to each lab's share of a pair's excess mean square when splitting blame, so
    # two labs with no estimated excess share a discrepancy equally.
    blame_floor: Positive = 0.1
    # Above this number of labs the bias standard errors use a diagonal approximation.
    dense_limit: PositiveInt = 3000
    # Policy target for a lab's attributed discrepancy rate (per pair as original or retest).
    target_rate: Probability = 0.05
    # Cap on alpha + beta of the beta-binomial prior when labs show no overdispersion.
    eb_max_prior_pairs: Positive = 1000.0
    credible_level: Probability = 0.95
    # Benjamini-Hochberg level.
    fdr_alpha: Probability = 0.05
    # Two-sided winsorisation fraction of funnel z-scores for overdispersion (Spiegelhalter 2005).
    funnel_winsor: Annotated[float, msgspec.Meta(ge=0.0, lt=0.5)] = 0.1
    # Identifiability: a lab's attribution counts only when its component of the comparison
    # graph has at least this many labs (two labs that only retest each other cannot tell who
    # is wrong; three can, by the median) ...
    min_component_labs: Annotated[int, msgspec.Meta(ge=2)] = 3
    # ... and it was compared with at least this many distinct labs.
    min_partners: PositiveInt = 2
    # A lab's precision (excess variance) is judged only with at least this many distinct
    # partners: with fewer, the variances of a lab and its partners fit their comparisons exactly
    # and cannot be told apart.
    min_partners_precision: PositiveInt = 3
    # Relevance of a bias: normal labs differ by the method's between-lab spread, estimated as
    # tau from all identifiable labs. A bias counts only beyond peer_z * tau (after taking off
    # two standard errors); 2.0 is set by simulation of realistic worlds (see docs/methods.md).
    peer_z: Positive = 2.0
    # Lower bound of tau (units of sigma_R; also of the peers' spread of excess variance), so
    # that a handful of labs cannot claim that normal labs do not differ at all.
    tau_floor: NonNegative = 0.1
    # Relevance of a discrepancy rate: the lab's rate must lie above the overdispersed funnel at
    # this z (3.09 = the 99.8 % limit of Spiegelhalter 2005).
    rate_peer_z: Positive = 3.09
    # Quantitative pairs a lab needs (as original or retest, both numbers present) before its
    # bias or its discrepancy rate is judged.
    min_quantitative_pairs: PositiveInt = 20
    # Data-problem patterns (scoring.patterns): the band just inside a limit, in sigma_R, where
    # shaded values land; how far above the detection limit (in sigma_R) a partner's number is a
    # clear amount; the least rate of verdicts contradicting their own number expected of an
    # honest lab (clerical slips); and the least number of observed cases before a pattern
    # counts at all.
    shading_band: Positive = 0.5
    nd_clear: Positive = 2.0
    contradiction_floor: Probability = 0.002
    pattern_min_observed: PositiveInt = 3
    # Gross errors: a comparison whose residual from the bias fit exceeds outlier_s (units of s,
    # where the method's precision gives sd 1: 5 is a one-in-1.7-million event) is an outlier;
    # outlier_floor is the least rate of them expected of an honest lab.
    outlier_s: Positive = 5.0
    outlier_floor: Probability = 0.002


class CusumPolicy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Risk-adjusted Bernoulli CUSUM (Steiner, Cook, Farewell, Treasure 2000)."""

    # Odds ratio of discrepancy the chart is tuned to detect.
    odds_ratio: Annotated[float, msgspec.Meta(gt=1.0)] = 2.0
    # In-control average run length (in pairs) the limit h is set to.
    arl0: PositiveInt = 5000
    n_sim: PositiveInt = 1000
    seed: int = 20180613
    # Simulated runs are truncated at max_steps_factor * arl0 steps.
    max_steps_factor: PositiveInt = 4
    # The chart's in-control rate is that of a lab at the edge of its peers' normal spread: the
    # expected rate raised by peer_z times the funnel's between-lab sd (0 = the plain expected
    # rate). A lab whose discrepancy rate is high but normal must not be in alarm for ever.
    peer_z: NonNegative = 1.96


class IndicatorPolicy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Other indicators (scoring.indicators)."""

    window_days: PositiveInt = 1095
    # PT: |z| >= unsatisfactory_z unsatisfactory, >= questionable_z questionable (ISO 13528 9.4).
    pt_questionable_z: Positive = 2.0
    pt_unsatisfactory_z: Positive = 3.0
    # A PT round is unsatisfactory when at least this share of its results is unsatisfactory
    # (CLIA 42 CFR 493.803 counts an event unsatisfactory below 80 % acceptable results).
    pt_round_unsatisfactory_share: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.2
    # Unsuccessful: pt_unsuccessful_count unsatisfactory rounds among pt_unsuccessful_window
    # consecutive rounds of one scheme (CLIA: 2 of 3, which includes 2 consecutive).
    pt_unsuccessful_count: PositiveInt = 2
    pt_unsuccessful_window: PositiveInt = 3


class GradingPolicy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Minimum score of classes I, II and III, descending (score >= cutoffs[i] -> CLASSES[i];
    # below the last -> IV). The classes themselves are fixed in scoring.classes.
    cutoffs: tuple[float, float, float] = (90.0, 75.0, 60.0)
    # Class given to a lab with no previous grade and too little evidence.
    new_lab_class: ClassLabel = "II"
    # Pairs (as original or retest) needed before any statistical rule may act.
    min_pairs: PositiveInt = 30
    # An upgrade needs this many consecutive qualifying runs (this run included) ...
    upgrade_after_runs: PositiveInt = 2
    # ... and moves at most this many classes.
    max_classes_up: PositiveInt = 1

    def __post_init__(self) -> None:
        if any(a <= b for a, b in zip(self.cutoffs, self.cutoffs[1:])):
            raise ValueError("grading.cutoffs must be strictly descending")


class ScoreRule(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Deduction = min(cap, per_unit * max(0, metric - threshold))."""

    threshold: float = 0.0
    per_unit: NonNegative
    cap: NonNegative


ScoreRuleName = Literal[
    # evidence (statistical: apply only with min_pairs)
    "discrepancy_rate",  # metric rate_beyond_peers (shrunk rate above the peers' funnel)
    "bias",  # metric bias_beyond_peers (conservative |bias| beyond the peers' spread)
    "qualitative_rate",  # metric qualitative_rate (shrunk wrong-verdict rate on qualitative items)
    "precision",  # metric precision_beyond_peers (excess variance beyond the peers' spread)
    # indicators
    "pt_unsatisfactory",  # metric pt_unsatisfactory_results
    "pt_questionable",  # metric pt_questionable_results
    "late_reports",  # metric late_share
    "complaints",  # metric upheld_complaints
    "audit_major",  # metric audit_major
    "audit_minor",  # metric audit_minor
    "inaccurate_reports",  # metric inaccurate_reports (SAMR Order 39 art. 13)
]

CapRuleName = Literal[
    "falsified_report",  # any falsified-report finding (SAMR Order 39 art. 14)
    "pt_unsuccessful",  # CLIA-style unsuccessful PT
    "fdr_excess",  # BH q of O/E excess < fdr_alpha and rate beyond the peers (statistical)
    "fdr_bias",  # BH q of bias < fdr_alpha and bias beyond the peers (statistical)
    "fdr_precision",  # BH q of excess variance < fdr_alpha and beyond the peers (statistical)
    "fdr_qualitative",  # BH q of wrong qualitative verdicts < fdr_alpha, rate above threshold
    "cusum_signal",  # CUSUM above its limit now (statistical)
    "data_shading",  # values shaded just inside a limit (statistical, scoring.patterns)
    "data_nd_hiding",  # not detected where partners find clear amounts (statistical)
    "data_verdict_contradiction",  # verdicts contradicting the lab's own numbers (statistical)
    "data_outliers",  # gross errors: residuals far beyond the method's precision (statistical)
]


def _default_score_rules() -> dict[str, ScoreRule]:
    return {
        "discrepancy_rate": ScoreRule(threshold=0.0, per_unit=400.0, cap=40.0),
        "bias": ScoreRule(threshold=0.0, per_unit=20.0, cap=30.0),
        "qualitative_rate": ScoreRule(threshold=0.05, per_unit=200.0, cap=30.0),
        "precision": ScoreRule(threshold=0.0, per_unit=10.0, cap=30.0),
        "pt_unsatisfactory": ScoreRule(threshold=0.0, per_unit=5.0, cap=20.0),
        "pt_questionable": ScoreRule(threshold=0.0, per_unit=1.0, cap=5.0),
        "late_reports": ScoreRule(threshold=0.05, per_unit=50.0, cap=10.0),
        "complaints": ScoreRule(threshold=0.0, per_unit=5.0, cap=15.0),
        "audit_major": ScoreRule(threshold=0.0, per_unit=5.0, cap=20.0),
        "audit_minor": ScoreRule(threshold=0.0, per_unit=1.0, cap=5.0),
        "inaccurate_reports": ScoreRule(threshold=0.0, per_unit=10.0, cap=30.0),
    }


def _default_caps() -> dict[str, str]:
    return {
        "falsified_report": "IV",
        "pt_unsuccessful": "III",
        "fdr_excess": "III",
        "fdr_bias": "III",
        "fdr_precision": "III",
        "fdr_qualitative": "III",
        "cusum_signal": "II",
        "data_shading": "III",
        "data_nd_hiding": "III",
        "data_verdict_contradiction": "III",
        "data_outliers": "III",
    }


class ScorePolicy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    base: Annotated[float, msgspec.Meta(gt=0.0, le=100.0)] = 100.0
    rules: dict[ScoreRuleName, ScoreRule] = msgspec.field(default_factory=_default_score_rules)


class CapPolicy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    rules: dict[CapRuleName, ClassLabel] = msgspec.field(default_factory=_default_caps)


def _default_selection() -> dict[str, float]:
    return {"I": 1.0, "II": 0.7, "III": 0.3, "IV": 0.0}


class SelectionPolicy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Relative draw weight per class; 0 means not eligible (the shipped policy excludes IV).
    weights: dict[ClassLabel, NonNegative] = msgspec.field(default_factory=_default_selection)


class Policy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str = "default"
    version: str = "2"
    pairs: PairPolicy = PairPolicy()
    evidence: EvidencePolicy = EvidencePolicy()
    cusum: CusumPolicy = CusumPolicy()
    indicators: IndicatorPolicy = IndicatorPolicy()
    grading: GradingPolicy = GradingPolicy()
    score: ScorePolicy = ScorePolicy()
    caps: CapPolicy = CapPolicy()
    selection: SelectionPolicy = SelectionPolicy()

    def __post_init__(self) -> None:
        if set(self.selection.weights) != set(CLASSES):
            raise ValueError("selection.weights must give a weight for every class")


_encoder = msgspec.json.Encoder(order="sorted")


def policy_from_toml(text: str) -> Policy:
    """Decode and validate a policy from TOML text (reading the file is the caller's job).

    Raises tomllib.TOMLDecodeError for malformed TOML and msgspec.ValidationError, whose message
    names the field (``$.evidence.fdr_alpha``), for a value the policy does not allow.
    """
    return msgspec.convert(tomllib.loads(text), Policy, strict=True)


# policy_hash of the policies seen, by id; each entry keeps its policy alive, so an id is not
# reused while its entry exists. A Policy is frozen: its hash never changes.
_HASHES: dict[int, tuple[Policy, str]] = {}
_HASHES_KEPT = 32


def policy_hash(policy: Policy) -> str:
    """SHA-256 of the canonical JSON of the policy (sorted keys, defaults included).

    Remembered per policy object: the feed answers it on every request, and encoding the whole
    policy each time was a visible share of that request's time (`labeval bench api`)."""
    kept = _HASHES.get(id(policy))
    if kept is not None and kept[0] is policy:
        return kept[1]
    digest = hashlib.sha256(_encoder.encode(msgspec.to_builtins(policy, order="sorted"))).hexdigest()
    if len(_HASHES) >= _HASHES_KEPT:
        _HASHES.clear()
    _HASHES[id(policy)] = (policy, digest)
    return digest
