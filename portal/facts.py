"""What the committee sees of a package, read from its manifest (no study-specific code).

:class:`PackageFacts` takes the manifest embedded in the signed PDF when there is one (the
on-disk copy otherwise, for a package that does not verify) and reads the generic fields
(title, date, signer, simulated, run id) and the package's
:class:`~clinaudit.reporting.audit_summary.AuditSummary`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clinaudit.reporting.audit_summary import SUMMARY_KEY, AuditSummary, SummaryError

__all__ = ["PackageFacts"]


@dataclass(frozen=True)
class PackageFacts:
    """Generic facts of one package.

    Attributes
    ----------
    study, audit_id, title, created : str
        From the manifest (``created``: ISO 8601 UTC).
    simulated : bool or None
        The audited data were simulated (``None``: not recorded).
    signer : str
        Subject of the signer the manifest names.
    development : bool
        The manifest says it is signed with the development key.
    policy_id : str
        The policy's id as the manifest's metadata records it.
    run_id : str or None
        The orchestrator run that wrote the package.
    summary : AuditSummary or None
        The decisions and criteria (``None``: the package declares none, see ``summary_problem``).
    summary_problem : str
        Why there is no summary.
    inputs, outputs : mapping of str to str
        Name -> sha256 of every input and output.
    """

    study: str
    audit_id: str
    title: str
    created: str
    simulated: bool | None
    signer: str
    development: bool
    policy_id: str
    run_id: str | None
    summary: AuditSummary | None
    summary_problem: str = ""
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_manifest(
        cls, manifest: Mapping[str, Any] | None, *, study: str, audit_id: str
    ) -> PackageFacts:
        """Facts of a package filed as ``study/audit_id`` with ``manifest`` (may be ``None``:
        an unreadable package still gets a row, with empty facts)."""
        doc: Mapping[str, Any] = manifest if isinstance(manifest, Mapping) else {}
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), Mapping) else {}
        signer = doc.get("signer") if isinstance(doc.get("signer"), Mapping) else {}
        summary, problem = None, ""
        if SUMMARY_KEY in meta:
            try:
                summary = AuditSummary.from_json(meta[SUMMARY_KEY])
            except SummaryError as exc:
                problem = str(exc)
        else:
            problem = (
                "this package does not declare its decisions in the portal's form (it was "
                "written before the audit summary existed); read them in report.pdf"
            )
        simulated = meta.get("simulated")
        return cls(
            study=str(doc.get("study") or study),
            audit_id=str(doc.get("audit_id") or audit_id),
            title=str(doc.get("title") or f"{study} {audit_id}"),
            created=str(doc.get("created") or ""),
            simulated=simulated if isinstance(simulated, bool) else None,
            signer=str(signer.get("subject") or "unknown"),
            development=bool(signer.get("development")),
            policy_id=str(
                meta.get("policy_id") or (summary.policy.get("policy_id", "") if summary else "")
            ),
            run_id=str(meta["run_id"]) if meta.get("run_id") else None,
            summary=summary,
            summary_problem=problem,
            inputs=_sha_map(doc.get("inputs")),
            outputs=_sha_map(doc.get("outputs")),
        )

    @property
    def decisions(self) -> list[tuple[str, str]]:
        """``(where, decision)`` pairs, in order (empty when not declared)."""
        return sorted(self.summary.decisions.items()) if self.summary else []

    @property
    def policy_version(self) -> str:
        """The policy version the summary names (``""`` when not declared)."""
        return self.summary.policy.get("policy_version", "") if self.summary else ""


def _sha_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}
