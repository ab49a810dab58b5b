"""Grading policy: every convention and threshold that is a choice, not a fact.

The policy is a TOML file decoded into frozen msgspec Structs. Its canonical hash (SHA-256 of
the canonical JSON encoding of the decoded Struct, so comments and key order do not matter) is
stored with every grade, so a grading run can be reproduced and audited.
"""

from __future__ import annotations

import hashlib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import msgspec

Probability = Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)]


class PairPolicy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Conventions for scoring one original/retest pair (DOMAIN.md §3)."""

    # ISO 13528:2022 9.7.2 treats |En| >= 1.0 as a signal ("iso"); many PT providers write
    # |En| <= 1 satisfactory, i.e. only |En| > 1 is a signal ("inclusive").
    en_boundary: Literal["iso", "inclusive"] = "iso"
    # Probability level of the critical difference (ISO 5725-6 §5.3 uses 95 %).
    cd_probability: Probability = 0.95
    # Coverage factor assumed when a result has U but no k.
    default_coverage_k: Annotated[float, msgspec.Meta(gt=0.0)] = 2.0


class Policy(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str = "default"
    version: str = "1"
    pairs: PairPolicy = PairPolicy()


_decoder = msgspec.json.Decoder(Policy)
_encoder = msgspec.json.Encoder(order="sorted")


def load_policy(path: str | Path | None = None) -> Policy:
    """Decode a policy TOML file; None loads the default shipped with the package."""
    if path is None:
        raw = resources.files("scoring").joinpath("default_policy.toml").read_bytes()
    else:
        raw = Path(path).read_bytes()
    return msgspec.convert(tomllib.loads(raw.decode("utf-8")), Policy, strict=True)


def policy_hash(policy: Policy) -> str:
    """SHA-256 of the canonical JSON of the policy (sorted keys, defaults included)."""
    return hashlib.sha256(_encoder.encode(msgspec.to_builtins(policy, order="sorted"))).hexdigest()
