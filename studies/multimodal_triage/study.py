"""Study ``multimodal_triage``: skin-lesion category from a photo + clinical note, with
clinician review (deferral) and a skin-tone bias audit, handed off to a new clinic.

One dynamic partition per clinic (``landing/multimodal_triage/<clinic>/<batch>/``, layout
``derm_pairs``: photos + a PAD-UFES-20-like metadata CSV, docs/formats.md). The development
clinics train the embedded arms; the held-out clinic (policy ``clinics.held_out``) is the
deployment clinic every decision is about. The generic pipeline calls these methods; the logic
lives in this package:

============================  =======================================================
stage                         module
============================  =======================================================
ingest (per clinic)           :func:`clinaudit.sources.derm_pairs.ingest_derm_batch`
model, predictions            :mod:`.model` (arms trained here or supplied; probabilities per
                              arm and share of notes removed)
evidence                      :mod:`.splits`, :mod:`.evidence` (discrimination, fusion vs
                              single modality, deferral, skin-tone audit)
decisions, monitoring         :mod:`.decisions`, :mod:`.monitoring`
package (hand-off document)   :mod:`.handoff`
demo data                     :func:`clinaudit.sources.derm_simulator.simulate_derm_study`
============================  =======================================================
"""

from __future__ import annotations

import os
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
from clinaudit.sources.derm_pairs import DERM_COLUMNS, ingest_derm_batch
from clinaudit.sources.derm_simulator import simulate_derm_study
from clinaudit.sources.derm_sites import DEVELOPMENT_CLINICS
from clinaudit.sources.landing import BatchRef, scan_landing, validate_name
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

from . import model as mm_model
from .decisions import decide_handoff
from .evidence import evidence_tableset
from .handoff import TITLE, handoff_document
from .monitoring import monitoring_plan
from .policy import MultimodalPolicy

__all__ = ["DEVELOPMENT_ENV", "DermIngestOptions", "MultimodalTriage"]

#: Comma-separated development clinics the embedded arms train on (default: the simulator's).
DEVELOPMENT_ENV = "CLINAUDIT_MULTIMODAL_TRIAGE_DEVELOPMENT_CLINICS"


@dataclass(frozen=True)
class DermIngestOptions(IngestOptions):
    """Ingest settings of a clinic (run config of ``multimodal_triage/validated``).

    ``workers``: processes decoding photos; ``max_pixels``: decompression-bomb guard;
    ``max_note_missing``: the share of pairs without a note above which the check warns;
    ``min_tone_recorded``: the share of pairs with a Fitzpatrick type below which it warns.
    """

    workers: int = 2
    max_pixels: int = 50_000_000
    max_note_missing: float = 0.6
    min_tone_recorded: float = 0.8


def _policy(policy: Any) -> MultimodalPolicy:
    if not isinstance(policy, MultimodalPolicy):
        raise AuditInputError(
            "policy", type(policy).__name__, "a MultimodalPolicy",
            "configure a multimodal_triage policy (CLINAUDIT_MULTIMODAL_TRIAGE_POLICY)",
        )  # fmt: skip
    return policy


class MultimodalTriage(Study):
    """The image + note skin-lesion hand-off audit (see the module docstring)."""

    name = "multimodal_triage"
    title = TITLE
    unit = "pair"
    partition_by = "clinic"
    targets = ("category",)
    model_kind = mm_model.KIND
    policy_type = MultimodalPolicy
    reference_partitions = DEVELOPMENT_CLINICS
    ingest_options = DermIngestOptions
    ingest_checks = (
        CheckSpec("notes_present", "Share of pairs with a clinical note (warns when low)."),
        CheckSpec(
            "skin_tone_recorded",
            "Share of pairs with a Fitzpatrick type from the first annotator (the skin-tone "
            "audit reads it; warns when low).",
        ),
    )
    sort_by = ("batch", "image_id")
    page_budget = (5, 12)
    identifiers = ("patient_id", "lesion_id")

    @classmethod
    def training_partitions(cls) -> tuple[str, ...]:
        """The development clinics: :data:`DEVELOPMENT_ENV` when set (your own clinic names),
        else the simulator's four. Read when the code location loads."""
        names = tuple(
            c.strip() for c in os.environ.get(DEVELOPMENT_ENV, "").split(",") if c.strip()
        )
        for name in names:
            validate_name("clinic", name)
        return names or cls.reference_partitions

    # ------------------------------------------------------------------ ingest
    def ingest_batch(self, batch: BatchRef, *, key: bytes, options: Any) -> BatchIngest:
        return ingest_derm_batch(
            batch.path, pseudonym_key=key, workers=options.workers, max_pixels=options.max_pixels
        )

    def empty_table(self) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in DERM_COLUMNS})

    def privacy_problems(self, table: pd.DataFrame) -> list[str]:
        """Patients and lesions must be keyed pseudonyms; no text may look like a name."""
        problems = phi_leaks(table.rename(columns={"patient": "patient_pseudonym"}))
        if len(table):
            bad = ~table["lesion"].astype(str).str.fullmatch(r"[0-9a-f]{16}")
            if bad.any():
                problems.append(f"{int(bad.sum())} lesion values are not 16-hex keyed hashes")
        return problems

    def check_partition(self, ingest: PartitionIngest, options: Any) -> list[CheckOutcome]:
        t = ingest.table
        n = len(t)
        present = float(t["note"].astype(str).str.strip().ne("").mean()) if n else 0.0
        tone = float(t["fitzpatrick_a"].notna().mean()) if n else 0.0
        return [
            CheckOutcome(
                "notes_present", 1.0 - present <= options.max_note_missing, "warn",
                {"n_pairs": n, "notes_present": round(present, 4),
                 "max_note_missing": options.max_note_missing},
            ),
            CheckOutcome(
                "skin_tone_recorded", tone >= options.min_tone_recorded, "warn",
                {"n_pairs": n, "tone_recorded": round(tone, 4),
                 "min_tone_recorded": options.min_tone_recorded},
            ),
        ]  # fmt: skip

    def cohort(
        self, validated: Mapping[str, pd.DataFrame], quarantine: Mapping[str, pd.DataFrame]
    ) -> pd.DataFrame:
        """One row per clinic: pairs, patients, quarantined rows, categories, tones, notes."""
        rows = []
        for clinic in sorted(validated):
            t = validated[clinic]
            fz = t["fitzpatrick_a"]
            both = t[["fitzpatrick_a", "fitzpatrick_b"]].dropna()
            row = {
                "clinic": clinic,
                "n_pairs": len(t),
                "n_patients": int(t["patient"].nunique()),
                "n_quarantined": len(quarantine.get(clinic, pd.DataFrame())),
                "malignant_share": float(t["malignant"].mean()) if len(t) else np.nan,
                "fitzpatrick_V_VI_share": float((fz >= 5).mean()) if len(t) else np.nan,
                "note_missing_share": float(t["note"].astype(str).str.strip().eq("").mean())
                if len(t)
                else np.nan,
                "dermoscopic_share": float((t["image_type"] == "dermoscopic").mean())
                if len(t)
                else np.nan,
                "annotator_agreement": float((both.iloc[:, 0] == both.iloc[:, 1]).mean())
                if len(both)
                else np.nan,
            }
            for cat, k in t["category"].value_counts().sort_index().items():
                row[f"n_{cat}"] = int(k)
            rows.append(row)
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ model
    def model_fingerprint(self, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
        return mm_model.model_fingerprint(spec)

    def resolve_model(
        self,
        spec: ModelSpec,
        *,
        reference: pd.DataFrame | None,
        dirs: RunDirs,
        log: Any,
        policy: Any = None,
    ) -> ModelRef:
        return mm_model.resolve_model(
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
        return mm_model.predict_clinic(
            model, table, clinic=partition, spec=spec, dirs=dirs, log=log
        )

    # ------------------------------------------------------------------ audit
    def evaluate(self, data: AuditData, *, policy: Any, options: Any) -> TableSet:
        return evidence_tableset(data, _policy(policy))

    def decide(
        self, evidence: TableSet, mitigations: Mapping[str, TableSet], *, policy: Any
    ) -> TableSet:
        table, criteria = decide_handoff(evidence, _policy(policy))
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
        row = decisions["decisions"].iloc[0]
        return {str(row["clinic"]): str(row["decision"])}

    def decision_criteria(self, decisions: TableSet) -> list[CriterionOutcome]:
        """Every criterion behind the hand-off (a disabled one is not evaluated)."""
        clinic = str(decisions["decisions"].iloc[0]["clinic"])
        return outcomes_of_criteria(decisions["criteria"], clinic)

    def report(self, bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
        return handoff_document(bundle, stamp)

    def describe_stage(self, stage: str, value: Any) -> Mapping[str, Any]:
        if stage == "model":
            return {k: v for k, v in value.facts.items() if k in ("deployed_arm", "reused")}
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
        summary = simulate_derm_study(
            landing, truth_root=truth, scale=scale, seed=seed, workers=workers
        )
        return SimSummary(
            {c.clinic: c.n_pairs for c in summary.clinics}, self.unit, time.perf_counter() - t0
        )
