"""Quarantine records: the machine-readable form of every problem found while ingesting a batch.

A row-level problem (one label row, one image) becomes a :class:`QuarantineRecord` and the rest of
the batch proceeds. A structural problem (unreadable label table, missing required columns, label
file not in the manifest) fails the whole batch with :class:`BatchStructureError`, which carries the
records that explain it. :func:`records_to_frame` turns records into the quarantine table that the
Dagster asset checks and the audit report show.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.schemas import OutputSchema, schema_columns, validate_table

Severity = Literal["error", "warning"]
SEVERITIES: tuple[str, ...] = ("error", "warning")


@dataclass(frozen=True)
class QuarantineRecord:
    """One problem found in a landed batch.

    Attributes
    ----------
    site, batch : str
        Where the batch landed.
    file : str
        File the problem lies in, relative to the batch directory (label table or image).
    row : int or None
        1-based line number in the label table (header = line 1, so data row k is line k+1), or
        ``None`` when the problem is not tied to one row.
    column : str or None
        Label-table column concerned, as spelled in the file, or ``None``.
    check : str
        Short machine name of the failed check (``"missing_column"``, ``"hash_mismatch"``, ...).
    message : str
        What was received and what was expected.
    fix : str
        How to fix it at the source.
    severity : {"error", "warning"}
        ``"error"`` removes the row (or fails the batch); ``"warning"`` is reported only.
    """

    site: str
    batch: str
    file: str
    row: int | None
    column: str | None
    check: str
    message: str
    fix: str
    severity: Severity = "error"

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"severity={self.severity!r} is not one of {list(SEVERITIES)}; use 'error' for a "
                "problem that removes the row and 'warning' for one that is only reported"
            )

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" line {self.row}"
        if self.column is not None:
            where += f" column {self.column!r}"
        return f"[{self.severity}:{self.check}] {where}: {self.message}. Fix: {self.fix}"


class QuarantineTable(OutputSchema):
    """The quarantine table of :func:`records_to_frame`: one row per :class:`QuarantineRecord`."""

    site: Series[str]
    batch: Series[str]
    file: Series[str]
    row: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    column: Series[str] = pa.Field(nullable=True)
    check: Series[str]
    message: Series[str]
    fix: Series[str]
    severity: Series[str] = pa.Field(isin=list(SEVERITIES))

    class Config:
        ordered = True


#: Column order of :func:`records_to_frame` (the record's fields, the schema's columns).
RECORD_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(QuarantineRecord))
assert RECORD_COLUMNS == schema_columns(QuarantineTable), "QuarantineTable != QuarantineRecord"


class BatchStructureError(ValueError):
    """A batch cannot be ingested at all; ``records`` says why (one record per problem).

    Parameters
    ----------
    records : sequence of QuarantineRecord
        At least one record, each with ``severity="error"``.
    batch_facts : mapping, optional
        What is known of the batch although it failed: ``content_hash`` and ``simulated`` from
        its manifest, ``n_rows_in`` rows read.
    """

    def __init__(
        self, records: Sequence[QuarantineRecord], *, batch_facts: Mapping[str, Any] | None = None
    ) -> None:
        if not records:
            raise ValueError("BatchStructureError needs at least one QuarantineRecord")
        self.records: list[QuarantineRecord] = list(records)
        #: What is known of the failed batch (``content_hash``, ``simulated``, ``n_rows_in``).
        self.batch_facts: dict[str, Any] = dict(batch_facts or {})
        first = self.records[0]
        more = f" (and {len(self.records) - 1} more problems)" if len(self.records) > 1 else ""
        super().__init__(f"batch {first.site}/{first.batch} cannot be ingested: {first}{more}")


def records_to_frame(records: Iterable[QuarantineRecord]) -> pd.DataFrame:
    """Records as a DataFrame with the columns of :class:`QuarantineRecord` (also when empty).

    Parameters
    ----------
    records : iterable of QuarantineRecord
        The records, in the order to keep.

    Returns
    -------
    DataFrame
        :class:`QuarantineTable`: columns ``site, batch, file, row, column, check, message, fix,
        severity``; ``row`` is a nullable integer column.

    Examples
    --------
    >>> rec = QuarantineRecord("site_a", "b1", "labels.csv", 3, "Patient Age", "age_range",
    ...                        "age 130 is outside [0, 120]", "correct the age", "error")
    >>> records_to_frame([rec])[["row", "check"]].to_dict("records")
    [{'row': 3, 'check': 'age_range'}]
    """
    frame = pd.DataFrame([asdict(r) for r in records], columns=list(RECORD_COLUMNS))
    frame["row"] = frame["row"].astype("Int64")
    for col in RECORD_COLUMNS:
        if col != "row":
            frame[col] = frame[col].astype(object)
    return validate_table(frame, QuarantineTable)


#: Quarantine checks that mean the landed bytes are not what the sender's manifest promised.
INTEGRITY_CHECKS: frozenset[str] = frozenset(
    {
        "manifest",
        "integrity",
        "hash_mismatch",
        "file_missing",
        "not_in_manifest",
        "unlisted_file",
        "label_file_missing",
        "label_file_unlisted",
    }
)


def records_markdown(frame: pd.DataFrame, limit: int = 25) -> str:
    """Quarantine records as a markdown table (first ``limit`` rows), for the Dagster UI."""
    if frame.empty:
        return "No quarantine records."
    cols = ["batch", "file", "row", "column", "check", "message", "fix"]
    shown = frame[cols].head(limit).astype(object).fillna("")  # Int64 rows may be <NA>
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in shown.itertuples(index=False):
        cells = [str(v).replace("|", "/").replace("\n", " ") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    more = len(frame) - limit
    return "\n".join(lines) + (f"\n\n... and {more} more records." if more > 0 else "")
