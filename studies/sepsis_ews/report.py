"""The ``sepsis_ews`` audit report: the audit bundle -> view model -> HTML, figures, attachments.

>>> content = sepsis_report(bundle, stamp)          # doctest: +SKIP
>>> content.html, sorted(content.attachments)       # doctest: +SKIP

Pure core (no Dagster): the package stage calls :meth:`SepsisEws.report
<clinaudit.studies.sepsis_ews.study.SepsisEws.report>` inside
:func:`clinaudit.reporting.package.write_study_package`, which signs, writes and verifies. The
HTML refers to its figures as ``figures/<name>.svg``; the view holds aggregate numbers only (no
stay identifier reaches it). Provenance comes from the bundle (batch hashes as ingest read them,
the model's identity and card as the model stage recorded them), never from the landing folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from clinaudit.audit.schemas import require_columns
from clinaudit.audit.types import AuditInputError
from clinaudit.reporting.kit import SIMULATED_BAND
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.pdf import render_template, report_environment
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.study_package import ReportContent

from .ingest import HospitalSummary
from .policy import SepsisPolicy
from .report_appendix import SepsisProvenance, appendix
from .report_plan import mitigation_section, monitoring_section
from .report_provisional import provisional_section
from .report_sections import (
    calibration_section,
    cohort_section,
    discrimination_section,
    fairness_section,
)
from .report_view import SepsisReportView, summary_section
from .result import SepsisAuditResult
from .schema import StayQuarantine

__all__ = [
    "TEMPLATE",
    "TITLE",
    "SepsisProvenance",
    "build_sepsis_view",
    "model_facts",
    "render_sepsis_html",
    "sepsis_report",
]

TITLE = "Sepsis early-warning score: subgroup audit, mitigation and monitoring plan"
TEMPLATE = "sepsis_ews/report.html.j2"
#: What the report reads of the hospitals kept by validation and of the quarantine records.
_KEPT_COLUMNS = ["hospital", "n_batches", "n_stays"]
_QUARANTINE_COLUMNS = ["site", "batch", "row", "check", "severity"]


def model_facts(bundle: AuditBundle) -> dict[str, Any]:
    """The audited model for the report: its card, mode, model file and package identities."""
    model = bundle.model
    return {
        **dict(model.card),
        "mode": model.mode,
        "model_sha256": str(model.facts.get("model_sha256", model.identity)),
        "package_sha256": model.identity,
    }


def build_sepsis_view(
    result: SepsisAuditResult,
    *,
    kept: pd.DataFrame,
    quarantine: pd.DataFrame,
    model: Mapping[str, Any],
    policy: SepsisPolicy,
    provenance: SepsisProvenance,
    left_out: Mapping[str, str] | None = None,
    simulated: bool | None = None,
) -> SepsisReportView:
    """The report's view model (text, tables, figure files); deterministic for the same inputs.

    Parameters
    ----------
    result : SepsisAuditResult
        The audit.
    kept : pandas.DataFrame, keyword-only
        Per hospital the batches and stays kept by validation (``hospital``, ``n_batches``,
        ``n_stays`` of :class:`~.ingest.HospitalSummary`).
    quarantine : pandas.DataFrame, keyword-only
        Every quarantine record (data-quality table, :class:`~.schema.StayQuarantine`).
    model : mapping, keyword-only
        Model card fields plus ``mode``, ``model_sha256``, ``package_sha256``.
    policy : SepsisPolicy, keyword-only
        The policy the audit ran under (its sha256 must match the result's).
    provenance : SepsisProvenance, keyword-only
        Audit id, time, input hashes, code version, signer.
    left_out : mapping, optional, keyword-only
        Hospitals landed but not audited, and why (named in section 2 and appendix D).
    simulated : bool, optional, keyword-only
        Whether any input batch was simulated (default: the stays' flag in the summary); every
        page is then banded.

    Raises
    ------
    AuditInputError
        If the policy differs from the one the audit used, or ``kept`` or ``quarantine`` lacks a
        column read here.
    """
    require_columns("kept", kept, HospitalSummary, _KEPT_COLUMNS)
    require_columns("quarantine", quarantine, StayQuarantine, _QUARANTINE_COLUMNS)
    if result.summary.get("policy_sha256") != policy.sha256:
        raise AuditInputError(
            "policy",
            f"sha256 {policy.sha256}",
            f"the policy the audit ran under ({result.summary.get('policy_sha256')})",
            "re-run the audit with this policy",
        )
    left_out = dict(left_out or {})
    sections = (
        cohort_section(result, kept, quarantine, left_out),
        discrimination_section(result),
        calibration_section(result),
        fairness_section(result, tuple(result.settings["attributes"])),
        mitigation_section(result),
        monitoring_section(result, policy),
    )
    provisional = provisional_section(result, len(sections) + 2)  # sections 2 to 7 come first
    if provisional is not None:
        sections = (*sections, provisional)
    return SepsisReportView(
        study_title=TITLE,
        audit_id=provenance.audit_id,
        generated_at=provenance.generated_at,
        simulated=bool(result.summary["simulated"]) if simulated is None else simulated,
        band_text=SIMULATED_BAND,
        summary=summary_section(result, dict(model)),
        sections=sections,
        appendix=appendix(result, policy, model, provenance, left_out),
        figures=tuple(f for s in sections for f in s.figures),
    )


def render_sepsis_html(view: SepsisReportView) -> str:
    """Render the report HTML (UTF-8; figures referenced as ``figures/<name>``)."""
    return render_template(report_environment(), TEMPLATE, view)


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _attachments(
    result: SepsisAuditResult, quarantine: pd.DataFrame, model: Mapping[str, Any]
) -> dict[str, bytes]:
    out = {f"tables/{k}.csv": _csv(v) for k, v in result.tables().items()}
    # The package's table keeps its published columns (the stay id of a record is in the
    # quarantine reports under quarantine/; a duplicate's id is its value).
    out["tables/quarantine.csv"] = _csv(quarantine.drop(columns=["stay_id"], errors="ignore"))
    if len(result.unmatched_scores):
        out["tables/unmatched_scores.csv"] = _csv(result.unmatched_scores)
    if len(result.label_free):  # PROVISIONAL: only when some month landed without labels
        out["tables/label_free.csv"] = _csv(result.label_free)
    if len(result.label_free_scored):  # frozen estimates scored once their month is labelled
        out["tables/label_free_scored.csv"] = _csv(result.label_free_scored)
        out["tables/label_free_summary.csv"] = _csv(result.label_free_summary)
    decision = {
        "recommendation": result.recommendation,
        "reasons": list(result.reasons),
        "conditions": list(result.conditions),
        "caveats": list(result.caveats),
        "summary": result.summary,
    }
    out["decision.json"] = (json.dumps(decision, indent=2, sort_keys=True) + "\n").encode()
    if model.get("format"):
        card = {k: v for k, v in model.items() if k not in ("mode", "package_sha256")}
        out["model_card.json"] = (json.dumps(card, indent=1, sort_keys=True) + "\n").encode()
    return dict(sorted(out.items()))


def kept_stays(bundle: AuditBundle, result: SepsisAuditResult) -> pd.DataFrame:
    """Batches and stays per hospital kept by validation, less the stays the evidence stage
    left out as landed at several hospitals."""
    require_columns("cohort", bundle.cohort, HospitalSummary, _KEPT_COLUMNS)
    kept = bundle.cohort.loc[:, _KEPT_COLUMNS].copy()
    if len(result.excluded_stays):
        gone = result.excluded_stays.groupby("site").size()
        kept["n_stays"] -= kept["hospital"].map(gone).fillna(0).astype(int)
    return kept


def quarantine_records(bundle: AuditBundle, result: SepsisAuditResult) -> pd.DataFrame:
    """Every partition's quarantine records, then the stays the evidence stage left out."""
    frames = [bundle.quarantine_table()]
    if len(result.excluded_stays):
        frames.append(result.excluded_stays)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def sepsis_report(bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
    """The report of one audit: HTML, figures, the evidence attached to the package (every audit
    table and the quarantine as ``tables/<name>.csv``, ``tables/label_free.csv`` when some month
    landed without labels, ``decision.json``, ``model_card.json`` when the model has a card) and
    manifest metadata.

    Raises
    ------
    AuditInputError
        If the bundle's policy is not the one the audit ran under.
    """
    if not isinstance(bundle.policy, SepsisPolicy):
        raise AuditInputError(
            "policy", type(bundle.policy).__name__, "a SepsisPolicy", "configure a sepsis policy"
        )
    result = SepsisAuditResult.from_bundle(bundle)
    model = model_facts(bundle)
    quarantine = quarantine_records(bundle, result)
    provenance = SepsisProvenance(
        audit_id=stamp.audit_id,
        generated_at=stamp.generated_at,
        input_batches=dict(bundle.provenance.batches),
        model_identity=bundle.model.identity,
        code_version=stamp.code_version,
        signer=stamp.signer,
        development_signature=stamp.development_signature,
    )
    view = build_sepsis_view(
        result,
        kept=kept_stays(bundle, result),
        quarantine=quarantine,
        model=model,
        policy=bundle.policy,
        provenance=provenance,
        left_out=bundle.provenance.left_out,
        simulated=bundle.provenance.simulated or bool(result.summary["simulated"]),
    )
    return ReportContent(
        html=render_sepsis_html(view),
        figures={f.path: f.data for f in view.figures},
        attachments=_attachments(result, quarantine, model),
        metadata={"recommendation": result.recommendation},
    )
