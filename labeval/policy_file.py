"""The grading policy file: read once at start-up, validated, then passed to whatever grades.

scoring.policy decodes TOML text and does no I/O; this module is where the text comes from: the
file named by the `policy` setting, else the default policy shipped inside the scoring package.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import msgspec

from scoring.policy import Policy, policy_from_toml

DEFAULT_POLICY = "scoring/default_policy.toml"


class PolicyError(Exception):
    """The policy file cannot be used. The message names the file and, when it can, the field."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"policy {source}: {problem}")


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy in the TOML file at `path`; None: the default shipped with the package."""
    if path is None:
        source = DEFAULT_POLICY
        read = resources.files("scoring").joinpath("default_policy.toml").read_text
    else:
        source = str(path)
        read = Path(path).read_text
    try:
        text = read(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(source, f"cannot be read ({exc})") from exc
    try:
        return policy_from_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source, f"not valid TOML ({exc})") from exc
    except msgspec.ValidationError as exc:
        # msgspec names the field as a path: "... - at `$.evidence.fdr_alpha`".
        raise PolicyError(source, str(exc)) from exc
