"""The multisite_cxr report of one audit: the bundle -> view -> HTML, figures and evidence.

Everything printed comes from the audit bundle: the tables of each stage, the settings each stage
recorded (drift levels, multiplicity adjustments, bootstrap replicates), the batch hashes ingest
read and the sites left out of the audit, with the reason.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from clinaudit.reporting.kit import PolicyInfo
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.pdf import report_environment
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.study_package import ReportContent

from .report import CxrProvenance, CxrReportInputs, build_cxr_view, render_cxr_html

__all__ = ["EVIDENCE", "report_content", "retraining_summary"]

#: Evidence embedded as CSV: attachment name -> (stage, table).
EVIDENCE: dict[str, tuple[str, str]] = {
    "metrics": ("evidence", "metrics"),
    "calibration": ("evidence", "calibration"),
    "drift": ("evidence", "drift"),
    "worst_cells": ("evidence", "worst_cells"),
    "recalibration": ("mitigation_recalibration", "recalibration"),
    "retraining": ("mitigation_retraining", "retraining"),
    "decisions": ("decisions", "decisions"),
    "decision_criteria": ("decisions", "criteria"),
    "monitoring_plan": ("monitoring", "plan"),
    "label_free": ("evidence", "label_free"),
    "label_free_scored": ("evidence", "label_free_scored"),
    "label_free_summary": ("evidence", "label_free_summary"),
    "provisional_decisions": ("decisions", "provisional"),
}


def retraining_summary(
    summary: pd.DataFrame, retraining: pd.DataFrame, metrics: pd.DataFrame
) -> dict[str, Any] | None:
    """The one-row retrained-model table back as the summary dict (or ``None`` when re-training
    did not run), with the audited sites its guard has not evaluated (it runs nightly)."""
    if summary["status"].iloc[0] != "run":
        return None
    row = summary.iloc[0].to_dict()
    listed = ("cells_targeted", "regressions")
    out = {k: json.loads(v) if k in listed else v for k, v in row.items()}
    audited = {str(g) for g in metrics["group"] if ":" not in str(g)}
    out["not_evaluated_sites"] = sorted(audited - set(map(str, retraining["group"])))
    return out


def _attachments(bundle: AuditBundle) -> dict[str, bytes]:
    sets = bundle.stage_sets()
    out = {
        f"{name}.csv": sets[stage][table].to_csv(index=False).encode()
        for name, (stage, table) in EVIDENCE.items()
    }
    decisions = bundle.decisions["decisions"]
    out["decisions.json"] = decisions.to_json(
        orient="records", indent=2, double_precision=6
    ).encode()
    out["metrics.json"] = bundle.evidence.files["metrics.json"]
    maps = bundle.mitigations["recalibration"].files["recalibration_maps.json"]
    out["recalibration_maps.json"] = maps
    return dict(sorted(out.items()))


def report_content(bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
    """The deployment-plan report of ``bundle`` under the audit id of ``stamp``."""
    evidence, policy = bundle.evidence, bundle.policy
    settings = evidence.fact("settings")
    drift = settings["drift"]
    recal, retrain = bundle.mitigations["recalibration"], bundle.mitigations["retraining"]
    inputs = CxrReportInputs(
        study_title=bundle.title,
        simulated=bundle.provenance.simulated,
        cohort=bundle.cohort,
        quarantine=dict(bundle.quarantine),
        metrics=evidence["metrics"],
        calibration=evidence["calibration"],
        reliability=evidence["reliability"],
        drift=evidence["drift"],
        worst_cells=evidence["worst_cells"],
        decisions=bundle.decisions["decisions"],
        criteria=bundle.decisions["criteria"],
        monitoring=bundle.monitoring["plan"],
        policy=PolicyInfo(
            policy.policy_id, policy.version, policy.sha256, policy.text, policy.describe()
        ),
        provenance=CxrProvenance(
            audit_id=stamp.audit_id,
            generated_at=stamp.generated_at,
            input_batches=bundle.provenance.batches,
            model_sha256=bundle.model.identity,
            model_card=bundle.model.card,
            code_version=stamp.code_version,
            policy_sha256=policy.sha256,
            signer=stamp.signer,
            development_signature=stamp.development_signature,
        ),
        psi_moderate=float(drift["psi_moderate"]),
        psi_major=float(drift["psi_major"]),
        p_adjust=str(settings["p_adjust"]),
        drift_p_adjust=str(drift["p_adjust"]),
        alpha=float(drift["alpha"]),
        psi_noise_draws=int(drift["psi_noise_draws"]),
        left_out=bundle.provenance.left_out,
        threshold_source=bundle.model.threshold_source,
        intake=dict(evidence.facts.get("intake", {})),
        reference_check=bundle.decisions.tables.get("reference_check"),
        recalibration=recal["recalibration"],
        retraining=retrain["retraining"] if len(retrain["retraining"]) else None,
        retraining_summary=retraining_summary(
            retrain["retrained_model"], retrain["retraining"], evidence["metrics"]
        ),
        label_free={
            "estimates": evidence["label_free"],
            "scored": evidence["label_free_scored"],
            "summary": evidence["label_free_summary"],
            "provisional": bundle.decisions["provisional"],
            "criteria": bundle.decisions["provisional_criteria"],
            "facts": evidence.fact("label_free"),
        },
    )
    view = build_cxr_view(inputs)
    return ReportContent(
        html=render_cxr_html(view, report_environment()),
        figures={f.path: f.data for f in view.figures},
        attachments=_attachments(bundle),
    )
