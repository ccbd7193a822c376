"""Decision policy: the shipped YAML loads and hashes; strict parsing names every bad key."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinaudit.audit.policy import (
    PolicyError,
    describe_policy,
    load_policy,
    policy_from_bytes,
    shipped_policies,
)
from clinaudit.audit.types import AuditInputError

SHIPPED = Path(__file__).resolve().parents[1] / "audit" / "policies" / "multisite_cxr.yaml"


def _raw() -> dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))


def _load(raw: dict[str, Any]):
    return policy_from_bytes(yaml.safe_dump(raw, sort_keys=False).encode(), source="test.yaml")


def _problem_keys(err: pytest.ExceptionInfo[PolicyError]) -> set[str]:
    return {p.key for p in err.value.problems}


def test_shipped_policy_loads_with_hash_of_file_bytes() -> None:
    policy = load_policy()
    assert shipped_policies()["multisite_cxr"].resolve() == SHIPPED
    assert policy.sha256 == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert policy.text == SHIPPED.read_text(encoding="utf-8")
    assert (policy.study, policy.version) == ("multisite_cxr", "1.0.0")
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
        policy_from_bytes(b"criteria: [unclosed", source="bad.yaml")
    with pytest.raises(PolicyError, match=r"<top level>: received \['a'\]"):
        policy_from_bytes(b"- a\n")
    with pytest.raises(AuditInputError, match="an existing policy YAML file"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(AuditInputError, match=r"one of \['multisite_cxr'"):
        load_policy(study="no_such_study")
    path = tmp_path / "other.yaml"
    path.write_bytes(SHIPPED.read_bytes())
    with pytest.raises(PolicyError, match=r"study: received 'multisite_cxr'.*'sepsis_ews'"):
        load_policy(path, study="sepsis_ews")


def test_describe_policy_states_the_rule() -> None:
    policy = load_policy()
    text = describe_policy(policy)
    assert policy.sha256 in text and "version 1.0.0" in text
    assert "lower CI bound of AUROC >= 0.60" in text
    assert "ECE <= 0.10" in text
    assert "at best CONDITIONAL GO" in text
    assert "site AI lead -> governance committee chair" in text
    assert "no (a new model version, own approval)" in text
