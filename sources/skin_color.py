"""Skin colour from pixels: sRGB <-> linear light, CIELAB, and the Individual Typology Angle.

The Individual Typology Angle (ITA, Chardon et al. 1991) is a colorimetric skin-tone measure::

    ITA = arctan((L* - 50) / b*) * 180 / pi        (degrees; CIELAB, D65 white)

Lighter skin has a larger angle. Chardon's classes are very light > 55, light 41-55,
intermediate 28-41, tan 10-28, brown -30-10 and dark < -30 degrees; studies of skin-tone bias
(e.g. Fitzpatrick17k, Groh et al. 2021) use the ITA computed from the *skin* pixels of a photo as
a cross-check of annotated Fitzpatrick types, which is what :func:`ita_degrees` is for.

A user's photo has no skin mask; :func:`peripheral_skin_mask` gives a simple one (the outer band
of the frame, without the black field of a dermoscope or the darkest pixels of a lesion or hair
that reach into it). It is a heuristic, stated as such wherever its ITA is reported.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "D65_WHITE",
    "ita_degrees",
    "lab_from_linear",
    "lab_from_srgb",
    "linear_from_srgb",
    "peripheral_skin_mask",
    "srgb8_from_linear",
    "srgb_from_linear",
]

#: D65 reference white (X, Y, Z) of CIELAB.
D65_WHITE: tuple[float, float, float] = (0.95047, 1.0, 1.08883)
#: Linear sRGB (D65) to CIE XYZ.
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_EPS = 216.0 / 24389.0
_KAPPA = 24389.0 / 27.0


def linear_from_srgb(srgb: np.ndarray) -> np.ndarray:
    """Linear light (0-1) from sRGB-encoded values in 0-1 (the IEC 61966-2-1 transfer curve)."""
    v = np.asarray(srgb, dtype=np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def srgb_from_linear(linear: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in 0-1 from linear light (clipped to 0-1 first)."""
    v = np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1.0 / 2.4) - 0.055)


_LUT_STEPS = 65535
#: 8-bit sRGB code of each of 65,536 evenly spaced linear values (the encoder of a camera).
_ENCODE_LUT = np.rint(srgb_from_linear(np.arange(_LUT_STEPS + 1) / _LUT_STEPS) * 255).astype(
    np.uint8
)
#: Linear value of each 8-bit sRGB code.
_DECODE_LUT = linear_from_srgb(np.arange(256) / 255.0)


def srgb8_from_linear(linear: np.ndarray) -> np.ndarray:
    """8-bit sRGB codes of linear light (clipped to 0-1; quantised to 1/65535 first)."""
    v = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)
    return _ENCODE_LUT[np.rint(v * np.float32(_LUT_STEPS)).astype(np.uint16)]


def lab_from_linear(linear: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of linear sRGB values; the last axis holds R, G, B."""
    xyz = np.asarray(linear, dtype=np.float64) @ _RGB_TO_XYZ.T
    t = xyz / np.asarray(D65_WHITE)
    f = np.where(t > _EPS, np.cbrt(t), (_KAPPA * t + 16.0) / 116.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_from_srgb(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of an sRGB image: uint8 (0-255) or float (0-1); the last axis is R, G, B."""
    arr = np.asarray(rgb)
    if arr.dtype == np.uint8:
        return lab_from_linear(_DECODE_LUT[arr])
    return lab_from_linear(linear_from_srgb(arr.astype(np.float64)))


def ita_degrees(rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Individual Typology Angle (degrees) of the skin pixels of an sRGB image.

    ITA = arctan((L* - 50) / b*) * 180 / pi of the *median* L* and b* over the masked pixels
    (medians resist stray lesion or hair pixels). ``arctan2`` keeps the angle defined when b* is
    near 0.

    Parameters
    ----------
    rgb : ndarray
        ``(H, W, 3)`` sRGB image, uint8 or float in 0-1.
    mask : ndarray of bool, optional
        ``(H, W)`` skin pixels; default: every pixel.

    Returns
    -------
    float
        The angle in degrees (NaN when the mask selects no pixel).

    Examples
    --------
    >>> light = np.full((4, 4, 3), (233, 200, 180), np.uint8)
    >>> dark = np.full((4, 4, 3), (100, 68, 50), np.uint8)
    >>> ita_degrees(light) > 41 > ita_degrees(dark)
    True
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"rgb must be an (H, W, 3) image, got shape {arr.shape}")
    if mask is None:
        pixels = arr.reshape(-1, 3)
    else:
        m = np.asarray(mask, dtype=bool)
        if m.shape != arr.shape[:2]:
            raise ValueError(f"mask shape {m.shape} does not match the image's {arr.shape[:2]}")
        pixels = arr[m]
    if len(pixels) == 0:
        return float("nan")
    lab = lab_from_srgb(pixels)
    lightness, b_star = float(np.median(lab[:, 0])), float(np.median(lab[:, 2]))
    return float(np.degrees(np.arctan2(lightness - 50.0, b_star)))


def peripheral_skin_mask(
    rgb: np.ndarray, *, inner: float = 0.55, dark_l: float = 8.0, drop_darkest: float = 0.3
) -> np.ndarray:
    """Heuristic skin pixels of a lesion photo: the outer band of the frame, minus dark outliers.

    Keeps pixels farther than ``inner`` (a fraction of half the shorter side) from the centre,
    drops near-black pixels (L* < ``dark_l``: a dermoscope's black field, vignetting)
    and then the darkest ``drop_darkest`` share of what is left (lesion edges, hair, shadow).

    Parameters
    ----------
    rgb : ndarray
        ``(H, W, 3)`` sRGB image (uint8 or float 0-1).
    inner : float
        Radius (fraction of half the shorter side) inside which the lesion is assumed to lie.
    dark_l : float
        L* below which a pixel is treated as outside the field of view.
    drop_darkest : float
        Share (0-1) of the remaining pixels, by L*, to drop.

    Returns
    -------
    ndarray of bool
        ``(H, W)`` mask (may be all False for an image with no bright periphery).
    """
    arr = np.asarray(rgb)
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    half = min(h, w) / 2.0
    rho = np.hypot((yy + 0.5 - h / 2.0) / half, (xx + 0.5 - w / 2.0) / half)
    lightness = lab_from_srgb(arr)[..., 0]
    mask = (rho > inner) & (lightness >= dark_l)
    if mask.sum() < 8:
        return mask
    cut = np.quantile(lightness[mask], drop_darkest)
    return mask & (lightness >= cut)
