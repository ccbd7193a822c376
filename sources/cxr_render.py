"""Procedural chest radiographs: anatomy, finding signatures and the site's acquisition chain.

:func:`render_cxr` draws a frontal chest film (float32 in [0, 1], MONOCHROME2 polarity: bright =
dense) from coordinate grids: body and soft tissue, two lung fields with vascular markings,
diaphragm domes with sharp costophrenic angles, mediastinum and heart (its width sets the
cardiothoracic ratio), spine, ribs, clavicles, gastric bubble and breast shadows. Each ChestX-ray14
finding adds its own visual signature scaled by a severity in (0, 1], so low-severity positives are
subtle. :func:`apply_acquisition` then turns the picture into what a site's detector stores:
resampling to the native matrix, exposure / contrast / gamma, detector blur, noise, collimation,
burned-in markers, bit depth and photometric interpretation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_sites import SiteProfile

#: Cardiothoracic ratio added by Cardiomegaly: ``CARDIO_CTR_BASE + CARDIO_CTR_PER_SEVERITY * s``.
CARDIO_CTR_BASE = 0.07
CARDIO_CTR_PER_SEVERITY = 0.12
#: Apparent heart magnification of a portable AP film (divergent beam, short distance).
AP_HEART_MAGNIFICATION = 1.12

_GLYPHS: dict[str, tuple[str, ...]] = {
    "A": ("01110", "10001", "10001", "11111", "10001", "10001", "10001"),
    "B": ("11110", "10001", "10001", "11110", "10001", "10001", "11110"),
    "E": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "I": ("11111", "00100", "00100", "00100", "00100", "00100", "11111"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "N": ("10001", "11001", "10101", "10011", "10001", "10001", "10001"),
    "O": ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
    "P": ("11110", "10001", "10001", "11110", "10000", "10000", "10000"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "S": ("01111", "10000", "10000", "01110", "00001", "00001", "11110"),
    "T": ("11111", "00100", "00100", "00100", "00100", "00100", "00100"),
    "U": ("10001", "10001", "10001", "10001", "10001", "10001", "01110"),
    " ": ("00000",) * 7,
}


@functools.lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate grids in [-1, 1]: x grows to the image right, y grows downwards."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field with about ``cells`` blobs per side."""
    small = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    field = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
    field = field - field.mean()
    return field / (field.std() + 1e-6)


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance ``d`` (positive inside), ramp ``width`` wide."""
    return np.clip(d * (1.0 / width), 0.0, 1.0)


def _blend(img: np.ndarray, target: float, alpha: np.ndarray) -> np.ndarray:
    """Move ``img`` towards ``target`` by ``alpha`` (0 keeps, 1 replaces)."""
    return img + alpha * (target - img)


def _disc(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float, edge: float) -> np.ndarray:
    return _ramp(r - np.sqrt((x - cx) ** 2 + (y - cy) ** 2), edge)


def _segment_distance(
    x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]
) -> np.ndarray:
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * dx + (y - p0[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.sqrt((x - p0[0] - t * dx) ** 2 + (y - p0[1] - t * dy) ** 2)


@dataclass(frozen=True)
class Anatomy:
    """Geometry drawn for one image (kept for tests and the truth sidecar)."""

    ctr: float
    heart_center_x: float
    heart_center_y: float
    heart_half_width: float
    thorax_half_width: float
    lung_half_width: float
    diaphragm_y: tuple[float, float]


def render_cxr(
    rng: np.random.Generator,
    *,
    findings: Mapping[str, float],
    age: float = 50.0,
    sex: str = "M",
    view: str = "PA",
    size: int = 256,
    return_anatomy: bool = False,
) -> np.ndarray | tuple[np.ndarray, Anatomy]:
    """Render one frontal chest radiograph.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all per-image variation (anatomy, finding placement, textures).
    findings : mapping of str to float
        Severity in (0, 1] per present finding (names from ``FINDINGS``); absent findings may be
        omitted or given 0.
    age : float
        Patient age in years (children: relatively larger heart; elderly: fainter bones).
    sex : {"M", "F"}
        Patient sex (breast shadows for "F").
    view : {"PA", "AP"}
        AP films magnify the heart by ``AP_HEART_MAGNIFICATION`` and raise the clavicles.
    size : int
        Output matrix (square).
    return_anatomy : bool
        Also return the :class:`Anatomy` that was drawn.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` float32 in [0, 1], MONOCHROME2 polarity; with ``return_anatomy`` a tuple
        ``(image, Anatomy)``.

    Examples
    --------
    >>> img = render_cxr(np.random.default_rng(0), findings={"Effusion": 0.8}, size=64)
    >>> img.shape, img.dtype
    ((64, 64), dtype('float32'))
    """
    unknown = sorted(set(findings) - set(FINDINGS))
    if unknown:
        raise ValueError(
            f"render_cxr: unknown findings {unknown}; expected names from FINDINGS {list(FINDINGS)}"
        )
    if view not in ("PA", "AP"):
        raise ValueError(f"render_cxr: view={view!r}, expected 'PA' or 'AP'")
    if sex not in ("M", "F"):
        raise ValueError(f"render_cxr: sex={sex!r}, expected 'M' or 'F'")
    if size < 32:
        raise ValueError(f"render_cxr: size={size}, expected >= 32 pixels")
    sev = {f: float(s) for f, s in findings.items() if s > 0}
    s_emph = sev.get("Emphysema", 0.0)
    s_atel = sev.get("Atelectasis", 0.0)
    s_fib = sev.get("Fibrosis", 0.0)
    ap = view == "AP"

    # Positioning: small shift and scale of the patient in the field.
    gx, gy = _grid(size)
    sc = float(1.0 + 0.03 * rng.standard_normal())
    x = (gx - 0.02 * float(rng.standard_normal())) / sc
    y = (gy - 0.02 * float(rng.standard_normal())) / sc

    # Body habitus, thorax and lungs.
    tw = 0.80 * float(np.clip(1.0 + 0.04 * rng.standard_normal(), 0.9, 1.1)) * (1.0 + 0.06 * s_emph)
    if age < 15:
        tw *= 0.92
    lung_a = 0.27 * tw / 0.8
    lung_cx = 0.36 * tw / 0.8
    y_top = -0.62 - 0.04 * s_emph + (0.03 if ap else 0.0)
    base = 0.43 + 0.03 * float(rng.standard_normal()) + 0.09 * s_emph - 0.05 * s_fib
    dome_h = 0.13 * (1.0 - 0.75 * s_emph)
    atel_side = int(rng.integers(0, 2)) * 2 - 1
    body_w = tw + 0.13
    ax = np.abs(x)
    neck = np.clip((y + 1.0) / 0.35, 0.0, 1.0)
    half_w = 0.28 + (body_w - 0.28) * np.sqrt(neck)
    body = _ramp(half_w - ax, 0.03)
    img = 0.04 + body * (0.50 - 0.14 * (ax / body_w) ** 2)
    img += 0.03 * body * _smooth_noise(rng, size, 4)

    markings = _smooth_noise(rng, size, 24) * (1.0 - 0.8 * s_emph)
    lung_total = np.zeros_like(img)
    lung_depth = 0.30 * (1.0 + 0.5 * s_emph)
    side_geom: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}
    diaphragm: list[float] = []
    for side in (-1, 1):  # -1: image left = patient right lung
        cx = side * lung_cx
        raise_d = 0.04 if side == -1 else 0.0
        if s_atel > 0 and side == atel_side:
            raise_d += 0.05 + 0.08 * s_atel
        y_base = base - raise_d
        diaphragm.append(y_base - dome_h)
        a_y = lung_a * np.sqrt(np.clip((y - y_top) / 0.35, 0.0, 1.0))
        u = (x - cx) / lung_a
        d_lat = a_y - np.abs(x - cx)
        d_bot = y_base - dome_h * (1.0 - np.minimum(u * u, 1.0)) - y
        d_top = y - y_top
        m = _ramp(np.minimum(np.minimum(d_lat, d_bot), d_top), 0.025)
        lung_total = np.maximum(lung_total, m)
        side_geom[side] = (m, d_lat, d_bot, y_base)
    hilar = np.exp(-((ax - 0.2) ** 2 + (y + 0.02) ** 2) / 0.08)
    texture = 0.045 * (0.4 + hilar) * markings

    # Pneumothorax: peripheral rim without markings, pleural line.
    ptx_region = np.zeros_like(img)
    pleural_line = np.zeros_like(img)
    s_ptx = sev.get("Pneumothorax", 0.0)
    if s_ptx:
        side = int(rng.integers(0, 2)) * 2 - 1
        m, d_lat, _, _ = side_geom[side]
        w = 0.03 + 0.11 * s_ptx
        lateral = np.clip((side * (x - side * lung_cx)) / lung_a + 0.6, 0.0, 1.0)
        d_edge = np.minimum(d_lat, y - y_top + 0.02)
        ptx_region = m * _ramp(w - d_edge, 0.008) * lateral
        pleural_line = m * np.exp(-(((d_edge - w) / 0.007) ** 2)) * lateral
    img = img - lung_depth * lung_total + texture * lung_total * (1.0 - ptx_region)
    img = img - 0.07 * ptx_region + 0.09 * pleural_line

    # Abdomen below the domes and the gastric bubble (under the left hemidiaphragm, image right).
    img += 0.04 * body * _ramp(y - (base + 0.05), 0.1)
    img -= 0.08 * _disc(x, y, lung_cx + 0.02, base + 0.05, 0.06, 0.02)

    # Mediastinum, heart, spine.
    ctr = float(np.clip(0.45 + 0.03 * rng.standard_normal(), 0.36, 0.52))
    if age < 15:
        ctr += 0.03
    elif age > 70:
        ctr += 0.02
    ctr -= 0.04 * s_emph
    s_card = sev.get("Cardiomegaly", 0.0)
    if s_card:
        ctr += CARDIO_CTR_BASE + CARDIO_CTR_PER_SEVERITY * s_card
    thorax_inner = 2.0 * (lung_cx + lung_a)
    hw = 0.5 * ctr * thorax_inner * (AP_HEART_MAGNIFICATION if ap else 1.0)
    hx = 0.07 + 0.4 * (hw - 0.28)
    hy = base - 0.24
    hh = 0.25 * math.sqrt(hw / 0.28)
    heart = _ramp(1.0 - ((x - hx) / hw) ** 2 - ((y - hy) / hh) ** 2, 0.12)
    mediast = _ramp(0.085 - np.abs(x - 0.01), 0.02) * _ramp(y + 0.85, 0.05)
    img = _blend(img, 0.60, np.maximum(heart, mediast) * 0.92)
    bone = 0.08 if age < 65 else 0.055
    img += 0.6 * bone * _ramp(0.045 - ax, 0.01) * (0.75 + 0.25 * np.cos(2 * np.pi * y / 0.09))

    # Ribs (posterior arcs), clavicles, breast shadows.
    curv = 0.22 if ap else 0.32
    phase = (y - curv * (ax - 0.45) ** 2 + 0.3 * ax) / (0.13 + 0.03 * (y + 1.0))
    ribs = np.clip(np.cos(2 * np.pi * phase + float(rng.uniform(0, 6.28))), 0.0, 1.0) ** 3
    thorax = _ramp(tw - ax, 0.04) * _ramp(y + 0.8, 0.05) * _ramp(base + 0.08 - y, 0.05)
    img += bone * ribs * thorax * _ramp(ax - 0.06, 0.03)
    cy = -0.70 if ap else -0.62
    for side in (-1, 1):
        d = _segment_distance(x, y, (side * 0.06, cy), (side * 0.55 * tw / 0.8, cy - 0.08))
        img += 1.4 * bone * _ramp(0.028 - d, 0.01)
    if sex == "F" and age >= 15:
        for side in (-1, 1):
            img += 0.05 * _ramp(0.26 - np.hypot(x - side * 0.48, (y - 0.35) * 1.2), 0.05)

    # ---- findings -------------------------------------------------------------------------
    s = sev.get("Effusion", 0.0)
    if s:
        pick = rng.random()
        sides = (-1,) if pick < 0.45 else (1,) if pick < 0.7 else (-1, 1)
        for side in sides:
            m, d_lat, d_bot, y_base = side_geom[side]
            lat = np.clip(side * (x - side * lung_cx) / lung_a * 0.5 + 0.5, 0.0, 1.0)
            y_m = y_base - (0.08 + 0.30 * s) - 0.10 * s * lat
            region = _ramp(y - y_m, 0.04) * _ramp(d_lat + 0.03, 0.03) * _ramp(d_bot + 0.12, 0.06)
            img = _blend(img, 0.56, region * (0.55 + 0.4 * s))
    s = sev.get("Atelectasis", 0.0)
    if s:
        m, _, _, y_base = side_geom[atel_side]
        cx = atel_side * lung_cx
        yc = y_base - 0.22 * float(rng.uniform(0.6, 1.2))
        tilt = float(rng.uniform(-0.08, 0.08))
        d = _segment_distance(x, y, (cx - 0.7 * lung_a, yc + tilt), (cx + 0.7 * lung_a, yc - tilt))
        img = _blend(img, 0.55, m * _ramp(0.012 + 0.025 * s - d, 0.01) * (0.5 + 0.4 * s))
    s = sev.get("Infiltration", 0.0)
    if s:
        patches = np.clip(_smooth_noise(rng, size, 10) - (1.1 - 0.9 * s), 0.0, 1.0)
        weight = lung_total * (0.6 + 0.4 * np.clip((y + 0.3) / 0.6, 0.0, 1.0))
        img = _blend(img, 0.52, weight * np.minimum(patches * (0.6 + 0.6 * s), 0.75))
    s = sev.get("Consolidation", 0.0)
    if s:
        side = int(rng.integers(0, 2)) * 2 - 1
        m, _, _, y_base = side_geom[side]
        if rng.random() < 0.4:
            lobe = _ramp(-0.08 + 0.1 * (x - side * lung_cx) - y, 0.015)  # upper lobe
        else:
            lobe = _ramp(y - (y_base - 0.35 - 0.15 * s), 0.015)  # lower lobe
        bronchi = np.exp(-((_smooth_noise(rng, size, 14) / 0.12) ** 2))
        dense = m * lobe * (0.55 + 0.4 * s) * (1.0 - 0.35 * bronchi)
        img = _blend(img, 0.58, dense)
    s = sev.get("Pneumonia", 0.0)
    if s:
        side_w = (1.0, 0.3) if rng.random() < 0.5 else (0.3, 1.0)
        weight = side_w[0] * side_geom[-1][0] + side_w[1] * side_geom[1][0]
        lower = np.clip((y - 0.0) / 0.3, 0.0, 1.0)
        patches = np.clip(_smooth_noise(rng, size, 8) - (0.8 - 0.7 * s), 0.0, 1.0)
        img = _blend(img, 0.56, weight * lower * np.minimum(patches * (0.9 + 0.5 * s), 0.85))
    s = sev.get("Mass", 0.0)
    if s:
        side = int(rng.integers(0, 2)) * 2 - 1
        r = 0.085 + 0.07 * s
        mx = side * lung_cx + float(rng.uniform(-0.4, 0.4)) * lung_a
        my = float(rng.uniform(-0.3, 0.15))
        theta = np.arctan2(y - my, x - mx)
        rr = r * (1.0 + 0.1 * np.cos(3 * theta + float(rng.uniform(0, 6.28))))
        blob = _ramp(rr - np.hypot(x - mx, y - my), 0.02)
        img = _blend(img, 0.58, blob * (0.55 + 0.35 * s))
    s = sev.get("Nodule", 0.0)
    if s:
        for _ in range(int(rng.integers(1, 4))):
            side = int(rng.integers(0, 2)) * 2 - 1
            nx = side * lung_cx + float(rng.uniform(-0.6, 0.6)) * lung_a
            ny = float(rng.uniform(-0.45, 0.25))
            r = 0.025 + 0.03 * s
            img = _blend(img, 0.6, _disc(x, y, nx, ny, r, 0.006) * (0.45 + 0.4 * s))
    s = sev.get("Edema", 0.0)
    if s:
        haze = np.exp(-((ax - 0.22) ** 2 / 0.03 + (y - 0.02) ** 2 / 0.06))
        img = _blend(img, 0.52, lung_total * haze * (0.35 + 0.45 * s))
        for side in (-1, 1):
            m, d_lat, _, _ = side_geom[side]
            lines = np.clip(np.cos(2 * np.pi * y / 0.035) - 0.75, 0.0, 0.25) * 4.0
            band = _ramp(0.07 - d_lat, 0.01) * np.clip((y - 0.05) / 0.15, 0.0, 1.0)
            img += (0.05 + 0.08 * s) * m * band * lines
    s = sev.get("Fibrosis", 0.0)
    if s:
        net = np.clip(1.0 - np.abs(_smooth_noise(rng, size, 30)) * 3.0, 0.0, 1.0)
        for side in (-1, 1):
            m, d_lat, _, _ = side_geom[side]
            periph = np.clip(1.0 - d_lat / 0.15, 0.0, 1.0) * np.clip((y + 0.2) / 0.6, 0.0, 1.0)
            img += (0.12 + 0.18 * s) * m * periph * net
    s = sev.get("Pleural_Thickening", 0.0)
    if s:
        side = int(rng.integers(0, 2)) * 2 - 1
        _, d_lat, d_bot, _ = side_geom[side]
        t = 0.03 + 0.045 * s
        if rng.random() < 0.6:  # lateral pleura, mid and lower zones
            band = _ramp(t - d_lat, 0.008) * _ramp(d_lat + 0.01, 0.008)
            band = band * _ramp(d_bot, 0.02) * _ramp(y + 0.45, 0.05)
        else:  # apical cap
            d_top = y - y_top
            band = _ramp(t - d_top, 0.008) * _ramp(d_top + 0.01, 0.008) * _ramp(d_lat, 0.02)
        img = _blend(img, 0.55, band * (0.6 + 0.3 * s))
    s = sev.get("Hernia", 0.0)
    if s:
        r = 0.07 + 0.05 * s
        hcx = hx + float(rng.uniform(-0.06, 0.06))
        hcy = hy + float(rng.uniform(0.0, 0.08))
        disc = _disc(x, y, hcx, hcy, r, 0.01)
        level = hcy + float(rng.uniform(-0.2, 0.3)) * r
        air = disc * (y < level)
        img = img - (0.18 + 0.14 * s) * air + 0.05 * disc * np.exp(-(((y - level) / 0.006) ** 2))
        img += 0.05 * _ramp(0.008 - np.abs(np.hypot(x - hcx, y - hcy) - r), 0.006)

    out = np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)
    if not return_anatomy:
        return out
    anatomy = Anatomy(
        ctr=ctr * (AP_HEART_MAGNIFICATION if ap else 1.0),
        heart_center_x=hx,
        heart_center_y=hy,
        heart_half_width=hw,
        thorax_half_width=tw,
        lung_half_width=lung_a,
        diaphragm_y=(diaphragm[0], diaphragm[1]),
    )
    return out, anatomy


@dataclass(frozen=True)
class Acquisition:
    """What the acquisition chain did to one image (tags to write and values for the sidecar)."""

    rows: int
    columns: int
    pixel_spacing_mm: float
    photometric: str
    bits_stored: int
    bits_allocated: int
    kvp: float
    brightness: float
    contrast: float
    gamma: float
    noise_sd: float
    blur_px: float
    collimated: bool
    marker: str


def _stamp_text(img: np.ndarray, text: str, corner: str, value: float) -> None:
    n = img.shape[0]
    k = max(1, n // 110)
    glyphs = [_GLYPHS[c] for c in text.upper() if c in _GLYPHS]
    bitmap = np.concatenate(
        [np.array([[c == "1" for c in row] + [False] for row in g], dtype=bool) for g in glyphs],
        axis=1,
    )
    bitmap = np.kron(bitmap, np.ones((k, k), dtype=bool))
    h, w = bitmap.shape
    w = min(w, n - 4 * k)
    bitmap = bitmap[:, :w]
    r0 = 3 * k if corner[0] == "t" else n - 3 * k - h
    c0 = 3 * k if corner[1] == "l" else n - 3 * k - w
    region = img[r0 : r0 + h, c0 : c0 + w]
    region[bitmap] = value


def apply_acquisition(
    img: np.ndarray,
    rng: np.random.Generator,
    profile: SiteProfile,
    *,
    native_px: int,
    view: str = "PA",
) -> tuple[np.ndarray, Acquisition]:
    """Turn a rendered film into the stored pixel array of ``profile``'s detector.

    Steps: resample to ``native_px`` (antialiased bilinear); gamma, contrast and brightness (each
    jittered per image; AP films lose some contrast); Gaussian detector blur of
    ``profile.blur_mm``; additive noise (x1.3 on AP films); collimation borders; burned-in marker
    text (white in MONOCHROME2); quantisation to ``bits_stored``; inversion for MONOCHROME1.

    Parameters
    ----------
    img : numpy.ndarray
        Square float image in [0, 1], MONOCHROME2 polarity (from :func:`render_cxr`).
    rng : numpy.random.Generator
        Per-image randomness.
    profile : SiteProfile
        The site's acquisition parameters.
    native_px : int
        Rows and columns of the stored matrix.
    view : {"PA", "AP"}
        View position (AP films are noisier, lower contrast, marked "PORTABLE").

    Returns
    -------
    (numpy.ndarray, Acquisition)
        ``uint8`` (8-bit) or ``uint16`` array of values in ``[0, 2**bits_stored - 1]`` and the
        record of what was applied.

    Examples
    --------
    >>> from clinaudit.sources.cxr_sites import DEFAULT_SITES
    >>> rng = np.random.default_rng(0)
    >>> px, acq = apply_acquisition(np.full((64, 64), 0.4, np.float32), rng,
    ...                             DEFAULT_SITES["site_c"], native_px=48)
    >>> px.shape, px.dtype, acq.photometric
    ((48, 48), dtype('uint16'), 'MONOCHROME1')
    """
    if img.ndim != 2 or img.shape[0] != img.shape[1]:
        raise ValueError(f"apply_acquisition: expected a square 2-D image, got shape {img.shape}")
    if native_px < 16:
        raise ValueError(f"apply_acquisition: native_px={native_px}, expected >= 16")
    ap = view == "AP"
    x = img.astype(np.float32, copy=False)
    if x.shape[0] != native_px:
        x = np.asarray(Image.fromarray(x).resize((native_px, native_px), Image.Resampling.BILINEAR))
    gamma = float(profile.gamma * math.exp(profile.gamma_jitter * rng.standard_normal()))
    contrast = float(profile.contrast * (1.0 + profile.contrast_jitter * rng.standard_normal()))
    if ap:
        contrast *= 0.9
    brightness = float(profile.brightness + profile.brightness_jitter * rng.standard_normal())
    x = np.power(np.clip(x, 0.0, 1.0), gamma)
    x = 0.5 + contrast * (x - 0.5) + brightness
    spacing = round(profile.field_of_view_mm / native_px, 5)
    blur_px = profile.blur_mm / spacing
    if blur_px > 0.3:
        x = ndimage.gaussian_filter(x, blur_px, mode="nearest", truncate=3.0)
    noise_sd = profile.noise_sd * (1.3 if ap else 1.0)
    x = x + noise_sd * rng.standard_normal(x.shape, dtype=np.float32)
    collimated = bool(rng.random() < profile.collimation_prob)
    if collimated:
        b = (rng.uniform(0.03, 0.09, size=4) * native_px).astype(int)
        x[: b[0]] = profile.collimation_value
        x[native_px - b[1] :] = profile.collimation_value
        x[:, : b[2]] = profile.collimation_value
        x[:, native_px - b[3] :] = profile.collimation_value
    marker = ""
    if rng.random() < profile.marker_prob:
        marker = "PORTABLE" if ap else ("L" if rng.random() < 0.5 else "R")
        corner = ("tr", "tl", "br", "bl")[int(rng.integers(0, 4))]
        _stamp_text(x, marker, corner, 1.0)
        if ap:
            _stamp_text(x, "L", "tl" if corner != "tl" else "tr", 1.0)
    maxval = (1 << profile.bits_stored) - 1
    stored = np.rint(np.clip(x, 0.0, 1.0) * maxval)
    if profile.photometric == "MONOCHROME1":
        stored = maxval - stored
    dtype = np.uint8 if profile.bits_allocated == 8 else np.uint16
    lo, hi = profile.kvp
    kvp = float(round(rng.uniform(lo, hi) - (10.0 if ap else 0.0)))
    acq = Acquisition(
        rows=native_px,
        columns=native_px,
        pixel_spacing_mm=spacing,
        photometric=profile.photometric,
        bits_stored=profile.bits_stored,
        bits_allocated=profile.bits_allocated,
        kvp=kvp,
        brightness=round(brightness, 6),
        contrast=round(contrast, 6),
        gamma=round(gamma, 6),
        noise_sd=round(noise_sd, 6),
        blur_px=round(blur_px, 6),
        collimated=collimated,
        marker=marker,
    )
    return stored.astype(dtype), acq
