"""Study ``sepsis_ews``: subgroup audit of a sepsis early-warning score across a hospital network.

One dynamic partition per hospital (``landing/sepsis_ews/<hospital>/<batch>/``). The generic
pipeline (:mod:`clinaudit.studies.base`) calls these methods; the logic lives in the modules of
this package:

============================  =======================================================
stage                         module
============================  =======================================================
ingest (per hospital)         :mod:`.ingest` (+ :mod:`.schema`)
model, predictions            :mod:`.model` (+ :mod:`.scores`)
evidence                      :mod:`.evaluate` (+ :mod:`.tables`, :mod:`.drift`,
                              :mod:`.unlabelled_months`)
mitigation_largest_gap        :mod:`.stages` (+ :mod:`.decisions`)
decisions, monitoring         :mod:`.stages` (+ :mod:`.decisions`, :mod:`.monitoring`)
package                       :mod:`.report` (+ ``report_*``, :mod:`.figures`)
demo data                     :mod:`.simulate`
============================  =======================================================
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.audit.types import AuditInputError
from clinaudit.reporting.audit_summary import CriterionOutcome
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.study_package import ReportContent
from clinaudit.sources.landing import BatchRef, sha256_file
from clinaudit.studies.base import (
    AuditData,
    CheckOutcome,
    CheckSpec,
    Log,
    MitigationStage,
    ModelSpec,
    RunDirs,
    SimSummary,
    Study,
)
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest
from clinaudit.validation.privacy import PHI_COLUMNS

from . import model as sepsis_model
from .evaluate import (
    SepsisEvaluateOptions,
    audit_settings,
    audited_stays,
    evidence,
)
from .ingest import (
    INGESTED_COLUMNS,
    empty_stays,
    finish_hospital,
    hospital_summary,
    ingest_stays_batch,
    n_rows_quarantined,
    quarantined_stays,
)
from .outcomes import attach_outcomes, ingest_outcomes_batch, is_outcomes_batch
from .policy import SepsisPolicy
from .report import TITLE, sepsis_report
from .scores import count_set_aside, unmatched_score_ids
from .simulate import land_demo_outcomes, land_simulated_network
from .stage_meta import describe
from .stages import decision_tables, mitigation_tables, monitoring_tables
from .tables import TARGET

__all__ = ["SepsisEws"]


def _policy(policy: Any) -> SepsisPolicy:
    if not isinstance(policy, SepsisPolicy):
        raise AuditInputError(
            "policy", type(policy).__name__, "a SepsisPolicy",
            "configure a sepsis_ews policy (CLINAUDIT_SEPSIS_EWS_POLICY)",
        )  # fmt: skip
    return policy


def _mitigate_largest_gap(
    evidence: TableSet,
    data: AuditData,
    *,
    policy: Any,
    options: Any,
    dirs: RunDirs,
    log: Log,
    run_id: str,
) -> TableSet:
    """The mitigation stage: the policy's method on the largest gap, cross-fitted."""
    result = mitigation_tables(evidence, audited_stays(data).frame, _policy(policy))
    log(f"mitigation {result.facts['status']}: {result.facts['reason']}")
    return result


class SepsisEws(Study):
    """The sepsis early-warning score audit (see the module docstring)."""

    name = "sepsis_ews"
    title = TITLE
    unit = "stay"
    partition_by = "hospital"
    landing_dir = "sepsis_ews"
    targets = (TARGET,)
    model_kind = sepsis_model.KIND
    policy_type = SepsisPolicy
    ingest_checks = (
        CheckSpec(
            "hospital_matches_landing",
            "Every stay's hospital column names the hospital it was landed under (rows of another "
            "hospital are quarantined).",
        ),
        CheckSpec(
            "stays_landed_once",
            "No stay id was landed in several batches of the hospital (every copy is "
            "quarantined until the sender fixes it).",
        ),
    )
    mitigations = (
        MitigationStage(
            "largest_gap",
            _mitigate_largest_gap,
            "The policy's mitigation of the largest TPR/FPR gap (group thresholds by default, "
            "alternatives beside it), cross-fitted over stay-disjoint folds, with its effect on "
            "every attribute's gaps and the per-stay alerts before and after.",
        ),
    )
    evaluate_options = SepsisEvaluateOptions
    sort_by = ("batch", "source_row")
    page_budget = (7, 9)
    identifiers = ("stay_id",)
    policy_attachment = "audit_policy"
    predict_reads_quarantine = True

    # ------------------------------------------------------------------ ingest
    def ingest_batch(self, batch: BatchRef, *, key: bytes, options: Any) -> BatchIngest:
        """One landed batch: a stays batch, or an outcomes batch (late ``sepsis`` labels,
        :mod:`.outcomes`). Stays carry no patient id: ``key`` is not needed."""
        if is_outcomes_batch(batch):
            return ingest_outcomes_batch(batch)
        return ingest_stays_batch(batch)

    def empty_table(self) -> pd.DataFrame:
        return empty_stays()

    def finish_partition(self, ingest: PartitionIngest) -> PartitionIngest:
        """Stay ids landed in several batches quarantined, then the landed outcomes filled into
        the ``sepsis`` of the stays that landed unlabelled (:func:`.outcomes.attach_outcomes`)."""
        return attach_outcomes(finish_hospital(ingest))

    def privacy_problems(self, table: pd.DataFrame) -> list[str]:
        """PHI columns, or columns outside the stays format (the stays have no patient id)."""
        problems = [
            f"column {c!r} is PHI and must not leave ingest" for c in table.columns
            if c in PHI_COLUMNS
        ]  # fmt: skip
        extra = [c for c in table.columns if c not in INGESTED_COLUMNS]
        if extra:
            problems.append(
                f"columns {extra} are not in the stays format; a validated stays table holds "
                f"only {list(INGESTED_COLUMNS)} (docs/sepsis_formats.md)"
            )
        return problems

    def check_partition(self, ingest: PartitionIngest, options: Any) -> Sequence[CheckOutcome]:
        q = ingest.quarantine
        outcomes = []
        for name, check in (
            ("hospital_matches_landing", "site_mismatch"),
            ("stays_landed_once", "duplicate_stay_id"),
        ):
            hits = q[q["check"] == check] if len(q) else q
            outcomes.append(
                CheckOutcome(
                    name,
                    hits.empty,
                    severity="warn",
                    metadata={"n_records": len(hits), "batches": sorted(set(hits["batch"]))},
                )
            )
        return outcomes

    def cohort(
        self, validated: Mapping[str, pd.DataFrame], quarantine: Mapping[str, pd.DataFrame]
    ) -> pd.DataFrame:
        return hospital_summary(validated, quarantine)

    # ------------------------------------------------------------------ model
    def model_fingerprint(self, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
        return sepsis_model.model_fingerprint(spec)

    def resolve_model(
        self,
        spec: ModelSpec,
        *,
        reference: pd.DataFrame | None,
        dirs: RunDirs,
        log: Log,
        policy: Any = None,
    ) -> ModelRef:
        if spec.thresholds:
            raise AuditInputError(
                "thresholds",
                str(spec.thresholds),
                "no thresholds file: sepsis_ews has one output, with one operating threshold",
                "pass --threshold VALUE (or CLINAUDIT_SEPSIS_EWS_THRESHOLD), not --thresholds",
            )
        return sepsis_model.resolve_model(spec, dirs=dirs, log=log)

    def predict(
        self,
        model: ModelRef,
        table: pd.DataFrame,
        *,
        partition: str,
        spec: ModelSpec,
        dirs: RunDirs,
        log: Log,
        quarantine: pd.DataFrame | None = None,
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Scores of the hospital's validated stays; those of stays quarantined at ingest are
        set aside (``quarantine``: its ingest records)."""
        return sepsis_model.predict_hospital(
            model, table, hospital=partition, log=log, quarantine=quarantine
        )

    # ------------------------------------------------------------------ audit
    def evaluate(self, data: AuditData, *, policy: Any, options: Any) -> TableSet:
        """The evidence of every usable hospital (others left out with the reason)."""
        model = data.model
        audited = audited_stays(data)
        settings = audit_settings(
            _policy(policy),
            threshold=model.thresholds[TARGET],
            threshold_source=model.threshold_source,
            options=options,
        )
        return evidence(
            audited,
            card=dict(model.card) or None,
            settings=settings,
            unmatched_scores=_unmatched_scores(data),
            intake=_intake(data),
            reports=data.reports,
            study=self.name,
        )

    def decide(
        self, evidence: TableSet, mitigations: Mapping[str, TableSet], *, policy: Any
    ) -> TableSet:
        return decision_tables(evidence, mitigations["largest_gap"], _policy(policy))

    def monitor(
        self,
        evidence: TableSet,
        mitigations: Mapping[str, TableSet],
        decisions: TableSet,
        data: AuditData,
        *,
        policy: Any,
    ) -> TableSet:
        frame = audited_stays(data).frame
        return monitoring_tables(
            evidence, mitigations["largest_gap"], decisions, frame, _policy(policy)
        )

    def report(self, bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
        return sepsis_report(bundle, stamp)

    def decision_summary(self, decisions: TableSet) -> dict[str, str]:
        """One recommendation for the network."""
        return {"network": str(decisions.fact("recommendation"))}

    def decision_criteria(self, decisions: TableSet) -> list[CriterionOutcome]:
        """The network's criteria (per attribute), at the vendor threshold and with the
        mitigation of the largest gap."""
        return [
            CriterionOutcome(
                where="network",
                criterion=f"{r.criterion} {r.statistic} [{r.attribute}]",
                value=r.value,
                limit=r.limit,
                comparator=r.comparator,
                passed=r.passed,
                value_after=r.value_after,
                passed_after=r.passed_after,
                detail=r.evidence,
            )
            for r in decisions["criteria"].itertuples()
        ]

    def decision_lines(self, decisions: TableSet) -> list[tuple[str, str]]:
        """The recommendation, then its reasons and conditions, one line each."""
        row = decisions["decision"].iloc[0]
        lines = [("network", str(row["recommendation"]))]
        lines += [("  why", str(r)) for r in json.loads(row["reasons"])]
        lines += [("  condition", str(c)) for c in json.loads(row["conditions"])]
        return lines

    def describe_stage(self, stage: str, value: Any) -> Mapping[str, Any]:
        return describe(stage, value)

    # ------------------------------------------------------------------ demo data
    def simulate(
        self,
        landing: Path,
        truth: Path,
        *,
        scale: str,
        seed: int,
        workers: int = 1,
        months: tuple[int, ...] | None = None,
    ) -> SimSummary:
        """Land the simulated network (see :mod:`.simulate`; ``workers`` is not needed: one
        process draws the stays in seconds). ``months`` adds admission months later."""
        t0 = time.perf_counter()
        _, landed = land_simulated_network(landing, truth, scale=scale, seed=seed, months=months)
        return SimSummary(dict(landed), self.unit, time.perf_counter() - t0)

    def land_demo_followup(self, landing: Path, truth: Path, *, scale: str) -> SimSummary:
        """The coded outcomes of the month that landed unlabelled (:func:`.simulate.
        land_demo_outcomes`): the next audit scores the estimates the first package froze."""
        t0 = time.perf_counter()
        landed = land_demo_outcomes(landing, truth)
        what = f"coded outcomes of {', '.join(landed)}" if landed else ""
        return SimSummary(landed, "outcome", time.perf_counter() - t0, what)


def _scores_file(model: ModelRef, key: str) -> Path:
    """The scores file the model stage recorded under ``key`` (``"*"``: the network's)."""
    path = Path(model.source) if key == "*" else Path(model.source) / f"{key}.csv"
    if sha256_file(path) != model.scores_files[key]:
        raise AuditInputError(
            "scores", f"{path} changed since the model stage",
            f"the file with sha256 {model.scores_files[key]}",
            "re-materialize sepsis_ews/model and the predictions",
        )  # fmt: skip
    return path


def _quarantined(data: AuditData) -> dict[str, frozenset[str]]:
    return {h: quarantined_stays(q) for h, q in sorted(data.quarantine.items())}


def _unmatched_scores(data: AuditData) -> pd.DataFrame | None:
    """Rows of a network-wide scores file that belong to no validated or quarantined stay of
    any hospital."""
    model = data.model
    if model.mode != "scores" or "*" not in model.scores_files:
        return None
    known = {str(s) for t in data.validated.values() for s in t["stay_id"]}
    aside = set().union(*_quarantined(data).values())
    return unmatched_score_ids(_scores_file(model, "*"), known, set_aside=aside)


def _intake(data: AuditData) -> dict[str, Any]:
    """Per hospital the rows quarantined at ingest and the vendor scores set aside as theirs."""
    quarantined = _quarantined(data)
    rows = {h: n_rows_quarantined(q) for h, q in sorted(data.quarantine.items())}
    aside: dict[str, int] = {}
    model = data.model
    if model.mode == "scores":
        for h, ids in quarantined.items():
            key = h if h in model.scores_files else "*" if "*" in model.scores_files else None
            if ids and key is not None:
                aside[h] = count_set_aside(_scores_file(model, key), ids)
    return {
        "rows_quarantined": {h: n for h, n in rows.items() if n},
        "scores_set_aside": {h: n for h, n in aside.items() if n},
    }
