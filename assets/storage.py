"""Where asset values live: a local folder (the ``local`` profile) or S3-compatible object storage
(the ``scale`` profile), behind one path type.

``store_root`` turns the configured store (a folder, a ``file://`` URL or ``s3://bucket/prefix``)
into a path: a plain :class:`pathlib.Path` for the local file system, a
:class:`upath.UPath` for object storage. The IO manager and the package publisher write through
it with the same code; only the commit step differs, because object storage has no rename:

* local: a value is written next to its target and moved into place with ``os.replace`` (a
  reader never sees half a value);
* object storage: one object is one PUT (atomic); a table set (a folder of objects) is written
  with its ``facts.json`` last, and readers require ``facts.json``.

Credentials never come from config: on S3 they are read by botocore from the environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, or a profile); the endpoint of an
S3-compatible server comes from ``CLINAUDIT_S3_ENDPOINT`` (else botocore's ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlparse

from upath import UPath

#: The store's location when a resource's config leaves it unset (read when used).
STORE_URL_ENV = "CLINAUDIT_STORE_URL"
#: The endpoint of an S3-compatible server (SeaweedFS, MinIO, ...); unset means AWS.
S3_ENDPOINT_ENV = "CLINAUDIT_S3_ENDPOINT"
SCHEMES = ("file", "s3")

StorePath: TypeAlias = Path | UPath

_KEY_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$")


class StoreError(ValueError):
    """A store location or a key part the store refuses (the message names it and the fix)."""


def store_root(url: str | os.PathLike[str]) -> StorePath:
    """The path of a store location.

    Parameters
    ----------
    url : str or path-like
        A folder, ``file:///abs/folder`` or ``s3://bucket[/prefix]``.

    Returns
    -------
    pathlib.Path or upath.UPath
        A local ``Path`` for a folder or ``file://`` URL; an S3 ``UPath`` (listing cache off, so
        a long-lived process sees what other workers wrote) otherwise.

    Raises
    ------
    StoreError
        For another scheme, an ``s3://`` URL without a bucket, or a ``file://`` URL with a host.
    """
    text = os.fspath(url)
    parsed = urlparse(text)
    if not parsed.scheme or len(parsed.scheme) == 1:  # a plain (or Windows drive) path
        return Path(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(
                f"store {text!r}: a file:// URL names a local folder, not host {parsed.netloc!r}; "
                "write file:///absolute/folder"
            )
        return Path(parsed.path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"store {text!r} names no bucket; write s3://bucket[/prefix]")
        options: dict[str, object] = {"use_listings_cache": False}
        endpoint = os.environ.get(S3_ENDPOINT_ENV)
        if endpoint:
            options["endpoint_url"] = endpoint
        return UPath(text.rstrip("/"), **options)
    raise StoreError(
        f"store {text!r}: scheme {parsed.scheme!r} is not supported; use a folder, file:// or "
        f"s3:// (supported: {', '.join(SCHEMES)})"
    )


def is_local(path: StorePath) -> bool:
    """Whether ``path`` is on the local file system (rename and ``resolve`` work)."""
    return isinstance(path, Path)


def check_key_part(part: str, what: str = "partition key") -> str:
    """Refuse a key part that could leave its prefix in the store.

    Parameters
    ----------
    part : str
        One path component built from run-time input (a partition key, an audit id).
    what : str
        What ``part`` is, for the message.

    Returns
    -------
    str
        ``part`` unchanged when it is safe.

    Raises
    ------
    StoreError
        If ``part`` is empty, contains a separator or ``..``, or uses characters outside
        ``[A-Za-z0-9_.=-]`` (first one alphanumeric, at most 128 characters).

    Examples
    --------
    >>> check_key_part("site_a")
    'site_a'
    """
    if not isinstance(part, str) or not _KEY_PART_RE.fullmatch(part) or ".." in part:
        raise StoreError(
            f"{what} {part!r} cannot be stored: only letters, digits, '_', '.', '=' and '-' "
            "(first one a letter or digit, no '..', at most 128 characters) are allowed, so a "
            "key never leaves its prefix; rename it (e.g. 'site_b')"
        )
    return part


def describe(path: StorePath) -> str:
    """The path as shown in metadata and messages (absolute for a local path, the URL else)."""
    return str(path.resolve()) if is_local(path) else str(path)


def publish_folder(src: Path, dest: StorePath, *, last: str) -> list[str]:
    """Copy every file under ``src`` to ``dest`` (same relative names), ``last`` at the end.

    Used for signed packages: the PDF is ``last``, so a reader that finds it finds the whole
    package. Nothing is deleted or overwritten at ``dest`` (a package id is never reused).

    Parameters
    ----------
    src : Path
        A local folder.
    dest : pathlib.Path or upath.UPath
        Where it goes (a local folder or an object-storage prefix).
    last : str
        The relative name written after every other file.

    Returns
    -------
    list of str
        The relative names written, in order.

    Raises
    ------
    FileExistsError
        If ``dest`` already holds ``last`` (that package was published before).
    """
    names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    if last not in names:
        raise FileNotFoundError(f"{src / last}: the file to publish last is missing")
    if (dest / last).exists():
        raise FileExistsError(f"{dest / last} exists: a published package is never overwritten")
    order = [n for n in names if n != last] + [last]
    for name in order:
        target = dest.joinpath(*name.split("/"))
        if is_local(target):
            target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((src / name).read_bytes())
    return order


def fetch_folder(src: StorePath, dest: Path) -> list[str]:
    """Copy every file under ``src`` (a published folder) into the local folder ``dest``.

    Raises
    ------
    FileNotFoundError
        If nothing is stored under ``src``.
    """
    if is_local(src):
        files = [p for p in src.rglob("*") if p.is_file()]
        names = [p.relative_to(src).as_posix() for p in files]
    else:  # one listing of the prefix, not one per folder
        root = src.path.rstrip("/") + "/"
        found = src.fs.find(src.path, detail=True)
        names = [k[len(root) :] for k, v in found.items() if v.get("type") == "file"]
        files = [src.joinpath(*n.split("/")) for n in names]
    if not names:
        raise FileNotFoundError(f"{src}: nothing is stored there")
    for name, path in zip(names, files, strict=True):
        target = dest.joinpath(*name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    return sorted(names)


def model_index(folder: StorePath) -> StorePath:
    """The index of a published (or cached) model package: ``<folder>.json`` beside it (never
    inside, where a package loader would take it for an unlisted file)."""
    return folder.parent / f"{folder.name}.json"


def publish_model(src: Path, dest: StorePath) -> bool:
    """Publish the model package folder ``src`` to ``dest`` once: every file, then its index
    (:func:`model_index`: names and sha256s), so a reader that finds the index finds the whole
    package. Returns False, writing nothing, when the index exists (a package is stored under its
    identity, which its bytes determine).
    """
    if model_index(dest).exists():
        return False
    names = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    if not names:
        raise FileNotFoundError(f"{src}: the model package folder is empty or missing")
    digests = {}
    for name in names:
        data = (src / name).read_bytes()
        digests[name] = hashlib.sha256(data).hexdigest()
        target = dest.joinpath(*name.split("/"))
        if is_local(target):
            target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    index = json.dumps({"files": digests}, indent=1, sort_keys=True)
    model_index(dest).write_text(index, encoding="utf-8")
    return True


def fetch_model(src: StorePath, dest: Path) -> Path:
    """The local copy of the model package published at ``src``: ``dest`` if it is a complete
    copy (its index written last), else every listed file fetched and checked against the
    index's sha256, written to a temporary folder, renamed to ``dest``, then the index.

    Raises
    ------
    FileNotFoundError
        If no package is published at ``src``.
    ValueError
        If a fetched file's sha256 differs from the index (names the file; nothing is kept).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One fetch at a time per copy: the run workers of one machine share the cache.
    with open(dest.parent / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if model_index(dest).is_file() and dest.is_dir():
            return dest
        index_path = model_index(src)
        if not index_path.exists():
            raise FileNotFoundError(
                f"{describe(src)}: no model package is published there (no {index_path.name}); "
                "re-materialize the study's model stage so that it publishes the package"
            )
        index = json.loads(index_path.read_text(encoding="utf-8"))
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            for name, digest in sorted(index["files"].items()):
                data = src.joinpath(*name.split("/")).read_bytes()
                if hashlib.sha256(data).hexdigest() != digest:
                    raise ValueError(
                        f"{describe(src)}/{name}: sha256 differs from {index_path.name}; the "
                        "stored model package was altered: publish it again from the model stage"
                    )
                target = tmp.joinpath(*name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            if dest.exists():  # an interrupted earlier copy (no index): replaced
                shutil.rmtree(dest)
            tmp.rename(dest)
            model_index(dest).write_text(json.dumps(index), encoding="utf-8")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
