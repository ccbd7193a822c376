"""Study ``cxr_triage``: normal/abnormal chest X-ray triage in front of the reporting queue.

One dynamic partition per site (``landing/cxr_triage/<site>/<batch>/``): a labelled development
batch (NIH layout with split files), an unlabelled backlog (NIH layout, empty ``Finding
Labels``) and, after the audit, reads batches of backlog studies (:mod:`.reads`). The generic
pipeline calls these methods; the logic lives in this package:

============================  =======================================================
stage                         module
============================  =======================================================
ingest (per site)             :mod:`clinaudit.studies.image_ingest` (unlabelled rows kept),
                              :mod:`.reads` (reads batches, attached to backlog rows)
model, predictions            :mod:`.model` (fine-tuned backbone vs scratch; logits)
evidence                      :mod:`.data`, :mod:`.certify`, :mod:`.throughput`, :mod:`.backlog`,
                              :mod:`.evidence`
decisions, monitoring         :mod:`.decisions`, :mod:`.monitoring`
package (operations memo)     :mod:`.memo` (+ :mod:`.memo_sections`, :mod:`.memo_figures`)
demo data                     :func:`clinaudit.sources.triage_simulator.simulate_triage_site`
============================  =======================================================
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.partitions import usable_partitions
from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.audit.types import AuditInputError
from clinaudit.reporting.audit_summary import CriterionOutcome, outcomes_of_criteria
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.study_package import ReportContent
from clinaudit.sources.landing import BatchRef, scan_landing
from clinaudit.sources.triage_simulator import (
    TRIAGE_SITES,
    pile_reads_truth,
    simulate_triage_site,
)
from clinaudit.studies.base import AuditData, ModelSpec, RunDirs, SimSummary
from clinaudit.studies.image_ingest import ImageIngestOptions, ImageStudy
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest

from . import model as triage_model
from .backlog import audit_order
from .certify import certify_triage
from .data import scored_table
from .decisions import decide_triage
from .evidence import certification_of, evidence_tableset
from .labels import TARGETS
from .memo import TITLE, triage_memo
from .monitoring import monitoring_plan
from .policy import TriagePolicy
from .reads import attach_reads, ingest_reads_batch, is_reads_batch, write_reads_batch
from .throughput import simulate_throughput

__all__ = ["REFERENCE_SITE", "CxrTriage", "TriageIngestOptions", "land_demo_reads"]

#: The site whose development batch trains the embedded model (the simulated triage hospital).
REFERENCE_SITE = next(iter(TRIAGE_SITES))
#: Demo reads landed with the simulated site: shares of the backlog read as the audit sample
#: (the first in the audit order) and as re-reads (the next ones), per scale.
DEMO_READS: dict[str, tuple[float, float]] = {
    "tiny": (0.5, 0.3), "demo": (0.6, 0.3), "full": (0.1, 0.05),
}  # fmt: skip
READS_BATCH = "reads-0001"


@dataclass(frozen=True)
class TriageIngestOptions(ImageIngestOptions):
    """Ingest settings of a triage site: as every image study's, and the backlog lands
    unlabelled (``allow_unlabelled`` on)."""

    allow_unlabelled: bool = True


def _policy(policy: Any) -> TriagePolicy:
    if not isinstance(policy, TriagePolicy):
        raise AuditInputError(
            "policy", type(policy).__name__, "a TriagePolicy",
            "configure a cxr_triage policy (CLINAUDIT_CXR_TRIAGE_POLICY)",
        )  # fmt: skip
    return policy


class CxrTriage(ImageStudy):
    """The chest X-ray triage audit (see the module docstring)."""

    name = "cxr_triage"
    title = TITLE
    landing_dir = "cxr_triage"
    targets = TARGETS
    model_kind = triage_model.KIND
    policy_type = TriagePolicy
    reference_partition = REFERENCE_SITE
    ingest_options = TriageIngestOptions
    page_budget = (4, 8)

    # ------------------------------------------------------------------ ingest
    def ingest_batch(self, batch: BatchRef, *, key: bytes, options: Any) -> BatchIngest:
        """An image batch (development or backlog), or a reads batch (:mod:`.reads`)."""
        if is_reads_batch(batch):
            return ingest_reads_batch(batch)
        return super().ingest_batch(batch, key=key, options=options)

    def finish_partition(self, ingest: PartitionIngest) -> PartitionIngest:
        """Landed reads onto the backlog rows they read (:func:`.reads.attach_reads`)."""
        return attach_reads(ingest)

    # ------------------------------------------------------------------ model
    def model_fingerprint(self, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
        return triage_model.model_fingerprint(spec)

    def resolve_model(
        self,
        spec: ModelSpec,
        *,
        reference: pd.DataFrame | None,
        dirs: RunDirs,
        log: Any,
        policy: Any = None,
    ) -> ModelRef:
        return triage_model.resolve_model(
            spec,
            reference=reference,
            dirs=dirs,
            log=log,
            reference_site=REFERENCE_SITE,
            policy=_policy(policy),
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
        return triage_model.predict_site(
            model, table, site=partition, spec=spec, dirs=dirs, log=log
        )

    # ------------------------------------------------------------------ audit
    def evaluate(self, data: AuditData, *, policy: Any, options: Any) -> TableSet:
        policy = _policy(policy)
        sites, left_out = usable_partitions(
            data.validated,
            data.predictions,
            id_column="image_id",
            identity=data.model.partition_identity,
        )
        if not sites:
            raise AuditInputError(
                "sites", f"none usable ({left_out})", "a site with current predictions",
                "materialize cxr_triage/predictions for the landed sites",
            )  # fmt: skip
        logits = {s: data.predictions[s][["image_id", *triage_model.LOGITS]] for s in sites}
        scored = scored_table({s: data.validated[s] for s in sites}, logits, policy)
        seed = 0
        cert = certify_triage(scored, policy, seed=seed)
        pile = cert.rows[cert.rows["split"] == "pile"]
        if not len(pile):
            raise AuditInputError(
                "pile", "no unlabelled backlog study", "a landed backlog batch (empty Finding "
                "Labels)", "land the pile (docs/formats.md, unlabelled rows)",
            )  # fmt: skip
        throughput = simulate_throughput(pile, policy, seed=seed)
        return evidence_tableset(
            cert,
            throughput,
            simulated=data.simulated,
            left_out=left_out,
            settings={"seed": seed, "sites": sites, "model_facts": dict(data.model.facts)},
            policy=policy,
        )

    def decide(
        self, evidence: TableSet, mitigations: Mapping[str, TableSet], *, policy: Any
    ) -> TableSet:
        table, criteria = decide_triage(
            certification_of(evidence),
            _policy(policy),
            backlog=evidence["backlog_audit"],
            monitor=evidence["reread_monitor"],
        )
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
        policy = _policy(policy)
        thr = evidence["throughput"]
        share = thr[
            (thr["policy"] == "priority_autoclear") & (thr["metric"] == "auto_cleared_share")
        ]["estimate"].iloc[0]
        cleared_per_day = float(share) * policy.workload.daily_inflow
        mode = str(decisions["decisions"]["mode"].iloc[0])
        plan = monitoring_plan(
            certification_of(evidence), policy, cleared_per_day=cleared_per_day, mode=mode
        )
        return TableSet({"plan": plan})

    def decision_summary(self, decisions: TableSet) -> dict[str, str]:
        row = decisions["decisions"].iloc[0]
        return {str(row["scope"]): f"{row['decision']} ({row['mode']})"}

    def decision_criteria(self, decisions: TableSet) -> list[CriterionOutcome]:
        """The rule's safety and benefit criteria (a disabled one is not evaluated)."""
        scope = str(decisions["decisions"].iloc[0]["scope"])
        return outcomes_of_criteria(decisions["criteria"], scope)

    def report(self, bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
        return triage_memo(bundle, stamp)

    def describe_stage(self, stage: str, value: Any) -> Mapping[str, Any]:
        if stage == "model":
            return {k: v for k, v in value.facts.items() if k != "transfer_vs_scratch"}
        if stage == "evidence":
            c = value["certificate"].iloc[0]
            return {
                "auto_clear_below": None if pd.isna(c["threshold"]) else float(c["threshold"]),
                "n_abnormal_calibration": int(c["n_abnormal"]),
                "verdict": value["verdict"].to_markdown(index=False),
            }
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
        summary = simulate_triage_site(
            landing, truth_root=truth, site=REFERENCE_SITE, scale=scale, seed=seed, workers=workers
        )
        land_demo_reads(landing, truth, scale=scale)
        return SimSummary({REFERENCE_SITE: summary.n_images}, self.unit, time.perf_counter() - t0)


def land_demo_reads(landing: Path, truth: Path, *, scale: str) -> Path:
    """Land the simulated reads of the demo backlog (batch ``reads-0001``): the first
    :data:`DEMO_READS` share of the backlog in the audit order as ``audit_sample`` reads (100 a
    day from 2024-02-01) and the next share as ``reread`` (50 a day; the monitor keeps those the
    current rule clears). The reads are the simulated reader's written labels, not the truth."""
    reads = pile_reads_truth(truth, site=REFERENCE_SITE)
    order = np.argsort(audit_order([REFERENCE_SITE] * len(reads), reads["image_id"]))
    audit_share, reread_share = DEMO_READS.get(scale, DEMO_READS["demo"])
    n_audit = int(round(audit_share * len(reads)))
    n_reread = int(round(reread_share * len(reads)))
    start = dt.date(2024, 2, 1)
    picks = []
    for reason, rows, per_day in (
        ("audit_sample", order[:n_audit], 100),
        ("reread", order[n_audit : n_audit + n_reread], 50),
    ):
        part = reads.iloc[rows].assign(
            reason=reason,
            read_date=[str(start + dt.timedelta(days=k // per_day)) for k in range(len(rows))],
        )
        picks.append(part)
    return write_reads_batch(
        landing,
        site=REFERENCE_SITE,
        batch=READS_BATCH,
        reads=pd.concat(picks, ignore_index=True),
        simulated=True,
        created_utc="2024-02-01T00:00:00Z",
    )
