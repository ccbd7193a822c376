"""Ingest of one landed batch of dermatology (photo, note) pairs: layout ``derm_pairs``.

:func:`ingest_derm_batch` reads ``<landing>/<study>/<clinic>/<batch>/`` strictly read-only:

1. ``manifest.json`` (a missing or malformed one raises ``LandingError``); its ``label_layout``
   must be ``derm_pairs``.
2. The metadata CSV the manifest names (``label_file``) must be listed, present and match its
   sha256, else :class:`~clinaudit.validation.errors.BatchStructureError`.
3. Rows: :func:`~clinaudit.sources.derm_metadata.read_derm_metadata` (row-level quarantine).
4. Each row's photo is found by file name, never by a path from the table: ``images/<img_id>``,
   else the one manifest entry with that base name (PAD-UFES-20 ships ``imgs_part_1/...``); an id
   without extension tries ``.png``, ``.jpg``, ``.jpeg``. Each photo is read once, hashed against
   the manifest (a mismatch is quarantined undecoded), decoded as RGB
   (:func:`~clinaudit.sources.rgb_images.decode_rgb`), size-checked and measured
   (:func:`photo_features`).
5. Patient and lesion ids are replaced by keyed pseudonyms when a key is given.

Files nobody references, listed but absent, or present but unlisted give warnings. The output
(:class:`DermPairsTable`) has one row per good pair.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.schemas import OutputSchema, schema_columns, validate_table
from clinaudit.sources.derm_metadata import metadata_image_names, read_derm_metadata
from clinaudit.sources.derm_sites import CATEGORY_CODES
from clinaudit.sources.image_types import ImageDecodeError
from clinaudit.sources.landing import Manifest, read_manifest, verify_batch
from clinaudit.sources.rgb_images import decode_rgb
from clinaudit.sources.skin_color import ita_degrees, lab_from_srgb, peripheral_skin_mask
from clinaudit.validation.errors import BatchStructureError, QuarantineRecord, records_to_frame
from clinaudit.validation.ingest import pseudonymise
from clinaudit.validation.ingest_loop import BatchIngest

__all__ = [
    "DERM_COLUMNS",
    "LABEL_LAYOUT",
    "DermPairsTable",
    "ingest_derm_batch",
    "photo_features",
    "read_derm_metadata",
]

LABEL_LAYOUT = "derm_pairs"
_EXTENSIONS = (".png", ".jpg", ".jpeg")


class DermPairsTable(OutputSchema):
    """One ingested (photo, note) pair per row (see docs/formats.md)."""

    image_id: Series[str] = pa.Field(unique=True)
    file: Series[str]
    sha256: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{64}$")
    patient: Series[str]
    lesion: Series[str]
    category: Series[str] = pa.Field(isin=list(CATEGORY_CODES))
    malignant: Series[bool]
    age: Series[float] = pa.Field(ge=0, le=120, nullable=True)
    sex: Series[str] = pa.Field(isin=["M", "F", "U"])
    region: Series[str]
    site: Series[str]
    fitzpatrick_a: Series[float] = pa.Field(isin=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], nullable=True)
    fitzpatrick_b: Series[float] = pa.Field(isin=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], nullable=True)
    image_type: Series[str] = pa.Field(isin=["", "dermoscopic", "clinical"])
    note: Series[str]
    ita: Series[float] = pa.Field(nullable=True)
    brightness: Series[float]
    contrast: Series[float]
    sharpness: Series[float]
    dark_border: Series[float] = pa.Field(ge=0, le=1)
    width: Series[int] = pa.Field(gt=0)
    height: Series[int] = pa.Field(gt=0)
    image_format: Series[str] = pa.Field(isin=["png", "jpeg"])
    source_row: Series[int] = pa.Field(ge=2)
    batch: Series[str]

    class Config:
        ordered = True


#: Columns of :class:`DermPairsTable`, in order.
DERM_COLUMNS: tuple[str, ...] = schema_columns(DermPairsTable)


def photo_features(rgb: np.ndarray) -> dict[str, float]:
    """Cheap measurements of a skin photo (inputs of drift and skin-tone checks).

    ``ita``: ITA (degrees) of the heuristic skin pixels
    (:func:`~clinaudit.sources.skin_color.peripheral_skin_mask`; NaN when there are none);
    ``brightness`` / ``contrast``: mean and sd of L*; ``sharpness``: variance of the Laplacian of
    L* / 100; ``dark_border``: share of near-black pixels (L* < 8) on the frame's border (a
    dermatoscope's circular field is near 1 in the corners).
    """
    lightness = lab_from_srgb(rgb)[..., 0]
    l01 = lightness / 100.0
    lap = -4.0 * l01[1:-1, 1:-1] + l01[:-2, 1:-1] + l01[2:, 1:-1] + l01[1:-1, :-2] + l01[1:-1, 2:]
    border = np.concatenate([lightness[0], lightness[-1], lightness[:, 0], lightness[:, -1]])
    return {
        "ita": round(ita_degrees(rgb, peripheral_skin_mask(rgb)), 4),
        "brightness": round(float(lightness.mean()), 4),
        "contrast": round(float(lightness.std()), 4),
        "sharpness": round(float(lap.var()), 8),
        "dark_border": round(float((border < 8.0).mean()), 4),
    }


# Task: (row position, relative file or None, manifest sha256, manifest size, why unresolved)
_Task = tuple[int, str | None, str | None, int | None, str]
_Outcome = tuple[int, tuple[str, str, str] | None, dict[str, object] | None]


def _check_photo(batch_dir: Path, task: _Task, max_pixels: int, sizes: tuple[int, int]) -> _Outcome:
    pos, rel, want_sha, want_size, why = task

    def fail(check: str, message: str, fix: str) -> _Outcome:
        return pos, (check, message, fix), None

    if rel is None:
        return fail(*why.split("\0"))  # type: ignore[arg-type]
    try:
        data = (batch_dir / rel).read_bytes()
    except FileNotFoundError:
        return fail("image_missing", "photo listed in manifest.json is absent", "upload it")
    digest = hashlib.sha256(data).hexdigest()
    if digest != want_sha or len(data) != want_size:
        return fail(
            "hash_mismatch",
            f"file has {len(data)} bytes with sha256 {digest[:16]}..., manifest.json says "
            f"{want_size} bytes with sha256 {str(want_sha)[:16]}...; it was not decoded",
            "re-upload the file (it was corrupted or changed after the manifest was written)",
        )
    try:
        rgb = decode_rgb(data, name=rel, max_pixels=max_pixels)
    except ImageDecodeError as err:
        return fail(err.check, err.message, err.fix)
    height, width = rgb.shape[:2]
    if min(height, width) < sizes[0] or max(height, width) > sizes[1]:
        return fail(
            "image_size",
            f"photo is {width} x {height} pixels; sides must lie within [{sizes[0]}, {sizes[1]}]",
            "send the photo at its camera resolution (not a thumbnail or a mosaic)",
        )
    fmt = "png" if data.startswith(b"\x89PNG") else "jpeg"
    payload = {"sha256": digest, "width": width, "height": height, "image_format": fmt}
    return pos, None, {**payload, **photo_features(rgb)}


def _check_chunk(
    batch_dir: str, tasks: Sequence[_Task], max_pixels: int, sizes: tuple[int, int]
) -> list[_Outcome]:
    """Check a chunk of photos, in order (process-pool entry point)."""
    return [_check_photo(Path(batch_dir), t, max_pixels, sizes) for t in tasks]


def _check_chunk_star(args: tuple) -> list[_Outcome]:
    return _check_chunk(*args)


def _names(img_id: str) -> list[str]:
    """File names a row's image id may have (an id without extension tries .png, .jpg, .jpeg)."""
    suffix = PurePosixPath(img_id).suffix.lower()
    if suffix in _EXTENSIONS:
        return [img_id]
    return [*([img_id] if suffix else []), *(img_id + ext for ext in _EXTENSIONS)]


def _referenced(img_id: str, by_name: dict[str, list[str]]) -> set[str]:
    """Every batch path a row's image id could mean (so that none of them is 'unreferenced')."""
    names = _names(img_id)
    return {f"images/{n}" for n in names} | {p for n in names for p in by_name.get(n, [])}


def _resolve(img_id: str, manifest: Manifest, by_name: dict[str, list[str]], batch_dir: Path):
    """The manifest path of a row's photo, or (None, "check\\0message\\0fix")."""
    names = _names(img_id)
    for name in names:
        if manifest.entry(f"images/{name}") is not None:
            return f"images/{name}", ""
    hits = sorted({p for name in names for p in by_name.get(name, [])})
    if len(hits) == 1:
        return hits[0], ""
    if len(hits) > 1:
        return None, (
            f"image_ambiguous\0photo {img_id!r} matches several files in the batch: {hits}\0"
            "give every photo a unique file name"
        )
    if any((batch_dir / "images" / name).is_file() for name in names):
        return None, (
            f"not_in_manifest\0photo images/{names[0]} is not listed in manifest.json, so its "
            "integrity cannot be checked\0re-create manifest.json after every file is uploaded"
        )
    return None, (
        f"image_missing\0no photo named {' / '.join(names)} in the batch (looked under images/ "
        "and by file name in manifest.json)\0upload the photo under images/, or remove its row"
    )


def _structure_error(manifest: Manifest, file: str, check: str, message: str, fix: str):
    rec = QuarantineRecord(manifest.site, manifest.batch, file, None, None, check, message, fix)
    facts = {"content_hash": manifest.content_hash, "simulated": manifest.simulated}
    return BatchStructureError([rec], batch_facts=facts)


def _label_bytes(manifest: Manifest, batch_dir: Path) -> bytes:
    label = manifest.label_file
    entry = manifest.entry(label)
    if manifest.label_layout != LABEL_LAYOUT:
        raise _structure_error(
            manifest, "manifest.json", "label_layout",
            f"label_layout {manifest.label_layout!r} is not {LABEL_LAYOUT!r}",
            "land the batch under the study whose format it is, or write the metadata in the "
            "derm_pairs layout (docs/formats.md)",
        )  # fmt: skip
    if entry is None:
        raise _structure_error(
            manifest, label, "label_file_unlisted",
            f"metadata file {label!r} named by manifest.json is not among its listed files",
            "re-create manifest.json after the metadata CSV is uploaded",
        )  # fmt: skip
    try:
        data = (batch_dir / label).read_bytes()
    except FileNotFoundError as err:
        raise _structure_error(
            manifest, label, "label_file_missing", "metadata file listed in manifest.json is "
            "absent", "upload the metadata CSV",
        ) from err  # fmt: skip
    if hashlib.sha256(data).hexdigest() != entry.sha256 or len(data) != entry.bytes:
        raise _structure_error(
            manifest, label, "hash_mismatch",
            "metadata file differs from manifest.json (sha256 or size)",
            "re-upload the metadata CSV (it changed after the manifest was written)",
        )  # fmt: skip
    return data


def _file_warnings(manifest: Manifest, batch_dir: Path, used: set[str]) -> list[QuarantineRecord]:
    ver = verify_batch(batch_dir, manifest, check_hashes=False)
    out = []

    def warn(file: str, check: str, message: str, fix: str) -> None:
        site, batch = manifest.site, manifest.batch
        out.append(QuarantineRecord(site, batch, file, None, None, check, message, fix, "warning"))

    for f in sorted(set(ver.missing) - used):
        warn(f, "file_missing", "listed in manifest.json but absent", "upload the file")
    for f in sorted(set(ver.unlisted) - used):
        warn(f, "unlisted_file", "present but not listed in manifest.json", "re-create it")
    listed = {e.path for e in manifest.files} - set(ver.missing) - {manifest.label_file}
    for f in sorted(listed - used):
        warn(f, "image_unreferenced", "no metadata row names this file", "add its row or remove it")
    return out


def ingest_derm_batch(
    batch_dir: str | os.PathLike[str],
    *,
    pseudonym_key: bytes | None = None,
    workers: int = 1,
    max_pixels: int = 50_000_000,
    min_size: int = 32,
    max_size: int = 8192,
) -> BatchIngest:
    """Verify, read and validate one landed batch of (photo, note) pairs (see module doc).

    Parameters
    ----------
    batch_dir : path
        ``<landing>/<study>/<clinic>/<batch>`` (only ever read).
    pseudonym_key : bytes, optional
        Key (>= 16 bytes) of HMAC pseudonyms for ``patient`` and ``lesion``; ``None`` keeps the
        ids as landed (for data sets whose ids are already pseudonymous, e.g. PAD-UFES-20).
    workers : int
        Processes for the photos (1 = here); results do not depend on it.
    max_pixels, min_size, max_size : int
        Decompression-bomb guard and accepted range of a photo's sides.

    Returns
    -------
    BatchIngest
        ``table`` (:class:`DermPairsTable`, sorted by ``image_id``), quarantine records, the
        manifest's content hash and simulated flag, and the number of metadata rows read.

    Raises
    ------
    LandingError
        No or malformed ``manifest.json``.
    BatchStructureError
        Wrong ``label_layout``; metadata CSV unlisted, absent, changed or unreadable; no image id
        or diagnosis column.
    """
    batch_dir = Path(batch_dir)
    manifest = read_manifest(batch_dir)
    site, batch = manifest.site, manifest.batch
    data = _label_bytes(manifest, batch_dir)
    meta, records = read_derm_metadata(
        batch_dir / manifest.label_file, site=site, batch=batch, data=data
    )
    # Every data row is either in ``meta`` or named by an error record (warnings keep the row).
    refused = {r.row for r in records if r.severity == "error" and r.row is not None}
    n_rows_in = len(meta) + len(refused)
    by_name: dict[str, list[str]] = {}
    for entry in manifest.files:
        by_name.setdefault(PurePosixPath(entry.path).name, []).append(entry.path)
    tasks: list[_Task] = []
    for pos, img_id in enumerate(meta["img_id"].tolist()):
        rel, why = _resolve(img_id, manifest, by_name, batch_dir)
        entry = manifest.entry(rel) if rel else None
        tasks.append(
            (pos, rel, entry.sha256 if entry else None, entry.bytes if entry else None, why)
        )
    sizes = (min_size, max_size)
    size = max(1, math.ceil(len(tasks) / (workers * 4)))
    chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    if workers == 1 or len(chunks) <= 1:
        outcomes = [o for c in chunks for o in _check_chunk(str(batch_dir), c, max_pixels, sizes)]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            args = [(str(batch_dir), c, max_pixels, sizes) for c in chunks]
            outcomes = [o for part in pool.map(_check_chunk_star, args) for o in part]
    keep, payloads = [], []
    lines = meta["source_row"].tolist()
    for pos, failure, payload in outcomes:
        if failure is not None:
            file = tasks[pos][1] or f"images/{meta['img_id'].iat[pos]}"
            records.append(QuarantineRecord(site, batch, file, lines[pos], None, *failure))
            continue
        keep.append(pos)
        payloads.append(payload)
    used = {t[1] for t in tasks if t[1]}
    for name in metadata_image_names(data):  # good rows and rows quarantined above
        if "/" not in name and "\\" not in name and ".." not in name:
            used |= _referenced(name, by_name)
    records += _file_warnings(manifest, batch_dir, used)
    out = meta.iloc[keep].reset_index(drop=True)
    out = pd.concat([out, pd.DataFrame(payloads, index=out.index)], axis=1)
    out["file"] = [tasks[p][1] for p in keep]
    out["site"], out["batch"] = site, batch
    if pseudonym_key is not None:
        for col in ("patient", "lesion"):
            out[col] = [pseudonymise(v, site=site, key=pseudonym_key) for v in out[col]]
    out = out.reindex(columns=list(DERM_COLUMNS))
    out = out.astype({"width": "int64", "height": "int64", "source_row": "int64"})
    out = out.sort_values("image_id", kind="stable").reset_index(drop=True)
    records.sort(key=lambda r: (r.row is not None, r.row or 0, r.file, r.check))
    return BatchIngest(
        table=validate_table(out, DermPairsTable),
        quarantine=records_to_frame(records),
        content_hash=manifest.content_hash,
        simulated=manifest.simulated,
        n_rows_in=n_rows_in,
    )
