"""Schema of the table of :func:`~clinaudit.audit.drift.drift_table`.

One row per (group, feature), then one multivariate row (feature ``"__mmd__"``) per group. A row
with status ``"insufficient data"`` (fewer than ``min_rows`` non-missing rows on a side) carries
its counts and ``NaN`` statistics (``psi_level`` ``"n/a"``, ``significant`` False). Columns that
do not apply to a row's kind are ``NaN``: ``wasserstein_norm``, ``smd``, ``mean`` and
``reference_mean`` for numeric features, ``cramers_v`` for categorical ones, ``psi`` and
``psi_noise_bound`` for both but not the MMD row, ``mmd_bandwidth`` for the MMD row.
``psi_level`` is ``"none"`` when the PSI does not exceed ``psi_noise_bound`` (the PSI that
sampling noise alone reaches at the row's sample sizes), whatever the cut-offs. The column order
of the schema is the order of the table.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from .schemas import OutputSchema, count_field, probability_field, status_field

__all__ = ["DRIFT_KINDS", "DRIFT_TESTS", "PSI_LEVELS", "DriftTable"]

DRIFT_KINDS: tuple[str, ...] = ("numeric", "categorical", "multivariate")
DRIFT_TESTS: tuple[str, ...] = ("ks", "chi2", "mmd")
#: ``"n/a"`` where PSI is undefined (the MMD row, insufficient data).
PSI_LEVELS: tuple[str, ...] = ("none", "moderate", "major", "n/a")


class DriftTable(OutputSchema):
    """Drift of each group against the reference, per feature and jointly (MMD)."""

    group: Series[str]
    feature: Series[str]
    kind: Series[str] = pa.Field(isin=list(DRIFT_KINDS))
    test: Series[str] = pa.Field(isin=list(DRIFT_TESTS))
    status: Series[str] = status_field()
    n: Series[int] = count_field()
    n_reference: Series[int] = count_field()
    n_missing: Series[int] = count_field()
    # Every term (a - e) ln(a / e) of the PSI is >= 0.
    psi: Series[float] = pa.Field(nullable=True, ge=0.0)
    # The PSI that sampling noise alone reaches at this row's n and n_reference (NaN where psi is).
    psi_noise_bound: Series[float] = pa.Field(nullable=True, ge=0.0)
    psi_level: Series[str] = pa.Field(isin=list(PSI_LEVELS))
    # KS distance, chi-square statistic or unbiased MMD^2 (which can be slightly negative).
    statistic: Series[float] = pa.Field(nullable=True)
    p_value: Series[float] = probability_field()
    p_adj: Series[float] = probability_field()
    significant: Series[bool]
    wasserstein_norm: Series[float] = pa.Field(nullable=True, ge=0.0)
    smd: Series[float] = pa.Field(nullable=True)
    cramers_v: Series[float] = pa.Field(nullable=True, ge=0.0)
    mean: Series[float] = pa.Field(nullable=True)
    reference_mean: Series[float] = pa.Field(nullable=True)
    mmd_bandwidth: Series[float] = pa.Field(nullable=True, ge=0.0)
    drifted: Series[bool]

    class Config:
        ordered = True
