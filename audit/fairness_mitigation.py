"""Mitigate the largest subgroup gap at the operating threshold, cross-fitted, with its costs.

:func:`mitigate_largest_gap` finds the attribute and metric (TPR or FPR) with the largest max-min
gap (:func:`clinaudit.audit.fairness.group_rates`), then fits one of three group-aware rules on
some folds and applies it to the held-out fold (patient-disjoint, seeded k-fold cross-fitting), so
every "after" decision is out-of-sample:

``"threshold_optimizer"``
    fairlearn's ``ThresholdOptimizer`` (``prefit=True`` around the precomputed score) with
    ``constraints`` (default: parity of the targeted metric, or ``"equalized_odds"``); its
    decisions are randomised between two thresholds per group (seeded).
``"group_thresholds"``
    deterministic per-group thresholds that give every group the pooled TPR (or FPR) of the
    fitting folds at the original threshold, so the overall operating point barely moves.
``"group_recalibration"``
    logistic (Platt) recalibration per group (:func:`clinaudit.audit.calibration.
    logistic_recalibration`), then one common threshold on the recalibrated probability that
    keeps the pooled TPR (or FPR) of the fitting folds: equal calibrated risk, equal threshold.
    It fixes gaps that come from miscalibration for a group, not from worse discrimination.

Every rule is stored as per-group score thresholds (``thresholds_by_group``; the recalibration
map is monotone, so it too is a raw-score threshold per group).

Groups with fewer than ``min_pos`` positives or ``min_neg`` negatives keep the original threshold
(``fallback``). The table reports before and after, on the same rows, with paired clustered-
bootstrap intervals of each and of the change: the targeted gap (max-min over groups, the spread
statistic), each group's TPR and FPR, and overall sensitivity, specificity, alert rate, PPV,
number needed to evaluate, missed cases per 1,000 and (with ``exposure_days``) alerts per 100
stay-days: what the rule fixes and what it costs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from .bootstrap import DEFAULT_CHUNK_SIZE, derive_rng
from .burden import (
    BinaryData,
    build_cells,
    check_exposure,
    paired_change_row,
    rule_rates,
    spread,
    validate_binary,
)
from .fairness import group_rates
from .group_rules import fit_group_rule
from .schemas import (
    OutputSchema,
    count_field,
    probability_field,
    schema_columns,
    status_field,
    validate_table,
)
from .types import AuditInputError, check_ci_level, check_option, check_positive_int

__all__ = [
    "CAVEATS",
    "METHODS",
    "GroupThresholds",
    "MitigationResult",
    "MitigationTable",
    "cluster_folds",
    "mitigate_largest_gap",
]

Method = Literal["threshold_optimizer", "group_thresholds", "group_recalibration"]
METHODS: tuple[str, ...] = ("threshold_optimizer", "group_thresholds", "group_recalibration")
CONSTRAINTS = ("equalized_odds", "true_positive_rate_parity", "false_positive_rate_parity")
OBJECTIVES: tuple[str, ...] = ("balanced_accuracy_score", "accuracy_score")
TARGET_METRICS: tuple[str, ...] = ("tpr", "fpr")
PARITY = {"tpr": "true_positive_rate_parity", "fpr": "false_positive_rate_parity"}

CAVEATS: tuple[str, ...] = (
    "Disparate treatment: a decision rule that takes a protected attribute (race, sex, age) as an "
    "input treats patients differently by that attribute; anti-discrimination law (e.g. US "
    "Section 1557 of the ACA and 45 CFR 92.210 on patient care decision support tools, Title VI; "
    "EU non-discrimination law and the AI Act) may restrict it. Obtain legal review before use.",
    "Attribute availability and accuracy: the attribute must be recorded for every patient at "
    "run time; missing or wrong values (e.g. observer-assigned rather than self-reported race, "
    "'unknown'/'other' categories) put patients under the wrong threshold.",
    "Race is a social category, not a biological cause: a race-specific threshold corrects a "
    "proxy. Fix the mechanism where it is known (e.g. pulse-oximetry overestimation in darker "
    "skin: confirm with arterial blood gas, use skin-tone-aware devices) rather than the label.",
    "Consent, privacy and transparency: race/ethnicity is special-category data (GDPR Art. 9); "
    "patients and clinicians should be told the alert rule uses it, and governance should sign "
    "off on the use.",
    "Equalised odds or TPR/FPR parity can be reached by lowering sensitivity or raising false "
    "alerts for other groups; randomised thresholds (ThresholdOptimizer) give identical patients "
    "different decisions. Read each group's TPR/FPR and the overall costs, not only the gap.",
    "Fixing one attribute can widen gaps on another attribute or an intersection; small groups' "
    "thresholds are noisy. Re-audit all attributes after deployment and monitor the gap.",
    "The targeted gap was chosen as the largest on this data (its 'before' value is biased "
    "upward); the 'after' values are out-of-fold but come from the same population.",
)


@dataclass(frozen=True)
class MitigationResult:
    """Before/after of a group-aware mitigation of the largest gap, cross-fitted.

    Attributes
    ----------
    table : pandas.DataFrame
        :class:`MitigationTable`, one row per quantity: ``quantity``, ``attribute``, ``group``,
        ``status``, ``before``, ``after`` and ``change`` (after - before), each with
        ``*_ci_low``/``*_ci_high``; ``change_ci_excludes_zero``, ``method``, ``n_boot``,
        ``ci_level``.
    fold_assignments : pandas.DataFrame
        ``row``, ``cluster`` (code), ``fold`` of every row.
    fold_rows : dict of int to (ndarray, ndarray)
        ``fold -> (fit_rows, eval_rows)``: the row indices each rule was fitted on and applied to.
    attribute, metric : str
        The targeted gap (``metric`` in ``"tpr"``, ``"fpr"``).
    method : str
    caveats : tuple of str
        Legal and ethical caveats of using the attribute at run time.
    thresholds_by_group : pandas.DataFrame
        :class:`GroupThresholds`, per fold and group: ``fold`` (``-1`` = fitted on all rows,
        the deployment candidate), ``group``, ``fallback``, ``operator``, ``threshold``,
        ``threshold_alt``,
        ``p_threshold`` (probability of applying ``threshold`` rather than ``threshold_alt``),
        ``intercept``, ``slope`` (recalibration), ``n_fit``, ``n_pos_fit``.
    decisions_before, decisions_after : ndarray of bool
        Alert per row at the original threshold and out-of-fold after mitigation.
    fallback_groups : tuple of str
        Groups too small to fit (original threshold kept).
    """

    table: pd.DataFrame
    fold_assignments: pd.DataFrame
    fold_rows: dict[int, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    attribute: str
    metric: str
    method: str
    caveats: tuple[str, ...]
    thresholds_by_group: pd.DataFrame
    decisions_before: np.ndarray = field(repr=False)
    decisions_after: np.ndarray = field(repr=False)
    fallback_groups: tuple[str, ...]
    n_folds: int
    seed: int


def cluster_folds(
    y: np.ndarray, clusters: np.ndarray, labels: np.ndarray, n_folds: int, seed: int
) -> np.ndarray:
    """Patient-disjoint folds, stratified by (group, any positive stay), seeded.

    Clusters are shuffled (``derive_rng(seed, "folds")``), ordered by stratum (group label of the
    cluster's first row, whether it has a positive row) and dealt round-robin, so every fold gets
    its share of each group's positive and negative patients.

    Returns
    -------
    ndarray of int, shape (n,)
        Fold of each row; all rows of a cluster share a fold.
    """
    n_clusters = int(clusters.max()) + 1
    if n_folds > n_clusters:
        raise AuditInputError(
            "n_folds", repr(n_folds), f"at most {n_clusters} (the number of patients)", "lower it"
        )
    has_pos = np.bincount(clusters, weights=y, minlength=n_clusters) > 0
    first = np.full(n_clusters, clusters.size)
    np.minimum.at(first, clusters, np.arange(clusters.size))
    stratum = pd.factorize(labels[first] + np.where(has_pos, "|1", "|0"), sort=True)[0]
    perm = derive_rng(seed, "folds").permutation(n_clusters)
    order = perm[np.argsort(stratum[perm], kind="stable")]
    fold_of_cluster = np.empty(n_clusters, dtype=np.int64)
    fold_of_cluster[order] = np.arange(n_clusters) % n_folds
    return fold_of_cluster[clusters]


# --------------------------------------------------------------------------- target and folds
@dataclass(frozen=True)
class _Plan:
    """Everything the cross-fitting and the evaluation need (validated)."""

    data: BinaryData
    method: str
    attribute: str
    metric: str
    pair: tuple[str, str]  # (highest, lowest) group of the targeted gap before mitigation
    labels: np.ndarray
    fitted: list[str]
    folds: np.ndarray
    n_folds: int
    exposure: np.ndarray | None
    opts: dict[str, Any]
    seed: int


def _choose_target(
    data: BinaryData, attribute: str | None, metric: str | None, min_counts: tuple[int, int]
) -> tuple[str, str, tuple[str, str]]:
    if attribute is not None and attribute not in data.attributes:
        raise AuditInputError(
            "attribute", repr(attribute), f"one of {list(data.attributes)}", "name an attribute"
        )
    metrics = (
        TARGET_METRICS if metric is None else (check_option("metric", metric, TARGET_METRICS),)
    )
    res = group_rates(
        data.y,
        data.score,
        groups=data.attributes,
        threshold=data.threshold,
        clusters=data.clusters,
        intersections=None,
        n_boot=0,
        min_pos=min_counts[0],
        min_neg=min_counts[1],
    )
    row = res.largest_gap(metrics, attribute=attribute)
    if row is None:
        raise AuditInputError(
            "groups",
            f"no attribute with two groups of >= {min_counts[0]} positives and >= "
            f"{min_counts[1]} negatives",
            "at least two sufficient groups in the targeted attribute",
            "pool small groups, or lower min_pos/min_neg",
        )
    return str(row["attribute"]), str(row["metric"]), (str(row["group"]), str(row["versus"]))


def _cross_fit(
    plan: _Plan,
) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]], list[dict[str, Any]]]:
    """Out-of-fold decisions, the (fit, eval) rows of each fold, and the fitted thresholds."""
    data, labels = plan.data, plan.labels
    after = np.zeros(data.y.size, dtype=bool)
    fold_rows, threshold_rows = {}, []
    for k in [*range(plan.n_folds), -1]:
        fit_rows = np.flatnonzero(plan.folds != k)  # k = -1: every row (deployment candidate)
        fit_y, fit_s, fit_g = data.y[fit_rows], data.score[fit_rows], labels[fit_rows]
        for grp in plan.fitted:
            if len(set(fit_y[fit_g == grp].tolist())) < 2:
                raise AuditInputError(
                    "n_folds",
                    f"{plan.n_folds}: group {grp!r} lacks positives or negatives when fold {k} "
                    "is held out",
                    "both classes of every fitted group in every fitting set",
                    "use fewer folds or raise min_pos/min_neg",
                )
        rs = int(derive_rng(plan.seed, f"threshold_optimizer:{k}").integers(2**31 - 1))
        opts = {**plan.opts, "metric": plan.metric, "random_state": rs}
        apply, rows = fit_group_rule(plan.method, fit_y, fit_s, fit_g, plan.fitted, opts)
        threshold_rows += [{"fold": k, "attribute": plan.attribute, **r} for r in rows]
        if k >= 0:
            eval_rows = np.flatnonzero(plan.folds == k)
            after[eval_rows] = apply(data.score[eval_rows], labels[eval_rows])
            fold_rows[k] = (fit_rows, eval_rows)
    return after, fold_rows, threshold_rows


# --------------------------------------------------------------------------- evaluation
OVERALL_QUANTITIES = {
    "sensitivity": "tpr",
    "specificity": "specificity",
    "alert_rate": "selection_rate",
    "ppv": "ppv",
    "nne": "nne",
    "missed_per_1000_stays": "missed_per_1000",
    "alerts_per_100_stay_days": "alerts_per_100_days",
}
QUANTITIES: tuple[str, ...] = (
    *(f"{m}{suffix}" for m in TARGET_METRICS for suffix in ("_gap", "_gap_pair")),
    *TARGET_METRICS,
    *OVERALL_QUANTITIES,
)


class MitigationTable(OutputSchema):
    """:attr:`MitigationResult.table`: one row per quantity, before / after / change with CIs.

    The quantities have their own units (rates, NNE, per 1,000 stays, per 100 stay-days), so
    the numbers are not range-checked; a group too small to fit is ``"insufficient data"``.
    """

    quantity: Series[str] = pa.Field(isin=list(QUANTITIES))
    attribute: Series[str]
    group: Series[str]
    status: Series[str] = status_field()
    before: Series[float] = pa.Field(nullable=True)
    before_ci_low: Series[float] = pa.Field(nullable=True)
    before_ci_high: Series[float] = pa.Field(nullable=True)
    after: Series[float] = pa.Field(nullable=True)
    after_ci_low: Series[float] = pa.Field(nullable=True)
    after_ci_high: Series[float] = pa.Field(nullable=True)
    change: Series[float] = pa.Field(nullable=True)
    change_ci_low: Series[float] = pa.Field(nullable=True)
    change_ci_high: Series[float] = pa.Field(nullable=True)
    change_ci_excludes_zero: Series[bool]
    method: Series[str] = pa.Field(isin=list(METHODS))
    n_boot: Series[int] = count_field()
    ci_level: Series[float] = pa.Field(gt=0.0, lt=1.0)

    class Config:
        ordered = True


class GroupThresholds(OutputSchema):
    """:attr:`MitigationResult.thresholds_by_group`: the fitted rule of each fold and group.

    Thresholds are raw-score cuts (fairlearn's may be infinite: "always" / "never"); the columns
    a method does not use are ``NaN``.
    """

    fold: Series[int] = pa.Field(ge=-1)
    attribute: Series[str]
    method: Series[str] = pa.Field(isin=list(METHODS))
    group: Series[str]
    fallback: Series[bool]
    operator: Series[str]
    threshold: Series[float] = pa.Field(nullable=True)
    threshold_alt: Series[float] = pa.Field(nullable=True)
    p_threshold: Series[float] = probability_field()
    threshold_recalibrated: Series[float] = pa.Field(nullable=True)
    intercept: Series[float] = pa.Field(nullable=True)
    slope: Series[float] = pa.Field(nullable=True)
    n_fit: Series[int] = count_field()
    n_pos_fit: Series[int] = count_field()

    class Config:
        ordered = True


THRESHOLD_COLUMNS: tuple[str, ...] = schema_columns(GroupThresholds)


def _evaluate(plan: _Plan, decisions: dict[str, np.ndarray]) -> pd.DataFrame:
    """Before/after rows on the same rows and resamples (see :func:`mitigate_largest_gap`)."""
    attr, opts, m = plan.attribute, plan.opts, plan.metric
    cells = build_cells({attr: plan.labels}, plan.data.y.size)
    rates, _ = rule_rates(
        plan.data,
        cells,
        decisions,
        exposure=plan.exposure,
        n_boot=opts["n_boot"],
        seed=plan.seed,
        chunk_size=opts["chunk_size"],
    )
    index = {cell.group: c for c, cell in enumerate(cells) if c > 0}
    sel = [index[grp] for grp in plan.fitted]
    hi, lo = index[plan.pair[0]], index[plan.pair[1]]

    def row(names: tuple[str, str, str], key: str, pick: Callable[[np.ndarray], Any]) -> dict:
        vals = [(pick(point[key]), pick(reps[key])) for point, reps in rates.values()]
        return paired_change_row(
            dict(zip(("quantity", "attribute", "group"), names, strict=True)),
            *vals,
            opts["ci_level"],
        )

    rows = [
        row((f"{m}_gap", attr, "max-min"), m, lambda v: spread(v[sel])),
        row((f"{m}_gap_pair", attr, " - ".join(plan.pair)), m, lambda v: v[hi] - v[lo]),
    ]
    for grp, c in index.items():
        for key in TARGET_METRICS:
            if grp in plan.fitted:
                rows.append(row((key, attr, grp), key, lambda v, c=c: v[c]))
            else:
                names = {"quantity": key, "attribute": attr, "group": grp}
                rows.append(paired_change_row(names, None, None, opts["ci_level"]))
    for name, key in OVERALL_QUANTITIES.items():
        if key in rates["before"][0]:
            rows.append(row((name, "overall", "all"), key, lambda v: v[0]))
    return pd.DataFrame(rows)


def mitigate_largest_gap(
    y_true: Any,
    y_score: Any,
    *,
    groups: Any,
    threshold: float,
    clusters: Any = None,
    method: Method = "threshold_optimizer",
    attribute: str | None = None,
    metric: Literal["tpr", "fpr"] | None = None,
    constraints: str | None = None,
    objective: str = "balanced_accuracy_score",
    n_folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    min_pos: int = 10,
    min_neg: int = 10,
    exposure_days: Any = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> MitigationResult:
    """Cross-fitted group-aware mitigation of the largest TPR/FPR gap, with costs and caveats.

    Parameters
    ----------
    y_true, y_score : array-like of shape (n,)
        Labels in ``{0, 1}``; probabilities in ``[0, 1]``.
    groups : mapping of str to array-like, or DataFrame, keyword-only
        Attribute name -> group label per row (as in :func:`~clinaudit.audit.fairness.group_rates`).
    threshold : float, keyword-only
        The current operating threshold (``score >= threshold`` alerts).
    clusters : array-like of shape (n,), optional, keyword-only
        Patient id per row: folds are patient-disjoint and the bootstrap resamples patients.
    method : {"threshold_optimizer", "group_thresholds", "group_recalibration"}, keyword-only
        The mitigation (see the module docstring).
    attribute, metric : optional, keyword-only
        Target a given attribute / metric (``"tpr"`` or ``"fpr"``) instead of the largest gap.
    constraints : {"equalized_odds", "true_positive_rate_parity", "false_positive_rate_parity"}
        ThresholdOptimizer constraint, keyword-only; default parity of the targeted metric.
    objective : {"balanced_accuracy_score", "accuracy_score"}, keyword-only
        ThresholdOptimizer objective (accuracy favours alerting nobody when prevalence is low).
    n_folds : int, keyword-only
        Cross-fitting folds (>= 2).
    seed : int, keyword-only
        Seed of folds, randomised thresholds and bootstrap.
    n_boot, ci_level, min_pos, min_neg, chunk_size : keyword-only
        As in :func:`~clinaudit.audit.fairness.group_rates`.
    exposure_days : float or array-like, optional, keyword-only
        Days observed per row; adds alerts per 100 stay-days.

    Returns
    -------
    MitigationResult
        ``table`` rows: ``<metric>_gap`` (max-min over the sufficient groups: the spread
        statistic, its interval biased upward), ``<metric>_gap_pair`` (the two groups farthest
        apart before mitigation, ``"high - low"``), each group's ``tpr`` and ``fpr``, then
        overall ``sensitivity``, ``specificity``, ``alert_rate``, ``ppv``, ``nne``,
        ``missed_per_1000_stays`` (and ``alerts_per_100_stay_days``).

    Raises
    ------
    AuditInputError
        On invalid data or options, or no attribute with two sufficient groups.
    """
    data = validate_binary(
        y_true, y_score, threshold=threshold, groups=groups, clusters=clusters, require_groups=True
    )
    opts = {
        "threshold": data.threshold,
        "objective": check_option("objective", objective, OBJECTIVES),
        "n_boot": check_positive_int("n_boot", n_boot, minimum=0),
        "ci_level": check_ci_level(ci_level),
        "chunk_size": check_positive_int("chunk_size", chunk_size),
    }
    min_counts = (check_positive_int("min_pos", min_pos), check_positive_int("min_neg", min_neg))
    method = check_option("method", method, METHODS)  # type: ignore[assignment]
    n_folds = check_positive_int("n_folds", n_folds, minimum=2)
    exposure = None if exposure_days is None else check_exposure(exposure_days, data.y.size)
    attribute, metric, pair = _choose_target(data, attribute, metric, min_counts)
    opts["constraints"] = check_option("constraints", constraints or PARITY[metric], CONSTRAINTS)
    labels = data.attributes[attribute]
    all_groups = sorted(set(labels.tolist()))
    pos = {grp: int(data.y[labels == grp].sum()) for grp in all_groups}
    neg = {grp: int((labels == grp).sum()) - pos[grp] for grp in all_groups}
    fitted = [g for g in all_groups if pos[g] >= min_counts[0] and neg[g] >= min_counts[1]]
    folds = cluster_folds(data.y, data.clusters, labels, n_folds, seed)
    plan = _Plan(
        data, method, attribute, metric, pair, labels, fitted, folds, n_folds, exposure, opts, seed
    )
    after, fold_rows, thr_rows = _cross_fit(plan)
    before = data.score >= data.threshold
    table = _evaluate(plan, {"before": before, "after": after})
    table["method"], table["n_boot"], table["ci_level"] = method, opts["n_boot"], ci_level
    thresholds = pd.DataFrame(thr_rows).assign(method=method)[list(THRESHOLD_COLUMNS)]
    return MitigationResult(
        table=validate_table(table, MitigationTable),
        fold_assignments=pd.DataFrame(
            {"row": np.arange(data.y.size), "cluster": data.clusters, "fold": folds}
        ),
        fold_rows=fold_rows,
        attribute=attribute,
        metric=metric,
        method=method,
        caveats=CAVEATS,
        thresholds_by_group=validate_table(thresholds, GroupThresholds),
        decisions_before=before,
        decisions_after=after,
        fallback_groups=tuple(grp for grp in all_groups if grp not in fitted),
        n_folds=n_folds,
        seed=seed,
    )
