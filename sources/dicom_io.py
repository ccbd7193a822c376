"""Writing simulated chest radiographs as real DICOM Part 10 files (pydicom 3).

Files are DX (Digital X-Ray Image Storage - For Presentation) or CR (Computed Radiography Image
Storage) objects with file meta, Explicit VR Little Endian, deterministic UIDs and *synthetic*
patient identifiers (``SIM^PATIENT<id>``), so that downstream de-identification has something to
remove. Reading images back is ``sources/images.py``'s job; :func:`read_dicom_pixels` exists only
for round-trip tests of this writer.
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
_UID_NAMESPACE = uuid.UUID("6f1d2c5e-8a4b-5c3d-9e2f-0a1b2c3d4e5f")


def deterministic_uid(*parts: object) -> str:
    """A ``2.25.<uuid>`` UID derived only from ``parts`` (same parts, same UID).

    ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` ignores ``entropy_srcs`` and
    returns a random UUID in pydicom 3, so the name-based UUID (version 5, ISO/IEC 9834-8) is
    built here instead; parts are joined with a separator so ``("ab", "c")`` and ``("a", "bc")``
    differ.

    Examples
    --------
    >>> deterministic_uid("sop", 0, "site_a", 3) == deterministic_uid("sop", 0, "site_a", 3)
    True
    """
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


#: Fixed implementation UID of clinaudit's simulator.
IMPLEMENTATION_UID = deterministic_uid("clinaudit.sources.dicom_io", "implementation")
IMPLEMENTATION_VERSION = "CLINAUDIT_SIM01"


@dataclass(frozen=True)
class CxrDicomMeta:
    """Header values of one simulated chest radiograph.

    ``patient_age`` is in whole years and written as ``'058Y'``; ``pixel_spacing_mm`` is square;
    ``study_date`` is ``YYYYMMDD``.
    """

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    patient_name: str
    patient_sex: str
    patient_age: int
    view_position: str
    modality: str
    manufacturer: str
    model_name: str
    institution: str
    photometric: str
    bits_stored: int
    pixel_spacing_mm: float
    kvp: float
    study_date: str
    accession_number: str = ""
    series_number: int = 1
    instance_number: int = 1
    burned_in_annotation: bool = False


def _ds(value: float) -> str:
    text = f"{value:.6g}"
    if len(text) > 16:
        raise ValueError(f"decimal string {text!r} is longer than DICOM's 16 characters")
    return text


def _check(pixels: np.ndarray, meta: CxrDicomMeta) -> int:
    if pixels.ndim != 2:
        raise ValueError(
            f"write_cxr_dicom: pixels has shape {pixels.shape}, expected a 2-D (rows, columns) "
            "grayscale array"
        )
    bits_allocated = 8 if meta.bits_stored <= 8 else 16
    expected = np.uint8 if bits_allocated == 8 else np.uint16
    if pixels.dtype != expected:
        raise ValueError(
            f"write_cxr_dicom: pixels dtype {pixels.dtype} does not match bits_stored="
            f"{meta.bits_stored} (expected {np.dtype(expected).name}); cast the array"
        )
    top = int(pixels.max()) if pixels.size else 0
    if top > (1 << meta.bits_stored) - 1:
        raise ValueError(
            f"write_cxr_dicom: pixel value {top} exceeds bits_stored={meta.bits_stored} "
            f"(max {(1 << meta.bits_stored) - 1}); rescale or raise bits_stored"
        )
    if meta.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(
            f"write_cxr_dicom: photometric={meta.photometric!r}, expected MONOCHROME1/2"
        )
    if meta.modality not in ("DX", "CR"):
        raise ValueError(f"write_cxr_dicom: modality={meta.modality!r}, expected 'DX' or 'CR'")
    return bits_allocated


def write_cxr_dicom(
    path_or_buffer: str | os.PathLike[str] | BinaryIO | None,
    pixels: np.ndarray,
    meta: CxrDicomMeta,
) -> bytes | None:
    """Encode one chest radiograph as a DICOM Part 10 file.

    Parameters
    ----------
    path_or_buffer : path, binary file object or None
        Where to write; ``None`` returns the encoded bytes instead.
    pixels : numpy.ndarray
        ``(rows, columns)`` stored values: ``uint8`` when ``meta.bits_stored`` is 8, else
        ``uint16``; already inverted for MONOCHROME1.
    meta : CxrDicomMeta
        Header values.

    Returns
    -------
    bytes or None
        The file's bytes when ``path_or_buffer`` is None, else None.

    Examples
    --------
    >>> meta = CxrDicomMeta("2.25.1", "2.25.2", "2.25.3", "7", "SIM^PATIENT7", "F", 58, "PA",
    ...     "DX", "Acme", "DR1", "SIM", "MONOCHROME2", 12, 1.68, 120.0, "20170101")
    >>> data = write_cxr_dicom(None, np.zeros((8, 8), np.uint16), meta)
    >>> data[128:132]
    b'DICM'
    """
    bits_allocated = _check(pixels, meta)
    sop_class = DX_FOR_PRESENTATION if meta.modality == "DX" else CR_IMAGE_STORAGE
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = meta.sop_instance_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = IMPLEMENTATION_UID
    fm.ImplementationVersionName = IMPLEMENTATION_VERSION

    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.sop_instance_uid
    ds.StudyDate = meta.study_date
    ds.SeriesDate = meta.study_date
    ds.ContentDate = meta.study_date
    ds.StudyTime = "090000"
    ds.AccessionNumber = meta.accession_number
    ds.Modality = meta.modality
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = meta.manufacturer
    ds.InstitutionName = meta.institution
    ds.ManufacturerModelName = meta.model_name
    ds.BurnedInAnnotation = "YES" if meta.burned_in_annotation else "NO"
    ds.PatientName = meta.patient_name
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = meta.patient_sex
    ds.PatientAge = f"{int(meta.patient_age):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = _ds(meta.kvp)
    ds.ViewPosition = meta.view_position
    ds.StudyInstanceUID = meta.study_instance_uid
    ds.SeriesInstanceUID = meta.series_instance_uid
    ds.StudyID = meta.accession_number[-16:]
    ds.SeriesNumber = meta.series_number
    ds.InstanceNumber = meta.instance_number
    ds.PatientOrientation = ["R", "F"] if meta.view_position == "AP" else ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = meta.photometric
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    spacing = _ds(meta.pixel_spacing_mm)
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = meta.bits_stored
    ds.HighBit = meta.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PresentationLUTShape = "INVERSE" if meta.photometric == "MONOCHROME1" else "IDENTITY"
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    if path_or_buffer is None:
        return data
    if hasattr(path_or_buffer, "write"):
        path_or_buffer.write(data)  # type: ignore[union-attr]
    else:
        with open(path_or_buffer, "wb") as fh:
            fh.write(data)
    return None


def read_dicom_pixels(path: str | os.PathLike[str]) -> tuple[np.ndarray, Dataset]:
    """Stored pixel values and header of a file written by :func:`write_cxr_dicom` (tests only)."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array, ds
