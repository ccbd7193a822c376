"""Procedural pediatric chest radiographs (ages 0-10) with ground-truth masks of each finding.

Children are not small adults on a chest film, and a model checked on adult films says little
about them. :func:`render_peds_cxr` draws a frontal film (float32 in [0, 1], MONOCHROME2: bright =
dense) with the anatomy that changes with age:

* a larger cardiothoracic ratio: about 0.58 at birth falling to about 0.50 by 10 years
  (:func:`normal_ctr`), and AP films (most infants) magnify the heart a little more;
* the thymus under about 3 years: a "sail" widening the upper mediastinum to one side;
* a rounder, shorter thorax with near-horizontal ribs in infants that slope with age;
* no breast shadows.

Four findings (:data:`PEDS_CATEGORIES`) each add a signature scaled by a severity in (0, 1], so
low-severity positives are subtle and most others are visible at 64 x 64 pixels:
``consolidation`` (a dense lobar or segmental opacity with air bronchograms, one side),
``interstitial_opacity`` (streaky peribronchovascular opacity radiating from both hila),
``cardiomegaly`` (CTR above the age norm by ``CARDIO_CTR_BASE + CARDIO_CTR_PER_SEVERITY * s``) and
``effusion`` (a meniscus blunting the costophrenic angle, usually one side). The boolean mask of
each present finding is returned with the image (cardiomegaly: the heart silhouette); boxes in the
simulated annotations are drawn from these masks.

Generic drawing helpers (coordinate grid, smooth noise, soft ramps) come from
:mod:`~clinaudit.sources.cxr_render`; the detector chain is its :func:`apply_acquisition`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from clinaudit.sources.cxr_render import (
    _blend,
    _disc,
    _grid,
    _ramp,
    _segment_distance,
    _smooth_noise,
)

__all__ = [
    "CARDIO_CTR_BASE",
    "CARDIO_CTR_PER_SEVERITY",
    "MAX_AGE_YEARS",
    "PEDS_AP_MAGNIFICATION",
    "PEDS_CATEGORIES",
    "PedsAnatomy",
    "normal_ctr",
    "render_peds_cxr",
    "sample_peds_anatomy",
    "thymus_probability",
]

#: The study's yes/no questions, one per category.
PEDS_CATEGORIES: tuple[str, ...] = (
    "consolidation",
    "interstitial_opacity",
    "cardiomegaly",
    "effusion",
)
#: Oldest age the renderer draws (years).
MAX_AGE_YEARS = 10.0
#: CTR added by cardiomegaly of severity ``s``: ``CARDIO_CTR_BASE + CARDIO_CTR_PER_SEVERITY * s``.
CARDIO_CTR_BASE = 0.04
CARDIO_CTR_PER_SEVERITY = 0.12
#: Apparent heart magnification of an AP film (a child's chest is thin, so less than an adult's).
PEDS_AP_MAGNIFICATION = 1.05
#: A finding's soft weight at or above this fraction of its peak is inside its mask.
_MASK_LEVEL = 0.35


def normal_ctr(age_years: float) -> float:
    """Mean cardiothoracic ratio of a healthy child on a PA film: 0.58 at birth to 0.50 at 10 y.

    Examples
    --------
    >>> round(normal_ctr(0.0), 2), round(normal_ctr(10.0), 2)
    (0.58, 0.5)
    """
    a = min(max(float(age_years), 0.0), MAX_AGE_YEARS)
    return 0.58 - 0.08 * math.sqrt(a / MAX_AGE_YEARS)


def thymus_probability(age_years: float) -> float:
    """Chance that the thymus widens the mediastinum visibly: 0.9 at birth, 0 from 3 years."""
    return max(0.0, 0.9 * (1.0 - float(age_years) / 3.0))


@dataclass(frozen=True)
class PedsAnatomy:
    """Geometry of one pediatric film (drawn by :func:`sample_peds_anatomy`, kept as truth).

    ``ctr`` is the apparent cardiothoracic ratio on the film (AP magnification and cardiomegaly
    included); ``ctr_normal`` the age norm it is compared with. ``thymus`` is the sail's
    prominence (0 = not visible) and ``thymus_side`` -1 (image left) or +1. Coordinates are in
    the renderer's [-1, 1] frame (x to the image right, y downwards).
    """

    age_years: float
    view: str
    ctr: float
    ctr_normal: float
    thymus: float
    thymus_side: int
    thorax_half_width: float
    lung_center_x: float
    lung_half_width: float
    lung_top_y: float
    lung_base_y: float
    dome_height: float
    rib_slope: float
    heart_center_x: float
    heart_center_y: float
    heart_half_width: float
    heart_half_height: float


def _check_inputs(findings: Mapping[str, float], age_years: float, sex: str, view: str) -> None:
    unknown = sorted(set(findings) - set(PEDS_CATEGORIES))
    if unknown:
        raise ValueError(
            f"render_peds_cxr: unknown findings {unknown}; expected names from PEDS_CATEGORIES "
            f"{list(PEDS_CATEGORIES)}"
        )
    bad = {f: s for f, s in findings.items() if not 0.0 <= float(s) <= 1.0}
    if bad:
        raise ValueError(f"render_peds_cxr: severities {bad} outside [0, 1]; pass 0 for absent")
    if not 0.0 <= float(age_years) <= MAX_AGE_YEARS:
        raise ValueError(
            f"render_peds_cxr: age_years={age_years}, expected 0 to {MAX_AGE_YEARS:g} years"
        )
    if view not in ("PA", "AP"):
        raise ValueError(f"render_peds_cxr: view={view!r}, expected 'PA' or 'AP'")
    if sex not in ("M", "F"):
        raise ValueError(f"render_peds_cxr: sex={sex!r}, expected 'M' or 'F'")


def sample_peds_anatomy(
    rng: np.random.Generator, *, age_years: float, view: str, cardiomegaly: float = 0.0
) -> PedsAnatomy:
    """Draw the thorax, heart and thymus of one child.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the individual variation.
    age_years : float
        Age in years, 0 to ``MAX_AGE_YEARS``.
    view : {"PA", "AP"}
        AP films magnify the heart by ``PEDS_AP_MAGNIFICATION``.
    cardiomegaly : float
        Severity in [0, 1] (0 = normal heart for the age).

    Returns
    -------
    PedsAnatomy

    Examples
    --------
    >>> a = sample_peds_anatomy(np.random.default_rng(0), age_years=0.5, view="AP")
    >>> 0.5 < a.ctr < 0.7
    True
    """
    _check_inputs({"cardiomegaly": cardiomegaly}, age_years, "M", view)
    t = float(age_years) / MAX_AGE_YEARS
    tw = (0.84 - 0.08 * t) * float(np.clip(1.0 + 0.035 * rng.standard_normal(), 0.92, 1.08))
    lung_a = 0.30 * tw / 0.8
    lung_cx = 0.36 * tw / 0.8
    y_top = -0.52 - 0.12 * t + 0.02 * float(rng.standard_normal())
    base = 0.30 + 0.14 * t + 0.025 * float(rng.standard_normal())
    ctr_normal = normal_ctr(age_years)
    ctr = float(np.clip(ctr_normal + 0.022 * rng.standard_normal(), ctr_normal - 0.06, 0.66))
    if cardiomegaly > 0:
        ctr += CARDIO_CTR_BASE + CARDIO_CTR_PER_SEVERITY * float(cardiomegaly)
    ctr_film = ctr * (PEDS_AP_MAGNIFICATION if view == "AP" else 1.0)
    hw = 0.5 * ctr_film * 2.0 * (lung_cx + lung_a)
    height = base - y_top
    visible = rng.random() < thymus_probability(age_years)
    thymus = float(rng.uniform(0.6, 1.0) * (1.0 - float(age_years) / 3.0)) if visible else 0.0
    return PedsAnatomy(
        age_years=float(age_years),
        view=view,
        ctr=ctr_film,
        ctr_normal=ctr_normal,
        thymus=max(thymus, 0.0),
        thymus_side=-1 if rng.random() < 0.6 else 1,
        thorax_half_width=tw,
        lung_center_x=lung_cx,
        lung_half_width=lung_a,
        lung_top_y=y_top,
        lung_base_y=base,
        dome_height=0.10 + 0.03 * t,
        rib_slope=0.05 + 0.35 * t,
        heart_center_x=0.06 + 0.35 * (hw - 0.26),
        heart_center_y=base - 0.25 * height / 0.95,
        heart_half_width=hw,
        heart_half_height=0.24 * math.sqrt(hw / 0.26) * height / 0.95,
    )


def _mask(weight: np.ndarray) -> np.ndarray:
    """Pixels whose weight reaches ``_MASK_LEVEL`` of the peak (never empty for a drawn finding)."""
    peak = float(weight.max())
    if peak <= 0.0:
        raise AssertionError("a present finding drew nothing; its geometry is outside the lungs")
    return weight >= _MASK_LEVEL * peak


def render_peds_cxr(
    rng: np.random.Generator,
    *,
    findings: Mapping[str, float],
    age_years: float,
    sex: str,
    view: str,
    size: int,
    anatomy: PedsAnatomy | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render one frontal pediatric chest radiograph and the masks of its findings.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of all per-image variation (anatomy unless given, placement, textures).
    findings : mapping of str to float
        Severity in (0, 1] per present finding (names from ``PEDS_CATEGORIES``); absent ones
        may be omitted or given 0.
    age_years : float
        Age in years, 0 to 10.
    sex : {"M", "F"}
        Patient sex (children have no breast shadows; kept for the header and for checks).
    view : {"PA", "AP"}
        View position.
    size : int
        Output matrix (square, >= 32).
    anatomy : PedsAnatomy, optional
        Geometry from :func:`sample_peds_anatomy` (drawn from ``rng`` when omitted); its age,
        view and cardiomegaly must match the arguments.

    Returns
    -------
    (numpy.ndarray, dict of str to numpy.ndarray)
        ``(size, size)`` float32 image in [0, 1] (MONOCHROME2) and one ``(size, size)`` boolean
        mask per present finding.

    Examples
    --------
    >>> img, masks = render_peds_cxr(np.random.default_rng(0), findings={"effusion": 0.8},
    ...                              age_years=2.0, sex="F", view="AP", size=64)
    >>> img.shape, sorted(masks), bool(masks["effusion"].any())
    ((64, 64), ['effusion'], True)
    """
    _check_inputs(findings, age_years, sex, view)
    if size < 32:
        raise ValueError(f"render_peds_cxr: size={size}, expected >= 32 pixels")
    sev = {f: float(s) for f, s in findings.items() if s > 0}
    if anatomy is None:
        anatomy = sample_peds_anatomy(
            rng, age_years=age_years, view=view, cardiomegaly=sev.get("cardiomegaly", 0.0)
        )
    elif anatomy.view != view or abs(anatomy.age_years - float(age_years)) > 1e-9:
        raise ValueError(
            f"render_peds_cxr: anatomy drawn for age {anatomy.age_years} view {anatomy.view!r}, "
            f"called with age {age_years} view {view!r}; draw it with the same arguments"
        )
    an = anatomy
    masks: dict[str, np.ndarray] = {}

    gx, gy = _grid(size)
    sc = float(1.0 + 0.03 * rng.standard_normal())
    x = (gx - 0.02 * float(rng.standard_normal())) / sc
    y = (gy - 0.02 * float(rng.standard_normal())) / sc
    ax = np.abs(x)
    tw, lung_a, lung_cx = an.thorax_half_width, an.lung_half_width, an.lung_center_x
    y_top, base, dome_h = an.lung_top_y, an.lung_base_y, an.dome_height

    # Body: a round chest on a short neck, a large abdomen below.
    body_w = tw + 0.12
    neck = np.clip((y + 1.0) / 0.25, 0.0, 1.0)
    half_w = 0.26 + (body_w - 0.26) * neck ** (1 / 3)
    body = _ramp(half_w - ax, 0.03)
    img = 0.04 + body * (0.50 - 0.12 * (ax / body_w) ** 2)
    img += 0.03 * body * _smooth_noise(rng, size, 4)

    # Lungs: shorter and rounder than an adult's.
    markings = _smooth_noise(rng, size, 20)
    lung_total = np.zeros_like(img)
    side_geom: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}
    for side in (-1, 1):  # -1: image left = patient right lung
        cx = side * lung_cx
        y_base = base - (0.03 if side == -1 else 0.0)
        a_y = lung_a * np.sqrt(np.clip((y - y_top) / 0.28, 0.0, 1.0))
        u = (x - cx) / lung_a
        d_lat = a_y - np.abs(x - cx)
        d_bot = y_base - dome_h * (1.0 - np.minimum(u * u, 1.0)) - y
        m = _ramp(np.minimum(np.minimum(d_lat, d_bot), y - y_top), 0.025)
        lung_total = np.maximum(lung_total, m)
        side_geom[side] = (m, d_lat, d_bot, y_base)
    hilum_y = y_top + 0.45 * (base - y_top)
    hilar = np.exp(-((ax - 0.17) ** 2 + (y - hilum_y) ** 2) / 0.06)
    img = img - 0.30 * lung_total + 0.04 * (0.4 + hilar) * markings * lung_total

    # Abdomen below the domes (relatively large in infants) and the gastric bubble.
    img += 0.05 * body * _ramp(y - (base + 0.04), 0.1)
    img -= 0.09 * _disc(x, y, lung_cx + 0.02, base + 0.06, 0.07, 0.02)

    # Heart, mediastinum, thymus sail, spine.
    hx, hy = an.heart_center_x, an.heart_center_y
    hw, hh = an.heart_half_width, an.heart_half_height
    heart = _ramp(1.0 - ((x - hx) / hw) ** 2 - ((y - hy) / hh) ** 2, 0.10)
    mediast = _ramp(0.075 - np.abs(x - 0.01), 0.02) * _ramp(y + 0.85, 0.05)
    front = np.maximum(heart, mediast)
    img = _blend(img, 0.60, front * 0.92)
    visible = 1.0 - front  # lung not hidden behind the heart and mediastinum
    if an.thymus > 0:
        y0, y1 = y_top + 0.04, hy - 0.55 * hh
        frac = np.clip((y - y0) / (y1 - y0), 0.0, 1.0)
        reach = 0.075 + (0.10 + 0.10 * an.thymus) * frac**0.7
        lateral = an.thymus_side * (x - 0.01)
        sail = _ramp(reach - lateral, 0.015) * _ramp(lateral, 0.01)
        sail = sail * _ramp(y - y0, 0.03) * _ramp(y1 - y, 0.008)
        img = _blend(img, 0.58, sail * 0.9 * min(1.0, 0.5 + an.thymus))
    bone = 0.06 + 0.002 * an.age_years
    img += 0.6 * bone * _ramp(0.04 - ax, 0.01) * (0.75 + 0.25 * np.cos(2 * np.pi * y / 0.08))

    # Ribs: near horizontal in infants, sloping with age; clavicles high on AP films.
    ap = view == "AP"
    period = 0.10 + 0.03 * (y + 1.0) * (base - y_top) / 0.9
    phase = (y - 0.15 * (ax - 0.45) ** 2 - an.rib_slope * ax) / period
    ribs = np.clip(np.cos(2 * np.pi * phase + float(rng.uniform(0, 6.28))), 0.0, 1.0) ** 3
    thorax = _ramp(tw - ax, 0.04) * _ramp(y - y_top + 0.12, 0.05) * _ramp(base + 0.06 - y, 0.05)
    img += bone * ribs * thorax * _ramp(ax - 0.06, 0.03)
    cy = y_top - (0.12 if ap else 0.06)
    for side in (-1, 1):
        d = _segment_distance(x, y, (side * 0.05, cy), (side * 0.55 * tw / 0.8, cy - 0.03))
        img += 1.3 * bone * _ramp(0.024 - d, 0.008)

    # ---- findings ------------------------------------------------------------------------
    s = sev.get("cardiomegaly", 0.0)
    if s:
        masks["cardiomegaly"] = heart >= 0.5
    s = sev.get("consolidation", 0.0)
    if s:
        side = int(rng.integers(0, 2)) * 2 - 1
        m, _, _, y_base = side_geom[side]
        zone = float(rng.random())
        if zone < 0.35:  # upper lobe
            cy0 = y_top + 0.30 * (y_base - y_top)
        elif zone < 0.55 and side == -1:  # right middle lobe, against the heart border
            cy0 = y_top + 0.62 * (y_base - y_top)
        else:  # lower lobe
            cy0 = y_top + 0.78 * (y_base - y_top)
        cx0 = side * (lung_cx + float(rng.uniform(0.0, 0.3)) * lung_a)
        rx = (0.55 + 0.45 * s) * lung_a
        ry = (0.20 + 0.18 * s) * (y_base - y_top)
        shape = 1.0 - ((x - cx0) / rx) ** 2 - ((y - cy0) / ry) ** 2
        region = m * visible * _ramp(shape + 0.25 * _smooth_noise(rng, size, 6), 0.25)
        bronchi = np.exp(-((_smooth_noise(rng, size, 14) / 0.12) ** 2))
        img = _blend(img, 0.58, region * (0.45 + 0.45 * s) * (1.0 - 0.35 * bronchi))
        masks["consolidation"] = _mask(region)
    s = sev.get("interstitial_opacity", 0.0)
    if s:
        envelope = np.zeros_like(img)
        streaks = np.zeros_like(img)
        warp = 0.5 * _smooth_noise(rng, size, 8)
        for side in (-1, 1):
            m = side_geom[side][0]
            hxs = side * (0.5 * (lung_cx - lung_a) + 0.12)
            r = np.hypot(x - hxs, (y - hilum_y) * 0.85)
            theta = np.arctan2(y - hilum_y, side * (x - hxs))
            sigma = 0.14 + 0.10 * s
            env = m * visible * np.exp(-((r / sigma) ** 2))
            lines = np.clip(np.cos(9.0 * theta + warp + float(rng.uniform(0, 6.28))), 0, 1) ** 4
            envelope = np.maximum(envelope, env)
            streaks = np.maximum(streaks, env * lines)
        img = _blend(img, 0.55, (0.22 + 0.30 * s) * envelope + (0.15 + 0.25 * s) * streaks)
        masks["interstitial_opacity"] = _mask(envelope)
    s = sev.get("effusion", 0.0)
    if s:
        pick = float(rng.random())
        sides = (-1,) if pick < 0.45 else (1,) if pick < 0.85 else (-1, 1)
        fluid = np.zeros_like(img)
        for side in sides:
            _, d_lat, d_bot, y_base = side_geom[side]
            lat = np.clip(side * (x - side * lung_cx) / lung_a * 0.5 + 0.5, 0.0, 1.0)
            y_m = y_base - (0.06 + 0.28 * s) * (y_base - y_top) / 0.9 - 0.10 * s * lat
            region = _ramp(y - y_m, 0.03) * _ramp(d_lat + 0.03, 0.03) * _ramp(d_bot + 0.10, 0.05)
            fluid = np.maximum(fluid, region)
        img = _blend(img, 0.56, fluid * (0.55 + 0.4 * s))
        masks["effusion"] = _mask(fluid)

    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False), masks
