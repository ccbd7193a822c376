"""Readers for chest X-ray label tables: NIH ChestX-ray14 and CheXpert layouts.

Both readers return the *canonical label table* (pandera schema
``clinaudit.validation.schemas.CanonicalLabels``), one row per image:

``image_id, file, patient_id, follow_up, age, sex, view_position, source_row, <14 FINDINGS>``

Row-level problems quarantine the row (a :class:`~clinaudit.validation.errors.QuarantineRecord`
names the file, the 1-based line, the column and the fix) and the other rows proceed; structural
problems (unreadable file, not UTF-8, missing required columns) raise
:class:`~clinaudit.validation.errors.BatchStructureError`. The file is parsed with :mod:`csv` so
every record keeps the line it starts on (header = line 1, data row k = line k+1 when no field spans
lines). Column names are compared after stripping surrounding spaces; a UTF-8 byte-order mark is
accepted.

NIH ``Data_Entry_2017.csv``
    Required: ``Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age, Patient Gender,
    View Position``. The trailing ``OriginalImage[Width, Height]`` / ``OriginalImagePixelSpacing[x,
    y]`` columns are optional, split (``OriginalImage[Width``, ``Height]``, as in the real file) or
    not; columns with an empty name (the real file's trailing comma) are dropped silently, other
    unknown columns are listed in ``ignored_columns``. The image file is ``images/<Image Index>``.
    ``Finding Labels`` is ``|``-separated FINDINGS names or ``No Finding`` (alone). ``Patient Age``
    is a number of years, or the older NIH form ``058Y`` (``M``/``W``/``D`` suffixes are converted
    to years). All 14 findings are labelled 0/1. An empty (or blank) ``Finding Labels`` means the
    row is *not labelled*: it is quarantined (``unknown_finding``) unless the reader is called with
    ``allow_unlabelled=True`` (a pile of unlabelled studies), which keeps it with all 14 findings
    NaN.

CheXpert ``train.csv`` / ``valid.csv``
    Required: ``Path, Sex, Age, Frontal/Lateral, AP/PA``; every other named column is an
    observation. Observations named like a ChestX-ray14 finding or aliased in ``CHEXPERT_ALIASES``
    are used, the others are listed in ``ignored_columns``; findings without a column stay NaN and
    are reported (a warning record, ``unlabelled_findings``). Values: ``1`` positive, ``0`` or blank
    negative, ``-1`` uncertain (mapped by the uncertainty policy: ``zeros`` -> 0, ``ones`` -> 1,
    ``ignore`` -> NaN); anything else quarantines the row. With ``allow_unlabelled=True`` a row
    whose every observation column is blank (``No Finding`` included) is *not labelled* (all 14
    findings NaN): how a CheXpert-layout backlog lands.
    ``Path`` is relative to the batch directory. **Prefix rule:** when ``Path`` does not name an
    existing file but ``Path`` without its first component does (``CheXpert-v1.0/train/...`` ->
    ``train/...``), the shorter path is used; otherwise ``Path`` is kept as written (and ingest
    reports the image as missing if absent). ``image_id`` is the resolved relative path. The
    patient id is the ``patientNNNNN`` path component; ``follow_up`` is ``N - 1`` for the ``studyN``
    component (CheXpert numbers a patient's studies from 1 in time order), so it does not depend on
    which studies a batch holds. ``view_position`` is ``LATERAL`` for lateral images, otherwise the
    ``AP/PA`` value (``UNKNOWN``, with a warning, when blank).

Sex is ``M``/``F``/``U`` (``Male``/``Female``/``Unknown`` accepted, any case); age must lie in
[0, 120] years. Duplicate image ids quarantine every copy.

This module dispatches on the layout; the layouts' columns and row parsers live in
:mod:`~clinaudit.sources.nih_labels` and :mod:`~clinaudit.sources.chexpert_labels`, the row-level
parsing they share in :mod:`~clinaudit.sources.label_rows`.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from clinaudit.sources.chexpert_labels import (
    CHEXPERT_REQUIRED,
    chexpert_observations,
    chexpert_rows,
)
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.label_rows import (
    RowCollector,
    canonical_frame,
    check_columns,
    mark_duplicates,
    read_records,
    structure_error,
)
from clinaudit.sources.nih_labels import NIH_OPTIONAL, NIH_REQUIRED, nih_rows
from clinaudit.validation.errors import QuarantineRecord
from clinaudit.validation.schemas import CanonicalLabels, validate_frame

Layout = Literal["nih", "chexpert"]
Uncertainty = Literal["zeros", "ones", "ignore"]
UNCERTAINTY_POLICIES: tuple[str, ...] = ("zeros", "ones", "ignore")
SPLIT_FILES: dict[str, str] = {"train_val_list.txt": "train", "test_list.txt": "test"}


@dataclass(frozen=True)
class LabelTableResult:
    """A parsed label table.

    Attributes
    ----------
    table : DataFrame
        Canonical label table of the rows that passed (CanonicalLabels schema), in file order.
    quarantine : list of QuarantineRecord
        Row-level problems (errors removed their row; warnings did not).
    labelled_findings : tuple of str
        FINDINGS that the table labels (all 14 for NIH; those with a column for CheXpert).
    ignored_columns : tuple of str
        Columns present in the file that the canonical table does not use.
    n_rows : int
        Data rows read from the file (good + quarantined).
    unlabelled_findings : tuple of str
        FINDINGS without a column (NaN in every row).
    referenced_files : frozenset of str
        Image files named by any row, quarantined rows included (relative to the batch dir).
    n_unlabelled_rows : int
        Rows of ``table`` that are not labelled at all (with ``allow_unlabelled``: every finding
        NaN); 0 otherwise.
    """

    table: pd.DataFrame
    quarantine: list[QuarantineRecord]
    labelled_findings: tuple[str, ...]
    ignored_columns: tuple[str, ...]
    n_rows: int = 0
    unlabelled_findings: tuple[str, ...] = field(default=())
    referenced_files: frozenset[str] = field(default=frozenset())
    n_unlabelled_rows: int = 0


def read_label_table(
    path: str | os.PathLike[str],
    *,
    layout: Layout,
    uncertainty: Uncertainty = "zeros",
    site: str,
    batch: str,
    data: bytes | None = None,
    batch_dir: str | os.PathLike[str] | None = None,
    known_files: Collection[str] | None = None,
    allow_unlabelled: bool = False,
) -> LabelTableResult:
    """Read an NIH or CheXpert label table into the canonical label table.

    Parameters
    ----------
    path : path
        The label table (opened read-only, ``"rb"``).
    layout : {"nih", "chexpert"}
        Column layout (see the module docstring).
    uncertainty : {"zeros", "ones", "ignore"}
        CheXpert policy for ``-1`` (uncertain): 0, 1 or NaN. Unused for NIH.
    site, batch : str
        Recorded in every quarantine record.
    data : bytes, optional
        The file's bytes when the caller already read them (ingest hashes them first); ``path``
        then only names the file.
    batch_dir : path, optional
        Directory that image paths are relative to (default: the label file's directory).
    known_files : collection of str, optional
        Relative paths that exist in the batch (e.g. the manifest's); used for the CheXpert prefix
        rule instead of looking at the file system.
    allow_unlabelled : bool
        Keep rows nobody has labelled as *not labelled* (all 14 findings NaN): NIH rows with an
        empty ``Finding Labels`` (otherwise quarantined) and CheXpert rows whose every
        observation column is blank (otherwise read as negative). For a pile of studies nobody
        has labelled yet; a study whose evidence needs a label on every row leaves it ``False``.

    Returns
    -------
    LabelTableResult
        Canonical table of the good rows plus the records of the quarantined ones.

    Raises
    ------
    BatchStructureError
        If the file cannot be read or decoded, or a required column is missing (the record names
        the closest present column).

    Examples
    --------
    >>> res = read_label_table("labels.csv", layout="nih", site="a", batch="b1")  # doctest: +SKIP
    >>> res.table.columns[:4].tolist()  # doctest: +SKIP
    ['image_id', 'file', 'patient_id', 'follow_up']
    """
    if layout not in ("nih", "chexpert"):
        raise ValueError(f"layout={layout!r} is not one of ['nih', 'chexpert']")
    if uncertainty not in UNCERTAINTY_POLICIES:
        raise ValueError(f"uncertainty={uncertainty!r} is not one of {list(UNCERTAINTY_POLICIES)}")
    path = Path(path)
    base = Path(batch_dir) if batch_dir is not None else path.parent
    try:
        name = path.relative_to(base).as_posix()
    except ValueError:
        name = path.name
    if data is None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as err:
            raise structure_error(
                site,
                batch,
                name,
                "unreadable_table",
                f"label table cannot be read ({err.strerror or err})",
                "upload the label table named in manifest.json",
            ) from err
    header, records = read_records(data, site=site, batch=batch, file=name)
    acc = RowCollector(site, batch, name)
    if layout == "nih":
        check_columns(header, NIH_REQUIRED, site=site, batch=batch, file=name)
        known = set(NIH_REQUIRED) | set(NIH_OPTIONAL)
        ignored = [h for h in header if h and h not in known]
        nih_rows(header, records, acc, allow_unlabelled=allow_unlabelled)
        labelled = FINDINGS
    else:
        check_columns(header, CHEXPERT_REQUIRED, site=site, batch=batch, file=name)
        used, ignored = chexpert_observations(header, site=site, batch=batch, file=name)
        chexpert_rows(
            header,
            records,
            acc,
            used=used,
            uncertain_value={"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertainty],
            batch_dir=base,
            known_files=known_files,
            allow_unlabelled=allow_unlabelled,
        )
        labelled = tuple(f for f in FINDINGS if f in used)
    unlabelled = tuple(f for f in FINDINGS if f not in labelled)
    if unlabelled:
        acc.record(
            None,
            None,
            "unlabelled_findings",
            f"findings {list(unlabelled)} have no column and stay unlabelled (NaN)",
            "add the observation columns if the site labels these findings",
            "warning",
        )
    good = mark_duplicates(acc)
    table = canonical_frame(good)
    # The schema is the contract of the canonical table: rows it refuses are quarantined too.
    table, schema_records = validate_frame(
        CanonicalLabels, table, site=site, batch=batch, file=name
    )
    n_unlabelled_rows = 0
    if allow_unlabelled:
        n_unlabelled_rows = int(table[list(FINDINGS)].isna().all(axis=1).sum())
    records_out = sorted(
        acc.records + schema_records, key=lambda r: (r.row is None, r.row or 0, r.column or "")
    )
    return LabelTableResult(
        table=table,
        quarantine=records_out,
        labelled_findings=tuple(labelled),
        ignored_columns=tuple(ignored),
        n_rows=len(records),
        unlabelled_findings=unlabelled,
        referenced_files=frozenset(acc.referenced),
        n_unlabelled_rows=n_unlabelled_rows,
    )


def read_split_lists(batch_dir: str | os.PathLike[str]) -> dict[str, str] | None:
    """Read the NIH split files of a reference batch: image id -> ``"train"`` or ``"test"``.

    ``train_val_list.txt`` and ``test_list.txt`` hold one image file name per line (blank lines
    are skipped).

    Parameters
    ----------
    batch_dir : path
        The batch directory.

    Returns
    -------
    dict or None
        The mapping, or ``None`` when the batch has neither file (not a reference batch).

    Raises
    ------
    BatchStructureError
        If only one of the two files exists, one is not UTF-8, or an image id is in both (a
        train/test leak).
    """
    batch_dir = Path(batch_dir)
    site, batch = batch_dir.parent.name, batch_dir.name
    present = {name: (batch_dir / name).is_file() for name in SPLIT_FILES}
    if not any(present.values()):
        return None
    if not all(present.values()):
        missing = [n for n, p in present.items() if not p]
        there = [n for n, p in present.items() if p]
        raise structure_error(
            site,
            batch,
            missing[0],
            "split_lists",
            f"split file {there[0]!r} is present but {missing[0]!r} is missing",
            "land both train_val_list.txt and test_list.txt, or neither",
        )
    out: dict[str, str] = {}
    both: list[str] = []
    for name, split in SPLIT_FILES.items():
        with open(batch_dir / name, "rb") as fh:
            raw = fh.read()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise structure_error(
                site,
                batch,
                name,
                "split_lists",
                f"split file is not UTF-8 (invalid byte at offset {err.start})",
                "re-export it as UTF-8 text, one image file name per line",
            ) from err
        for line in text.splitlines():
            image_id = line.strip()
            if not image_id:
                continue
            if out.get(image_id, split) != split:
                both.append(image_id)
            out[image_id] = split
    if both:
        raise structure_error(
            site,
            batch,
            "test_list.txt",
            "split_lists",
            f"{len(both)} image ids are in both train_val_list.txt and test_list.txt "
            f"(first: {sorted(both)[:5]}), which leaks test images into training",
            "put every image in exactly one of the two lists",
        )
    return out
