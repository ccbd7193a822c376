"""The landing area: where a site's batches arrive, and the manifest that marks a batch ready.

Layout::

    <landing>/<study>/<site>/<batch>/
        labels.csv            label table (NIH ChestX-ray14 or CheXpert layout)
        images/...            DICOM (.dcm) or PNG (.png) files
        manifest.json         written last: the ready marker

``manifest.json`` lists every other file of the batch with its size and sha256. A batch
without a manifest is still being uploaded and is *not ready* (ignored, never an error). Landed
files are never modified or deleted by clinaudit; everything derived from them is written elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

MANIFEST_NAME = "manifest.json"
_MANIFEST_TMP = ".manifest.json.tmp"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MANIFEST_FORMAT = "clinaudit.landing/v1"
#: Layout of a batch's label table, named by the study that reads it (``"nih"``, ``"chexpert"``,
#: ``"sepsis_stays"``, ...): a lowercase identifier; the study's ingest refuses layouts it cannot
#: read.
LabelLayout = str
_LAYOUT_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HASH_CHUNK = 1 << 20


class LandingError(ValueError):
    """A landing-area problem (bad name, unreadable manifest) with the path it concerns."""

    def __init__(self, path: str | os.PathLike[str], message: str, fix: str) -> None:
        self.path = str(path)
        self.message = message
        self.fix = fix
        super().__init__(f"{self.path}: {message}. Fix: {fix}")


def validate_name(kind: str, name: str) -> str:
    """Check that a site or batch name is a safe single path component.

    Parameters
    ----------
    kind : str
        What the name is (``"site"`` or ``"batch"``), used in the error message.
    name : str
        The candidate name.

    Returns
    -------
    str
        ``name`` unchanged when it is safe.

    Raises
    ------
    LandingError
        If the name is empty, contains a path separator, is ``.``/``..`` or uses characters outside
        ``[A-Za-z0-9_.-]`` (max 64 characters, first one alphanumeric).

    Examples
    --------
    >>> validate_name("site", "site_a")
    'site_a'
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise LandingError(
            name,
            f"{kind} name {name!r} is not a safe directory name (path separators, '..', spaces "
            "and other characters are refused)",
            f"rename the {kind} to letters, digits, '_', '-' or '.', starting with a letter or "
            "digit, at most 64 characters (e.g. 'site_b')",
        )
    return name


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a batch: its path relative to the batch directory, size and sha256."""

    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a batch."""

    study: str
    site: str
    batch: str
    label_file: str
    label_layout: LabelLayout
    simulated: bool
    created_utc: str
    files: tuple[ManifestEntry, ...]

    @property
    def content_hash(self) -> str:
        """sha256 over the sorted (path, sha256) pairs: identical data gives an identical hash."""
        h = hashlib.sha256()
        for entry in sorted(self.files, key=lambda e: e.path):
            h.update(f"{entry.path}\0{entry.sha256}\n".encode())
        return h.hexdigest()

    def entry(self, relpath: str) -> ManifestEntry | None:
        """The entry for ``relpath`` or ``None`` when the manifest does not list it."""
        return self._index.get(relpath)

    @property
    def _index(self) -> dict[str, ManifestEntry]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {e.path: e for e in self.files}
            object.__setattr__(self, "_index_cache", cached)
        return cached


def _relative_files(batch_dir: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(batch_dir):
        dirs.sort()
        for name in files:
            rel = (Path(root) / name).relative_to(batch_dir).as_posix()
            if rel not in (MANIFEST_NAME, _MANIFEST_TMP):
                out.append(rel)
    return sorted(out)


def write_manifest(
    batch_dir: str | os.PathLike[str],
    *,
    study: str,
    site: str,
    batch: str,
    label_file: str = "labels.csv",
    label_layout: LabelLayout = "nih",
    simulated: bool,
    created_utc: str,
    hashes: dict[str, str] | None = None,
) -> Path:
    """Write ``manifest.json`` for every file under ``batch_dir``; call it after all files exist.

    The manifest is written to a temporary name and renamed, so a reader never sees half of it.

    Parameters
    ----------
    batch_dir : path
        The batch directory.
    study, site, batch : str
        Identifiers recorded in the manifest (site and batch must be safe names).
    label_file : str
        Path of the label table relative to ``batch_dir``.
    label_layout : str
        Layout of the label table (``"nih"``, ``"chexpert"``, ``"sepsis_stays"``, ...).
    simulated : bool
        True when the data comes from a clinaudit simulator (every report then says so).
    created_utc : str
        ISO-8601 timestamp to record (callers that need reproducible bytes pass a fixed one).
    hashes : dict, optional
        Already computed sha256 per relative path (the simulator knows them); missing ones are
        computed from the files.

    Returns
    -------
    Path
        The manifest path.
    """
    batch_dir = Path(batch_dir)
    validate_name("site", site)
    validate_name("batch", batch)
    if not isinstance(label_layout, str) or not _LAYOUT_RE.fullmatch(label_layout):
        raise ValueError(
            f"label_layout={label_layout!r} is not a lowercase identifier (e.g. 'nih')"
        )
    hashes = hashes or {}
    entries = []
    for rel in _relative_files(batch_dir):
        path = batch_dir / rel
        digest = hashes.get(rel) or sha256_file(path)
        entries.append({"path": rel, "bytes": path.stat().st_size, "sha256": digest})
    if label_file not in {e["path"] for e in entries}:
        raise LandingError(batch_dir / label_file, "label file is missing", "write it first")
    doc = {
        "format": MANIFEST_FORMAT,
        "study": study,
        "site": site,
        "batch": batch,
        "label_file": label_file,
        "label_layout": label_layout,
        "simulated": bool(simulated),
        "created_utc": created_utc,
        "files": entries,
    }
    tmp = batch_dir / _MANIFEST_TMP
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    final = batch_dir / MANIFEST_NAME
    os.replace(tmp, final)
    return final


_REQUIRED_KEYS = ("format", "study", "site", "batch", "label_file", "label_layout", "files")


def read_manifest(batch_dir: str | os.PathLike[str]) -> Manifest:
    """Parse and structurally check ``<batch_dir>/manifest.json``.

    Raises
    ------
    LandingError
        If the manifest is absent, not JSON, misses keys, has an unknown format or layout, lists
        paths that escape the batch directory, or names a site/batch other than its directory.
    """
    batch_dir = Path(batch_dir)
    path = batch_dir / MANIFEST_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise LandingError(path, "manifest.json is missing", "upload it last") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LandingError(
            path, f"manifest.json is not valid UTF-8 JSON ({err})", "re-export the manifest"
        ) from err
    if not isinstance(doc, dict):
        raise LandingError(path, "manifest.json must hold a JSON object", "re-export it")
    missing = [k for k in _REQUIRED_KEYS if k not in doc]
    if missing:
        raise LandingError(path, f"manifest.json lacks keys {missing}", "re-export the manifest")
    if doc["format"] != MANIFEST_FORMAT:
        raise LandingError(
            path,
            f"format {doc['format']!r} is not {MANIFEST_FORMAT!r}",
            "write the manifest in the documented format (docs/formats.md)",
        )
    if not isinstance(doc["label_layout"], str) or not _LAYOUT_RE.fullmatch(doc["label_layout"]):
        raise LandingError(
            path,
            f"label_layout {doc['label_layout']!r} is not a lowercase identifier",
            "set label_layout to the layout the study documents (e.g. 'nih', 'chexpert', "
            "'sepsis_stays')",
        )
    validate_name("site", doc["site"])
    validate_name("batch", doc["batch"])
    if not isinstance(doc.get("simulated", False), bool):
        raise LandingError(
            path,
            f"'simulated' must be JSON true or false, got {doc['simulated']!r}",
            "write the flag as a boolean",
        )
    if not isinstance(doc["files"], list):
        raise LandingError(path, "'files' must be a JSON list", "re-export the manifest")
    if doc["study"] != batch_dir.parent.parent.name:
        raise LandingError(
            path,
            f"manifest names study {doc['study']!r} but lies under "
            f"{batch_dir.parent.parent.name!r}",
            "land the batch under <landing>/<study>/ of its manifest",
        )
    if doc["site"] != batch_dir.parent.name or doc["batch"] != batch_dir.name:
        raise LandingError(
            path,
            f"manifest names site/batch {doc['site']}/{doc['batch']} but lies in "
            f"{batch_dir.parent.name}/{batch_dir.name}",
            "move the batch to <landing>/<study>/<site>/<batch>/ matching its manifest",
        )
    entries = []
    for i, item in enumerate(doc["files"]):
        try:
            rel, size, digest = str(item["path"]), int(item["bytes"]), str(item["sha256"])
        except (KeyError, TypeError, ValueError) as err:
            raise LandingError(
                path, f"files[{i}] needs 'path', 'bytes' and 'sha256' ({err})", "re-export"
            ) from err
        if not _SHA256_RE.fullmatch(digest.lower()):
            raise LandingError(
                path, f"files[{i}].sha256 {digest!r} is not 64 hex characters", "re-export"
            )
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not parts:
            raise LandingError(
                path, f"files[{i}].path {rel!r} escapes the batch directory", "use relative paths"
            )
        entries.append(ManifestEntry(rel, size, digest.lower()))
    return Manifest(
        study=str(doc["study"]),
        site=doc["site"],
        batch=doc["batch"],
        label_file=str(doc["label_file"]),
        label_layout=doc["label_layout"],
        simulated=doc.get("simulated", False),
        created_utc=str(doc.get("created_utc", "")),
        files=tuple(entries),
    )


@dataclass(frozen=True)
class BatchVerification:
    """Result of comparing a batch directory with its manifest."""

    missing: tuple[str, ...] = ()
    unlisted: tuple[str, ...] = ()
    size_mismatch: tuple[str, ...] = ()
    hash_mismatch: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unlisted or self.size_mismatch or self.hash_mismatch)

    def problems(self) -> list[tuple[str, str, str]]:
        """``(file, problem, fix)`` triples, one per failing file."""
        out = [(f, "listed in manifest.json but absent", "upload the file") for f in self.missing]
        out += [
            (f, "present but not listed in manifest.json", "re-create the manifest")
            for f in self.unlisted
        ]
        out += [
            (f, "size differs from manifest.json", "re-upload the file") for f in self.size_mismatch
        ]
        out += [
            (f, "sha256 differs from manifest.json (corrupted or changed)", "re-upload the file")
            for f in self.hash_mismatch
        ]
        return out


def verify_batch(
    batch_dir: str | os.PathLike[str], manifest: Manifest, *, check_hashes: bool = True
) -> BatchVerification:
    """Compare the files of ``batch_dir`` with ``manifest``.

    Parameters
    ----------
    batch_dir : path
        The batch directory.
    manifest : Manifest
        Its parsed manifest.
    check_hashes : bool
        Also hash every file (sizes and presence are always checked).
    """
    batch_dir = Path(batch_dir)
    present = set(_relative_files(batch_dir))
    listed = {e.path for e in manifest.files}
    missing, size_bad, hash_bad = [], [], []
    for entry in manifest.files:
        path = batch_dir / entry.path
        if entry.path not in present:
            missing.append(entry.path)
            continue
        if path.stat().st_size != entry.bytes:
            size_bad.append(entry.path)
        elif check_hashes and sha256_file(path) != entry.sha256:
            hash_bad.append(entry.path)
    return BatchVerification(
        missing=tuple(sorted(missing)),
        unlisted=tuple(sorted(present - listed)),
        size_mismatch=tuple(sorted(size_bad)),
        hash_mismatch=tuple(sorted(hash_bad)),
    )


@dataclass(frozen=True)
class BatchRef:
    """A batch directory found in the landing area."""

    study: str
    site: str
    batch: str
    path: Path
    ready: bool


@dataclass(frozen=True)
class LandingScan:
    """Batches found under ``<landing>/<study>/`` and directory names that were refused."""

    batches: tuple[BatchRef, ...]
    refused: tuple[LandingError, ...] = field(default=())

    def sites(self) -> list[str]:
        return sorted({b.site for b in self.batches})

    def ready(self, site: str | None = None) -> list[BatchRef]:
        return [b for b in self.batches if b.ready and (site is None or b.site == site)]


def scan_landing(landing_root: str | os.PathLike[str], study: str) -> LandingScan:
    """List site batches under ``<landing_root>/<study>/`` without reading any data file.

    A batch is *ready* when its ``manifest.json`` exists. Directories whose names are unsafe are
    reported in ``refused`` (and never opened); they do not stop the scan.
    """
    root = Path(landing_root) / study
    batches: list[BatchRef] = []
    refused: list[LandingError] = []
    if not root.is_dir():
        return LandingScan(())
    for site_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            validate_name("site", site_dir.name)
        except LandingError as err:
            refused.append(err)
            continue
        for batch_dir in sorted(p for p in site_dir.iterdir() if p.is_dir()):
            try:
                validate_name("batch", batch_dir.name)
            except LandingError as err:
                refused.append(err)
                continue
            ready = (batch_dir / MANIFEST_NAME).is_file()
            batches.append(BatchRef(study, site_dir.name, batch_dir.name, batch_dir, ready))
    return LandingScan(tuple(batches), tuple(refused))


def image_paths(
    table: pd.DataFrame, landing_root: str | os.PathLike[str], study: str
) -> list[Path]:
    """Landed file of every row of a validated table (columns ``site``, ``batch``, ``file``)."""
    root = Path(landing_root) / study
    out = []
    for site, batch, rel in zip(table["site"], table["batch"], table["file"], strict=True):
        validate_name("site", site)
        validate_name("batch", batch)
        out.append(root / site / batch / rel)
    return out


def tables_simulated(
    tables: dict[str, pd.DataFrame], landing_root: str | os.PathLike[str], study: str
) -> bool:
    """True when any batch behind the tables was landed with ``"simulated": true``.

    Every report and figure built from such data must say SIMULATED.
    """
    for site, table in tables.items():
        for batch in sorted(set(table["batch"])) if "batch" in table.columns else ():
            if read_manifest(Path(landing_root) / study / site / batch).simulated:
                return True
    return False


def batch_hashes(
    tables: dict[str, pd.DataFrame], landing_root: str | os.PathLike[str], study: str
) -> dict[str, str]:
    """``"<study>/<site>/<batch>"`` -> manifest content hash of every batch behind the tables.

    The provenance of an audit package: which landed data (byte-for-byte, through the manifest's
    per-file sha256) produced its numbers.
    """
    out = {}
    for site, table in sorted(tables.items()):
        for batch in sorted(set(table["batch"])) if "batch" in table.columns else ():
            manifest = read_manifest(Path(landing_root) / study / site / batch)
            out[f"{study}/{site}/{batch}"] = manifest.content_hash
    return out
