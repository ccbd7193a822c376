"""Tiny chest X-ray batches for the ingest tests, written with pydicom / Pillow in the real formats.

Independent of the simulator on purpose: these helpers write exactly what a test needs (and the
corruptions it checks) and the manifest with ``clinaudit.sources.landing.write_manifest``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.landing import write_manifest
from clinaudit.sources.nih_labels import NIH_COLUMNS

PATIENT_NAME = "DOE^JANE"
CREATED = "2024-01-01T00:00:00Z"
#: The real file's header: its 11 columns and the empty name of its trailing comma.
NIH_HEADER = [*NIH_COLUMNS, ""]


def phantom(rng: np.random.Generator, rows: int, cols: int, noise: float = 0.02) -> np.ndarray:
    """A smooth chest-like float image in [0, 1]: two dark lungs in a bright body plus noise."""
    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    body = 0.75 - 0.25 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    lungs = np.exp(-(((x - 0.3) / 0.12) ** 2 + ((y - 0.5) / 0.25) ** 2))
    lungs += np.exp(-(((x - 0.7) / 0.12) ** 2 + ((y - 0.5) / 0.25) ** 2))
    img = body - 0.45 * lungs + noise * rng.standard_normal((rows, cols))
    return np.clip(img, 0.0, 1.0)


def dicom_bytes(
    stored: np.ndarray,
    *,
    bits_stored: int = 12,
    bits_allocated: int = 16,
    photometric: str = "MONOCHROME2",
    patient_name: str = PATIENT_NAME,
    patient_id: str = "MRN00001",
    spacing: tuple[float, float] | None = (0.2, 0.2),
    samples: int = 1,
    slope: float | None = None,
    intercept: float | None = None,
) -> bytes:
    """An uncompressed DICOM Part 10 file holding ``stored`` (integer array) as-is."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id, str(stored.sum())])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19500101"
    ds.Modality = "DX"
    ds.Manufacturer = "ACME Imaging"
    ds.ManufacturerModelName = "RadMax 3000"
    ds.ViewPosition = "PA"
    ds.KVP = "120"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    if spacing is not None:
        ds.ImagerPixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
    if slope is not None:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept or 0:g}"
    dtype = np.uint16 if bits_allocated == 16 else np.uint8
    ds.PixelData = np.ascontiguousarray(stored, dtype=dtype).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    """PNG bytes of a uint8 (mode L), uint16 (16-bit) or HxWx3 uint8 (RGB) array."""
    buf = io.BytesIO()
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(buf, format="PNG")
    return buf.getvalue()


def nih_row(
    image: str,
    labels: str = "No Finding",
    *,
    follow: str = "0",
    patient: str = "MRN00001",
    age: str = "58",
    sex: str = "M",
    view: str = "PA",
) -> list[str]:
    """One NIH Data_Entry row (with the real file's trailing empty field)."""
    return [image, labels, follow, patient, age, sex, view, "2500", "2048", "0.143", "0.143", ""]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Write a CSV with '\\n' line ends."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def nih_batch(
    root: Path,
    *,
    site: str = "site_a",
    batch: str = "b1",
    n: int = 4,
    fmt: str = "dicom",
    size: int = 64,
    seed: int = 0,
    split: dict[str, str] | None = None,
    manifest: bool = True,
) -> Path:
    """An NIH-layout batch of ``n`` images; patient ``k // 2 + 1`` owns images ``k``."""
    rng = np.random.default_rng(seed)
    d = root / "cxr" / site / batch
    (d / "images").mkdir(parents=True)
    rows = []
    for k in range(n):
        patient = f"MRN{k // 2 + 1:05d}"
        ext = "dcm" if fmt == "dicom" else "png"
        name = f"{k:08d}_000.{ext}"
        img = phantom(rng, size, size)
        if fmt == "dicom":
            data = dicom_bytes(np.rint(img * 4095).astype(np.uint16), patient_id=patient)
        else:
            data = png_bytes(np.rint(img * 255).astype(np.uint8))
        (d / "images" / name).write_bytes(data)
        finding = "No Finding" if k % 3 == 0 else f"{FINDINGS[k % 14]}|{FINDINGS[(k + 5) % 14]}"
        rows.append(nih_row(name, finding, follow=str(k % 2), patient=patient, age=str(30 + k)))
    write_csv(d / "labels.csv", NIH_HEADER, rows)
    if split is not None:
        for fname, want in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
            (d / fname).write_text("".join(f"{i}\n" for i, s in split.items() if s == want))
    if manifest:
        make_manifest(d)
    return d


def make_manifest(d: Path, layout: str = "nih") -> Path:
    """Write ``manifest.json`` for the batch directory ``d`` (``<root>/cxr/<site>/<batch>``)."""
    return write_manifest(
        d,
        study="cxr",
        site=d.parent.name,
        batch=d.name,
        label_layout=layout,
        simulated=True,
        created_utc=CREATED,
    )


def tree_hashes(root: Path) -> dict[str, tuple[str, float]]:
    """sha256 and mtime of every file under ``root`` (to prove nothing was modified)."""
    out = {}
    for base, _dirs, files in os.walk(root):
        for name in files:
            p = Path(base) / name
            out[p.relative_to(root).as_posix()] = (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                p.stat().st_mtime,
            )
    return out
