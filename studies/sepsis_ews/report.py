"""The sepsis_ews audit report: audit result -> view model -> HTML -> signed, verified package.

>>> view = build_sepsis_view(result, stays=..., quarantine=..., model=..., policy=...,
...                          provenance=...)                      # doctest: +SKIP
>>> html = render_sepsis_html(view)                               # doctest: +SKIP
>>> written = write_sepsis_package(result, stays=..., ...)        # doctest: +SKIP

Pure core (no Dagster): the ``sepsis_audit_package`` asset calls :func:`write_sepsis_package`.
The HTML refers to its figures as ``figures/<name>.svg``; the view holds aggregate numbers only
(no stay identifiers reach it).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pyhanko.pdf_utils.reader import PdfFileReader

from clinaudit.audit.sepsis_audit import SepsisAuditResult
from clinaudit.audit.sepsis_policy import SepsisPolicy
from clinaudit.audit.types import AuditInputError
from clinaudit.reporting.cxr_view import SIMULATED_BAND
from clinaudit.reporting.package import (
    PackageResult,
    PolicyMismatchError,
    stamp_audit,
    write_report_package,
)
from clinaudit.reporting.pdf import render_template, report_environment
from clinaudit.reporting.sepsis_appendix import SepsisProvenance, appendix
from clinaudit.reporting.sepsis_plan import mitigation_section, monitoring_section
from clinaudit.reporting.sepsis_sections import (
    calibration_section,
    cohort_section,
    discrimination_section,
    fairness_section,
)
from clinaudit.reporting.sepsis_view import SepsisReportView, summary_section
from clinaudit.reporting.signing import SignerSpec
from clinaudit.sources.landing import batch_hashes, tables_simulated

__all__ = [
    "PolicyMismatchError",
    "SepsisProvenance",
    "build_sepsis_view",
    "render_sepsis_html",
    "report_environment",
    "write_sepsis_package",
]

STUDY = "sepsis_ews"
TITLE = "Sepsis early-warning score: subgroup audit, mitigation and monitoring plan"
TEMPLATE = "sepsis_ews/report.html.j2"


# --------------------------------------------------------------------------- view and HTML
def _model_facts(vendor_model: pd.DataFrame) -> dict[str, Any]:
    row = vendor_model.iloc[0]
    card = json.loads(row["card_json"]) if str(row["card_json"]) else {}
    return {
        **card,
        "mode": row["mode"],
        "model_sha256": row["model_sha256"],
        "package_sha256": row["package_sha256"],
    }


def build_sepsis_view(
    result: SepsisAuditResult,
    *,
    stays: pd.DataFrame,
    quarantine: pd.DataFrame,
    model: Mapping[str, Any],
    policy: SepsisPolicy,
    provenance: SepsisProvenance,
) -> SepsisReportView:
    """The report's view model (text, tables, figure files); deterministic for the same inputs.

    Parameters
    ----------
    result : SepsisAuditResult
        The audit.
    stays, quarantine : pandas.DataFrame, keyword-only
        Validated stays (``hospital``, ``batch``) and quarantine records (data-quality table).
    model : mapping, keyword-only
        Model card fields plus ``mode``, ``model_sha256``, ``package_sha256``.
    policy : SepsisPolicy, keyword-only
        The policy the audit ran under (its sha256 must match the result's).
    provenance : SepsisProvenance, keyword-only
        Audit id, time, input hashes, code version, signer.

    Raises
    ------
    AuditInputError
        If the policy differs from the one the audit used.
    """
    if result.summary.get("policy_sha256") != policy.sha256:
        raise AuditInputError(
            "policy",
            f"sha256 {policy.sha256}",
            f"the policy the audit ran under ({result.summary.get('policy_sha256')})",
            "re-run the audit with this policy",
        )
    attrs = policy.analysis.attributes
    sections = (
        cohort_section(result, stays, quarantine),
        discrimination_section(result),
        calibration_section(result),
        fairness_section(result, attrs),
        mitigation_section(result),
        monitoring_section(result, policy),
    )
    return SepsisReportView(
        study_title=TITLE,
        audit_id=provenance.audit_id,
        generated_at=provenance.generated_at,
        simulated=bool(result.summary["simulated"]),
        band_text=SIMULATED_BAND,
        summary=summary_section(result, dict(model)),
        sections=sections,
        appendix=appendix(result, policy, model, provenance),
        figures=tuple(f for s in sections for f in s.figures),
    )


def render_sepsis_html(view: SepsisReportView) -> str:
    """Render the report HTML (UTF-8; figures referenced as ``figures/<name>``)."""
    return render_template(report_environment(), TEMPLATE, view)


# --------------------------------------------------------------------------- package
@dataclass(frozen=True, kw_only=True)
class SepsisPackageResult(PackageResult):
    """The written sepsis_ews package, with its page count."""

    pages: int


def _attachments(
    result: SepsisAuditResult, quarantine: pd.DataFrame, policy: SepsisPolicy, model: dict
) -> dict[str, bytes]:
    out = {f"tables/{k}.csv": v.to_csv(index=False).encode() for k, v in result.tables().items()}
    out["tables/quarantine.csv"] = quarantine.to_csv(index=False).encode()
    out["decision.json"] = (
        json.dumps(
            {
                "recommendation": result.recommendation,
                "reasons": list(result.reasons),
                "conditions": list(result.conditions),
                "caveats": list(result.caveats),
                "summary": result.summary,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    ).encode()
    out["audit_policy.yaml"] = policy.text.encode()
    if model.get("format"):
        card = {k: v for k, v in model.items() if k not in ("mode", "package_sha256")}
        out["model_card.json"] = (json.dumps(card, indent=1, sort_keys=True) + "\n").encode()
    return dict(sorted(out.items()))


def write_sepsis_package(
    result: SepsisAuditResult,
    *,
    stays: pd.DataFrame,
    quarantine: pd.DataFrame,
    vendor_model: pd.DataFrame,
    policy: SepsisPolicy,
    signer: SignerSpec,
    landing_root: Path,
    reports_root: Path,
    now: datetime | None = None,
) -> SepsisPackageResult:
    """Build the report, sign it and write a new verified package ``<reports>/sepsis_ews/<id>/``.

    Parameters
    ----------
    result : SepsisAuditResult
        The audit (e.g. :meth:`SepsisAuditResult.from_tables` of the stored tables).
    stays, quarantine : pandas.DataFrame, keyword-only
        Validated stays with ``hospital`` and ``batch`` (the landed batches behind the audit)
        and the quarantine records.
    vendor_model : pandas.DataFrame, keyword-only
        The one-row ``sepsis_vendor_model`` table (mode, identity, card JSON).
    policy : SepsisPolicy, keyword-only
        The configured policy; the audit must have run under it.
    signer : SignerSpec, keyword-only
    landing_root, reports_root : Path, keyword-only
    now : datetime, optional, keyword-only
        UTC time of the audit (default now); fixes the audit id and the PDF dates.

    Raises
    ------
    PolicyMismatchError
        If the audit ran under another policy text.
    """
    if result.summary.get("policy_sha256") != policy.sha256:
        raise PolicyMismatchError(
            f"the sepsis audit ran under policy {result.summary.get('policy_sha256')} but the "
            f"configured policy is {policy.sha256}: re-materialize the sepsis_audit assets first"
        )
    t0 = time.perf_counter()
    by_site = {str(h): part for h, part in stays.groupby("hospital", sort=True)}
    simulated = tables_simulated(by_site, landing_root, STUDY) or bool(result.summary["simulated"])
    batches = batch_hashes(by_site, landing_root, STUDY)
    model = _model_facts(vendor_model)
    inputs = {
        **batches,
        "model_package": str(model["package_sha256"]),
        "audit_policy": policy.sha256,
    }
    stamp = stamp_audit(STUDY, inputs, signer, now)
    provenance = SepsisProvenance(
        audit_id=stamp.audit_id,
        generated_at=stamp.generated_at,
        input_batches=batches,
        model_identity=str(model["package_sha256"]),
        code_version=stamp.code_version,
        signer=stamp.signer,
        development_signature=stamp.development_signature,
    )
    view = build_sepsis_view(
        result,
        stays=stays,
        quarantine=quarantine,
        model=model,
        policy=policy,
        provenance=provenance,
    )
    html = render_sepsis_html(view)
    t1 = time.perf_counter()
    package = write_report_package(
        reports_root,
        study=STUDY,
        stamp=stamp,
        study_title=TITLE,
        html=html,
        figures={f.path: f.data for f in view.figures},
        attachments=_attachments(result, quarantine, policy, model),
        inputs=inputs,
        signer=signer,
        metadata={
            "simulated": simulated,
            "policy_id": policy.policy_id,
            "recommendation": result.recommendation,
        },
    )
    reader = PdfFileReader(io.BytesIO(package.pdf_path.read_bytes()))
    pages = int(reader.root["/Pages"]["/Count"])
    return SepsisPackageResult(
        package=package,
        audit_id=stamp.audit_id,
        simulated=simulated,
        signer=stamp.signer,
        development_signature=stamp.development_signature,
        n_inputs=len(inputs),
        pages=pages,
        seconds={"view_and_html": t1 - t0, "render_sign_write_verify": time.perf_counter() - t1},
    )
