"""The stages after the evidence, as table sets: mitigation, recommendation, monitoring plan.

Each function takes the table sets of the stages before it (as stored by the pipeline) and, where
it needs per-stay numbers, the scored stays (:func:`.evaluate.audited_stays`): their labelled
stays (:func:`.tables.split_labelled`; an unlabelled stay counts in no stage) are checked to be
the stays the evidence stage audited. The core is in :mod:`.decisions` and :mod:`.monitoring`; every
random draw takes the seed recorded in the evidence's settings, so running the stages one by one
gives the numbers of one run.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.policy_base import Decision
from clinaudit.audit.records import TableSet
from clinaudit.audit.schemas import OutputSchema, require_columns, schema_columns, validate_table
from clinaudit.audit.types import AuditInputError

from .decisions import MitigationOutcome, Recommendation, decide, run_mitigations
from .evaluate import check_same_stays, fairness_from
from .monitoring import monitoring_plan
from .policy import SepsisPolicy
from .tables import AuditSettings, exposure_days, split_labelled

__all__ = [
    "DECISION_COLUMNS",
    "MITIGATION_TABLES",
    "DecisionTable",
    "StayAlerts",
    "decision_tables",
    "mitigation_outcome",
    "mitigation_tables",
    "monitoring_tables",
    "recommendation_of",
]

#: Tables of the mitigation stage attached to the package (``alerts`` holds stay ids: it is not).
MITIGATION_TABLES: tuple[str, ...] = ("mitigation", "mitigation_effects", "mitigation_thresholds")


def _json_lists(values: pd.Series) -> pd.Series:
    def is_list_of_text(text: object) -> bool:
        try:
            value = json.loads(str(text))
        except json.JSONDecodeError:
            return False
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    return values.map(is_list_of_text)


class DecisionTable(OutputSchema):
    """The decisions stage's one-row ``decision`` table: the recommendation, and its reasons,
    conditions and caveats as JSON lists of text (as the package's tables hold them)."""

    recommendation: Series[str] = pa.Field(isin=[d.value for d in Decision])
    reasons: Series[str]
    conditions: Series[str]
    caveats: Series[str]

    @pa.check("reasons", "conditions", "caveats", name="json_list_of_text")
    @classmethod
    def _lists(cls, values: pd.Series) -> pd.Series:
        return _json_lists(values)

    @pa.dataframe_check(name="one_row")
    @classmethod
    def _one_row(cls, table: pd.DataFrame) -> bool:
        return len(table) == 1

    class Config:
        ordered = True


class StayAlerts(OutputSchema):
    """The mitigation stage's ``alerts``: per audited stay, whether the vendor threshold
    (``before``) and the out-of-fold mitigated rule (``after``) alert. No rows when the
    mitigation was not run."""

    stay_id: Series[str] = pa.Field(unique=True)
    before: Series[bool]
    after: Series[bool]

    class Config:
        ordered = True


#: Columns of the one-row ``decision`` table (its schema's).
DECISION_COLUMNS: tuple[str, ...] = schema_columns(DecisionTable)


def _check_policy(tables: TableSet, policy: SepsisPolicy, stage: str) -> None:
    used = tables.facts.get("policy_sha256", policy.sha256)
    if used != policy.sha256:
        raise AuditInputError(
            stage, f"inputs computed under policy {used}", f"the configured policy {policy.sha256}",
            "re-materialize sepsis_ews/evidence and what follows it under the configured policy",
        )  # fmt: skip


def _empty_alerts() -> pd.DataFrame:
    return pd.DataFrame(
        {"stay_id": pd.Series(dtype=object), "before": pd.Series(dtype=bool),
         "after": pd.Series(dtype=bool)}
    )  # fmt: skip


def mitigation_tables(evidence: TableSet, frame: pd.DataFrame, policy: SepsisPolicy) -> TableSet:
    """The policy's mitigation of the largest gap (and its alternatives), cross-fitted.

    Returns
    -------
    TableSet
        :data:`MITIGATION_TABLES` (see :class:`~.decisions.MitigationOutcome`) and ``alerts``
        (:class:`StayAlerts`: per stay, vendor-threshold and out-of-fold mitigated alert, for the
        monitoring plan's baselines); facts ``status``, ``reason``, ``method``, ``attribute``,
        ``metric`` and the legal and ethical ``caveats``.
    """
    _check_policy(evidence, policy, "mitigation_largest_gap")
    frame, _ = split_labelled(frame)  # unlabelled stays: no outcome to mitigate on
    check_same_stays(frame, evidence, "mitigation_largest_gap")
    s = AuditSettings.from_facts(evidence.fact("settings"))
    outcome = run_mitigations(
        frame, s.threshold, fairness_from(evidence), exposure_days(frame), policy, s
    )
    alerts = _empty_alerts()
    if outcome.before is not None and outcome.after is not None:
        alerts = pd.DataFrame(
            {"stay_id": frame["stay_id"].astype(str).to_numpy(),
             "before": np.asarray(outcome.before, dtype=bool),
             "after": np.asarray(outcome.after, dtype=bool)}
        )  # fmt: skip
    tables = {
        "mitigation": outcome.table,
        "mitigation_effects": outcome.effects,
        "mitigation_thresholds": outcome.thresholds,
        "alerts": validate_table(alerts, StayAlerts),
    }
    facts = {
        "status": outcome.status,
        "reason": outcome.reason,
        "method": outcome.method,
        "attribute": outcome.attribute,
        "metric": outcome.metric,
        "caveats": list(outcome.caveats),
    }
    return TableSet(tables, facts)


def mitigation_outcome(tables: TableSet, frame: pd.DataFrame | None = None) -> MitigationOutcome:
    """The mitigation stage's outcome read back; with ``frame``, its per-stay alerts in
    ``frame`` order.

    Raises
    ------
    AuditInputError
        If ``frame`` holds stays the mitigation did not decide, or the alerts lack a column.
    """
    f = tables.facts
    before = after = None
    alerts = tables["alerts"]
    if frame is not None and len(alerts):
        require_columns("alerts", alerts, StayAlerts)
        by_id = alerts.set_index(alerts["stay_id"].astype(str))
        ids = frame["stay_id"].astype(str)
        if not ids.isin(by_id.index).all():
            raise AuditInputError(
                "mitigation", "alerts of other stays than the audited ones",
                "the mitigation of the audited stays",
                "re-materialize sepsis_ews/mitigation_largest_gap after the evidence",
            )  # fmt: skip
        before = by_id.loc[ids, "before"].to_numpy(dtype=bool)
        after = by_id.loc[ids, "after"].to_numpy(dtype=bool)
    return MitigationOutcome(
        status=str(f["status"]),
        reason=str(f["reason"]),
        method=str(f["method"]),
        attribute=f.get("attribute"),
        metric=f.get("metric"),
        table=tables["mitigation"],
        thresholds=tables["mitigation_thresholds"],
        effects=tables["mitigation_effects"],
        caveats=tuple(f["caveats"]),
        before=before,
        after=after,
    )


def _summary(
    evidence: TableSet, outcome: MitigationOutcome, rec: Recommendation, policy: SepsisPolicy
) -> dict[str, Any]:
    s = evidence.fact("settings")
    return {
        "study": policy.study,
        **evidence.fact("cohort"),
        "threshold": s["threshold"],
        "threshold_source": s["threshold_source"],
        "policy_id": policy.policy_id,
        "policy_version": policy.version,
        "policy_sha256": policy.sha256,
        "seed": s["seed"],
        "n_boot": s["n_boot"],
        "ci_level": s["ci_level"],
        "bootstrap_unit": s["bootstrap_unit"],
        "exposure": s["exposure"],
        "references": dict(evidence.fact("references")),
        "mitigation_attribute": outcome.attribute,
        "mitigation_metric": outcome.metric,
        "mitigation_method": policy.mitigation.method,
        "deployed_rule": rec.deployed_rule,
    }


def decision_tables(evidence: TableSet, mitigation: TableSet, policy: SepsisPolicy) -> TableSet:
    """The recommendation under ``policy``: ``criteria`` (before and after the mitigation,
    :class:`~.decisions_schema.CriteriaTable`) and the one-row ``decision``
    (:class:`DecisionTable`); facts ``recommendation``, ``reasons``, ``conditions``,
    ``caveats``, ``deployed_rule``, ``uses_mitigation`` and the audit's ``summary``."""
    for stage, tables in (("evidence", evidence), ("mitigation_largest_gap", mitigation)):
        _check_policy(tables, policy, stage)
    outcome = mitigation_outcome(mitigation)
    rec = decide(
        policy, evidence["discrimination"], evidence["calibration"], evidence["burden"],
        fairness_from(evidence), outcome,
    )  # fmt: skip
    row = {
        "recommendation": rec.recommendation.value,
        "reasons": json.dumps(list(rec.reasons)),
        "conditions": json.dumps(list(rec.conditions)),
        "caveats": json.dumps(list(outcome.caveats)),
    }
    facts = {
        "recommendation": rec.recommendation.value,
        "reasons": list(rec.reasons),
        "conditions": list(rec.conditions),
        "caveats": list(outcome.caveats),
        "deployed_rule": rec.deployed_rule,
        "uses_mitigation": rec.uses_mitigation,
        "summary": _summary(evidence, outcome, rec, policy),
    }
    decision = validate_table(pd.DataFrame([row], columns=list(DECISION_COLUMNS)), DecisionTable)
    return TableSet({"criteria": rec.criteria, "decision": decision}, facts)


def recommendation_of(decisions: TableSet) -> Recommendation:
    """The decisions stage's recommendation read back."""
    f = decisions.facts
    return Recommendation(
        recommendation=Decision(f["recommendation"]),
        criteria=decisions["criteria"],
        reasons=tuple(f["reasons"]),
        conditions=tuple(f["conditions"]),
        deployed_rule=str(f["deployed_rule"]),
        uses_mitigation=bool(f["uses_mitigation"]),
    )


def monitoring_tables(
    evidence: TableSet,
    mitigation: TableSet,
    decisions: TableSet,
    frame: pd.DataFrame,
    policy: SepsisPolicy,
) -> TableSet:
    """The monitoring plan of the deployed rule (``monitoring``), from this audit's baselines."""
    for stage, tables in (("evidence", evidence), ("decisions", decisions)):
        _check_policy(tables, policy, stage)
    frame, _ = split_labelled(frame)  # the plan's baselines are the labelled stays'
    check_same_stays(frame, evidence, "monitoring")
    s = AuditSettings.from_facts(evidence.fact("settings"))
    plan = monitoring_plan(
        policy, frame, threshold=s.threshold, decision=recommendation_of(decisions),
        drift=evidence["drift"], mitigation=mitigation_outcome(mitigation, frame),
        discrimination=evidence["discrimination"], calibration=evidence["calibration"],
        fairness=fairness_from(evidence),
    )  # fmt: skip
    kinds = {str(k): int(v) for k, v in plan["kind"].value_counts().items()}
    return TableSet({"monitoring": plan}, {"n_items": len(plan), "kinds": kinds})
