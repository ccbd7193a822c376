"""Schemas of the ``sepsis_ews`` evidence tables made in :mod:`.tables`.

``DiscriminationByAttribute``
    :class:`~clinaudit.audit.discrimination_schema.DiscriminationTable` per (attribute, group),
    without the target (one target) and the comparison with a reference group (the study compares
    every group with the vendor card instead: ``auroc_diff_vs_vendor`` and its interval and
    p-value, ``NaN`` without a card), plus the card's own row (attribute ``"vendor_card"``) when
    the card states its validation. That row has no cluster count, bootstrap, threshold or
    interval level (``NaN``), so ``n_clusters``, ``n_boot`` and ``n_boot_valid`` are ``float64``
    when it is present and ``int64`` when not.
``CalibrationByAttribute``, ``ReliabilityByAttribute``
    :class:`~clinaudit.audit.calibration_schema.CalibrationTable` and
    :class:`~clinaudit.audit.calibration_schema.ReliabilityTable` per (attribute, group).
``CohortTable``
    One row per hospital, then ``network``: stays, septic stays, months, window, age, sex.
``CompositionTable``
    One row per (attribute, group): stays and prevalence here and the share of the group in the
    vendor's training data (``NaN`` without a card).

The per-(attribute, group) tables are the core schemas with ``attribute`` in front: their columns
and checks come from the core schema, never restated here. Every schema's column order is the
order of its table. :func:`whole_counts` and :func:`flags` check columns of the study's tables
built from rows that lack a value (pandas then stores counts as ``float64`` and flags as
``object`` with ``NaN``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.calibration_schema import CalibrationTable, ReliabilityTable
from clinaudit.audit.discrimination_schema import DiscriminationTable
from clinaudit.audit.schemas import (
    OutputSchema,
    count_field,
    difference_field,
    probability_field,
)

__all__ = [
    "VENDOR_ATTRIBUTE",
    "CalibrationByAttribute",
    "CohortTable",
    "CompositionTable",
    "DiscriminationByAttribute",
    "ReliabilityByAttribute",
    "flags",
    "whole_counts",
]

#: ``attribute`` of the vendor card's row of the discrimination table.
VENDOR_ATTRIBUTE = "vendor_card"
#: Core discrimination columns the study leaves out (it has one target and compares every group
#: with the vendor card, not with a reference group): these and every ``delong_*`` column.
_NOT_COMPARED: tuple[str, ...] = ("target", "is_reference", "auroc_diff_vs_reference")
#: Core discrimination columns the card's row has no value of (``NaN`` there).
_NOT_ON_CARD: tuple[str, ...] = ("n_clusters", "threshold", "n_boot", "n_boot_valid", "ci_level")


def whole_counts(values: pd.Series) -> bool:
    """Counts with missing rows: ``int64``, or ``float64`` holding whole numbers (``NaN`` aside)."""
    if values.dtype == np.dtype("int64"):
        return True
    return values.dtype == np.dtype("float64") and bool((values.dropna() % 1 == 0).all())


def flags(values: pd.Series) -> bool | pd.Series:
    """Flags with missing rows: ``bool``, or ``object`` holding ``True``/``False`` (and nulls)."""
    if values.dtype == np.dtype("bool"):
        return True
    return values.map(lambda v: isinstance(v, bool | np.bool_))


_WHOLE_COUNTS = pa.Check(whole_counts, name="whole_counts")


def _attribute_first(
    own: pa.DataFrameSchema, core: type[pa.DataFrameModel], keep: Sequence[str]
) -> pa.DataFrameSchema:
    """``own`` (settings and the ``attribute`` column) with ``core``'s columns ``keep`` added,
    ordered ``attribute``, ``keep``, then ``own``'s other columns."""
    columns = core.to_schema().columns
    schema = own.add_columns({c: columns[c] for c in keep})
    rest = [c for c in own.columns if c != "attribute"]
    return schema.select_columns(["attribute", *keep, *rest])


class DiscriminationByAttribute(OutputSchema):
    """Discrimination per (attribute, group) and the vendor card's row (see the module
    docstring); the core columns are :class:`DiscriminationTable`'s."""

    attribute: Series[str]
    auroc_diff_vs_vendor: Series[float] = difference_field()
    # Wald interval of the difference (not clipped) and its two-sided p-value.
    diff_ci_low: Series[float] = pa.Field(nullable=True)
    diff_ci_high: Series[float] = pa.Field(nullable=True)
    diff_p: Series[float] = probability_field()

    class Config:
        ordered = True

    @pa.dataframe_check(name=f"missing_only_on_the_{VENDOR_ATTRIBUTE}_row")
    @classmethod
    def _missing_only_on_the_card_row(cls, table: pd.DataFrame) -> pd.Series:
        return table[list(_NOT_ON_CARD)].notna().all(axis=1) | (
            table["attribute"] == VENDOR_ATTRIBUTE
        )

    @classmethod
    def build_schema_(cls, **kwargs: Any) -> pa.DataFrameSchema:
        core = DiscriminationTable.to_schema().columns
        keep = [c for c in core if c not in _NOT_COMPARED and not c.startswith("delong_")]
        schema = _attribute_first(super().build_schema_(**kwargs), DiscriminationTable, keep)
        relaxed: dict[str, dict[str, Any]] = {c: {"nullable": True} for c in _NOT_ON_CARD}
        for c in ("n_clusters", "n_boot", "n_boot_valid"):
            relaxed[c] |= {"dtype": None, "checks": [*core[c].checks, _WHOLE_COUNTS]}
        return schema.update_columns(relaxed)


class CalibrationByAttribute(OutputSchema):
    """Calibration per (attribute, group): :class:`CalibrationTable` with ``attribute`` first."""

    attribute: Series[str]

    class Config:
        ordered = True

    @classmethod
    def build_schema_(cls, **kwargs: Any) -> pa.DataFrameSchema:
        keep = list(CalibrationTable.to_schema().columns)
        return _attribute_first(super().build_schema_(**kwargs), CalibrationTable, keep)


class ReliabilityByAttribute(OutputSchema):
    """Reliability bins per (attribute, group): :class:`ReliabilityTable` with ``attribute``
    first."""

    attribute: Series[str]

    class Config:
        ordered = True

    @classmethod
    def build_schema_(cls, **kwargs: Any) -> pa.DataFrameSchema:
        keep = list(ReliabilityTable.to_schema().columns)
        return _attribute_first(super().build_schema_(**kwargs), ReliabilityTable, keep)


class CohortTable(OutputSchema):
    """The audited stays per hospital, then the whole network (row ``network``); septic stays
    and prevalence count the labelled stays only."""

    hospital: Series[str] = pa.Field(unique=True)
    n_stays: Series[int] = count_field()
    n_sepsis: Series[int] = count_field()
    # Of the labelled stays (NaN for a hospital whose stays are all unlabelled).
    prevalence: Series[float] = probability_field()
    first_month: Series[str]
    last_month: Series[str]
    n_months: Series[int] = count_field()
    # Median prediction window in hours.
    window_hours: Series[float] = pa.Field(gt=0.0)
    age_median: Series[float] = pa.Field(nullable=True, ge=0.0)
    female_share: Series[float] = probability_field()

    class Config:
        ordered = True


class CompositionTable(OutputSchema):
    """Stays, share and prevalence of each group here and in the vendor's training data."""

    attribute: Series[str]
    group: Series[str]
    n_stays: Series[int] = count_field()
    share: Series[float] = probability_field(nullable=False)
    n_sepsis: Series[int] = count_field()
    prevalence: Series[float] = probability_field(nullable=False)
    # The card's share (0 for a group the card does not list) and prevalence; NaN without a card.
    card_share: Series[float] = probability_field()
    card_prevalence: Series[float] = probability_field()

    class Config:
        ordered = True
