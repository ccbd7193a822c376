"""Schemas of the ``sepsis_ews`` tables made in :mod:`.decisions`.

``DisadvantagedGroups``
    :func:`~.decisions.disadvantaged_groups`: one row per attribute, the group with the lowest
    TPR and its gaps. ``attribute``, ``status`` and ``reference`` are always there; an attribute
    without two sufficient groups (status ``"insufficient data"``) has nothing else, so the other
    columns exist only when some attribute has status ``"ok"`` (their order then follows the
    first row), hold ``NaN`` on the insufficient rows, and the counts are ``float64`` and the
    flags ``object`` when such a row is present. Consumers read them through
    :func:`disadvantaged_columns`.
``MitigationEffects``
    :func:`~.decisions.run_mitigations`' ``effects``: the main method's before / after / change
    of every attribute's TPR and FPR (per group and the max-min gap), paired intervals. Its
    columns are :class:`~clinaudit.audit.fairness_mitigation.MitigationTable`'s, less the method
    and settings (the table holds one method).
``CriteriaTable``
    :func:`~.decisions.decide`'s criteria: one row per criterion (and attribute), the value
    compared with the limit, its interval, pass/fail at the vendor threshold and with the
    mitigation, and the evidence in words. ``value`` (the policy's statistic), ``estimate``,
    ``ci_low``, ``ci_high`` and ``value_after`` are ``NaN`` for insufficient data.

The column order of each schema is the order of its table, except ``DisadvantagedGroups``'.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.fairness_mitigation import TARGET_METRICS, MitigationTable
from clinaudit.audit.policy_base import COMPARATORS
from clinaudit.audit.schemas import (
    OutputSchema,
    difference_field,
    probability_field,
    status_field,
)
from clinaudit.audit.types import STATUS_OK

from .tables_schema import flags, whole_counts

__all__ = [
    "CRITERIA",
    "STATISTICS",
    "CriteriaTable",
    "DisadvantagedGroups",
    "MitigationEffects",
    "disadvantaged_columns",
]

#: Criteria of the recommendation (a fairness gap per metric the mitigation can target).
CRITERIA: tuple[str, ...] = ("auroc", "ece", "alert_rate", *(f"{m}_gap" for m in TARGET_METRICS))
#: Which number of a criterion is compared with its limit.
STATISTICS: tuple[str, ...] = ("estimate", "ci_low", "ci_high")
#: Columns of the core mitigation table that :class:`MitigationEffects` leaves out.
_ONE_METHOD: tuple[str, ...] = ("method", "n_boot", "ci_level")


class DisadvantagedGroups(OutputSchema):
    """Per attribute, the lowest-TPR group, its gap to the reference and the max-min gap."""

    attribute: Series[str] = pa.Field(unique=True)
    status: Series[str] = status_field()
    # The attribute's reference group ("" when the attribute has none).
    reference: Series[str]
    group: Series[str] | None = pa.Field(nullable=True)
    n: Series[Any] | None = pa.Field(nullable=True, ge=0)
    n_pos: Series[Any] | None = pa.Field(nullable=True, ge=0)
    tpr: Series[float] | None = probability_field()
    tpr_ci_low: Series[float] | None = probability_field()
    tpr_ci_high: Series[float] | None = probability_field()
    reference_tpr: Series[float] | None = probability_field()
    diff_vs_reference: Series[float] | None = difference_field()
    diff_ci_low: Series[float] | None = difference_field()
    diff_ci_high: Series[float] | None = difference_field()
    diff_excludes_zero: Series[Any] | None = pa.Field(nullable=True)
    max_min_gap: Series[float] | None = difference_field()
    gap_ci_low: Series[float] | None = difference_field()
    gap_ci_high: Series[float] | None = difference_field()
    gap_excludes_zero: Series[Any] | None = pa.Field(nullable=True)
    gap_excludes_zero_adjusted: Series[Any] | None = pa.Field(nullable=True)
    highest_group: Series[str] | None = pa.Field(nullable=True)
    # This attribute holds the largest TPR gap of the audit.
    largest: Series[Any] | None = pa.Field(nullable=True)

    @pa.check("n", "n_pos", name="whole_counts")
    @classmethod
    def _whole_counts(cls, values: pd.Series) -> bool:
        return whole_counts(values)

    @pa.check(
        "diff_excludes_zero", "gap_excludes_zero", "gap_excludes_zero_adjusted", "largest",
        name="flags",
    )  # fmt: skip
    @classmethod
    def _flags(cls, values: pd.Series) -> bool | pd.Series:
        return flags(values)

    @pa.dataframe_check(name="every_column_when_an_attribute_is_ok")
    @classmethod
    def _every_column_when_ok(cls, table: pd.DataFrame) -> bool:
        return set(disadvantaged_columns(table)) <= set(table.columns)


def disadvantaged_columns(table: pd.DataFrame) -> list[str]:
    """The columns of a :class:`DisadvantagedGroups` table a consumer may read: every column
    when some attribute has status ``"ok"``, else ``attribute``, ``status`` and ``reference``."""
    columns = DisadvantagedGroups.to_schema().columns
    ok = "status" in table.columns and bool((table["status"] == STATUS_OK).any())
    return [name for name, column in columns.items() if ok or column.required]


class MitigationEffects(OutputSchema):
    """The main method's effect on every attribute's TPR/FPR: :class:`MitigationTable`'s
    columns less ``method``, ``n_boot`` and ``ci_level``."""

    class Config:
        ordered = True

    @classmethod
    def build_schema_(cls, **kwargs: Any) -> pa.DataFrameSchema:
        core = MitigationTable.to_schema().columns
        kept = {name: column for name, column in core.items() if name not in _ONE_METHOD}
        return super().build_schema_(**kwargs).add_columns(kept)


class CriteriaTable(OutputSchema):
    """The recommendation's criteria, at the vendor threshold and with the mitigation."""

    criterion: Series[str] = pa.Field(isin=list(CRITERIA))
    # "overall", or the attribute of a fairness gap.
    attribute: Series[str]
    statistic: Series[str] = pa.Field(isin=list(STATISTICS))
    value: Series[float] = pa.Field(nullable=True)
    estimate: Series[float] = pa.Field(nullable=True)
    ci_low: Series[float] = pa.Field(nullable=True)
    ci_high: Series[float] = pa.Field(nullable=True)
    limit: Series[float] = probability_field(nullable=False)
    comparator: Series[str] = pa.Field(isin=list(COMPARATORS))
    passed: Series[bool]
    value_after: Series[float] = pa.Field(nullable=True)
    passed_after: Series[bool]
    evidence: Series[str]

    class Config:
        ordered = True
