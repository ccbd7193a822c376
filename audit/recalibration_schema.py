"""Schemas of the table of :func:`~clinaudit.audit.recalibration.recalibrate_sites`.

``RecalibrationContract``
    The columns the consumers of the table read (contract A: a study's decisions, monitoring plan
    and report): per (group, target) the method, the vendor threshold and intended sensitivity,
    ECE / Brier / sensitivity before and after (cross-fitted) and the site operating point.
``RecalibrationTable(RecalibrationContract)``
    The whole table the producer returns: contract A plus ``note``, ``fold_methods``, ``n_neg``,
    ``n_clusters``, the paired changes, the AUROCs, specificity before/after, ``site_threshold``
    and the settings.

Cells with status ``"insufficient data"`` (``note`` says why) carry their counts and settings and
``NaN`` for every number (``method`` missing); the site-threshold columns are ``NaN`` also when
the target has no intended sensitivity. Consumers check their input with
:func:`~clinaudit.audit.schemas.require_columns` against ``RecalibrationContract``.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from .recalibration_maps import METHODS
from .schemas import CellKey, count_field, difference_field, probability_field, status_field

__all__ = ["RecalibrationContract", "RecalibrationTable"]


class RecalibrationContract(CellKey):
    """Contract A: what the decisions, the monitoring plan and the report read."""

    status: Series[str] = status_field()
    method: Series[str] = pa.Field(nullable=True, isin=list(METHODS))
    n: Series[int] = count_field()
    n_pos: Series[int] = count_field()
    n_folds: Series[int] = pa.Field(ge=2)
    threshold: Series[float]
    intended_sensitivity: Series[float] = probability_field()
    ece_before: Series[float] = probability_field()
    ece_before_ci_low: Series[float] = probability_field()
    ece_before_ci_high: Series[float] = probability_field()
    ece_after: Series[float] = probability_field()
    ece_after_ci_low: Series[float] = probability_field()
    ece_after_ci_high: Series[float] = probability_field()
    brier_before: Series[float] = probability_field()
    brier_before_ci_low: Series[float] = probability_field()
    brier_before_ci_high: Series[float] = probability_field()
    brier_after: Series[float] = probability_field()
    brier_after_ci_low: Series[float] = probability_field()
    brier_after_ci_high: Series[float] = probability_field()
    sensitivity_before: Series[float] = probability_field()
    sensitivity_before_ci_low: Series[float] = probability_field()
    sensitivity_before_ci_high: Series[float] = probability_field()
    sensitivity_after: Series[float] = probability_field()
    sensitivity_after_ci_low: Series[float] = probability_field()
    sensitivity_after_ci_high: Series[float] = probability_field()
    # The site threshold in raw-score units (the score's own scale).
    site_threshold_raw: Series[float] = pa.Field(nullable=True)
    sensitivity_site_threshold: Series[float] = probability_field()
    sensitivity_site_threshold_ci_low: Series[float] = probability_field()
    sensitivity_site_threshold_ci_high: Series[float] = probability_field()
    specificity_site_threshold: Series[float] = probability_field()
    specificity_site_threshold_ci_low: Series[float] = probability_field()
    specificity_site_threshold_ci_high: Series[float] = probability_field()


class RecalibrationTable(RecalibrationContract):
    """The producer's whole table: contract A plus the cross-fitting record and settings.

    Its column order is ``recalibration._COLUMNS`` (not the schema's: contract A's columns are
    interleaved with the others); ``strict`` makes the two agree on the set of columns.
    """

    note: Series[str]
    fold_methods: Series[str]
    n_neg: Series[int] = count_field()
    n_clusters: Series[int] = count_field()
    ece_change: Series[float] = difference_field()
    ece_change_ci_low: Series[float] = difference_field()
    ece_change_ci_high: Series[float] = difference_field()
    brier_change: Series[float] = difference_field()
    brier_change_ci_low: Series[float] = difference_field()
    brier_change_ci_high: Series[float] = difference_field()
    auroc_before: Series[float] = probability_field()
    auroc_deployed: Series[float] = probability_field()
    specificity_before: Series[float] = probability_field()
    specificity_before_ci_low: Series[float] = probability_field()
    specificity_before_ci_high: Series[float] = probability_field()
    specificity_after: Series[float] = probability_field()
    specificity_after_ci_low: Series[float] = probability_field()
    specificity_after_ci_high: Series[float] = probability_field()
    # The site threshold on the recalibrated probability (deployment map applied to the raw one).
    site_threshold: Series[float] = probability_field()
    n_bins: Series[int] = pa.Field(ge=1)
    n_boot: Series[int] = count_field()
    ci_level: Series[float] = pa.Field(gt=0.0, lt=1.0)
