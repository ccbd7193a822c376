"""The portal's view of the reports tree: every package of every study, verified on each read.

:class:`PackageStore` lists the registered studies' packages newest first and hands out
:class:`PackageEntry` objects: a snapshot of the package's bytes, the verdict on exactly those
bytes and the facts the committee reads. Nothing here caches a package's content; only the
verifier caches verdicts, under the content fingerprint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .catalog import PackageRef, PackageSnapshot, find_package, list_packages, read_snapshot
from .facts import PackageFacts
from .urls import package_path
from .verification import PackageVerdict, Verifier

__all__ = ["PackageEntry", "PackageStore"]


@dataclass(frozen=True)
class PackageEntry:
    """One package as read and verified for one request."""

    snapshot: PackageSnapshot
    verdict: PackageVerdict
    facts: PackageFacts

    @property
    def ref(self) -> PackageRef:
        return self.snapshot.ref

    @property
    def url(self) -> str:
        """The package's page in the portal."""
        return package_path(self.ref.study, self.ref.audit_id)

    @property
    def sort_key(self) -> tuple[str, str]:
        """Newest first when sorted in reverse: the signed creation time, then the audit id."""
        return (self.facts.created, self.ref.audit_id)

    def servable(self) -> list[str]:
        """Files the portal may serve: the report, the manifest and every output the verified
        manifest lists (empty while the package does not verify)."""
        if not self.verdict.ok or self.verdict.manifest is None:
            return []
        listed = ["report.pdf", "manifest.json", *sorted(self.verdict.manifest["outputs"])]
        return [name for name in listed if name in self.snapshot.files]


class PackageStore:
    """Packages under ``reports`` for the studies in ``studies`` (name -> title).

    Parameters
    ----------
    reports : Path
        ``<home>/reports``: the only folder the portal reads.
    studies : mapping of str to str
        The registered studies (name -> title), in display order.
    verifier : Verifier
        Verifies each package on each read (caching verdicts by content).
    """

    def __init__(self, reports: Path, studies: Mapping[str, str], verifier: Verifier) -> None:
        self.reports = Path(reports)
        self.studies = dict(studies)
        self.verifier = verifier

    def _entry(self, ref: PackageRef) -> PackageEntry:
        snap = read_snapshot(ref)
        verdict = self.verifier.verify(snap)
        manifest = verdict.manifest if verdict.manifest is not None else snap.disk_manifest()
        facts = PackageFacts.from_manifest(manifest, study=ref.study, audit_id=ref.audit_id)
        return PackageEntry(snap, verdict, facts)

    def entries(self, study: str) -> list[PackageEntry]:
        """Every package of ``study``, newest first (empty for an unknown study)."""
        if study not in self.studies:
            return []
        found = []
        for ref in list_packages(self.reports, study):
            try:
                found.append(self._entry(ref))
            except FileNotFoundError:  # removed while listing: not a package any more
                continue
        return sorted(found, key=lambda e: e.sort_key, reverse=True)

    def entry(self, study: str, audit_id: str) -> PackageEntry | None:
        """The package ``study/audit_id``, or ``None`` (unknown study, bad name, absent)."""
        if study not in self.studies:
            return None
        ref = find_package(self.reports, study, audit_id)
        if ref is None:
            return None
        try:
            return self._entry(ref)
        except FileNotFoundError:
            return None

    def previous(self, entry: PackageEntry) -> PackageEntry | None:
        """The package of the same study written just before ``entry`` (``None``: the first)."""
        older = [e for e in self.entries(entry.ref.study) if e.sort_key < entry.sort_key]
        return older[0] if older else None
