"""Deterministic simulator of the ``peds_vqa`` study: pediatric chest films, VinDr-PCXR layout.

Everything it writes is SIMULATED (``"simulated": true`` in every manifest). One site,
``childrens_hospital``, lands several batches ``b-0001``, ``b-0002``, ... of a few hundred films
each under ``<landing>/peds_vqa/childrens_hospital/<batch>/`` in the layout of
:mod:`~clinaudit.sources.vindr_pcxr` (images, ``image_labels.csv``, ``annotations.csv``,
``metadata.csv``, manifest last). Films are 16-bit or 8-bit PNG (MONOCHROME2) or 12-bit
MONOCHROME1 CR DICOM; infants are mostly AP. Some patients have several films, so splits must
be patient-disjoint. Each category has a prevalence of 20-30 %; findings co-occur freely.
Each film is read by one radiologist, some by two; a second reader may miss a subtle finding
(the image is positive when any reader marks it). Boxes come from the renderer's masks (one per
side for the bilateral-capable findings) in pixels of the stored image.

The truth sidecar (tests and evaluation only) is ``<truth>/peds_vqa/childrens_hospital/``
``<batch>.csv`` (per film: severities, anatomy, true union boxes in pixels) and
``<batch>_masks.npz`` (boolean masks, key ``<image_id>__<category>``).

Every draw is keyed by ``SeedSequence([seed, crc32(site), crc32(batch)])`` and a spawn key per
film, so serial and parallel runs write byte-identical files. Batches already landed are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import math
import os
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image

from clinaudit.sources.cxr_render import apply_acquisition
from clinaudit.sources.cxr_sites import SiteProfile
from clinaudit.sources.dicom_io import CxrDicomMeta, deterministic_uid, write_cxr_dicom
from clinaudit.sources.landing import MANIFEST_NAME, LandingError, validate_name, write_manifest
from clinaudit.sources.peds_render import PEDS_CATEGORIES, render_peds_cxr, sample_peds_anatomy
from clinaudit.sources.peds_truth import masks_npz_bytes, union_box, write_csv_bytes
from clinaudit.sources.render_pool import chunk_size, render_chunks, worker_count
from clinaudit.sources.vindr_pcxr import (
    ANNOTATION_COLUMNS,
    ANNOTATIONS_FILE,
    CATEGORY_LABELS,
    LABEL_LAYOUT,
    LABELS_FILE,
    METADATA_COLUMNS,
    METADATA_FILE,
    NO_FINDING,
    STUDY,
)

__all__ = [
    "PREVALENCE",
    "SCALES",
    "SITE",
    "PedsBatchSummary",
    "PedsScale",
    "PedsStudySummary",
    "dicom_age",
    "simulate_peds_study",
]

SITE = "childrens_hospital"
CREATED_UTC = "2024-01-01T00:00:00Z"
#: Target prevalence of each category (independent draws, so findings co-occur).
PREVALENCE: dict[str, float] = {
    "consolidation": 0.27,
    "interstitial_opacity": 0.25,
    "cardiomegaly": 0.22,
    "effusion": 0.22,
}
LABEL_COLUMNS: tuple[str, ...] = (
    "image_id", "rad_id", *(CATEGORY_LABELS[c] for c in PEDS_CATEGORIES), NO_FINDING,
)  # fmt: skip
#: Findings drawn on both sides get one box per side (as a radiologist would draw them).
_PER_SIDE = ("interstitial_opacity", "effusion")
_FORMATS = ("png16", "png8", "dicom")


@dataclass(frozen=True)
class PedsScale:
    """Size of a simulated study: batches of ``batch_images`` films of ``image_px`` pixels."""

    name: str
    n_batches: int
    batch_images: int
    image_px: int

    @property
    def n_images(self) -> int:
        return self.n_batches * self.batch_images


SCALES: dict[str, PedsScale] = {
    "tiny": PedsScale("tiny", 2, 80, 128),
    "demo": PedsScale("demo", 4, 300, 256),
    "full": PedsScale("full", 20, 400, 256),
}

_BASE = SiteProfile(
    name=SITE, code="ch", institution="SIMULATED CHILDRENS HOSPITAL",
    manufacturer="Acme Imaging", model_name="AcmePeds DR", field_of_view_mm=300.0,
    noise_sd=0.010, blur_mm=0.5, marker_prob=0.15, collimation_prob=0.15, kvp=(60.0, 80.0),
)  # fmt: skip
#: Acquisition of each stored format: PNG exports are MONOCHROME2, the CR DICOMs MONOCHROME1.
PROFILES: dict[str, SiteProfile] = {
    "png16": dataclasses.replace(_BASE, bits_stored=16),
    "png8": dataclasses.replace(_BASE, bits_stored=8),
    "dicom": dataclasses.replace(_BASE, modality="CR", bits_stored=12, photometric="MONOCHROME1"),
}


@dataclass(frozen=True)
class PedsBatchSummary:
    """One batch of :func:`simulate_peds_study` (``kept``: it had landed before, untouched)."""

    batch: str
    batch_dir: Path
    kept: bool
    n_images: int
    n_patients: int
    positives: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class PedsStudySummary:
    """What :func:`simulate_peds_study` wrote."""

    scale: str
    seed: int
    site: str
    batches: tuple[PedsBatchSummary, ...]
    seconds: float

    @property
    def n_images(self) -> int:
        """Films in all batches (kept ones included)."""
        return sum(b.n_images for b in self.batches)


def dicom_age(age_years: float) -> str:
    """DICOM age string: days under 1 month, months under 2 years, else years.

    Examples
    --------
    >>> dicom_age(0.05), dicom_age(1.5), dicom_age(4.9)
    ('018D', '018M', '004Y')
    """
    if age_years < 1.0 / 12.0:
        return f"{int(age_years * 365.25):03d}D"
    if age_years < 2.0:
        return f"{int(age_years * 12.0 + 1e-6):03d}M"
    return f"{int(age_years):03d}Y"


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _population(rng: np.random.Generator, n: int, number: int) -> pd.DataFrame:
    """Films of one batch: patients with 1-3 films, age, sex, view, format, findings."""
    rows = []
    patient = 0
    while len(rows) < n:
        patient += 1
        k = min(int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1])), n - len(rows))
        band = rng.choice(3, p=[0.35, 0.35, 0.30])
        months = [int(rng.integers(0, 12)), int(rng.integers(12, 60)), int(rng.integers(60, 120))]
        age = (months[band] + float(rng.random())) / 12.0
        sex = "M" if rng.random() < 0.55 else "F"
        for j in range(k):
            a = min(age + j * float(rng.uniform(0.0, 0.1)), 9.99)
            p_ap = 0.95 if a < 1 else 0.8 if a < 3 else 0.45 if a < 6 else 0.2
            sev = {
                c: (0.08 + 0.92 * float(rng.beta(1.6, 1.3))) if rng.random() < p else 0.0
                for c, p in PREVALENCE.items()
            }
            rows.append({
                "patient_id": f"CH{number:02d}{patient:05d}", "age_years": round(a, 4),
                "sex": sex, "view": "AP" if rng.random() < p_ap else "PA",
                "format": _FORMATS[int(rng.choice(3, p=[0.4, 0.3, 0.3]))],
                "n_readers": 2 if rng.random() < 0.15 else 1,
                **{f"sev_{c}": s for c, s in sev.items()},
            })  # fmt: skip
    return pd.DataFrame(rows)


def _encode(pixels: np.ndarray, fmt: str, meta: CxrDicomMeta, age: str) -> tuple[bytes, str]:
    if fmt == "dicom":
        data = write_cxr_dicom(None, pixels, meta)
        assert data is not None
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PatientAge = age  # months or days for infants (the writer knows whole years only)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue(), ".dicom"
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), ".png"


def _render_chunk(args: tuple) -> list[tuple[str, str, dict[str, object], dict[str, bytes]]]:
    """Render, encode and write a chunk of films (process-pool entry point)."""
    entropy, size, images_dir, jobs = args
    out = []
    for job in jobs:
        rng = np.random.default_rng(np.random.SeedSequence(list(entropy), spawn_key=(job["i"],)))
        sev = {c: job[f"sev_{c}"] for c in PEDS_CATEGORIES if job[f"sev_{c}"] > 0}
        anatomy = sample_peds_anatomy(
            rng, age_years=job["age_years"], view=job["view"],
            cardiomegaly=sev.get("cardiomegaly", 0.0),
        )  # fmt: skip
        img, masks = render_peds_cxr(
            rng, findings=sev, age_years=job["age_years"], sex=job["sex"], view=job["view"],
            size=size, anatomy=anatomy,
        )  # fmt: skip
        profile = PROFILES[job["format"]]
        pixels, acq = apply_acquisition(img, rng, profile, native_px=size, view=job["view"])
        meta = CxrDicomMeta(
            sop_instance_uid=deterministic_uid("sop", *job["uid"]),
            study_instance_uid=deterministic_uid("study", *job["uid"]),
            series_instance_uid=deterministic_uid("series", *job["uid"]),
            patient_id=job["patient_id"], patient_name=f"SIM^PATIENT{job['patient_id']}",
            patient_sex=job["sex"], patient_age=int(job["age_years"]),
            view_position=job["view"], modality=profile.modality,
            manufacturer=profile.manufacturer, model_name=profile.model_name,
            institution=profile.institution, photometric=profile.photometric,
            bits_stored=profile.bits_stored, pixel_spacing_mm=acq.pixel_spacing_mm, kvp=acq.kvp,
            study_date="20230101", burned_in_annotation=bool(acq.marker),
        )  # fmt: skip
        data, ext = _encode(pixels, job["format"], meta, dicom_age(job["age_years"]))
        name = f"{job['image_id']}{ext}"
        with open(os.path.join(images_dir, name), "wb") as fh:
            fh.write(data)
        facts: dict[str, object] = {
            "file": f"images/{name}", "ctr": round(anatomy.ctr, 6),
            "ctr_normal": round(anatomy.ctr_normal, 6), "thymus": round(anatomy.thymus, 6),
            "photometric": profile.photometric, "bits_stored": profile.bits_stored,
        }  # fmt: skip
        packed = {c: np.packbits(m).tobytes() for c, m in masks.items()}
        out.append((name, hashlib.sha256(data).hexdigest(), facts, packed))
    return out


def _boxes(category: str, mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Pixel boxes ``(x_min, y_min, x_max, y_max)`` (edges, exclusive max) of one mask."""
    if category not in _PER_SIDE:
        return [union_box(mask)]
    half = mask.shape[1] // 2
    out = []
    for lo, hi in ((0, half), (half, mask.shape[1])):
        part = np.zeros_like(mask)
        part[:, lo:hi] = mask[:, lo:hi]
        if part.any():
            out.append(union_box(part))
    return out


def _simulate_batch(
    landing_root: Path, truth_root: Path, sc: PedsScale, seed: int, number: int, workers: int
) -> PedsBatchSummary:
    t0 = time.perf_counter()
    batch = f"b-{number:04d}"
    batch_dir = landing_root / STUDY / SITE / batch
    entropy = (int(seed), _crc(SITE), _crc(batch))
    df = _population(np.random.default_rng(np.random.SeedSequence(list(entropy))), sc.batch_images,
                     number)  # fmt: skip
    if (batch_dir / MANIFEST_NAME).exists():
        return PedsBatchSummary(batch, batch_dir, True, len(df), int(df["patient_id"].nunique()),
                                {}, time.perf_counter() - t0)  # fmt: skip
    if batch_dir.exists() and any(batch_dir.iterdir()):
        raise LandingError(
            batch_dir, "directory holds files but no manifest.json (an interrupted write?)",
            "delete this directory, then simulate again",
        )  # fmt: skip
    images_dir = batch_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    df.insert(0, "image_id", [
        hashlib.sha256(f"{seed}/{SITE}/{batch}/{i}".encode()).hexdigest()[:32]
        for i in range(len(df))
    ])  # fmt: skip
    jobs = [
        {**r, "i": i, "uid": (seed, SITE, batch, i)} for i, r in enumerate(df.to_dict("records"))
    ]
    chunk = chunk_size(len(jobs), workers, largest=32)
    tasks = [(entropy, sc.image_px, str(images_dir), jobs[k : k + chunk])
             for k in range(0, len(jobs), chunk)]  # fmt: skip
    results = render_chunks(_render_chunk, tasks, workers)
    hashes = {f"images/{name}": digest for name, digest, _, _ in results}

    label_rows, ann_rows, meta_rows, truth_rows, masks = [], [], [], [], {}
    for i, (r, (_, _, facts, packed)) in enumerate(zip(df.itertuples(index=False), results,
                                                       strict=True)):  # fmt: skip
        rng = np.random.default_rng(np.random.SeedSequence(list(entropy), spawn_key=(10**7 + i,)))
        readers = [f"R{int(v)}" for v in rng.choice(np.arange(1, 6), r.n_readers, replace=False)]
        shape = (sc.image_px, sc.image_px)
        full = {c: np.unpackbits(np.frombuffer(b, np.uint8))[: shape[0] * shape[1]]
                .reshape(shape).astype(bool) for c, b in packed.items()}  # fmt: skip
        truth = {
            **facts, "image_id": r.image_id, "patient_id": r.patient_id,
            "age_years": r.age_years, "sex": r.sex, "view": r.view, "format": r.format,
        }  # fmt: skip
        for c in PEDS_CATEGORIES:
            truth[f"sev_{c}"] = round(float(getattr(r, f"sev_{c}")), 6)
            box = union_box(full[c]) if c in full else (math.nan,) * 4
            for k, v in zip(("x0", "y0", "x1", "y1"), box, strict=True):
                truth[f"{c}_{k}"] = v
        truth_rows.append(truth)
        masks.update({f"{r.image_id}__{c}": m for c, m in full.items()})
        for j, rad in enumerate(readers):
            # A second reader misses a subtle finding (severity < 0.3) half of the time.
            seen = [
                c for c in full
                if j == 0 or getattr(r, f"sev_{c}") >= 0.3 or rng.random() < 0.5
            ]  # fmt: skip
            label_rows.append([r.image_id, rad, *(int(c in seen) for c in PEDS_CATEGORIES),
                               int(not seen)])  # fmt: skip
            if not seen:
                ann_rows.append([r.image_id, rad, NO_FINDING, "", "", "", ""])
            for c in seen:
                for box in _boxes(c, full[c]):
                    ann_rows.append([r.image_id, rad, CATEGORY_LABELS[c], *box])
        meta_rows.append([r.image_id, r.patient_id, dicom_age(r.age_years), r.sex, r.view])
    for name, columns, rows in ((LABELS_FILE, LABEL_COLUMNS, label_rows),
                                (ANNOTATIONS_FILE, ANNOTATION_COLUMNS, ann_rows),
                                (METADATA_FILE, METADATA_COLUMNS, meta_rows)):  # fmt: skip
        data = write_csv_bytes(rows, columns)
        (batch_dir / name).write_bytes(data)
        hashes[name] = hashlib.sha256(data).hexdigest()
    write_manifest(
        batch_dir, study=STUDY, site=SITE, batch=batch, label_file=LABELS_FILE,
        label_layout=LABEL_LAYOUT, simulated=True, created_utc=CREATED_UTC, hashes=hashes,
    )  # fmt: skip
    truth_dir = truth_root / STUDY / SITE
    truth_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(truth_rows).to_csv(truth_dir / f"{batch}.csv", index=False, lineterminator="\n")
    (truth_dir / f"{batch}_masks.npz").write_bytes(masks_npz_bytes(masks))
    positives = {c: int((df[f"sev_{c}"] > 0).sum()) for c in PEDS_CATEGORIES}
    return PedsBatchSummary(batch, batch_dir, False, len(df), int(df["patient_id"].nunique()),
                            positives, time.perf_counter() - t0)  # fmt: skip


def simulate_peds_study(
    landing_root: str | os.PathLike[str],
    *,
    truth_root: str | os.PathLike[str],
    scale: str | PedsScale = "demo",
    seed: int = 0,
    workers: int | None = 1,
) -> PedsStudySummary:
    """Simulate every batch of the ``peds_vqa`` study (batches already landed are kept).

    Parameters
    ----------
    landing_root : path
        Landing root; batches go to ``<landing_root>/peds_vqa/childrens_hospital/b-000N/``.
    truth_root : path
        Truth sidecar root (``<truth_root>/peds_vqa/childrens_hospital/b-000N.csv`` and
        ``b-000N_masks.npz``); for tests and evaluation only.
    scale : {"tiny", "demo", "full"} or PedsScale
        About 160, 1,200 and 8,000 films (128, 256 and 256 pixels).
    seed : int
        Master seed: the same seed and scale write byte-identical files.
    workers : int, optional
        Rendering processes (``None``: ``min(cpu_count, 8)``); the bytes do not depend on it.

    Returns
    -------
    PedsStudySummary

    Raises
    ------
    LandingError
        A batch directory holds files but no manifest (an interrupted earlier run).

    Examples
    --------
    >>> s = simulate_peds_study("var/landing", truth_root="var/truth",
    ...                         scale="tiny")  # doctest: +SKIP
    >>> s.n_images  # doctest: +SKIP
    160
    """
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ValueError(f"scale={scale!r}; expected one of {sorted(SCALES)} or a PedsScale")
        scale = SCALES[scale]
    validate_name("site", SITE)
    n_workers = worker_count(workers)
    t0 = time.perf_counter()
    batches = tuple(
        _simulate_batch(Path(landing_root), Path(truth_root), scale, int(seed), k, n_workers)
        for k in range(1, scale.n_batches + 1)
    )
    return PedsStudySummary(scale.name, int(seed), SITE, batches, time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m clinaudit.sources.peds_simulator --out DIR --truth DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m clinaudit.sources.peds_simulator",
        description="Simulate the peds_vqa study (pediatric chest films, VinDr-PCXR layout; "
        "SIMULATED data) into a landing directory.",
    )
    parser.add_argument("--out", required=True, help="landing root")
    parser.add_argument("--truth", required=True, help="truth sidecar root (tests only)")
    parser.add_argument("--scale", default="demo", choices=sorted(SCALES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    s = simulate_peds_study(
        args.out, truth_root=args.truth, scale=args.scale, seed=args.seed, workers=args.workers
    )
    for b in s.batches:
        state = "kept (already landed)" if b.kept else f"{b.seconds:.1f} s"
        print(f"{b.batch} {b.n_images:>5} films {b.n_patients:>5} patients  {state}  {b.batch_dir}")
    print(f"total {s.n_images} films in {s.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
