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

DICOM decoding lives in :mod:`clinaudit.sources.dicom_decode`, the shared result and error types
in :mod:`clinaudit.sources.image_types`; import them from here.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from clinaudit.sources.dicom_decode import decode_dicom
from clinaudit.sources.image_types import (
    META_KEYS,
    PHI_TAGS,
    DecodedImage,
    ImageDecodeError,
    ImageFormat,
    bomb_error,
    err_text,
)

__all__ = [
    "META_KEYS",
    "PHI_TAGS",
    "DecodedImage",
    "ImageDecodeError",
    "ImageFormat",
    "decode_image",
    "detect_format",
    "open_pil_image",
    "resize_for_model",
]

_PIL_CORRUPT = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


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


def open_pil_image(
    data: bytes, *, name: str, fmt: ImageFormat, max_pixels: int, unit: str, resend: str
) -> tuple[Image.Image, int, int, bool]:
    """Open PNG / JPEG bytes with PIL under the decoders' guards.

    Returns ``(image, cols, rows, too_big)``: when ``too_big`` (width x height over
    ``max_pixels``, read from the header) no pixel was decoded and the caller raises its
    ``decompression_bomb`` error.

    Shared by the radiograph and the photo decoders: truncated files are errors whatever another
    library set process-wide, PIL's own bomb guard is an error, and an image must have one
    frame. ``unit`` ("radiograph", "photo") and ``resend`` (the fix of a bomb) word the errors.

    Raises
    ------
    ImageDecodeError
        ``decompression_bomb``, ``corrupt_image`` or ``image_dimensions`` (several frames).
    """
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
                f"PIL refused the image as a decompression bomb ({err_text(err)})",
                resend,
            ) from err
        except _PIL_CORRUPT as err:
            raise ImageDecodeError(
                name,
                "corrupt_image",
                f"the {pil_format} file cannot be decoded ({err_text(err)})",
                f"re-export or re-transfer the {pil_format} file (it is truncated or corrupt)",
            ) from err
    if not too_big and getattr(im, "n_frames", 1) != 1:
        raise ImageDecodeError(
            name,
            "image_dimensions",
            f"image has {im.n_frames} frames; expected one",
            f"send each {unit} as its own single-frame file",
        )
    return im, cols, rows, too_big


def _decode_pil(data: bytes, name: str, max_pixels: int, fmt: ImageFormat) -> DecodedImage:
    im, cols, rows, too_big = open_pil_image(
        data, name=name, fmt=fmt, max_pixels=max_pixels, unit="radiograph",
        resend="send the image at its native radiograph resolution",
    )  # fmt: skip
    if too_big:
        raise bomb_error(name, rows, cols, 1, max_pixels)
    mode = im.mode
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
        return decode_dicom(data, name, max_pixels)
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
