"""What image decoding returns and how it fails: :class:`DecodedImage`, :class:`ImageDecodeError`,
and the DICOM keywords that may (:data:`META_KEYS`) and may never (:data:`PHI_TAGS`) be kept.

Shared by the format decoders (:mod:`clinaudit.sources.dicom_decode` and the PNG/JPEG decoder in
:mod:`clinaudit.sources.images`); import these names from :mod:`clinaudit.sources.images`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

ImageFormat = Literal["dicom", "png", "jpeg"]

#: DICOM keywords that identify a person (subset of the DICOM PS3.15 basic de-identification
#: profile relevant to chest radiographs). None of them is copied into :class:`DecodedImage`.
PHI_TAGS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MedicalRecordLocator",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "StationName",
    "DeviceSerialNumber",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)

#: Categorical metadata kept from DICOM headers (``""`` when absent or for PNG/JPEG).
META_KEYS: tuple[str, ...] = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "ViewPosition",
    "KVP",
    "PhotometricInterpretation",
    "BitsStored",
)
assert not set(META_KEYS) & set(PHI_TAGS)


class ImageDecodeError(ValueError):
    """An image that cannot be used, with the file, the failed check and the fix.

    Attributes
    ----------
    file : str
        The image's name (relative path in the batch).
    check : str
        Machine name of the failed check: ``image_format``, ``corrupt_dicom``, ``corrupt_image``,
        ``decompression_bomb``, ``dicom_transfer_syntax``, ``dicom_header``, ``image_dimensions``,
        ``photometric``, ``bit_depth`` or ``pixel_range``.
    message, fix : str
        What is wrong, and how to fix it at the source.
    """

    def __init__(self, file: str, check: str, message: str, fix: str) -> None:
        self.file = file
        self.check = check
        self.message = message
        self.fix = fix
        super().__init__(f"{file}: {message}. Fix: {fix}")


@dataclass(frozen=True)
class DecodedImage:
    """A decoded grayscale image.

    Attributes
    ----------
    pixels : ndarray
        float32, shape (rows, cols), values in [0, 1], MONOCHROME2 polarity.
    rows, cols : int
        Image size in pixels.
    bits_stored : int
        Bits per pixel of the stored values (DICOM BitsStored; 8/16/1 for PNG/JPEG).
    photometric : str
        Photometric interpretation of the *source* (``MONOCHROME1``/``MONOCHROME2``; PNG/JPEG
        report ``MONOCHROME2``).
    pixel_spacing_mm : float or None
        Mean of PixelSpacing (else ImagerPixelSpacing) row/column spacing in mm; PNG/JPEG: from
        the file's dpi when present; ``None`` when unknown.
    format : {"dicom", "png", "jpeg"}
        Container format, detected from the bytes (not the file name).
    meta : dict of str to str
        The :data:`META_KEYS` (``""`` when absent). Never holds a :data:`PHI_TAGS` value.
    """

    pixels: np.ndarray
    rows: int
    cols: int
    bits_stored: int
    photometric: str
    pixel_spacing_mm: float | None
    format: ImageFormat
    meta: dict[str, str] = field(default_factory=dict)


def err_text(err: BaseException) -> str:
    """``Type: message`` of an exception, without memory addresses (messages must be stable)."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(err))
    text = re.sub(r"<_io\.BytesIO object>", "the file's bytes", text)
    return f"{type(err).__name__}: {text}"


def bomb_error(name: str, rows: int, cols: int, frames: int, max_pixels: int) -> ImageDecodeError:
    return ImageDecodeError(
        name,
        "decompression_bomb",
        f"declared size {rows} x {cols} x {frames} frame(s) = {rows * cols * frames} pixels "
        f"exceeds max_pixels={max_pixels}; the pixel data was not decoded",
        "send the image at its native radiograph resolution, or raise max_pixels if such sizes "
        "are expected",
    )
