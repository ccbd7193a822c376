"""Decision policy: the shipped YAML loads and hashes; strict parsing names every bad key."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinaudit.audit import policy_yaml
from clinaudit.audit.policy_base import PolicyBase
from clinaudit.audit.types import AuditInputError
from clinaudit.studies import get_study, registered_studies
from clinaudit.studies.multisite_cxr.policy import (
    Policy,
    PolicyError,
    Problem,
    describe_policy,
    load_policy,
    shipped_policy,
)

SHIPPED = Path(__file__).resolve().parents[1] / "studies" / "multisite_cxr" / "policy.yaml"


def _raw() -> dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))


def _load(raw: dict[str, Any]):
    return Policy.from_bytes(yaml.safe_dump(raw, sort_keys=False).encode(), source="test.yaml")


def _problem_keys(err: pytest.ExceptionInfo[PolicyError]) -> set[str]:
    return {p.key for p in err.value.problems}


def test_shipped_policy_loads_with_hash_of_file_bytes() -> None:
    policy = load_policy()
    assert shipped_policy().resolve() == SHIPPED == get_study("multisite_cxr").shipped_policy()
    assert policy.sha256 == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert policy.text == SHIPPED.read_text(encoding="utf-8")
    assert (policy.study, policy.version) == ("multisite_cxr", "1.1.0")
    assert policy.policy_id == "clinaudit.multisite_cxr.site_deployment"
    assert policy.critical_findings == ("Effusion", "Pneumothorax", "Atelectasis")
    assert (policy.criteria.auroc.threshold, policy.criteria.auroc.statistic) == (0.6, "ci_low")
    assert (policy.criteria.ece.threshold, policy.criteria.ece.statistic) == (0.1, "estimate")
    assert policy.drift.max_decision == "CONDITIONAL GO" and not policy.drift.mmd  # PSI decides
    assert policy.allowed_mitigations == ("site_recalibration",)
    assert policy.retrained_model_counts is False
    assert policy.monitoring.cadence("GO") == "monthly"
    assert policy.monitoring.cadence("CONDITIONAL GO") == "weekly"


def test_user_path_overrides_and_hashes_its_own_bytes(tmp_path: Path) -> None:
    text = SHIPPED.read_text(encoding="utf-8").replace("floor: 0.60", "floor: 0.70", 1)
    path = tmp_path / "mine.yaml"
    path.write_text(text, encoding="utf-8")
    policy = load_policy(path)
    assert policy.criteria.auroc.threshold == 0.7
    assert policy.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() != load_policy().sha256
    assert policy.source == str(path)


def test_unknown_keys_are_named_with_the_allowed_keys() -> None:
    raw = _raw()
    raw["criteria"]["auroc"]["floor_typo"] = 0.7
    raw["monitorng"] = {}
    with pytest.raises(PolicyError, match=r"criteria\.auroc\.floor_typo") as err:
        _load(raw)
    assert _problem_keys(err) == {"criteria.auroc.floor_typo", "monitorng"}
    message = str(err.value)
    assert "['enabled', 'statistic', 'floor']" in message
    assert "remove it or correct its spelling" in message


def test_missing_thresholds_are_all_named() -> None:
    raw = _raw()
    del raw["criteria"]["auroc"]["floor"]
    del raw["criteria"]["ece"]["limit"]
    del raw["monitoring"]["drift"]["psi_action"]
    with pytest.raises(PolicyError, match=r"criteria\.auroc\.floor.*missing") as err:
        _load(raw)
    assert _problem_keys(err) == {
        "criteria.auroc.floor",
        "criteria.ece.limit",
        "monitoring.drift.psi_action",
    }
    assert "add 'limit: 0.10'" in str(err.value)


def test_a_disabled_criterion_needs_no_threshold() -> None:
    raw = _raw()
    raw["criteria"]["sensitivity"] = {"enabled": False}
    policy = _load(raw)
    assert not policy.criteria.sensitivity.enabled
    assert "sensitivity" not in describe_policy(policy).split("Blocking criteria")[1].split("\n")[1]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ("criteria", "auroc", "floor"),
            "high",
            r"criteria\.auroc\.floor: received 'high' \(str\)",
        ),
        (("criteria", "auroc", "floor"), 1.5, r"a number in \(0, 1\)"),
        (("criteria", "ece", "statistic"), "median", r"one of \['estimate', 'ci_high'\]"),
        (("version",), 1.0, r"version: received 1\.0 \(float\).*quote the value"),
        (("drift", "max_decision"), "MAYBE", r"'GO', 'CONDITIONAL GO', 'NO-GO'"),
        (
            ("allowed_mitigations",),
            ["retraining"],
            r"distinct values from \['site_recalibration'\]",
        ),
        (("critical_findings",), ["Effusion", "Effusion"], r"critical_findings.*distinct"),
        (("drift", "mmd"), "yes please", r"drift\.mmd.*true or false.*mmd: true"),
        (("monitoring", "suspend_after_consecutive_actions"), 0, r"an integer >= 1"),
        (("criteria",), [1, 2], r"criteria: received \[1, 2\]"),
    ],
)
def test_wrong_types_and_ranges_name_the_key_and_fix(
    path: tuple[str, ...], value: Any, expected: str
) -> None:
    raw = _raw()
    target = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(PolicyError, match=expected) as err:
        _load(raw)
    assert _problem_keys(err) == {".".join(path)}
    assert err.value.problems[0].fix


def test_relations_between_thresholds_are_checked() -> None:
    raw = _raw()
    raw["monitoring"]["drift"]["psi_warn"] = 0.5
    raw["monitoring"]["ece"]["warn_margin"] = 0.2
    with pytest.raises(PolicyError, match=r"psi_warn < psi_action") as err:
        _load(raw)
    assert _problem_keys(err) == {"monitoring.drift", "monitoring.ece.warn_margin"}


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="invalid YAML"):
        Policy.from_bytes(b"criteria: [unclosed", source="bad.yaml")
    with pytest.raises(PolicyError, match=r"<top level>: received \['a'\]"):
        Policy.from_bytes(b"- a\n")
    with pytest.raises(AuditInputError, match="an existing policy YAML file"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(AuditInputError, match=r"expected one of \[.*'multisite_cxr'"):
        get_study("no_such_study")


@pytest.mark.parametrize("owner", ["multisite_cxr", "sepsis_ews", "cxr_triage"])
def test_a_policy_of_another_study_is_refused_naming_that_study(tmp_path: Path, owner: str) -> None:
    # Each study's policy has its own schema: a file written for another study must be refused
    # with one problem that names the study it belongs to, not a wall of "unknown key" problems.
    path = tmp_path / "other.yaml"
    path.write_bytes(get_study(owner).shipped_policy().read_bytes())
    for study in registered_studies():
        if study.name == owner:
            assert study.load_policy(path).study == owner
            continue
        with pytest.raises(PolicyError, match=rf"study: received '{owner}'") as err:
            study.load_policy(path)
        assert [p.key for p in err.value.problems] == ["study"]
        assert f"--study {owner}" in err.value.problems[0].fix


def test_every_study_policy_shares_one_strict_parser() -> None:
    # One parser (policy_yaml, through PolicyBase) serves every study: same file-level problems.
    for study in registered_studies():
        parse = study.policy_type.from_bytes
        assert issubclass(study.policy_type, PolicyBase)
        with pytest.raises(PolicyError, match="bytes that are not UTF-8") as err:
            parse(b"\xff\xfe", source="bin.yaml")
        assert err.value.source == "bin.yaml" and err.value.problems[0].key == "<file>"
        with pytest.raises(PolicyError, match=r"<file>: received invalid YAML"):
            parse(b"criteria: [unclosed")
        described = study.load_policy().describe()
        assert study.load_policy().sha256 in described or study.load_policy().policy_id in described
    assert PolicyError is policy_yaml.PolicyError and Problem is policy_yaml.Problem


def test_policy_yaml_schema_helpers() -> None:
    schema = {
        "name": policy_yaml.leaf("str", "x"),
        "limits": policy_yaml.section(
            warn=policy_yaml.leaf("fraction", "0.1"),
            on=policy_yaml.leaf("bool", default=True),
        ),
    }
    problems: list[Problem] = []
    values = policy_yaml.parse_mapping({"name": 3, "limits": {"warn": 2}}, schema, "", problems)
    assert values == {"name": 3, "limits": {"warn": 2, "on": True}}
    assert [(p.key, p.expected) for p in problems] == [
        ("name", "a non-empty string"),
        ("limits.warn", "a number in (0, 1)"),
    ]
    assert 'name: "3"' in problems[0].fix
    parsed = policy_yaml.parse_policy_bytes(
        b"name: a\nlimits: {warn: 0.5}\n", schema, source="t", cross_checks=lambda v: []
    )
    assert parsed.values == {"name": "a", "limits": {"warn": 0.5, "on": True}}
    assert parsed.sha256 == hashlib.sha256(b"name: a\nlimits: {warn: 0.5}\n").hexdigest()
    pairs = [("limits", "warn", 0.5, "action", 0.4), ("limits", "lo", 0.1, "hi", 0.2)]
    assert [p.received for p in policy_yaml.order_problems(pairs)] == ["warn=0.5, action=0.4"]
    flat = policy_yaml.flatten_section({"a": {"b": 1, "c": ["x"]}, "d": 2})
    assert flat == {"a_b": 1, "a_c": ("x",), "d": 2}


def test_describe_policy_states_the_rule() -> None:
    policy = load_policy()
    text = describe_policy(policy)
    assert policy.sha256 in text and "version 1.1.0" in text
    assert "lower CI bound of AUROC >= 0.60" in text
    assert "ECE <= 0.10" in text
    assert "at best CONDITIONAL GO" in text
    assert "site AI lead -> governance committee chair" in text
    assert "no (a new model version, own approval)" in text
