"""Study ``peds_vqa``: yes/no questions about pediatric chest X-rays, answered by a LoRA-tuned
vision-language model, with localization maps, calibration and time per question.

One dynamic partition per site (``landing/peds_vqa/<site>/<batch>/``, layout ``peds_vindr``:
images + VinDr-PCXR-style label, box and metadata CSVs, docs/formats.md). The reference site's
training split (patient-disjoint, policy ``splits``) is what the LoRA tuning reads; every other
split of every site is evaluated. The generic pipeline calls these methods; the logic lives here:

============================  =======================================================
stage                         module
============================  =======================================================
ingest (per site)             :func:`clinaudit.sources.peds_vindr.ingest_peds_batch`
model, predictions            :mod:`.model` (adult-pretrained base, LoRA-tuned on children;
                              z = logit P(yes) of both for every question)
evidence                      :mod:`.evidence` (calibration, operating points, metrics,
                              controls, subgroups), :mod:`.localization`, :mod:`.latency`
decisions, monitoring         :mod:`.decisions`
package (evaluation report)   :mod:`.report`
demo data                     :func:`clinaudit.sources.peds_simulator.simulate_peds_study`
============================  =======================================================
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.audit.types import AuditInputError
from clinaudit.reporting.audit_summary import CriterionOutcome, outcomes_of_criteria
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.study_package import ReportContent
from clinaudit.sources.landing import BatchRef, scan_landing
from clinaudit.sources.peds_render import PEDS_CATEGORIES
from clinaudit.sources.peds_simulator import SITE, simulate_peds_study
from clinaudit.sources.peds_vindr import PEDS_COLUMNS, ingest_peds_batch
from clinaudit.studies.base import (
    AuditData,
    CheckOutcome,
    CheckSpec,
    IngestOptions,
    ModelSpec,
    RunDirs,
    SimSummary,
    Study,
)
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest
from clinaudit.validation.privacy import phi_leaks

from . import model as vqa_model
from .decisions import decide_brief, monitoring_plan
from .evidence import evidence_tableset
from .policy import PedsVqaPolicy
from .report import TITLE, evaluation_report

__all__ = ["PedsIngestOptions", "PedsVqa"]


@dataclass(frozen=True)
class PedsIngestOptions(IngestOptions):
    """Ingest settings of a site (run config of ``peds_vqa/validated``).

    ``workers``: processes decoding images; ``max_pixels``: decompression-bomb guard;
    ``min_positive_share``: the smallest share of images positive for a category below which the
    check warns (too few positives to estimate sensitivity).
    """

    workers: int = 2
    max_pixels: int = 50_000_000
    min_positive_share: float = 0.05


def _policy(policy: Any) -> PedsVqaPolicy:
    if not isinstance(policy, PedsVqaPolicy):
        raise AuditInputError(
            "policy", type(policy).__name__, "a PedsVqaPolicy",
            "configure a peds_vqa policy (CLINAUDIT_PEDS_VQA_POLICY)",
        )  # fmt: skip
    return policy


class PedsVqa(Study):
    """The pediatric CXR yes/no VQA evaluation (see the module docstring)."""

    name = "peds_vqa"
    title = TITLE
    unit = "image"
    partition_by = "site"
    targets = PEDS_CATEGORIES
    model_kind = vqa_model.KIND
    policy_type = PedsVqaPolicy
    reference_partition = SITE
    ingest_options = PedsIngestOptions
    ingest_checks = (
        CheckSpec(
            "positives_present",
            "Share of images positive for each category (warns when a category is too rare to "
            "estimate sensitivity).",
        ),
    )
    sort_by = ("batch", "image_id")
    page_budget = (6, 14)
    identifiers = ("image_id", "patient_id")

    # ------------------------------------------------------------------ ingest
    def ingest_batch(self, batch: BatchRef, *, key: bytes, options: Any) -> BatchIngest:
        return ingest_peds_batch(
            batch.path, pseudonym_key=key, workers=options.workers, max_pixels=options.max_pixels
        )

    def empty_table(self) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in PEDS_COLUMNS})

    def privacy_problems(self, table: pd.DataFrame) -> list[str]:
        """Patients must be keyed pseudonyms; no text may look like a name."""
        problems = phi_leaks(table.rename(columns={"patient": "patient_pseudonym"}))
        if len(table):
            bad = ~table["patient"].astype(str).str.fullmatch(r"[0-9a-f]{16}")
            if bad.any():
                problems.append(f"{int(bad.sum())} patient values are not 16-hex keyed hashes")
        return problems

    def check_partition(self, ingest: PartitionIngest, options: Any) -> list[CheckOutcome]:
        t = ingest.table
        shares = {c: round(float(t[c].mean()), 4) if len(t) else 0.0 for c in PEDS_CATEGORIES}
        rare = sorted(c for c, s in shares.items() if s < options.min_positive_share)
        return [
            CheckOutcome(
                "positives_present", not rare, "warn",
                {"n_images": len(t), "positive_share": shares, "rare": rare,
                 "min_positive_share": options.min_positive_share},
            )
        ]  # fmt: skip

    def cohort(
        self, validated: Mapping[str, pd.DataFrame], quarantine: Mapping[str, pd.DataFrame]
    ) -> pd.DataFrame:
        """One row per site: images, patients, quarantined rows, ages, views, prevalences."""
        rows = []
        for site in sorted(validated):
            t = validated[site]
            n = len(t)
            row: dict[str, Any] = {
                "site": site,
                "n_images": n,
                "n_patients": int(t["patient"].nunique()),
                "n_quarantined": len(quarantine.get(site, pd.DataFrame())),
                "median_age_years": float(t["age_years"].median()) if n else np.nan,
                "ap_share": float((t["view"] == "AP").mean()) if n else np.nan,
                "female_share": float((t["sex"] == "F").mean()) if n else np.nan,
            }
            for c in PEDS_CATEGORIES:
                row[f"{c}_share"] = float(t[c].mean()) if n else np.nan
            rows.append(row)
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ model
    def model_fingerprint(self, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
        return vqa_model.model_fingerprint(spec)

    def resolve_model(
        self,
        spec: ModelSpec,
        *,
        reference: pd.DataFrame | None,
        dirs: RunDirs,
        log: Any,
        policy: Any = None,
    ) -> ModelRef:
        return vqa_model.resolve_model(
            spec, reference=reference, dirs=dirs, log=log, policy=_policy(policy)
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
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        return vqa_model.predict_site(model, table, site=partition, spec=spec, dirs=dirs, log=log)

    # ------------------------------------------------------------------ audit
    def evaluate(self, data: AuditData, *, policy: Any, options: Any) -> TableSet:
        return evidence_tableset(data, _policy(policy))

    def decide(
        self, evidence: TableSet, mitigations: Mapping[str, TableSet], *, policy: Any
    ) -> TableSet:
        table, criteria = decide_brief(evidence, _policy(policy))
        return TableSet({"decisions": table, "criteria": criteria})

    def monitor(
        self,
        evidence: TableSet,
        mitigations: Mapping[str, TableSet],
        decisions: TableSet,
        data: AuditData,
        *,
        policy: Any,
    ) -> TableSet:
        return TableSet({"plan": monitoring_plan(evidence, decisions, _policy(policy))})

    def decision_summary(self, decisions: TableSet) -> dict[str, str]:
        return {
            str(r["category"]): str(r["decision"]) for _, r in decisions["decisions"].iterrows()
        }

    def decision_criteria(self, decisions: TableSet) -> list[CriterionOutcome]:
        """Every criterion behind the per-category verdicts (disabled ones not evaluated)."""
        crit = decisions["criteria"]
        return [
            o
            for cat in sorted(crit["category"].unique())
            for o in outcomes_of_criteria(crit[crit["category"] == cat], cat)
        ]

    def report(self, bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
        return evaluation_report(bundle, stamp)

    def describe_stage(self, stage: str, value: Any) -> Mapping[str, Any]:
        if stage == "model":
            return {k: v for k, v in value.facts.items() if k in ("reused", "seconds")}
        if stage == "evidence":
            return {"headline": value["headline"].to_markdown(index=False)}
        if stage == "decisions":
            return {"decision": value["decisions"].to_markdown(index=False)}
        return {}

    # ------------------------------------------------------------------ demo data
    def simulate(
        self, landing: Path, truth: Path, *, scale: str, seed: int, workers: int
    ) -> SimSummary:
        if scan_landing(landing, self.landing_dir).ready():
            return SimSummary({}, self.unit)  # landed data is never re-simulated or replaced
        t0 = time.perf_counter()
        summary = simulate_peds_study(
            landing, truth_root=truth, scale=scale, seed=seed, workers=workers
        )
        return SimSummary({SITE: summary.n_images}, self.unit, time.perf_counter() - t0)
