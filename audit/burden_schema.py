"""Schema of the table of :func:`~clinaudit.audit.burden.alert_burden`.

One row per cell, the whole cohort first (``attribute="overall"``, ``group="all"``), then every
group of every attribute: counts and exposure, then each burden metric with its percentile
interval (``NaN`` where undefined: no positive stay for the sensitivity, no true alert for the
PPV and NNE). The column order of the schema is the order of the table.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from .schemas import OutputSchema, count_field, probability_field

__all__ = ["AlertBurdenTable"]


def _nonnegative() -> object:
    return pa.Field(nullable=True, ge=0.0)


class AlertBurdenTable(OutputSchema):
    """Alert burden per cell at the operating threshold."""

    attribute: Series[str]
    group: Series[str]
    n_stays: Series[int] = count_field()
    n_pos: Series[int] = count_field()
    n_alerts: Series[int] = count_field()
    exposure_days: Series[float] = pa.Field(gt=0.0)
    alert_rate: Series[float] = probability_field()
    alert_rate_ci_low: Series[float] = probability_field()
    alert_rate_ci_high: Series[float] = probability_field()
    alerts_per_100_stay_days: Series[float] = _nonnegative()
    alerts_per_100_stay_days_ci_low: Series[float] = _nonnegative()
    alerts_per_100_stay_days_ci_high: Series[float] = _nonnegative()
    missed_per_1000_stays: Series[float] = pa.Field(nullable=True, ge=0.0, le=1000.0)
    missed_per_1000_stays_ci_low: Series[float] = pa.Field(nullable=True, ge=0.0, le=1000.0)
    missed_per_1000_stays_ci_high: Series[float] = pa.Field(nullable=True, ge=0.0, le=1000.0)
    ppv: Series[float] = probability_field()
    ppv_ci_low: Series[float] = probability_field()
    ppv_ci_high: Series[float] = probability_field()
    # Alerts evaluated per true case found (1 / PPV): at least 1.
    nne: Series[float] = pa.Field(nullable=True, ge=1.0)
    nne_ci_low: Series[float] = pa.Field(nullable=True, ge=1.0)
    nne_ci_high: Series[float] = pa.Field(nullable=True, ge=1.0)
    sensitivity: Series[float] = probability_field()
    sensitivity_ci_low: Series[float] = probability_field()
    sensitivity_ci_high: Series[float] = probability_field()
    n_boot: Series[int] = count_field()
    ci_level: Series[float] = pa.Field(gt=0.0, lt=1.0)

    class Config:
        ordered = True
