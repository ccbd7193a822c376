"""DICOM decoding for :func:`clinaudit.sources.images.decode_image` (see its module docstring for
the value mapping, polarity and refusals); :func:`decode_dicom` is the DICOM branch."""

from __future__ import annotations

import io
import math

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UncompressedTransferSyntaxes

from clinaudit.sources.image_types import (
    META_KEYS,
    DecodedImage,
    ImageDecodeError,
    bomb_error,
    err_text,
)

_DICOM_CORRUPT = (
    InvalidDicomError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    OverflowError,
    IndexError,
)


def _meta_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    # A caret is the DICOM person-name separator; keep categorical text free of that shape.
    return " ".join(str(value).replace("^", " ").split())[:64]


def _spacing(ds: pydicom.Dataset, name: str) -> float | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        items = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
        try:
            nums = [float(v) for v in items]
        except (TypeError, ValueError) as err:
            raise ImageDecodeError(
                name,
                "dicom_header",
                f"{keyword} {value!r} is not numeric ({err})",
                f"write {keyword} as two decimal strings in mm, e.g. 0.143\\0.143",
            ) from err
        if not nums or not all(math.isfinite(v) and v > 0 for v in nums):
            raise ImageDecodeError(
                name,
                "dicom_header",
                f"{keyword} {value!r} is not a pair of positive numbers",
                f"write {keyword} as two positive spacings in mm, e.g. 0.143\\0.143",
            )
        return float(np.mean(nums))
    return None


def _int_tag(ds: pydicom.Dataset, keyword: str, name: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        raise ImageDecodeError(
            name,
            "dicom_header",
            f"required DICOM attribute {keyword} is missing",
            f"export the image with {keyword} set (DICOM image pixel module)",
        )
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise ImageDecodeError(
            name,
            "dicom_header",
            f"DICOM attribute {keyword}={value!r} is not an integer",
            f"export the image with a valid {keyword}",
        ) from err


def _stored_values(
    ds: pydicom.Dataset, name: str, rows: int, cols: int, bits_alloc: int, signed: bool
) -> np.ndarray:
    """Stored pixel values as a (rows, cols) integer array, without changing any bit."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or syntax in UncompressedTransferSyntaxes:
        if bits_alloc not in (8, 16):
            raise ImageDecodeError(
                name,
                "bit_depth",
                f"BitsAllocated={bits_alloc} is not supported (8 or 16)",
                "export grayscale radiographs with 8 or 16 bits allocated",
            )
        raw = ds.get("PixelData")
        if raw is None:
            raise ImageDecodeError(
                name,
                "corrupt_dicom",
                "the file has no PixelData element",
                "export the image with its pixel data",
            )
        nbytes = rows * cols * bits_alloc // 8
        if len(raw) < nbytes:
            raise ImageDecodeError(
                name,
                "corrupt_dicom",
                f"pixel data is truncated: {len(raw)} bytes, expected {nbytes} for {rows} x {cols}"
                f" x {bits_alloc} bits",
                "re-export or re-transfer the DICOM file (it was cut short)",
            )
        big = syntax == pydicom.uid.ExplicitVRBigEndian
        dtype = np.dtype(f"{'>' if big else '<'}{'i' if signed else 'u'}{bits_alloc // 8}")
        return np.frombuffer(raw, dtype=dtype, count=rows * cols).reshape(rows, cols)
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError, ImportError) as err:
        raise ImageDecodeError(
            name,
            "dicom_transfer_syntax",
            f"pixel data in transfer syntax {syntax} ({getattr(syntax, 'name', '')}) cannot be "
            f"decoded here ({err_text(err)})",
            "export uncompressed (Explicit VR Little Endian) or install a pydicom decoder plugin "
            "such as pylibjpeg",
        ) from err
    except _DICOM_CORRUPT as err:
        raise ImageDecodeError(
            name,
            "corrupt_dicom",
            f"compressed pixel data cannot be decoded ({err_text(err)})",
            "re-export or re-transfer the DICOM file",
        ) from err
    return np.asarray(arr)


def decode_dicom(data: bytes, name: str, max_pixels: int) -> DecodedImage:
    """Decode one DICOM file's bytes (``name`` for messages); refuse more than ``max_pixels``.

    Raises
    ------
    ImageDecodeError
        For every file that cannot be used, with the check that failed and the fix.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        # Touch the header elements we use so a malformed element fails here, not later.
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    except _DICOM_CORRUPT as err:
        raise ImageDecodeError(
            name,
            "corrupt_dicom",
            f"the DICOM file cannot be parsed ({err_text(err)})",
            "re-export or re-transfer the DICOM file (it is truncated or not DICOM)",
        ) from err
    if "PixelData" not in ds:
        raise ImageDecodeError(
            name,
            "corrupt_dicom",
            "the file has no PixelData element (truncated or not an image)",
            "re-export or re-transfer the DICOM file with its pixel data",
        )
    rows = _int_tag(ds, "Rows", name)
    cols = _int_tag(ds, "Columns", name)
    frames = _int_tag(ds, "NumberOfFrames", name, default=1)
    if rows <= 0 or cols <= 0:
        raise ImageDecodeError(
            name,
            "image_dimensions",
            f"declared size {rows} x {cols} is empty",
            "export the image with its real Rows and Columns",
        )
    if rows * cols * max(frames, 1) > max_pixels:
        raise bomb_error(name, rows, cols, frames, max_pixels)
    if frames != 1:
        raise ImageDecodeError(
            name,
            "image_dimensions",
            f"NumberOfFrames={frames}: expected one 2-D frame",
            "send each radiograph as its own single-frame DICOM file",
        )
    samples = _int_tag(ds, "SamplesPerPixel", name, default=1)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageDecodeError(
            name,
            "photometric",
            f"PhotometricInterpretation={photometric or '<missing>'!r} with SamplesPerPixel="
            f"{samples}: expected grayscale MONOCHROME1 or MONOCHROME2 with 1 sample per pixel",
            "export the radiograph as grayscale (MONOCHROME2), not colour or palette",
        )
    bits_alloc = _int_tag(ds, "BitsAllocated", name)
    bits = _int_tag(ds, "BitsStored", name, default=bits_alloc)
    if not 1 <= bits <= bits_alloc:
        raise ImageDecodeError(
            name,
            "bit_depth",
            f"BitsStored={bits} is not within 1..BitsAllocated={bits_alloc}",
            "export the image with consistent BitsStored/BitsAllocated",
        )
    signed = _int_tag(ds, "PixelRepresentation", name, default=0) == 1
    stored = _stored_values(ds, name, rows, cols, bits_alloc, signed)
    if stored.ndim != 2 or stored.shape != (rows, cols):
        raise ImageDecodeError(
            name,
            "image_dimensions",
            f"decoded pixel array has shape {stored.shape}, expected ({rows}, {cols})",
            "export a single-frame grayscale image",
        )
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    vmin, vmax = int(stored.min()), int(stored.max())
    if vmin < lo or vmax > hi:
        raise ImageDecodeError(
            name,
            "pixel_range",
            f"stored values span [{vmin}, {vmax}] but BitsStored={bits} allows [{lo}, {hi}]",
            "export with BitsStored matching the data (or clear the unused high bits)",
        )
    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    except (TypeError, ValueError) as err:
        raise ImageDecodeError(
            name,
            "dicom_header",
            f"RescaleSlope={ds.get('RescaleSlope')!r} is not numeric",
            "write RescaleSlope as a decimal number",
        ) from err
    pixels = (stored.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    # A negative rescale slope and MONOCHROME1 each flip the polarity.
    if (slope < 0) != (photometric == "MONOCHROME1"):
        pixels = np.float32(1.0) - pixels
    meta = {key: _meta_text(ds.get(key)) for key in META_KEYS}
    meta["PhotometricInterpretation"] = photometric
    meta["BitsStored"] = str(bits)
    return DecodedImage(
        pixels=pixels,
        rows=rows,
        cols=cols,
        bits_stored=bits,
        photometric=photometric,
        pixel_spacing_mm=_spacing(ds, name),
        format="dicom",
        meta=meta,
    )
