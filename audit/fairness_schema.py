"""Schemas of the tables of :func:`~clinaudit.audit.fairness.group_rates`.

``FairnessRates``
    One row per (attribute, group), the whole cohort first (``attribute="overall"``,
    ``group="all"``): counts, the threshold and every rate with its percentile interval. A cell
    with status ``"insufficient data"`` keeps its counts and prevalence, other rates are ``NaN``.
``FairnessGaps``
    One row per (attribute, metric, comparison): the difference between two groups' rates with
    its paired interval. A comparison without two sufficient groups has status
    ``"insufficient data"``, ``NaN`` numbers and empty group labels.

The column order of each schema is the order of its table.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from .schemas import OutputSchema, count_field, difference_field, probability_field, status_field

__all__ = ["GAP_COMPARISONS", "GAP_METRICS", "FairnessGaps", "FairnessRates"]

GAP_METRICS: tuple[str, ...] = ("tpr", "fpr", "ppv", "selection_rate")
GAP_COMPARISONS: tuple[str, ...] = ("max_min", "vs_reference")


class FairnessRates(OutputSchema):
    """Per-group rates at the operating threshold, with clustered-bootstrap intervals."""

    attribute: Series[str]
    group: Series[str]
    is_intersection: Series[bool]
    is_reference: Series[bool]
    status: Series[str] = status_field()
    n: Series[int] = count_field()
    n_pos: Series[int] = count_field()
    n_neg: Series[int] = count_field()
    n_clusters: Series[int] = count_field()
    threshold: Series[float] = probability_field(nullable=False)
    prevalence: Series[float] = probability_field()
    prevalence_ci_low: Series[float] = probability_field()
    prevalence_ci_high: Series[float] = probability_field()
    tpr: Series[float] = probability_field()
    tpr_ci_low: Series[float] = probability_field()
    tpr_ci_high: Series[float] = probability_field()
    fpr: Series[float] = probability_field()
    fpr_ci_low: Series[float] = probability_field()
    fpr_ci_high: Series[float] = probability_field()
    ppv: Series[float] = probability_field()
    ppv_ci_low: Series[float] = probability_field()
    ppv_ci_high: Series[float] = probability_field()
    selection_rate: Series[float] = probability_field()
    selection_rate_ci_low: Series[float] = probability_field()
    selection_rate_ci_high: Series[float] = probability_field()
    auroc: Series[float] = probability_field()
    auroc_ci_low: Series[float] = probability_field()
    auroc_ci_high: Series[float] = probability_field()
    auprc: Series[float] = probability_field()
    auprc_ci_low: Series[float] = probability_field()
    auprc_ci_high: Series[float] = probability_field()
    n_boot: Series[int] = count_field()
    n_boot_valid: Series[int] = count_field()
    ci_level: Series[float] = pa.Field(gt=0.0, lt=1.0)

    class Config:
        ordered = True


class FairnessGaps(OutputSchema):
    """Gaps between groups' rates (highest minus lowest, or group minus reference)."""

    attribute: Series[str]
    is_intersection: Series[bool]
    metric: Series[str] = pa.Field(isin=list(GAP_METRICS))
    comparison: Series[str] = pa.Field(isin=list(GAP_COMPARISONS))
    group: Series[str]
    versus: Series[str]
    difference: Series[float] = difference_field()
    ci_low: Series[float] = difference_field()
    ci_high: Series[float] = difference_field()
    ci_excludes_zero: Series[bool]
    ci_excludes_zero_adjusted: Series[bool]
    n_comparisons: Series[int] = count_field()
    # Interval of the max-min statistic itself (max_min rows only): a spread of rates.
    spread_ci_low: Series[float] = probability_field()
    spread_ci_high: Series[float] = probability_field()
    n_groups: Series[int] = count_field()
    status: Series[str] = status_field()
    n_boot_valid: Series[int] = count_field()

    class Config:
        ordered = True
