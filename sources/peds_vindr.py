"""Ingest of one landed ``peds_vqa`` batch in the VinDr-PCXR layout (``peds_vindr``).

:func:`ingest_peds_batch` reads ``<landing>/peds_vqa/<site>/<batch>/`` strictly read-only:

1. ``manifest.json`` (``LandingError`` when missing or malformed); ``label_layout`` must be
   ``peds_vindr``.
2. ``image_labels.csv`` (the manifest's ``label_file``), ``annotations.csv`` and
   ``metadata.csv`` must be listed, present, match their sha256 and hold their required columns
   (:mod:`~clinaudit.sources.vindr_pcxr`), else :class:`BatchStructureError`.
3. One image per ``metadata.csv`` row. A row is quarantined, with the file, line, column and the
   fix, for: a duplicated image id, an unknown view (not AP/PA), an unparseable age (not a DICOM
   age string such as ``018M``), an age outside 0-18 years, no label row, a label cell that is
   not 0/1, an unparseable box, a box with ``x_min >= x_max`` or ``y_min >= y_max`` or outside
   the image, a category whose label disagrees with its boxes, and for the image itself: missing,
   not in the manifest, changed since the manifest (``hash_mismatch``, not decoded) or not
   decodable (:func:`~clinaudit.sources.images.decode_image`, PNG or DICOM).
4. Labels: a category is positive when any radiologist (``rad_id``) marks it; VinDr names map to
   categories through :data:`~clinaudit.sources.vindr_pcxr.CLASS_MAP`. A category without a
   label column takes its label from the boxes (one warning). Boxes of a category are merged
   into their union and normalised by the image's columns (x) and rows (y).
5. Patient ids become keyed pseudonyms (:func:`~clinaudit.validation.ingest.pseudonymise`).

Label or box rows of images the metadata does not list, and files nobody references, give
warnings. The three CSVs are read row by row in :mod:`~clinaudit.sources.peds_vindr_rows`. The
output (:class:`PedsImageTable`) has one row per good image.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.schemas import OutputSchema, schema_columns, validate_table
from clinaudit.sources.images import ImageDecodeError, decode_image, resize_for_model
from clinaudit.sources.landing import Manifest, read_manifest, verify_batch
from clinaudit.sources.peds_render import PEDS_CATEGORIES
from clinaudit.sources.peds_vindr_rows import (
    AGE_BANDS,
    BOX_FIX,
    MAX_AGE_YEARS,
    age_band,
    parse_dicom_age,
    read_boxes,
    read_labels,
    read_metadata,
)
from clinaudit.sources.render_pool import chunk_size, render_chunks
from clinaudit.sources.vindr_pcxr import (
    ANNOTATION_COLUMNS,
    ANNOTATIONS_FILE,
    LABEL_LAYOUT,
    METADATA_COLUMNS,
    METADATA_FILE,
    CsvTable,
    read_csv_table,
)
from clinaudit.validation.errors import BatchStructureError, QuarantineRecord, records_to_frame
from clinaudit.validation.ingest import pseudonymise
from clinaudit.validation.ingest_loop import BatchIngest

__all__ = [
    "AGE_BANDS",
    "PEDS_COLUMNS",
    "PedsImageTable",
    "age_band",
    "ingest_peds_batch",
    "load_peds_pixels",
    "parse_dicom_age",
]

_EXTENSIONS = (".png", ".dicom", ".dcm", ".jpg", ".jpeg")


class PedsImageTable(OutputSchema):
    """One ingested pediatric film per row; boxes normalised to [0, 1], NaN when absent."""

    batch: Series[str]
    image_id: Series[str] = pa.Field(unique=True)
    file: Series[str]
    image_sha256: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{64}$")
    patient: Series[str] = pa.Field(str_length={"min_value": 1})
    age_years: Series[float] = pa.Field(ge=0, le=MAX_AGE_YEARS)
    age_band: Series[str] = pa.Field(isin=list(AGE_BANDS))
    sex: Series[str] = pa.Field(isin=["M", "F", "U"])
    view: Series[str] = pa.Field(isin=["AP", "PA"])
    rows: Series[int] = pa.Field(gt=0)
    columns: Series[int] = pa.Field(gt=0)
    consolidation: Series[int] = pa.Field(isin=[0, 1])
    consolidation_x0: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    consolidation_y0: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    consolidation_x1: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    consolidation_y1: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    interstitial_opacity: Series[int] = pa.Field(isin=[0, 1])
    interstitial_opacity_x0: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    interstitial_opacity_y0: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    interstitial_opacity_x1: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    interstitial_opacity_y1: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    cardiomegaly: Series[int] = pa.Field(isin=[0, 1])
    cardiomegaly_x0: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    cardiomegaly_y0: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    cardiomegaly_x1: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    cardiomegaly_y1: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    effusion: Series[int] = pa.Field(isin=[0, 1])
    effusion_x0: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    effusion_y0: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    effusion_x1: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    effusion_y1: Series[float] = pa.Field(ge=0, le=1, nullable=True)

    class Config:
        ordered = True


#: Columns of :class:`PedsImageTable`, in order.
PEDS_COLUMNS: tuple[str, ...] = schema_columns(PedsImageTable)
_BOX_KEYS = ("x0", "y0", "x1", "y1")
assert PEDS_COLUMNS[11:] == tuple(
    col for c in PEDS_CATEGORIES for col in (c, *(f"{c}_{k}" for k in _BOX_KEYS))
), "PedsImageTable's category columns must follow PEDS_CATEGORIES"


def _structure_error(manifest: Manifest, file: str, check: str, message: str, fix: str):
    rec = QuarantineRecord(manifest.site, manifest.batch, file, None, None, check, message, fix)
    facts = {"content_hash": manifest.content_hash, "simulated": manifest.simulated}
    return BatchStructureError([rec], batch_facts=facts)


def _verified_bytes(manifest: Manifest, batch_dir: Path, name: str) -> bytes:
    entry = manifest.entry(name)
    if entry is None:
        raise _structure_error(
            manifest, name, "label_file_unlisted", f"{name} is not listed in manifest.json",
            f"upload {name} (VinDr-PCXR layout), then re-create manifest.json",
        )  # fmt: skip
    try:
        data = (batch_dir / name).read_bytes()
    except FileNotFoundError as err:
        raise _structure_error(
            manifest, name, "label_file_missing", f"{name} is listed in manifest.json but absent",
            f"upload {name}",
        ) from err  # fmt: skip
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256 or len(data) != entry.bytes:
        raise _structure_error(
            manifest, name, "hash_mismatch",
            f"{name} has {len(data)} bytes with sha256 {digest[:16]}..., manifest.json says "
            f"{entry.bytes} bytes with sha256 {entry.sha256[:16]}...",
            f"re-upload {name} (it changed after the manifest was written)",
        )  # fmt: skip
    return data


def _table(manifest: Manifest, batch_dir: Path, name: str, required: tuple[str, ...]) -> CsvTable:
    data = _verified_bytes(manifest, batch_dir, name)
    table, problem = read_csv_table(data, required)
    if problem is not None:
        raise _structure_error(manifest, name, "missing_column", *problem)
    return table


# Task: (image id, relative file or None, sha256, bytes, "check\0message\0fix" when unresolved)
_Task = tuple[str, str | None, str | None, int | None, str]
_Outcome = tuple[str, tuple[str, str, str] | None, tuple[str, int, int] | None]


def _check_image(batch_dir: Path, task: _Task, max_pixels: int) -> _Outcome:
    image_id, rel, want_sha, want_size, why = task
    if rel is None:
        check, message, fix = why.split("\0")
        return image_id, (check, message, fix), None
    try:
        data = (batch_dir / rel).read_bytes()
    except FileNotFoundError:
        return image_id, ("image_missing", "listed in manifest.json but absent", "upload it"), None
    digest = hashlib.sha256(data).hexdigest()
    if digest != want_sha or len(data) != want_size:
        return image_id, (
            "hash_mismatch",
            f"file has {len(data)} bytes with sha256 {digest[:16]}..., manifest.json says "
            f"{want_size} bytes with sha256 {str(want_sha)[:16]}...; it was not decoded",
            "re-upload the image (it was corrupted or changed after the manifest was written)",
        ), None  # fmt: skip
    try:
        img = decode_image(data, name=rel, max_pixels=max_pixels)
    except ImageDecodeError as err:
        return image_id, (err.check, err.message, err.fix), None
    return image_id, None, (digest, img.rows, img.cols)


def _check_chunk(args: tuple) -> list[_Outcome]:
    """Hash and decode a chunk of images, in order (process-pool entry point)."""
    batch_dir, tasks, max_pixels = args
    return [_check_image(Path(batch_dir), t, max_pixels) for t in tasks]


def _resolve(image_id: str, manifest: Manifest, batch_dir: Path) -> tuple[str | None, str]:
    if not image_id or any(c in image_id for c in "/\\") or ".." in image_id:
        return None, (
            f"image_id\0image id {image_id!r} is empty or not a plain file name\0"
            "give every image a plain id (its file name without extension)"
        )
    names = [f"images/{image_id}{ext}" for ext in _EXTENSIONS]
    for rel in names:
        if manifest.entry(rel) is not None:
            return rel, ""
    if any((batch_dir / rel).is_file() for rel in names):
        return None, (
            f"not_in_manifest\0image of {image_id!r} is not listed in manifest.json, so its "
            "integrity cannot be checked\0re-create manifest.json after every file is uploaded"
        )
    return None, (
        f"image_missing\0no images/{image_id}.png, .dicom or .dcm in the batch\0"
        "upload the image under images/, or remove its rows from the three CSVs"
    )


def _file_warnings(manifest: Manifest, batch_dir: Path, used: set[str], warn) -> None:
    ver = verify_batch(batch_dir, manifest, check_hashes=False)
    for f in sorted(set(ver.missing) - used):
        warn(f, None, "file_missing", "listed in manifest.json but absent", "upload the file")
    for f in sorted(set(ver.unlisted) - used):
        warn(f, None, "unlisted_file", "present but not listed in manifest.json",
             "re-create manifest.json")  # fmt: skip
    tables = {manifest.label_file, ANNOTATIONS_FILE, METADATA_FILE}
    listed = {e.path for e in manifest.files} - set(ver.missing) - tables
    for f in sorted(listed - used):
        warn(f, None, "image_unreferenced", "no metadata.csv row names this file",
             "add its metadata, label and box rows, or remove the file")  # fmt: skip


def _category_cells(boxes: list[list[float]] | None, rows: int, cols: int) -> list[float]:
    if not boxes:
        return [math.nan] * 4
    arr = np.asarray(boxes, dtype=float)[:, 1:]
    x0, y0 = arr[:, 0].min(), arr[:, 1].min()
    x1, y1 = arr[:, 2].max(), arr[:, 3].max()
    return [x0 / cols, y0 / rows, x1 / cols, y1 / rows]


def ingest_peds_batch(
    batch_dir: str | os.PathLike[str],
    *,
    pseudonym_key: bytes | None,
    workers: int = 1,
    max_pixels: int = 50_000_000,
) -> BatchIngest:
    """Verify, read and validate one landed ``peds_vqa`` batch (see the module docstring).

    Parameters
    ----------
    batch_dir : path
        ``<landing>/peds_vqa/<site>/<batch>`` (only ever read).
    pseudonym_key : bytes or None
        Key (>= 16 bytes) of the HMAC pseudonyms of ``patient``; ``None`` keeps the ids as
        landed (for data whose ids are already pseudonymous, such as VinDr-PCXR).
    workers : int
        Processes hashing and decoding images (1 = here); results do not depend on it.
    max_pixels : int
        Largest accepted rows x columns (decompression-bomb guard).

    Returns
    -------
    BatchIngest
        ``table`` (:class:`PedsImageTable`, sorted by ``image_id``), quarantine records, the
        manifest's content hash and simulated flag, and the number of metadata rows read.

    Raises
    ------
    LandingError
        No or malformed ``manifest.json``.
    BatchStructureError
        Wrong ``label_layout``; a CSV unlisted, absent, changed or missing required columns.

    Examples
    --------
    >>> res = ingest_peds_batch("var/landing/peds_vqa/childrens_hospital/b-0001",
    ...                         pseudonym_key=b"k" * 32)  # doctest: +SKIP
    >>> res.table[["image_id", "age_band", "effusion", "effusion_x0"]].head()  # doctest: +SKIP
    """
    batch_dir = Path(batch_dir)
    manifest = read_manifest(batch_dir)
    site, batch = manifest.site, manifest.batch
    if manifest.label_layout != LABEL_LAYOUT:
        raise _structure_error(
            manifest, "manifest.json", "label_layout",
            f"label_layout {manifest.label_layout!r} is not {LABEL_LAYOUT!r}",
            "land the batch under the study whose format it is, or use the VinDr-PCXR layout "
            "(clinaudit.sources.vindr_pcxr)",
        )  # fmt: skip
    labels = _table(manifest, batch_dir, manifest.label_file, ("image_id", "rad_id"))
    ann = _table(manifest, batch_dir, ANNOTATIONS_FILE, ANNOTATION_COLUMNS)
    meta = _table(manifest, batch_dir, METADATA_FILE, METADATA_COLUMNS)
    records: list[QuarantineRecord] = []
    failed: set[str] = set()

    def rec(image_id, file, line, column, check, message, fix) -> None:
        failed.add(image_id)
        records.append(QuarantineRecord(site, batch, file, line, column, check, message, fix))

    def warn(file, line, check, message, fix="remove the row, or add the image") -> None:
        records.append(
            QuarantineRecord(site, batch, file, line, None, check, message, fix, "warning")
        )

    images = read_metadata(meta, rec)
    ids = set(images)
    positives, with_column = read_labels(labels, ids, rec, warn)
    boxes = read_boxes(ann, ids, rec, warn)
    for c in sorted(set(PEDS_CATEGORIES) - set(with_column)):
        warn(manifest.label_file, None, "label_column_missing",
             f"no label column for {c}; its labels are taken from the boxes in annotations.csv",
             "add the label column (see clinaudit.sources.vindr_pcxr.CLASS_MAP)")  # fmt: skip
    tasks: list[_Task] = []
    for image_id in sorted(ids):
        rel, why = _resolve(image_id, manifest, batch_dir)
        entry = manifest.entry(rel) if rel else None
        tasks.append((image_id, rel, entry.sha256 if entry else None,
                      entry.bytes if entry else None, why))  # fmt: skip
    size = chunk_size(len(tasks), workers, largest=64)
    chunks = [(str(batch_dir), tasks[k : k + size], max_pixels) for k in range(0, len(tasks), size)]
    decoded: dict[str, tuple[str, int, int]] = {}
    for (image_id, failure, payload), task in zip(
        render_chunks(_check_chunk, chunks, workers), tasks, strict=True
    ):
        if failure is not None:
            rec(image_id, task[1] or f"images/{image_id}", images[image_id]["line"], None, *failure)
        else:
            decoded[image_id] = payload  # type: ignore[assignment]
    for image_id in sorted(ids):
        if image_id not in positives:
            rec(image_id, METADATA_FILE, images[image_id]["line"], None, "labels_missing",
                f"image {image_id!r} has no row in {manifest.label_file}",
                "add its label row (one per radiologist)")  # fmt: skip
            continue
        per_cat = boxes.get(image_id, {})
        if image_id in decoded:
            _, rows, cols = decoded[image_id]
            for c, items in per_cat.items():
                for line, x0, y0, x1, y1 in items:
                    if x0 < 0 or y0 < 0 or x1 > cols or y1 > rows:
                        rec(image_id, ANNOTATIONS_FILE, line, None, "box_outside_image",
                            f"{c} box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) leaves the "
                            f"{cols} x {rows} image", BOX_FIX)  # fmt: skip
        for c in sorted(with_column):
            labelled, boxed = c in positives[image_id]["pos"], c in per_cat
            if labelled != boxed:
                rec(image_id, manifest.label_file, positives[image_id]["line"], with_column[c],
                    "label_box_mismatch",
                    f"{c} is labelled {int(labelled)} but has {len(per_cat.get(c, []))} boxes",
                    "make the label and the boxes agree (a positive needs a box)")  # fmt: skip
    used = {t[1] for t in tasks if t[1]}
    _file_warnings(manifest, batch_dir, used, warn)

    out_rows = []
    for image_id in sorted(ids - failed):
        m, (digest, rows, cols) = images[image_id], decoded[image_id]
        per_cat = boxes.get(image_id, {})
        pos = positives[image_id]["pos"] | (set(per_cat) - set(with_column))
        cells: list[object] = []
        for c in PEDS_CATEGORIES:
            cells += [int(c in pos), *_category_cells(per_cat.get(c), rows, cols)]
        patient = str(m["patient"])
        if pseudonym_key is not None:
            patient = pseudonymise(patient, site=site, key=pseudonym_key)
        age = float(m["age"])  # type: ignore[arg-type]
        out_rows.append([batch, image_id, next(t[1] for t in tasks if t[0] == image_id),
                         digest, patient, age, age_band(age), m["sex"], m["view"], rows, cols,
                         *cells])  # fmt: skip
    out = pd.DataFrame(out_rows, columns=list(PEDS_COLUMNS))
    ints = {"rows": "int64", "columns": "int64", **{c: "int64" for c in PEDS_CATEGORIES}}
    floats = [col for col in PEDS_COLUMNS[11:] if col not in PEDS_CATEGORIES] + ["age_years"]
    out = out.astype({**ints, **{col: "float64" for col in floats}})
    records.sort(key=lambda r: (r.row is not None, r.row or 0, r.file, r.check))
    return BatchIngest(
        table=validate_table(out, PedsImageTable),
        quarantine=records_to_frame(records),
        content_hash=manifest.content_hash,
        simulated=manifest.simulated,
        n_rows_in=len(meta.rows),
    )


def load_peds_pixels(
    batch_dir: str | os.PathLike[str],
    file: str,
    size: int,
    *,
    max_pixels: int = 50_000_000,
    expected_sha256: str | None = None,
) -> np.ndarray:
    """Decode one ingested image and resize it for a model: float32 in [0, 1], (size, size).

    ``file`` is the table's ``file`` column (relative to ``batch_dir``). DICOM MONOCHROME1 is
    inverted and values are scaled by their bit depth as
    :func:`~clinaudit.sources.images.decode_image` does; the resize is
    :func:`~clinaudit.sources.images.resize_for_model` (antialiased, aspect not kept). With
    ``expected_sha256`` (the table's ``image_sha256``) the bytes must still be the ones ingest
    read.

    Raises
    ------
    ValueError
        ``file`` is absolute or leaves the batch directory, or its bytes changed since ingest.
    ImageDecodeError
        The image cannot be decoded.
    """
    rel = PurePosixPath(file)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"file={file!r} must be a path inside the batch directory")
    data = (Path(batch_dir) / rel).read_bytes()
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise ValueError(
                f"{Path(batch_dir) / rel}: sha256 {digest[:12]} differs from the ingested "
                f"{expected_sha256[:12]}; landed data was changed after ingest - re-land the "
                "batch as a new batch and re-materialize validated"
            )
    pixels = decode_image(data, name=str(rel), max_pixels=max_pixels).pixels
    return np.clip(resize_for_model(pixels, size), 0.0, 1.0)
