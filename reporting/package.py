"""Signed audit packages: ``<reports_root>/<study>/<audit_id>/`` with the report and its evidence.

A package holds ``report.pdf`` (signed; ``manifest.json`` and every output embedded as PDF file
attachments), every output as a sidecar file, and ``manifest.json``. The manifest records the
sha256 of every input (data batches, model package, policy) and every output, the code version
and the signer. A package directory is never overwritten, and a package is verified after it is
written; its files are then made read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clinaudit

from .pdf import check_attachment_names, render_pdf
from .provenance import PolicyMismatchError as PolicyMismatchError
from .signing import SignerSpec, sign_pdf, signer_identity
from .verify import MANIFEST_NAME, PACKAGE_OWN_FILES, Verdict, format_verdict, verify_pdf

REPORT_NAME = "report.pdf"
MANIFEST_VERSION = 1
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PackageExistsError(FileExistsError):
    """The package directory exists already; packages are never overwritten."""


class PackageVerificationError(RuntimeError):
    """The package just written failed verification (it is removed); ``verdict`` says why."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"audit package failed verification:\n{format_verdict(verdict)}")
        self.verdict = verdict


@dataclass(frozen=True)
class AuditPackage:
    """A written, verified audit package."""

    dir: Path
    pdf_path: Path
    manifest: dict[str, Any]
    verdict: Verdict


@dataclass(frozen=True, kw_only=True)
class PackageResult:
    """What writing a study's package returns: the package, the facts a package asset records
    (id, simulated data, signer, number of hashed inputs) and where the time went. Studies
    subclass it to add their own facts."""

    package: AuditPackage
    audit_id: str
    simulated: bool
    signer: str
    development_signature: bool
    n_inputs: int
    pages: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def inputs_digest(inputs: Mapping[str, str]) -> str:
    """SHA-256 (hex) of the inputs' names and sha256s, independent of their order."""
    canonical = json.dumps(dict(sorted(inputs.items())), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def new_audit_id(study: str, inputs_digest: str, now: datetime) -> str:
    """A new audit id: UTC time to the second, then 8 hex of sha256(study, inputs digest).

    Examples
    --------
    >>> new_audit_id("multisite_cxr", "ab" * 32, datetime(2026, 11, 23, 20, 15, tzinfo=UTC))
    '20261123T201500Z-...'  # doctest: +SKIP
    """
    _check_segment("study", study)
    if now.tzinfo is None:
        raise ValueError(f"now={now!r} is naive; pass an aware datetime (e.g. datetime.now(UTC))")
    tag = hashlib.sha256(f"{study}\0{inputs_digest}".encode()).hexdigest()[:8]
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{tag}"


def _check_segment(argument: str, value: str) -> None:
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ValueError(
            f"{argument}={value!r} is not a simple name; expected letters, digits, '_', '-', '.' "
            "(it becomes a folder name under the reports root)"
        )


def _git(*args: str) -> str | None:
    """``git`` in clinaudit's own checkout only (read-only: no index refresh), else ``None``:
    an installed clinaudit that happens to sit inside another repository must not cite that
    repository's commit."""
    repo = Path(clinaudit.__file__).resolve().parent.parent
    if not (repo / ".git").exists() or not (repo / "pyproject.toml").is_file():
        return None
    if 'name = "clinaudit"' not in (repo / "pyproject.toml").read_text(encoding="utf-8"):
        return None
    try:
        proc = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """clinaudit's version, and the git commit (+ uncommitted changes) when run from a checkout."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "clinaudit": clinaudit.__version__,
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
    }


@dataclass(frozen=True)
class AuditStamp:
    """Who, when and with which code: fixed once per audit, before its report is built.

    Attributes
    ----------
    audit_id : str
        From :func:`new_audit_id`; the package folder name.
    now : datetime
        UTC time of the audit, whole seconds; every date in the report and the PDF.
    generated_at : str
        ``now`` as ISO 8601 text ending in ``Z`` (printed in the report).
    code_version : str
        ``"clinaudit <version> @ <commit[:12]>"`` (the commit only when run from a checkout).
    signer : str
        Subject of the signing certificate.
    development_signature : bool
        True when signed with the local development key.
    """

    audit_id: str
    now: datetime
    generated_at: str
    code_version: str
    signer: str
    development_signature: bool


def stamp_audit(
    study: str, inputs: Mapping[str, str], signer: SignerSpec, now: datetime | None = None
) -> AuditStamp:
    """The audit id, time, code version and signer of a new audit of ``study`` on ``inputs``.

    Parameters
    ----------
    study : str
        Study folder name (``"multisite_cxr"``).
    inputs : mapping of str to str
        Name -> sha256 of every input batch, model package and policy (see :func:`inputs_digest`).
    signer : SignerSpec
        Who signs the package.
    now : datetime, optional
        Aware time of the audit (default: now, UTC); microseconds are dropped.
    """
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    audit_id = new_audit_id(study, inputs_digest(inputs), now)
    identity, version = signer_identity(signer), code_version()
    commit = f" @ {version['git_commit'][:12]}" if version.get("git_commit") else ""
    return AuditStamp(
        audit_id=audit_id,
        now=now,
        generated_at=now.isoformat().replace("+00:00", "Z"),
        code_version=f"clinaudit {version['clinaudit']}{commit}",
        signer=identity.subject,
        development_signature=signer.is_development,
    )


def build_manifest(
    *,
    study: str,
    audit_id: str,
    title: str,
    source_date_epoch: int,
    inputs: Mapping[str, str],
    outputs: Mapping[str, bytes],
    signer_subject: str,
    development: bool,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The package manifest (a JSON-serialisable dict with sorted keys)."""
    bad = {k: v for k, v in inputs.items() if not (isinstance(v, str) and _SHA256.match(v))}
    if bad:
        raise ValueError(
            f"inputs {sorted(bad)} are not lowercase sha256 hex digests; pass name -> sha256 "
            "of every input batch, model package and policy"
        )
    return {
        "manifest_version": MANIFEST_VERSION,
        "study": study,
        "audit_id": audit_id,
        "title": title,
        "created": datetime.fromtimestamp(source_date_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "inputs": dict(sorted(inputs.items())),
        "inputs_digest": inputs_digest(inputs),
        "outputs": {n: hashlib.sha256(outputs[n]).hexdigest() for n in sorted(outputs)},
        "code_version": code_version(),
        "signer": {"subject": signer_subject, "development": development},
        "metadata": dict(metadata or {}),
    }


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """Canonical serialisation (sorted keys, 2-space indent, UTF-8, final newline)."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def _outputs(attachments: Mapping[str, bytes], extra_files: Mapping[str, Path]) -> dict[str, bytes]:
    clash = sorted(set(attachments) & set(extra_files))
    reserved = sorted((set(attachments) | set(extra_files)) & PACKAGE_OWN_FILES)
    if clash or reserved:
        raise ValueError(
            f"output names {clash or reserved} are used twice or reserved "
            f"({sorted(PACKAGE_OWN_FILES)}); rename the attachment or extra file"
        )
    outputs = dict(attachments)
    for name, path in extra_files.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"extra_files[{name!r}]={str(path)!r} does not exist")
        outputs[name] = Path(path).read_bytes()
    check_attachment_names(sorted(outputs))
    return outputs


def _write_files(folder: Path, files: Mapping[str, bytes]) -> None:
    for name in sorted(files):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as fh:
            fh.write(files[name])


def _make_read_only(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def write_audit_package(
    reports_root: Path,
    *,
    study: str,
    audit_id: str,
    html: str,
    base_url: Path,
    attachments: Mapping[str, bytes],
    inputs: Mapping[str, str],
    signer: SignerSpec,
    title: str,
    source_date_epoch: int,
    extra_files: Mapping[str, Path] | None = None,
    metadata: Mapping[str, Any] | None = None,
    location: str = "clinaudit audit pipeline",
) -> AuditPackage:
    """Render, sign, write and verify the package ``<reports_root>/<study>/<audit_id>/``.

    Parameters
    ----------
    reports_root : Path
        Root of all packages (``var/reports`` by default in the pipeline).
    study, audit_id : str
        Folder names; ``audit_id`` from :func:`new_audit_id`. An existing package is an error.
    html : str
        The report HTML (already carrying the audit id and the signer from
        :func:`~clinaudit.reporting.signing.signer_identity`).
    base_url : Path
        Folder that relative figure URLs in ``html`` resolve against.
    attachments : mapping of str to bytes
        Outputs embedded in the PDF and written beside it (tables, decisions, maps).
    inputs : mapping of str to str
        Name -> sha256 of every input batch, model package and policy.
    signer : SignerSpec
        Key material; a development signer is marked as such everywhere.
    title : str
        PDF title.
    source_date_epoch : int
        Creation time (UTC seconds) used in the manifest and the PDF dates.
    extra_files : mapping of str to Path, optional
        Files (figures) copied into the package, embedded and listed like attachments.
    metadata : mapping, optional
        JSON-serialisable facts recorded under ``manifest["metadata"]`` (e.g. ``simulated``).
    location : str
        The signature's /Location.

    Returns
    -------
    AuditPackage
        Folder, signed PDF path, manifest and the verification verdict (always ``ok``).
    """
    _check_segment("study", study)
    _check_segment("audit_id", audit_id)
    folder = Path(reports_root) / study / audit_id
    if folder.exists():
        raise PackageExistsError(
            f"audit package {folder} exists already; packages are never overwritten; use a new "
            "audit id (new_audit_id(study, inputs_digest, now))"
        )
    outputs = _outputs(attachments, extra_files or {})
    identity = signer_identity(signer)
    manifest = build_manifest(
        study=study,
        audit_id=audit_id,
        title=title,
        source_date_epoch=source_date_epoch,
        inputs=inputs,
        outputs=outputs,
        signer_subject=identity.subject,
        development=identity.is_development,
        metadata=metadata,
    )
    raw_manifest = manifest_bytes(manifest)
    unsigned = render_pdf(
        html,
        base_url=base_url,
        attachments={**outputs, MANIFEST_NAME: raw_manifest},
        title=title,
        source_date_epoch=source_date_epoch,
    )
    signed = sign_pdf(
        unsigned,
        signer,
        reason=f"clinaudit audit report {study}/{audit_id}",
        location=location,
        signer_name=identity.common_name,
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        raise PackageExistsError(f"audit package {folder} was created concurrently") from None
    try:
        _write_files(folder, {**outputs, MANIFEST_NAME: raw_manifest, REPORT_NAME: signed})
        verdict = verify_pdf(folder / REPORT_NAME, package_dir=folder)
        if not verdict.ok:
            raise PackageVerificationError(verdict)
    except BaseException:
        shutil.rmtree(folder)  # this call created the folder: leave no half-written package
        raise
    _make_read_only(folder)
    return AuditPackage(folder, folder / REPORT_NAME, manifest, verdict)


def write_report_package(
    reports_root: Path,
    *,
    study: str,
    stamp: AuditStamp,
    study_title: str,
    html: str,
    figures: Mapping[str, bytes],
    attachments: Mapping[str, bytes],
    inputs: Mapping[str, str],
    signer: SignerSpec,
    metadata: Mapping[str, Any],
) -> AuditPackage:
    """A study's report package: its figures go into the package beside the report.

    Writes ``figures`` into a temporary folder the HTML resolves against, then calls
    :func:`write_audit_package` with the PDF title ``"<study_title> (<audit id>)"`` and the
    dates of ``stamp.now``.

    Parameters
    ----------
    reports_root : Path
        Root of all packages.
    study : str
        Study folder name.
    stamp : AuditStamp
        From :func:`stamp_audit` (the audit id the report prints).
    study_title : str
        Title of the study's report.
    html : str
        The report HTML.
    figures : mapping of str to bytes
        Relative path the HTML uses (``"figures/auroc_heatmap.svg"``) -> file bytes.
    attachments, inputs, signer, metadata
        As in :func:`write_audit_package`.
    """
    check_attachment_names(sorted(figures))  # before writing: no name leaves the folder
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        _write_files(base, figures)
        return write_audit_package(
            reports_root,
            study=study,
            audit_id=stamp.audit_id,
            html=html,
            base_url=base,
            attachments=attachments,
            inputs=inputs,
            signer=signer,
            title=f"{study_title} ({stamp.audit_id})",
            source_date_epoch=int(stamp.now.timestamp()),
            extra_files={name: base / name for name in sorted(figures)},
            metadata=metadata,
        )
