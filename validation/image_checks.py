"""Every image of one landed batch, checked: read once, hashed, decoded, checked, measured.

The per-image step of :func:`clinaudit.validation.ingest.ingest_batch`, in chunks across
``IngestConfig.workers`` processes ("spawn": safe inside a multi-threaded Dagster run, the same on
every OS). An image whose bytes differ from the manifest is refused *without decoding it*; the
results are in task order for any number of workers.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

from clinaudit.sources.images import META_KEYS, ImageDecodeError, decode_image

from .quality import quality_features

if TYPE_CHECKING:
    from .ingest import IngestConfig

__all__ = ["Outcome", "Task", "run_image_checks"]

_MAX_CHUNK = 256

# One image task: (row position, relative file, manifest sha256 or None, manifest size or None).
Task = tuple[int, str, str | None, int | None]
# Outcome: (row position, None, payload) on success or (row position, (check, message, fix), None).
Outcome = tuple[int, tuple[str, str, str] | None, dict[str, object] | None]


def _check_one(batch_dir: Path, task: Task, cfg: IngestConfig) -> Outcome:
    pos, rel, want_sha, want_size = task

    def fail(check: str, message: str, fix: str) -> Outcome:
        return pos, (check, message, fix), None

    if want_sha is None and not (batch_dir / rel).exists():
        # Neither landed nor promised: one bad row of the label table, not a broken manifest.
        return fail(
            "image_missing",
            "image named by the label table is absent from the batch (and not listed in "
            "manifest.json)",
            "upload the image and re-create manifest.json, or remove its row from the label table",
        )
    if want_sha is None:
        return fail(
            "not_in_manifest",
            "image is not listed in manifest.json, so its integrity cannot be checked",
            "re-create manifest.json after every file of the batch is uploaded",
        )
    try:
        with open(batch_dir / rel, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return fail(
            "image_missing",
            "image named by the label table is absent from the batch",
            "upload the image, or remove its row from the label table",
        )
    except OSError as err:
        return fail(
            "image_unreadable",
            f"image cannot be read ({type(err).__name__}: {err.strerror or err})",
            "check that the path is a readable regular file",
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != want_sha or len(data) != want_size:
        return fail(
            "hash_mismatch",
            f"file has {len(data)} bytes with sha256 {digest[:16]}..., manifest.json says "
            f"{want_size} bytes with sha256 {want_sha[:16]}...; it was not decoded",
            "re-upload the file (it was corrupted or changed after the manifest was written)",
        )
    try:
        img = decode_image(data, name=rel, max_pixels=cfg.max_pixels)
    except ImageDecodeError as err:
        return fail(err.check, err.message, err.fix)
    if img.photometric not in cfg.allowed_photometric:
        return fail(
            "photometric",
            f"PhotometricInterpretation {img.photometric} is not allowed "
            f"(allowed: {list(cfg.allowed_photometric)})",
            "export the images with an allowed photometric interpretation",
        )
    if img.bits_stored not in cfg.allowed_bits:
        return fail(
            "bit_depth",
            f"{img.bits_stored} bits stored is not allowed (allowed: {list(cfg.allowed_bits)})",
            "export the images with one of the allowed bit depths",
        )
    short, long = min(img.rows, img.cols), max(img.rows, img.cols)
    if short < cfg.min_size or long > cfg.max_size:
        return fail(
            "image_size",
            f"image is {img.rows} x {img.cols} pixels; sides must lie within "
            f"[{cfg.min_size}, {cfg.max_size}]",
            "send the radiograph at its acquisition resolution (not a thumbnail or a mosaic)",
        )
    payload: dict[str, object] = {
        "sha256": digest,
        "image_format": img.format,
        **quality_features(img),
        **{f"meta_{k}": img.meta.get(k, "") for k in META_KEYS},
    }
    return pos, None, payload


def _check_chunk(batch_dir: str, tasks: Sequence[Task], cfg: IngestConfig) -> list[Outcome]:
    """Process-pool entry point: check a chunk of images, in order."""
    base = Path(batch_dir)
    return [_check_one(base, t, cfg) for t in tasks]


def run_image_checks(
    batch_dir: Path,
    tasks: list[Task],
    cfg: IngestConfig,
    progress: Callable[[int, int], None] | None,
) -> list[Outcome]:
    """Check every task's image; ``progress(done, total)`` after each chunk."""
    total = len(tasks)
    if total == 0:
        if progress is not None:
            progress(0, 0)
        return []
    size = max(1, min(_MAX_CHUNK, math.ceil(total / (cfg.workers * 8))))
    chunks = [tasks[i : i + size] for i in range(0, total, size)]
    results: list[list[Outcome] | None] = [None] * len(chunks)
    done = 0
    if cfg.workers == 1 or len(chunks) == 1:
        for i, chunk in enumerate(chunks):
            results[i] = _check_chunk(str(batch_dir), chunk, cfg)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    else:
        # "spawn": safe inside a multi-threaded Dagster run process, and the same on every OS.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
            futures = {
                pool.submit(_check_chunk, str(batch_dir), chunk, cfg): i
                for i, chunk in enumerate(chunks)
            }
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                done += len(chunks[i])
                if progress is not None:
                    progress(done, total)
    return [outcome for chunk in results if chunk is not None for outcome in chunk]
