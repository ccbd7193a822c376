"""Deterministic multi-site chest X-ray cohort simulator writing real formats into landing.

For each site batch it writes ``<landing>/cxr/<site>/<batch>/`` (``cxr`` is the default
``landing_dir``; another study's landing folder can be named instead)::

    images/<Image Index>        DICOM (DX or CR), one per image
    labels.csv                  NIH ChestX-ray14 ``Data_Entry_2017.csv`` layout (11 columns)
    train_val_list.txt          vendor site only: NIH split files, patient-disjoint
    test_list.txt               vendor site only: the single-site held-out evaluation set
    manifest.json               written last (the ready marker), ``simulated: true``

and, for tests only, the truth sidecar ``<truth>/cxr/<site>/<batch>.json`` (profile as applied,
declared shift directions versus ``vendor_dev``) and ``<batch>.csv`` (per image true and written
labels, severity per finding, acquisition values). An *unlabelled* batch (``unlabelled=True``)
writes an empty ``Finding Labels`` on every row and no split files; its sidecar still holds the
true labels.

Patients, views and labels are sampled in :mod:`~clinaudit.sources.cxr_population` (a Gaussian
copula of latent disease factors; label noise on the written labels only) and rendered by
:mod:`~clinaudit.sources.cxr_render`.

Every random draw comes from ``numpy.random.SeedSequence`` entropy ``[seed, crc32(site),
crc32(batch)]``; images use child sequences keyed by their index, so serial and parallel runs
write byte-identical files.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_population import nih_labels_csv, patient_split, sample_population
from clinaudit.sources.cxr_render import apply_acquisition, render_cxr
from clinaudit.sources.cxr_sites import (
    DEFAULT_SITES,
    REFERENCE_SITE,
    SCALES,
    CohortScale,
    SiteProfile,
    declared_shifts,
)
from clinaudit.sources.dicom_io import CxrDicomMeta, deterministic_uid, write_cxr_dicom
from clinaudit.sources.landing import MANIFEST_NAME, LandingError, validate_name, write_manifest
from clinaudit.sources.render_pool import chunk_size, render_chunks, worker_count

STUDY = "cxr"
#: Fixed manifest timestamp: simulated batches must be byte-identical across runs.
CREATED_UTC = "2024-01-01T00:00:00Z"


@dataclass(frozen=True)
class SiteSummary:
    """What :func:`simulate_site_batch` wrote for one site batch."""

    site: str
    batch: str
    batch_dir: Path
    truth_json: Path
    n_images: int
    n_patients: int
    prevalence: dict[str, float]
    seconds: float
    images_per_second: float
    n_train: int = 0
    n_test: int = 0
    unlabelled: bool = False


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`simulate_cohort` wrote: one :class:`SiteSummary` per site, in order."""

    scale: str
    seed: int
    sites: tuple[SiteSummary, ...]
    seconds: float
    images_per_second: float

    @property
    def n_images(self) -> int:
        """Images written over all sites."""
        return sum(s.n_images for s in self.sites)

    def site(self, name: str) -> SiteSummary:
        """The summary of site ``name``."""
        for s in self.sites:
            if s.site == name:
                return s
        raise KeyError(
            f"site {name!r} was not simulated; simulated: {[s.site for s in self.sites]}"
        )


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _resolve_scale(scale: str | CohortScale) -> CohortScale:
    if isinstance(scale, CohortScale):
        return scale
    if scale not in SCALES:
        raise ValueError(
            f"scale={scale!r} is not a known scale; expected one of {sorted(SCALES)} or a "
            "CohortScale instance"
        )
    return SCALES[scale]


def _resolve_site(site: str | SiteProfile) -> SiteProfile:
    if isinstance(site, SiteProfile):
        return site
    if site not in DEFAULT_SITES:
        raise ValueError(
            f"site={site!r} is not a default site; expected one of {list(DEFAULT_SITES)} or a "
            "SiteProfile instance"
        )
    return DEFAULT_SITES[site]


def _site_number(profile: SiteProfile) -> int:
    names = list(DEFAULT_SITES)
    if profile.name in names:
        return names.index(profile.name) + 1
    return 10 + _crc(profile.name) % 90


def _batch_slot(batch: str) -> int:
    m = re.search(r"(\d+)$", batch)
    number = int(m.group(1)) if m else _crc(batch)
    return (number - 1) % 10


@dataclass(frozen=True)
class _Job:
    index: int
    file_name: str
    severities: tuple[float, ...]
    meta: CxrDicomMeta


def _render_chunk(
    profile: SiteProfile,
    native_px: int,
    render_px: int,
    images_dir: str,
    entropy: tuple[int, ...],
    jobs: Sequence[_Job],
) -> list[tuple[str, str, dict[str, object]]]:
    """Render, encode and write a chunk of images; return (name, sha256, acquisition) each."""
    out = []
    for job in jobs:
        rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(job.index,)))
        findings = {f: s for f, s in zip(FINDINGS, job.severities, strict=True) if s > 0}
        img = render_cxr(
            rng,
            findings=findings,
            age=float(job.meta.patient_age),
            sex=job.meta.patient_sex,
            view=job.meta.view_position,
            size=render_px,
        )
        pixels, acq = apply_acquisition(
            img, rng, profile, native_px=native_px, view=job.meta.view_position
        )
        meta = dataclasses.replace(
            job.meta,
            kvp=acq.kvp,
            pixel_spacing_mm=acq.pixel_spacing_mm,
            burned_in_annotation=bool(acq.marker),
        )
        data = write_cxr_dicom(None, pixels, meta)
        assert data is not None
        with open(os.path.join(images_dir, job.file_name), "wb") as fh:
            fh.write(data)
        out.append((job.file_name, hashlib.sha256(data).hexdigest(), dataclasses.asdict(acq)))
    return out


def _render_chunk_star(args: tuple) -> list[tuple[str, str, dict[str, object]]]:
    return _render_chunk(*args)


def _write_text(path: Path, text: str) -> str:
    data = text.encode("utf-8")
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def simulate_site_batch(
    landing_root: str | os.PathLike[str],
    *,
    truth_root: str | os.PathLike[str],
    site: str | SiteProfile,
    n_images: int | None = None,
    scale: str | CohortScale = "demo",
    seed: int = 0,
    batch: str = "b0001",
    test_images: int | None = None,
    workers: int | None = None,
    reference: SiteProfile | None = None,
    landing_dir: str = STUDY,
    unlabelled: bool = False,
    patient_block: int | None = None,
) -> SiteSummary:
    """Simulate one site batch and land it (images, labels.csv, split files, manifest last).

    Parameters
    ----------
    landing_root : path
        Landing root; the batch goes to ``<landing_root>/<landing_dir>/<site>/<batch>/``.
    truth_root : path
        Where the truth sidecar goes (``<truth_root>/<landing_dir>/<site>/<batch>.json`` and
        ``.csv``).
    site : str or SiteProfile
        A name from ``DEFAULT_SITES`` or a custom profile (e.g. a new site for an e2e test).
    n_images : int, optional
        Number of images; default: the scale's size for the site.
    scale : str or CohortScale
        Sets the native matrix range and render size (and ``n_images`` when not given).
    seed : int
        Master seed; with site and batch names it determines every byte written.
    batch : str
        Batch name (a safe directory name).
    test_images : int, optional
        Write patient-disjoint ``train_val_list.txt`` / ``test_list.txt`` with about this many
        test images. Default: the scale's ``vendor_test`` for the reference site, none otherwise.
    workers : int, optional
        Processes for rendering; ``1`` runs in-process; default ``min(cpu_count, 8)``. The bytes
        written do not depend on it.
    reference : SiteProfile, optional
        Reference for the sidecar's declared shift directions (default ``vendor_dev``).
    landing_dir : str
        The study's landing folder (default ``"cxr"``, multisite_cxr's); also the manifest's
        ``study`` and the truth sidecar's sub-folder.
    unlabelled : bool
        Write ``labels.csv`` with an empty ``Finding Labels`` on every row (a pile nobody has
        labelled yet; every other column as usual) and no split files. The truth sidecar still
        holds the true and the would-be written labels.
    patient_block : int, optional
        Which block of 100,000 patient ids (0-9) the batch draws from; default: from the batch
        name's trailing number (``b0001`` -> 0). Give distinct blocks to batches of one site whose
        names end in the same number (e.g. ``dev-0001`` and ``pile-0001``) so that their patients
        and image names do not collide.

    Returns
    -------
    SiteSummary

    Raises
    ------
    LandingError
        If the batch directory already holds a manifest (landed data is immutable) or leftover
        files of an interrupted write, or ``landing_dir`` is not a safe directory name.
    ValueError
        If ``test_images`` is given for an unlabelled batch, or ``patient_block`` is not 0-9.
    """
    t0 = time.perf_counter()
    profile = _resolve_site(site)
    sc = _resolve_scale(scale)
    validate_name("site", profile.name)
    validate_name("batch", batch)
    validate_name("landing_dir", landing_dir)
    if n_images is None:
        n_images = sc.n_images(profile.name)
    if n_images < 1:
        raise ValueError(f"n_images={n_images}; expected at least 1 image")
    if unlabelled and test_images is not None:
        raise ValueError(
            f"test_images={test_images} for an unlabelled batch; split files need labels. Leave "
            "test_images=None, or land the labelled split as its own batch"
        )
    if test_images is None and profile.name == REFERENCE_SITE and not unlabelled:
        test_images = sc.vendor_test
    if patient_block is None:
        patient_block = _batch_slot(batch)
    elif not (isinstance(patient_block, int) and 0 <= patient_block <= 9):
        raise ValueError(f"patient_block={patient_block!r}; expected an integer 0-9 or None")
    batch_dir = Path(landing_root) / landing_dir / profile.name / batch
    if (batch_dir / MANIFEST_NAME).exists():
        raise LandingError(
            batch_dir,
            "batch already landed (manifest.json exists) and landed data is immutable",
            "choose a new batch name (e.g. 'b0002') or another landing root",
        )
    if batch_dir.exists() and any(batch_dir.iterdir()):
        raise LandingError(
            batch_dir,
            "directory holds files but no manifest.json (an interrupted write?)",
            "delete this directory or choose a new batch name",
        )
    images_dir = batch_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    entropy = (int(seed), _crc(profile.name), _crc(batch))
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    df = sample_population(profile, n_images, rng)
    pid_base = _site_number(profile) * 1_000_000 + patient_block * 100_000
    df.insert(0, "Patient ID", pid_base + 1 + df.pop("patient_idx"))
    df.insert(
        0,
        "Image Index",
        [
            f"{profile.code}_{p:08d}_{f:03d}.dcm"
            for p, f in zip(df["Patient ID"], df["Follow-up #"], strict=True)
        ],
    )
    native = profile.native_px(sc.native_px)
    spacing = round(profile.field_of_view_mm / native, 5)

    jobs = []
    for i, row in enumerate(df.itertuples(index=False)):
        pid = int(row[1])
        uid_key = (seed, profile.name, batch, i)
        meta = CxrDicomMeta(
            sop_instance_uid=deterministic_uid("sop", *uid_key),
            study_instance_uid=deterministic_uid("study", *uid_key),
            series_instance_uid=deterministic_uid("series", *uid_key),
            patient_id=str(pid),
            patient_name=f"SIM^PATIENT{pid}",
            patient_sex=str(df["Patient Gender"].iat[i]),
            patient_age=int(df["Patient Age"].iat[i]),
            view_position=str(df["View Position"].iat[i]),
            modality=profile.modality,
            manufacturer=profile.manufacturer,
            model_name=profile.model_name,
            institution=profile.institution,
            photometric=profile.photometric,
            bits_stored=profile.bits_stored,
            pixel_spacing_mm=spacing,
            kvp=0.0,
            study_date=str(df["study_date"].iat[i]),
            accession_number=f"SIM{_site_number(profile):02d}{i + 1:08d}",
            instance_number=1,
        )
        sev = tuple(float(df[f"sev_{f}"].iat[i]) for f in FINDINGS)
        jobs.append(_Job(i, str(df["Image Index"].iat[i]), sev, meta))

    n_workers = worker_count(workers)
    chunk = chunk_size(n_images, n_workers, largest=32)
    tasks = [
        (profile, native, sc.render_px, str(images_dir), entropy, jobs[k : k + chunk])
        for k in range(0, n_images, chunk)
    ]
    results: list[tuple[str, str, dict[str, object]]] = render_chunks(
        _render_chunk_star, tasks, n_workers
    )
    hashes = {f"images/{name}": digest for name, digest, _ in results}
    hashes["labels.csv"] = _write_text(
        batch_dir / "labels.csv",
        nih_labels_csv(df, native_px=native, spacing_mm=spacing, unlabelled=unlabelled),
    )

    split = np.full(n_images, "", dtype=object)
    n_train = n_test = 0
    if test_images is not None:
        is_test = patient_split(df, int(test_images), rng)
        names = df["Image Index"].to_numpy()
        train_names, test_names = sorted(names[~is_test]), sorted(names[is_test])
        hashes["train_val_list.txt"] = _write_text(
            batch_dir / "train_val_list.txt", "".join(n + "\n" for n in train_names)
        )
        hashes["test_list.txt"] = _write_text(
            batch_dir / "test_list.txt", "".join(n + "\n" for n in test_names)
        )
        split = np.where(is_test, "test", "train_val")
        n_train, n_test = len(train_names), len(test_names)
    write_manifest(
        batch_dir,
        study=landing_dir,
        site=profile.name,
        batch=batch,
        label_file="labels.csv",
        label_layout="nih",
        simulated=True,
        created_utc=CREATED_UTC,
        hashes=hashes,
    )

    # Truth sidecar (tests only).
    truth_dir = Path(truth_root) / landing_dir / profile.name
    truth_dir.mkdir(parents=True, exist_ok=True)
    acq = pd.DataFrame([a for _, _, a in results])
    truth = df.drop(columns=["study_date"]).copy()
    truth["split"] = split
    for col in acq.columns:
        truth[f"acq_{col}"] = acq[col].to_numpy()
    truth.to_csv(truth_dir / f"{batch}.csv", index=False, float_format="%.6g", lineterminator="\n")
    ref = reference or DEFAULT_SITES[REFERENCE_SITE]
    true_prev = {f: round(float(df[f"true_{f}"].mean()), 6) for f in FINDINGS}
    written_prev = {f: round(float(df[f"written_{f}"].mean()), 6) for f in FINDINGS}
    doc = {
        "format": "clinaudit.cxr_truth/v1",
        "site": profile.name,
        "batch": batch,
        "seed": int(seed),
        "scale": sc.name,
        "reference_site": ref.name,
        "native_px": native,
        "render_px": sc.render_px,
        "pixel_spacing_mm": spacing,
        "n_images": n_images,
        "n_patients": int(df["Patient ID"].nunique()),
        "profile": dataclasses.asdict(profile),
        "reference_profile": dataclasses.asdict(ref),
        "pushed": declared_shifts(profile, ref, sc.native_px),
        "target_prevalence": profile.prevalence(),
        "true_prevalence": true_prev,
        "written_prevalence": written_prev,
        "label_noise": {
            "miss_rate": profile.label_miss_rate,
            "false_rate": profile.label_false_rate,
            "applies_to": (
                "labels.csv has no labels (unlabelled pile); written_* columns of the sidecar CSV "
                "are what the site's readers would write (true labels with this noise)"
                if unlabelled
                else "labels.csv only; true_* columns of the sidecar CSV are noise-free"
            ),
        },
        "split": {"train_val": n_train, "test": n_test},
    }
    # Keys added only when set, so a default batch's sidecar stays byte-identical.
    if unlabelled:
        doc["unlabelled"] = True
    if landing_dir != STUDY:
        doc["landing_dir"] = landing_dir
    (truth_dir / f"{batch}.json").write_text(
        json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )
    seconds = time.perf_counter() - t0
    return SiteSummary(
        site=profile.name,
        batch=batch,
        batch_dir=batch_dir,
        truth_json=truth_dir / f"{batch}.json",
        n_images=n_images,
        n_patients=int(df["Patient ID"].nunique()),
        prevalence=written_prev,
        seconds=seconds,
        images_per_second=n_images / seconds,
        n_train=n_train,
        n_test=n_test,
        unlabelled=bool(unlabelled),
    )


def simulate_cohort(
    landing_root: str | os.PathLike[str],
    *,
    truth_root: str | os.PathLike[str],
    scale: str | CohortScale = "demo",
    seed: int = 0,
    sites: Sequence[str] | None = None,
    batch: str = "b0001",
    workers: int | None = None,
    landing_dir: str = STUDY,
) -> CohortSummary:
    """Simulate the vendor site and the deployment sites of ``scale`` into ``landing_root``.

    Parameters
    ----------
    landing_root, truth_root : path
        Landing root (``<landing_root>/<landing_dir>/<site>/<batch>/``) and truth sidecar root.
    scale : {"tiny", "demo", "full"} or CohortScale
        Cohort sizes.
    seed : int
        Master seed (same seed and scale give byte-identical files).
    sites : sequence of str, optional
        Subset of ``DEFAULT_SITES`` (default: all, vendor first).
    batch : str
        Batch name for every site.
    workers : int, optional
        Rendering processes (see :func:`simulate_site_batch`).
    landing_dir : str
        The landing folder (default ``"cxr"``; see :func:`simulate_site_batch`).

    Returns
    -------
    CohortSummary

    Examples
    --------
    >>> s = simulate_cohort("var/landing", truth_root="var/truth", scale="tiny",
    ...                     sites=["site_a"])  # doctest: +SKIP
    >>> s.site("site_a").n_images  # doctest: +SKIP
    60
    """
    sc = _resolve_scale(scale)
    names = list(DEFAULT_SITES) if sites is None else list(sites)
    unknown = [s for s in names if s not in DEFAULT_SITES]
    if unknown:
        raise ValueError(
            f"sites {unknown} are not default sites; expected names from {list(DEFAULT_SITES)}"
        )
    t0 = time.perf_counter()
    out = [
        simulate_site_batch(
            landing_root,
            truth_root=truth_root,
            site=name,
            scale=sc,
            seed=seed,
            batch=batch,
            workers=workers,
            landing_dir=landing_dir,
        )
        for name in names
    ]
    seconds = time.perf_counter() - t0
    total = sum(s.n_images for s in out)
    return CohortSummary(sc.name, int(seed), tuple(out), seconds, total / seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m clinaudit.sources.cxr_simulator --out DIR --truth DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m clinaudit.sources.cxr_simulator",
        description="Simulate the multi-site chest X-ray cohort into a landing directory.",
    )
    parser.add_argument("--out", required=True, help="landing root")
    parser.add_argument("--truth", required=True, help="truth sidecar root (tests only)")
    parser.add_argument("--scale", default="demo", choices=sorted(SCALES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sites", default=None, help="comma-separated subset of the sites")
    parser.add_argument("--batch", default="b0001")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    sites = [s.strip() for s in args.sites.split(",") if s.strip()] if args.sites else None
    summary = simulate_cohort(
        args.out,
        truth_root=args.truth,
        scale=args.scale,
        seed=args.seed,
        sites=sites,
        batch=args.batch,
        workers=args.workers,
    )
    for s in summary.sites:
        print(
            f"{s.site:<11} {s.n_images:>6} images {s.n_patients:>6} patients "
            f"{s.images_per_second:8.1f} img/s  {s.batch_dir}"
        )
    print(
        f"total {summary.n_images} images in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.1f} img/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
