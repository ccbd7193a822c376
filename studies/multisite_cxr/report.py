"""The multisite_cxr deployment-plan report: pipeline tables -> view model -> HTML.

>>> view = build_cxr_view(inputs)                       # doctest: +SKIP
>>> html = render_cxr_html(view, report_environment())  # doctest: +SKIP
>>> write_figures(view.figures, out_dir)                # doctest: +SKIP

The HTML refers to its figures by relative path (``figures/<name>.svg``): render it to PDF with
``base_url=out_dir`` after :func:`~clinaudit.reporting.report_figures.write_figures`. The view
holds only aggregate numbers: no table that reaches it carries patient or image identifiers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
import pandas as pd
import pandera.pandas as pa

from clinaudit.audit.calibration import CalibrationTable, ReliabilityTable
from clinaudit.audit.discrimination import DiscriminationTable
from clinaudit.audit.drift import DriftTable
from clinaudit.audit.recalibration import RecalibrationContract
from clinaudit.audit.schemas import require_columns
from clinaudit.audit.types import AuditInputError
from clinaudit.audit.worst_cells import WorstCellsTable
from clinaudit.models.finetune_guard import RETRAINING_SUMMARY_KEYS, RetrainingContract
from clinaudit.reporting.kit import left_out_table, provenance_tables
from clinaudit.reporting.pdf import render_template, report_environment
from clinaudit.reporting.report_figures import write_figures
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.validation.cohort import CohortSummary
from clinaudit.validation.errors import QuarantineTable, records_to_frame
from clinaudit.validation.quality import QUALITY_FEATURES

from .decisions_schema import CriteriaContract, DecisionsTable
from .monitoring import MonitoringContract
from .report_appendix import checklist_items, checklist_table, methods_notes
from .report_label_free import LabelFreeSection, label_free_section
from .report_plan import critical_findings, mitigation_section, site_plans
from .report_sections import (
    calibration_section,
    cohort_section,
    discrimination_section,
    drift_section,
    ordered_groups,
)
from .report_summary import executive_summary
from .report_view import SIMULATED_BAND, Appendix, CxrReportView, PolicyInfo

__all__ = [
    "CxrProvenance",
    "CxrReportInputs",
    "PolicyInfo",
    "build_cxr_view",
    "render_cxr_html",
    "report_environment",
    "write_figures",
]

TEMPLATE = "multisite_cxr/report.html.j2"

#: The producer's schema of each input table: the report needs its columns (extra ones are fine).
#: Mitigation, decision and monitoring tables need only their consumer contracts (A, B, C).
INPUT_SCHEMAS: Mapping[str, type[pa.DataFrameModel]] = {
    "cohort": CohortSummary,
    "quarantine": QuarantineTable,
    "metrics": DiscriminationTable,
    "calibration": CalibrationTable,
    "reliability": ReliabilityTable,
    "drift": DriftTable,
    "worst_cells": WorstCellsTable,
    "recalibration": RecalibrationContract,
    "retraining": RetrainingContract,
    "decisions": DecisionsTable,
    "criteria": CriteriaContract,
    "monitoring": MonitoringContract,
}


@dataclass(frozen=True)
class CxrProvenance:
    """Where the report's evidence comes from (printed in appendix D).

    Attributes
    ----------
    audit_id, generated_at : str
        Identifier of this audit run and its timestamp (fixed text, so renders are repeatable).
    input_batches : mapping of str to str
        Input batch name (``"site_a/b0001"``) -> sha256.
    model_sha256 : str
        sha256 of the audited model package (or scores).
    model_card : mapping
        Model-card summary, field -> value (numbers, text, lists or mappings).
    code_version : str
        clinaudit version / commit.
    policy_sha256 : str
        Must equal the policy's sha256 (checked).
    signer : str
        Subject of the signing certificate.
    development_signature : bool
        True when signed with the locally generated development key.
    """

    audit_id: str
    generated_at: str
    input_batches: Mapping[str, str]
    model_sha256: str
    model_card: Mapping[str, Any]
    code_version: str
    policy_sha256: str
    signer: str
    development_signature: bool


@dataclass(frozen=True)
class CxrReportInputs:
    """The pipeline tables the report is built from (columns: :data:`INPUT_SCHEMAS`).

    ``quarantine`` is every site's quarantine table concatenated (or a site -> table mapping);
    ``recalibration`` / ``retraining`` (+ ``retraining_summary``) are ``None`` when that stage
    did not run, and the report says so. ``drift_features`` are the features drawn in the PSI
    figure; ``psi_moderate`` / ``psi_major``, ``psi_noise_draws``, ``drift_p_adjust`` and
    ``alpha`` are the settings the drift stage ran with, ``p_adjust`` the discrimination stage's
    multiplicity adjustment; ``left_out`` names the sites landed but not audited, with the reason;
    ``threshold_source`` says where the operating thresholds come from and ``reference_check`` is
    the decisions' reference self-check (both on page 1).
    """

    study_title: str
    simulated: bool
    cohort: pd.DataFrame
    quarantine: pd.DataFrame | Mapping[str, pd.DataFrame]
    metrics: pd.DataFrame
    calibration: pd.DataFrame
    reliability: pd.DataFrame
    drift: pd.DataFrame
    worst_cells: pd.DataFrame
    decisions: pd.DataFrame
    criteria: pd.DataFrame
    monitoring: pd.DataFrame
    policy: PolicyInfo
    provenance: CxrProvenance
    psi_moderate: float
    psi_major: float
    p_adjust: str
    drift_p_adjust: str
    alpha: float
    psi_noise_draws: int
    left_out: Mapping[str, str] = field(default_factory=dict)
    threshold_source: str = ""
    reference_check: pd.DataFrame | None = None
    intake: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    recalibration: pd.DataFrame | None = None
    retraining: pd.DataFrame | None = None
    retraining_summary: Mapping[str, Any] | None = None
    targets: tuple[str, ...] = FINDINGS
    drift_features: tuple[str, ...] = field(default=QUALITY_FEATURES)
    #: Sites without labels: ``estimates``, ``scored``, ``summary`` (evidence ``label_free*``),
    #: ``provisional`` and ``criteria`` (decisions ``provisional*``) and ``facts`` (evidence
    #: facts ``label_free``); ``None``: none.
    label_free: Mapping[str, Any] | None = None


def _check(inputs: CxrReportInputs) -> pd.DataFrame:
    """Validate the inputs; return the quarantine as one table."""
    quarantine = inputs.quarantine
    if isinstance(quarantine, Mapping):
        frames = [quarantine[k] for k in sorted(quarantine)]
        quarantine = pd.concat(frames, ignore_index=True) if frames else records_to_frame([])
    for name, schema in INPUT_SCHEMAS.items():
        frame = quarantine if name == "quarantine" else getattr(inputs, name)
        if frame is not None:
            require_columns(name, frame, schema)
    if (inputs.retraining is None) != (inputs.retraining_summary is None):
        raise AuditInputError(
            "retraining_summary",
            "only one of retraining / retraining_summary",
            "both or neither",
            "pass the retraining table together with its summary dict",
        )
    if inputs.retraining_summary is not None:
        absent = [k for k in RETRAINING_SUMMARY_KEYS if k not in inputs.retraining_summary]
        if absent:
            raise AuditInputError(
                "retraining_summary",
                f"no keys {absent}",
                f"keys {list(RETRAINING_SUMMARY_KEYS)}",
                "pass the summary dict of clinaudit.models.retrain.retrain_worst_site",
            )
    hashes = {
        inputs.policy.sha256,
        inputs.provenance.policy_sha256,
        *inputs.decisions["policy_sha256"].astype(str),
    }
    if len(hashes) != 1:
        raise AuditInputError(
            "policy",
            f"policy sha256 values {sorted(hashes)}",
            "one policy hash shared by the policy text, the provenance and every decision",
            "re-run the decisions with the policy file this report prints",
        )
    if inputs.decisions.empty:
        raise AuditInputError(
            "decisions",
            "an empty table",
            "one row per audited site",
            "materialize cxr_decisions before the report",
        )
    return quarantine


def build_cxr_view(inputs: CxrReportInputs) -> CxrReportView:
    """Build the report's view model (text, tables and figure files) from the pipeline tables.

    Parameters
    ----------
    inputs : CxrReportInputs
        The audit tables, decisions, policy and provenance.

    Returns
    -------
    CxrReportView
        Deterministic for the same inputs (figure bytes included).

    Raises
    ------
    AuditInputError
        A table lacks a required column, the policy hashes disagree, or a decision is unknown.
    """
    quarantine = _check(inputs)
    critical = critical_findings(inputs.criteria, inputs.worst_cells["target"].head(3).tolist())
    sites = [g for g in ordered_groups(inputs.metrics) if g in set(inputs.decisions["site"])]
    calibration = calibration_section(
        inputs.calibration,
        inputs.reliability,
        inputs.worst_cells,
        inputs.recalibration,
        cells=[(s, f) for f in critical for s in sites],
        simulated=inputs.simulated,
    )
    discrimination = discrimination_section(
        inputs.metrics,
        targets=inputs.targets,
        critical=critical,
        simulated=inputs.simulated,
        p_adjust=inputs.p_adjust,
    )
    drift = drift_section(
        inputs.drift,
        features=inputs.drift_features,
        psi_moderate=inputs.psi_moderate,
        psi_major=inputs.psi_major,
        psi_noise_draws=inputs.psi_noise_draws,
        alpha=inputs.alpha,
        simulated=inputs.simulated,
        p_adjust=inputs.drift_p_adjust,
    )
    label_free = _label_free(inputs)
    executive = executive_summary(
        inputs.decisions,
        inputs.criteria,
        inputs.worst_cells,
        inputs.metrics,
        inputs.drift,
        inputs.retraining_summary,
        threshold_source=inputs.threshold_source,
        reference_check=inputs.reference_check,
        left_out=inputs.left_out,
    )
    if label_free is not None and label_free.provisional is not None:
        sites = ", ".join(r[0].text for r in label_free.provisional.rows)
        notice = (
            f"PROVISIONAL: {sites} landed images without labels. Section 8 gives label-free "
            "estimates and a provisional decision under the policy; these are estimates, not "
            "measurements, and are scored when the labels land."
        )
        executive = dataclasses.replace(executive, notices=(*executive.notices, ("warn", notice)))
    p = inputs.provenance
    figures = [discrimination.heatmap, drift.figure]
    if calibration.reliability is not None:
        figures.insert(1, calibration.reliability)
    return CxrReportView(
        study_title=inputs.study_title,
        audit_id=p.audit_id,
        generated_at=p.generated_at,
        simulated=inputs.simulated,
        band_text=SIMULATED_BAND,
        executive=executive,
        cohort=cohort_section(
            inputs.cohort,
            quarantine,
            _reference_site(inputs.metrics),
            audited=list(inputs.decisions["site"].astype(str)),
            intake=inputs.intake,
        ),
        discrimination=discrimination,
        calibration=calibration,
        drift=drift,
        mitigation=mitigation_section(
            inputs.worst_cells, inputs.recalibration, inputs.retraining, inputs.retraining_summary
        ),
        plans=site_plans(inputs.decisions, inputs.criteria, inputs.monitoring),
        appendix=_appendix(inputs),
        figures=tuple(figures),
        label_free=label_free,
    )


def _label_free(inputs: CxrReportInputs) -> LabelFreeSection | None:
    """Section 8, or ``None`` when the audit has no site without labels and nothing scored."""
    lf = inputs.label_free
    if lf is None:
        return None
    critical = tuple(dict.fromkeys(lf["criteria"]["finding"].astype(str)))
    return label_free_section(
        lf["estimates"],
        lf["scored"],
        lf["summary"],
        lf["provisional"],
        lf["facts"],
        critical=critical,
        simulated=inputs.simulated,
    )


def _reference_site(metrics: pd.DataFrame) -> str:
    """Site of the reference group (``"vendor_dev:test"`` -> ``"vendor_dev"``), or ``""``."""
    ref = metrics.loc[metrics["is_reference"].astype(bool), "group"]
    return str(ref.iloc[0]).split(":")[0] if len(ref) else ""


def _appendix(inputs: CxrReportInputs) -> Appendix:
    p = inputs.provenance
    prov, batches, card, note = provenance_tables(
        audit_id=p.audit_id,
        generated_at=p.generated_at,
        code_version=p.code_version,
        model_sha256=p.model_sha256,
        policy=inputs.policy,
        signer=p.signer,
        development_signature=p.development_signature,
        input_batches=p.input_batches,
        model_card=p.model_card,
    )
    return Appendix(
        methods=methods_notes(
            inputs.metrics,
            inputs.calibration,
            inputs.recalibration,
            psi_moderate=inputs.psi_moderate,
            psi_major=inputs.psi_major,
            psi_noise_draws=inputs.psi_noise_draws,
            simulated=inputs.simulated,
            p_adjust=inputs.p_adjust,
            drift_p_adjust=inputs.drift_p_adjust,
            alpha=inputs.alpha,
        ),
        policy=inputs.policy,
        # The rules in plain words; the exact file is embedded in the PDF and hashed (Table D.1).
        policy_lines=tuple((inputs.policy.rules or inputs.policy.text).splitlines()),
        checklist=checklist_table(
            checklist_items(
                recalibrated=inputs.recalibration is not None,
                retrained=inputs.retraining is not None,
                p_adjust=inputs.p_adjust,
            )
        ),
        provenance=prov,
        inputs=batches,
        model_card=card,
        signature_note=note,
        left_out=left_out_table(inputs.left_out),
    )


def render_cxr_html(view: CxrReportView, env: jinja2.Environment) -> str:
    """Render the report HTML (UTF-8 declared; figures referenced as ``figures/<name>``).

    Parameters
    ----------
    view : CxrReportView
        From :func:`build_cxr_view`.
    env : jinja2.Environment
        Usually :func:`report_environment`; must use ``StrictUndefined``.
    """
    if env.undefined is not jinja2.StrictUndefined:
        raise AuditInputError(
            "env",
            f"undefined={env.undefined.__name__}",
            "undefined=jinja2.StrictUndefined",
            "use clinaudit.reporting.pdf.report_environment()",
        )
    return render_template(env, TEMPLATE, view)
