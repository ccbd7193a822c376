"""Simulated chest X-ray triage site: a labelled development batch and an unlabelled pile.

A triage hospital lands two batches under ``<landing>/cxr_triage/<site>/``::

    dev-0001/    labelled development batch, NIH layout, with patient-disjoint split files
                 (train_val_list.txt, test_list.txt); a study carves its calibration split from
                 train_val itself
    pile-0001/   the backlog nobody has labelled yet: the same NIH layout with an empty
                 ``Finding Labels`` on every row, no split files

Both are written by :func:`~clinaudit.sources.cxr_simulator.simulate_site_batch` (DICOM images,
``labels.csv``, ``manifest.json`` last with ``"simulated": true``) from one hospital and period
(:data:`TRIAGE_SITES`), so a model trained on the development batch transfers to the pile. The
truth sidecars go to ``<truth>/cxr_triage/<site>/<batch>.json`` / ``.csv``; the pile's CSV holds
its true labels (for tests and an "audit sample" of the pile). Read the pile with
``IngestConfig(allow_unlabelled=True)``: its 14 findings are then NaN; without the option every
row is quarantined.

Sizes per scale are :data:`TRIAGE_SCALES`. Rendering cost (render, DICOM encode, hash), measured
on one worker of a shared 2-core machine: about 20-23 ms CPU per image (44-51 images/s) at render
256 px / native 256-384 px (the multisite ``demo`` settings, kept here so the images look alike),
14-16 ms at render 192 px, and 7 ms at the ``tiny`` settings (render 128 / native 96-160).
Ingest (decode, hash, quality features) adds about 6-7 ms per demo image.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clinaudit.sources.cxr_labels import FINDINGS, NO_FINDING
from clinaudit.sources.cxr_simulator import SiteSummary, simulate_site_batch
from clinaudit.sources.cxr_sites import CohortScale, SiteProfile

TRIAGE_LANDING_DIR = "cxr_triage"
DEV_BATCH = "dev-0001"
PILE_BATCH = "pile-0001"
#: Patient-id blocks of the two batches (both names end in 1, so the default would collide).
_DEV_BLOCK, _PILE_BLOCK = 0, 1


@dataclass(frozen=True)
class TriageScale:
    """Sizes of one simulated triage site.

    Parameters
    ----------
    name : str
        Label of the scale (recorded in the truth sidecars).
    dev_images : int
        Images of the labelled development batch, test split included.
    dev_test : int
        Images in its ``test_list.txt`` (approximate: filled patient by patient).
    pile_images : int
        Images of the unlabelled pile.
    native_px : (int, int)
        Range of native matrix sizes (the site's ``resolution`` places it inside).
    render_px : int
        Size at which anatomy is rendered before resampling to the native matrix.
    """

    name: str
    dev_images: int
    dev_test: int
    pile_images: int
    native_px: tuple[int, int]
    render_px: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.dev_test < self.dev_images or self.pile_images < 1:
            raise ValueError(
                f"TriageScale {self.name!r}: dev_images={self.dev_images}, "
                f"dev_test={self.dev_test}, pile_images={self.pile_images}; expected "
                "1 <= dev_test < dev_images and pile_images >= 1"
            )
        self.cohort_scale()  # validates native_px

    def cohort_scale(self) -> CohortScale:
        """The :class:`CohortScale` the batch simulator renders with (matrix and render size)."""
        return CohortScale(
            self.name,
            self.dev_images - self.dev_test,
            self.dev_test,
            (),
            native_px=self.native_px,
            render_px=self.render_px,
        )


#: ``tiny``: unit tests, 500 images, about 3.5 s on one worker. ``demo``: 2,800 images, about
#: 60 CPU-s to render (~30 s on 2 free cores; 86 s measured on 2 workers of a busy shared
#: machine) plus ~9 s to ingest on 2 workers. The 2,400 + 3,000 images first asked for need
#: ~115 CPU-s (~60 s on 2 free cores, 93 s or more on a busy one): all of the demo's rendering
#: budget with no headroom for the model. ``full``: a backlog of 30,000 plus a 10,000-image
#: development batch, ~15-20 CPU-min to render.
TRIAGE_SCALES: dict[str, TriageScale] = {
    "tiny": TriageScale("tiny", 300, 80, 200, native_px=(96, 160), render_px=128),
    # 3,000 development images (500 test; the study carves its calibration split from the
    # rest) so that ~700 abnormal calibration studies can certify a 1 % miss rate, at render
    # 192 px (about 30 % cheaper than 256): ~4,000 images in about a minute on 2 cores.
    "demo": TriageScale("demo", 3000, 500, 1000, native_px=(256, 384), render_px=192),
    "full": TriageScale("full", 10000, 2000, 30000, native_px=(256, 512), render_px=256),
}

#: Triage hospitals. ``triage_a`` has the vendor reference site's scanner, protocol and case mix
#: (its sidecar declares no shift versus ``vendor_dev``), so a model developed on its own labelled
#: batch, or on the vendor's, transfers; the pile comes from the same hospital and period.
TRIAGE_SITES: dict[str, SiteProfile] = {
    "triage_a": SiteProfile(
        name="triage_a",
        code="ta",
        institution="SIMULATED TRIAGE HOSPITAL A",
        manufacturer="Acme Imaging",
        model_name="AcmeDR 5000",
        frac_ap=0.3,
        resolution=0.6,
        study_year=2018,
        notes="triage hospital: vendor-like scanner and case mix; labelled dev batch + "
        "unlabelled backlog from the same period",
    ),
}


@dataclass(frozen=True)
class TriageSiteSummary:
    """What :func:`simulate_triage_site` wrote: the development batch and the pile."""

    site: str
    scale: str
    seed: int
    dev: SiteSummary
    pile: SiteSummary
    seconds: float

    @property
    def n_images(self) -> int:
        """Images written over both batches."""
        return self.dev.n_images + self.pile.n_images

    @property
    def images_per_second(self) -> float:
        """Images written per second over both batches (rendering, encoding and hashing)."""
        return self.n_images / self.seconds


def _resolve(site: str | SiteProfile, scale: str | TriageScale) -> tuple[SiteProfile, TriageScale]:
    if not isinstance(site, SiteProfile):
        if site not in TRIAGE_SITES:
            raise ValueError(
                f"site={site!r} is not a triage site; expected one of {list(TRIAGE_SITES)} or a "
                "SiteProfile instance"
            )
        site = TRIAGE_SITES[site]
    if not isinstance(scale, TriageScale):
        if scale not in TRIAGE_SCALES:
            raise ValueError(
                f"scale={scale!r} is not a triage scale; expected one of {list(TRIAGE_SCALES)} "
                "or a TriageScale instance"
            )
        scale = TRIAGE_SCALES[scale]
    return site, scale


def simulate_triage_site(
    landing_root: str | os.PathLike[str],
    *,
    truth_root: str | os.PathLike[str],
    site: str | SiteProfile = "triage_a",
    scale: str | TriageScale = "demo",
    seed: int = 0,
    workers: int | None = None,
    landing_dir: str = TRIAGE_LANDING_DIR,
) -> TriageSiteSummary:
    """Land one triage site: a labelled development batch and an unlabelled pile.

    Parameters
    ----------
    landing_root : path
        Landing root; batches go to ``<landing_root>/<landing_dir>/<site>/dev-0001/`` and
        ``.../pile-0001/``.
    truth_root : path
        Truth sidecar root (``<truth_root>/<landing_dir>/<site>/<batch>.json`` and ``.csv``).
    site : str or SiteProfile
        A name from :data:`TRIAGE_SITES` or a custom profile.
    scale : {"tiny", "demo", "full"} or TriageScale
        Batch sizes, matrix and render size (:data:`TRIAGE_SCALES`).
    seed : int
        Master seed; with the site and batch names it determines every byte written.
    workers : int, optional
        Rendering processes (``1`` in-process; default ``min(cpu_count, 8)``); the bytes written
        do not depend on it.
    landing_dir : str
        The study's landing folder (default ``"cxr_triage"``); also the manifests' ``study``.

    Returns
    -------
    TriageSiteSummary

    Raises
    ------
    LandingError
        If either batch already landed (landed data is immutable) or a name is unsafe.
    ValueError
        If ``site`` or ``scale`` is unknown.

    Examples
    --------
    >>> s = simulate_triage_site("var/landing", truth_root="var/truth",
    ...                          scale="tiny", workers=1)  # doctest: +SKIP
    >>> s.dev.n_test, s.pile.n_images  # doctest: +SKIP
    (80, 200)
    """
    profile, sc = _resolve(site, scale)
    cohort = sc.cohort_scale()
    t0 = time.perf_counter()
    dev = simulate_site_batch(
        landing_root,
        truth_root=truth_root,
        site=profile,
        n_images=sc.dev_images,
        scale=cohort,
        seed=seed,
        batch=DEV_BATCH,
        test_images=sc.dev_test,
        workers=workers,
        landing_dir=landing_dir,
        patient_block=_DEV_BLOCK,
    )
    pile = simulate_site_batch(
        landing_root,
        truth_root=truth_root,
        site=profile,
        n_images=sc.pile_images,
        scale=cohort,
        seed=seed,
        batch=PILE_BATCH,
        workers=workers,
        landing_dir=landing_dir,
        unlabelled=True,
        patient_block=_PILE_BLOCK,
    )
    seconds = time.perf_counter() - t0
    return TriageSiteSummary(profile.name, sc.name, int(seed), dev, pile, seconds)


def pile_reads_truth(
    truth_root: str | os.PathLike[str],
    *,
    site: str = "triage_a",
    landing_dir: str = TRIAGE_LANDING_DIR,
    batch: str = PILE_BATCH,
) -> pd.DataFrame:
    """What a radiologist reading each backlog study would write: ``image_id`` and NIH
    ``finding_labels`` (``"No Finding"`` or findings joined by ``|``). ``batch``: the unlabelled
    batch that was read (default the triage pile; any batch landed with ``unlabelled=True``).

    The simulator's *written* labels of the pile (its truth sidecar), i.e. the true findings
    through the simulated reader's misses and false positives, not the truth itself.

    Raises
    ------
    FileNotFoundError
        If the pile of ``site`` was not simulated under ``truth_root``.
    """
    path = Path(truth_root) / landing_dir / site / f"{batch}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pile truth; simulate the triage site first")
    truth = pd.read_csv(path)
    written = truth[[f"written_{f}" for f in FINDINGS]].to_numpy(int) == 1
    text = [
        "|".join(f for f, on in zip(FINDINGS, row, strict=True) if on) or NO_FINDING
        for row in written
    ]
    return pd.DataFrame({"image_id": truth["Image Index"].astype(str), "finding_labels": text})
