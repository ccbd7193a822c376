"""Deterministic simulator of dermatology (photo, clinical note) pairs in a real-format layout.

Everything it writes is SIMULATED (``"simulated": true`` in every manifest). For each clinic batch
it writes ``<landing>/<landing_dir>/<clinic>/<batch>/`` (``landing_dir`` defaults to
``multimodal_triage``)::

    images/PAT_<patient>_<lesion>_<image>.png|.jpg   one RGB photo per pair (clinic's format)
    metadata.csv                                     PAD-UFES-20-like metadata, one row per photo
    manifest.json                                    written last; label_layout "derm_pairs"

and the truth sidecar ``<truth>/<landing_dir>/<clinic>/<batch>.json`` (clinic profile, category
table with the modality that informs each category, history profiles, annotator model, contrast
mechanism and its parameter, counts) and ``<batch>.csv`` (per photo: true Fitzpatrick type, ITA
of the skin and from the pixels, lesion contrast as rendered / physical / on reference skin,
acquisition, hidden history, the note). The sidecar is for tests and evaluation only.

Patients, lesions and histories come from :mod:`~clinaudit.sources.derm_population`, notes from
:mod:`~clinaudit.sources.derm_notes`, photos from :mod:`~clinaudit.sources.derm_render`. Every
draw is keyed by ``SeedSequence([seed, crc32(clinic), crc32(batch)])`` and a spawn key per
patient, lesion or photo, so serial and parallel runs write byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import os
import re
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clinaudit.sources.derm_notes import write_note
from clinaudit.sources.derm_photos import PhotoJob, keyed_rng, render_photos
from clinaudit.sources.derm_population import sample_clinic_population
from clinaudit.sources.derm_sites import (
    CATEGORIES,
    CATEGORY_BY_CODE,
    DEFAULT_CLINICS,
    SCALES,
    ClinicProfile,
    DermScale,
)
from clinaudit.sources.derm_truth import write_derm_truth
from clinaudit.sources.landing import MANIFEST_NAME, LandingError, validate_name, write_manifest

__all__ = [
    "DEFAULT_CONTRAST_BIAS",
    "LABEL_LAYOUT",
    "METADATA_COLUMNS",
    "STUDY",
    "DermClinicSummary",
    "DermStudySummary",
    "simulate_derm_clinic",
    "simulate_derm_study",
]

STUDY = "multimodal_triage"
LABEL_LAYOUT = "derm_pairs"
#: Physical lesion-contrast loss on darker skin (see :mod:`~clinaudit.sources.derm_render`).
DEFAULT_CONTRAST_BIAS = 1.0
#: Fixed manifest timestamp: simulated batches must be byte-identical across runs.
CREATED_UTC = "2024-01-01T00:00:00Z"
#: Columns of the simulated ``metadata.csv`` (docs/formats.md, "Dermatology image + note pairs").
METADATA_COLUMNS: tuple[str, ...] = (
    "img_id", "patient_id", "lesion_id", "diagnostic", "age", "gender", "region",
    "fitzpatrick_a", "fitzpatrick_b", "image_type", "note",
)  # fmt: skip
_EXT = {"png": ".png", "jpeg": ".jpg"}


@dataclass(frozen=True)
class DermClinicSummary:
    """What :func:`simulate_derm_clinic` wrote for one clinic batch."""

    clinic: str
    batch: str
    batch_dir: Path
    truth_json: Path
    n_pairs: int
    n_patients: int
    n_lesions: int
    categories: dict[str, int]
    fitzpatrick: dict[int, int]
    note_missing_rate: float
    annotator_exact_agreement: float
    seconds: float
    pairs_per_second: float


@dataclass(frozen=True)
class DermStudySummary:
    """What :func:`simulate_derm_study` wrote: one :class:`DermClinicSummary` per clinic."""

    scale: str
    seed: int
    clinics: tuple[DermClinicSummary, ...]
    seconds: float

    @property
    def n_pairs(self) -> int:
        """Pairs written over all clinics."""
        return sum(c.n_pairs for c in self.clinics)

    @property
    def pairs_per_second(self) -> float:
        """Throughput of the whole run."""
        return self.n_pairs / self.seconds

    def clinic(self, name: str) -> DermClinicSummary:
        """The summary of clinic ``name``."""
        for c in self.clinics:
            if c.clinic == name:
                return c
        raise KeyError(
            f"clinic {name!r} was not simulated; simulated: {[c.clinic for c in self.clinics]}"
        )


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _batch_slot(batch: str) -> int:
    m = re.search(r"(\d+)$", batch)
    return ((int(m.group(1)) if m else _crc(batch)) - 1) % 10


def _clinic(clinic: str | ClinicProfile) -> ClinicProfile:
    if isinstance(clinic, ClinicProfile):
        return clinic
    if clinic not in DEFAULT_CLINICS:
        raise ValueError(
            f"clinic={clinic!r} is not a default clinic; expected one of {list(DEFAULT_CLINICS)} "
            "or a ClinicProfile instance"
        )
    return DEFAULT_CLINICS[clinic]


def _scale(scale: str | DermScale) -> DermScale:
    if isinstance(scale, DermScale):
        return scale
    if scale not in SCALES:
        raise ValueError(
            f"scale={scale!r} is not a known scale; expected one of {sorted(SCALES)} or a "
            "DermScale instance"
        )
    return SCALES[scale]


def _csv_bytes(rows: list[list[object]], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _check_target(batch_dir: Path) -> None:
    if (batch_dir / MANIFEST_NAME).exists():
        raise LandingError(
            batch_dir,
            "batch already landed (manifest.json exists) and landed data is immutable",
            "choose a new batch name (e.g. 'b-0002') or another landing root",
        )
    if batch_dir.exists() and any(batch_dir.iterdir()):
        raise LandingError(
            batch_dir,
            "directory holds files but no manifest.json (an interrupted write?)",
            "delete this directory or choose a new batch name",
        )


def _notes(df: pd.DataFrame, clinic: ClinicProfile, entropy: tuple[int, ...]) -> list[str]:
    """The note of every photo (one per lesion; ``""`` where the lesion has none)."""
    by_lesion: dict[int, str] = {}
    for row in df.drop_duplicates("lesion_idx").to_dict("records"):
        if row["note_missing"]:
            by_lesion[row["lesion_idx"]] = ""
            continue
        rng = keyed_rng(entropy, 1, row["lesion_idx"])
        by_lesion[row["lesion_idx"]] = write_note(row, rng, typo_rate=clinic.typo_rate)
    return [by_lesion[i] for i in df["lesion_idx"]]


def _fitz_text(value: int) -> str:
    return str(value) if value else ""


def simulate_derm_clinic(
    landing_root: str | os.PathLike[str],
    *,
    truth_root: str | os.PathLike[str],
    clinic: str | ClinicProfile,
    scale: str | DermScale = "demo",
    seed: int = 0,
    workers: int | None = None,
    batch: str = "b-0001",
    landing_dir: str = STUDY,
    contrast_bias: float = DEFAULT_CONTRAST_BIAS,
    n_pairs: int | None = None,
) -> DermClinicSummary:
    """Simulate one clinic batch of (photo, note) pairs and land it (manifest last).

    Parameters
    ----------
    landing_root : path
        Landing root; the batch goes to ``<landing_root>/<landing_dir>/<clinic>/<batch>/``.
    truth_root : path
        Where the truth sidecar goes (``<truth_root>/<landing_dir>/<clinic>/<batch>.json`` and
        ``.csv``).
    clinic : str or ClinicProfile
        A name from ``DEFAULT_CLINICS`` or a custom profile.
    scale : {"tiny", "demo", "full"} or DermScale
        Photo size and (unless ``n_pairs`` is given) the number of pairs.
    seed : int
        Master seed; with clinic and batch names it determines every byte written.
    workers : int, optional
        Rendering processes; ``1`` renders in this process; default ``min(cpu_count, 8)``. The
        bytes written do not depend on it.
    batch : str
        Batch name (a safe directory name); its trailing number picks the block of ids.
    landing_dir : str
        The study's landing folder (also the manifest's ``study``).
    contrast_bias : float
        Skin-tone dependence of lesion contrast: 1 physical (default), 0 none, > 1 exaggerated.
    n_pairs : int, optional
        Number of pairs instead of the scale's size for the clinic.

    Returns
    -------
    DermClinicSummary

    Raises
    ------
    LandingError
        If the batch already holds a manifest (landed data is immutable) or leftover files, or a
        name is not a safe directory name.
    """
    t0 = time.perf_counter()
    profile, sc = _clinic(clinic), _scale(scale)
    for kind, name in (("clinic", profile.name), ("batch", batch), ("landing_dir", landing_dir)):
        validate_name(kind, name)
    n = sc.n_pairs(profile.name) if n_pairs is None else int(n_pairs)
    if n < 1:
        raise ValueError(f"n_pairs={n}; expected at least 1 pair")
    if not math.isfinite(contrast_bias) or contrast_bias < 0:
        raise ValueError(f"contrast_bias={contrast_bias!r}; expected a finite value >= 0")
    batch_dir = Path(landing_root) / landing_dir / profile.name / batch
    _check_target(batch_dir)
    images_dir = batch_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    entropy = (int(seed), _crc(profile.name), _crc(batch))
    df = sample_clinic_population(profile, n, keyed_rng(entropy))
    base = profile.number * 1_000_000 + _batch_slot(batch) * 100_000
    df["patient_id"] = [f"PAT_{base + p + 1}" for p in df["patient_idx"]]
    df["lesion_id"] = base + df["lesion_idx"] + 1
    ext = _EXT[profile.image_format]
    df["img_id"] = [
        f"{pid}_{lid}_{base + i + 1}{ext}"
        for i, (pid, lid) in enumerate(zip(df["patient_id"], df["lesion_id"], strict=True))
    ]
    df["note"] = _notes(df, profile, entropy)
    jobs = [
        PhotoJob(i, r.img_id, CATEGORY_BY_CODE[r.diagnostic].look, float(r.diameter_mm),
                 int(r.patient_idx), int(r.lesion_idx), float(r.ita_target))
        for i, r in enumerate(df.itertuples(index=False))
    ]  # fmt: skip
    hashes, truth = render_photos(
        jobs, clinic=profile, size=sc.image_px, images_dir=images_dir, entropy=entropy,
        contrast_bias=float(contrast_bias), workers=workers,
    )  # fmt: skip
    df["image_type"] = truth["image_type"].to_numpy()
    rows = [
        [r.img_id, r.patient_id, int(r.lesion_id), r.diagnostic, int(r.age), r.sex, r.region,
         _fitz_text(int(r.fitzpatrick_a)), _fitz_text(int(r.fitzpatrick_b)), r.image_type, r.note]
        for r in df.itertuples(index=False)
    ]  # fmt: skip
    metadata = _csv_bytes(rows, METADATA_COLUMNS)
    (batch_dir / "metadata.csv").write_bytes(metadata)
    hashes["metadata.csv"] = hashlib.sha256(metadata).hexdigest()
    write_manifest(
        batch_dir, study=landing_dir, site=profile.name, batch=batch, label_file="metadata.csv",
        label_layout=LABEL_LAYOUT, simulated=True, created_utc=CREATED_UTC, hashes=hashes,
    )  # fmt: skip

    truth_json = write_derm_truth(
        truth_root, landing_dir, profile, sc, batch, seed, contrast_bias, df, truth
    )
    seconds = time.perf_counter() - t0
    a, b = df["fitzpatrick_a"], df["fitzpatrick_b"]
    both = (a > 0) & (b > 0)
    return DermClinicSummary(
        clinic=profile.name,
        batch=batch,
        batch_dir=batch_dir,
        truth_json=truth_json,
        n_pairs=n,
        n_patients=int(df["patient_idx"].nunique()),
        n_lesions=int(df["lesion_idx"].nunique()),
        categories={c.code: int((df["diagnostic"] == c.code).sum()) for c in CATEGORIES},
        fitzpatrick={t: int((df["fitzpatrick_true"] == t).sum()) for t in range(1, 7)},
        note_missing_rate=float((df["note"] == "").mean()),
        annotator_exact_agreement=float((a[both] == b[both]).mean()) if both.any() else math.nan,
        seconds=seconds,
        pairs_per_second=n / seconds,
    )


def simulate_derm_study(
    landing_root: str | os.PathLike[str],
    *,
    truth_root: str | os.PathLike[str],
    scale: str | DermScale = "demo",
    seed: int = 0,
    clinics: Sequence[str] | None = None,
    batch: str = "b-0001",
    workers: int | None = None,
    landing_dir: str = STUDY,
    contrast_bias: float = DEFAULT_CONTRAST_BIAS,
) -> DermStudySummary:
    """Simulate every clinic of ``scale`` (development clinics first, the held-out one last).

    Parameters
    ----------
    landing_root, truth_root : path
        Landing root and truth sidecar root (see :func:`simulate_derm_clinic`).
    scale : {"tiny", "demo", "full"} or DermScale
        Sizes: about 300, 2,500 and 14,000 pairs in all.
    seed : int
        Master seed (same seed and scale give byte-identical files).
    clinics : sequence of str, optional
        Subset of ``DEFAULT_CLINICS`` (default: all).
    batch, workers, landing_dir, contrast_bias
        As for :func:`simulate_derm_clinic`.

    Returns
    -------
    DermStudySummary

    Examples
    --------
    >>> s = simulate_derm_study("var/landing", truth_root="var/truth",
    ...                         scale="tiny")  # doctest: +SKIP
    >>> s.n_pairs  # doctest: +SKIP
    300
    """
    names = list(DEFAULT_CLINICS) if clinics is None else list(clinics)
    unknown = [c for c in names if c not in DEFAULT_CLINICS]
    if unknown:
        raise ValueError(
            f"clinics {unknown} are not default clinics; expected names from "
            f"{list(DEFAULT_CLINICS)}"
        )
    sc = _scale(scale)
    t0 = time.perf_counter()
    out = tuple(
        simulate_derm_clinic(
            landing_root, truth_root=truth_root, clinic=name, scale=sc, seed=seed,
            workers=workers, batch=batch, landing_dir=landing_dir, contrast_bias=contrast_bias,
        )
        for name in names
    )  # fmt: skip
    return DermStudySummary(sc.name, int(seed), out, time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m clinaudit.sources.derm_simulator --out DIR --truth DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m clinaudit.sources.derm_simulator",
        description="Simulate dermatology (photo, note) pairs of every clinic into a landing "
        "directory (SIMULATED data).",
    )
    parser.add_argument("--out", required=True, help="landing root")
    parser.add_argument("--truth", required=True, help="truth sidecar root (tests only)")
    parser.add_argument("--scale", default="demo", choices=sorted(SCALES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clinics", default=None, help="comma-separated subset of the clinics")
    parser.add_argument("--batch", default="b-0001")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--contrast-bias", type=float, default=DEFAULT_CONTRAST_BIAS)
    args = parser.parse_args(argv)
    clinics = [c.strip() for c in args.clinics.split(",") if c.strip()] if args.clinics else None
    summary = simulate_derm_study(
        args.out, truth_root=args.truth, scale=args.scale, seed=args.seed, clinics=clinics,
        batch=args.batch, workers=args.workers, contrast_bias=args.contrast_bias,
    )  # fmt: skip
    for c in summary.clinics:
        print(
            f"{c.clinic:<17} {c.n_pairs:>6} pairs {c.n_patients:>6} patients "
            f"{c.pairs_per_second:8.1f} pairs/s  {c.batch_dir}"
        )
    print(
        f"total {summary.n_pairs} pairs in {summary.seconds:.1f} s "
        f"({summary.pairs_per_second:.1f} pairs/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
