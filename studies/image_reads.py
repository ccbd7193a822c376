"""Reads that land after their images: the *reads batch* every image study can accept.

Images and their reads (a radiologist's findings) often land apart: a triage backlog is read
after the audit, and a site may send its images before its labels. A study describes its reads
file with a :class:`ReadsFormat`; the batch is landed beside the site's image batches::

    landing/<landing_dir>/<site>/<batch>/
        manifest.json     label_file <fmt.file>, label_layout <fmt.layout>
        <fmt.file>        one row per read, columns READ_COLUMNS (extra columns are ignored)

* ``Image Index``: the NIH ``Image Index`` of an image of the same site that landed unlabelled;
* ``Finding Labels``: the read, in the NIH vocabulary (``No Finding``, or findings separated by
  ``|``), parsed by :func:`clinaudit.sources.nih_labels.parse_finding_labels`;
* ``Read Date``: ``YYYY-MM-DD``; reads are taken in date order (file order within a day);
* ``Reason``: one of ``fmt.reasons``.

A reads batch carries no images: :func:`ingest_reads_batch` checks its bytes against the
manifest and parses every row (a bad row is quarantined with its file, line, column and fix); the
rows travel as the batch's ``reads`` extra table. A study's ``finish_partition`` then folds them
into the site's table, in one of two ways:

* :func:`attach_reads` writes them onto the unlabelled rows as the :data:`ATTACHED` columns and
  leaves the finding columns empty (a triage read never becomes training or test data);
* :func:`label_rows_from_reads` attaches them the same way and also fills the 14 finding columns
  from the read exactly as an NIH label table would have (late labels); ``read_batch`` and
  ``read_date`` still tell which labels arrived late.

A read of an image the site never landed, of an image that landed labelled, or a second read of
the same image is quarantined (the first read counts). Landed files are only read.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.label_rows import (
    RowCollector,
    padded_records,
)
from clinaudit.sources.landing import (
    BatchRef,
    read_manifest,
)
from clinaudit.sources.nih_labels import FindingProblem, parse_finding_labels
from clinaudit.sources.table_batch import TableBatchSpec, read_table_batch, write_table_batch
from clinaudit.validation.errors import QuarantineRecord, records_to_frame
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest

from .image_ingest import empty_images, labelled_rows

__all__ = [
    "ATTACHED",
    "READ_COLUMNS",
    "ReadsFormat",
    "attach_reads",
    "ingest_reads_batch",
    "is_reads_batch",
    "label_rows_from_reads",
    "write_reads_batch",
]

#: Columns of every reads file (in this order when written; extra columns are ignored).
READ_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels", "Read Date", "Reason")
#: Columns :func:`attach_reads` adds to a site's validated table (``""`` where not read).
ATTACHED: tuple[str, ...] = ("read_findings", "read_date", "read_reason", "read_batch")
#: Name of the extra table a reads batch carries to ``finish_partition``.
EXTRA = "reads"


@dataclass(frozen=True)
class ReadsFormat:
    """One study's reads batch.

    Attributes
    ----------
    file : str
        The batch's only file (and the manifest's ``label_file``), e.g. ``"pile_reads.csv"``.
    layout : str
        The manifest's ``label_layout`` that marks a reads batch, e.g. ``"triage_reads"``.
    reasons : tuple of str
        The accepted values of ``Reason``.
    landing_dir : str
        The study's landing folder (``landing/<landing_dir>/<site>/<batch>``).
    subject : str
        What the reads are of, in messages (``"backlog"``: "land the backlog image batch first").
    """

    file: str
    layout: str
    reasons: tuple[str, ...]
    landing_dir: str
    subject: str = "unlabelled"

    def __post_init__(self) -> None:
        if not self.reasons or not all(isinstance(r, str) and r for r in self.reasons):
            raise ValueError(
                f"reasons={self.reasons!r} must be a non-empty tuple of non-empty strings"
            )

    @property
    def spec(self) -> TableBatchSpec:
        """The one-table batch this format is (:mod:`clinaudit.sources.table_batch`)."""
        return TableBatchSpec(
            self.file, self.layout, READ_COLUMNS, "reads", "read", "images in an image batch",
            "reads_batch", f"land the reads with one row per read {self.subject} image",
        )  # fmt: skip


def write_reads_batch(
    landing_root: str | os.PathLike[str],
    *,
    fmt: ReadsFormat,
    site: str,
    batch: str,
    reads: pd.DataFrame,
    simulated: bool,
    created_utc: str,
) -> Path:
    """Land ``reads`` (``image_id, finding_labels, read_date, reason``) as a reads batch.

    Writes ``fmt.file`` and then ``manifest.json`` (a reader never sees half a batch) under
    ``<landing_root>/<fmt.landing_dir>/<site>/<batch>``; returns the batch directory.

    Raises
    ------
    LandingError
        If the batch already exists (landed data is immutable) or a name is unsafe.
    """
    cols = ["image_id", "finding_labels", "read_date", "reason"]
    return write_table_batch(
        landing_root,
        spec=fmt.spec,
        landing_dir=fmt.landing_dir,
        site=site,
        batch=batch,
        rows=reads[cols].itertuples(index=False),
        simulated=simulated,
        created_utc=created_utc,
    )


def is_reads_batch(batch: BatchRef, fmt: ReadsFormat) -> bool:
    """Whether ``batch`` is a reads batch of ``fmt`` (its manifest names ``fmt.layout``)."""
    return read_manifest(batch.path).label_layout == fmt.layout


def ingest_reads_batch(batch: BatchRef, fmt: ReadsFormat) -> BatchIngest:
    """Verify and parse one reads batch (no image rows; the reads as the ``reads`` extra).

    Raises
    ------
    BatchStructureError
        If a file differs from the manifest, the batch holds anything but ``fmt.file``, or the
        table cannot be read, lacks a required column or has no row.
    """
    read = read_table_batch(batch, fmt.spec)
    acc = RowCollector(batch.site, batch.batch, fmt.file)
    parsed = _parse_rows(read.header, read.rows, acc, fmt)
    return BatchIngest(
        table=empty_images().assign(batch=pd.Series(dtype=object)),
        quarantine=records_to_frame(acc.records),
        content_hash=read.manifest.content_hash,
        simulated=read.manifest.simulated,
        n_rows_in=len(read.rows),
        extras={EXTRA: parsed.assign(read_batch=batch.batch)},
    )


def _parse_rows(
    header: list[str], rows: list[tuple[int, list[str]]], acc: RowCollector, fmt: ReadsFormat
) -> pd.DataFrame:
    idx = {c: header.index(c) for c in READ_COLUMNS}
    out: list[dict[str, object]] = []
    seen: dict[str, int] = {}
    for line, fields in padded_records(rows, len(header), acc):
        image, findings, date, reason = (fields[idx[c]].strip() for c in READ_COLUMNS)
        problems: list[tuple[str, str, str]] = []
        if not image or "/" in image or "\\" in image:
            problems.append(
                (
                    "Image Index",
                    f"image index {image!r} is not a plain file name",
                    f"write the {fmt.subject} image's Image Index (e.g. 00012345_000.png)",
                )
            )
        elif image in seen:
            problems.append(
                (
                    "Image Index",
                    f"image {image!r} is read twice in this file (first on line {seen[image]})",
                    "keep one read per study",
                )
            )
        if not findings:
            problems.append(
                (
                    "Finding Labels",
                    "the read has no finding labels",
                    "write 'No Finding' for a normal read, or the findings with '|'",
                )
            )
        else:
            got = parse_finding_labels(findings)
            if isinstance(got, FindingProblem):
                problems.append(("Finding Labels", got.message, got.fix))
        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            problems.append(
                (
                    "Read Date",
                    f"read date {date!r} is not a date",
                    "write the date the study was read as YYYY-MM-DD",
                )
            )
        if reason not in fmt.reasons:
            problems.append(
                (
                    "Reason",
                    f"reason {reason!r} is not one of {list(fmt.reasons)}",
                    f"write one of {list(fmt.reasons)} ({fmt.file}, docs/formats.md)",
                )
            )
        for column, message, fix in problems:
            acc.record(line, column, "read_row", message, fix)
        if problems:
            continue
        seen[image] = line
        out.append(
            {
                "image_id": image,
                "read_findings": findings,
                "read_date": day.isoformat(),
                "read_reason": reason,
                "source_row": line,
            }
        )
    cols = ["image_id", "read_findings", "read_date", "read_reason", "source_row"]
    return pd.DataFrame(out, columns=cols)


def attach_reads(ingest: PartitionIngest, fmt: ReadsFormat) -> PartitionIngest:
    """Write the landed reads onto the partition's unlabelled rows (see the module docstring).

    Every row gets the :data:`ATTACHED` columns (``""`` where not read); the finding columns are
    left as they are. Refused reads become quarantine records (``unknown_image``,
    ``read_of_labelled``, ``duplicate_read``) counted against their reads batch, whose
    ``n_rows_ok`` is the number of reads attached.
    """
    return _attach(ingest, fmt)[0]


def label_rows_from_reads(ingest: PartitionIngest, fmt: ReadsFormat) -> PartitionIngest:
    """Attach the landed reads (as :func:`attach_reads`) and make them the rows' labels.

    Every attached row gets its 14 finding columns (``0.0`` / ``1.0``) from the read's ``Finding
    Labels``, mapped exactly as an NIH label table maps them, so it equals the row it would have
    been had it landed labelled, plus the :data:`ATTACHED` columns (``read_batch``,
    ``read_date``: the labels arrived late). It then counts in
    :func:`~clinaudit.studies.image_ingest.labelled_rows`. The refusal rules are those of
    :func:`attach_reads`.

    Raises
    ------
    ValueError
        If an attached read's ``Finding Labels`` cannot be parsed (the ``reads`` extra did not
        come from :func:`ingest_reads_batch`, which quarantines such a row).
    """
    out, attached = _attach(ingest, fmt)
    if not attached.any():
        return out
    table = out.table.copy()
    rows = np.flatnonzero(attached)
    values = np.empty((len(rows), len(FINDINGS)), dtype=float)
    for i, k in enumerate(rows):
        text = str(table["read_findings"].iat[k])
        labels = parse_finding_labels(text)
        if isinstance(labels, FindingProblem):
            raise ValueError(
                f"read of {table['image_id'].iat[k]!r} has Finding Labels {text!r}: "
                f"{labels.message}; the reads must come from ingest_reads_batch"
            )
        values[i] = [labels[f] for f in FINDINGS]
    for j, finding in enumerate(FINDINGS):
        column = table[finding].astype(float).to_numpy(copy=True)
        column[rows] = values[:, j]
        table[finding] = column
    return PartitionIngest(out.partition, table, out.quarantine, out.batches, out.extras)


def _attach(ingest: PartitionIngest, fmt: ReadsFormat) -> tuple[PartitionIngest, np.ndarray]:
    """:func:`attach_reads`, and which rows of the returned table got a read."""
    table = ingest.table.copy()
    for col in ATTACHED:
        table[col] = pd.Series("", index=table.index, dtype=object)
    reads = ingest.extras.get(EXTRA)
    if reads is None or not len(reads):
        out = ingest.with_table(table)
        return out, np.zeros(len(out.table), dtype=bool)
    reads = reads.sort_values(["read_date", "read_batch", "source_row"], kind="stable")
    position = {str(i): k for k, i in enumerate(table["image_id"].astype(str))}
    labelled = labelled_rows(table).to_numpy()
    first: dict[str, tuple[str, str]] = {}
    refused: list[QuarantineRecord] = []
    attached = np.zeros(len(table), dtype=bool)
    for r in reads.itertuples(index=False):
        k = position.get(str(r.image_id))
        why = None
        if k is None:
            why = (
                "unknown_image",
                f"image {r.image_id!r} is not a landed image of {ingest.partition!r}",
                f"land the {fmt.subject} image batch first, or correct Image Index",
            )
        elif labelled[k]:
            why = (
                "read_of_labelled",
                f"image {r.image_id!r} landed labelled (batch {table['batch'].iat[k]})",
                f"{fmt.file} is for images that landed unlabelled; drop this row",
            )
        elif str(r.image_id) in first:
            date, batch = first[str(r.image_id)]
            why = (
                "duplicate_read",
                f"image {r.image_id!r} was already read on {date} "
                f"(batch {batch}); a study counts once",
                "remove the repeated read",
            )
        if why:
            refused.append(
                QuarantineRecord(
                    ingest.partition,
                    str(r.read_batch),
                    fmt.file,
                    int(r.source_row),
                    "Image Index",
                    why[0],
                    why[1],
                    why[2],
                    "error",
                )
            )
            continue
        first[str(r.image_id)] = (str(r.read_date), str(r.read_batch))
        row = table.index[k]
        for col in ATTACHED:
            table.at[row, col] = str(getattr(r, col))
        attached[k] = True
    out = ingest.with_table(table, records_to_frame(refused))
    per_batch = table.loc[attached, "read_batch"].value_counts()
    batches = out.batches.copy()
    is_reads = batches["batch"].isin(reads["read_batch"].unique())
    batches.loc[is_reads, "n_rows_ok"] = (
        batches.loc[is_reads, "batch"].map(per_batch).fillna(0).astype(int)
    )
    result = PartitionIngest(out.partition, out.table, out.quarantine, batches, out.extras)
    return result, attached
