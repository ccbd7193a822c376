"""Evidence frozen in earlier signed packages, read back only after the package verifies.

A later audit may need what an earlier one signed: e.g. label-free estimates of a site frozen
before its labels landed, scored once they have (issue "label-free estimates"). Such evidence is
trusted only from a package whose signature, manifest and files verify
(:func:`~clinaudit.reporting.verify.verify_pdf` with the package folder), and only the bytes whose
sha256 the signed manifest lists. A package that fails verification is never read; it is named,
with the failed checks, so the report can say what was refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from clinaudit.portal.catalog import REPORT_NAME, list_packages

from .verify import verify_pdf

__all__ = ["SignedAttachment", "signed_attachments"]


@dataclass(frozen=True)
class SignedAttachment:
    """One attachment of a verified package: which audit, when (``created``, the manifest's UTC
    time), its bytes, their sha256 and the signer."""

    audit_id: str
    created: str
    sha256: str
    data: bytes
    signer: str


def signed_attachments(
    reports_root: Path | None, study: str, name: str, *, limit: int = 50
) -> tuple[list[SignedAttachment], list[str]]:
    """Attachment ``name`` of every verified package of ``study`` that has it, newest first.

    Parameters
    ----------
    reports_root : Path or None
        Root of all packages (``<reports>/<study>/<audit_id>/``); ``None``: no packages.
    study : str
        The study whose packages are read.
    name : str
        File name of the attachment (e.g. ``"label_free.csv"``).
    limit : int
        Most packages holding ``name`` that are verified (newest first); older ones are not read.

    Returns
    -------
    found : list of SignedAttachment
        Newest first (audit ids start with their UTC time).
    refused : list of str
        ``"<audit_id>: <why>"`` for each package holding ``name`` that did not verify.
    """
    if reports_root is None:
        return [], []
    found: list[SignedAttachment] = []
    refused: list[str] = []
    for ref in reversed(list_packages(Path(reports_root), study)):
        if len(found) + len(refused) >= limit:
            break
        if not (ref.dir / name).is_file():
            continue
        verdict = verify_pdf(ref.dir / REPORT_NAME, package_dir=ref.dir)
        manifest = verdict.manifest or {}
        listed = (manifest.get("outputs") or {}).get(name)
        if not verdict.ok or listed is None:
            failed = [c.name for c in verdict.checks if not c.ok] or [f"{name} not in manifest"]
            refused.append(f"{ref.audit_id}: package did not verify ({', '.join(failed)})")
            continue
        data = (ref.dir / name).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != listed:
            refused.append(f"{ref.audit_id}: {name} changed after verification")
            continue
        found.append(
            SignedAttachment(
                ref.audit_id,
                str(manifest.get("created", "")),
                digest,
                data,
                str(verdict.signer or ""),
            )
        )
    return found, refused
