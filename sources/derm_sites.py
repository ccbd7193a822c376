"""Categories, clinics and scales of the simulated dermatology image + note study.

Everything here is SIMULATED. The six diagnostic categories are PAD-UFES-20's (ACK, BCC, MEL,
NEV, SCC, SEK; BCC, MEL and SCC malignant). The simulator makes each category informative mainly
through one modality, so that an image + note fusion model has something to add:

* ``image``: MEL, NEV and SEK look different (shape, border, colour, texture) but their clinical
  histories are drawn from one shared distribution, so the note cannot tell them apart;
* ``text``: ACK, BCC and SCC share one look (a pink, scaly keratinocytic lesion) but differ in
  history (itch, bleeding, growth, pain, elevation, duration, age, body site).

The two groups themselves differ in both modalities (pigmented vs pink; different histories).

Clinics differ in camera (polarised dermoscopy vs phone), lighting, white balance, blur, noise and
JPEG quality, in their skin-tone mix and their category mix. Four are development clinics; the
held-out clinic uses another camera mix and sees far more Fitzpatrick V-VI skin. Over all clinics
V-VI are about 12 % of the images (8 % at the development clinics): the under-representation that
skin-tone audits of dermatology models keep finding (Fitzpatrick17k, DDI).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Modality = Literal["image", "text"]
Role = Literal["development", "held_out"]

__all__ = [
    "CATEGORIES",
    "CATEGORY_CODES",
    "DEFAULT_CLINICS",
    "DEVELOPMENT_CLINICS",
    "FITZPATRICK_ITA",
    "HELD_OUT_CLINIC",
    "SCALES",
    "Category",
    "ClinicProfile",
    "DermScale",
]


@dataclass(frozen=True)
class Category:
    """One diagnostic category.

    Attributes
    ----------
    code, name : str
        PAD-UFES-20 code and the diagnosis in words.
    malignant : bool
        BCC, MEL and SCC.
    informative : {"image", "text"}
        The modality that separates the category from its look-alikes (see the module doc).
    look : str
        Morphology the renderer draws (text-informative categories share one).
    history : str
        Clinical-history profile the metadata is drawn from (image-informative categories share
        one).
    prevalence : float
        Base share of images (a clinic scales it).
    """

    code: str
    name: str
    malignant: bool
    informative: Modality
    look: str
    history: str
    prevalence: float


CATEGORIES: tuple[Category, ...] = (
    Category("ACK", "actinic keratosis", False, "text", "pink_keratotic", "ACK", 0.24),
    Category("BCC", "basal cell carcinoma", True, "text", "pink_keratotic", "BCC", 0.25),
    Category("MEL", "melanoma", True, "image", "melanoma", "pigmented", 0.08),
    Category("NEV", "nevus", False, "image", "nevus", "pigmented", 0.15),
    Category("SCC", "squamous cell carcinoma", True, "text", "pink_keratotic", "SCC", 0.12),
    Category("SEK", "seborrheic keratosis", False, "image", "seborrheic", "pigmented", 0.16),
)
CATEGORY_CODES: tuple[str, ...] = tuple(c.code for c in CATEGORIES)
CATEGORY_BY_CODE: dict[str, Category] = {c.code: c for c in CATEGORIES}

#: ITA range (degrees) drawn for each Fitzpatrick type: Chardon et al. (1991) skin-colour classes
#: (very light > 55, light 41-55, intermediate 28-41, tan 10-28, brown -30..10, dark < -30) mapped
#: one-to-one onto types I-VI, as skin-tone bias studies do for a rough correspondence. A person's
#: ITA is uniform in the range plus N(0, 4 deg) so neighbouring types overlap.
FITZPATRICK_ITA: dict[int, tuple[float, float]] = {
    1: (55.0, 70.0),
    2: (41.0, 55.0),
    3: (28.0, 41.0),
    4: (10.0, 28.0),
    5: (-30.0, 10.0),
    6: (-55.0, -30.0),
}


@dataclass(frozen=True)
class ClinicProfile:
    """Camera, lighting, population and documentation habits of one clinic.

    Linear-light values: ``exposure`` multiplies the scene, ``white_balance`` the R, G, B
    channels; ``read_noise`` and ``shot_noise`` set the sensor noise sd
    ``sqrt(read_noise**2 + shot_noise * R)``; ``surface_reflectance`` is the share of light
    reflected by the skin surface without entering it (glare the polariser of a dermatoscope
    removes; it is what lowers lesion contrast on darker skin). ``blur_px`` is the Gaussian sigma
    at 128 px (scaled with the image size). ``skin_mix`` gives the share of Fitzpatrick types
    I-VI, ``category_scale`` multiplies base prevalences, ``note_missing`` is the share of lesions
    without a note.
    """

    name: str
    code: str
    role: Role
    camera: str
    dermoscopic_fraction: float
    image_format: Literal["png", "jpeg"]
    jpeg_quality: int
    white_balance: tuple[float, float, float]
    exposure: float
    blur_px: float
    read_noise: float
    shot_noise: float
    surface_reflectance: float
    glare_prob: float
    hair_prob: float
    skin_mix: tuple[float, float, float, float, float, float]
    category_scale: tuple[tuple[str, float], ...] = ()
    note_missing: float = 0.3
    typo_rate: float = 0.02
    number: int = 0
    notes: str = ""

    def __post_init__(self) -> None:
        if abs(sum(self.skin_mix) - 1.0) > 1e-6 or min(self.skin_mix) < 0:
            raise ValueError(
                f"ClinicProfile {self.name!r}: skin_mix={self.skin_mix} must be 6 non-negative "
                "shares (Fitzpatrick I-VI) summing to 1"
            )
        bad = [c for c, _ in self.category_scale if c not in CATEGORY_BY_CODE]
        if bad:
            raise ValueError(
                f"ClinicProfile {self.name!r}: category_scale names {bad}; expected codes from "
                f"{list(CATEGORY_CODES)}"
            )
        if not 0.0 <= self.dermoscopic_fraction <= 1.0 or not 0.0 <= self.note_missing < 1.0:
            raise ValueError(
                f"ClinicProfile {self.name!r}: dermoscopic_fraction and note_missing must be "
                "shares in [0, 1)"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"ClinicProfile {self.name!r}: jpeg_quality must be 1-100")

    def prevalence(self) -> dict[str, float]:
        """Category shares at this clinic (base prevalence times the clinic scale, normalised)."""
        scale = dict(self.category_scale)
        raw = {c.code: c.prevalence * scale.get(c.code, 1.0) for c in CATEGORIES}
        total = sum(raw.values())
        return {k: v / total for k, v in raw.items()}


def _clinic(**kw: object) -> ClinicProfile:
    return ClinicProfile(**kw)  # type: ignore[arg-type]


DEFAULT_CLINICS: dict[str, ClinicProfile] = {
    "uni_derm": _clinic(
        name="uni_derm",
        code="UD",
        role="development",
        number=1,
        camera="polarised dermatoscope on a system camera (85 %), phone otherwise",
        dermoscopic_fraction=0.85,
        image_format="png",
        jpeg_quality=95,
        white_balance=(1.0, 1.0, 1.0),
        exposure=1.0,
        blur_px=0.6,
        read_noise=0.003,
        shot_noise=0.0002,
        surface_reflectance=0.035,
        glare_prob=0.05,
        hair_prob=0.35,
        skin_mix=(0.20, 0.42, 0.24, 0.09, 0.04, 0.01),
        category_scale=(("MEL", 1.6), ("NEV", 1.3), ("ACK", 0.8)),
        note_missing=0.20,
        notes="university referral centre: dermoscopy, lossless PNG, light-skinned population",
    ),  # fmt: skip
    "city_clinic": _clinic(
        name="city_clinic",
        code="CC",
        role="development",
        number=2,
        camera="smartphone, flash (25 % with a clip-on dermatoscope)",
        dermoscopic_fraction=0.25,
        image_format="jpeg",
        jpeg_quality=90,
        white_balance=(1.05, 1.0, 0.93),
        exposure=1.05,
        blur_px=0.9,
        read_noise=0.004,
        shot_noise=0.0004,
        surface_reflectance=0.04,
        glare_prob=0.2,
        hair_prob=0.15,
        skin_mix=(0.10, 0.33, 0.30, 0.17, 0.07, 0.03),
        note_missing=0.30,
        notes="urban general dermatology: phone photos, warm white balance",
    ),  # fmt: skip
    "rural_outreach": _clinic(
        name="rural_outreach",
        code="RO",
        role="development",
        number=3,
        camera="smartphone under indoor light, no dermatoscope",
        dermoscopic_fraction=0.0,
        image_format="jpeg",
        jpeg_quality=85,
        white_balance=(1.12, 1.0, 0.85),
        exposure=0.85,
        blur_px=1.2,
        read_noise=0.006,
        shot_noise=0.0006,
        surface_reflectance=0.045,
        glare_prob=0.3,
        hair_prob=0.1,
        skin_mix=(0.14, 0.38, 0.28, 0.13, 0.05, 0.02),
        category_scale=(("ACK", 1.5), ("SCC", 1.3), ("MEL", 0.5), ("NEV", 0.7)),
        note_missing=0.35,
        typo_rate=0.03,
        notes="outreach programme for rural workers (PAD-UFES-20-like): sun-damaged skin, "
        "under-exposed warm phone photos",
    ),  # fmt: skip
    "teledermatology": _clinic(
        name="teledermatology",
        code="TD",
        role="development",
        number=4,
        camera="patients' own phones via a teledermatology app (10 % dermatoscope)",
        dermoscopic_fraction=0.1,
        image_format="jpeg",
        jpeg_quality=60,
        white_balance=(0.98, 1.0, 1.04),
        exposure=1.1,
        blur_px=1.6,
        read_noise=0.006,
        shot_noise=0.0008,
        surface_reflectance=0.04,
        glare_prob=0.15,
        hair_prob=0.1,
        skin_mix=(0.10, 0.30, 0.30, 0.18, 0.08, 0.04),
        note_missing=0.25,
        notes="store-and-forward service: heavy JPEG compression and motion blur",
    ),  # fmt: skip
    "southside_clinic": _clinic(
        name="southside_clinic",
        code="SS",
        role="held_out",
        number=5,
        camera="phone with an attached non-polarised dermatoscope (60 %), cool LED light",
        dermoscopic_fraction=0.6,
        image_format="jpeg",
        jpeg_quality=80,
        white_balance=(0.92, 1.0, 1.1),
        exposure=1.0,
        blur_px=1.0,
        read_noise=0.005,
        shot_noise=0.0005,
        surface_reflectance=0.03,
        glare_prob=0.1,
        hair_prob=0.25,
        skin_mix=(0.04, 0.14, 0.24, 0.26, 0.20, 0.12),
        note_missing=0.40,
        notes="held-out clinic: another camera mix, a population with far more V-VI skin",
    ),  # fmt: skip
}
DEVELOPMENT_CLINICS: tuple[str, ...] = tuple(
    n for n, c in DEFAULT_CLINICS.items() if c.role == "development"
)
HELD_OUT_CLINIC = "southside_clinic"

#: Surface reflectance of a polarised / immersion dermatoscope (glare removed).
DERMOSCOPE_SURFACE = 0.008


@dataclass(frozen=True)
class DermScale:
    """Sizes of a simulated study: image side in pixels and pairs per clinic."""

    name: str
    image_px: int
    clinic_pairs: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not 32 <= self.image_px <= 1024:
            raise ValueError(f"DermScale {self.name!r}: image_px={self.image_px}, expected 32-1024")

    def n_pairs(self, clinic: str) -> int:
        """Pairs of ``clinic`` at this scale."""
        sizes = dict(self.clinic_pairs)
        if clinic not in sizes:
            raise KeyError(
                f"clinic {clinic!r} has no size in scale {self.name!r}; known: {list(sizes)}. "
                "Pass n_pairs explicitly"
            )
        return sizes[clinic]

    @property
    def total(self) -> int:
        """Pairs over all clinics."""
        return sum(n for _, n in self.clinic_pairs)


_NAMES = tuple(DEFAULT_CLINICS)
SCALES: dict[str, DermScale] = {
    "tiny": DermScale("tiny", 64, tuple(zip(_NAMES, (70, 64, 56, 50, 60), strict=True))),
    "demo": DermScale("demo", 64, tuple(zip(_NAMES, (640, 570, 500, 430, 360), strict=True))),
    "full": DermScale("full", 128, tuple(zip(_NAMES, (3600, 3200, 2800, 2400, 2000), strict=True))),
}
