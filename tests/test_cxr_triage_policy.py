"""Study cxr_triage: its policy (strict YAML), label contract, scope rule and reading order."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit.policy_yaml import PolicyError
from clinaudit.audit.types import AuditInputError
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.studies.cxr_triage import labels, policy
from clinaudit.studies.cxr_triage.labels import age_band, scope_reasons, triage_labels
from clinaudit.studies.cxr_triage.policy import SHIPPED_POLICY, TriagePolicy


def test_shipped_policy_reads_and_says_its_rules() -> None:
    p = TriagePolicy.load(SHIPPED_POLICY)
    assert (p.certificate.alpha, p.certificate.delta) == (0.01, 0.05)
    assert p.workload.reads_per_day == 1080.0  # 3 radiologists x 6 h x 60 reads/h
    assert p.certificate.subgroups == ("sex", "age_band", "view", "site")
    assert p.criteria.certified and p.criteria.auroc.statistic == "ci_low"
    text = p.describe()
    assert "P(miss rate <= 0.01) >= 0.95" in text and "1,080 reads/day" in text
    assert "never cleared" in text


def _edit(old: str, new: str) -> bytes:
    text = SHIPPED_POLICY.read_text()
    assert old in text
    return text.replace(old, new, 1).encode()


def test_every_problem_is_named_at_once() -> None:
    data = _edit("alpha: 0.01", "alpha: 1").replace(b"[PA, AP]", b"[PA, LATERAL]")
    with pytest.raises(PolicyError) as err:
        TriagePolicy.from_bytes(data)
    text = str(err.value)
    assert "2 problem(s)" in text and "certificate.alpha" in text and "scope.views" in text
    with pytest.raises(PolicyError, match="workload.aging_cap_days.*never applies"):
        TriagePolicy.from_bytes(_edit("aging_cap_days: 30.0", "aging_cap_days: 45.0"))


def test_a_held_out_limit_stricter_than_the_certificate_is_refused() -> None:
    data = _edit("limit: 0.02", "limit: 0.005")
    with pytest.raises(PolicyError, match="criteria.test_miss_rate.limit.*certificate.alpha"):
        TriagePolicy.from_bytes(data)


def test_labels_follow_the_contract() -> None:
    neg = dict.fromkeys(FINDINGS, 0.0)
    table = pd.DataFrame(
        [
            neg,
            {**neg, "Pneumothorax": 1.0},
            {**neg, "Nodule": 1.0},
            {**neg, "Hernia": np.nan},  # one finding unlabelled, none positive: unknown
            {**neg, "Hernia": np.nan, "Effusion": 1.0},  # positive wins
            dict.fromkeys(FINDINGS, np.nan),  # the pile
        ]
    )
    got = triage_labels(table, critical=["Pneumothorax", "Effusion"])
    np.testing.assert_array_equal(got["abnormal"], [0, 1, 1, np.nan, 1, np.nan])
    np.testing.assert_array_equal(got["critical"], [0, 1, 0, 0, 1, np.nan])
    with pytest.raises(AuditInputError, match="critical.*findings from"):
        triage_labels(table, critical=["Pneumothorax", "Collapse"])


def test_scope_rule_names_every_reason() -> None:
    scope = TriagePolicy.load(SHIPPED_POLICY).scope
    table = pd.DataFrame(
        {
            "view_position": ["PA", "AP", "LL", "PA"],
            "age": [30.0, 12.0, 50.0, 70.0],
            "clipped_fraction": [0.0, 0.01, 0.0, 0.3],
            "dynamic_range": [0.6, 0.6, 0.6, 0.1],
        }
    )
    got = scope_reasons(table, scope).tolist()
    assert got[0] == "" and got[1] == "age 12 < 18"
    assert got[2] == "view LL (not PA/AP)"
    assert got[3] == "clipped fraction 0.300 > 0.05; dynamic range 0.100 < 0.25"
    with pytest.raises(AuditInputError, match="dynamic_range"):
        scope_reasons(table.drop(columns="dynamic_range"), scope)


def test_age_bands_cover_every_age() -> None:
    assert age_band([0, 17.9, 18, 64.9, 65, 120]).tolist() == [
        "<18", "<18", "18-64", "18-64", "65+", "65+",
    ]  # fmt: skip
    with pytest.raises(AuditInputError, match="age"):
        age_band([30, np.nan])


@pytest.mark.parametrize("module", [labels, policy])
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
