"""Drift-monitoring plan of the deployed sepsis score, computed from this audit's baselines.

One row per watched item:

* ``input drift``: every feature flagged against the card (PSI level moderate/major in the
  network, a hospital or a group), every feature whose missing rate moved, the case mix of each
  attribute that drifted, and one row over all model features. In operation each window is
  compared with *this audit's stays* (raw data on both sides, :func:`~clinaudit.studies.
  sepsis_ews.drift.window_psi`); the baseline is the audit's value against the card.
* ``alert rate`` of the deployed rule (no outcome needed: watched at the inputs cadence).
* ``discrimination`` (AUROC), ``sensitivity`` of the deployed rule, ``calibration`` (ECE) and
  ``fairness`` (TPR max-min gap of each attribute under the deployed rule), at the outcomes cadence.
* ``data quality``: completeness of the attribute a group-aware rule needs at run time.

``audit_monthly_min``/``audit_monthly_max`` are the same statistic computed on each admission month
of the audit (against the audit's own stays for PSI): the month-to-month variation the thresholds
must sit above. Crossing an outcome or alert-rate action threshold for ``suspend_after_consecutive
_actions`` windows suspends the alerts; drift alone triggers an unscheduled outcome review.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series
from scipy.stats import norm

from clinaudit.audit.calibration import expected_calibration_error
from clinaudit.audit.discrimination import weighted_binary_metrics
from clinaudit.audit.fairness import FairnessGaps, FairnessResult
from clinaudit.audit.schemas import (
    OutputSchema,
    count_field,
    require_columns,
    schema_columns,
    validate_table,
)

from .decisions import MitigationOutcome, Recommendation
from .decisions_schema import MitigationEffects
from .drift import CardDrift, window_psi
from .policy import SepsisPolicy
from .tables_schema import CalibrationByAttribute, DiscriminationByAttribute

__all__ = ["PLAN_COLUMNS", "MonitoringPlan", "monitoring_plan", "window_stays"]

KIND_ORDER = ("alert rate", "discrimination", "sensitivity", "calibration", "fairness",
              "data quality", "input drift")  # fmt: skip
OUTCOME_KINDS = frozenset({"discrimination", "sensitivity", "calibration", "fairness"})
#: How the thresholds read: crossed rising ``above`` or falling ``below`` them, a ``relative``
#: change of the baseline, or an absolute ``change`` of it.
DIRECTIONS: tuple[str, ...] = ("above", "below", "relative", "change")


class MonitoringPlan(OutputSchema):
    """The plan of :func:`monitoring_plan`: one row per watched item, sorted by kind.

    ``baseline`` (and thresholds derived from it) is ``NaN`` where the audit could not estimate
    it (e.g. the TPR gap of an attribute without two sufficient groups); the monthly range is
    ``NaN`` when no admission month had enough cases.
    """

    item: Series[str]
    kind: Series[str] = pa.Field(isin=list(KIND_ORDER))
    scope: Series[str]
    metric: Series[str]
    baseline: Series[float] = pa.Field(nullable=True)
    warn_threshold: Series[float] = pa.Field(nullable=True)
    action_threshold: Series[float] = pa.Field(nullable=True)
    direction: Series[str] = pa.Field(isin=list(DIRECTIONS))
    window_stays: Series[int] = count_field()
    window_months: Series[int] = pa.Field(ge=1)
    audit_monthly_min: Series[float] = pa.Field(nullable=True)
    audit_monthly_max: Series[float] = pa.Field(nullable=True)
    cadence: Series[str]
    on_warn: Series[str]
    on_action: Series[str]
    suspends: Series[bool]
    reason: Series[str]

    class Config:
        ordered = True


#: Column order of the plan (its schema's).
PLAN_COLUMNS: tuple[str, ...] = schema_columns(MonitoringPlan)


def _monthly(frame: pd.DataFrame, stat: Callable[[pd.DataFrame], float]) -> tuple[float, float]:
    values = [stat(part) for _, part in frame.groupby("admit_month", sort=True)]
    finite = [v for v in values if np.isfinite(v)]
    return (min(finite), max(finite)) if finite else (np.nan, np.nan)


def _item(item: str, kind: str, scope: str, metric: str, baseline: float,
          limits: tuple[float, float, str], monthly: tuple[float, float], reason: str,
          window: int) -> dict[str, Any]:  # fmt: skip
    return {
        "item": item, "kind": kind, "scope": scope, "metric": metric, "baseline": baseline,
        "warn_threshold": limits[0], "action_threshold": limits[1], "direction": limits[2],
        "window_stays": int(window), "audit_monthly_min": monthly[0],
        "audit_monthly_max": monthly[1], "reason": reason,
    }  # fmt: skip


def window_stays(n_audit: int, se_audit: float, margin: float, floor: int) -> int:
    """Stays per monitoring window so that ``margin`` is two standard errors of the statistic.

    The audit's standard error ``se_audit`` (on ``n_audit`` stays) scales as ``1 / sqrt(n)``:
    ``n = n_audit * (2 * se_audit / margin) ** 2``, rounded up to 50 and at least ``floor``.

    Examples
    --------
    >>> window_stays(6000, 0.0125, 0.05, 200)
    1500
    """
    if not (np.isfinite(se_audit) and margin > 0):
        return int(floor)
    return int(max(floor, 50 * np.ceil(n_audit * (2 * se_audit / margin) ** 2 / 50)))


def _scope_text(where: list[str]) -> str:
    """Where an item was flagged: the strongest place, then how many more."""
    places = list(dict.fromkeys(where))
    return places[0] + (f" +{len(places) - 1} more" if len(places) > 1 else "")


def _psi_window(policy: SepsisPolicy, n_bins: int = 11) -> int:
    """Stays whose no-drift PSI noise, about ``(bins - 1) / n``, is half the warn level."""
    m = policy.monitoring
    return int(max(m.min_window_stays, np.ceil(2 * (n_bins - 1) / m.drift_psi_warn)))


def _rate_se(p: float, n: int) -> float:
    return float(np.sqrt(p * (1 - p) / n)) if n > 0 and np.isfinite(p) else np.nan


def _drift_items(policy: SepsisPolicy, frame: pd.DataFrame, drift: pd.DataFrame) -> list[dict]:
    if drift.empty:
        return []
    m = policy.monitoring
    psi_limits, psi_window = (m.drift_psi_warn, m.drift_psi_action, "above"), _psi_window(policy)
    items = []
    numeric = drift[(drift["kind"] == "numeric") & (drift["status"] == "ok")]
    for feature in dict.fromkeys(numeric["feature"]):
        part = numeric[numeric["feature"] == feature]
        moved = part[part["psi_level"] != "none"].sort_values(["psi", "group"], ascending=False)
        if len(moved):
            where = [f"{r.scope}={r.group}" if r.scope != "network" else "network"
                     for r in moved.itertuples()]  # fmt: skip
            top3 = zip(where, moved.head(3).itertuples(), strict=False)
            found = "; ".join(f"{w} {r.psi_level} (PSI {r.psi:.2f})" for w, r in top3)
            items.append(_item(
                f"input drift: {feature}", "input drift", _scope_text(where),
                "PSI of the window vs this audit's stays", float(moved["psi"].iloc[0]),
                psi_limits, _monthly(frame, lambda p, f=feature: window_psi(frame[f], p[f])),
                f"drifted against the vendor's training data at audit: {found}", psi_window,
            ))  # fmt: skip
        net = part[part["scope"] == "network"].iloc[0]
        flagged = part[part["missing_flag"].astype(bool)]
        if len(flagged):
            rate = float(net["missing_rate"])
            where = [f"{r.scope}={r.group}" if r.scope != "network" else "network"
                     for r in flagged.itertuples()]  # fmt: skip
            items.append(_item(
                f"missing rate: {feature}", "input drift", _scope_text(where),
                "share of stays without a value (absolute change vs the audit)", rate,
                (m.drift_missing_rate_warn_change, m.drift_missing_rate_action_change, "change"),
                _monthly(frame, lambda p, f=feature: float(p[f].isna().mean())),
                f"missing in {rate:.0%} of network stays vs {net['card_missing_rate']:.0%} in the "
                "vendor's training data (lab ordering practice)",
                window_stays(len(frame), _rate_se(rate, len(frame)),
                             m.drift_missing_rate_action_change, m.min_window_stays),
            ))  # fmt: skip
    comp = drift[(drift["kind"] == "composition") & (drift["scope"] == "network")]
    for r in comp[comp["psi_level"] != "none"].itertuples():
        items.append(_item(
            f"case mix: {r.feature}", "input drift", "network",
            "PSI of the group shares vs this audit's stays", float(r.psi), psi_limits,
            _monthly(frame, lambda p, a=r.feature: _share_psi(frame[a], p[a])),
            f"{r.psi_level} difference from the vendor's training population (PSI {r.psi:.2f})",
            psi_window,
        ))  # fmt: skip
    net_rows = numeric[numeric["scope"] == "network"].sort_values("psi", ascending=False)
    top = net_rows.iloc[0]
    items.append(_item(
        "input drift: all model features (max PSI)", "input drift", "network",
        "largest PSI over the model features, window vs this audit's stays", float(top["psi"]),
        psi_limits,
        _monthly(frame, lambda p: max(window_psi(frame[f], p[f]) for f in net_rows["feature"])),
        f"every model feature is watched; largest network PSI at audit: {top['feature']}",
        psi_window,
    ))  # fmt: skip
    return items


def _share_psi(reference: pd.Series, window: pd.Series) -> float:
    cats = sorted(set(reference.astype(str)))
    e = reference.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0).to_numpy()
    a = window.astype(str).value_counts(normalize=True).reindex(cats, fill_value=0).to_numpy()
    e, a = np.where(e > 0, e, 1e-4), np.where(a > 0, a, 1e-4)
    return float(np.sum((a - e) * np.log(a / e)))


def _rates(part: pd.DataFrame, alert: np.ndarray) -> tuple[float, float]:
    pos = part["sepsis"].to_numpy() == 1
    return float(alert.mean()), float(alert[pos].mean()) if pos.any() else np.nan


def _auroc(part: pd.DataFrame, min_pos: int, min_neg: int) -> float:
    y = part["sepsis"].to_numpy(float)
    if y.sum() < min_pos or (1 - y).sum() < min_neg:
        return np.nan
    ones = np.ones((1, len(y)))
    return float(weighted_binary_metrics(y, part["score"].to_numpy(float), ones)["auroc"][0])


def _gap(part: pd.DataFrame, alert: np.ndarray, attr: str, min_pos: int) -> float:
    pos, labels = part["sepsis"].to_numpy() == 1, part[attr].astype(str).to_numpy()
    tpr = [alert[pos & (labels == g)].mean() for g in sorted(set(labels))
           if (pos & (labels == g)).sum() >= min_pos]  # fmt: skip
    return float(max(tpr) - min(tpr)) if len(tpr) >= 2 else np.nan


@dataclass(frozen=True)
class _Baseline:
    """An outcome statistic at audit: value, its standard error, and the stays it came from."""

    value: float
    se: float


def _outcome_items(
    policy: SepsisPolicy,
    frame: pd.DataFrame,
    alert: np.ndarray,
    base: dict[str, _Baseline],
    gaps: dict[str, _Baseline],
) -> list[dict]:
    m, a, n = policy.monitoring, policy.analysis, len(frame)
    by_month = frame.assign(_alert=alert)

    def monthly(stat: Callable[[pd.DataFrame, np.ndarray], float]) -> tuple[float, float]:
        return _monthly(by_month, lambda p: stat(p, p["_alert"].to_numpy(bool)))

    def window(b: _Baseline, margin: float) -> int:
        return window_stays(n, b.se, margin, m.min_window_stays)

    rate, sens, auroc, ece = (base[k] for k in ("alert_rate", "sensitivity", "auroc", "ece"))
    items = [
        _item("alert rate", "alert rate", "network and each hospital",
              "share of stays alerted by the deployed rule (relative change vs baseline)",
              rate.value,
              (m.alert_rate_warn_relative_change, m.alert_rate_action_relative_change, "relative"),
              monthly(lambda p, al: _rates(p, al)[0]), "alert fatigue and clinical capacity",
              window(rate, m.alert_rate_action_relative_change * rate.value)),
        _item("AUROC", "discrimination", "network", "AUROC on the window's adjudicated stays",
              auroc.value,
              (auroc.value - m.auroc_warn_drop, auroc.value - m.auroc_action_drop, "below"),
              monthly(lambda p, al: _auroc(p, a.min_pos, a.min_neg)),
              f"audit AUROC {auroc.value:.3f}", window(auroc, m.auroc_action_drop)),
        _item("sensitivity", "sensitivity", "network", "share of septic stays alerted",
              sens.value,
              (sens.value - m.sensitivity_warn_drop, sens.value - m.sensitivity_action_drop,
               "below"),
              monthly(lambda p, al: _rates(p, al)[1]), "a missed sepsis is the harm prevented",
              window(sens, m.sensitivity_action_drop)),
        _item("ECE", "calibration", "network", "ECE (equal-width bins) of the probability",
              ece.value, (ece.value + m.ece_warn_margin, ece.value + m.ece_action_margin, "above"),
              monthly(lambda p, al: expected_calibration_error(p["sepsis"], p["score"])),
              "the probability is shown to clinicians", window(ece, m.ece_action_margin)),
    ]  # fmt: skip
    for attr, gap in gaps.items():
        items.append(_item(
            f"TPR gap: {attr}", "fairness", attr, "max - min TPR over groups with enough cases",
            gap.value, (m.tpr_gap_warn, m.tpr_gap_action, "above"),
            monthly(lambda p, al, at=attr: _gap(p, al, at, a.min_pos)),
            "equal opportunity across groups under the deployed rule",
            window(gap, m.tpr_gap_action - gap.value),
        ))  # fmt: skip
    return items


def _overall(table: pd.DataFrame) -> pd.Series:
    return table[(table["attribute"] == "overall") & (table["group"] == "all")].iloc[0]


def _baselines(
    frame: pd.DataFrame,
    alert: np.ndarray,
    discrimination: pd.DataFrame,
    calibration: pd.DataFrame,
    z: float,
) -> dict[str, _Baseline]:
    rate, sens = _rates(frame, alert)
    d, c = _overall(discrimination), _overall(calibration)
    n_pos = int(frame["sepsis"].sum())
    return {
        "alert_rate": _Baseline(rate, _rate_se(rate, len(frame))),
        "sensitivity": _Baseline(sens, _rate_se(sens, n_pos)),
        "auroc": _Baseline(float(d["auroc"]), float(d["auroc_se_delong"])),
        "ece": _Baseline(
            float(c["ece_width"]), float(c["ece_width_ci_high"] - c["ece_width_ci_low"]) / (2 * z)
        ),
    }


def _gap_baselines(
    policy: SepsisPolicy, fairness: FairnessResult, mitigation: MitigationOutcome,
    deployed: bool, z: float,
) -> dict[str, _Baseline]:  # fmt: skip
    out = {}
    gaps, eff = fairness.gaps, mitigation.effects
    for attr in policy.analysis.attributes:
        hit = gaps[(gaps["attribute"] == attr) & (gaps["metric"] == "tpr")
                   & (gaps["comparison"] == "max_min")].iloc[0]  # fmt: skip
        value, lo, hi = (float(hit[k]) for k in ("difference", "ci_low", "ci_high"))
        if deployed:
            after = eff[(eff["quantity"] == "tpr_gap") & (eff["attribute"] == attr)].iloc[0]
            value = float(after["after"])
        out[attr] = _Baseline(value, (hi - lo) / (2 * z))
    return out


def monitoring_plan(
    policy: SepsisPolicy,
    frame: pd.DataFrame,
    *,
    threshold: float,
    decision: Recommendation,
    drift: pd.DataFrame,
    mitigation: MitigationOutcome,
    discrimination: pd.DataFrame,
    calibration: pd.DataFrame,
    fairness: FairnessResult,
) -> pd.DataFrame:
    """The monitoring plan (:class:`MonitoringPlan`, columns :data:`PLAN_COLUMNS`), sorted by kind.

    Parameters
    ----------
    policy : SepsisPolicy
        Thresholds, cadence, escalation and the suspension rule.
    frame : pandas.DataFrame
        Scored stays (:func:`~clinaudit.studies.sepsis_ews.tables.scored_stays`).
    threshold : float, keyword-only
        The vendor operating threshold.
    decision : Recommendation, keyword-only
        Whether the mitigation is deployed (baselines then come from its decisions).
    drift, mitigation, discrimination, calibration, fairness : keyword-only
        The audit's tables.

    Returns
    -------
    pandas.DataFrame
        ``baseline`` is the audit's value; ``warn_threshold``/``action_threshold`` are absolute
        values, except ``direction="relative"`` (relative change of the alert rate) and
        ``"change"`` (absolute change of a missing rate); ``window_stays`` is the smallest window
        whose sampling error keeps the action threshold two standard errors from the baseline.

    Raises
    ------
    AuditInputError
        If an audit table lacks a column read here (named, with its producer's schema).
    """
    deployed = decision.uses_mitigation and mitigation.after is not None
    _check_inputs(drift, mitigation, discrimination, calibration, fairness, deployed)
    m = policy.monitoring
    z = float(norm.ppf(0.5 + policy.analysis.ci_level / 2))
    alert = mitigation.after if deployed else frame["score"].to_numpy(float) >= threshold
    base = _baselines(frame, alert, discrimination, calibration, z)
    gaps = _gap_baselines(policy, fairness, mitigation, deployed, z)
    items = _drift_items(policy, frame, drift) + _outcome_items(policy, frame, alert, base, gaps)
    if deployed and mitigation.attribute == "race_ethnicity":
        unknown = float((frame["race_ethnicity"].astype(str) == "Unknown").mean())
        items.append(_item(
            "completeness: race_ethnicity", "data quality", "network",
            "share of stays with race/ethnicity 'Unknown' (they get the vendor threshold)",
            unknown,
            (m.drift_missing_rate_warn_change, m.drift_missing_rate_action_change, "change"),
            _monthly(frame, lambda p: float((p["race_ethnicity"] == "Unknown").mean())),
            "the deployed rule needs the attribute at run time", m.min_window_stays,
        ))  # fmt: skip
    everyone, first = ", ".join(m.escalation), m.escalation[0]
    suspend = (
        f"notify {everyone}; after {m.suspend_after_consecutive_actions} consecutive windows past "
        f"the action threshold: {m.suspension}"
    )
    for item in items:
        outcome = item["kind"] not in ("input drift", "data quality")
        item["cadence"] = m.cadence_outcomes if item["kind"] in OUTCOME_KINDS else m.cadence_inputs
        item["on_warn"] = f"notify {first}; review at the next committee meeting"
        item["on_action"] = suspend if outcome else (
            f"notify {everyone}; review the outcomes of the window now (unscheduled)")  # fmt: skip
        item["suspends"] = outcome
    per_month = len(frame) / max(frame["admit_month"].nunique(), 1)
    for item in items:
        item["window_months"] = int(max(1, np.ceil(item["window_stays"] / per_month)))
    plan = pd.DataFrame(items, columns=list(PLAN_COLUMNS))
    order = plan["kind"].map(KIND_ORDER.index)
    plan = plan.assign(_o=order).sort_values(["_o"], kind="stable").drop(columns="_o")
    return validate_table(plan.reset_index(drop=True), MonitoringPlan)


def _check_inputs(
    drift: pd.DataFrame, mitigation: MitigationOutcome, discrimination: pd.DataFrame,
    calibration: pd.DataFrame, fairness: FairnessResult, deployed: bool,
) -> None:  # fmt: skip
    """The columns the plan reads, in their producers' schemas (a drift table without columns:
    no card, no drift items)."""
    if len(drift.columns):
        require_columns("drift", drift, CardDrift)
    key = ["attribute", "group"]
    cols = [*key, "auroc", "auroc_se_delong"]
    require_columns("discrimination", discrimination, DiscriminationByAttribute, cols)
    cols = [*key, "ece_width", "ece_width_ci_low", "ece_width_ci_high"]
    require_columns("calibration", calibration, CalibrationByAttribute, cols)
    cols = ["attribute", "metric", "comparison", "difference", "ci_low", "ci_high"]
    require_columns("fairness_gaps", fairness.gaps, FairnessGaps, cols)
    if deployed:
        cols = ["quantity", "attribute", "after"]
        require_columns("mitigation_effects", mitigation.effects, MitigationEffects, cols)
