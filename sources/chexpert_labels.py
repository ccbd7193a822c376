"""The CheXpert layout (``train.csv`` / ``valid.csv``) of a label table.

See :mod:`clinaudit.sources.label_tables` for the rules (observation columns, uncertainty policy,
the ``Path`` prefix rule); this module holds the layout's columns and the parser of its rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from pathlib import Path, PurePosixPath

import numpy as np

from clinaudit.sources.cxr_labels import CHEXPERT_ALIASES, FINDINGS
from clinaudit.sources.label_rows import (
    RowCollector,
    padded_records,
    parse_age_sex,
    parse_view,
    structure_error,
)

CHEXPERT_REQUIRED: tuple[str, ...] = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
_PATIENT_RE = re.compile(r"^patient\d+$")
_STUDY_RE = re.compile(r"^study(\d+)$")
_CHEXPERT_VALUES = {"1": 1.0, "0": 0.0, "-1": -1.0, "": 0.0}


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


def chexpert_rows(
    header: list[str],
    records: list[tuple[int, list[str]]],
    acc: RowCollector,
    *,
    used: dict[str, int],
    uncertain_value: float,
    batch_dir: Path,
    known_files: Collection[str] | None,
    allow_unlabelled: bool = False,
) -> None:
    """Parse the CheXpert data rows into ``acc``; ``-1`` labels become ``uncertain_value``.

    ``used`` maps each labelled finding to its column index (:func:`chexpert_observations`).
    With ``allow_unlabelled``, a row whose every observation column is blank (``No Finding``
    and the unused observations included) is *not labelled*: its 14 findings are NaN. Without
    it (the CheXpert convention) blank means negative.
    """
    idx = {name: header.index(name) for name in CHEXPERT_REQUIRED}
    observations = [i for i, h in enumerate(header) if h and h not in CHEXPERT_REQUIRED]
    for line, fields in padded_records(records, len(header), acc):
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
        age, sex, ok_common = parse_age_sex(
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
            view, ok_view = parse_view(acc, line, fields[idx["AP/PA"]], "AP/PA")
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
        unlabelled = allow_unlabelled and all(not fields[i].strip() for i in observations)
        for finding, col in used.items() if not unlabelled else ():
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


def chexpert_observations(
    header: list[str], *, site: str, batch: str, file: str
) -> tuple[dict[str, int], list[str]]:
    """Map FINDINGS to their observation columns; returns ``(used, ignored column names)``.

    Raises a :class:`~clinaudit.validation.errors.BatchStructureError` when two columns label the
    same finding or no column labels any.
    """
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
            raise structure_error(
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
        raise structure_error(
            site,
            batch,
            file,
            "missing_column",
            f"no observation column names a ChestX-ray14 finding (known: {list(FINDINGS)}, "
            f"aliases: {CHEXPERT_ALIASES}); present: {ignored}",
            "name the observation columns as in CheXpert (e.g. 'Cardiomegaly', 'Pleural Effusion')",
        )
    return used, ignored
