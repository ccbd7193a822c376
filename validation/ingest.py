"""Validated ingest of one landed chest X-ray batch (pure core; the Dagster asset only wires it).

:func:`ingest_batch` reads ``<landing>/<study>/<site>/<batch>/`` strictly read-only:

1. ``manifest.json`` (``sources.landing.read_manifest``; a missing or malformed manifest raises
   ``LandingError``).
2. Structure: the label file must be listed in the manifest, present, and match its sha256; the
   NIH split lists, when present, too. Otherwise :class:`BatchStructureError`.
3. The label table (``sources.label_tables.read_label_table``; layout from the config, else from
   the manifest; ``allow_unlabelled`` keeps rows nobody labelled, NIH with an empty ``Finding
   Labels`` or CheXpert with every observation blank, with NaN findings). Fewer than
   ``min_rows`` data rows fails the batch.
4. Every image a table row names, in chunks across ``workers`` processes: its bytes are read
   once, hashed and compared with the manifest (a mismatch quarantines the image *without
   decoding it*), then decoded (``sources.images.decode_image``), checked against the config
   (photometric interpretation, bits stored, size) and measured
   (``validation.quality.quality_features``).
5. Patient ids are replaced by keyed pseudonyms, HMAC-SHA256(key, site + "\\0" + patient_id)
   truncated to 16 hex characters: stable per patient and site, not reversible by hashing candidate
   ids without the key. ``patient_id`` never leaves this function.
6. The output is validated with the ``ValidatedImages`` schema (lazy); failing rows are
   quarantined.

Files of the batch that no label row names (other than the label file and split lists) give
``warning`` records, as do files listed in the manifest but absent, or present but unlisted. A
reference batch (one that carries ``train_val_list.txt`` and ``test_list.txt``) gets ``split`` =
train/test from the lists, and an image in neither list is quarantined (its training status is
unknown); other batches get ``split = "eval"``. Results are identical for any ``workers``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from clinaudit.sources.images import META_KEYS
from clinaudit.sources.label_tables import (
    SPLIT_FILES,
    Layout,
    Uncertainty,
    read_label_table,
    read_split_lists,
)
from clinaudit.sources.landing import Manifest, read_manifest, verify_batch
from clinaudit.validation.errors import BatchStructureError, QuarantineRecord, records_to_frame
from clinaudit.validation.image_checks import Task, run_image_checks
from clinaudit.validation.quality import QUALITY_FEATURES
from clinaudit.validation.schemas import VALIDATED_COLUMNS, ValidatedImages, validate_frame

_MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class IngestConfig:
    """Options of :func:`ingest_batch` (defaults live here only).

    Attributes
    ----------
    layout : {"nih", "chexpert"} or None
        Label-table layout; ``None`` uses the manifest's ``label_layout``.
    uncertainty : {"zeros", "ones", "ignore"}
        CheXpert policy for uncertain (-1) labels.
    max_pixels : int
        Largest accepted Rows x Columns (decompression-bomb guard, checked before decoding).
    min_rows : int
        Fewest data rows the label table must hold, else the batch fails.
    allowed_photometric : tuple of str
        Accepted source photometric interpretations.
    allowed_bits : tuple of int
        Accepted bits stored per pixel.
    min_size, max_size : int
        Accepted range of the image's shorter and longer side, in pixels.
    workers : int
        Processes for the image work (1 = in this process).
    allow_unlabelled : bool
        Keep rows nobody has labelled as *not labelled* (all 14 findings NaN): NIH rows with an
        empty ``Finding Labels`` (otherwise quarantined) and CheXpert rows with every observation
        column blank (otherwise negative). For a pile of studies nobody has labelled yet (a
        triage backlog). A study whose evidence needs a label on every image leaves it ``False``.
    """

    layout: Layout | None = None
    uncertainty: Uncertainty = "zeros"
    max_pixels: int = 50_000_000
    min_rows: int = 1
    allowed_photometric: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")
    allowed_bits: tuple[int, ...] = (8, 10, 12, 14, 16)
    min_size: int = 64
    max_size: int = 8192
    workers: int = 1
    allow_unlabelled: bool = False

    def __post_init__(self) -> None:
        if self.layout not in (None, "nih", "chexpert"):
            raise ValueError(f"layout={self.layout!r} is not one of [None, 'nih', 'chexpert']")
        if self.uncertainty not in ("zeros", "ones", "ignore"):
            raise ValueError(
                f"uncertainty={self.uncertainty!r} is not one of ['zeros', 'ones', 'ignore']"
            )
        for name in ("max_pixels", "min_rows", "min_size", "max_size", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.min_size > self.max_size:
            raise ValueError(f"min_size={self.min_size} exceeds max_size={self.max_size}")
        if not isinstance(self.allow_unlabelled, bool):
            raise ValueError(
                f"allow_unlabelled={self.allow_unlabelled!r} must be True or False (a bool)"
            )


@dataclass(frozen=True)
class IngestResult:
    """The outcome of :func:`ingest_batch`.

    Attributes
    ----------
    table : DataFrame
        ``ValidatedImages`` rows, one per good image, sorted by ``image_id``; no ``patient_id``.
    quarantine : DataFrame
        All records (``records_to_frame`` columns): errors removed their row, warnings did not.
    manifest : Manifest
        The batch's manifest.
    n_rows_in : int
        Data rows in the label table.
    n_images_ok : int
        Rows in ``table``.
    summary : dict of str to int
        Number of records per check name.
    labelled_findings, ignored_columns : tuple of str
        From the label table reader.
    """

    table: pd.DataFrame
    quarantine: pd.DataFrame
    manifest: Manifest
    n_rows_in: int
    n_images_ok: int
    summary: dict[str, int]
    labelled_findings: tuple[str, ...] = field(default=())
    ignored_columns: tuple[str, ...] = field(default=())


def pseudonymise(patient_id: str, *, site: str, key: bytes) -> str:
    """Keyed pseudonym of a patient at a site: first 16 hex chars of HMAC-SHA256.

    Parameters
    ----------
    patient_id : str
        Raw patient id (PHI).
    site : str
        Site name; the same raw id at another site gives another pseudonym.
    key : bytes
        Secret key, at least 16 bytes.

    Returns
    -------
    str
        16 lowercase hex characters.

    Examples
    --------
    >>> pseudonymise("123", site="a", key=b"k" * 16) == pseudonymise("123", site="a", key=b"k" * 16)
    True
    """
    _check_key(key)
    msg = f"{site}\0{patient_id}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:16]


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) < _MIN_KEY_BYTES:
        got = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
        raise ValueError(
            f"pseudonym_key must be at least {_MIN_KEY_BYTES} random bytes, got {got}; load the "
            "site key file (e.g. var/keys/pseudonym.key) and pass its bytes"
        )


def _structure(manifest: Manifest, batch_dir: Path) -> bytes:
    """Check the label file and split lists against the manifest; return the label bytes."""
    site, batch = manifest.site, manifest.batch

    def error(file: str, check: str, message: str, fix: str) -> BatchStructureError:
        return BatchStructureError(
            [QuarantineRecord(site, batch, file, None, None, check, message, fix, "error")]
        )

    label = manifest.label_file
    entry = manifest.entry(label)
    if entry is None:
        raise error(
            label,
            "label_file_unlisted",
            f"label file {label!r} named by manifest.json is not among its listed files",
            "re-create manifest.json after the label table is uploaded",
        )
    try:
        with open(batch_dir / label, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as err:
        raise error(
            label,
            "label_file_missing",
            "label file listed in manifest.json is absent",
            "upload the label table",
        ) from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256 or len(data) != entry.bytes:
        raise error(
            label,
            "hash_mismatch",
            f"label file has sha256 {digest[:16]}... ({len(data)} bytes) but manifest.json says "
            f"{entry.sha256[:16]}... ({entry.bytes} bytes)",
            "re-upload the label table (it changed after the manifest was written)",
        )
    for name in SPLIT_FILES:
        path = batch_dir / name
        if not path.is_file():
            continue
        split_entry = manifest.entry(name)
        with open(path, "rb") as fh:
            split_digest = hashlib.sha256(fh.read()).hexdigest()
        if split_entry is None or split_entry.sha256 != split_digest:
            raise error(
                name,
                "hash_mismatch",
                "split list is not listed in manifest.json or its sha256 differs",
                "re-upload the split lists and re-create manifest.json",
            )
    return data


def _file_records(
    manifest: Manifest, batch_dir: Path, referenced: frozenset[str]
) -> list[QuarantineRecord]:
    site, batch = manifest.site, manifest.batch
    ver = verify_batch(batch_dir, manifest, check_hashes=False)
    skip = {manifest.label_file, *SPLIT_FILES}
    out = []

    def warn(file: str, check: str, message: str, fix: str) -> None:
        out.append(QuarantineRecord(site, batch, file, None, None, check, message, fix, "warning"))

    for f in ver.missing:
        if f not in referenced:
            warn(f, "file_missing", "listed in manifest.json but absent", "upload the file")
    for f in ver.unlisted:
        if f not in referenced:
            warn(
                f,
                "unlisted_file",
                "present but not listed in manifest.json",
                "re-create manifest.json, or remove the stray file",
            )
    for f in ver.size_mismatch:
        if f not in referenced:
            warn(f, "hash_mismatch", "size differs from manifest.json", "re-upload the file")
    listed_present = {e.path for e in manifest.files} - set(ver.missing)
    for f in sorted((listed_present | set(ver.unlisted)) - referenced - skip):
        warn(
            f,
            "image_unreferenced",
            "file is in the batch but no label-table row names it",
            "add its row to the label table, or remove the file from the batch",
        )
    return out


def ingest_batch(
    batch_dir: str | os.PathLike[str],
    *,
    pseudonym_key: bytes,
    config: IngestConfig = IngestConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """Validate and ingest one landed batch into a de-identified, quality-annotated table.

    Parameters
    ----------
    batch_dir : path
        ``<landing>/<study>/<site>/<batch>`` (only ever read).
    pseudonym_key : bytes
        Secret key (>= 16 bytes) of the patient pseudonyms.
    config : IngestConfig
        Options; see :class:`IngestConfig`.
    progress : callable, optional
        ``progress(done, total)`` after each chunk of images.

    Returns
    -------
    IngestResult

    Raises
    ------
    LandingError
        If ``manifest.json`` is missing or malformed (the batch is not ready).
    BatchStructureError
        If the label file is unlisted, missing, changed, unreadable or lacks required columns,
        the split lists are inconsistent, or the table has fewer than ``min_rows`` rows.
    """
    _check_key(pseudonym_key)
    batch_dir = Path(batch_dir)
    manifest = read_manifest(batch_dir)
    site, batch = manifest.site, manifest.batch
    layout = config.layout or manifest.label_layout
    if layout not in ("nih", "chexpert"):
        raise BatchStructureError(
            [
                QuarantineRecord(
                    site,
                    batch,
                    "manifest.json",
                    None,
                    "label_layout",
                    "label_layout",
                    f"label_layout {layout!r} is not a chest X-ray label layout ('nih' or "
                    "'chexpert')",
                    "land the batch under the study whose format it is, or re-export the labels "
                    "in the NIH or CheXpert layout (docs/formats.md)",
                )
            ],
            batch_facts={"content_hash": manifest.content_hash, "simulated": manifest.simulated},
        )
    label_bytes = _structure(manifest, batch_dir)
    labels = read_label_table(
        batch_dir / manifest.label_file,
        layout=layout,
        uncertainty=config.uncertainty,
        site=site,
        batch=batch,
        data=label_bytes,
        batch_dir=batch_dir,
        known_files={e.path for e in manifest.files},
        allow_unlabelled=config.allow_unlabelled,
    )
    if labels.n_rows < config.min_rows:
        raise BatchStructureError(
            [
                QuarantineRecord(
                    site,
                    batch,
                    manifest.label_file,
                    None,
                    None,
                    "too_few_rows",
                    f"label table has {labels.n_rows} data rows, at least {config.min_rows} "
                    "are required",
                    "land the complete label table (one row per image)",
                    "error",
                )
            ]
        )
    split_map = read_split_lists(batch_dir)
    records = list(labels.quarantine)
    records += _file_records(manifest, batch_dir, labels.referenced_files)

    table = labels.table.reset_index(drop=True)
    tasks: list[Task] = []
    for pos, rel in enumerate(table["file"].tolist()):
        entry = manifest.entry(rel)
        tasks.append((pos, rel, entry.sha256 if entry else None, entry.bytes if entry else None))
    outcomes = run_image_checks(batch_dir, tasks, config, progress)

    keep: list[int] = []
    payloads: list[dict[str, object]] = []
    lines = table["source_row"].tolist()
    for pos, failure, payload in outcomes:
        if failure is not None:
            check, message, fix = failure
            records.append(
                QuarantineRecord(
                    site, batch, tasks[pos][1], lines[pos], None, check, message, fix, "error"
                )
            )
            continue
        assert payload is not None
        if split_map is not None and table.at[pos, "image_id"] not in split_map:
            records.append(
                QuarantineRecord(
                    site,
                    batch,
                    tasks[pos][1],
                    lines[pos],
                    None,
                    "split_missing",
                    f"image id {table.at[pos, 'image_id']!r} is in neither train_val_list.txt nor "
                    "test_list.txt, so whether the vendor trained on it is unknown",
                    "add the image to exactly one of the split lists",
                    "error",
                )
            )
            continue
        keep.append(pos)
        payloads.append(payload)

    out = table.iloc[keep].reset_index(drop=True)
    embedded = _identifier_in_names(out)
    if embedded:
        records.append(
            QuarantineRecord(
                site,
                batch,
                manifest.label_file,
                None,
                "image_id",
                "identifier_in_image_id",
                f"{embedded} of {len(out)} image ids or file names contain the row's Patient ID "
                f"(at least {_MIN_EMBEDDED_ID} characters), and image ids leave ingest as given "
                "(vendor scores are matched on them)",
                "if these Patient IDs identify people (e.g. MRNs), re-export the images with "
                "opaque names; pseudonymous study numbers (as in ChestX-ray14) are fine",
                "warning",
            )
        )
    cache: dict[str, str] = {}
    pseudonyms = []
    for pid in out["patient_id"].tolist():
        if pid not in cache:
            cache[pid] = pseudonymise(pid, site=site, key=pseudonym_key)
        pseudonyms.append(cache[pid])
    extra = pd.DataFrame(
        payloads,
        columns=["sha256", "image_format", *QUALITY_FEATURES, *(f"meta_{k}" for k in META_KEYS)],
    )
    out = pd.concat([out.drop(columns=["patient_id"]), extra], axis=1)
    out["site"] = site
    out["batch"] = batch
    out["split"] = "eval" if split_map is None else [split_map[i] for i in out["image_id"].tolist()]
    out["patient_pseudonym"] = pseudonyms
    out[["rows", "cols"]] = out[["rows", "cols"]].astype("int64")
    out = out[list(VALIDATED_COLUMNS)]
    out, schema_records = validate_frame(ValidatedImages, out, site=site, batch=batch)
    records += schema_records
    out = out.sort_values("image_id", kind="stable").reset_index(drop=True)
    records.sort(key=_record_order)
    return IngestResult(
        table=out,
        quarantine=records_to_frame(records),
        manifest=manifest,
        n_rows_in=labels.n_rows,
        n_images_ok=len(out),
        summary=dict(sorted(Counter(r.check for r in records).items())),
        labelled_findings=labels.labelled_findings,
        ignored_columns=labels.ignored_columns,
    )


_MIN_EMBEDDED_ID = 6


def _identifier_in_names(table: pd.DataFrame) -> int:
    """Rows whose image id or file name contains their raw Patient ID (ids of >= 6 characters:
    shorter ones, like ChestX-ray14's unpadded numbers, match names by chance)."""
    hits = 0
    for pid, image_id, file in zip(
        table["patient_id"], table["image_id"], table["file"], strict=True
    ):
        pid = str(pid)
        if len(pid) >= _MIN_EMBEDDED_ID and (pid in str(image_id) or pid in str(file)):
            hits += 1
    return hits


def _record_order(r: QuarantineRecord) -> tuple[bool, int, str, str, Literal[0, 1]]:
    return (r.row is not None, r.row or 0, r.file, r.check, 0 if r.severity == "error" else 1)
