"""Pandera schemas of the audit output tables: the shared parts and how a table meets its schema.

Every table an audit stage produces has a pandera ``DataFrameModel`` owned by its producer
(``DiscriminationTable`` next to ``audit_discrimination``, ``DriftTable`` next to ``drift_table``,
...). The schema is used twice:

* the producer passes its output through :func:`validate_table` before returning it, so a bug
  in the producer is caught where it happens, with every failing column and value at once
  (pandera's ``SchemaErrors``: schema name, column, check and failure cases);
* a consumer calls :func:`require_columns` with the producer's schema (and, when it reads only a
  few columns, which ones) instead of restating the column names: a renamed column fails in the
  consumer's check, not as a ``KeyError`` three stages later.

Where consumers rely on fewer columns than the producer writes, the producer also owns that
contract as a schema the full one inherits (``RecalibrationContract`` and ``RecalibrationTable``,
``CriteriaContract`` and ``CriteriaTable``, ...); consumers check against the contract.

Output schemas check, they never convert: ``strict`` (no column the producer does not document)
and ``coerce = False`` (validation must not cast a single value). Columns are nullable exactly
where "insufficient data" cells or undefined statistics carry ``NaN``.

Examples
--------
>>> from clinaudit.audit.discrimination import discrimination_table
>>> from clinaudit.audit.discrimination_schema import DiscriminationTable
>>> table = discrimination_table([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], min_pos=1, min_neg=1,
...                              n_boot=0)  # validated by its producer
>>> require_columns("metrics", table, DiscriminationTable, ["group", "target", "auroc"])
>>> try:
...     require_columns("metrics", table.drop(columns="auroc"), DiscriminationTable, ["auroc"])
... except AuditInputError as err:
...     print(err.received)
a table without columns ['auroc']
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from .types import STATUS_INSUFFICIENT, STATUS_OK, AuditInputError

__all__ = [
    "STATUSES",
    "CellKey",
    "OutputSchema",
    "count_field",
    "difference_field",
    "probability_field",
    "require_columns",
    "schema_columns",
    "status_field",
    "validate_table",
]

#: Values of every ``status`` column.
STATUSES: tuple[str, ...] = (STATUS_OK, STATUS_INSUFFICIENT)


def probability_field(*, nullable: bool = True) -> Any:
    """A probability, rate or proportion column: values in ``[0, 1]``, ``NaN`` where undefined."""
    return pa.Field(nullable=nullable, ge=0.0, le=1.0)


def difference_field(*, nullable: bool = True) -> Any:
    """A difference of two probabilities (e.g. an AUROC drop): values in ``[-1, 1]``."""
    return pa.Field(nullable=nullable, ge=-1.0, le=1.0)


def count_field() -> Any:
    """A count of rows, positives, replicates, ...: an integer ``>= 0`` (never missing)."""
    return pa.Field(ge=0)


def status_field() -> Any:
    """A cell's status: ``"ok"`` or ``"insufficient data"``."""
    return pa.Field(isin=list(STATUSES))


class OutputSchema(pa.DataFrameModel):
    """Base of the output schemas: strict, and never converting a value."""

    class Config:
        strict = True
        coerce = False


class CellKey(OutputSchema):
    """Key of a per-cell table: one row per (group, target) cell."""

    group: Series[str]
    target: Series[str]


@cache
def schema_columns(schema: type[pa.DataFrameModel]) -> tuple[str, ...]:
    """Named columns of ``schema`` in its order (regex column patterns are left out)."""
    return tuple(n for n, c in schema.to_schema().columns.items() if not c.regex)


@cache
def _without_dtypes(schema: type[pa.DataFrameModel]) -> pa.DataFrameSchema:
    full = schema.to_schema()
    return full.update_columns({name: {"dtype": None} for name in full.columns})


def validate_table(frame: pd.DataFrame, schema: type[pa.DataFrameModel]) -> pd.DataFrame:
    """Check a producer's output against its schema (lazily) and return the same object.

    Parameters
    ----------
    frame : DataFrame
        The table about to be returned by its producer.
    schema : DataFrameModel subclass
        The producer's schema.

    Returns
    -------
    DataFrame
        ``frame`` itself, not a copy: validation never reorders, casts or copies the output.

    Raises
    ------
    pandera.errors.SchemaErrors
        Every failure at once: schema name, column, check and the failing values. A failure is a
        bug in the producer (its output contradicts its documented schema).

    Notes
    -----
    An empty table is checked for its columns only: it has no values to check, and pandas gives
    the columns of a table built from no rows the ``object`` dtype.
    """
    checker = schema.to_schema() if len(frame) else _without_dtypes(schema)
    checker.validate(frame, lazy=True)
    return frame


def require_columns(
    name: str,
    frame: pd.DataFrame | None,
    schema: type[pa.DataFrameModel],
    columns: Sequence[str] | None = None,
    *,
    why: str = "",
    fix: str | None = None,
) -> None:
    """Check that a consumer's input table has the columns it reads from its producer's schema.

    Parameters
    ----------
    name : str
        The argument (table) name, for the error.
    frame : DataFrame or None
        The table received (extra columns are fine).
    schema : DataFrameModel subclass
        The producer's schema of this table.
    columns : sequence of str, optional
        The columns the consumer reads; default every named column of ``schema``. Each must be a
        column of ``schema``.
    why : str, keyword-only
        What the columns are needed for (added to the error).
    fix : str, optional, keyword-only
        How to fix a missing table or column; default: pass the producer's table.

    Raises
    ------
    AuditInputError
        If ``frame`` is None or lacks columns (listed in the message).
    ValueError
        If ``columns`` names a column that ``schema`` does not have (a bug in the consumer).
    """
    known = schema_columns(schema)
    wanted = list(known) if columns is None else list(columns)
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise ValueError(
            f"columns {unknown} are not columns of {schema.__name__}; expected a subset of "
            f"{list(known)}; fix the consumer's column names (or the producer's schema)"
        )
    reason = f" ({why})" if why else ""
    fix = fix or (
        f"pass the {name} table produced by the pipeline "
        f"(schema {schema.__module__}.{schema.__name__})"
    )
    if frame is None:
        raise AuditInputError(name, "None", f"the {name} table{reason}", fix)
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise AuditInputError(
            name, f"a table without columns {missing}", f"columns {wanted}{reason}", fix
        )
