"""A study's signed package in one call: stamp, render, sign, write and verify.

:func:`write_study_package` is what the package stage of every study runs: it refuses a bundle
whose stages ran under another policy, names every input by its sha256 (the landed batches as
ingest read them, the audited model, the policy file), fixes the audit id and time, asks the
study for its report (:class:`ReportContent`) and writes it with the policy file as a signed,
verified package (:func:`~clinaudit.reporting.package.write_report_package`). The manifest
carries the audit's :class:`~clinaudit.reporting.audit_summary.AuditSummary` (decisions,
criteria, policy and model identity in one study-independent form) when the caller gives one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .audit_summary import SUMMARY_KEY, AuditSummary, CriterionOutcome
from .package import AuditStamp, PackageResult, stamp_audit, write_report_package
from .provenance import AuditBundle, check_policy
from .signing import SignerSpec

__all__ = [
    "ReportContent",
    "audit_summary",
    "package_inputs",
    "pdf_pages",
    "write_study_package",
]


@dataclass(frozen=True)
class ReportContent:
    """A study's report for one audit: HTML, the figure files it refers to (relative path ->
    bytes), the evidence attached to the package, and facts for the manifest's metadata."""

    html: str
    figures: Mapping[str, bytes]
    attachments: Mapping[str, bytes]
    metadata: Mapping[str, Any] = field(default_factory=dict)


def pdf_pages(path: Path) -> int:
    """Number of pages of a PDF file."""
    from pyhanko.pdf_utils.reader import PdfFileReader

    with open(path, "rb") as fh:
        return int(PdfFileReader(fh).root["/Pages"]["/Count"])


def package_inputs(bundle: AuditBundle, policy_name: str) -> dict[str, str]:
    """Name -> sha256 of every input of the audit: the landed batches as ingest read them, the
    audited model (package, or scores files) and the policy file."""
    return {
        **bundle.provenance.batches,
        "model_package": bundle.model.identity,
        policy_name: bundle.policy.sha256,
    }


def audit_summary(
    bundle: AuditBundle, decisions: Mapping[str, str], criteria: Sequence[CriterionOutcome] = ()
) -> AuditSummary:
    """The study-independent summary of ``bundle``'s audit for its package's manifest.

    Parameters
    ----------
    bundle : AuditBundle
        The audit (policy, model and provenance are read from it).
    decisions : mapping of str to str
        Partition (or the study's overall key) -> decision text
        (:meth:`~clinaudit.studies.base.Study.decision_summary`).
    criteria : sequence of CriterionOutcome
        The criteria behind the decisions
        (:meth:`~clinaudit.studies.base.Study.decision_criteria`).
    """
    model = bundle.model
    card = {k: model.card.get(k) for k in ("vendor", "version")}
    return AuditSummary(
        decisions=dict(decisions),
        criteria=tuple(criteria),
        partitions=tuple(bundle.provenance.partitions),
        left_out=dict(bundle.provenance.left_out),
        policy=bundle.policy.identity(),
        model={
            "mode": model.mode,
            "kind": model.kind,
            "identity": model.identity,
            **{k: v for k, v in card.items() if isinstance(v, str) and v},
        },
        thresholds={k: float(v) for k, v in model.thresholds.items()},
    )


def write_study_package(
    bundle: AuditBundle,
    render: Callable[[AuditStamp], ReportContent],
    *,
    policy_name: str,
    signer: SignerSpec,
    reports_root: Path,
    now: datetime | None = None,
    summary: AuditSummary | None = None,
    run_id: str | None = None,
) -> PackageResult:
    """Stamp, render, sign, write and verify a new package ``<reports>/<study>/<audit-id>/``.

    Parameters
    ----------
    bundle : AuditBundle
        The audit; every stage must have run under ``bundle.policy``.
    render : callable
        ``render(stamp) -> ReportContent``: the study's report for this audit id.
    policy_name : str
        Name of the policy among the inputs and of its file in the package (``<name>.yaml``).
    signer : SignerSpec
        Who signs.
    reports_root : Path
        Root of all packages.
    now : datetime, optional
        UTC time of the audit (default now): fixes the audit id and every date in the PDF.
    summary : AuditSummary, optional
        Recorded as ``manifest["metadata"]["audit_summary"]`` (what the committee portal lists
        and compares); see :func:`audit_summary`.
    run_id : str, optional
        The orchestrator's run that wrote the package (``manifest["metadata"]["run_id"]``).

    Raises
    ------
    PolicyMismatchError
        If a stage ran under another policy than ``bundle.policy``.
    """
    t0 = time.perf_counter()
    check_policy(bundle, study=bundle.study)
    inputs = package_inputs(bundle, policy_name)
    stamp = stamp_audit(bundle.study, inputs, signer, now)
    if now is None:
        # The same inputs audited again within the second would get the same audit id, and a
        # package is never overwritten: wait for the next second (the stamp keeps the true time).
        while (Path(reports_root) / bundle.study / stamp.audit_id).exists():
            time.sleep(1.05 - datetime.now(UTC).microsecond / 1e6)
            stamp = stamp_audit(bundle.study, inputs, signer)
    content = render(stamp)
    attachments = {**content.attachments, f"{policy_name}.yaml": bundle.policy.text.encode()}
    t1 = time.perf_counter()
    package = write_report_package(
        reports_root,
        study=bundle.study,
        stamp=stamp,
        study_title=bundle.title,
        html=content.html,
        figures=content.figures,
        attachments=dict(sorted(attachments.items())),
        inputs=inputs,
        signer=signer,
        metadata={
            "simulated": bundle.provenance.simulated,
            "policy_id": bundle.policy.policy_id,
            **content.metadata,
            **({SUMMARY_KEY: summary.to_json()} if summary is not None else {}),
            **({"run_id": run_id} if run_id else {}),
        },
    )
    return PackageResult(
        package=package,
        audit_id=stamp.audit_id,
        simulated=bundle.provenance.simulated,
        signer=stamp.signer,
        development_signature=stamp.development_signature,
        n_inputs=len(inputs),
        pages=pdf_pages(package.pdf_path),
        seconds={"view_and_html": t1 - t0, "render_sign_write_verify": time.perf_counter() - t1},
    )
