"""Grading policy: decoding, validation, the canonical hash, and the policy file at start-up."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from labeval.app import create_app
from labeval.cli import main
from labeval.config import Settings
from labeval.policy_file import PolicyError, load_policy
from scoring.policy import (
    CapPolicy,
    CusumPolicy,
    EvidencePolicy,
    GradingPolicy,
    IndicatorPolicy,
    PairPolicy,
    Policy,
    ScorePolicy,
    SelectionPolicy,
    policy_from_toml,
    policy_hash,
)

SHIPPED = resources.files("scoring").joinpath("default_policy.toml").read_text("utf-8")


def test_shipped_policy_equals_struct_defaults():
    p = load_policy()
    assert p == Policy()
    assert policy_hash(p) == policy_hash(Policy())
    assert p.pairs == PairPolicy(en_boundary="iso", cd_probability=0.95, default_coverage_k=2.0)
    assert p.grading.cutoffs == (90.0, 75.0, 60.0)
    assert p.caps.rules["falsified_report"] == "IV"
    assert p.caps.rules["fdr_excess"] == "III"
    assert p.caps.rules["cusum_signal"] == "II"
    assert p.selection.weights["IV"] == 0.0


def test_hash_ignores_comments_and_key_order(tmp_path):
    reordered = tmp_path / "p.toml"
    reordered.write_text(
        "# a comment\nversion = \"2\"\nname = \"default\"\n"
        + SHIPPED.split('version = "2"', 1)[1],
        "utf-8",
    )
    assert policy_hash(load_policy(reordered)) == policy_hash(load_policy())


def test_hash_changes_with_any_number(tmp_path):
    changed = tmp_path / "p.toml"
    changed.write_text(SHIPPED.replace("fdr_alpha = 0.05", "fdr_alpha = 0.1"), "utf-8")
    p = load_policy(changed)
    assert p.evidence.fdr_alpha == 0.1
    assert policy_hash(p) != policy_hash(load_policy())
    assert len(policy_hash(p)) == 64


def test_partial_file_takes_defaults(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('name = "x"\n[pairs]\nen_boundary = "inclusive"\n', "utf-8")
    p = load_policy(f)
    assert p.pairs.en_boundary == "inclusive"
    assert p.grading == GradingPolicy()


def test_removing_a_rule_table_disables_it(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("[caps.rules]\nfalsified_report = \"IV\"\n", "utf-8")
    p = load_policy(f)
    assert set(p.caps.rules) == {"falsified_report"}


@pytest.mark.parametrize(
    "text",
    [
        "unknown = 1\n",
        "[evidence]\nfdr_alpha = 1.5\n",
        "[evidence]\nbaseline = \"lab\"\n",
        "[grading]\ncutoffs = [60.0, 75.0, 90.0]\n",
        "[grading]\ncutoffs = [90.0, 75.0]\n",
        "[grading]\nnew_lab_class = \"V\"\n",
        "[caps.rules]\nfdr_excess = \"V\"\n",
        "[caps.rules]\nmade_up_rule = \"III\"\n",
        "[score.rules.bias]\nper_unit = -1.0\ncap = 3.0\n",
        "[selection.weights]\nI = 1.0\n",
        "[cusum]\nodds_ratio = 1.0\n",
        "[evidence]\nmin_pairs = \"30\"\n",
    ],
)
def test_invalid_policies_are_rejected(tmp_path, text):
    f = tmp_path / "p.toml"
    f.write_text(text, "utf-8")
    with pytest.raises(msgspec.ValidationError):
        policy_from_toml(text)
    with pytest.raises(PolicyError, match=f"policy {f}: "):
        load_policy(f)


def test_policy_errors_name_the_file_and_the_field(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[evidence]\nfdr_alpha = 1.5\n", "utf-8")
    with pytest.raises(PolicyError, match=r"bad\.toml: .*\$\.evidence\.fdr_alpha"):
        load_policy(f)
    f.write_text("[evidence\n", "utf-8")
    with pytest.raises(PolicyError, match=r"bad\.toml: not valid TOML"):
        load_policy(f)
    with pytest.raises(PolicyError, match=r"missing\.toml: cannot be read"):
        load_policy(tmp_path / "missing.toml")


@pytest.mark.parametrize("command", [["serve"], ["grade"], ["db", "status"]])
def test_a_bad_policy_stops_every_command_before_it_starts(tmp_path, command):
    # No database is reachable at this URL: the command must stop on the policy before it
    # tries to connect (or to serve).
    f = tmp_path / "bad.toml"
    f.write_text("[grading]\ncutoffs = [90.0, 75.0]\n", "utf-8")
    r = CliRunner().invoke(
        main, ["--database-url", "postgresql://nobody@127.0.0.1:1/none", "--policy", str(f), *command]
    )
    assert r.exit_code == 2, r.output
    assert f"policy {f}: " in r.output and "got 2 - at `$.grading.cutoffs`" in r.output


def test_shipped_file_is_complete():
    # every struct field is written out in the shipped TOML, so officers see every number
    raw = tomllib.loads(SHIPPED)
    for section, struct in (("evidence", EvidencePolicy), ("grading", GradingPolicy)):
        assert set(raw[section]) == set(struct.__struct_fields__)
    assert set(raw["score"]["rules"]) == set(Policy().score.rules)


def test_the_app_refuses_a_bad_policy_before_it_serves(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[caps.rules]\nfdr_excess = \"V\"\n", "utf-8")
    # the classes are fixed (I..IV): "V" is not one, and the message names the field
    with pytest.raises(PolicyError, match=r"bad\.toml: Invalid enum value .V. - at `\$\.caps\.rules"):
        create_app(Settings(database_url="postgresql://nobody@127.0.0.1:1/none", policy=str(f)))


def test_every_policy_field_and_rule_is_documented():
    # docs/policy.md is what an officer reads to change a number: every field and every named
    # rule of the policy appears there as `name`.
    doc = (Path(__file__).resolve().parents[1] / "docs" / "policy.md").read_text(encoding="utf-8")
    fields = {f for section in (
        Policy, PairPolicy, EvidencePolicy, CusumPolicy, IndicatorPolicy, GradingPolicy, ScorePolicy,
        CapPolicy, SelectionPolicy,
    ) for f in section.__struct_fields__}
    rules = set(Policy().score.rules) | set(Policy().caps.rules)
    missing = sorted(name for name in fields | rules if f"`{name}`" not in doc and f"`[{name}]`" not in doc
                     and f".{name}]`" not in doc)
    assert missing == []
