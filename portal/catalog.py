"""The packages on disk: ``<reports>/<study>/<audit_id>/``, found by strict names, read once.

The portal reads nothing but this tree. Every name that comes from a URL is checked against
:data:`~clinaudit.portal.urls.NAME` before it touches the file system, and a package is read into
a :class:`PackageSnapshot` (the bytes of every file, read once, links and special files refused)
so that what is verified is exactly what is shown and served.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinaudit.reporting.verify import MANIFEST_NAME

from .urls import NAME

__all__ = [
    "MAX_PACKAGE_BYTES",
    "REPORT_NAME",
    "PackageRef",
    "PackageSnapshot",
    "find_package",
    "list_packages",
    "read_snapshot",
    "valid_name",
    "valid_relpath",
]

REPORT_NAME = "report.pdf"
#: A package larger than this is not read (nor served): a report package is a few MB.
MAX_PACKAGE_BYTES = 512 * 1024 * 1024
_MAX_FILES = 10_000


def valid_name(value: str) -> bool:
    """A study, audit id or file-name component: :data:`~clinaudit.portal.urls.NAME`."""
    return isinstance(value, str) and bool(NAME.match(value))


def valid_relpath(value: str) -> bool:
    """A file path inside a package (``"tables/criteria.csv"``): every component a valid name."""
    return isinstance(value, str) and all(valid_name(part) for part in value.split("/"))


@dataclass(frozen=True)
class PackageRef:
    """One package folder: its study, audit id (the folder name) and path."""

    study: str
    audit_id: str
    dir: Path


def _plain_dir(path: Path) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode)


def find_package(reports: Path, study: str, audit_id: str) -> PackageRef | None:
    """The package ``<reports>/<study>/<audit_id>``, or ``None`` when a name is not valid or the
    folder is absent (or is a link)."""
    if not (valid_name(study) and valid_name(audit_id)):
        return None
    folder = Path(reports) / study / audit_id
    if not (_plain_dir(Path(reports) / study) and _plain_dir(folder)):
        return None
    return PackageRef(study, audit_id, folder)


def list_packages(reports: Path, study: str) -> list[PackageRef]:
    """Every package folder of ``study`` (validly named, not a link), in name order."""
    root = Path(reports) / study
    if not valid_name(study) or not _plain_dir(root):
        return []
    with os.scandir(root) as entries:
        names = sorted(
            e.name for e in entries if valid_name(e.name) and e.is_dir(follow_symlinks=False)
        )
    return [PackageRef(study, name, root / name) for name in names]


@dataclass(frozen=True)
class PackageSnapshot:
    """The bytes of every file of one package, read once.

    Attributes
    ----------
    ref : PackageRef
        Which package.
    files : mapping of str to bytes
        Relative path (``/``-separated) -> content, for every regular file.
    problems : tuple of str
        What makes the folder unservable: links, special files, unsafe names, too large.
    fingerprint : str
        sha256 over every file's path and sha256 (and the problems): equal fingerprints, equal
        content.
    """

    ref: PackageRef
    files: Mapping[str, bytes]
    problems: tuple[str, ...]
    fingerprint: str

    def sha256(self, name: str) -> str:
        """sha256 (hex) of file ``name`` of the snapshot."""
        return hashlib.sha256(self.files[name]).hexdigest()

    def disk_manifest(self) -> dict[str, Any] | None:
        """The package's ``manifest.json`` as found on disk (not verified), or ``None``."""
        raw = self.files.get(MANIFEST_NAME)
        if raw is None:
            return None
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return doc if isinstance(doc, dict) else None


def _read_plain(path: Path) -> bytes:
    """A regular file's bytes, refusing to follow a link at the last component."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _walk(folder: Path, prefix: str, files: dict[str, bytes], problems: list[str]) -> int:
    total = 0
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            rel = f"{prefix}{entry.name}"
            if not valid_name(entry.name):
                problems.append(f"{rel}: file name is not a simple name")
            elif entry.is_symlink():
                problems.append(f"{rel}: is a link (a package holds plain files only)")
            elif entry.is_dir(follow_symlinks=False):
                total += _walk(Path(entry.path), f"{rel}/", files, problems)
            elif entry.is_file(follow_symlinks=False):
                if len(files) >= _MAX_FILES or total > MAX_PACKAGE_BYTES:
                    problems.append(f"{rel}: package too large to read")
                    continue
                files[rel] = _read_plain(Path(entry.path))
                total += len(files[rel])
            else:
                problems.append(f"{rel}: not a regular file")
    return total


def read_snapshot(ref: PackageRef) -> PackageSnapshot:
    """Read every file of ``ref`` once (see :class:`PackageSnapshot`).

    Raises
    ------
    FileNotFoundError
        If the package folder disappeared.
    """
    files: dict[str, bytes] = {}
    problems: list[str] = []
    total = _walk(ref.dir, "", files, problems)
    if total > MAX_PACKAGE_BYTES:
        problems.append(f"package holds {total} bytes, more than {MAX_PACKAGE_BYTES}")
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    for problem in problems:
        digest.update(f"!{problem}\n".encode())
    return PackageSnapshot(ref, files, tuple(problems), digest.hexdigest())
