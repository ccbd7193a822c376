"""Schema of the table of :func:`~clinaudit.audit.discrimination.audit_discrimination`.

One row per (group, target) cell. Cells with status ``"insufficient data"`` carry their counts,
prevalence and threshold but ``NaN`` for every metric; DeLong columns are ``NaN`` for cells with
fewer than two positives or negatives, the comparison columns for the reference group, for cells
without a reference cell and when no reference group was named. The column order of the schema is
the order of the table.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from .schemas import CellKey, count_field, difference_field, probability_field, status_field

__all__ = ["DiscriminationTable"]


class DiscriminationTable(CellKey):
    """Discrimination per (group, target): counts, metrics with intervals, DeLong comparison."""

    is_reference: Series[bool]
    status: Series[str] = status_field()
    n: Series[int] = count_field()
    n_pos: Series[int] = count_field()
    n_neg: Series[int] = count_field()
    n_clusters: Series[int] = count_field()
    prevalence: Series[float] = probability_field()
    threshold: Series[float]
    auroc: Series[float] = probability_field()
    auroc_ci_low: Series[float] = probability_field()
    auroc_ci_high: Series[float] = probability_field()
    auroc_se_delong: Series[float] = pa.Field(nullable=True, ge=0.0)
    auroc_delong_ci_low: Series[float] = probability_field()
    auroc_delong_ci_high: Series[float] = probability_field()
    auprc: Series[float] = probability_field()
    auprc_ci_low: Series[float] = probability_field()
    auprc_ci_high: Series[float] = probability_field()
    sensitivity: Series[float] = probability_field()
    sensitivity_ci_low: Series[float] = probability_field()
    sensitivity_ci_high: Series[float] = probability_field()
    specificity: Series[float] = probability_field()
    specificity_ci_low: Series[float] = probability_field()
    specificity_ci_high: Series[float] = probability_field()
    ppv: Series[float] = probability_field()
    ppv_ci_low: Series[float] = probability_field()
    ppv_ci_high: Series[float] = probability_field()
    npv: Series[float] = probability_field()
    npv_ci_low: Series[float] = probability_field()
    npv_ci_high: Series[float] = probability_field()
    auroc_diff_vs_reference: Series[float] = difference_field()
    # Wald interval of the difference: not clipped, may leave [-1, 1].
    delong_diff_ci_low: Series[float] = pa.Field(nullable=True)
    delong_diff_ci_high: Series[float] = pa.Field(nullable=True)
    delong_z: Series[float] = pa.Field(nullable=True)
    delong_p: Series[float] = probability_field()
    delong_p_adj: Series[float] = probability_field()
    n_boot: Series[int] = count_field()
    n_boot_valid: Series[int] = count_field()
    ci_level: Series[float] = pa.Field(gt=0.0, lt=1.0)

    class Config:
        ordered = True
