"""Every view verifies: the package verifier on a snapshot, cached by content, never stale.

:class:`Verifier` runs :func:`clinaudit.reporting.verify.verify_pdf` (signature, coverage,
signer, pdfsig cross-check, embedded attachments, package files against the manifest) on a
package and adds the portal's own checks: the folder holds plain files only, and the signed
manifest names the study and audit id the package is filed under (a package copied under
another id is not that audit). A verdict is cached under the snapshot's content fingerprint, so
changed bytes are always verified again; a package that changes while it is verified fails.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinaudit.reporting.verify import Check, verify_pdf

from .catalog import REPORT_NAME, PackageSnapshot, read_snapshot

__all__ = ["PackageVerdict", "Verifier"]


@dataclass(frozen=True)
class PackageVerdict:
    """The verification of one package snapshot.

    Attributes
    ----------
    ok : bool
        Every check passed: VERIFIED. Otherwise FAILED.
    checks : tuple of Check
        Every check, in order (the verifier's, then the portal's).
    signer : str or None
        Subject of the signing certificate.
    is_development : bool
        Signed with clinaudit's self-signed development key (integrity, not identity).
    manifest : mapping or None
        The manifest embedded in the signed PDF (``None`` when unreadable).
    fingerprint : str
        Content fingerprint of the snapshot the verdict is about.
    """

    ok: bool
    checks: tuple[Check, ...]
    signer: str | None
    is_development: bool
    manifest: Mapping[str, Any] | None
    fingerprint: str

    @property
    def failed(self) -> tuple[Check, ...]:
        """The checks that failed (empty when verified)."""
        return tuple(c for c in self.checks if not c.ok)

    @property
    def label(self) -> str:
        """``"VERIFIED"`` or ``"FAILED"``."""
        return "VERIFIED" if self.ok else "FAILED"


def _portal_checks(snap: PackageSnapshot, manifest: Mapping[str, Any] | None) -> list[Check]:
    checks = [
        Check(
            "package holds plain files only",
            not snap.problems,
            "; ".join(snap.problems) or f"{len(snap.files)} regular files",
        )
    ]
    if manifest is not None:
        filed = (snap.ref.study, snap.ref.audit_id)
        signed = (manifest.get("study"), manifest.get("audit_id"))
        checks.append(
            Check(
                "package filed under its signed study and audit id",
                signed == filed,
                f"signed manifest says {signed[0]}/{signed[1]}; filed as {filed[0]}/{filed[1]}",
            )
        )
    return checks


class Verifier:
    """Verifies package snapshots, caching each verdict under the content fingerprint.

    Parameters
    ----------
    trust_roots : sequence of Path
        CA certificates a production signer must chain to (a development signature is
        verified against its own certificate and labelled as such).
    use_pdfsig : bool
        Cross-check with poppler's ``pdfsig`` (skipped with a note when not installed).
    max_entries : int
        Verdicts kept (least recently used dropped first).
    """

    def __init__(
        self, trust_roots: Sequence[Path] = (), *, use_pdfsig: bool = True, max_entries: int = 512
    ) -> None:
        self.trust_roots = tuple(Path(p) for p in trust_roots)
        self.use_pdfsig = use_pdfsig
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[str, str], PackageVerdict] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, snap: PackageSnapshot) -> PackageVerdict:
        """The verdict on ``snap`` (from the cache when the same content was verified)."""
        key = (str(snap.ref.dir), snap.fingerprint)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        verdict = self._verify(snap)
        try:
            unchanged = read_snapshot(snap.ref).fingerprint == snap.fingerprint
        except OSError:
            unchanged = False
        if not unchanged:
            check = Check(
                "package unchanged while verified",
                False,
                "its files changed during verification; reload the page",
            )
            return PackageVerdict(
                False,
                (*verdict.checks, check),
                verdict.signer,
                verdict.is_development,
                verdict.manifest,
                snap.fingerprint,
            )
        with self._lock:
            self._cache[key] = verdict
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return verdict

    def _verify(self, snap: PackageSnapshot) -> PackageVerdict:
        if REPORT_NAME not in snap.files:
            checks = (
                Check("pdf readable", False, f"{REPORT_NAME} is missing"),
                *_portal_checks(snap, None),
            )
            return PackageVerdict(False, checks, None, False, None, snap.fingerprint)
        result = verify_pdf(
            snap.ref.dir / REPORT_NAME,
            package_dir=snap.ref.dir,
            trust_roots=self.trust_roots,
            use_pdfsig=self.use_pdfsig,
        )
        checks = (*result.checks, *_portal_checks(snap, result.manifest))
        return PackageVerdict(
            ok=all(c.ok for c in checks),
            checks=checks,
            signer=result.signer,
            is_development=result.is_development,
            manifest=result.manifest,
            fingerprint=snap.fingerprint,
        )
