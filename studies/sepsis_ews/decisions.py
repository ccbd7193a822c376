"""Who the sepsis score fails, what one mitigation buys, and the recommendation that follows.

* :func:`disadvantaged_groups`: per attribute, the group with the lowest TPR (sensitivity) at the
  operating threshold, with its interval, its gap to the reference group and the attribute's
  max-min gap (paired intervals from :func:`clinaudit.audit.fairness.group_rates`).
* :func:`run_mitigations`: the policy's method (and alternatives) on the largest gap, cross-fitted
  (:func:`clinaudit.audit.fairness_mitigation.mitigate_largest_gap`), plus the main method's effect
  on *every* attribute's TPR/FPR gaps, because fixing one attribute can widen another's.
* :func:`decide`: the policy's criteria before and after the mitigation and the recommendation
  (a :class:`~clinaudit.audit.policy_base.Decision`: ``GO`` / ``CONDITIONAL GO`` / ``NO-GO``) with
  its reasons and conditions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.burden import (
    AlertBurdenTable,
    build_cells,
    paired_change_row,
    rule_rates,
    spread,
    validate_binary,
)
from clinaudit.audit.fairness import FairnessGaps, FairnessRates, FairnessResult
from clinaudit.audit.fairness_mitigation import (
    CAVEATS,
    GroupThresholds,
    MitigationTable,
    mitigate_largest_gap,
)
from clinaudit.audit.policy_base import Decision
from clinaudit.audit.schemas import require_columns, schema_columns, validate_table
from clinaudit.audit.types import STATUS_OK, AuditInputError

from .decisions_schema import CriteriaTable, DisadvantagedGroups, MitigationEffects
from .policy import LARGEST, SepsisPolicy
from .tables import TARGET, AuditSettings
from .tables_schema import CalibrationByAttribute, DiscriminationByAttribute

__all__ = [
    "CRITERIA_COLUMNS",
    "CRITERION_NAMES",
    "NOT_RUN",
    "RUN",
    "MitigationOutcome",
    "Recommendation",
    "decide",
    "deployed_alerts",
    "disadvantaged_groups",
    "run_mitigations",
]

RUN, NOT_RUN = "run", "not run"
#: Column order of the criteria table (its schema's).
CRITERIA_COLUMNS: tuple[str, ...] = schema_columns(CriteriaTable)
#: Columns of the core tables the study reads; ``*_ci`` adds each one's interval.
_INTERVAL = ("", "_ci_low", "_ci_high")


# --------------------------------------------------------------------------- who is failed
def disadvantaged_groups(fairness: FairnessResult) -> pd.DataFrame:
    """Per attribute: the lowest-TPR group, its TPR, its gap to the reference and the max-min gap.

    Returns
    -------
    pandas.DataFrame
        :class:`~.decisions_schema.DisadvantagedGroups`: one row per attribute (intersections
        excluded): ``attribute``, ``status``, ``group``, ``n``, ``n_pos``, ``tpr`` (+CI),
        ``reference``, ``reference_tpr``, ``diff_vs_reference`` (+CI, ``diff_excludes_zero``),
        ``max_min_gap`` (+CI of the paired difference, ``gap_excludes_zero``,
        ``gap_excludes_zero_adjusted``), ``highest_group`` and ``largest`` (this attribute holds
        the largest TPR gap).

    Raises
    ------
    AuditInputError
        If the fairness tables lack a column read here.
    """
    rates, gaps = fairness.rates, fairness.gaps
    cols = ["attribute", "group", "is_intersection", "status", "n", "n_pos"]
    require_columns("fairness_rates", rates, FairnessRates, cols + [f"tpr{s}" for s in _INTERVAL])
    cols = ["attribute", "metric", "comparison", "group", "difference", "ci_low", "ci_high"]
    cols += ["ci_excludes_zero", "ci_excludes_zero_adjusted"]
    require_columns("fairness_gaps", gaps, FairnessGaps, cols)
    top = fairness.largest_gap(("tpr",))
    rows = []
    for attr in [a for a in dict.fromkeys(rates["attribute"]) if a != "overall"]:
        part = rates[(rates["attribute"] == attr) & ~rates["is_intersection"].astype(bool)]
        if part.empty:
            continue
        ok = part[part["status"] == STATUS_OK]
        ref = fairness.reference.get(attr, "")
        mm = gaps[(gaps["attribute"] == attr) & (gaps["metric"] == "tpr")]
        mm_row = mm[mm["comparison"] == "max_min"].iloc[0]
        if len(ok) < 2:
            rows.append({"attribute": attr, "status": "insufficient data", "reference": ref})
            continue
        low = ok.loc[ok["tpr"].idxmin()]
        vs = mm[(mm["comparison"] == "vs_reference") & (mm["group"] == low["group"])]
        vs_row = vs.iloc[0] if len(vs) else None
        ref_rate = part.loc[part["group"] == ref, "tpr"]
        rows.append({
            "attribute": attr, "status": STATUS_OK, "group": low["group"], "n": int(low["n"]),
            "n_pos": int(low["n_pos"]), "tpr": low["tpr"], "tpr_ci_low": low["tpr_ci_low"],
            "tpr_ci_high": low["tpr_ci_high"], "reference": ref,
            "reference_tpr": float(ref_rate.iloc[0]) if len(ref_rate) else np.nan,
            "diff_vs_reference": vs_row["difference"] if vs_row is not None else 0.0,
            "diff_ci_low": vs_row["ci_low"] if vs_row is not None else np.nan,
            "diff_ci_high": vs_row["ci_high"] if vs_row is not None else np.nan,
            "diff_excludes_zero": bool(vs_row["ci_excludes_zero"]) if vs_row is not None else False,
            "max_min_gap": mm_row["difference"], "gap_ci_low": mm_row["ci_low"],
            "gap_ci_high": mm_row["ci_high"], "gap_excludes_zero": bool(mm_row["ci_excludes_zero"]),
            "gap_excludes_zero_adjusted": bool(mm_row["ci_excludes_zero_adjusted"]),
            "highest_group": mm_row["group"],
            "largest": bool(top is not None and top["attribute"] == attr),
        })  # fmt: skip
    return validate_table(pd.DataFrame(rows), DisadvantagedGroups)


# --------------------------------------------------------------------------- mitigation
@dataclass(frozen=True)
class MitigationOutcome:
    """The mitigations of the largest gap (``status`` ``"run"`` or ``"not run"`` + ``reason``).

    ``table`` stacks :attr:`MitigationResult.table` of every method (column ``method``, the main
    method first; :class:`~clinaudit.audit.fairness_mitigation.MitigationTable`); ``thresholds``
    their per-group thresholds (:class:`~clinaudit.audit.fairness_mitigation.GroupThresholds`);
    ``effects`` the main method's before/after TPR/FPR and gaps of every attribute
    (:class:`~.decisions_schema.MitigationEffects`); ``before``/``after`` its alert decisions.
    When the mitigation is ``"not run"`` the three tables are empty and have no columns.
    """

    status: str
    reason: str
    method: str
    attribute: str | None
    metric: str | None
    table: pd.DataFrame
    thresholds: pd.DataFrame
    effects: pd.DataFrame
    caveats: tuple[str, ...]
    before: np.ndarray | None = None
    after: np.ndarray | None = None


def _effects(
    frame: pd.DataFrame,
    fairness: FairnessResult,
    before: np.ndarray,
    after: np.ndarray,
    attributes: tuple[str, ...],
    opts: AuditSettings,
) -> pd.DataFrame:
    """Before/after TPR and FPR of every group and gap of every attribute (paired intervals):
    :class:`~.decisions_schema.MitigationEffects`."""
    groups = {a: frame[a].astype(str).to_numpy() for a in attributes}
    data = validate_binary(
        frame[TARGET].to_numpy(float), frame["score"].to_numpy(float), threshold=0.5,
        groups=groups, clusters=frame["stay_id"],
    )  # fmt: skip
    cells = build_cells(data.attributes, data.y.size)
    rates, _ = rule_rates(
        data, cells, {"before": before, "after": after}, n_boot=opts.n_boot, seed=opts.seed
    )
    ok_rows = fairness.rates[fairness.rates["status"] == STATUS_OK]
    ok = {(r.attribute, r.group) for r in ok_rows.itertuples(index=False)}
    rows = []
    for attr in attributes:
        idx = [c for c, cell in enumerate(cells) if cell.attribute == attr]
        sel = [c for c in idx if (attr, cells[c].group) in ok]
        for metric in ("tpr", "fpr"):
            pairs = [(p[metric], r[metric]) for p, r in rates.values()]
            names = {"quantity": f"{metric}_gap", "attribute": attr, "group": "max-min"}
            vals = [(spread(p[sel]), spread(r[sel])) for p, r in pairs] if len(sel) > 1 else None
            rows.append(paired_change_row(names, *(vals or (None, None)), opts.ci_level))
            for c in idx:
                names = {"quantity": metric, "attribute": attr, "group": cells[c].group}
                vals = [(p[c], r[c]) for p, r in pairs] if c in sel else None
                rows.append(paired_change_row(names, *(vals or (None, None)), opts.ci_level))
    return validate_table(pd.DataFrame(rows), MitigationEffects)


def run_mitigations(
    frame: pd.DataFrame,
    threshold: float,
    fairness: FairnessResult,
    exposure: np.ndarray,
    policy: SepsisPolicy,
    opts: AuditSettings,
) -> MitigationOutcome:
    """Mitigate the largest gap with the policy's method and alternatives (see module docstring).

    ``frame`` is :func:`~clinaudit.studies.sepsis_ews.tables.scored_stays` output; ``opts`` the
    audit's settings (bootstrap replicates, interval level, cell minimums, seed).
    """
    mit, metrics = policy.mitigation, policy.criteria.fairness_metrics
    attrs = policy.analysis.attributes
    wanted = None if mit.attribute == LARGEST else mit.attribute
    target = fairness.largest_gap(metrics, attribute=wanted)
    empty = pd.DataFrame()
    if target is None:
        reason = (
            f"no audited attribute has two groups with >= {opts.min_pos} septic and >= "
            f"{opts.min_neg} non-septic stays, so no gap could be targeted"
        )
        return MitigationOutcome(
            NOT_RUN, reason, mit.method, None, None, empty, empty, empty, CAVEATS
        )
    common = {
        "groups": {a: frame[a].astype(str).to_numpy() for a in attrs},
        "threshold": threshold, "clusters": frame["stay_id"], "attribute": target["attribute"],
        "metric": target["metric"], "n_folds": mit.n_folds, "seed": opts.seed,
        "n_boot": opts.n_boot, "ci_level": opts.ci_level, "min_pos": opts.min_pos,
        "min_neg": opts.min_neg, "exposure_days": exposure,
    }  # fmt: skip
    y, s = frame[TARGET].to_numpy(float), frame["score"].to_numpy(float)
    results = [
        mitigate_largest_gap(y, s, method=m, **common) for m in (mit.method, *mit.alternatives)
    ]
    main = results[0]
    return MitigationOutcome(
        status=RUN,
        reason=f"largest {main.metric.upper()} gap: {main.attribute}",
        method=main.method,
        attribute=main.attribute,
        metric=main.metric,
        table=validate_table(
            pd.concat([r.table for r in results], ignore_index=True), MitigationTable
        ),
        thresholds=validate_table(
            pd.concat([r.thresholds_by_group for r in results], ignore_index=True), GroupThresholds
        ),
        effects=_effects(frame, fairness, main.decisions_before, main.decisions_after, attrs, opts),
        caveats=main.caveats,
        before=main.decisions_before,
        after=main.decisions_after,
    )


def deployed_alerts(
    thresholds: pd.DataFrame, scores: Any, labels: Any, *, method: str, threshold: float
) -> np.ndarray:
    """Alerts of a fitted deterministic group rule (fold ``-1``) on new stays.

    Parameters
    ----------
    thresholds : pandas.DataFrame
        ``MitigationOutcome.thresholds`` (or one method's ``thresholds_by_group``).
    scores, labels : array-like of shape (n,)
        New stays' scores and their group labels of the mitigated attribute.
    method : {"group_thresholds", "group_recalibration"}, keyword-only
        Which method's thresholds to apply (ThresholdOptimizer's decisions are randomised and
        are not reproduced here).
    threshold : float, keyword-only
        The vendor threshold, kept for groups the rule did not fit (unknown or too small).

    Returns
    -------
    ndarray of bool
        ``score >= threshold of the stay's group``.
    """
    if method not in ("group_thresholds", "group_recalibration"):
        raise AuditInputError(
            "method", repr(method), "'group_thresholds' or 'group_recalibration'",
            "apply a deterministic rule; threshold_optimizer randomises its decisions",
        )  # fmt: skip
    fit = thresholds[(thresholds["method"] == method) & (thresholds["fold"] == -1)]
    if fit.empty:
        raise AuditInputError(
            "thresholds", f"no fold -1 rows of {method!r}", "the rule fitted on all stays",
            "pass MitigationOutcome.thresholds of a run of this method",
        )  # fmt: skip
    cut = {str(r.group): float(r.threshold) for r in fit.itertuples() if np.isfinite(r.threshold)}
    s = np.asarray(scores, dtype=float)
    return s >= np.array([cut.get(str(g), threshold) for g in np.asarray(labels)])


# --------------------------------------------------------------------------- decision
@dataclass(frozen=True)
class Recommendation:
    """The recommendation, its criteria table, reasons, conditions and the rule to deploy."""

    recommendation: Decision
    criteria: pd.DataFrame
    reasons: tuple[str, ...]
    conditions: tuple[str, ...]
    deployed_rule: str
    uses_mitigation: bool


def _overall(table: pd.DataFrame) -> pd.Series:
    return table[(table["attribute"] == "overall") & (table["group"] == "all")].iloc[0]


def _mit_value(mitigation: MitigationOutcome, quantity: str, attribute: str) -> pd.Series | None:
    src = mitigation.effects if quantity.endswith("_gap") else mitigation.table
    if mitigation.status != RUN or src.empty:
        return None
    hit = src[(src["quantity"] == quantity) & (src["attribute"] == attribute)]
    if "method" in hit.columns:
        hit = hit[hit["method"] == mitigation.method]
    return hit.iloc[0] if len(hit) else None


def _row(
    name: str,
    attr: str,
    stat: str,
    point: pd.Series,
    keys: tuple[str, str, str],
    limit: float,
    comparator: str,
    after: float | None,
    evidence: str,
) -> dict[str, Any]:
    value_key = keys[0] if stat == "estimate" else keys[1] if stat == "ci_low" else keys[2]
    value = float(point[value_key]) if point is not None else np.nan
    ok = point is not None and point.get("status", STATUS_OK) == STATUS_OK and np.isfinite(value)

    def passes(v: float | None) -> bool:
        return bool(ok and v is not None and np.isfinite(v) and (
            v >= limit if comparator == ">=" else v <= limit))  # fmt: skip

    after = value if after is None else after
    return {
        "criterion": name, "attribute": attr, "statistic": stat, "value": value,
        "estimate": float(point[keys[0]]) if ok else np.nan,
        "ci_low": float(point[keys[1]]) if ok else np.nan,
        "ci_high": float(point[keys[2]]) if ok else np.nan, "limit": limit,
        "comparator": comparator, "passed": passes(value), "value_after": after,
        "passed_after": passes(after), "evidence": evidence if ok else "insufficient data",
    }  # fmt: skip


def _criteria(
    policy: SepsisPolicy,
    discrimination: pd.DataFrame,
    calibration: pd.DataFrame,
    burden: pd.DataFrame,
    fairness: FairnessResult,
    mitigation: MitigationOutcome,
) -> pd.DataFrame:
    c = policy.criteria
    rows = []
    if c.auroc.enabled:
        rows.append(_row("auroc", "overall", c.auroc.statistic, _overall(discrimination),
                         ("auroc", "auroc_ci_low", "auroc_ci_high"), c.auroc.threshold, ">=",
                         None, "network AUROC; a threshold rule cannot change it"))  # fmt: skip
    if c.ece.enabled:
        rows.append(_row("ece", "overall", c.ece.statistic, _overall(calibration),
                         ("ece_width", "ece_width_ci_low", "ece_width_ci_high"), c.ece.threshold,
                         "<=", None, "network ECE of the probability"))  # fmt: skip
    if c.alert_rate.enabled:
        after = _mit_value(mitigation, "alert_rate", "overall")
        rows.append(_row("alert_rate", "overall", "estimate", _overall(burden),
                         ("alert_rate", "alert_rate_ci_low", "alert_rate_ci_high"),
                         c.alert_rate.threshold, "<=",
                         None if after is None else float(after["after"]),
                         "share of stays alerted"))  # fmt: skip
    if c.fairness_gap.enabled:
        gaps = fairness.gaps
        for attr in policy.analysis.attributes:
            for metric in c.fairness_metrics:
                hit = gaps[(gaps["attribute"] == attr) & (gaps["metric"] == metric)
                           & (gaps["comparison"] == "max_min")].iloc[0]  # fmt: skip
                eff = _mit_value(mitigation, f"{metric}_gap", attr)
                key = "after" if c.fairness_gap.statistic == "estimate" else "after_ci_low"
                text = f"{metric.upper()} {hit['group']} - {hit['versus']}"
                point = hit.rename({"difference": "value"})
                rows.append(
                    _row(
                        f"{metric}_gap",
                        attr,
                        c.fairness_gap.statistic,
                        point,
                        ("value", "ci_low", "ci_high"),
                        c.fairness_gap.threshold,
                        "<=",
                        None if eff is None else float(eff[key]),
                        text,
                    )
                )
    return validate_table(pd.DataFrame(rows, columns=list(CRITERIA_COLUMNS)), CriteriaTable)


def _check_inputs(
    policy: SepsisPolicy,
    discrimination: pd.DataFrame,
    calibration: pd.DataFrame,
    burden: pd.DataFrame,
    fairness: FairnessResult,
    mitigation: MitigationOutcome,
) -> None:
    """The columns each enabled criterion reads, in their producers' schemas."""
    c, key = policy.criteria, ["attribute", "group", "status"]
    if c.auroc.enabled:
        cols = key + [f"auroc{s}" for s in _INTERVAL]
        require_columns("discrimination", discrimination, DiscriminationByAttribute, cols)
    if c.ece.enabled:
        cols = key + [f"ece_width{s}" for s in _INTERVAL]
        require_columns("calibration", calibration, CalibrationByAttribute, cols)
    if c.alert_rate.enabled:
        cols = ["attribute", "group"] + [f"alert_rate{s}" for s in _INTERVAL]
        require_columns("burden", burden, AlertBurdenTable, cols)
    if c.fairness_gap.enabled:
        cols = ["attribute", "metric", "comparison", "group", "versus", "difference", "ci_low"]
        require_columns("fairness_gaps", fairness.gaps, FairnessGaps, [*cols, "ci_high", "status"])
    if mitigation.status == RUN:
        cols = ["quantity", "attribute", "after", "after_ci_low"]
        require_columns("mitigation", mitigation.table, MitigationTable, [*cols, "method"])
        require_columns("mitigation_effects", mitigation.effects, MitigationEffects, cols)


#: Printed names of the criteria.
CRITERION_NAMES = {
    "auroc": "AUROC", "ece": "ECE", "alert_rate": "alert rate", "tpr_gap": "TPR gap",
    "fpr_gap": "FPR gap",
}  # fmt: skip


def _phrase(r: pd.Series, after: bool = False) -> str:
    value = r["value_after"] if after else r["value"]
    name = CRITERION_NAMES[r["criterion"]]
    where = "" if r["attribute"] == "overall" else f" ({r['attribute']})"
    stat = {"estimate": "", "ci_low": "lower CI bound of ", "ci_high": "upper CI bound of "}
    return (
        f"{stat[r['statistic']]}{name}{where} {value:.3f} "
        f"{'<' if r['comparator'] == '>=' else '>'} {r['limit']:.2f}"
        if np.isfinite(value)
        else f"{name}{where}: insufficient data"
    )


def decide(
    policy: SepsisPolicy,
    discrimination: pd.DataFrame,
    calibration: pd.DataFrame,
    burden: pd.DataFrame,
    fairness: FairnessResult,
    mitigation: MitigationOutcome,
) -> Recommendation:
    """The recommendation under ``policy``.

    ``NO-GO`` when discrimination fails (a threshold rule cannot fix ranking) or a criterion still
    fails after the mitigation; ``CONDITIONAL GO`` when every criterion passes only with the
    mitigation deployed; ``GO`` when every criterion passes at the vendor threshold. The
    criteria are a :class:`~.decisions_schema.CriteriaTable`.

    Raises
    ------
    AuditInputError
        If an input table lacks a column the policy's criteria read (named, with its schema).
    """
    _check_inputs(policy, discrimination, calibration, burden, fairness, mitigation)
    crit = _criteria(policy, discrimination, calibration, burden, fairness, mitigation)
    failed, failed_after = crit[~crit["passed"]], crit[~crit["passed_after"]]
    vendor_rule = "the vendor threshold for every stay"
    mit_rule = f"{mitigation.method} by {mitigation.attribute} (thresholds fitted on all stays)"
    m = policy.monitoring
    watch = (
        f"the monitoring plan runs ({m.cadence_inputs} inputs, {m.cadence_outcomes} outcomes) with "
        f"escalation to {', '.join(m.escalation)}"
    )
    if (failed["criterion"] == "auroc").any() or len(failed_after):
        auroc_failed = (failed["criterion"] == "auroc").any()
        rows = failed if auroc_failed else failed_after
        reasons = tuple(
            _phrase(r, after=not auroc_failed)
            + ("" if auroc_failed or r["criterion"] == "auroc" else " after the mitigation")
            for _, r in rows.iterrows()
        )
        conditions = (
            "do not deploy the alerts; run the score silently while the causes are remedied",
            "re-audit on new data before the committee reconsiders",
        )
        return Recommendation(Decision.NO_GO, crit, reasons, conditions, vendor_rule, False)
    if len(failed):
        reasons = tuple(f"{_phrase(r)} at the vendor threshold; passes with the mitigation"
                        for _, r in failed.iterrows())  # fmt: skip
        conditions = (
            f"deploy {mit_rule} only after legal and ethics review of using "
            f"{mitigation.attribute} at run time",
            f"record {mitigation.attribute} for every patient at run time",
            watch,
        )
        return Recommendation(Decision.CONDITIONAL_GO, crit, reasons, conditions, mit_rule, True)
    reasons = ("every criterion passes at the vendor threshold",)
    return Recommendation(Decision.GO, crit, reasons, (watch,), vendor_rule, False)
