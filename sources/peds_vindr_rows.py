"""Row checks of the three VinDr-PCXR CSVs of a landed ``peds_vqa`` batch (``peds_vindr``).

:func:`read_metadata`, :func:`read_labels` and :func:`read_boxes` read ``metadata.csv``,
``image_labels.csv`` and ``annotations.csv`` row by row for
:func:`~clinaudit.sources.peds_vindr.ingest_peds_batch`: every problem goes to ``rec``
(quarantine the image: file, line, column, check, message, fix) or ``warn`` (the batch goes on),
never silently dropped. DICOM age strings and the report's age bands are here too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from clinaudit.sources.peds_render import PEDS_CATEGORIES
from clinaudit.sources.vindr_pcxr import (
    ANNOTATIONS_FILE,
    LABELS_FILE,
    METADATA_FILE,
    CsvTable,
    category_of,
)

__all__ = [
    "AGE_BANDS",
    "BOX_FIX",
    "MAX_AGE_YEARS",
    "age_band",
    "parse_dicom_age",
    "read_boxes",
    "read_labels",
    "read_metadata",
]

AGE_BANDS: tuple[str, ...] = ("0-1", "1-5", "5-10", ">10")
MAX_AGE_YEARS = 18.0
#: The fix named for every bad box.
BOX_FIX = "correct the box in annotations.csv (pixels of the stored image, x_min < x_max)"
_AGE_RE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
#: ``rec(image_id, file, line, column, check, message, fix)``: quarantine an image.
Record = Callable[..., None]
#: ``warn(file, line, check, message[, fix])``: a warning that does not stop the image.
Warn = Callable[..., None]


def parse_dicom_age(text: str) -> float | None:
    """Years of a DICOM age string (``nnnD``, ``nnnW``, ``nnnM``, ``nnnY``); ``None`` if invalid.

    Examples
    --------
    >>> parse_dicom_age("018M"), parse_dicom_age("004Y"), parse_dicom_age("4 years")
    (1.5, 4.0, None)
    """
    m = _AGE_RE.fullmatch(str(text).strip().upper())
    return None if m is None else int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2)]


def age_band(age_years: float) -> str:
    """``"0-1"`` (under 1 y), ``"1-5"``, ``"5-10"`` or ``">10"`` (10 y and over)."""
    return (
        "0-1" if age_years < 1 else "1-5" if age_years < 5 else "5-10" if age_years < 10 else ">10"
    )


def read_metadata(meta: CsvTable, rec: Record) -> dict[str, dict[str, object]]:
    """Good-looking metadata per image id (problems go to ``rec``; duplicates drop all copies)."""
    counts: dict[str, int] = {}
    for _, row in meta.rows:
        counts[row["image_id"]] = counts.get(row["image_id"], 0) + 1
    out: dict[str, dict[str, object]] = {}
    col = meta.columns
    for line, row in meta.rows:
        image_id = row["image_id"]
        if counts[image_id] > 1:
            rec(image_id, METADATA_FILE, line, col["image_id"], "duplicate_image_id",
                f"image id {image_id!r} is on {counts[image_id]} rows of metadata.csv",
                "keep one metadata row per image")  # fmt: skip
            continue
        view = row["viewposition"].strip().upper()
        if view not in ("AP", "PA"):
            rec(image_id, METADATA_FILE, line, col["viewposition"], "unknown_view",
                f"ViewPosition {row['viewposition']!r} is not AP or PA",
                "send frontal films only, with ViewPosition AP or PA")  # fmt: skip
        age = parse_dicom_age(row["patientage"])
        if age is None:
            rec(image_id, METADATA_FILE, line, col["patientage"], "age_unparseable",
                f"PatientAge {row['patientage']!r} is not a DICOM age string",
                "write the age as nnnD, nnnW, nnnM or nnnY (e.g. 018M, 004Y)")  # fmt: skip
        elif age > MAX_AGE_YEARS:
            rec(image_id, METADATA_FILE, line, col["patientage"], "age_range",
                f"PatientAge {row['patientage']!r} is {age:.1f} years, outside 0-18 years",
                "land only pediatric films, or correct the age")  # fmt: skip
        sex = row["patientsex"].strip().upper()
        patient = row["patient_id"].strip() or image_id
        out[image_id] = {"line": line, "view": view, "age": age, "patient": patient,
                         "sex": sex if sex in ("M", "F") else "U"}  # fmt: skip
    return out


def read_labels(
    labels: CsvTable, ids: set[str], rec: Record, warn: Warn
) -> tuple[dict[str, dict], dict[str, str]]:
    """Union of positive labels per image, and the label column (as written) of each category
    that has one."""
    cols = {c: [h for h in labels.header if category_of(h) == c] for c in PEDS_CATEGORIES}
    out: dict[str, dict] = {}
    for line, row in labels.rows:
        image_id = row["image_id"]
        if image_id not in ids:
            warn(
                LABELS_FILE, line, "label_orphan", f"label row of {image_id!r}, not in metadata.csv"
            )
            continue
        entry = out.setdefault(image_id, {"line": line, "pos": set()})
        for c, names in cols.items():
            for name in names:
                value = row[name.strip().lower()].strip()
                if value not in ("0", "1", "0.0", "1.0"):
                    rec(image_id, LABELS_FILE, line, name, "label_value",
                        f"label {value!r} is not 0 or 1", "write 1 or 0")  # fmt: skip
                elif value.startswith("1"):
                    entry["pos"].add(c)
    return out, {c: names[0] for c, names in cols.items() if names}


def read_boxes(ann: CsvTable, ids: set[str], rec: Record, warn: Warn) -> dict[str, dict[str, list]]:
    """Boxes per image and category: ``[line, x_min, y_min, x_max, y_max]`` in pixels."""
    out: dict[str, dict[str, list]] = {}
    col = ann.columns
    for line, row in ann.rows:
        image_id, category = row["image_id"], category_of(row["class_name"])
        if category is None:
            continue
        if image_id not in ids:
            warn(ANNOTATIONS_FILE, line, "annotation_orphan",
                 f"box of {image_id!r}, which metadata.csv does not list")  # fmt: skip
            continue
        boxes = out.setdefault(image_id, {}).setdefault(category, [])  # a bad box still claims
        try:
            box = [float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
        except ValueError:
            rec(image_id, ANNOTATIONS_FILE, line, col["x_min"], "box_unparseable",
                f"{row['class_name']} box coordinates are not numbers", BOX_FIX)  # fmt: skip
            continue
        if not all(math.isfinite(v) for v in box) or box[0] >= box[2] or box[1] >= box[3]:
            rec(image_id, ANNOTATIONS_FILE, line, col["x_max"], "box_order",
                f"{row['class_name']} box {box} needs x_min < x_max and y_min < y_max",
                BOX_FIX)  # fmt: skip
            continue
        boxes.append([line, *box])
    return out
