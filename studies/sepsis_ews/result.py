"""The whole ``sepsis_ews`` audit as one result: every table, the recommendation and the summary.

:class:`SepsisAuditResult` is what the report reads (:meth:`SepsisAuditResult.from_bundle`, from
the pipeline's stored stages). :func:`run_sepsis_audit` runs the same stages in memory on one
validated stays table and its scores (no Dagster), for the core's tests and notebooks::

    >>> result = run_sepsis_audit(stays, predictions, card=model.card)   # doctest: +SKIP
    >>> result.recommendation, result.tables()["fairness_gaps"].shape    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa

from clinaudit.audit.burden import AlertBurdenTable
from clinaudit.audit.fairness import FairnessGaps, FairnessRates
from clinaudit.audit.fairness_mitigation import GroupThresholds, MitigationTable
from clinaudit.audit.records import TableSet
from clinaudit.audit.schemas import require_columns
from clinaudit.audit.types import AuditInputError
from clinaudit.reporting.provenance import AuditBundle

from .decisions_schema import (
    CriteriaTable,
    DisadvantagedGroups,
    MitigationEffects,
    disadvantaged_columns,
)
from .drift import CardDrift
from .evaluate import (
    EVIDENCE_TABLES,
    AuditedStays,
    SepsisEvaluateOptions,
    audit_settings,
    evidence,
)
from .label_free_scoring import LabelFreeScored, LabelFreeScoredSummary
from .monitoring import MonitoringPlan
from .policy import SepsisPolicy
from .schema import StayQuarantine
from .stages import MITIGATION_TABLES, decision_tables, mitigation_tables, monitoring_tables
from .tables import scored_stays
from .tables_schema import (
    CalibrationByAttribute,
    CohortTable,
    CompositionTable,
    DiscriminationByAttribute,
    ReliabilityByAttribute,
)
from .unlabelled_months import LabelFreeEstimates

__all__ = ["AUDIT_TABLES", "TABLE_SCHEMAS", "SepsisAuditResult", "run_sepsis_audit"]

#: The audit's tables (attached to the package as ``tables/<name>.csv``), sorted.
AUDIT_TABLES: tuple[str, ...] = tuple(
    sorted((*EVIDENCE_TABLES, *MITIGATION_TABLES, "criteria", "monitoring"))
)
MITIGATION = "largest_gap"
#: The producer's schema of every table of the result: the report reads their columns.
TABLE_SCHEMAS: Mapping[str, type[pa.DataFrameModel]] = {
    "burden": AlertBurdenTable,
    "calibration": CalibrationByAttribute,
    "cohort": CohortTable,
    "composition": CompositionTable,
    "criteria": CriteriaTable,
    "disadvantaged": DisadvantagedGroups,
    "discrimination": DiscriminationByAttribute,
    "drift": CardDrift,
    "excluded_stays": StayQuarantine,
    "fairness_gaps": FairnessGaps,
    "fairness_rates": FairnessRates,
    "label_free": LabelFreeEstimates,
    "label_free_scored": LabelFreeScored,
    "label_free_summary": LabelFreeScoredSummary,
    "mitigation": MitigationTable,
    "mitigation_effects": MitigationEffects,
    "mitigation_thresholds": GroupThresholds,
    "monitoring": MonitoringPlan,
    "reliability": ReliabilityByAttribute,
    "unmatched_scores": StayQuarantine,
}
#: Tables that have no column at all when their stage part did not run: ``drift`` without a
#: card, the mitigation tables when the mitigation was not run, no records.
MAY_BE_ABSENT: frozenset[str] = frozenset(
    {
        "drift",
        *MITIGATION_TABLES,
        "excluded_stays",
        "unmatched_scores",
        "label_free",
        "label_free_scored",
        "label_free_summary",
    }
)
assert set(AUDIT_TABLES) <= set(TABLE_SCHEMAS), "an audit table without its schema"


@dataclass(frozen=True)
class SepsisAuditResult:
    """Every table of the audit (DataFrames with deterministic rows and columns).

    Attributes
    ----------
    cohort : one row per hospital and ``network``: stays, septic stays, prevalence, months.
    composition : one row per (attribute, group): stays, share, prevalence, the card's share.
    discrimination : one row per (attribute, group) incl. ``overall``/``all`` and ``hospital``:
        AUROC/AUPRC/sensitivity/specificity/PPV/NPV with CIs, DeLong interval, and the difference
        from the vendor's held-out AUROC (row ``vendor_card``) with its interval.
    calibration, reliability : ECE/Brier/slope per (attribute, group), and the bins.
    fairness_rates, fairness_gaps : :class:`~clinaudit.audit.fairness.FairnessResult` tables.
    disadvantaged : per attribute, the group with the lowest TPR and its gaps.
    burden : :func:`~clinaudit.audit.burden.alert_burden` by hospital and attribute.
    drift : :func:`~clinaudit.studies.sepsis_ews.drift.card_drift` (empty without a card).
    mitigation, mitigation_thresholds, mitigation_effects : before/after of each method, the
        per-group thresholds, and the main method's effect on every attribute's TPR/FPR gaps.
    criteria : the recommendation's criteria before and after the mitigation.
    monitoring : the monitoring plan.
    recommendation : ``GO``, ``CONDITIONAL GO`` or ``NO-GO``; ``reasons``, ``conditions``.
    caveats : legal and ethical caveats of using a protected attribute at run time.
    summary : settings and identities (threshold, model sha256, policy sha256, seed, ...).
    settings : the evidence stage's settings (``AuditSettings.to_facts``).
    excluded_stays, unmatched_scores : records of stays left out of audited hospitals and of
        network-wide scores that belong to no validated or quarantined stay (usually empty).
    intake : the evidence stage's ``intake`` facts: rows quarantined at ingest and vendor scores
        set aside as theirs, per hospital, and the model features a hospital left out.
    label_free, label_free_facts : PROVISIONAL label-free estimates of the unlabelled months
        (:mod:`.unlabelled_months`; no rows when every month is labelled) and the evidence
        stage's ``label_free`` facts (the months, and the unlabelled stays of labelled months).
        Not one of :data:`AUDIT_TABLES`: nothing of the recommendation reads them.
    label_free_scored, label_free_summary : estimates an earlier verified package froze for
        months labelled now, scored against their labels (:mod:`.label_free_scoring`; no rows
        when none); the facts are ``label_free_facts["frozen"]``.

    Every table has the columns of its producer's schema (:data:`TABLE_SCHEMAS`), checked when
    the result is made.
    """

    cohort: pd.DataFrame
    composition: pd.DataFrame
    discrimination: pd.DataFrame
    calibration: pd.DataFrame
    reliability: pd.DataFrame
    fairness_rates: pd.DataFrame
    fairness_gaps: pd.DataFrame
    disadvantaged: pd.DataFrame
    burden: pd.DataFrame
    drift: pd.DataFrame
    mitigation: pd.DataFrame
    mitigation_thresholds: pd.DataFrame
    mitigation_effects: pd.DataFrame
    criteria: pd.DataFrame
    monitoring: pd.DataFrame
    recommendation: str
    reasons: tuple[str, ...]
    conditions: tuple[str, ...]
    caveats: tuple[str, ...]
    summary: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    excluded_stays: pd.DataFrame = field(default_factory=pd.DataFrame)
    unmatched_scores: pd.DataFrame = field(default_factory=pd.DataFrame)
    intake: dict[str, Any] = field(default_factory=dict)
    label_free: pd.DataFrame = field(default_factory=pd.DataFrame)
    label_free_facts: dict[str, Any] = field(default_factory=dict)
    label_free_scored: pd.DataFrame = field(default_factory=pd.DataFrame)
    label_free_summary: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __post_init__(self) -> None:
        """Refuse a table without a column of its producer's schema (:data:`TABLE_SCHEMAS`;
        a table of :data:`MAY_BE_ABSENT` may have no column at all).

        Raises
        ------
        AuditInputError
            Naming the table, the missing columns and the schema.
        """
        for name, schema in TABLE_SCHEMAS.items():
            frame = getattr(self, name)
            if name in MAY_BE_ABSENT and frame is not None and not len(frame.columns):
                continue
            by_status = name == "disadvantaged" and frame is not None
            columns = disadvantaged_columns(frame) if by_status else None
            require_columns(name, frame, schema, columns)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The audit tables by name (sorted), for the package."""
        return {name: getattr(self, name) for name in AUDIT_TABLES}

    @classmethod
    def from_sets(
        cls, evidence: TableSet, mitigation: TableSet, decisions: TableSet, monitoring: TableSet
    ) -> SepsisAuditResult:
        """From the table sets of the evidence, mitigation, decisions and monitoring stages."""
        f = decisions.facts
        return cls(
            **{n: evidence[n] for n in EVIDENCE_TABLES},
            **{n: mitigation[n] for n in MITIGATION_TABLES},
            criteria=decisions["criteria"],
            monitoring=monitoring["monitoring"],
            recommendation=str(f["recommendation"]),
            reasons=tuple(f["reasons"]),
            conditions=tuple(f["conditions"]),
            caveats=tuple(f["caveats"]),
            summary=dict(f["summary"]),
            settings=dict(evidence.fact("settings")),
            excluded_stays=evidence["excluded_stays"],
            unmatched_scores=evidence["unmatched_scores"],
            intake=dict(evidence.facts.get("intake", {})),
            label_free=evidence.tables.get("label_free", pd.DataFrame()),
            label_free_facts=dict(evidence.facts.get("label_free", {})),
            label_free_scored=evidence.tables.get("label_free_scored", pd.DataFrame()),
            label_free_summary=evidence.tables.get("label_free_summary", pd.DataFrame()),
        )

    @classmethod
    def from_bundle(cls, bundle: AuditBundle) -> SepsisAuditResult:
        """From the package stage's bundle (the stored stages of one audit)."""
        mitigation = bundle.mitigations[MITIGATION]
        return cls.from_sets(bundle.evidence, mitigation, bundle.decisions, bundle.monitoring)


def _threshold(card: Mapping[str, Any] | None, threshold: float | None) -> tuple[float, str]:
    if threshold is not None:
        return float(threshold), "configured"
    if card is None or "operating_threshold" not in card:
        raise AuditInputError(
            "threshold", "None and no model card", "the operating threshold of the scores",
            "pass threshold= the vendor's alert threshold for a scores-only audit",
        )  # fmt: skip
    return float(card["operating_threshold"]), "model card"


def run_sepsis_audit(
    stays: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    card: Mapping[str, Any] | None,
    threshold: float | None = None,
    policy: SepsisPolicy | None = None,
    seed: int = 0,
    n_boot: int | None = None,
) -> SepsisAuditResult:
    """Run every stage of the sepsis audit in memory on one stays table.

    Parameters
    ----------
    stays : pandas.DataFrame
        Validated stays (:func:`clinaudit.studies.sepsis_ews.schema.validate_stays`).
    predictions : pandas.DataFrame
        ``stay_id, score, model_sha256``: one probability per stay.
    card : mapping or None, keyword-only
        The vendor model card (operating threshold, held-out validation, training-data summary);
        ``None`` for a scores-only audit (no drift, no vendor comparison).
    threshold : float, optional, keyword-only
        Operating threshold (``score >= threshold`` alerts); default the card's.
    policy : SepsisPolicy, optional, keyword-only
        Default: the shipped policy.
    seed : int, keyword-only
        Seed of every bootstrap, fold split and randomised threshold.
    n_boot : int, optional, keyword-only
        Override the policy's bootstrap replicates (tests use few).

    Returns
    -------
    SepsisAuditResult

    Raises
    ------
    AuditInputError
        On mismatched inputs, a missing threshold, or data the core refuses.
    """
    policy = policy or SepsisPolicy.load(Path(__file__).with_name("policy.yaml"))
    thr, source = _threshold(card, threshold)
    frame = scored_stays(stays, predictions)
    options = SepsisEvaluateOptions(seed=seed, n_boot=n_boot)
    settings = audit_settings(policy, threshold=thr, threshold_source=source, options=options)
    hospitals = tuple(sorted(set(frame["hospital"].astype(str))))
    ev = evidence(AuditedStays(frame, hospitals), card=card, settings=settings)
    mit = mitigation_tables(ev, frame, policy)
    dec = decision_tables(ev, mit, policy)
    mon = monitoring_tables(ev, mit, dec, frame, policy)
    return SepsisAuditResult.from_sets(ev, mit, dec, mon)
