"""Radiologist reads of backlog studies (study ``cxr_triage``): the landed format and its ingest.

After the audit, two kinds of backlog (pile) studies get read and labelled: the random
**audit sample** the evidence stage draws (``evidence/audit_sample``), which checks the
certificate on the backlog itself, and the random **re-read quota** of auto-cleared studies,
which feeds the sequential miss-rate monitor. Their outcomes land as a *reads batch* beside the
image batches of the same site::

    landing/cxr_triage/<site>/<batch>/
        manifest.json     label_file "pile_reads.csv", label_layout "triage_reads"
        pile_reads.csv    one row per read, columns READ_COLUMNS (extra columns are ignored)

* ``Image Index``: the image's NIH ``Image Index``, an unlabelled backlog study of the same site
  landed earlier;
* ``Finding Labels``: the read, in the NIH vocabulary (``No Finding``, or findings separated by
  ``|``), mapped to ``abnormal`` / ``critical`` by the study's label contract;
* ``Read Date``: ``YYYY-MM-DD``; the monitor takes reads in date order (file order within a day);
* ``Reason``: ``audit_sample`` or ``reread``.

A reads batch carries no images: :func:`ingest_reads_batch` checks its bytes against the manifest
and parses every row (a bad row is quarantined with its file, line, column and fix); the rows
travel as the batch's ``reads`` extra table. :func:`attach_reads` (the study's
``finish_partition``) writes them onto the site's backlog rows as ``read_*`` columns: the finding
columns stay empty, so a read study never becomes training, calibration or test data. A read of
an image the site never landed, of a labelled development image, or a second read of the same
image is quarantined (the first read counts). Landed files are only read.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd

from clinaudit.sources.label_rows import (
    RowCollector,
    check_columns,
    padded_records,
    read_records,
    structure_error,
)
from clinaudit.sources.landing import (
    MANIFEST_NAME,
    BatchRef,
    LandingError,
    read_manifest,
    validate_name,
    verify_batch,
    write_manifest,
)
from clinaudit.sources.nih_labels import FindingProblem, parse_finding_labels
from clinaudit.studies.image_ingest import empty_images, labelled_rows
from clinaudit.validation.errors import BatchStructureError, QuarantineRecord, records_to_frame
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest

__all__ = [
    "READS_FILE",
    "READS_LAYOUT",
    "READ_COLUMNS",
    "READ_REASONS",
    "attach_reads",
    "ingest_reads_batch",
    "is_reads_batch",
    "write_reads_batch",
]

READS_FILE = "pile_reads.csv"
READS_LAYOUT = "triage_reads"
READ_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels", "Read Date", "Reason")
#: Why a backlog study was read: the evidence stage's random sample, or the re-read quota.
READ_REASONS: tuple[str, ...] = ("audit_sample", "reread")
#: Columns :func:`attach_reads` adds to a site's validated table ("" where not read).
ATTACHED: tuple[str, ...] = ("read_findings", "read_date", "read_reason", "read_batch")
_EXTRA = "reads"


def write_reads_batch(
    landing_root: str | os.PathLike[str],
    *,
    site: str,
    batch: str,
    reads: pd.DataFrame,
    simulated: bool,
    created_utc: str,
    landing_dir: str = "cxr_triage",
) -> Path:
    """Land ``reads`` (``image_id, finding_labels, read_date, reason``) as a reads batch.

    Writes ``pile_reads.csv`` and then ``manifest.json`` (a reader never sees half a batch);
    returns the batch directory.

    Raises
    ------
    LandingError
        If the batch already exists (landed data is immutable) or a name is unsafe.
    """
    validate_name("site", site)
    validate_name("batch", batch)
    batch_dir = Path(landing_root) / landing_dir / site / batch
    if batch_dir.exists() and any(batch_dir.iterdir()):
        raise LandingError(
            batch_dir / MANIFEST_NAME,
            "batch already exists and landed data is immutable",
            "land the reads under a new batch name",
        )
    batch_dir.mkdir(parents=True, exist_ok=True)
    with open(batch_dir / READS_FILE, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(READ_COLUMNS)
        for r in reads.itertuples(index=False):
            out.writerow([r.image_id, r.finding_labels, r.read_date, r.reason])
    write_manifest(
        batch_dir,
        study=landing_dir,
        site=site,
        batch=batch,
        label_file=READS_FILE,
        label_layout=READS_LAYOUT,
        simulated=simulated,
        created_utc=created_utc,
    )
    return batch_dir


def is_reads_batch(batch: BatchRef) -> bool:
    """Whether ``batch`` is a reads batch (its manifest names the reads layout)."""
    return read_manifest(batch.path).label_layout == READS_LAYOUT


def ingest_reads_batch(batch: BatchRef) -> BatchIngest:
    """Verify and parse one reads batch (no image rows; the reads as the ``reads`` extra).

    Raises
    ------
    BatchStructureError
        If a file differs from the manifest, the batch holds anything but ``pile_reads.csv``,
        or the table cannot be read or lacks a required column.
    """
    manifest = read_manifest(batch.path)
    site, name = manifest.site, manifest.batch
    facts = {"content_hash": manifest.content_hash, "simulated": manifest.simulated}
    check = verify_batch(batch.path, manifest)
    records = [
        QuarantineRecord(site, name, f, None, None, "manifest", problem, fix, "error")
        for f, problem, fix in check.problems()
    ]
    others = sorted(e.path for e in manifest.files if e.path != READS_FILE)
    if manifest.label_file != READS_FILE or others:
        records.append(
            QuarantineRecord(
                site,
                name,
                "manifest.json",
                None,
                "label_file",
                "reads_batch",
                f"a reads batch holds only {READS_FILE} (label_file {manifest.label_file!r}, "
                f"other files {others[:3]})",
                f"land images in an image batch and the reads alone, as {READS_FILE}",
                "error",
            )
        )
    if records:
        raise BatchStructureError(records, batch_facts=facts)
    data = (Path(batch.path) / READS_FILE).read_bytes()
    try:
        header, rows = read_records(data, site=site, batch=name, file=READS_FILE)
        check_columns(header, READ_COLUMNS, site=site, batch=name, file=READS_FILE)
    except BatchStructureError as err:
        raise BatchStructureError(err.records, batch_facts=facts) from err
    acc = RowCollector(site, name, READS_FILE)
    parsed = _parse_rows(header, rows, acc)
    if not rows:
        raise structure_error(
            site,
            name,
            READS_FILE,
            "empty_table",
            f"{READS_FILE} has a header and no read",
            "land the reads with one row per read study",
        )
    table = empty_images()
    return BatchIngest(
        table=table.assign(batch=pd.Series(dtype=object)),
        quarantine=records_to_frame(acc.records),
        content_hash=manifest.content_hash,
        simulated=manifest.simulated,
        n_rows_in=len(rows),
        extras={_EXTRA: parsed.assign(read_batch=name)},
    )


def _parse_rows(
    header: list[str], rows: list[tuple[int, list[str]]], acc: RowCollector
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
                    "write the backlog image's Image Index (e.g. 00012345_000.png)",
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
        if reason not in READ_REASONS:
            problems.append(
                (
                    "Reason",
                    f"reason {reason!r} is not one of {list(READ_REASONS)}",
                    "audit_sample for the drawn random sample, reread for the quota",
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


def attach_reads(ingest: PartitionIngest) -> PartitionIngest:
    """Write the landed reads onto the partition's backlog rows (see the module docstring).

    Every row gets the :data:`ATTACHED` columns (``""`` where not read); refused reads become
    quarantine records counted against their reads batch, whose ``n_rows_ok`` is the number of
    reads attached.
    """
    table = ingest.table.copy()
    for col in ATTACHED:
        table[col] = pd.Series("", index=table.index, dtype=object)
    reads = ingest.extras.get(_EXTRA)
    if reads is None or not len(reads):
        return ingest.with_table(table)
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
                "land the backlog batch first, or correct Image Index",
            )
        elif labelled[k]:
            why = (
                "read_of_labelled",
                f"image {r.image_id!r} is a labelled development study",
                "reads are for unlabelled backlog studies; drop this row",
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
                    READS_FILE,
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
    return PartitionIngest(out.partition, out.table, out.quarantine, batches, out.extras)
