"""Image-quality features of a decoded radiograph (inputs to site drift and quality checks).

All features are computed on ``DecodedImage.pixels`` (float32 in [0, 1], MONOCHROME2):

``mean_intensity``
    Mean pixel value.
``contrast``
    Standard deviation of the pixel values (RMS contrast).
``entropy``
    Shannon entropy in bits of the 256-bin histogram over [0, 1] (0 for a flat image, at most 8).
``sharpness``
    Variance of the 4-neighbour Laplacian computed at a fixed analysis resolution: the image is
    first resized to ``ANALYSIS_SIZE x ANALYSIS_SIZE`` (area averaging, see
    ``clinaudit.sources.images.resize_for_model``), so images of different pixel counts are
    compared at the same scale and native resolution does not dominate.
``noise_sigma``
    Robust noise standard deviation at native resolution (Immerkaer 1996): the image is filtered
    with the 3x3 mask ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` (the difference of two Laplacians, which
    cancels smooth anatomy and has gain 6 on white noise), and sigma = MAD(residual) / 0.6745 / 6,
    the median making it insensitive to edges. Above 16,384 pixels the residual is evaluated on a
    regular sub-grid of at most ~16k centres (deterministic, ~1% precision for white noise).
``clipped_fraction``
    Share of pixels within 1e-3 of 0 or 1 (saturated or burnt-out regions).
``dynamic_range``
    99th minus 1st percentile of the pixel values.
``pixel_spacing_mm``
    From the header (NaN if unknown).
``rows``, ``cols``
    Native size in pixels.

Vectorised numpy; about 3 ms for a 512 x 512 image on one core.
"""

from __future__ import annotations

import math

import numpy as np

from clinaudit.sources.images import DecodedImage, resize_for_model

QUALITY_FEATURES: tuple[str, ...] = (
    "mean_intensity",
    "contrast",
    "entropy",
    "sharpness",
    "noise_sigma",
    "clipped_fraction",
    "dynamic_range",
    "pixel_spacing_mm",
    "rows",
    "cols",
)
#: Side length of the resolution at which ``sharpness`` is measured.
ANALYSIS_SIZE = 256
_CLIP_TOL = 1e-3
_PCT_BINS = 4096
_NOISE_SAMPLES = 16_384


def _percentiles(pixels: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Percentiles from a 4096-bin histogram (exact to 1/4096 of the range, O(n))."""
    codes = np.minimum((pixels * _PCT_BINS).astype(np.int32), _PCT_BINS - 1).ravel()
    cdf = np.cumsum(np.bincount(codes, minlength=_PCT_BINS))
    n = cdf[-1]
    out = []
    for q in qs:
        k = int(np.searchsorted(cdf, q / 100.0 * n, side="left"))
        out.append((k + 0.5) / _PCT_BINS)
    return out


def _laplacian_variance(small: np.ndarray) -> float:
    lap = (
        small[:-2, 1:-1]
        + small[2:, 1:-1]
        + small[1:-1, :-2]
        + small[1:-1, 2:]
        - 4.0 * small[1:-1, 1:-1]
    )
    return float(lap.var(dtype=np.float64))


def _immerkaer_sigma(pixels: np.ndarray) -> float:
    h, w = pixels.shape
    if h < 3 or w < 3:
        return math.nan
    # Residuals on a regular grid of at most ~_NOISE_SAMPLES centres (all of them for small
    # images): deterministic, ~1% precision for white noise, and cheap on large images.
    step = max(1, math.isqrt((h - 2) * (w - 2) // _NOISE_SAMPLES))

    def at(di: int, dj: int) -> np.ndarray:
        return pixels[di : h - 2 + di : step, dj : w - 2 + dj : step]

    # The mask [[1,-2,1],[-2,4,-2],[1,-2,1]] = [1,-2,1]^T [1,-2,1].
    resid = (
        (at(0, 0) - 2.0 * at(0, 1) + at(0, 2))
        - 2.0 * (at(1, 0) - 2.0 * at(1, 1) + at(1, 2))
        + (at(2, 0) - 2.0 * at(2, 1) + at(2, 2))
    )
    return float(np.median(np.abs(resid))) / 0.6745 / 6.0


def quality_features(img: DecodedImage) -> dict[str, float]:
    """Image-quality features of a decoded image (definitions in the module docstring).

    Parameters
    ----------
    img : DecodedImage
        A decoded image (``pixels`` float32 in [0, 1]).

    Returns
    -------
    dict of str to float
        One value per name of :data:`QUALITY_FEATURES`, in that order.

    Examples
    --------
    >>> from clinaudit.sources.images import DecodedImage
    >>> px = np.full((64, 64), 0.25, np.float32)
    >>> f = quality_features(DecodedImage(px, 64, 64, 8, "MONOCHROME2", None, "png"))
    >>> f["mean_intensity"], f["contrast"], f["entropy"]
    (0.25, 0.0, 0.0)
    """
    pixels = np.asarray(img.pixels, dtype=np.float32)
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"img.pixels must be a non-empty 2-D array, got shape {pixels.shape}")
    mean = float(pixels.mean(dtype=np.float64))
    contrast = float(pixels.std(dtype=np.float64))
    codes = np.minimum((pixels * 256).astype(np.int32), 255).ravel()
    hist = np.bincount(codes, minlength=256).astype(np.float64)
    p = hist[hist > 0] / pixels.size
    entropy = float(-(p * np.log2(p)).sum()) + 0.0
    small = resize_for_model(pixels, ANALYSIS_SIZE)
    p1, p99 = _percentiles(pixels, (1.0, 99.0))
    clipped = float(np.count_nonzero((pixels <= _CLIP_TOL) | (pixels >= 1.0 - _CLIP_TOL)))
    spacing = img.pixel_spacing_mm
    return {
        "mean_intensity": mean,
        "contrast": contrast,
        "entropy": entropy,
        "sharpness": _laplacian_variance(small),
        "noise_sigma": _immerkaer_sigma(pixels),
        "clipped_fraction": clipped / pixels.size,
        "dynamic_range": max(p99 - p1, 0.0),
        "pixel_spacing_mm": math.nan if spacing is None else float(spacing),
        "rows": float(pixels.shape[0]),
        "cols": float(pixels.shape[1]),
    }
