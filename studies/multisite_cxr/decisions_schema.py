"""Schemas of the multisite_cxr decision tables (:func:`.decisions.decide_sites`).

``DecisionsTable``
    One row per decided site: the decision (a :class:`~clinaudit.audit.policy_base.Decision`
    value), the reasons and conditions in words, the criteria counts and the policy it was made
    under.
``CriteriaContract``
    The columns of the criteria table that its consumers read (contract C: the monitoring plan
    and the report): per (site, criterion, finding) the value compared with the limit, its
    interval, pass/fail before and after mitigation, the mitigation and the evidence in words.
``CriteriaTable(CriteriaContract)``
    The whole criteria table: contract C plus ``blocking`` (drift rows never block on their own),
    ``estimate`` (the point estimate; ``value`` may be a CI bound) and ``fails_at_reference``
    (the blocking criterion also fails, before mitigation, on the vendor's reference split: it
    cannot discriminate between sites). The reference self-check table has the same columns, one
    row per (criterion, critical finding) of the reference group (``site`` = its label).

``value``, ``ci_low``, ``ci_high``, ``value_after`` and ``estimate`` are ``NaN`` where a number
does not exist (no interval for data sufficiency and drift, a mitigation that was not available,
a metric of an insufficient cell when the policy does not check data sufficiency). The column
order of each schema is the order of its table.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.policy_base import Decision
from clinaudit.audit.schemas import OutputSchema

__all__ = [
    "COMPARATOR_VALUES",
    "CRITERION_ORDER",
    "MITIGATION_RECALIBRATION",
    "MITIGATION_RETRAINING",
    "CriteriaContract",
    "CriteriaTable",
    "DecisionsTable",
]

CRITERION_ORDER: tuple[str, ...] = (
    "data_sufficiency", "auroc", "ece", "sensitivity", "drift_psi", "drift_mmd",
)  # fmt: skip
MITIGATION_RECALIBRATION = "site recalibration"
MITIGATION_RETRAINING = "focused re-training"
#: How ``value`` is compared with ``limit`` (``==`` for data sufficiency and the MMD flag).
COMPARATOR_VALUES: tuple[str, ...] = (">=", "<=", "==")


class DecisionsTable(OutputSchema):
    """Per-site decisions under a versioned policy (one row per site)."""

    site: Series[str] = pa.Field(unique=True)
    decision: Series[str] = pa.Field(isin=[d.value for d in Decision])
    reasons: Series[str]
    conditions: Series[str]
    n_criteria: Series[int] = pa.Field(ge=0)
    n_failed_before: Series[int] = pa.Field(ge=0)
    n_failed_after: Series[int] = pa.Field(ge=0)
    policy_id: Series[str]
    policy_version: Series[str]
    policy_sha256: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{64}$")

    class Config:
        ordered = True


class CriteriaContract(OutputSchema):
    """Contract C: the criteria columns the monitoring plan and the report read."""

    site: Series[str]
    criterion: Series[str] = pa.Field(isin=list(CRITERION_ORDER))
    finding: Series[str]
    value: Series[float] = pa.Field(nullable=True)
    ci_low: Series[float] = pa.Field(nullable=True)
    ci_high: Series[float] = pa.Field(nullable=True)
    limit: Series[float]
    comparator: Series[str] = pa.Field(isin=list(COMPARATOR_VALUES))
    passed_before: Series[bool]
    value_after: Series[float] = pa.Field(nullable=True)
    passed_after: Series[bool]
    mitigation: Series[str] = pa.Field(isin=["", MITIGATION_RECALIBRATION, MITIGATION_RETRAINING])
    evidence: Series[str]


class CriteriaTable(CriteriaContract):
    """The whole criteria table of :func:`.decisions.decide_sites`."""

    blocking: Series[bool]
    estimate: Series[float] = pa.Field(nullable=True)
    fails_at_reference: Series[bool]

    class Config:
        ordered = True
