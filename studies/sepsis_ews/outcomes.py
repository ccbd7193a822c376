"""Late outcome labels of ``sepsis_ews``: the *outcomes batch* that codes stays landed unlabelled.

A stay's sepsis outcome is coded weeks after discharge, so a hospital's latest month often lands
with empty ``sepsis`` labels (:mod:`.unlabelled_months`). The coded outcomes then land on their
own, beside the hospital's stays batches::

    landing/sepsis_ews/<hospital>/<batch>/
        manifest.json     label_file outcomes.csv, label_layout sepsis_labels
        outcomes.csv      stay_id, sepsis, coded_date (one row per stay; extra columns ignored)

* ``stay_id``: a stay of the same hospital that landed with an empty ``sepsis`` label;
* ``sepsis``: ``0`` or ``1`` (the coded outcome);
* ``coded_date``: ``YYYY-MM-DD``, the day the outcome was coded (rows are taken in date order,
  file order within a day).

:func:`ingest_outcomes_batch` checks the batch's bytes against its manifest and parses every row
(a bad row is quarantined with its file, line, column, value and fix: an empty or repeated stay
id, a label other than 0/1, a bad date); the rows travel as the batch's ``outcomes`` extra table.
:func:`attach_outcomes` (``finish_partition``) then fills the ``sepsis`` of the hospital's
unlabelled stays from them and quarantines an outcome of a stay the hospital never landed
(``unknown_stay``), of a stay that landed labelled (``outcome_of_labelled``) or a second outcome of
the same stay (``duplicate_outcome``: the first one counts). A stay that got its label this way is
exactly the stay it would have been had it landed labelled. Landed files are only read.

The quarantine records of outcome rows name the stay in ``value`` and leave ``stay_id`` empty: a
refused outcome never sets the stay's score aside (the stay itself was valid).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd

from clinaudit.sources.label_rows import (
    RowCollector,
    padded_records,
)
from clinaudit.sources.landing import (
    BatchRef,
    LandingError,
    read_manifest,
)
from clinaudit.sources.sepsis_tables import LABEL, STUDY
from clinaudit.sources.table_batch import TableBatchSpec, read_table_batch, write_table_batch
from clinaudit.validation.errors import QuarantineRecord, records_to_frame
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest

from .ingest import empty_stays, quarantine_frame

__all__ = [
    "OUTCOMES_FILE",
    "OUTCOMES_LAYOUT",
    "OUTCOME_COLUMNS",
    "attach_outcomes",
    "ingest_outcomes_batch",
    "is_outcomes_batch",
    "write_outcomes_batch",
]

#: The outcomes batch's only file (and its manifest's ``label_file``).
OUTCOMES_FILE = "outcomes.csv"
#: The manifest's ``label_layout`` that marks an outcomes batch.
OUTCOMES_LAYOUT = "sepsis_labels"
#: Columns of the outcomes file (in this order when written; extra columns are ignored).
OUTCOME_COLUMNS: tuple[str, ...] = ("stay_id", "sepsis", "coded_date")
#: Name of the extra table an outcomes batch carries to ``finish_partition``.
EXTRA = "outcomes"
_PARSED = ("stay_id", "sepsis", "coded_date", "source_row")
#: The outcomes batch as a one-table batch (:mod:`clinaudit.sources.table_batch`).
SPEC = TableBatchSpec(
    OUTCOMES_FILE, OUTCOMES_LAYOUT, OUTCOME_COLUMNS, "outcomes", "outcome",
    "stays in a stays batch", "outcomes_batch", "land one row per stay whose outcome was coded",
)  # fmt: skip


def write_outcomes_batch(
    landing_root: str | os.PathLike[str],
    *,
    site: str,
    batch: str,
    outcomes: pd.DataFrame,
    simulated: bool,
    created_utc: str,
) -> Path:
    """Land ``outcomes`` (``stay_id, sepsis, coded_date``) as an outcomes batch of ``site``.

    Writes :data:`OUTCOMES_FILE` and then ``manifest.json`` (a reader never sees half a batch)
    under ``<landing_root>/sepsis_ews/<site>/<batch>``; returns the batch directory.

    Raises
    ------
    LandingError
        If the batch already exists (landed data is immutable) or a name is unsafe.
    """
    return write_table_batch(
        landing_root,
        spec=SPEC,
        landing_dir=STUDY,
        site=site,
        batch=batch,
        rows=outcomes[list(OUTCOME_COLUMNS)].itertuples(index=False),
        simulated=simulated,
        created_utc=created_utc,
        lineterminator="\n",
    )


def is_outcomes_batch(batch: BatchRef) -> bool:
    """Whether ``batch``'s manifest names the outcomes layout (``False`` when it cannot be read:
    the stays ingest then refuses it with the reason)."""
    try:
        return read_manifest(batch.path).label_layout == OUTCOMES_LAYOUT
    except LandingError:
        return False


def _empty_table() -> pd.DataFrame:
    return empty_stays()


def ingest_outcomes_batch(batch: BatchRef) -> BatchIngest:
    """Verify and parse one outcomes batch (no stays; the outcomes as the ``outcomes`` extra).

    Raises
    ------
    BatchStructureError
        If a file differs from the manifest, the batch holds anything but :data:`OUTCOMES_FILE`,
        or the table cannot be read, lacks a required column or has no row.
    """
    read = read_table_batch(batch, SPEC)
    acc = RowCollector(batch.site, batch.batch, OUTCOMES_FILE)
    parsed, values = _parse_rows(read.header, read.rows, acc)
    quarantine = records_to_frame(acc.records)
    quarantine["value"] = pd.Series(values, dtype=object)
    return BatchIngest(
        table=_empty_table(),
        quarantine=quarantine_frame(quarantine),
        content_hash=read.manifest.content_hash,
        simulated=read.manifest.simulated,
        n_rows_in=len(read.rows),
        extras={EXTRA: parsed.assign(outcome_batch=batch.batch)},
    )


def _parse_rows(
    header: list[str], rows: list[tuple[int, list[str]]], acc: RowCollector
) -> tuple[pd.DataFrame, list[str]]:
    """The valid rows, and the offending value of each record ``acc`` collected."""
    idx = {c: header.index(c) for c in OUTCOME_COLUMNS}
    out: list[dict[str, object]] = []
    values: list[str] = []
    seen: dict[str, int] = {}
    for line, fields in padded_records(rows, len(header), acc):
        values += [""] * (len(acc.records) - len(values))  # field_count records
        stay, label, date = (fields[idx[c]].strip() for c in OUTCOME_COLUMNS)
        problems: list[tuple[str, str, str, str, str]] = []
        if not stay:
            problems.append(("stay_id", "missing_value", "stay id is empty",
                             "write the id of a stay that landed unlabelled", ""))  # fmt: skip
        elif stay in seen:
            problems.append((
                "stay_id", "duplicate_outcome",
                f"stay {stay!r} has a second outcome in this file (first on line {seen[stay]})",
                "keep one outcome per stay (the first one counts)", stay,
            ))  # fmt: skip
        if label not in ("0", "1"):
            problems.append((
                LABEL, "invalid_label", f"sepsis {label!r} is not 0 or 1",
                "write 1 (septic) or 0 (not septic); leave the stay out until it is coded", label,
            ))  # fmt: skip
        try:
            day = dt.date.fromisoformat(date) if len(date) == 10 else None
        except ValueError:
            day = None
        if day is None:
            problems.append((
                "coded_date", "bad_date", f"coded date {date!r} is not a date",
                "write the day the outcome was coded as YYYY-MM-DD", date,
            ))  # fmt: skip
        for column, check, message, fix, value in problems:
            acc.record(line, column, check, message, fix)
            values.append(value)
        if stay and stay not in seen:
            seen[stay] = line
        if problems:
            continue
        out.append({"stay_id": stay, "sepsis": int(label), "coded_date": day.isoformat(),  # type: ignore[union-attr]
                    "source_row": line})  # fmt: skip
    values += [""] * (len(acc.records) - len(values))
    return pd.DataFrame(out, columns=list(_PARSED)), values


def attach_outcomes(ingest: PartitionIngest) -> PartitionIngest:
    """Fill the ``sepsis`` of the hospital's unlabelled stays from its landed outcomes.

    Outcomes are taken in ``coded_date`` order (then batch, then line). Refused outcomes become
    quarantine records (``unknown_stay``, ``outcome_of_labelled``, ``duplicate_outcome``) counted
    against their outcomes batch, whose ``n_rows_ok`` is the number of stays it labelled.
    """
    outcomes = ingest.extras.get(EXTRA)
    if outcomes is None or not len(outcomes):
        return ingest
    outcomes = outcomes.sort_values(["coded_date", "outcome_batch", "source_row"], kind="stable")
    table = ingest.table.copy()
    position = {str(s): k for k, s in enumerate(table["stay_id"].astype(str))}
    labelled = table[LABEL].notna().to_numpy()
    first: dict[str, tuple[str, str, int]] = {}
    refused: list[QuarantineRecord] = []
    values: list[str] = []
    labels = table[LABEL].astype("Int64").to_numpy(copy=True)
    filled = np.zeros(len(table), dtype=bool)
    for r in outcomes.itertuples(index=False):
        stay = str(r.stay_id)
        k = position.get(stay)
        why = None
        if k is None:
            why = (
                "unknown_stay",
                f"stay {stay!r} is not a validated stay of {ingest.partition!r}",
                "land the stay's stays batch first (or fix its quarantined row), or correct "
                "stay_id",
            )
        elif labelled[k]:
            why = (
                "outcome_of_labelled",
                f"stay {stay!r} landed labelled (batch {table['batch'].iat[k]}, sepsis "
                f"{int(table[LABEL].iat[k])})",
                f"{OUTCOMES_FILE} is for stays that landed with an empty sepsis label; drop "
                "this row",
            )
        elif stay in first:
            date, batch, line = first[stay]
            why = (
                "duplicate_outcome",
                f"stay {stay!r} already has an outcome coded on {date} (batch {batch}, line "
                f"{line}); the first one counts",
                "remove the repeated outcome",
            )
        if why:
            refused.append(
                QuarantineRecord(ingest.partition, str(r.outcome_batch), OUTCOMES_FILE,
                                 int(r.source_row), "stay_id", why[0], why[1], why[2], "error")
            )  # fmt: skip
            values.append(stay)
            continue
        first[stay] = (str(r.coded_date), str(r.outcome_batch), int(r.source_row))
        labels[k] = int(r.sepsis)
        filled[k] = True
    table[LABEL] = pd.array(labels, dtype="Int64")
    records = records_to_frame(refused)
    records["value"] = pd.Series(values, dtype=object)
    out = ingest.with_table(table, quarantine_frame(records) if refused else None)
    per_batch = pd.Series([b for _, b, _ in first.values()], dtype=object).value_counts()
    batches = out.batches.copy()
    is_outcomes = batches["batch"].isin(outcomes["outcome_batch"].unique())
    batches.loc[is_outcomes, "n_rows_ok"] = (
        batches.loc[is_outcomes, "batch"].map(per_batch).fillna(0).astype(int)
    )
    quarantine = quarantine_frame(out.quarantine)
    return PartitionIngest(out.partition, out.table, quarantine, batches, out.extras)
