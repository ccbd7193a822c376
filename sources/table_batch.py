"""Batches that hold one table and nothing else: labels that land after the data they label.

Radiologist reads of images landed earlier (``studies/image_reads.py``) and coded sepsis
outcomes of stays landed earlier (``studies/sepsis_ews/outcomes.py``) arrive as their own batch:
one CSV file and the manifest. :func:`write_table_batch` lands one (the table first, the manifest
last, so a reader never sees half a batch; an existing batch is never replaced);
:func:`read_table_batch` checks the bytes against the manifest, refuses any other file, and reads
the header and rows (a missing column or an empty table refuses the batch with the file and the
fix). The caller parses the rows.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinaudit.validation.errors import BatchStructureError, QuarantineRecord

from .label_rows import check_columns, read_records, structure_error
from .landing import (
    MANIFEST_NAME,
    BatchRef,
    LandingError,
    Manifest,
    read_manifest,
    validate_name,
    verify_batch,
    write_manifest,
)

__all__ = ["TableBatch", "TableBatchSpec", "read_table_batch", "write_table_batch"]


@dataclass(frozen=True)
class TableBatchSpec:
    """What a one-table batch is: its file, manifest layout, columns and words for messages.

    ``what``: the batch's name in messages (``"reads"``, ``"outcomes"``); ``row``: what one row
    is (``"read"``, ``"outcome"``); ``others``: where everything else lands (``"images in an
    image batch"``); ``check``: the quarantine check of a batch holding other files.
    """

    file: str
    layout: str
    columns: tuple[str, ...]
    what: str
    row: str
    others: str
    check: str
    empty_fix: str = ""


@dataclass(frozen=True)
class TableBatch:
    """A verified one-table batch: its manifest, header and ``(line, fields)`` rows."""

    manifest: Manifest
    header: list[str]
    rows: list[tuple[int, list[str]]]
    facts: dict[str, Any] = field(default_factory=dict)


def write_table_batch(
    landing_root: str | os.PathLike[str],
    *,
    spec: TableBatchSpec,
    landing_dir: str,
    site: str,
    batch: str,
    rows: Iterable[Sequence[object]],
    simulated: bool,
    created_utc: str,
    lineterminator: str = "\r\n",
) -> Path:
    """Land ``rows`` (in ``spec.columns`` order) as ``<landing_root>/<landing_dir>/<site>/<batch>``.

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
            f"land the {spec.what} under a new batch name",
        )
    batch_dir.mkdir(parents=True, exist_ok=True)
    with open(batch_dir / spec.file, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator=lineterminator)
        out.writerow(spec.columns)
        out.writerows(rows)
    write_manifest(
        batch_dir,
        study=landing_dir,
        site=site,
        batch=batch,
        label_file=spec.file,
        label_layout=spec.layout,
        simulated=simulated,
        created_utc=created_utc,
    )
    return batch_dir


def read_table_batch(batch: BatchRef, spec: TableBatchSpec) -> TableBatch:
    """Verify one batch of ``spec`` and read its table (rows not parsed).

    Raises
    ------
    BatchStructureError
        If a file differs from the manifest, the batch holds anything but ``spec.file``, or the
        table cannot be read, lacks a column of ``spec.columns`` or has no row.
    """
    manifest = read_manifest(batch.path)
    site, name, file = batch.site, batch.batch, spec.file
    facts: dict[str, Any] = {
        "content_hash": manifest.content_hash,
        "simulated": manifest.simulated,
        "n_rows_in": 0,
    }
    check = verify_batch(batch.path, manifest)
    records = [
        QuarantineRecord(site, name, f, None, None, "integrity", problem, fix, "error")
        for f, problem, fix in check.problems()
    ]
    others = sorted(e.path for e in manifest.files if e.path != file)
    if manifest.label_file != file or others:
        records.append(
            QuarantineRecord(
                site, name, MANIFEST_NAME, None, "label_file", spec.check,
                f"a {spec.what} batch holds only {file} (label_file {manifest.label_file!r}, "
                f"other files {others[:3]})",
                f"land {spec.others} and the {spec.what} alone, as {file}",
                "error",
            )
        )  # fmt: skip
    if records:
        raise BatchStructureError(records, batch_facts=facts)
    data = (Path(batch.path) / file).read_bytes()
    try:
        header, rows = read_records(data, site=site, batch=name, file=file)
        check_columns(header, spec.columns, site=site, batch=name, file=file)
        if not rows:
            raise structure_error(
                site, name, file, "empty_table", f"{file} has a header and no {spec.row}",
                spec.empty_fix or f"land one row per {spec.row}",
            )  # fmt: skip
    except BatchStructureError as err:
        raise BatchStructureError(err.records, batch_facts=facts) from err
    return TableBatch(manifest, header, rows, facts)
