"""Verification of a signed audit report: signature, coverage, signer, manifest, sidecar files.

``verify_pdf`` returns a :class:`Verdict` listing every check with its outcome; nothing is
silently skipped (a check that cannot run, such as the poppler cross-check without ``pdfsig``,
says so in its detail). ``main`` is the ``clinaudit verify`` command: exit status 0 only when every
check passes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from pyhanko.keys import load_certs_from_pemder
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko.sign.validation.settings import KeyUsageConstraints
from pyhanko.sign.validation.status import PdfSignatureStatus, SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext

from .signing import certificate_identity, is_dev_certificate

MANIFEST_NAME = "manifest.json"
#: Files of a package directory that the manifest does not list.
PACKAGE_OWN_FILES = frozenset({"report.pdf", MANIFEST_NAME})
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PDF_STRUCTURE_ERRORS = (PdfError, ValueError, KeyError, TypeError, zlib.error)


@dataclass(frozen=True)
class Check:
    """One verification check: its name, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str
    skipped: bool = False


@dataclass(frozen=True)
class Verdict:
    """All checks of one report. ``ok`` is true only when every check passed (or was skipped)."""

    ok: bool
    checks: list[Check]
    signer: str | None
    is_development: bool
    path: str = ""
    manifest: dict[str, Any] | None = field(default=None, repr=False)


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _name_tree_items(node: Any) -> list[tuple[str, Any]]:
    node = node.get_object()
    items: list[tuple[str, Any]] = []
    if "/Names" in node:
        pairs = node["/Names"]
        items += [(str(pairs[i]), pairs[i + 1]) for i in range(0, len(pairs), 2)]
    for kid in node.get("/Kids", []):
        items += _name_tree_items(kid)
    return items


def embedded_files(reader: PdfFileReader) -> dict[str, bytes]:
    """The PDF's embedded files (the catalog's ``/EmbeddedFiles`` name tree), by name.

    Raises ``ValueError`` when a name occurs twice; malformed structures raise pyHanko's errors.
    """
    names = reader.root.get("/Names")
    if names is None or "/EmbeddedFiles" not in names.get_object():
        return {}
    files: dict[str, bytes] = {}
    for name, spec in _name_tree_items(names.get_object()["/EmbeddedFiles"]):
        if name in files:
            raise ValueError(f"embedded file {name!r} occurs twice in the name tree")
        files[name] = spec.get_object()["/EF"]["/F"].get_object().data
    return files


def pdfsig_report(path: Path, *, executable: str | None = None) -> tuple[bool, str]:
    """Run poppler's ``pdfsig`` on ``path``; parse its text (it exits 0 on a digest mismatch).

    Valid when there is at least one signature, every signature says "Signature is Valid." and the
    last one says "Total document signed". Raises ``FileNotFoundError`` when pdfsig is absent.
    """
    exe = executable or shutil.which("pdfsig") or "/usr/bin/pdfsig"
    if not Path(exe).is_file():
        raise FileNotFoundError(f"pdfsig not found ({exe}); install poppler-utils")
    proc = subprocess.run(
        [exe, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    text = (proc.stdout + proc.stderr).strip()
    blocks = re.split(r"^Signature #\d+:\s*$", proc.stdout, flags=re.MULTILINE)[1:]
    valid = (
        bool(blocks)
        and all("- Signature Validation: Signature is Valid." in b for b in blocks)
        and "- Total document signed" in blocks[-1]
    )
    return valid, text


def _trust_roots(paths: Sequence[Path]) -> list[Any]:
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"trust root {str(path)!r} does not exist; pass a PEM/DER file")
    return [cert for path in paths for cert in load_certs_from_pemder([str(path)])]


def _validate(sig: Any, trust_roots: list[Any]) -> tuple[PdfSignatureStatus, x509.Certificate]:
    cert = x509.load_der_x509_certificate(sig.signer_cert.dump())
    roots = list(trust_roots) + ([sig.signer_cert] if is_dev_certificate(cert) else [])
    context = ValidationContext(trust_roots=roots, allow_fetching=False)
    usage = KeyUsageConstraints(
        key_usage={"digital_signature", "non_repudiation"}, match_all_key_usages=False
    )
    return validate_pdf_signature(sig, context, key_usage_settings=usage), cert


def _signature_checks(
    status: PdfSignatureStatus, cert: x509.Certificate, *, last: bool, label: str
) -> list[Check]:
    identity = certificate_identity(cert, is_development=False)
    checks = [
        Check(
            f"{label} intact",
            status.intact and status.valid,
            f"digest {'matches' if status.intact else 'DOES NOT match'} the signed bytes; "
            f"signature {'verifies' if status.valid else 'DOES NOT verify'} "
            f"({status.md_algorithm})",
        )
    ]
    if last:
        covered = status.coverage == SignatureCoverageLevel.ENTIRE_FILE
        unmodified = status.modification_level == ModificationLevel.NONE
        coverage = status.coverage.name if status.coverage is not None else "unknown"
        detail = f"coverage {coverage}, modification level "
        detail += status.modification_level.name if status.modification_level else "unknown"
        checks.append(Check(f"{label} covers the whole file", covered and unmodified, detail))
    else:
        checks.append(
            Check(f"{label} later changes allowed", bool(status.docmdp_ok), "earlier signature")
        )
    if identity.is_development:
        trust = (
            "development signature, self-signed: trusted explicitly as the clinaudit "
            "development certificate; proves integrity, not identity"
        )
    elif status.trusted:
        trust = "chains to a given trust root"
    else:
        trust = f"NOT trusted ({status.trust_problem_indic}); pass the issuing CA with --trust-root"
    checks.append(
        Check(
            f"{label} signer",
            status.trusted,
            f"{identity.subject} (sha256 {identity.sha256_fingerprint[:16]}...); {trust}",
        )
    )
    return checks


def _manifest(files: dict[str, bytes]) -> tuple[Check, dict[str, Any] | None]:
    if MANIFEST_NAME not in files:
        return Check("manifest embedded", False, f"no {MANIFEST_NAME} attachment"), None
    try:
        manifest = json.loads(files[MANIFEST_NAME].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Check("manifest embedded", False, f"{MANIFEST_NAME} is not JSON: {exc}"), None
    missing = [k for k in ("study", "audit_id", "inputs", "outputs", "signer") if k not in manifest]
    outputs = manifest.get("outputs")
    if missing or not isinstance(outputs, dict):
        return Check("manifest embedded", False, f"keys missing or malformed: {missing}"), None
    bad = [k for k, v in outputs.items() if not (isinstance(v, str) and _SHA256.match(v))]
    if bad:
        return Check("manifest embedded", False, f"outputs without a sha256 hex: {bad}"), None
    detail = f"study {manifest['study']}, audit {manifest['audit_id']}, {len(outputs)} outputs"
    return Check("manifest embedded", True, detail), manifest


def _compare(outputs: dict[str, str], found: dict[str, str]) -> list[str]:
    problems = [f"{n}: missing" for n in sorted(set(outputs) - set(found))]
    problems += [f"{n}: not listed in the manifest" for n in sorted(set(found) - set(outputs))]
    problems += [
        f"{n}: sha256 {found[n][:12]}... != manifest {outputs[n][:12]}..."
        for n in sorted(set(outputs) & set(found))
        if found[n] != outputs[n]
    ]
    return problems


def _attachment_check(manifest: dict[str, Any], files: dict[str, bytes]) -> Check:
    found = {n: sha256_hex(d) for n, d in files.items() if n != MANIFEST_NAME}
    problems = _compare(manifest["outputs"], found)
    detail = "; ".join(problems) or f"{len(found)} attachments match their manifest sha256"
    return Check("embedded attachments match manifest", not problems, detail)


def _package_check(manifest: dict[str, Any], manifest_bytes: bytes, package_dir: Path) -> Check:
    root = Path(package_dir)
    if not root.is_dir():
        return Check("package files match manifest", False, f"{root} is not a directory")
    problems = []
    on_disk = root / MANIFEST_NAME
    if not on_disk.is_file() or on_disk.read_bytes() != manifest_bytes:
        problems.append(f"{MANIFEST_NAME}: missing or differs from the embedded manifest")
    found = {
        p.relative_to(root).as_posix(): sha256_hex(p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in PACKAGE_OWN_FILES
    }
    problems += _compare(manifest["outputs"], found)
    detail = "; ".join(problems) or f"{len(found)} sidecar files match their manifest sha256"
    return Check("package files match manifest", not problems, detail)


def _signer_matches(manifest: dict[str, Any], cert: x509.Certificate) -> Check:
    identity = certificate_identity(cert, is_development=False)
    claimed = manifest.get("signer") or {}
    ok = (
        claimed.get("subject") == identity.subject
        and claimed.get("development") == identity.is_development
    )
    detail = f"manifest says {claimed!r}; signature certificate {identity.subject!r}"
    return Check("manifest signer matches signature", ok, detail)


def _pdfsig_check(path: Path) -> Check:
    try:
        valid, text = pdfsig_report(path)
    except FileNotFoundError as exc:
        return Check("pdfsig cross-check", True, f"skipped: {exc}", skipped=True)
    lines = [ln.strip() for ln in text.splitlines() if "Validation" in ln or "document" in ln]
    return Check("pdfsig cross-check", valid, "; ".join(lines) or text[:200])


def verify_pdf(
    path: Path,
    *,
    package_dir: Path | None = None,
    trust_roots: Sequence[Path] = (),
    use_pdfsig: bool = True,
) -> Verdict:
    """Verify a signed report PDF and, optionally, the package directory around it.

    Parameters
    ----------
    path : Path
        The signed PDF.
    package_dir : Path, optional
        The audit package folder: every file listed in the manifest's outputs must be there with
        the listed sha256, no unlisted file may be there, and its manifest.json must equal the
        embedded one.
    trust_roots : sequence of Path
        PEM/DER certificates trusted as roots for a non-development signer.
    use_pdfsig : bool
        Cross-check with poppler's ``pdfsig`` (skipped, with a note, when not installed).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        reader = PdfFileReader(io.BytesIO(data), strict=False)
        sigs = reader.embedded_signatures
        files = embedded_files(reader)
    except (OSError, *_PDF_STRUCTURE_ERRORS) as exc:
        check = Check("pdf readable", False, f"{type(exc).__name__}: {exc}")
        return Verdict(False, [check], None, False, str(path))
    checks = [Check("pdf readable", True, f"{len(data)} bytes")]
    checks.append(Check("signature present", bool(sigs), f"{len(sigs)} signature(s)"))
    cert = None
    roots = _trust_roots(trust_roots)
    for i, sig in enumerate(sigs):
        label = f"signature '{sig.field_name}'"
        try:
            status, cert = _validate(sig, roots)
        except _PDF_STRUCTURE_ERRORS as exc:
            checks.append(Check(f"{label} intact", False, f"{type(exc).__name__}: {exc}"))
            continue
        checks += _signature_checks(status, cert, last=i == len(sigs) - 1, label=label)
    if use_pdfsig:
        checks.append(_pdfsig_check(path))
    manifest_check, manifest = _manifest(files)
    checks.append(manifest_check)
    if manifest is not None:
        checks.append(_attachment_check(manifest, files))
        if cert is not None:
            checks.append(_signer_matches(manifest, cert))
        if package_dir is not None:
            checks.append(_package_check(manifest, files[MANIFEST_NAME], Path(package_dir)))
    identity = certificate_identity(cert, is_development=False) if cert is not None else None
    return Verdict(
        ok=all(c.ok for c in checks),
        checks=checks,
        signer=identity.subject if identity else None,
        is_development=bool(identity and identity.is_development),
        path=str(path),
        manifest=manifest,
    )


def verify_published(
    location: str, *, trust_roots: Sequence[Path] = (), use_pdfsig: bool = True
) -> Verdict:
    """Verify a package published to a store (``s3://bucket/.../packages/<study>/<audit id>``,
    or a ``file://`` / folder path): fetch every file into a temporary folder, then
    :func:`verify_pdf` with that folder as the package (signature, manifest, every hash, no
    unlisted or missing file).
    """
    import tempfile

    from clinaudit.assets.storage import fetch_folder, store_root

    with tempfile.TemporaryDirectory(prefix="clinaudit-verify-") as tmp:
        try:
            fetch_folder(store_root(location), Path(tmp))
        except (OSError, ValueError) as exc:
            check = Check("package readable", False, f"{type(exc).__name__}: {exc}")
            return Verdict(False, [check], None, False, location)
        pdfs = sorted(Path(tmp).glob("*.pdf"))
        if len(pdfs) != 1:
            check = Check("one report PDF", False, f"{len(pdfs)} PDF files at {location}")
            return Verdict(False, [check], None, False, location)
        verdict = verify_pdf(
            pdfs[0], package_dir=Path(tmp), trust_roots=trust_roots, use_pdfsig=use_pdfsig
        )
        return dataclasses.replace(verdict, path=f"{location.rstrip('/')}/{pdfs[0].name}")


def format_verdict(verdict: Verdict) -> str:
    """Human-readable verdict: one line per check, then the bottom line."""
    lines = [f"Verification of {verdict.path}"]
    for check in verdict.checks:
        mark = "SKIP" if check.skipped else ("PASS" if check.ok else "FAIL")
        lines.append(f"  [{mark}] {check.name}: {check.detail}")
    lines.append(f"  signer: {verdict.signer or 'unknown'}")
    if verdict.is_development:
        lines.append("  NOTE: development signature (self-signed); not valid for production use")
    failed = [c.name for c in verdict.checks if not c.ok]
    lines.append("VERIFIED" if verdict.ok else f"VERIFICATION FAILED ({len(failed)} checks)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``clinaudit verify PDF [--package-dir DIR] [--trust-root CERT]...``; 0 only if verified."""
    parser = argparse.ArgumentParser(
        prog="clinaudit verify", description="Verify a signed clinaudit audit report."
    )
    parser.add_argument(
        "pdf",
        help="signed report PDF, or the store URL of a published package folder "
        "(s3://bucket/<prefix>/packages/<study>/<audit id>: every file is fetched and checked)",
    )
    parser.add_argument("--package-dir", type=Path, default=None, help="audit package folder")
    parser.add_argument(
        "--trust-root", type=Path, action="append", default=[], help="trusted CA cert (PEM/DER)"
    )
    parser.add_argument("--no-pdfsig", action="store_true", help="skip the poppler cross-check")
    args = parser.parse_args(argv)
    if "://" in args.pdf:
        verdict = verify_published(
            args.pdf, trust_roots=args.trust_root, use_pdfsig=not args.no_pdfsig
        )
        print(format_verdict(verdict))
        return 0 if verdict.ok else 1
    verdict = verify_pdf(
        Path(args.pdf),
        package_dir=args.package_dir,
        trust_roots=args.trust_root,
        use_pdfsig=not args.no_pdfsig,
    )
    print(format_verdict(verdict))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
