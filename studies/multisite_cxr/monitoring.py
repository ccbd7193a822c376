"""Post-deployment monitoring plan of each site, derived from its audit and its decision.

A deployed site (GO or CONDITIONAL GO) gets, in this order:

* ``input drift`` items: one per feature whose PSI level was moderate or major at audit, one for
  a significant multivariate MMD test, and one summary item over the policy's drift features. The
  monitored statistic compares each window with the site's own audit sample (the distribution the
  site was approved on); ``baseline`` is the audit's value against the vendor reference.
* per critical finding: ``discrimination`` (the policy's AUROC statistic, floor as the action
  threshold), ``calibration`` (ECE of the deployed score: after site recalibration where the
  finding is mapped) and ``alert rate`` (positive rate at the deployed threshold, thresholds as
  relative change ``|rate / baseline - 1|``).

Cadence, escalation and the suspension rule come from the policy's ``monitoring`` section. A NO-GO
site gets a single ``deployment`` row: not deployed, re-audit after remediation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.discrimination import DiscriminationTable
from clinaudit.audit.drift import DriftTable
from clinaudit.audit.policy_base import Decision
from clinaudit.audit.schemas import OutputSchema, require_columns, schema_columns, validate_table
from clinaudit.audit.types import AuditInputError

from .decisions import MITIGATION_RECALIBRATION, MMD_FEATURE, Decisions
from .decisions_schema import CriteriaContract, DecisionsTable
from .policy import Policy

KIND_ORDER: tuple[str, ...] = (
    "deployment", "input drift", "data quality", "discrimination", "calibration", "alert rate",
)  # fmt: skip
#: Whether crossing a threshold means rising ``above`` or falling ``below`` it ("" when none).
DIRECTIONS: tuple[str, ...] = ("above", "below", "")


class MonitoringContract(OutputSchema):
    """Contract C: the monitoring-plan columns the report reads (one row per monitored item).

    ``baseline`` is the audit's value (``NaN`` where it cannot be derived, and for the single
    ``deployment`` row of a NO-GO site, which has no thresholds either).
    """

    site: Series[str]
    item: Series[str]
    kind: Series[str] = pa.Field(isin=list(KIND_ORDER))
    metric: Series[str]
    baseline: Series[float] = pa.Field(nullable=True)
    warn_threshold: Series[float] = pa.Field(nullable=True)
    action_threshold: Series[float] = pa.Field(nullable=True)
    cadence: Series[str]
    escalation: Series[str]
    action: Series[str]


class MonitoringPlan(MonitoringContract):
    """The whole plan of :func:`monitoring_plan`: contract C plus why and for what finding."""

    reason: Series[str]
    finding: Series[str]
    direction: Series[str] = pa.Field(isin=list(DIRECTIONS))

    class Config:
        ordered = True


#: Column order of the plan (its schema's).
PLAN_COLUMNS: tuple[str, ...] = schema_columns(MonitoringPlan)
_STAT_WORDS = {
    "ci_low": "lower 95% CI bound of ",
    "ci_high": "upper 95% CI bound of ",
    "estimate": "",
}


def _item(
    site: str,
    item: str,
    kind: str,
    metric: str,
    baseline: float,
    limits: tuple[float, float, str],
    reason: str,
    finding: str = "",
) -> dict[str, Any]:
    """A plan row; ``limits`` = (warn threshold, action threshold, direction above/below)."""
    warn, action, direction = limits
    return {
        "site": site, "item": item, "kind": kind, "metric": metric, "baseline": baseline,
        "warn_threshold": warn, "action_threshold": action, "reason": reason,
        "finding": finding, "direction": direction,
    }  # fmt: skip


def _action(policy: Policy, direction: str) -> str:
    m = policy.monitoring
    crossed = "falls below" if direction == "below" else "rises above"
    return (
        f"warn: notify {m.escalation[0]}; when the metric {crossed} the action threshold: "
        f"escalate to {', '.join(m.escalation)} and review; suspend the model at the site after "
        f"{m.suspend_after_consecutive_actions} consecutive windows past the action threshold"
    )


def _drift_items(site: str, policy: Policy, drift: pd.DataFrame) -> list[dict[str, Any]]:
    m = policy.monitoring
    psi_limits = (m.drift_psi_warn, m.drift_psi_action, "above")
    part = drift[drift["group"].astype(str) == site]
    features = part[part["feature"] != MMD_FEATURE]
    moved = features[features["psi_level"].isin(["moderate", "major"])].sort_values("feature")
    items = [
        _item(
            site,
            f"input drift: {r.feature}",
            "input drift",
            "PSI of the window vs this site's audit sample",
            float(r.psi),
            psi_limits,
            f"{r.psi_level} drift at audit: PSI {r.psi:.3g} vs the vendor reference",
        )
        for r in moved.itertuples(index=False)
    ]
    watched = features[features["feature"].isin(policy.drift.features)]
    if not watched.empty:
        items.append(
            _item(
                site,
                "input drift: image-quality features (max PSI)",
                "input drift",
                "largest PSI over the policy's drift features, window vs audit sample",
                float(watched["psi"].max()),
                psi_limits,
                "every deployed site watches the policy's drift features; baseline: largest PSI "
                "vs the vendor reference at audit",
            )
        )
    mmd = part[(part["feature"] == MMD_FEATURE) & part["significant"].astype(bool)]
    for r in mmd.itertuples(index=False):
        p = float(getattr(r, "p_adj", np.nan))
        items.append(
            _item(
                site,
                "input drift: multivariate (MMD)",
                "input drift",
                "adjusted p-value of the MMD test, window vs audit sample",
                p,
                (m.drift_mmd_p_warn, m.drift_mmd_p_action, "below"),
                f"significant MMD at audit (adjusted p {p:.3g} vs the vendor reference)",
            )
        )
    return items


def _one(frame: pd.DataFrame, name: str, site: str, finding: str) -> pd.Series:
    hit = frame[(frame["group"].astype(str) == site) & (frame["target"].astype(str) == finding)]
    if len(hit) != 1:
        raise AuditInputError(
            name,
            f"{len(hit)} rows for group {site!r}, target {finding!r}",
            "exactly one row per (group, target) of a deployed site's critical finding",
            f"pass the same {name} table the decisions were made from",
        )
    return hit.iloc[0]


def alert_rate(prevalence: float, sensitivity: float, specificity: float) -> float:
    """Positive (alert) rate ``prev * sens + (1 - prev) * (1 - spec)`` at a threshold.

    Examples
    --------
    >>> round(alert_rate(0.1, 0.8, 0.9), 3)
    0.17
    """
    return float(prevalence * sensitivity + (1.0 - prevalence) * (1.0 - specificity))


def _baseline_rate(met: pd.Series, recal: pd.Series | None) -> tuple[float, str]:
    if recal is not None:
        sens, spec = (
            recal.get("sensitivity_site_threshold"),
            recal.get("specificity_site_threshold"),
        )
        where = "site threshold after recalibration"
    else:
        for column in ("alert_rate", "positive_rate"):
            if column in met.index and np.isfinite(met[column]):
                return float(met[column]), f"audit column {column}"
        sens, spec = met.get("sensitivity"), met.get("specificity")
        where = "vendor threshold"
    values = [met.get("prevalence"), sens, spec]
    if any(v is None or not np.isfinite(v) for v in values):
        return np.nan, f"{where}: not derivable (prevalence/sensitivity/specificity missing)"
    return alert_rate(
        *(float(v) for v in values)
    ), f"{where}, from prevalence x sensitivity / specificity"


def _finding_items(
    site: str,
    finding: str,
    policy: Policy,
    tables: dict[str, pd.DataFrame | None],
    mapped: bool,
) -> list[dict[str, Any]]:
    c, m = policy.criteria, policy.monitoring
    met = _one(tables["metrics"], "metrics", site, finding)
    recal = None
    if mapped:
        if tables["recalibration"] is None:
            raise AuditInputError(
                "recalibration", "None", f"the recalibration table ({site} uses a site map)",
                "pass recalibration= the table the decisions were made from",
            )  # fmt: skip
        recal = _one(tables["recalibration"], "recalibration", site, finding)
    items = []
    if c.auroc.enabled:
        stat = _auroc_column(policy)
        floor = c.auroc.threshold
        items.append(
            _item(
                site,
                f"discrimination: {finding}",
                "discrimination",
                f"{_STAT_WORDS[c.auroc.statistic]}AUROC on the window's labelled images",
                float(met[stat]),
                (floor + m.auroc_warn_margin, floor, "below"),
                f"critical finding; audit {stat} {met[stat]:.3f}, floor {floor:.2f}",
                finding,
            )
        )
    if c.ece.enabled:
        if recal is not None:
            ece, why = float(recal["ece_after"]), "ECE after site recalibration (cross-fitted)"
        else:
            cal = _one(tables["calibration"], "calibration", site, finding)
            ece, why = float(cal["ece_width"]), "ECE of the vendor score at audit"
        limit = c.ece.threshold
        items.append(
            _item(
                site,
                f"calibration: {finding}",
                "calibration",
                "ECE (10 equal-width bins) of the deployed probability",
                ece,
                (limit - m.ece_warn_margin, limit, "above"),
                f"critical finding; baseline = {why}; limit {limit:.2f}",
                finding,
            )
        )
    rate, how = _baseline_rate(met, recal)
    items.append(
        _item(
            site,
            f"alert rate: {finding}",
            "alert rate",
            "relative change |rate / baseline - 1| of the positive rate at the deployed threshold",
            rate,
            (m.alert_rate_warn_relative_change, m.alert_rate_action_relative_change, "above"),
            f"critical finding; baseline positive rate at the {how}",
            finding,
        )
    )
    return items


def monitoring_plan(
    policy: Policy,
    decisions: Decisions,
    *,
    drift: pd.DataFrame,
    metrics: pd.DataFrame,
    calibration: pd.DataFrame | None,
    recalibration: pd.DataFrame | None,
) -> pd.DataFrame:
    """Monitoring plan of every decided site (table ``cxr_monitoring_plan``).

    Parameters
    ----------
    policy : Policy
        The policy the decisions were made under (its ``monitoring`` section).
    decisions : Decisions
        From :func:`clinaudit.studies.multisite_cxr.decisions.decide_sites`.
    drift, metrics, calibration, recalibration : DataFrame
        The audit tables the decisions were made from (``recalibration`` may be None when no
        site uses a recalibration map).

    Returns
    -------
    DataFrame
        Columns of :class:`MonitoringPlan` (:data:`PLAN_COLUMNS`), one row per monitored item,
        sorted by site, kind and item.
        ``baseline`` is the audit's value; ``direction`` says whether crossing means rising
        ``above`` or falling ``below`` the thresholds.

    Raises
    ------
    AuditInputError
        If ``decisions`` was made under another policy, or a table lacks a column read from it or
        a deployed site's row.
    """
    _check_inputs(policy, decisions, drift, metrics)
    stale = decisions.table[decisions.table["policy_sha256"] != policy.sha256]
    if not stale.empty:
        raise AuditInputError(
            "decisions", f"decisions made under policy sha256 {stale['policy_sha256'].iloc[0]}",
            f"decisions made under this policy ({policy.sha256})",
            "re-run decide_sites with this policy",
        )  # fmt: skip
    tables = {"metrics": metrics, "calibration": calibration, "recalibration": recalibration}
    m = policy.monitoring
    chain = " -> ".join(m.escalation)
    rows: list[dict[str, Any]] = []
    for d in decisions.table.sort_values("site").itertuples(index=False):
        site = str(d.site)
        if d.decision == Decision.NO_GO:
            row = _item(site, "not deployed", "deployment", "", np.nan, (np.nan, np.nan, ""),
                        str(d.reasons))  # fmt: skip
            rows.append(row | {"escalation": chain, "cadence": "",
                               "action": f"not deployed: {m.not_deployed_action}"})  # fmt: skip
            continue
        crit = decisions.criteria[decisions.criteria["site"] == site]
        mapped = set(crit.loc[crit["mitigation"] == MITIGATION_RECALIBRATION, "finding"])
        items = _drift_items(site, policy, drift)
        for finding in sorted(policy.critical_findings):
            items += _finding_items(site, finding, policy, tables, finding in mapped)
        for item in items:
            item |= {"cadence": m.cadence(str(d.decision)), "escalation": chain}
            item["action"] = _action(policy, item["direction"])
        rows += items
    plan = pd.DataFrame(rows, columns=list(PLAN_COLUMNS))
    order = plan["kind"].map(KIND_ORDER.index)
    plan = (
        plan.assign(_order=order)
        .sort_values(["site", "_order", "item"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )
    return validate_table(plan, MonitoringPlan)


def _check_inputs(
    policy: Policy, decisions: Decisions, drift: pd.DataFrame, metrics: pd.DataFrame
) -> None:
    """The columns every plan reads, in their producers' schemas (the calibration and
    recalibration columns depend on the finding's mapping: :func:`_one` names a missing row)."""
    cols = ["site", "decision", "reasons", "policy_sha256"]
    require_columns("decisions", decisions.table, DecisionsTable, cols)
    cols = ["site", "finding", "mitigation"]
    require_columns("criteria", decisions.criteria, CriteriaContract, cols)
    require_columns(
        "drift", drift, DriftTable, ["group", "feature", "psi", "psi_level", "significant"]
    )
    auroc = [_auroc_column(policy)] if policy.criteria.auroc.enabled else []
    require_columns("metrics", metrics, DiscriminationTable, ["group", "target", *auroc])


def _auroc_column(policy: Policy) -> str:
    """The metrics column of the policy's AUROC statistic (the discrimination item's baseline)."""
    return "auroc" + {"ci_low": "_ci_low", "estimate": ""}[policy.criteria.auroc.statistic]
