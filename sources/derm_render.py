"""Simulated RGB lesion photos: skin optics, lesion contrast on darker skin, clinic cameras.

Skin optics (linear light, per R, G, B channel)::

    R = s + exp(-c_mel * MELANIN) * exp(-(BASE + c_hb * HAEMOGLOBIN))

``s`` is the light reflected at the surface without entering the skin, the second term the light
that passed the epidermal melanin twice and came back from the dermis. A person's melanin
``c_mel`` is solved from the ITA drawn for their Fitzpatrick type (:func:`melanin_for_ita`), so
the ITA measured on the pixels orders the types (:func:`ita_degrees`). A lesion adds absorbers
under the surface (:mod:`~clinaudit.sources.derm_lesions`). The surface term does not shrink with
melanin, so a lesion's *relative* (Weber) contrast ``1 - R_lesion / R_skin`` is lower on darker
skin: that is the bias mechanism, physical rather than coded. Sensor noise (read + shot) then
costs dark images more. A polarised dermatoscope removes most of ``s`` (less contrast loss).

``contrast_bias`` scales the mechanism: with ``W`` the lesion's per-channel Weber contrast on this
skin and ``W0`` the contrast it has on reference skin (ITA 48 deg, Fitzpatrick II; rescaled so
that its luminance contrast on this skin equals the reference's), the photo shows
``W0 + contrast_bias * (W - W0)``: 1 = physical (default), 0 = the skin tone does not change how
visible a lesion is, > 1 = the loss exaggerated (to plant a larger bias).

Clinic effects (:func:`draw_acquisition`): dermoscopic (circular field, magnified, polarised) or
phone (wider field, uneven light, vignetting, flash glare), exposure, white balance, Gaussian
blur, sensor noise, hair, PNG or JPEG at the clinic's quality.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from clinaudit.sources.derm_lesions import Frame, LesionDraw, lesion_layers
from clinaudit.sources.derm_sites import DERMOSCOPE_SURFACE, ClinicProfile
from clinaudit.sources.skin_color import ita_degrees, lab_from_linear, srgb8_from_linear

__all__ = [
    "REFERENCE_ITA",
    "Acquisition",
    "Photo",
    "SkinTone",
    "draw_acquisition",
    "encode_photo",
    "ita_degrees",
    "melanin_for_ita",
    "render_photo",
    "skin_tone",
]

#: Optical density per unit concentration (R, G, B) of epidermal melanin, haemoglobin, dermal
#: melanin (seen through tissue: blue-grey) and the bloodless dermis.
MELANIN = np.array([0.40, 0.70, 1.05])
HAEMOGLOBIN = np.array([0.08, 0.85, 0.45])
DERMAL_MELANIN = np.array([0.90, 0.75, 0.50])
BASE = np.array([0.16, 0.30, 0.42])
#: Mean haemoglobin of skin and the diffuse surface reflectance at which ITA is defined.
SKIN_HB = 0.35
STANDARD_SURFACE = 0.03
#: Skin the lesion contrast is compared with under ``contrast_bias`` (Fitzpatrick II centre).
REFERENCE_ITA = 48.0
_LUMA = np.array([0.2126, 0.7152, 0.0722])


def skin_reflectance(c_mel: float, c_hb: float, surface: float = STANDARD_SURFACE) -> np.ndarray:
    """Linear R, G, B reflectance of skin with melanin ``c_mel`` and haemoglobin ``c_hb``."""
    return surface + np.exp(-c_mel * MELANIN - BASE - c_hb * HAEMOGLOBIN)


def _ita_of(c_mel: float, c_hb: float) -> float:
    lab = lab_from_linear(skin_reflectance(c_mel, c_hb))
    return float(np.degrees(np.arctan2(lab[0] - 50.0, lab[2])))


@functools.lru_cache(maxsize=1)
def _ita_table() -> tuple[np.ndarray, np.ndarray]:
    mel = np.linspace(0.0, 8.0, 1601)
    lab = lab_from_linear(skin_reflectance(mel[:, None], SKIN_HB))  # type: ignore[arg-type]
    ita = np.degrees(np.arctan2(lab[:, 0] - 50.0, lab[:, 2]))
    return ita, mel


def melanin_for_ita(ita: float) -> float:
    """Melanin concentration whose skin (mean haemoglobin) has this ITA (degrees, -65..80)."""
    table_ita, mel = _ita_table()
    return float(np.interp(-ita, -table_ita, mel))


@dataclass(frozen=True)
class SkinTone:
    """A person's skin: melanin, haemoglobin and the ITA of that skin colour (no camera)."""

    c_mel: float
    c_hb: float
    ita: float


def skin_tone(ita_target: float, rng: np.random.Generator) -> SkinTone:
    """The skin of a person drawn with ITA ``ita_target`` (haemoglobin varies +-20 %)."""
    c_mel = melanin_for_ita(ita_target)
    c_hb = SKIN_HB * float(np.exp(0.2 * rng.standard_normal()))
    return SkinTone(c_mel, c_hb, round(_ita_of(c_mel, c_hb), 3))


@dataclass(frozen=True)
class Acquisition:
    """How one photo was taken (drawn per photo from the clinic profile)."""

    dermoscopic: bool
    fov_mm: float
    surface: float
    exposure: float
    white_balance: tuple[float, float, float]
    light_gradient: tuple[float, float]
    vignette: float
    aperture: float
    blur_px: float
    read_noise: float
    shot_noise: float
    glare: tuple[float, float, float]
    hairs: int
    center: tuple[float, float]
    rotation: float


def draw_acquisition(
    rng: np.random.Generator, clinic: ClinicProfile, diameter_mm: float
) -> Acquisition:
    """Draw the acquisition of one photo at ``clinic`` (camera, light, pose, artefacts).

    The photographer frames the lesion: the field of view is 1.6-2.4 lesion diameters through a
    dermatoscope, 2.5-4 with a phone.
    """
    u = rng.uniform
    dermo = bool(rng.random() < clinic.dermoscopic_fraction)
    gain = np.array(clinic.white_balance) * np.exp(0.03 * rng.standard_normal(3))
    grad = (0.0, 0.0) if dermo else (u(-0.15, 0.15), u(-0.15, 0.15))
    glare = (0.0, 0.0, 0.0)
    if not dermo and rng.random() < clinic.glare_prob:
        glare = (u(-0.6, 0.6), u(-0.6, 0.6), u(0.15, 0.45))
    reach = 0.1 if dermo else 0.2
    return Acquisition(
        dermoscopic=dermo,
        fov_mm=diameter_mm * (u(1.6, 2.4) if dermo else u(2.5, 4.0)),
        surface=DERMOSCOPE_SURFACE if dermo else clinic.surface_reflectance * u(0.8, 1.2),
        exposure=clinic.exposure * float(np.exp(0.08 * rng.standard_normal())),
        white_balance=(float(gain[0]), float(gain[1]), float(gain[2])),
        light_gradient=grad,
        vignette=0.05 if dermo else u(0.05, 0.2),
        aperture=u(0.92, 1.02) if dermo else 9.0,
        blur_px=clinic.blur_px * u(0.7, 1.3),
        read_noise=clinic.read_noise,
        shot_noise=clinic.shot_noise,
        glare=glare,
        hairs=int(rng.integers(1, 7)) if rng.random() < clinic.hair_prob else 0,
        center=(u(-reach, reach), u(-reach, reach)),
        rotation=u(0.0, 2.0 * np.pi),
    )


def _hair_mask(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Mask (0-1) of ``n`` curved hairs (quadratic Bezier curves, about 1 px wide at 96 px)."""
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    t = np.linspace(0.0, 1.0, 9)[:, None]
    width = max(1, round(size / 96))
    for _ in range(n):
        p = rng.uniform(-1.1, 1.1, (3, 2))
        pts = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
        xy = [(float(a), float(b)) for a, b in (pts + 1.0) * (size / 2.0)]
        draw.line(xy, fill=255, width=width, joint="curve")
    return np.asarray(im, dtype=np.float32) / np.float32(255.0)


@dataclass(frozen=True)
class Photo:
    """A rendered photo and what the simulator knows about it.

    ``rgb``: ``(size, size, 3)`` uint8 sRGB. ``core`` / ``skin``: masks of the lesion's inside
    and of clear skin (outside the lesion, in the field of view, no hair or glare).
    ``contrast``: the lesion's Weber contrast of luminance as rendered (after
    ``contrast_bias``), ``contrast_physical`` / ``contrast_reference``: on this skin and on the
    reference skin; ``ita_pixels``: ITA of the skin pixels of the written photo.
    """

    rgb: np.ndarray
    core: np.ndarray
    skin: np.ndarray
    contrast: float
    contrast_physical: float
    contrast_reference: float
    ita_pixels: float


def _weber(lesion_r: np.ndarray, skin_r: np.ndarray) -> float:
    """Weber contrast of luminance, ``1 - median Y(lesion) / median Y(skin)``, over pixels."""
    return float(1.0 - np.median(lesion_r @ _LUMA) / np.median(skin_r @ _LUMA))


def _optics(
    layers: dict[str, np.ndarray],
    skin: SkinTone,
    surface: float,
    texture: np.ndarray,
    core: np.ndarray,
    contrast_bias: float,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Reflectance of the scene (lesion on skin), of the bare skin, and the three contrasts."""
    f32 = np.float32
    tex = texture.astype(f32)[..., None]
    base, haem, mel_od = BASE.astype(f32), HAEMOGLOBIN.astype(f32), MELANIN.astype(f32)
    hb_skin = f32(skin.c_hb) * (1 + f32(0.15) * tex)
    dermis_skin = np.exp(-base - hb_skin * haem)
    lesion_od = (
        layers["blood"].astype(f32)[..., None] * haem
        + layers["dermal"].astype(f32)[..., None] * DERMAL_MELANIN.astype(f32)
        + layers["pigment"].astype(f32)[..., None] * mel_od
    )
    under = dermis_skin * np.exp(-lesion_od)
    surf = f32(surface) + layers["surface"].astype(f32)[..., None]
    texture_mel = 1 + f32(0.06) * tex
    c_ref = f32(melanin_for_ita(REFERENCE_ITA))

    def scene(c_mel: np.float32, sel: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        epi = np.exp(-(c_mel * texture_mel[sel]) * mel_od)
        return f32(surface) + epi * dermis_skin[sel], surf[sel] + epi * under[sel]

    skin_r, lesion_r = scene(f32(skin.c_mel), slice(None))
    skin_ref, lesion_ref = scene(c_ref, core if contrast_bias == 1.0 else slice(None))
    if contrast_bias == 1.0:
        refl = lesion_r
        contrast_ref = _weber(lesion_ref, skin_ref)
    else:
        w_phys = 1 - lesion_r / skin_r
        w_ref = 1 - lesion_ref / skin_ref
        contrast_ref = _weber(lesion_ref[core], skin_ref[core])
        # The reference's per-channel contrast, rescaled so that its luminance contrast on this
        # skin (whose colour weights the channels differently) equals the reference's.
        on_this = _weber(skin_r[core] * (1 - w_ref[core]), skin_r[core])
        k = contrast_ref / on_this if abs(on_this) > 1e-3 else 1.0
        w_neutral = w_ref * f32(np.clip(k, 0.5, 2.0))
        refl = skin_r * (1 - (w_neutral + f32(contrast_bias) * (w_phys - w_neutral)))
        refl = np.clip(refl, 0, None)
    contrasts = (
        _weber(refl[core], skin_r[core]),
        _weber(lesion_r[core], skin_r[core]),
        contrast_ref,
    )
    return refl, skin_r, contrasts


def render_photo(
    lesion: LesionDraw,
    skin: SkinTone,
    acq: Acquisition,
    *,
    size: int,
    rng: np.random.Generator,
    contrast_bias: float = 1.0,
) -> Photo:
    """Render one photo of ``lesion`` on ``skin`` as taken by ``acq``.

    Parameters
    ----------
    lesion : LesionDraw
        Morphology (:func:`~clinaudit.sources.derm_lesions.draw_lesion`).
    skin : SkinTone
        The person's skin (:func:`skin_tone`).
    acq : Acquisition
        Camera, light and pose (:func:`draw_acquisition`).
    size : int
        Side of the square photo in pixels.
    rng : numpy.random.Generator
        The photo's generator (skin texture, hair, noise).
    contrast_bias : float
        Scale of the skin-tone dependence of lesion contrast (module doc; 1 = physical).

    Returns
    -------
    Photo
    """
    if not np.isfinite(contrast_bias) or contrast_bias < 0:
        raise ValueError(f"contrast_bias={contrast_bias!r}; expected a finite value >= 0")
    axis = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = axis[None, :], axis[:, None]
    scale = lesion.diameter_mm / acq.fov_mm
    c, s = np.cos(acq.rotation) / scale, np.sin(acq.rotation) / scale
    matrix = np.array([[c, s], [-s, c]])
    frame = Frame(axis, axis, matrix, -matrix @ np.asarray(acq.center))
    layers = lesion_layers(lesion, frame)
    k, angle = rng.uniform(2.0, 9.0, 8), rng.uniform(0, 2 * np.pi, 8)
    waves = np.stack([k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi, 8)], 1)
    texture = Frame.identity(axis, axis).field(waves)
    core = layers["depth"] > 0.25
    if not core.any():
        core = layers["alpha"] >= layers["alpha"].max()
    refl, _, (contrast, contrast_phys, contrast_ref) = _optics(
        layers, skin, acq.surface, texture, core, contrast_bias
    )

    rho2 = x * x + y * y
    gx, gy = acq.light_gradient
    light = acq.exposure * (1.0 + gx * x + gy * y) * (1.0 - acq.vignette * rho2)
    img = refl * (light[..., None] * np.asarray(acq.white_balance)).astype(np.float32)
    gu, gv, gain = acq.glare
    clear = np.ones((size, size), dtype=bool)
    if gain > 0:
        glare = gain * np.exp(-((x - gu) ** 2 + (y - gv) ** 2) / (2 * 0.08**2))
        img = img + glare[..., None]
        clear &= glare < 0.01
    if acq.hairs:
        hair = _hair_mask(rng, acq.hairs, size)
        img = img * (1.0 - 0.85 * hair[..., None])
        clear &= hair < 0.05
    field = np.clip((acq.aperture - np.sqrt(rho2)) / 0.03 + 0.5, 0.0, 1.0)
    img = img * field[..., None].astype(np.float32)
    sigma = acq.blur_px * size / 128.0
    if sigma > 0.3:
        img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest")
    noise_sd = np.sqrt(acq.read_noise**2 + acq.shot_noise * np.clip(img, 0.0, None))
    img = img + noise_sd * rng.standard_normal(img.shape, dtype=np.float32)
    rgb = srgb8_from_linear(img)
    skin_mask = (layers["depth"] < -0.35) & clear & (field > 0.99)
    return Photo(
        rgb=rgb,
        core=core,
        skin=skin_mask,
        contrast=round(contrast, 5),
        contrast_physical=round(contrast_phys, 5),
        contrast_reference=round(contrast_ref, 5),
        ita_pixels=round(ita_degrees(rgb[::2, ::2], skin_mask[::2, ::2]), 3),
    )


def encode_photo(rgb: np.ndarray, image_format: str, quality: int = 90) -> bytes:
    """PNG (lossless) or JPEG bytes of an sRGB photo; the same pixels give the same bytes."""
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    if image_format == "png":
        im.save(buf, format="PNG", compress_level=6)
    elif image_format == "jpeg":
        im.save(buf, format="JPEG", quality=int(quality), subsampling=2, optimize=False)
    else:
        raise ValueError(f"image_format={image_format!r} is not 'png' or 'jpeg'")
    return buf.getvalue()
