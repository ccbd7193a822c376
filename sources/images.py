"""Decode chest X-ray images (DICOM, PNG, JPEG) into normalised grayscale arrays, safely.

:func:`decode_image` takes the file's bytes (the caller reads them once, hashes them, then decodes)
and returns a :class:`DecodedImage` whose ``pixels`` are float32, 2-D, in [0, 1] with MONOCHROME2
polarity (0 = black, 1 = white):

* DICOM: the stored values ``v`` are mapped linearly from the full stored range (``[0,
  2**BitsStored - 1]``, or ``[-2**(BitsStored-1), 2**(BitsStored-1) - 1]`` when
  PixelRepresentation is 1) to [0, 1]. RescaleSlope/RescaleIntercept are honoured: the modality
  values ``v * slope + intercept`` are mapped from *their* range, so the intercept cancels and a
  negative slope inverts the image. MONOCHROME1 is inverted. No VOI LUT/windowing is applied.
  Values outside the stored range (bits above BitsStored set) are an error, as are multi-frame
  images, SamplesPerPixel != 1 and photometric interpretations other than MONOCHROME1/2.
* PNG/JPEG: 8-bit (``L``), 16-bit (``I;16``/``I``) and 1-bit images are divided by their maximum
  code (255, 65535, 1). RGB/RGBA/palette files are accepted only when every pixel is gray (R = G =
  B, within 3 codes for lossy JPEG) and fully opaque; real colour is refused.

Decompression bombs are refused before any pixel data is decoded: DICOM by its declared Rows x
Columns x NumberOfFrames, PNG/JPEG by the header size (PIL's own DecompressionBombWarning/Error are
errors too). Every failure raises :class:`ImageDecodeError` with a machine-readable ``check``.
``meta`` holds only categorical acquisition metadata (:data:`META_KEYS`); no tag of
:data:`PHI_TAGS` is ever read into the result.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pydicom
from PIL import Image, ImageFile, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.uid import UncompressedTransferSyntaxes

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
_PIL_CORRUPT = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


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


def _err_text(err: BaseException) -> str:
    """``Type: message`` of an exception, without memory addresses (messages must be stable)."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(err))
    text = re.sub(r"<_io\.BytesIO object>", "the file's bytes", text)
    return f"{type(err).__name__}: {text}"


def _meta_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    # A caret is the DICOM person-name separator; keep categorical text free of that shape.
    return " ".join(str(value).replace("^", " ").split())[:64]


def _bomb(name: str, rows: int, cols: int, frames: int, max_pixels: int) -> ImageDecodeError:
    return ImageDecodeError(
        name,
        "decompression_bomb",
        f"declared size {rows} x {cols} x {frames} frame(s) = {rows * cols * frames} pixels "
        f"exceeds max_pixels={max_pixels}; the pixel data was not decoded",
        "send the image at its native radiograph resolution, or raise max_pixels if such sizes "
        "are expected",
    )


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
            f"decoded here ({_err_text(err)})",
            "export uncompressed (Explicit VR Little Endian) or install a pydicom decoder plugin "
            "such as pylibjpeg",
        ) from err
    except _DICOM_CORRUPT as err:
        raise ImageDecodeError(
            name,
            "corrupt_dicom",
            f"compressed pixel data cannot be decoded ({_err_text(err)})",
            "re-export or re-transfer the DICOM file",
        ) from err
    return np.asarray(arr)


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> DecodedImage:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        # Touch the header elements we use so a malformed element fails here, not later.
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    except _DICOM_CORRUPT as err:
        raise ImageDecodeError(
            name,
            "corrupt_dicom",
            f"the DICOM file cannot be parsed ({_err_text(err)})",
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
        raise _bomb(name, rows, cols, frames, max_pixels)
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


def _gray_from_channels(arr: np.ndarray, name: str, tol: int, mode: str) -> np.ndarray:
    """Gray values of an RGB/RGBA/LA array whose colour channels agree (within ``tol``)."""
    if arr.shape[-1] in (2, 4) and int(arr[..., -1].min()) != 255:
        raise ImageDecodeError(
            name,
            "photometric",
            f"{mode} image has transparent pixels (alpha < 255)",
            "export the radiograph as an opaque grayscale image",
        )
    if arr.shape[-1] == 2:
        return arr[..., 0]
    color = arr[..., :3].astype(np.int16)
    spread = int((color.max(axis=-1) - color.min(axis=-1)).max())
    if spread > tol:
        raise ImageDecodeError(
            name,
            "photometric",
            f"{mode} image is in colour (channels differ by up to {spread} codes); expected "
            "grayscale",
            "export the radiograph as a grayscale (mode L or 16-bit) image",
        )
    return color[..., 0] if tol == 0 else np.rint(color.mean(axis=-1))


_TRUNCATION_LOCK = threading.Lock()


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Refuse truncated files while decoding, whatever another library set process-wide.

    WeasyPrint sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` when it is imported (the report
    stage imports it), which would make PIL pad a truncated radiograph with grey instead of
    failing; the landed image must be refused instead.
    """
    with _TRUNCATION_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _decode_pil(data: bytes, name: str, max_pixels: int, fmt: ImageFormat) -> DecodedImage:
    pil_format = "PNG" if fmt == "png" else "JPEG"
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with _strict_truncation():
                im = Image.open(io.BytesIO(data), formats=[pil_format])
                cols, rows = im.size
                too_big = rows * cols > max_pixels
                if not too_big:
                    im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageDecodeError(
                name,
                "decompression_bomb",
                f"PIL refused the image as a decompression bomb ({_err_text(err)})",
                "send the image at its native radiograph resolution",
            ) from err
        except _PIL_CORRUPT as err:
            raise ImageDecodeError(
                name,
                "corrupt_image",
                f"the {pil_format} file cannot be decoded ({_err_text(err)})",
                f"re-export or re-transfer the {pil_format} file (it is truncated or corrupt)",
            ) from err
    if too_big:
        raise _bomb(name, rows, cols, 1, max_pixels)
    mode = im.mode
    if getattr(im, "n_frames", 1) != 1:
        raise ImageDecodeError(
            name,
            "image_dimensions",
            f"image has {im.n_frames} frames; expected one",
            "send each radiograph as its own single-frame file",
        )
    if mode == "L":
        bits, arr = 8, np.asarray(im)
    elif mode.startswith("I;16"):
        bits, arr = 16, np.asarray(im).astype(np.uint16)
    elif mode == "I":
        arr = np.asarray(im)
        if int(arr.min()) < 0 or int(arr.max()) > 65535:
            raise ImageDecodeError(
                name,
                "pixel_range",
                f"32-bit integer image spans [{int(arr.min())}, {int(arr.max())}], expected "
                "[0, 65535]",
                "export as 8- or 16-bit grayscale",
            )
        bits = 16
    elif mode == "1":
        bits, arr = 1, np.asarray(im).astype(np.uint8)
    elif mode in ("RGB", "RGBA", "LA", "P", "PA"):
        source = im.convert("RGBA") if mode in ("P", "PA") else im
        tol = 3 if fmt == "jpeg" else 0
        bits, arr = 8, _gray_from_channels(np.asarray(source), name, tol, mode)
    else:
        raise ImageDecodeError(
            name,
            "photometric",
            f"image mode {mode!r} is not grayscale",
            "export the radiograph as grayscale (8-bit L or 16-bit)",
        )
    pixels = arr.astype(np.float32) * np.float32(1.0 / (2**bits - 1))
    dpi = im.info.get("dpi")
    spacing = None
    if isinstance(dpi, tuple) and dpi and float(dpi[0]) > 0:
        spacing = 25.4 / float(dpi[0])
    meta = dict.fromkeys(META_KEYS, "")
    meta["PhotometricInterpretation"] = "MONOCHROME2"
    meta["BitsStored"] = str(bits)
    return DecodedImage(
        pixels=pixels,
        rows=int(pixels.shape[0]),
        cols=int(pixels.shape[1]),
        bits_stored=bits,
        photometric="MONOCHROME2",
        pixel_spacing_mm=spacing,
        format=fmt,
        meta=meta,
    )


def detect_format(data: bytes) -> ImageFormat | None:
    """The container format from the first bytes: DICOM (``DICM`` at 128), PNG or JPEG."""
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    return None


def decode_image(data: bytes, *, name: str, max_pixels: int = 50_000_000) -> DecodedImage:
    """Decode one image file's bytes into a normalised grayscale :class:`DecodedImage`.

    Parameters
    ----------
    data : bytes
        The whole file.
    name : str
        The file's name (relative path in the batch), used in errors.
    max_pixels : int
        Largest accepted Rows x Columns; larger images are refused before decoding.

    Returns
    -------
    DecodedImage

    Raises
    ------
    ImageDecodeError
        For an unknown format, a corrupt/truncated file, a decompression bomb, colour or
        multi-frame data, an unsupported photometric interpretation or bit depth, or stored values
        outside BitsStored (see ``ImageDecodeError.check``).

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("L", (4, 3), color=255).save(buf, format="PNG")
    >>> img = decode_image(buf.getvalue(), name="x.png")
    >>> img.pixels.shape, float(img.pixels.max()), img.format
    ((3, 4), 1.0, 'png')
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels={max_pixels} must be a positive number of pixels")
    fmt = detect_format(data)
    if fmt == "dicom":
        return _decode_dicom(data, name, max_pixels)
    if fmt in ("png", "jpeg"):
        return _decode_pil(data, name, max_pixels, fmt)
    kind = "DICOM (no 'DICM' marker at byte 128)" if name.lower().endswith(".dcm") else "image"
    raise ImageDecodeError(
        name,
        "corrupt_dicom" if name.lower().endswith(".dcm") else "image_format",
        f"the file is not a valid {kind}; expected DICOM Part 10, PNG or JPEG "
        f"({len(data)} bytes, starting {data[:8]!r})",
        "send DICOM Part 10 files (with preamble), PNG or JPEG",
    )


def resize_for_model(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D image to ``size x size`` with an antialiasing filter, as float32.

    Downscaling (both axes) uses area averaging (PIL ``BOX``); otherwise PIL's bilinear filter,
    which widens its support when it shrinks an axis (so it is antialiased too). The aspect ratio is
    not preserved: the whole image is mapped to the square, as NIH-style models expect.

    Parameters
    ----------
    pixels : ndarray
        2-D array (any real dtype), typically ``DecodedImage.pixels``.
    size : int
        Output side length in pixels (>= 1).

    Returns
    -------
    ndarray
        float32 array of shape ``(size, size)``.

    Examples
    --------
    >>> resize_for_model(np.ones((10, 20), np.float32), 4).shape
    (4, 4)
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"pixels must be a non-empty 2-D array, got shape {arr.shape}")
    if not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size={size!r} must be a positive integer")
    arr32 = np.ascontiguousarray(arr, dtype=np.float32)
    if arr32.shape == (size, size):
        return arr32.copy()
    down = arr32.shape[0] >= size and arr32.shape[1] >= size
    method = Image.Resampling.BOX if down else Image.Resampling.BILINEAR
    out = Image.fromarray(arr32).resize((int(size), int(size)), resample=method)
    return np.array(out, dtype=np.float32)
