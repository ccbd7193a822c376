"""Study ``multisite_cxr``: a 14-finding chest X-ray classifier audited at several sites.

Landed site batches (DICOM/PNG + NIH or CheXpert label tables) under ``<landing>/cxr/<site>/``;
the vendor's held-out reference set is the site ``vendor_dev``. Stages: ingest (validated,
de-identified images with quality features) -> model (vendor package, vendor scores or the
embedded model) -> predictions per site -> site metrics -> evidence (discrimination,
calibration, worst cells, drift) -> site recalibration and nightly focused re-training -> per-site
decisions under the versioned policy -> monitoring plan -> signed deployment plan.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.audit.reference_audit import (
    drifted_sites,
    mean_auroc_by_group,
    reference_label,
)
from clinaudit.reporting.audit_summary import CriterionOutcome
from clinaudit.reporting.figures import (
    auroc_heatmap,
    drift_bars,
    markdown_image,
    reliability_diagrams,
)
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.study_package import ReportContent
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_sites import REFERENCE_SITE
from clinaudit.sources.landing import BatchRef, scan_landing
from clinaudit.studies.base import AuditData, MitigationStage, ModelSpec, RunDirs, SimSummary
from clinaudit.studies.image_ingest import ImageStudy
from clinaudit.validation.cohort import prevalence_table
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest

from . import model as cxr_model
from .decisions import Decisions, decide_sites
from .demo_data import land_cohort, land_late_reads
from .evaluate import CxrAuditOptions, evaluate_sites, site_metrics
from .ingest import CxrIngestOptions, finish_cxr_partition, ingest_cxr_batch
from .mitigations import RecalibrationOptions, RetrainOptions, recalibrate, retrain
from .monitoring import monitoring_plan
from .policy import Policy
from .provisional import decide_unlabelled
from .report_content import report_content

__all__ = ["MultisiteCxr"]


def _md_table(frame: pd.DataFrame, cols: list[str], limit: int = 40) -> str:
    shown = frame[cols].head(limit)
    return shown.to_markdown(index=False, floatfmt=".3f") if len(shown) else "| (none) |"


def _recalibrate(evidence: TableSet, data: AuditData, **kw: Any) -> TableSet:
    return recalibrate(
        evidence, data, reference_site=REFERENCE_SITE, options=kw["options"], log=kw["log"]
    )


def _retrain(evidence: TableSet, data: AuditData, **kw: Any) -> TableSet:
    return retrain(
        evidence,
        data,
        options=kw["options"],
        dirs=kw["dirs"],
        log=kw["log"],
        run_id=kw["run_id"],
        simulated=data.simulated,
    )


class MultisiteCxr(ImageStudy):
    """The multi-site chest X-ray audit (see the module docstring)."""

    name = "multisite_cxr"
    title = "Multi-site chest X-ray model: deployment plan and audit"
    landing_dir = "cxr"
    targets = FINDINGS
    model_kind = cxr_model.KIND
    policy_type = Policy
    reference_partition = REFERENCE_SITE
    evaluate_options = CxrAuditOptions
    mitigations = (
        MitigationStage(
            "recalibration",
            _recalibrate,
            "Site-specific recalibration per (site, finding): temperature, Platt or isotonic "
            "chosen by cross-validated log-loss, fitted and evaluated with patient-disjoint "
            "cross-fitting (every after-number is out-of-sample); ECE / Brier / sensitivity "
            "before and after with paired bootstrap CIs, the site threshold restoring the "
            "vendor's intended sensitivity, and the deployable maps (recalibration_maps.json).",
            RecalibrationOptions,
        ),
        MitigationStage(
            "retraining",
            _retrain,
            "Focused re-training of the site with the most worst cells, and its regression "
            "guard: every cell's AUROC before and after on data never used for fine-tuning. A new "
            "model version that needs its own approval; runs nightly (minutes of fine-tuning).",
            RetrainOptions,
            cadence="nightly",
        ),
    )
    ingest_options = CxrIngestOptions  # a site may land its images before its labels
    predict_reads_quarantine = True  # vendor scores of quarantined images are set aside
    page_budget = (5, 10)  # section 8 (sites without labels, estimates scored) when present
    policy_attachment = "decision_policy"

    # ------------------------------------------------------------------ ingest
    def ingest_batch(self, batch: BatchRef, *, key: bytes, options: Any) -> BatchIngest:
        """An image batch, or a site reads batch labelling images landed earlier."""
        return ingest_cxr_batch(batch, key=key, options=options)

    def finish_partition(self, ingest: PartitionIngest) -> PartitionIngest:
        """Landed reads as the labels of the images they read (:mod:`.ingest`)."""
        return finish_cxr_partition(ingest)

    # ------------------------------------------------------------------ model
    def model_fingerprint(self, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
        return cxr_model.model_fingerprint(spec)

    def resolve_model(
        self,
        spec: ModelSpec,
        *,
        reference: pd.DataFrame | None,
        dirs: RunDirs,
        log: Any,
        policy: Any = None,
    ) -> ModelRef:
        return cxr_model.resolve_model(
            spec,
            reference=reference,
            dirs=dirs,
            log=log,
            reference_site=REFERENCE_SITE,
            policy=policy,
        )

    def predict(
        self,
        model: ModelRef,
        table: pd.DataFrame,
        *,
        partition: str,
        spec: ModelSpec,
        dirs: RunDirs,
        log: Any,
        quarantine: pd.DataFrame | None = None,
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        return cxr_model.predict_site(
            model, table, site=partition, spec=spec, dirs=dirs, log=log, quarantine=quarantine
        )

    def partition_metrics(
        self, table: pd.DataFrame, predictions: pd.DataFrame, model: ModelRef, *, partition: str
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        metrics = site_metrics(
            table, predictions, model, site=partition, reference_site=REFERENCE_SITE
        )
        cols = ["target", "status", "n_pos", "auroc", "auroc_ci_low", "auroc_ci_high"]
        return metrics, {
            "site": partition,
            "thresholds_from": model.threshold_source,
            "mean_auroc": float(mean_auroc_by_group(metrics).iloc[0]),
            "cells_insufficient_data": int((metrics["status"] != "ok").sum()),
            "metrics": _md_table(metrics, [*cols, "sensitivity", "specificity", "ece_width"]),
        }

    # ------------------------------------------------------------------ audit
    def evaluate(self, data: AuditData, *, policy: Any, options: Any) -> TableSet:
        return evaluate_sites(data, reference_site=REFERENCE_SITE, options=options, policy=policy)

    def decide(
        self, evidence: TableSet, mitigations: Mapping[str, TableSet], *, policy: Any
    ) -> TableSet:
        metrics = evidence["metrics"]
        retraining = mitigations["retraining"]["retraining"]
        decided = decide_sites(
            policy,
            metrics=metrics,
            calibration=evidence["calibration"],
            recalibration=mitigations["recalibration"]["recalibration"],
            drift=evidence["drift"],
            retraining=retraining if len(retraining) else None,
            sites=sorted(g for g in metrics["group"].unique() if ":" not in str(g)),
            reference=reference_label(REFERENCE_SITE),
            derived_thresholds=str(evidence.fact("settings")["thresholds_from"]).startswith(
                "derived"
            ),
        )
        provisional, provisional_criteria = decide_unlabelled(
            policy, evidence["label_free"], list(evidence.fact("label_free")["unlabelled_sites"])
        )
        tables = {"decisions": decided.table, "criteria": decided.criteria}
        return TableSet(
            {
                **tables,
                "reference_check": decided.reference,
                "provisional": provisional,
                "provisional_criteria": provisional_criteria,
            }
        )

    def monitor(
        self,
        evidence: TableSet,
        mitigations: Mapping[str, TableSet],
        decisions: TableSet,
        data: AuditData,
        *,
        policy: Any,
    ) -> TableSet:
        plan = monitoring_plan(
            policy,
            Decisions(decisions["decisions"], decisions["criteria"], decisions["reference_check"]),
            drift=evidence["drift"],
            metrics=evidence["metrics"],
            calibration=evidence["calibration"],
            recalibration=mitigations["recalibration"]["recalibration"],
        )
        return TableSet({"plan": plan})

    def decision_lines(self, decisions: TableSet) -> list[tuple[str, str]]:
        table = _all_decisions(decisions)
        return [(str(r.site), f"{r.decision:<15} {r.reasons}") for r in table.itertuples()]

    def decision_summary(self, decisions: TableSet) -> dict[str, str]:
        """Site -> decision; a site without labels reads ``"<decision> (PROVISIONAL)"``."""
        out = {str(r.site): str(r.decision) for r in decisions["decisions"].itertuples()}
        provisional = decisions.tables.get("provisional")
        if provisional is not None:
            out |= {str(r.site): f"{r.decision} (PROVISIONAL)" for r in provisional.itertuples()}
        return out

    def decision_criteria(self, decisions: TableSet) -> list[CriterionOutcome]:
        """Each site's criteria per finding, before and after the site's mitigations."""
        return [
            CriterionOutcome(
                where=r.site,
                criterion=f"{r.criterion} [{r.finding}]" if r.finding else r.criterion,
                value=r.value,
                limit=r.limit,
                comparator=r.comparator,
                passed=r.passed_before,
                value_after=r.value_after,
                passed_after=r.passed_after,
                detail=r.evidence + ("" if r.blocking else " (does not block on its own)"),
            )
            for r in decisions["criteria"].itertuples()
        ] + [
            CriterionOutcome(
                where=r.site,
                criterion=f"PROVISIONAL estimated {r.metric} {r.statistic} [{r.finding}]",
                value=r.value,
                limit=r.limit,
                comparator=">=",
                passed=bool(r.passed),
                detail=r.why or "label-free estimate (no labels yet)",
            )
            for r in decisions.tables.get("provisional_criteria", _NO_ROWS).itertuples()
        ]

    def report(self, bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
        return report_content(bundle, stamp)

    # ------------------------------------------------------------------ metadata
    def describe_stage(self, stage: str, value: Any) -> Mapping[str, Any]:
        if stage == "validated":
            table = value.table
            return {
                "n_patients": int(table["patient_pseudonym"].nunique()) if len(table) else 0,
                "prevalence": prevalence_table(table).to_markdown(),
            }
        if stage == "model":
            return dict(value.facts)
        if stage == "evidence":
            return _evidence_metadata(value)
        if stage == "decisions":
            return {"decisions": _md_table(value["decisions"], ["site", "decision", "reasons"])}
        return {}

    # ------------------------------------------------------------------ demo data
    def simulate(
        self, landing: Path, truth: Path, *, scale: str, seed: int, workers: int
    ) -> SimSummary:
        if scan_landing(landing, self.landing_dir).ready():
            return SimSummary({}, self.unit)  # landed data is never re-simulated or replaced
        t0 = time.perf_counter()
        sites = land_cohort(landing, truth, scale=scale, seed=seed, workers=workers)
        return SimSummary(sites, self.unit, time.perf_counter() - t0)

    def land_demo_followup(self, landing: Path, truth: Path, *, scale: str) -> SimSummary:
        """The radiologist reads of the site that landed unlabelled (:mod:`.demo_data`)."""
        t0 = time.perf_counter()
        reads = land_late_reads(landing, truth)
        what = f"radiologist reads of {', '.join(reads)}" if reads else ""
        return SimSummary(reads, "read", time.perf_counter() - t0, what)


_NO_ROWS = pd.DataFrame()


def _all_decisions(decisions: TableSet) -> pd.DataFrame:
    """The audited sites' decisions, then the provisional ones of sites without labels."""
    provisional = decisions.tables.get("provisional")
    if provisional is None or not len(provisional):
        return decisions["decisions"]
    return pd.concat([decisions["decisions"], provisional], ignore_index=True)


def _evidence_metadata(evidence: TableSet) -> dict[str, Any]:
    """The AUROC heatmap, reliability of the worst cells and PSI bars, for the Dagster UI."""
    disc, drift, worst = evidence["metrics"], evidence["drift"], evidence["worst_cells"]
    settings, simulated = evidence.fact("settings")["drift"], bool(evidence.fact("simulated"))
    cells = [(str(g), str(t)) for g, t in worst[["group", "target"]].head(4).to_numpy()]
    heatmap = auroc_heatmap(disc, targets=FINDINGS, simulated=simulated)
    by_site = mean_auroc_by_group(disc).rename("mean_auroc").reset_index()
    out: dict[str, Any] = {
        "sites": list(evidence.fact("sites")),
        "sites_left_out": dict(evidence.fact("left_out")),
        "mean_auroc_by_site": _md_table(by_site, ["group", "mean_auroc"]),
        "auroc_heatmap": markdown_image(heatmap, "AUROC heatmap"),
        "worst_cells": _md_table(
            worst, ["rank", "group", "target", "criteria", "harm_score", "auroc_drop"]
        ),
        "drifted": drifted_sites(drift),
    }
    label_free = evidence.tables.get("label_free")
    if label_free is not None and len(label_free):
        auroc = label_free[(label_free["method"] == "cbpe") & (label_free["metric"] == "auroc")]
        unlabelled = evidence.fact("label_free")["unlabelled_sites"]
        out["sites_unlabelled (PROVISIONAL)"] = list(unlabelled)
        out["label_free_auroc"] = _md_table(
            auroc, ["site", "finding", "estimate", "ci_low", "ci_high", "reason"]
        )
    scored = evidence.tables.get("label_free_summary")
    if scored is not None and len(scored):
        out["label_free_scored"] = _md_table(
            scored, ["site", "metric", "estimable", "mae", "baseline_mae", "coverage", "frozen_in"]
        )
    if cells:
        figure = reliability_diagrams(evidence["reliability"], cells, simulated=simulated)
        out["worst_cells_reliability"] = markdown_image(figure, "reliability diagrams")
    if len(drift):
        bars = drift_bars(
            drift,
            simulated=simulated,
            psi_moderate=settings["psi_moderate"],
            psi_major=settings["psi_major"],
        )
        out["psi"] = markdown_image(bars, "PSI per feature")
    return out
