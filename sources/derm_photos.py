"""Render, encode and write a clinic batch's photos, in parallel, with worker-independent bytes.

Each photo draws from three generators keyed by ``SeedSequence(entropy, spawn_key=...)``: the
patient's (skin tone, key ``(3, patient)``), the lesion's (morphology, ``(2, lesion)``) and its
own (camera, pose, texture, hair, noise, ``(4, photo)``). Photos of one lesion therefore show the
same lesion on the same skin, and no photo's bytes depend on which process rendered it or in
which order.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clinaudit.sources.derm_lesions import draw_lesion
from clinaudit.sources.derm_render import draw_acquisition, encode_photo, render_photo, skin_tone
from clinaudit.sources.derm_sites import ClinicProfile
from clinaudit.sources.render_pool import chunk_size, render_chunks, worker_count

__all__ = ["PhotoJob", "keyed_rng", "render_photos"]


def keyed_rng(entropy: Sequence[int], *key: int) -> np.random.Generator:
    """Generator of ``SeedSequence(entropy, spawn_key=key)`` (no key: the batch's own)."""
    return np.random.default_rng(np.random.SeedSequence(list(entropy), spawn_key=tuple(key)))


@dataclass(frozen=True)
class PhotoJob:
    """One photo to render: its index in the batch, file name, look and whose it is."""

    index: int
    file_name: str
    look: str
    diameter_mm: float
    patient_idx: int
    lesion_idx: int
    ita_target: float


def _render_chunk(
    clinic: ClinicProfile,
    size: int,
    images_dir: str,
    entropy: tuple[int, ...],
    contrast_bias: float,
    jobs: Sequence[PhotoJob],
) -> list[tuple[str, str, dict[str, object]]]:
    """Render, encode and write a chunk of photos; return (name, sha256, truth) for each."""
    out = []
    for job in jobs:
        skin = skin_tone(job.ita_target, keyed_rng(entropy, 3, job.patient_idx))
        lesion = draw_lesion(keyed_rng(entropy, 2, job.lesion_idx), job.look, job.diameter_mm)
        rng = keyed_rng(entropy, 4, job.index)
        acq = draw_acquisition(rng, clinic, job.diameter_mm)
        photo = render_photo(lesion, skin, acq, size=size, rng=rng, contrast_bias=contrast_bias)
        data = encode_photo(photo.rgb, clinic.image_format, clinic.jpeg_quality)
        with open(os.path.join(images_dir, job.file_name), "wb") as fh:
            fh.write(data)
        truth = {
            "ita_true": skin.ita, "ita_pixels": photo.ita_pixels,
            "c_melanin": round(skin.c_mel, 5), "contrast": photo.contrast,
            "contrast_physical": photo.contrast_physical,
            "contrast_reference": photo.contrast_reference,
            "image_type": "dermoscopic" if acq.dermoscopic else "clinical",
            "fov_mm": round(acq.fov_mm, 3), "surface_reflectance": round(acq.surface, 5),
            "exposure": round(acq.exposure, 5), "hairs": acq.hairs, "glare": acq.glare[2] > 0,
        }  # fmt: skip
        out.append((job.file_name, hashlib.sha256(data).hexdigest(), truth))
    return out


def _render_chunk_star(args: tuple) -> list[tuple[str, str, dict[str, object]]]:
    return _render_chunk(*args)


def render_photos(
    jobs: Sequence[PhotoJob],
    *,
    clinic: ClinicProfile,
    size: int,
    images_dir: str | os.PathLike[str],
    entropy: tuple[int, ...],
    contrast_bias: float,
    workers: int | None = None,
) -> tuple[dict[str, str], pd.DataFrame]:
    """Render every job's photo into ``images_dir``.

    Parameters
    ----------
    jobs : sequence of PhotoJob
        The photos, in batch order.
    clinic : ClinicProfile
        Camera and format.
    size : int
        Photo side in pixels.
    images_dir : path
        Existing directory the files go to (``<batch>/images``).
    entropy : tuple of int
        The batch's seed entropy (seed, clinic and batch keys).
    contrast_bias : float
        See :func:`~clinaudit.sources.derm_render.render_photo`.
    workers : int, optional
        Processes; ``1`` renders here; default ``min(cpu_count, 8)``. Bytes do not depend on it.

    Returns
    -------
    hashes : dict of str to str
        ``"images/<file>"`` -> sha256 of every photo written.
    truth : DataFrame
        One row per job, in order: ITA (true and from pixels), contrasts, acquisition.
    """
    n_workers = worker_count(workers)
    chunk = chunk_size(len(jobs), n_workers, largest=64)
    tasks = [
        (clinic, size, str(Path(images_dir)), entropy, contrast_bias, jobs[k : k + chunk])
        for k in range(0, len(jobs), chunk)
    ]
    results: list[tuple[str, str, dict[str, object]]] = render_chunks(
        _render_chunk_star, tasks, n_workers
    )
    hashes = {f"images/{name}": digest for name, digest, _ in results}
    return hashes, pd.DataFrame([t for _, _, t in results])
