"""Site profiles and cohort sizes of the simulated multi-site chest X-ray study.

A :class:`SiteProfile` holds everything that makes one hospital's images and labels look the way
they do: the patient population (age, sex, share of portable AP films, finding prevalence),
the acquisition chain (exposure, gamma, noise, detector blur, matrix size, bit depth, photometric
interpretation, burned-in markers, collimation) and the label noise of its reporting radiologists.

``vendor_dev`` is the vendor's development site (the reference). ``site_a`` is a control close to
it; ``site_b`` .. ``site_e`` are shifted the way real deployment sites are:

* ``site_b`` ICU: mostly portable AP films, noisy, sicker population (effusion, edema,
  atelectasis).
* ``site_c`` old computed radiography: low matrix, blurred, MONOCHROME1, 10-bit.
* ``site_d`` over-exposed ("burned-out", darker, lower contrast), burned-in markers, collimation.
* ``site_e`` another vendor: strong gamma (brighter, higher contrast) and noisy labels.

Hernia prevalence is *enriched* to about 1 % (0.2 % in ChestX-ray14) so that a model can learn the
class from a few thousand images; reports on simulated data say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from clinaudit.sources.cxr_labels import FINDINGS

REFERENCE_SITE = "vendor_dev"

#: NIH-like base prevalence per finding (Hernia enriched from ~0.2 % to 1 %, see module doc).
BASE_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.10,
    "Cardiomegaly": 0.03,
    "Effusion": 0.12,
    "Infiltration": 0.18,
    "Mass": 0.05,
    "Nodule": 0.06,
    "Pneumonia": 0.015,
    "Pneumothorax": 0.05,
    "Consolidation": 0.04,
    "Edema": 0.02,
    "Emphysema": 0.02,
    "Fibrosis": 0.015,
    "Pleural_Thickening": 0.03,
    "Hernia": 0.01,
}

#: Latent disease factors of the Gaussian copula and the findings they load on.
#: A finding's latent is ``sum_k w_k F_k + sqrt(1 - sum_k w_k^2) e``, so each latent stays N(0, 1)
#: and the marginal prevalence is exact while findings that share a factor co-occur.
FACTOR_LOADINGS: dict[str, dict[str, float]] = {
    "heart_failure": {"Cardiomegaly": 0.6, "Edema": 0.65, "Effusion": 0.5, "Atelectasis": 0.25},
    "infection": {"Infiltration": 0.5, "Pneumonia": 0.65, "Consolidation": 0.6, "Effusion": 0.2},
    "copd": {"Emphysema": 0.7, "Pneumothorax": 0.3, "Nodule": 0.15},
    "neoplasm": {"Mass": 0.6, "Nodule": 0.45, "Effusion": 0.15, "Atelectasis": 0.2},
    "chronic_scar": {"Fibrosis": 0.65, "Pleural_Thickening": 0.5, "Infiltration": 0.2},
}

#: Loading of the standardised age on each finding's latent (older patients are sicker).
AGE_LOADING: dict[str, float] = {
    "Cardiomegaly": 0.25,
    "Emphysema": 0.25,
    "Effusion": 0.15,
    "Mass": 0.2,
    "Nodule": 0.15,
    "Fibrosis": 0.25,
    "Hernia": 0.3,
    "Edema": 0.1,
    "Pneumothorax": -0.15,
}

#: Quality features whose direction versus the reference site the sidecar declares.
QUALITY_FEATURES: tuple[str, ...] = (
    "brightness",
    "contrast",
    "sharpness",
    "noise",
    "pixel_spacing",
)


@dataclass(frozen=True)
class SiteProfile:
    """Population, acquisition and labelling parameters of one site.

    Intensities are fractions of the detector range (0-1); ``blur_mm`` is the sigma of the
    detector's Gaussian blur in millimetres. ``resolution`` places the site's native
    matrix inside the scale's ``native_px`` range (0 = smallest, 1 = largest). ``*_jitter`` values
    are per-image standard deviations around the site value.
    """

    name: str
    code: str
    institution: str
    manufacturer: str
    model_name: str
    modality: str = "DX"
    # population
    age_mean: float = 52.0
    age_sd: float = 17.0
    frac_male: float = 0.56
    frac_ap: float = 0.35
    followup_mean: float = 0.9
    prevalence_scale: tuple[tuple[str, float], ...] = ()
    # acquisition
    brightness: float = 0.0
    contrast: float = 1.0
    gamma: float = 1.0
    noise_sd: float = 0.012
    blur_mm: float = 0.8
    resolution: float = 0.5
    field_of_view_mm: float = 430.0
    bits_stored: int = 12
    photometric: str = "MONOCHROME2"
    kvp: tuple[float, float] = (110.0, 125.0)
    marker_prob: float = 0.0
    collimation_prob: float = 0.0
    collimation_value: float = 1.0
    brightness_jitter: float = 0.02
    contrast_jitter: float = 0.04
    gamma_jitter: float = 0.04
    # labelling: probability that a true positive is written negative / a negative positive
    label_miss_rate: float = 0.03
    label_false_rate: float = 0.003
    study_year: int = 2017
    notes: str = ""

    def __post_init__(self) -> None:
        known = set(FINDINGS)
        bad = [f for f, _ in self.prevalence_scale if f not in known]
        if bad:
            raise ValueError(
                f"SiteProfile {self.name!r}: prevalence_scale names {bad}, expected names from "
                f"FINDINGS {list(FINDINGS)}; fix the spelling"
            )
        if self.bits_stored not in (8, 10, 12, 14, 16):
            raise ValueError(
                f"SiteProfile {self.name!r}: bits_stored={self.bits_stored}, expected one of "
                "8, 10, 12, 14, 16"
            )
        if self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError(
                f"SiteProfile {self.name!r}: photometric={self.photometric!r}, expected "
                "'MONOCHROME1' or 'MONOCHROME2'"
            )
        if self.modality not in ("DX", "CR"):
            raise ValueError(
                f"SiteProfile {self.name!r}: modality={self.modality!r}, expected 'DX' or 'CR'"
            )
        if not 0.0 <= self.resolution <= 1.0:
            raise ValueError(
                f"SiteProfile {self.name!r}: resolution={self.resolution}, expected 0..1"
            )

    @property
    def bits_allocated(self) -> int:
        """8 for 8-bit storage, else 16."""
        return 8 if self.bits_stored == 8 else 16

    def prevalence(self) -> dict[str, float]:
        """Target prevalence per finding at this site (base prevalence times the site scale)."""
        scale = dict(self.prevalence_scale)
        return {f: min(0.6, BASE_PREVALENCE[f] * scale.get(f, 1.0)) for f in FINDINGS}

    def native_px(self, native_range: tuple[int, int]) -> int:
        """The site's native (square) matrix size inside the scale's range, rounded to 8 px."""
        lo, hi = native_range
        return int(round((lo + self.resolution * (hi - lo)) / 8.0) * 8)


def _ref() -> SiteProfile:
    return SiteProfile(
        name="vendor_dev",
        code="vd",
        institution="SIMULATED VENDOR DEVELOPMENT SITE",
        manufacturer="Acme Imaging",
        model_name="AcmeDR 5000",
        frac_ap=0.3,
        resolution=0.6,
        notes="the vendor's own development data; reference for every shift",
    )


DEFAULT_SITES: dict[str, SiteProfile] = {
    "vendor_dev": _ref(),
    "site_a": SiteProfile(
        name="site_a",
        code="sa",
        institution="SIMULATED SITE A",
        manufacturer="Acme Imaging",
        model_name="AcmeDR 5000",
        frac_ap=0.3,
        resolution=0.6,
        brightness=0.01,
        noise_sd=0.012,
        notes="control: same vendor and protocol as the development site",
    ),
    "site_b": SiteProfile(
        name="site_b",
        code="sb",
        institution="SIMULATED SITE B ICU",
        manufacturer="Acme Imaging",
        model_name="AcmeDR Mobile 300",
        age_mean=62.0,
        age_sd=15.0,
        frac_ap=0.85,
        followup_mean=1.6,
        prevalence_scale=(
            ("Effusion", 2.0),
            ("Edema", 3.0),
            ("Atelectasis", 1.8),
            ("Cardiomegaly", 1.6),
            ("Pneumothorax", 1.4),
            ("Consolidation", 1.5),
        ),
        noise_sd=0.04,
        resolution=0.35,
        kvp=(85.0, 100.0),
        marker_prob=0.6,
        notes="ICU: portable AP films, noisy mobile detector, sicker patients",
    ),
    "site_c": SiteProfile(
        name="site_c",
        code="sc",
        institution="SIMULATED SITE C",
        manufacturer="Fujifilm-like CR",
        model_name="CR Reader 90",
        modality="CR",
        age_mean=56.0,
        frac_ap=0.35,
        blur_mm=3.2,
        resolution=0.0,
        bits_stored=10,
        photometric="MONOCHROME1",
        kvp=(100.0, 115.0),
        notes="old computed radiography: low matrix, blurred, inverted (MONOCHROME1), 10-bit",
    ),
    "site_d": SiteProfile(
        name="site_d",
        code="sd",
        institution="SIMULATED SITE D",
        manufacturer="Acme Imaging",
        model_name="AcmeDR 4000",
        frac_ap=0.4,
        brightness=-0.14,
        contrast=0.7,
        resolution=0.5,
        bits_stored=14,
        marker_prob=0.9,
        collimation_prob=0.8,
        collimation_value=0.0,
        kvp=(125.0, 140.0),
        notes="over-exposed (burned-out, darker, low contrast), burned-in markers, collimation",
    ),
    "site_e": SiteProfile(
        name="site_e",
        code="se",
        institution="SIMULATED SITE E",
        manufacturer="Orbis Medical",
        model_name="Orbis XR-9",
        age_mean=48.0,
        frac_male=0.48,
        frac_ap=0.25,
        brightness=0.04,
        contrast=1.35,
        gamma=0.75,
        resolution=1.0,
        bits_stored=16,
        label_miss_rate=0.2,
        label_false_rate=0.02,
        notes="another vendor: strong gamma and contrast, larger matrix, noisy labels",
    ),
}


#: A site that lands its images before its labels (the demo of label-free estimates): a sixth
#: site, not in :data:`DEFAULT_SITES`, with the development site's detector and labelling
#: practice and another population (older, more AP films, more effusion and atelectasis).
LATE_LABELS_SITE = SiteProfile(
    name="site_f",
    code="sf",
    institution="SIMULATED SITE F (LABELS PENDING)",
    manufacturer="Acme Imaging",
    model_name="AcmeDR 5200",
    age_mean=57.0,
    frac_ap=0.4,
    prevalence_scale=(("Effusion", 1.4), ("Atelectasis", 1.3), ("Cardiomegaly", 1.2)),
    resolution=0.6,
    notes="new site, images first: its radiologist reads land after the first audit; the "
    "development site's detector and settings (a different matrix size or exposure is a major "
    "image drift under the shipped policy, which withholds the estimates), another population",
)
#: Images of :data:`LATE_LABELS_SITE` per scale.
LATE_LABELS_IMAGES: dict[str, int] = {"tiny": 60, "demo": 500, "full": 2000}


@dataclass(frozen=True)
class CohortScale:
    """Sizes of a simulated cohort.

    Parameters
    ----------
    name : str
        Label of the scale (recorded in the sidecar).
    vendor_train, vendor_test : int
        Images in the vendor site's ``train_val_list.txt`` / ``test_list.txt`` (approximate: the
        split is patient-disjoint, so the test part is filled patient by patient).
    site_images : tuple of (site, n_images)
        Images per deployment site.
    native_px : (int, int)
        Range of native matrix sizes; each site sits inside it by its ``resolution``.
    render_px : int
        Size at which anatomy is rendered before it is resampled to the native matrix.
    """

    name: str
    vendor_train: int
    vendor_test: int
    site_images: tuple[tuple[str, int], ...]
    native_px: tuple[int, int]
    render_px: int = 256

    def __post_init__(self) -> None:
        if self.vendor_train < 1 or self.vendor_test < 1:
            raise ValueError(
                f"CohortScale {self.name!r}: vendor_train={self.vendor_train}, "
                f"vendor_test={self.vendor_test}; both must be >= 1"
            )
        lo, hi = self.native_px
        if not 32 <= lo <= hi <= 4096:
            raise ValueError(
                f"CohortScale {self.name!r}: native_px={self.native_px}, expected 32 <= lo <= hi "
                "<= 4096"
            )

    def n_images(self, site: str) -> int:
        """Number of images of ``site`` at this scale."""
        if site == REFERENCE_SITE:
            return self.vendor_train + self.vendor_test
        sizes = dict(self.site_images)
        if site in sizes:
            return sizes[site]
        raise KeyError(
            f"site {site!r} has no size in scale {self.name!r}; known: "
            f"{[REFERENCE_SITE, *sizes]}. Pass n_images explicitly or a CohortScale that names it"
        )


_SITES5 = ("site_a", "site_b", "site_c", "site_d", "site_e")

SCALES: dict[str, CohortScale] = {
    "tiny": CohortScale(
        "tiny", 128, 32, tuple((s, 60) for s in _SITES5), native_px=(96, 160), render_px=128
    ),
    "demo": CohortScale(
        "demo", 3000, 600, tuple((s, 500) for s in _SITES5), native_px=(256, 384), render_px=256
    ),
    "full": CohortScale(
        "full",
        10000,
        2000,
        tuple(zip(_SITES5, (3000, 2800, 2400, 2000, 1800), strict=True)),
        native_px=(256, 512),
        render_px=256,
    ),
}


def declared_shifts(
    profile: SiteProfile, reference: SiteProfile, native_range: tuple[int, int]
) -> dict[str, str]:
    """Quality features the design pushes at ``profile`` versus ``reference``: ``"+"``/``"-"``.

    Features not pushed are left out. The expected values are computed from the profiles (mean
    film density 0.33 before the detector curve; AP share lowers contrast and raises noise).
    Sharpness is not declared where noise is pushed up, because noise inflates the usual
    sharpness measures.

    Parameters
    ----------
    profile, reference : SiteProfile
        The site and the reference site.
    native_range : (int, int)
        The scale's native matrix range (sets the pixel spacing).

    Returns
    -------
    dict of str to str
        Keys from ``QUALITY_FEATURES``.
    """
    m0 = 0.33

    def bright(p: SiteProfile) -> float:
        return 0.5 + p.contrast * (1 - 0.1 * p.frac_ap) * (m0**p.gamma - 0.5) + p.brightness

    def contrast(p: SiteProfile) -> float:
        return p.contrast * (1 - 0.1 * p.frac_ap) * p.gamma * m0 ** (p.gamma - 1.0)

    def noise(p: SiteProfile) -> float:
        return p.noise_sd * (1 + 0.3 * p.frac_ap)

    def spacing(p: SiteProfile) -> float:
        return p.field_of_view_mm / p.native_px(native_range)

    out: dict[str, str] = {}
    d = bright(profile) - bright(reference)
    if abs(d) > 0.03:
        out["brightness"] = "+" if d > 0 else "-"
    r = contrast(profile) / contrast(reference)
    if r > 1.15 or r < 1 / 1.15:
        out["contrast"] = "+" if r > 1 else "-"
    r = noise(profile) / noise(reference)
    if r > 1.5 or r < 1 / 1.5:
        out["noise"] = "+" if r > 1 else "-"
    rs = spacing(profile) / spacing(reference)
    rb = profile.blur_mm / reference.blur_mm
    if out.get("noise") != "+":
        if rb > 1.8 or (rs > 1.3 and rb >= 1.0):
            out["sharpness"] = "-"
        elif rb < 0.55 and rs <= 1.0:
            out["sharpness"] = "+"
    if rs > 1.1 or rs < 1 / 1.1:
        out["pixel_spacing"] = "+" if rs > 1 else "-"
    assert set(out) <= set(QUALITY_FEATURES)
    return out
