"""Schemas of the tables of :func:`~clinaudit.audit.calibration.audit_calibration`.

``CalibrationTable``
    One row per (group, target) cell; cells with status ``"insufficient data"`` carry their counts
    and ``NaN`` for every statistic (``recal_converged`` False). The logistic recalibration
    coefficients are ``NaN`` when the fit did not converge.
``ReliabilityTable``
    One row per (group, target, binning, bin) of the cells with status ``"ok"``; an empty bin has
    ``count`` 0 and ``NaN`` mean, rate and interval.

The column order of each schema is the order of its table.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from .schemas import CellKey, count_field, probability_field, status_field

__all__ = ["BINNINGS", "CalibrationTable", "ReliabilityTable"]

BINNINGS: tuple[str, ...] = ("width", "mass")


class CalibrationTable(CellKey):
    """Calibration per (group, target): ECE (both binnings), MCE, Brier, logistic recalibration."""

    status: Series[str] = status_field()
    n: Series[int] = count_field()
    n_pos: Series[int] = count_field()
    n_neg: Series[int] = count_field()
    n_clusters: Series[int] = count_field()
    prevalence: Series[float] = probability_field()
    mean_predicted: Series[float] = probability_field()
    n_bins: Series[int] = pa.Field(ge=1)
    ece_width: Series[float] = probability_field()
    ece_width_ci_low: Series[float] = probability_field()
    ece_width_ci_high: Series[float] = probability_field()
    ece_mass: Series[float] = probability_field()
    ece_mass_ci_low: Series[float] = probability_field()
    ece_mass_ci_high: Series[float] = probability_field()
    mce_width: Series[float] = probability_field()
    mce_mass: Series[float] = probability_field()
    brier: Series[float] = probability_field()
    brier_ci_low: Series[float] = probability_field()
    brier_ci_high: Series[float] = probability_field()
    cal_intercept: Series[float] = pa.Field(nullable=True)
    cal_slope: Series[float] = pa.Field(nullable=True)
    citl_intercept: Series[float] = pa.Field(nullable=True)
    recal_converged: Series[bool]
    n_boot: Series[int] = count_field()
    ci_level: Series[float] = pa.Field(gt=0.0, lt=1.0)

    class Config:
        ordered = True


class ReliabilityTable(CellKey):
    """Reliability-diagram data: per bin its edges, count, mean prediction and observed rate."""

    binning: Series[str] = pa.Field(isin=list(BINNINGS))
    bin: Series[int] = count_field()
    lower: Series[float] = probability_field(nullable=False)
    upper: Series[float] = probability_field(nullable=False)
    count: Series[int] = count_field()
    mean_predicted: Series[float] = probability_field()
    observed_rate: Series[float] = probability_field()
    observed_ci_low: Series[float] = probability_field()
    observed_ci_high: Series[float] = probability_field()

    class Config:
        ordered = True
