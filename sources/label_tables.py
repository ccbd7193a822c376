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
    to years). All 14 findings are labelled 0/1.

CheXpert ``train.csv`` / ``valid.csv``
    Required: ``Path, Sex, Age, Frontal/Lateral, AP/PA``; every other named column is an
    observation. Observations named like a ChestX-ray14 finding or aliased in ``CHEXPERT_ALIASES``
    are used, the others are listed in ``ignored_columns``; findings without a column stay NaN and
    are reported (a warning record, ``unlabelled_findings``). Values: ``1`` positive, ``0`` or blank
    negative, ``-1`` uncertain (mapped by the uncertainty policy: ``zeros`` -> 0, ``ones`` -> 1,
    ``ignore`` -> NaN); anything else quarantines the row.
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
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import pandas as pd

from clinaudit.sources.cxr_labels import CHEXPERT_ALIASES, FINDINGS, NO_FINDING
from clinaudit.validation.errors import BatchStructureError, QuarantineRecord
from clinaudit.validation.schemas import CanonicalLabels, validate_frame

Layout = Literal["nih", "chexpert"]
Uncertainty = Literal["zeros", "ones", "ignore"]
UNCERTAINTY_POLICIES: tuple[str, ...] = ("zeros", "ones", "ignore")

NIH_REQUIRED: tuple[str, ...] = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
NIH_OPTIONAL: tuple[str, ...] = (
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
    "OriginalImage[Width, Height]",
    "OriginalImagePixelSpacing[x, y]",
)
CHEXPERT_REQUIRED: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
CANONICAL_COLUMNS: tuple[str, ...] = (
    "image_id",
    "file",
    "patient_id",
    "follow_up",
    "age",
    "sex",
    "view_position",
    "source_row",
    *FINDINGS,
)
SPLIT_FILES: dict[str, str] = {"train_val_list.txt": "train", "test_list.txt": "test"}

_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "U": "U", "UNKNOWN": "U"}
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"": 1.0, "Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}
_VIEW_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,15}$")
_PATIENT_RE = re.compile(r"^patient\d+$")
_STUDY_RE = re.compile(r"^study(\d+)$")
_CHEXPERT_VALUES = {"1": 1.0, "0": 0.0, "-1": -1.0, "": 0.0}
_KNOWN_LABELS = (*FINDINGS, NO_FINDING)


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
    """

    table: pd.DataFrame
    quarantine: list[QuarantineRecord]
    labelled_findings: tuple[str, ...]
    ignored_columns: tuple[str, ...]
    n_rows: int = 0
    unlabelled_findings: tuple[str, ...] = field(default=())
    referenced_files: frozenset[str] = field(default=frozenset())


class _Rows:
    """Collects canonical rows and quarantine records while a table is parsed."""

    def __init__(self, site: str, batch: str, file: str) -> None:
        self.site, self.batch, self.file = site, batch, file
        self.records: list[QuarantineRecord] = []
        self.rows: list[dict[str, object]] = []
        self.referenced: set[str] = set()

    def record(
        self,
        line: int | None,
        column: str | None,
        check: str,
        message: str,
        fix: str,
        severity: Literal["error", "warning"] = "error",
        file: str | None = None,
    ) -> None:
        self.records.append(
            QuarantineRecord(
                self.site,
                self.batch,
                file or self.file,
                line,
                column,
                check,
                message,
                fix,
                severity,
            )
        )


def _structure_error(
    site: str, batch: str, file: str, check: str, message: str, fix: str, column: str | None = None
) -> BatchStructureError:
    return BatchStructureError(
        [QuarantineRecord(site, batch, file, None, column, check, message, fix, "error")]
    )


def _read_records(
    data: bytes, *, site: str, batch: str, file: str
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Decode and split a CSV; returns the stripped header and ``(start line, fields)`` records."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _structure_error(
            site,
            batch,
            file,
            "unreadable_table",
            f"label table is not UTF-8 (invalid byte at offset {err.start})",
            "re-export the label table as UTF-8 CSV",
        ) from err
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    line = 1
    try:
        for fields in reader:
            start = line
            line = reader.line_num + 1
            if not fields or all(not f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
                continue
            records.append((start, fields))
    except csv.Error as err:
        raise _structure_error(
            site,
            batch,
            file,
            "unreadable_table",
            f"label table is not valid CSV near line {reader.line_num} ({err})",
            "re-export the label table as comma-separated CSV with '\"' quoting",
        ) from err
    if header is None:
        raise _structure_error(
            site,
            batch,
            file,
            "empty_table",
            "label table is empty (no header line)",
            "export the label table with its header line and one row per image",
        )
    return header, records


def _check_columns(
    header: list[str], required: tuple[str, ...], *, site: str, batch: str, file: str
) -> None:
    duplicated = sorted({h for h in header if h and header.count(h) > 1})
    problems = []
    if duplicated:
        problems.append(
            QuarantineRecord(
                site,
                batch,
                file,
                1,
                duplicated[0],
                "duplicate_column",
                f"column names {duplicated} appear more than once in the header",
                "give every column a unique name",
                "error",
            )
        )
    present = [h for h in header if h]
    for name in required:
        if name in header:
            continue
        close = difflib.get_close_matches(
            name, [p for p in present if p not in required], n=1, cutoff=0.5
        )
        hint = f"; the closest present column is {close[0]!r}" if close else ""
        delim = next((d for d in (";", "\t", "|") if len(present) == 1 and d in present[0]), None)
        fix = (
            f"rename {close[0]!r} to {name!r}" if close else f"add the column {name!r}"
        ) + " in the header"
        if delim:
            fix = f"the file seems to use {delim!r} as delimiter: export it with commas"
        problems.append(
            QuarantineRecord(
                site,
                batch,
                file,
                1,
                name,
                "missing_column",
                f"required column {name!r} is missing{hint} (expected columns: {list(required)}, "
                f"present: {present})",
                fix,
                "error",
            )
        )
    if problems:
        raise BatchStructureError(problems)


def _parse_age(text: str) -> tuple[float | None, str]:
    m = _AGE_RE.match(text)
    if m is None:
        return None, f"age {text!r} is not a number of years (or the NIH form '058Y')"
    value = float(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()]
    if not math.isfinite(value) or not 0.0 <= value <= 120.0:
        return None, f"age {text!r} = {value:.4g} years is outside [0, 120]"
    return value, ""


def _parse_common(
    acc: _Rows,
    line: int,
    *,
    age_text: str,
    age_col: str,
    sex_text: str,
    sex_col: str,
) -> tuple[float | None, str | None, bool]:
    ok = True
    age, why = _parse_age(age_text)
    if age is None:
        ok = False
        acc.record(
            line, age_col, "age_range", why, "write the age in years as a number in [0, 120]"
        )
    sex = _SEX.get(sex_text.strip().upper())
    if sex is None:
        ok = False
        acc.record(
            line,
            sex_col,
            "sex_domain",
            f"sex {sex_text!r} is not one of M, F, U (Male, Female, Unknown are accepted)",
            "map the value to M, F or U (U for unknown)",
        )
    return age, sex, ok


def _parse_view(acc: _Rows, line: int, text: str, column: str) -> tuple[str | None, bool]:
    view = re.sub(r"[\s-]+", "_", text.strip().upper())
    if not view:
        acc.record(
            line,
            column,
            "view_missing",
            "view position is blank; recorded as 'UNKNOWN'",
            "fill in the view position (PA, AP, LL, LATERAL, ...)",
            "warning",
        )
        return "UNKNOWN", True
    if not _VIEW_RE.match(view):
        acc.record(
            line,
            column,
            "view_domain",
            f"view position {text!r} is not a short code such as PA, AP, LL or LATERAL",
            "write the view position as a code of letters, digits and '_' (max 16 characters)",
        )
        return None, False
    return view, True


def _mark_duplicates(acc: _Rows) -> list[dict[str, object]]:
    lines: dict[str, list[int]] = {}
    for row in acc.rows:
        lines.setdefault(str(row["image_id"]), []).append(int(row["source_row"]))
    dup = {k: v for k, v in lines.items() if len(v) > 1}
    for image_id, where in dup.items():
        for line in where:
            others = [w for w in where if w != line]
            acc.record(
                line,
                None,
                "duplicate_image_id",
                f"image id {image_id!r} also appears on line(s) {others}; every copy is "
                "quarantined because the labels cannot be told apart",
                "keep exactly one row per image in the label table",
            )
    return [r for r in acc.rows if str(r["image_id"]) not in dup]


def _nih_rows(header: list[str], records: list[tuple[int, list[str]]], acc: _Rows) -> None:
    idx = {name: header.index(name) for name in NIH_REQUIRED}
    width = len(header)
    for line, raw in records:
        if len(raw) > width and any(f.strip() for f in raw[width:]):
            acc.record(
                line,
                None,
                "field_count",
                f"row has {len(raw)} fields but the header has {width}",
                "quote fields that contain commas, or remove the extra fields",
            )
            continue
        fields = [*raw, *[""] * (width - len(raw))]

        def get(name: str, fields: list[str] = fields) -> str:
            return fields[idx[name]].strip()

        ok = True
        image_index = get("Image Index")
        if (
            not image_index
            or "/" in image_index
            or "\\" in image_index
            or image_index
            in (
                ".",
                "..",
            )
        ):
            acc.record(
                line,
                "Image Index",
                "image_id",
                f"image index {image_index!r} is not a plain file name",
                "write the image file name (e.g. 00000001_000.png) without directories",
            )
            ok = False
        else:
            acc.referenced.add(f"images/{image_index}")
        patient = get("Patient ID")
        if not patient:
            acc.record(
                line, "Patient ID", "patient_id", "patient id is blank", "fill in the patient id"
            )
            ok = False
        follow_text = get("Follow-up #")
        try:
            follow_f = float(follow_text)
            follow = int(follow_f) if follow_f.is_integer() and follow_f >= 0 else None
        except ValueError:
            follow = None
        if follow is None:
            acc.record(
                line,
                "Follow-up #",
                "follow_up",
                f"follow-up {follow_text!r} is not a whole number >= 0",
                "write the follow-up index as 0, 1, 2, ...",
            )
            ok = False
        age, sex, ok_common = _parse_common(
            acc,
            line,
            age_text=get("Patient Age"),
            age_col="Patient Age",
            sex_text=get("Patient Gender"),
            sex_col="Patient Gender",
        )
        view, ok_view = _parse_view(acc, line, get("View Position"), "View Position")
        labels = dict.fromkeys(FINDINGS, 0.0)
        names = [n.strip() for n in get("Finding Labels").split("|")]
        unknown = [n for n in names if n not in _KNOWN_LABELS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], _KNOWN_LABELS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            acc.record(
                line,
                "Finding Labels",
                "unknown_finding",
                f"unknown finding name(s) {unknown}{hint}; known names: {list(_KNOWN_LABELS)}",
                "use the ChestX-ray14 names exactly (case and '_' matter), separated by '|'",
            )
            ok = False
        elif NO_FINDING in names and len(names) > 1:
            acc.record(
                line,
                "Finding Labels",
                "unknown_finding",
                f"{NO_FINDING!r} is combined with findings {[n for n in names if n != NO_FINDING]}",
                f"use {NO_FINDING!r} alone, or list only the findings",
            )
            ok = False
        else:
            for name in names:
                if name != NO_FINDING:
                    labels[name] = 1.0
        if ok and ok_common and ok_view:
            acc.rows.append(
                {
                    "image_id": image_index,
                    "file": f"images/{image_index}",
                    "patient_id": patient,
                    "follow_up": follow,
                    "age": age,
                    "sex": sex,
                    "view_position": view,
                    "source_row": line,
                    **labels,
                }
            )


def _resolve_path(text: str, batch_dir: Path, known_files: Collection[str] | None) -> str | None:
    norm = text.strip().replace("\\", "/")
    parts = PurePosixPath(norm).parts
    if not parts or norm.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", norm):
        return None
    rel = PurePosixPath(*parts).as_posix()
    candidates = [rel]
    if len(parts) > 1:
        candidates.append(PurePosixPath(*parts[1:]).as_posix())
    for cand in candidates:
        exists = cand in known_files if known_files is not None else (batch_dir / cand).is_file()
        if exists:
            return cand
    return rel


def _chexpert_rows(
    header: list[str],
    records: list[tuple[int, list[str]]],
    acc: _Rows,
    *,
    used: dict[str, int],
    uncertainty: Uncertainty,
    batch_dir: Path,
    known_files: Collection[str] | None,
) -> None:
    idx = {name: header.index(name) for name in CHEXPERT_REQUIRED}
    width = len(header)
    uncertain_value = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertainty]
    for line, raw in records:
        if len(raw) > width and any(f.strip() for f in raw[width:]):
            acc.record(
                line,
                None,
                "field_count",
                f"row has {len(raw)} fields but the header has {width}",
                "quote fields that contain commas, or remove the extra fields",
            )
            continue
        fields = [*raw, *[""] * (width - len(raw))]
        ok = True
        path_text = fields[idx["Path"]]
        rel = _resolve_path(path_text, batch_dir, known_files)
        patient = None
        follow = None
        if rel is None:
            acc.record(
                line,
                "Path",
                "path",
                f"path {path_text!r} is empty, absolute or contains '..'",
                "write the image path relative to the batch directory",
            )
            ok = False
        else:
            acc.referenced.add(rel)
            parts = PurePosixPath(rel).parts
            patient = next((p for p in parts if _PATIENT_RE.match(p)), None)
            study = next((m for p in parts if (m := _STUDY_RE.match(p))), None)
            if patient is None or study is None or int(study.group(1)) < 1:
                acc.record(
                    line,
                    "Path",
                    "path_layout",
                    f"path {path_text!r} lacks a 'patientNNNNN' and a 'studyN' (N >= 1) component",
                    "lay images out as <split>/patientNNNNN/studyN/viewM_<frontal|lateral>.<ext>",
                )
                ok = False
            else:
                follow = int(study.group(1)) - 1
        age, sex, ok_common = _parse_common(
            acc,
            line,
            age_text=fields[idx["Age"]],
            age_col="Age",
            sex_text=fields[idx["Sex"]],
            sex_col="Sex",
        )
        fl = fields[idx["Frontal/Lateral"]].strip().lower()
        if fl == "lateral":
            view, ok_view = "LATERAL", True
        elif fl == "frontal":
            view, ok_view = _parse_view(acc, line, fields[idx["AP/PA"]], "AP/PA")
        else:
            acc.record(
                line,
                "Frontal/Lateral",
                "view_domain",
                f"Frontal/Lateral value {fields[idx['Frontal/Lateral']]!r} is not Frontal or "
                "Lateral",
                "write Frontal or Lateral",
            )
            view, ok_view = None, False
        labels = dict.fromkeys(FINDINGS, np.nan)
        for finding, col in used.items():
            text = fields[col].strip()
            value = _CHEXPERT_VALUES.get(text)
            if value is None:
                try:
                    num = float(text)
                except ValueError:
                    num = math.nan
                value = num if num in (1.0, 0.0, -1.0) else None
            if value is None:
                acc.record(
                    line,
                    header[col],
                    "label_domain",
                    f"label value {text!r} is not one of 1, 0, -1 or blank",
                    "use 1 (positive), 0 or blank (negative), -1 (uncertain)",
                )
                ok = False
                continue
            labels[finding] = uncertain_value if value == -1.0 else value
        if ok and ok_common and ok_view and rel is not None:
            acc.rows.append(
                {
                    "image_id": rel,
                    "file": rel,
                    "patient_id": patient,
                    "follow_up": follow,
                    "age": age,
                    "sex": sex,
                    "view_position": view,
                    "source_row": line,
                    **labels,
                }
            )


def _chexpert_observations(
    header: list[str], *, site: str, batch: str, file: str
) -> tuple[dict[str, int], list[str]]:
    used: dict[str, int] = {}
    ignored: list[str] = []
    for col, name in enumerate(header):
        if not name or name in CHEXPERT_REQUIRED:
            continue
        finding = name if name in FINDINGS else CHEXPERT_ALIASES.get(name)
        if finding is None:
            ignored.append(name)
            continue
        if finding in used:
            raise _structure_error(
                site,
                batch,
                file,
                "duplicate_column",
                f"columns {header[used[finding]]!r} and {name!r} both label {finding!r}",
                "keep one column per finding",
                column=name,
            )
        used[finding] = col
    if not used:
        raise _structure_error(
            site,
            batch,
            file,
            "missing_column",
            f"no observation column names a ChestX-ray14 finding (known: {list(FINDINGS)}, "
            f"aliases: {CHEXPERT_ALIASES}); present: {ignored}",
            "name the observation columns as in CheXpert (e.g. 'Cardiomegaly', 'Pleural Effusion')",
        )
    return used, ignored


def _canonical_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(CANONICAL_COLUMNS))
    frame = frame.astype(
        {
            "image_id": str,
            "file": str,
            "patient_id": str,
            "follow_up": "int64",
            "age": "float64",
            "sex": str,
            "view_position": str,
            "source_row": "int64",
            **dict.fromkeys(FINDINGS, "float64"),
        }
    )
    return frame.reset_index(drop=True)


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
            raise _structure_error(
                site,
                batch,
                name,
                "unreadable_table",
                f"label table cannot be read ({err.strerror or err})",
                "upload the label table named in manifest.json",
            ) from err
    header, records = _read_records(data, site=site, batch=batch, file=name)
    acc = _Rows(site, batch, name)
    if layout == "nih":
        _check_columns(header, NIH_REQUIRED, site=site, batch=batch, file=name)
        known = set(NIH_REQUIRED) | set(NIH_OPTIONAL)
        ignored = [h for h in header if h and h not in known]
        _nih_rows(header, records, acc)
        labelled = FINDINGS
    else:
        _check_columns(header, CHEXPERT_REQUIRED, site=site, batch=batch, file=name)
        used, ignored = _chexpert_observations(header, site=site, batch=batch, file=name)
        _chexpert_rows(
            header,
            records,
            acc,
            used=used,
            uncertainty=uncertainty,
            batch_dir=base,
            known_files=known_files,
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
    good = _mark_duplicates(acc)
    table = _canonical_frame(good)
    # The schema is the contract of the canonical table: rows it refuses are quarantined too.
    table, schema_records = validate_frame(
        CanonicalLabels, table, site=site, batch=batch, file=name
    )
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
        raise _structure_error(
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
            raise _structure_error(
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
        raise _structure_error(
            site,
            batch,
            "test_list.txt",
            "split_lists",
            f"{len(both)} image ids are in both train_val_list.txt and test_list.txt "
            f"(first: {sorted(both)[:5]}), which leaks test images into training",
            "put every image in exactly one of the two lists",
        )
    return out
