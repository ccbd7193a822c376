"""The VinDr-PCXR layout, and landing a user's local copy of VinDr-PCXR as a ``peds_vqa`` batch.

VinDr-PCXR (PhysioNet, pediatric chest X-rays, credentialed access) is distributed as::

    train/<image_id>.dicom   test/<image_id>.dicom
    annotations_train.csv    annotations_test.csv     image_id, rad_id, class_name,
                                                      x_min, y_min, x_max, y_max (pixels)
    image_labels_train.csv   image_labels_test.csv    image_id, rad_id, one 0/1 column per label

clinaudit cannot redistribute it; :func:`land_vindr_pcxr` copies a local copy (or its first
``limit`` images) into the landing layout every ``peds_vqa`` batch uses (the simulator writes the
same one)::

    <landing>/peds_vqa/<site>/<batch>/
        images/<image_id>.dicom|.png
        image_labels.csv     image_id, rad_id, <label columns>        (the manifest's label_file)
        annotations.csv      image_id, rad_id, class_name, x_min, y_min, x_max, y_max
        metadata.csv         image_id, patient_id, PatientAge, PatientSex, ViewPosition
        manifest.json        written last; label_layout "peds_vindr"

``metadata.csv`` is read from the DICOM headers (PatientAge as a DICOM age string such as
``018M``, PatientSex, ViewPosition; the patient id is PatientID, or the image id when absent).

VinDr class names map to the study's four categories through :data:`CLASS_MAP` (compared
case-insensitively, surrounding spaces ignored); every other class (e.g. "Bronchial thickening",
"Other opacity", the image-level diagnoses, "No finding") is not one of the study's questions and
is ignored by the ingest:

===========================================  ======================
VinDr class name / label column               category
===========================================  ======================
Consolidation                                 consolidation
Peribronchovascular interstitial opacity      interstitial_opacity
Interstitial opacity                          interstitial_opacity
Cardiomegaly                                  cardiomegaly
Pleural effusion                              effusion
Effusion                                      effusion
===========================================  ======================
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.errors import InvalidDicomError

from clinaudit.sources.landing import MANIFEST_NAME, LandingError, validate_name, write_manifest
from clinaudit.sources.peds_render import PEDS_CATEGORIES

__all__ = [
    "ANNOTATIONS_FILE",
    "CsvTable",
    "read_csv_table",
    "ANNOTATION_COLUMNS",
    "CATEGORY_LABELS",
    "CLASS_MAP",
    "LABELS_FILE",
    "LABEL_LAYOUT",
    "METADATA_COLUMNS",
    "METADATA_FILE",
    "NO_FINDING",
    "STUDY",
    "VindrLanding",
    "category_of",
    "land_vindr_pcxr",
    "main",
]

#: The study's landing folder (also the manifest's ``study``).
STUDY = "peds_vqa"
LABEL_LAYOUT = "peds_vindr"
LABELS_FILE = "image_labels.csv"
ANNOTATIONS_FILE = "annotations.csv"
METADATA_FILE = "metadata.csv"
NO_FINDING = "No finding"
#: The VinDr-PCXR name written for each category (label column and box class).
CATEGORY_LABELS: dict[str, str] = {
    "consolidation": "Consolidation",
    "interstitial_opacity": "Peribronchovascular interstitial opacity",
    "cardiomegaly": "Cardiomegaly",
    "effusion": "Pleural effusion",
}
#: Lower-cased VinDr class name or label column -> category (see the module's table).
CLASS_MAP: dict[str, str] = {
    "consolidation": "consolidation",
    "peribronchovascular interstitial opacity": "interstitial_opacity",
    "interstitial opacity": "interstitial_opacity",
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "effusion",
    "effusion": "effusion",
}
assert set(CATEGORY_LABELS) == set(PEDS_CATEGORIES) == set(CLASS_MAP.values())
ANNOTATION_COLUMNS: tuple[str, ...] = (
    "image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max",
)  # fmt: skip
METADATA_COLUMNS: tuple[str, ...] = (
    "image_id", "patient_id", "PatientAge", "PatientSex", "ViewPosition",
)  # fmt: skip


def category_of(name: str) -> str | None:
    """The category a VinDr class name or label column stands for (``None``: not a question).

    Examples
    --------
    >>> category_of(" pleural EFFUSION "), category_of("No finding")
    ('effusion', None)
    """
    return CLASS_MAP.get(" ".join(str(name).split()).lower())


@dataclass(frozen=True)
class VindrLanding:
    """What :func:`land_vindr_pcxr` landed."""

    batch_dir: Path
    n_images: int
    n_label_rows: int
    n_annotation_rows: int


@dataclass(frozen=True)
class CsvTable:
    """A CSV read as text: ``header`` as written, ``columns`` (lower-cased name -> name as
    written) and ``rows`` of ``(line, {lower-cased name: value})`` (header = line 1; short rows
    padded with ``""``; ``image_id`` stripped)."""

    header: tuple[str, ...]
    columns: dict[str, str]
    rows: tuple[tuple[int, dict[str, str]], ...]


def read_csv_table(data: bytes, required: Sequence[str]) -> tuple[CsvTable, tuple[str, str] | None]:
    """Parse CSV bytes (UTF-8, optional BOM); the second item is ``(message, fix)`` when a
    required column (compared case-insensitively) is missing or the bytes are not a CSV.

    Examples
    --------
    >>> t, problem = read_csv_table(b"Image_ID,rad_id\\nab,R1\\n", ("image_id", "rad_id"))
    >>> t.rows, problem
    (((2, {'image_id': 'ab', 'rad_id': 'R1'}),), None)
    """
    empty = CsvTable((), {}, ())
    try:
        records = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as err:
        return empty, (f"not a UTF-8 CSV file ({err})", "export the table as UTF-8 CSV")
    if not records:
        return empty, ("the file is empty", "export the table with its header row")
    header = tuple(h.strip() for h in records[0])
    lower = [h.lower() for h in header]
    missing = [c for c in required if c.lower() not in lower]
    if missing:
        return empty, (
            f"columns {missing} are missing (found {list(header)})",
            f"use the VinDr-PCXR layout, whose file has the columns {list(required)}",
        )
    rows = []
    for k, rec in enumerate(records[1:], start=2):
        if not any(v.strip() for v in rec):
            continue
        values = dict(zip(lower, [*rec, *[""] * (len(lower) - len(rec))], strict=False))
        if "image_id" in values:
            values["image_id"] = values["image_id"].strip()
        rows.append((k, values))
    return CsvTable(header, dict(zip(lower, header, strict=True)), tuple(rows)), None


def _read_csv(path: Path, required: Sequence[str]) -> CsvTable:
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise LandingError(
            path, "file missing from the VinDr-PCXR copy",
            f"download {path.name} from the VinDr-PCXR PhysioNet page into {path.parent}",
        ) from err  # fmt: skip
    table, problem = read_csv_table(data, required)
    if problem is not None:
        raise LandingError(path, problem[0], f"{problem[1]} (use the unmodified {path.name})")
    return table


def _header_age(ds: pydicom.Dataset) -> str:
    value = ds.get("PatientAge", "")
    return "" if value is None else str(value).strip()


def _metadata_row(path: Path, image_id: str) -> list[str]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as err:
        raise LandingError(
            path, f"not a readable DICOM file ({err})", "download this image again"
        ) from err
    patient = str(ds.get("PatientID", "") or "").strip() or image_id
    sex = str(ds.get("PatientSex", "") or "").strip()
    view = str(ds.get("ViewPosition", "") or "").strip()
    return [image_id, patient, _header_age(ds), sex, view]


def _values(table: CsvTable, row: dict[str, str]) -> list[str]:
    return [row[h.lower()] for h in table.header]


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def land_vindr_pcxr(
    src_dir: str | os.PathLike[str],
    landing_root: str | os.PathLike[str],
    *,
    site: str,
    batch: str,
    split: Literal["train", "test"] = "train",
    limit: int | None = None,
) -> VindrLanding:
    """Copy (part of) a local VinDr-PCXR copy into ``<landing>/peds_vqa/<site>/<batch>/``.

    Parameters
    ----------
    src_dir : path
        The VinDr-PCXR folder (holding ``train/``, ``test/`` and the CSVs); only read.
    landing_root : path
        Landing root.
    site, batch : str
        Safe directory names of the landed batch (a new batch: landed data is immutable).
    split : {"train", "test"}
        Which part of VinDr-PCXR to land.
    limit : int, optional
        Land only the first ``limit`` image ids (sorted), with their label and box rows.

    Returns
    -------
    VindrLanding

    Raises
    ------
    LandingError
        Unsafe names; the batch already exists; a CSV, column or DICOM file of the copy is
        missing or unreadable (the error names it and how to fix the copy).

    Examples
    --------
    >>> land_vindr_pcxr("~/data/vindr-pcxr", "var/landing", site="vindr",
    ...                 batch="train-0001", limit=500)  # doctest: +SKIP
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}; expected a positive number of images or None")
    validate_name("site", site)
    validate_name("batch", batch)
    src = Path(src_dir).expanduser()
    if not (src / split).is_dir():
        raise LandingError(
            src / split, f"folder of the {split} DICOM files is missing",
            f"point SRC at the VinDr-PCXR folder that holds {split}/ (with <image_id>.dicom)",
        )  # fmt: skip
    labels = _read_csv(src / f"image_labels_{split}.csv", ("image_id", "rad_id"))
    boxes = _read_csv(src / f"annotations_{split}.csv", ANNOTATION_COLUMNS)
    ids = sorted({row["image_id"] for _, row in labels.rows if row["image_id"]})
    if not ids:
        raise LandingError(
            src / f"image_labels_{split}.csv", "no image ids", "download the label file again"
        )
    if limit is not None:
        ids = ids[:limit]
    for image_id in ids:
        validate_name("image_id", image_id)
    missing = [i for i in ids if not (src / split / f"{i}.dicom").is_file()]
    if missing:
        raise LandingError(
            src / split,
            f"{len(missing)} of {len(ids)} images named in image_labels_{split}.csv are absent "
            f"(first: {[f'{i}.dicom' for i in missing[:5]]})",
            "finish the download (PhysioNet's wget -r resumes), or pass --limit to land fewer",
        )
    batch_dir = Path(landing_root) / STUDY / site / batch
    if (batch_dir / MANIFEST_NAME).exists() or (batch_dir.exists() and any(batch_dir.iterdir())):
        raise LandingError(
            batch_dir, "batch already exists and landed data is immutable",
            "choose a new batch name (e.g. 'train-0002')",
        )  # fmt: skip
    images = batch_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    keep = set(ids)
    meta_rows = []
    for image_id in ids:
        source = src / split / f"{image_id}.dicom"
        meta_rows.append(_metadata_row(source, image_id))
        shutil.copyfile(source, images / f"{image_id}.dicom")
    label_rows = [_values(labels, row) for _, row in labels.rows if row["image_id"] in keep]
    box_rows = [_values(boxes, row) for _, row in boxes.rows if row["image_id"] in keep]
    (batch_dir / LABELS_FILE).write_bytes(_csv_text(labels.header, label_rows))
    (batch_dir / ANNOTATIONS_FILE).write_bytes(_csv_text(boxes.header, box_rows))
    (batch_dir / METADATA_FILE).write_bytes(_csv_text(METADATA_COLUMNS, meta_rows))
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    write_manifest(
        batch_dir, study=STUDY, site=site, batch=batch, label_file=LABELS_FILE,
        label_layout=LABEL_LAYOUT, simulated=False, created_utc=created,
    )  # fmt: skip
    return VindrLanding(batch_dir, len(ids), len(label_rows), len(box_rows))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m clinaudit.sources.vindr_pcxr SRC --landing DIR --site S
    --batch B [--split train|test] [--limit N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m clinaudit.sources.vindr_pcxr",
        description="Land a local VinDr-PCXR copy as a peds_vqa batch (files are copied).",
    )
    parser.add_argument("src", help="the VinDr-PCXR folder (train/, test/, the CSVs)")
    parser.add_argument("--landing", required=True, help="landing root")
    parser.add_argument("--site", required=True)
    parser.add_argument("--batch", required=True)
    parser.add_argument("--split", default="train", choices=("train", "test"))
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    out = land_vindr_pcxr(
        args.src, args.landing, site=args.site, batch=args.batch, split=args.split,
        limit=args.limit,
    )  # fmt: skip
    print(
        f"landed {out.n_images} images, {out.n_label_rows} label rows, "
        f"{out.n_annotation_rows} boxes in {out.batch_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
