"""Decode colour photos (PNG, JPEG) into RGB arrays, safely.

The colour counterpart of :func:`clinaudit.sources.images.decode_image` (which refuses colour):
the format comes from the bytes, not the name; decompression bombs are refused from the header
before any pixel is decoded; truncated files are errors whatever another library set
process-wide; every failure is an :class:`~clinaudit.sources.images.ImageDecodeError` with a
machine-readable ``check``.
"""

from __future__ import annotations

import numpy as np

from clinaudit.sources.image_types import ImageDecodeError

# The same guards as the grayscale decoder (one lock for PIL's process-wide truncation flag).
from clinaudit.sources.images import detect_format, open_pil_image

__all__ = ["decode_rgb"]


def decode_rgb(data: bytes, *, name: str, max_pixels: int = 50_000_000) -> np.ndarray:
    """Decode one PNG or JPEG photo's bytes into an ``(H, W, 3)`` uint8 sRGB array.

    RGB is taken as is; palette images and fully opaque RGBA are converted. Grayscale, CMYK,
    16-bit and transparent images are refused (``photometric``): a skin photo is 8-bit colour.

    Parameters
    ----------
    data : bytes
        The whole file.
    name : str
        The file's name in the batch (used in errors).
    max_pixels : int
        Largest accepted width x height, checked from the header before decoding.

    Returns
    -------
    ndarray
        uint8 array of shape ``(height, width, 3)``.

    Raises
    ------
    ImageDecodeError
        ``image_format``, ``corrupt_image``, ``decompression_bomb``, ``image_dimensions``
        (several frames) or ``photometric``.

    Examples
    --------
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (5, 4), (200, 150, 120)).save(buf, format="PNG")
    >>> decode_rgb(buf.getvalue(), name="x.png").shape
    (4, 5, 3)
    """
    fmt = detect_format(data)
    if fmt not in ("png", "jpeg"):
        raise ImageDecodeError(
            name,
            "image_format",
            f"the file is not a PNG or JPEG photo ({len(data)} bytes, starting {data[:8]!r})",
            "send the photo as PNG or JPEG",
        )
    im, width, height, too_big = open_pil_image(
        data, name=name, fmt=fmt, max_pixels=max_pixels, unit="photo",
        resend="send the photo at its camera resolution",
    )  # fmt: skip
    if too_big:
        raise ImageDecodeError(
            name,
            "decompression_bomb",
            f"declared size {width} x {height} = {width * height} pixels exceeds "
            f"max_pixels={max_pixels}; the pixel data was not decoded",
            "send the photo at its camera resolution, or raise max_pixels",
        )
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        alpha = np.asarray(im)[..., 3]
        if int(alpha.min()) != 255:
            raise ImageDecodeError(
                name,
                "photometric",
                "photo has transparent pixels (alpha < 255)",
                "export the photo as opaque RGB",
            )
        im = im.convert("RGB")
    if im.mode != "RGB":
        raise ImageDecodeError(
            name,
            "photometric",
            f"image mode {im.mode!r} is not 8-bit RGB colour (grayscale, CMYK and 16-bit photos "
            "cannot show skin tone)",
            "export the photo as 8-bit sRGB colour (PNG or JPEG)",
        )
    return np.asarray(im, dtype=np.uint8)
