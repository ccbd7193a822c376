"""The multisite_cxr audit package: pipeline tables -> report -> signed, verified package.

Pure core (no Dagster): the ``cxr_audit_package`` asset and ``bench/bench_report.py`` both call
:func:`write_cxr_package`, so what is benchmarked is what the pipeline runs.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from clinaudit.audit.drift import DriftConfig
from clinaudit.audit.policy import Policy, describe_policy
from clinaudit.models.package import CARD_FILE, load_package
from clinaudit.reporting.cxr_report import (
    CxrProvenance,
    CxrReportInputs,
    PolicyInfo,
    build_cxr_view,
    render_cxr_html,
    report_environment,
)
from clinaudit.reporting.package import (
    AuditStamp,
    PackageResult,
    PolicyMismatchError,
    stamp_audit,
    write_report_package,
)
from clinaudit.reporting.report_figures import FigureFile
from clinaudit.reporting.signing import SignerSpec
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.landing import batch_hashes, sha256_file, tables_simulated

STUDY = "multisite_cxr"
STUDY_DIR = "cxr"
TITLE = "Multi-site chest X-ray model: deployment plan and audit"
#: Pipeline tables the report needs (asset name -> DataFrame), besides the per-site mappings.
TABLES = (
    "cxr_cohort_summary",
    "vendor_model",
    "cxr_metrics",
    "cxr_calibration",
    "cxr_reliability",
    "cxr_drift",
    "cxr_worst_cells",
    "cxr_recalibration",
    "cxr_retraining",
    "cxr_retrained_model",
    "cxr_decisions",
    "cxr_decision_criteria",
    "cxr_monitoring_plan",
)
#: Evidence embedded as CSV (attachment name -> table).
EVIDENCE = {
    "metrics": "cxr_metrics",
    "calibration": "cxr_calibration",
    "drift": "cxr_drift",
    "worst_cells": "cxr_worst_cells",
    "recalibration": "cxr_recalibration",
    "retraining": "cxr_retraining",
    "decisions": "cxr_decisions",
    "decision_criteria": "cxr_decision_criteria",
    "monitoring_plan": "cxr_monitoring_plan",
}


@dataclass(frozen=True, kw_only=True)
class CxrPackageResult(PackageResult):
    """The written multisite_cxr package (nothing beyond :class:`PackageResult` yet)."""


def model_card_summary(vendor_model: pd.DataFrame) -> tuple[str, dict[str, Any]]:
    """The audited model's sha256 and the model-card facts the appendix prints.

    Parameters
    ----------
    vendor_model : DataFrame
        The one-row ``vendor_model`` table (``mode``, ``package_dir``, ``package_sha256``).
    """
    row = vendor_model.iloc[0]
    if row["mode"] == "scores":
        # No model: the audited object is the set of vendor scores files (one per site).
        scores = Path(row["scores_dir"])
        files = [scores] if scores.is_file() else sorted(scores.glob("*.csv"))
        digests = {f.name: sha256_file(f) for f in files}
        identity = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
        return identity, {"mode": "vendor scores only (no model package)", "scores_files": digests}
    package = load_package(row["package_dir"], expected_labels=FINDINGS)  # verifies the hash
    card = json.loads((Path(row["package_dir"]) / CARD_FILE).read_text(encoding="utf-8"))
    config = card.get("config", {})
    summary = {
        "vendor": card.get("vendor"),
        "intended_use": card.get("intended_use"),
        "adapter": card.get("adapter"),
        "architecture": config.get("architecture"),
        "input_size": config.get("input_size"),
        "version": config.get("version"),
        "created_utc": card.get("created_utc"),
        "labels": len(package.card.operating_thresholds),
    }
    return str(row["package_sha256"]), {k: v for k, v in summary.items() if v not in (None, "")}


def _retraining_summary(
    summary: pd.DataFrame, retraining: pd.DataFrame, metrics: pd.DataFrame
) -> dict[str, Any] | None:
    """The one-row ``cxr_retrained_model`` table back as the contract-B summary (or ``None``),
    with the audited sites its guard has not evaluated (re-training runs nightly, not on every
    re-audit)."""
    if summary["status"].iloc[0] != "run":
        return None
    row = summary.iloc[0].to_dict()
    listed = ("cells_targeted", "regressions")
    out = {k: json.loads(v) if k in listed else v for k, v in row.items()}
    audited = {str(g) for g in metrics["group"] if ":" not in str(g)}
    out["not_evaluated_sites"] = sorted(audited - set(map(str, retraining["group"])))
    return out


def _attachments(
    tables: Mapping[str, pd.DataFrame], artifacts: Path, policy: Policy
) -> dict[str, bytes]:
    """The evidence embedded in the PDF and written beside it."""
    out = {
        f"{name}.csv": tables[key].to_csv(index=False).encode() for name, key in EVIDENCE.items()
    }
    out["decisions.json"] = (
        tables["cxr_decisions"].to_json(orient="records", indent=2, double_precision=6).encode()
    )
    for name, path in (
        ("metrics.json", artifacts / "audit" / "cxr_metrics.json"),
        ("recalibration_maps.json", artifacts / "mitigation" / "cxr_recalibration_maps.json"),
    ):
        if path.exists():
            out[name] = path.read_bytes()
    out["decision_policy.yaml"] = policy.text.encode()
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class PreparedReport:
    """Everything the package needs before rendering: HTML, figures, evidence and provenance."""

    html: str
    figures: tuple[FigureFile, ...]
    attachments: dict[str, bytes]
    inputs: dict[str, str]
    stamp: AuditStamp
    simulated: bool


def prepare_cxr_report(
    tables: Mapping[str, pd.DataFrame],
    *,
    validated: Mapping[str, pd.DataFrame],
    quarantine: Mapping[str, pd.DataFrame],
    policy: Policy,
    signer: SignerSpec,
    landing_root: Path,
    artifacts_root: Path,
    now: datetime | None = None,
) -> PreparedReport:
    """Build the report HTML, figures, evidence and input hashes (see :func:`write_cxr_package`).

    Raises
    ------
    PolicyMismatchError
        If the decisions were made under another policy than ``policy``.
    """
    missing = [t for t in TABLES if t not in tables]
    if missing:
        raise KeyError(f"write_cxr_package: tables {missing} missing; pass every name in TABLES")
    decisions = tables["cxr_decisions"]
    made_under = sorted(set(decisions["policy_sha256"]))
    if made_under != [policy.sha256]:
        raise PolicyMismatchError(
            f"cxr_decisions were made under policy {made_under} but the configured policy is "
            f"{policy.sha256}: re-materialize cxr_decisions first"
        )
    simulated = tables_simulated(dict(validated), landing_root, STUDY_DIR)
    model_sha, card = model_card_summary(tables["vendor_model"])
    live = {s: t for s, t in validated.items() if len(t)}
    batches = batch_hashes(live, landing_root, STUDY_DIR)
    inputs = {**batches, "model_package": model_sha, "decision_policy": policy.sha256}
    stamp = stamp_audit(STUDY, inputs, signer, now)
    drift = DriftConfig()
    report_inputs = CxrReportInputs(
        study_title=TITLE,
        simulated=simulated,
        cohort=tables["cxr_cohort_summary"],
        quarantine=dict(quarantine),
        metrics=tables["cxr_metrics"],
        calibration=tables["cxr_calibration"],
        reliability=tables["cxr_reliability"],
        drift=tables["cxr_drift"],
        worst_cells=tables["cxr_worst_cells"],
        decisions=decisions,
        criteria=tables["cxr_decision_criteria"],
        monitoring=tables["cxr_monitoring_plan"],
        policy=PolicyInfo(
            policy.policy_id, policy.version, policy.sha256, policy.text, describe_policy(policy)
        ),
        provenance=CxrProvenance(
            audit_id=stamp.audit_id,
            generated_at=stamp.generated_at,
            input_batches=batches,
            model_sha256=model_sha,
            model_card=card,
            code_version=stamp.code_version,
            policy_sha256=policy.sha256,
            signer=stamp.signer,
            development_signature=stamp.development_signature,
        ),
        psi_moderate=drift.psi_moderate,
        psi_major=drift.psi_major,
        recalibration=tables["cxr_recalibration"],
        retraining=tables["cxr_retraining"] if len(tables["cxr_retraining"]) else None,
        retraining_summary=_retraining_summary(
            tables["cxr_retrained_model"], tables["cxr_retraining"], tables["cxr_metrics"]
        ),
    )
    view = build_cxr_view(report_inputs)
    return PreparedReport(
        html=render_cxr_html(view, report_environment()),
        figures=view.figures,
        attachments=_attachments(tables, artifacts_root, policy),
        inputs=inputs,
        stamp=stamp,
        simulated=simulated,
    )


def write_cxr_package(
    tables: Mapping[str, pd.DataFrame],
    *,
    validated: Mapping[str, pd.DataFrame],
    quarantine: Mapping[str, pd.DataFrame],
    policy: Policy,
    signer: SignerSpec,
    landing_root: Path,
    artifacts_root: Path,
    reports_root: Path,
    now: datetime | None = None,
) -> CxrPackageResult:
    """Build the report from the pipeline tables, sign it and write a new audit package.

    Parameters
    ----------
    tables : mapping
        Asset name -> table, for every name in :data:`TABLES`.
    validated, quarantine : mapping
        Site -> validated image table / quarantine table (provenance: landed batch hashes,
        whether the data are simulated; data-quality section).
    policy : Policy
        The configured decision policy; the decisions must have been made under it.
    signer : SignerSpec
        Who signs.
    landing_root, artifacts_root, reports_root : Path
        Run-time directories (manifests are read from the landing; metrics JSON and maps from the
        artifacts; the package goes to ``<reports_root>/multisite_cxr/<audit-id>/``).
    now : datetime, optional
        UTC time of the audit (default now); fixes the audit id and every date in the PDF.

    Raises
    ------
    PolicyMismatchError
        If the decisions were made under another policy.
    """
    t0 = time.perf_counter()
    prepared = prepare_cxr_report(
        tables,
        validated=validated,
        quarantine=quarantine,
        policy=policy,
        signer=signer,
        landing_root=landing_root,
        artifacts_root=artifacts_root,
        now=now,
    )
    t1 = time.perf_counter()
    package = write_report_package(
        reports_root,
        study=STUDY,
        stamp=prepared.stamp,
        study_title=TITLE,
        html=prepared.html,
        figures={f.path: f.data for f in prepared.figures},
        attachments=prepared.attachments,
        inputs=prepared.inputs,
        signer=signer,
        metadata={"simulated": prepared.simulated, "policy_id": policy.policy_id},
    )
    t2 = time.perf_counter()
    return CxrPackageResult(
        package=package,
        audit_id=prepared.stamp.audit_id,
        simulated=prepared.simulated,
        signer=prepared.stamp.signer,
        development_signature=prepared.stamp.development_signature,
        n_inputs=len(prepared.inputs),
        seconds={"view_and_html": t1 - t0, "render_sign_write_verify": t2 - t1},
    )
