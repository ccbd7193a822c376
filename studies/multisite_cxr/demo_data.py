"""The simulated data of study ``multisite_cxr``'s demo: the cohort, a site whose labels come later,
and (after the first audit) that site's radiologist reads.

``make demo`` lands the vendor site and the five deployment sites of the scale, plus
:data:`~clinaudit.sources.cxr_sites.LATE_LABELS_SITE` with an empty ``Finding Labels`` on every
row: the first audit estimates it without labels (PROVISIONAL). Then
:func:`land_late_reads` lands its reads (the simulated readers' written labels, not the truth)
as a ``site_reads`` batch and the demo audits again: the second package scores the estimates the
first one froze.
"""

from __future__ import annotations

from pathlib import Path

from clinaudit.sources.cxr_simulator import simulate_cohort, simulate_site_batch
from clinaudit.sources.cxr_sites import LATE_LABELS_IMAGES, LATE_LABELS_SITE
from clinaudit.sources.landing import scan_landing
from clinaudit.sources.triage_simulator import pile_reads_truth
from clinaudit.studies.image_reads import write_reads_batch

from .ingest import SITE_READS

__all__ = ["IMAGES_BATCH", "READS_BATCH", "land_cohort", "land_late_reads"]

IMAGES_BATCH = "b0001"
READS_BATCH = "reads-0001"
#: The day the demo's reads were written (fixed: the same seed lands the same bytes).
READS_DATE = "2024-03-01"


def land_cohort(
    landing: Path, truth: Path, *, scale: str, seed: int, workers: int
) -> dict[str, int]:
    """Land the cohort of ``scale`` and the unlabelled batch of the late-labels site; images per
    site."""
    summary = simulate_cohort(
        landing, truth_root=truth, scale=scale, seed=seed, workers=workers, batch=IMAGES_BATCH
    )
    late = simulate_site_batch(
        landing,
        truth_root=truth,
        site=LATE_LABELS_SITE,
        n_images=LATE_LABELS_IMAGES.get(scale, LATE_LABELS_IMAGES["demo"]),
        scale=scale,
        seed=seed,
        batch=IMAGES_BATCH,
        workers=workers,
        unlabelled=True,
    )
    return {**{s.site: s.n_images for s in summary.sites}, late.site: late.n_images}


def land_late_reads(landing: Path, truth: Path) -> dict[str, int]:
    """Land the reads of every image of the late-labels site (batch ``reads-0001``) unless
    they are landed already; reads per site (empty when nothing was landed)."""
    site = LATE_LABELS_SITE.name
    landed = {(b.site, b.batch) for b in scan_landing(landing, SITE_READS.landing_dir).batches}
    sidecar = truth / SITE_READS.landing_dir / site / f"{IMAGES_BATCH}.csv"
    if (site, READS_BATCH) in landed or not sidecar.is_file():
        return {}
    reads = pile_reads_truth(
        truth, site=site, landing_dir=SITE_READS.landing_dir, batch=IMAGES_BATCH
    ).assign(read_date=READS_DATE, reason=SITE_READS.reasons[0])
    write_reads_batch(
        landing,
        fmt=SITE_READS,
        site=site,
        batch=READS_BATCH,
        reads=reads,
        simulated=True,
        created_utc=f"{READS_DATE}T00:00:00Z",
    )
    return {site: len(reads)}
