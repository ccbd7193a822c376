"""Run the project's assets in-process on a persistent Dagster instance.

``make demo`` and the ``clinaudit`` command use this, so everything they materialize shows up in the
Dagster UI (``make ui``) afterwards, with the same lineage and metadata as a run started there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from clinaudit.assets import (
    multisite_cxr,
    multisite_cxr_audit,
    multisite_cxr_mitigation,
    multisite_cxr_model,
    multisite_cxr_report,
    sepsis_ews,
)
from clinaudit.assets.multisite_cxr_model import AuditedModel
from clinaudit.orchestration.automation import observe_sources
from clinaudit.orchestration.definitions import ALL_ASSETS, build_resources
from clinaudit.orchestration.resources import ClinauditHome
from clinaudit.sources.landing import scan_landing

DAGSTER_YAML = """\
# Dagster instance for clinaudit, written once by `clinaudit init-home` (edit freely).
# Embedded default: SQLite storage under this directory, runs launched in-process by the daemon.
# For Postgres storage and other executors, see docs/operations.md in the clinaudit repository.
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 2
"""


def init_home(home: ClinauditHome) -> Path:
    """Create the run-time tree and ``dagster_home/dagster.yaml`` (kept if present).

    Returns the Dagster home directory.
    """
    for path in (home.landing, home.artifacts, home.quarantine, home.reports):
        path.mkdir(parents=True, exist_ok=True)
    home.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home.root_dir / "dagster_home")
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML, encoding="utf-8")
    return dagster_home.resolve()


def get_instance(home: ClinauditHome) -> dg.DagsterInstance:
    """The persistent instance under ``$DAGSTER_HOME`` (set to ``<home>/dagster_home`` if unset)."""
    dagster_home = init_home(home)
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dg.DagsterInstance.get()


@dataclass(frozen=True)
class StepRun:
    """Outcome of one run of one stage (for one site partition, or cross-site when ``site`` is
    ``None``)."""

    stage: str
    site: str | None
    run_id: str | None
    success: bool
    failed_checks: tuple[str, ...] = ()
    skipped_because: str | None = None

    @property
    def blocking_failure(self) -> bool:
        """The run failed, or a blocking (ERROR) check failed: later stages must not use it.

        A skipped stage is not itself a failure: its cause is the upstream run that failed (and
        counted), or an input that this audit does not have (e.g. no reference site selected).
        """
        if self.skipped_because is not None:
            return False
        return not self.success or any(c.endswith("(ERROR)") for c in self.failed_checks)


def register_sites(instance: dg.DagsterInstance, home: ClinauditHome) -> list[str]:
    """Add a ``cxr_sites`` partition for every landed site that has a ready batch."""
    scan = scan_landing(home.landing, multisite_cxr.STUDY_DIR)
    for err in scan.refused:
        print(f"refused landing directory: {err}")
    sites = sorted({b.site for b in scan.batches if b.ready})
    known = set(instance.get_dynamic_partitions(multisite_cxr.cxr_sites.name))
    new = [s for s in sites if s not in known]
    if new:
        instance.add_dynamic_partitions(multisite_cxr.cxr_sites.name, new)
    return sites


def _failed_checks(result: dg.ExecuteInProcessResult) -> tuple[str, ...]:
    failed = []
    for event in result.get_asset_check_evaluations():
        if not event.passed:
            failed.append(f"{event.check_name} ({event.severity.value})")
    return tuple(sorted(failed))


class PipelineRunner:
    """Materializes the study's stages in dependency order on one instance.

    Each site partition is its own run, so one bad site never stops the others; a site whose
    ingest failed a blocking check gets no predictions (the same rule Dagster applies inside a
    run, enforced here across runs).
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        home: ClinauditHome,
        audited_model: AuditedModel | None = None,
        *,
        sepsis_model: sepsis_ews.SepsisModel | None = None,
        sepsis_policy_path: str | None = None,
        workers: int = 2,
        console_level: str = "INFO",
        policy_path: str | None = None,
    ) -> None:
        self.console_level = console_level
        self.instance = instance
        self.resources = build_resources(home, audited_model, sepsis_model)
        if sepsis_policy_path:
            self.resources["sepsis_policy"] = sepsis_ews.SepsisPolicyFile(path=sepsis_policy_path)
        if policy_path:
            self.resources["policy"] = multisite_cxr_mitigation.DecisionPolicy(path=policy_path)
        self.workers = workers

    def _run(
        self, stage: str, asset: object, site: str | None, run_config: dict | None = None
    ) -> StepRun:
        # The console shows INFO and above; the run's full event log (DEBUG included) stays in
        # the instance and in the UI.
        config = {"loggers": {"console": {"config": {"log_level": self.console_level}}}}
        result = dg.materialize(
            ALL_ASSETS,
            selection=[asset],
            partition_key=site,
            instance=self.instance,
            resources=self.resources,
            raise_on_error=False,
            tags={"clinaudit/stage": stage, **({"clinaudit/site": site} if site else {})},
            run_config={**config, **(run_config or {})},
        )
        return StepRun(stage, site, result.run_id, result.success, _failed_checks(result))

    def ingest(self, sites: Sequence[str]) -> list[StepRun]:
        """``cxr_ingest`` per site, then the cross-site cohort summary."""
        config = {"ops": {"cxr_ingest": {"config": {"workers": self.workers}}}}
        runs = [self._run("ingest", multisite_cxr.cxr_ingest, s, run_config=config) for s in sites]
        if any(r.success for r in runs):
            runs.append(self._run("cohort_summary", multisite_cxr.cxr_cohort_summary, None))
        return runs

    def model(self) -> StepRun:
        """The audited model (trained, loaded and verified, or vendor scores)."""
        return self._run("vendor_model", multisite_cxr_model.vendor_model, None)

    def predictions(self, sites: Sequence[str], ingest: Sequence[StepRun]) -> list[StepRun]:
        """``cxr_predictions`` for every site whose ingest passed its blocking checks."""
        by_site = {r.site: r for r in ingest}
        out = []
        for site in sites:
            prior = by_site.get(site)
            if prior is not None and prior.blocking_failure:
                why = "ingest failed" if not prior.success else ", ".join(prior.failed_checks)
                out.append(StepRun("predictions", site, None, False, (), f"blocked: {why}"))
                continue
            out.append(self._run("predictions", multisite_cxr_model.cxr_predictions, site))
        return out

    def audit(self, predicted: Sequence[str]) -> list[StepRun]:
        """Per-site metrics, then the cross-site statistics and drift (need the reference)."""
        runs = [
            self._run("site_metrics", multisite_cxr_audit.cxr_site_metrics, s) for s in predicted
        ]
        if multisite_cxr_audit.REFERENCE_SITE in predicted:
            runs.append(self._run("audit_metrics", multisite_cxr_audit.cxr_audit_metrics, None))
            runs.append(self._run("drift", multisite_cxr_audit.cxr_drift, None))
        else:
            reason = f"blocked: reference site {multisite_cxr_audit.REFERENCE_SITE} not scored"
            runs += [
                StepRun(stage, None, None, False, (), reason)
                for stage in ("audit_metrics", "drift")
            ]
        return runs

    def decide(self, audit: Sequence[StepRun]) -> list[StepRun]:
        """Mitigations (recalibration, focused re-training), then the decisions under policy."""
        done = {r.stage for r in audit if r.success and r.site is None}
        if not {"audit_metrics", "drift"} <= done:
            reason = "blocked: cross-site audit metrics or drift did not run"
            return [
                StepRun(stage, None, None, False, (), reason)
                for stage in ("recalibration", "retraining", "decisions")
            ]
        m = multisite_cxr_mitigation
        runs = [
            self._run("recalibration", m.cxr_recalibration, None),
            self._run("retraining", m.cxr_retraining, None),
        ]
        if all(r.success for r in runs):
            runs.append(self._run("decisions", m.cxr_decisions, None))
        else:
            runs.append(StepRun("decisions", None, None, False, (), "blocked: a mitigation failed"))
        if runs[-1].success:
            runs.append(self._run("audit_package", multisite_cxr_report.cxr_audit_package, None))
        else:
            runs.append(StepRun("audit_package", None, None, False, (), "blocked: no decisions"))
        return runs

    def sepsis(self) -> list[StepRun]:
        """Study ``sepsis_ews``: ingest -> vendor model -> predictions -> audit -> package."""
        stages = [
            ("sepsis_ingest", sepsis_ews.sepsis_ingest),
            ("sepsis_model", sepsis_ews.sepsis_vendor_model),
            ("sepsis_predictions", sepsis_ews.sepsis_predictions),
            ("sepsis_audit", sepsis_ews.sepsis_audit),
            ("sepsis_package", sepsis_ews.sepsis_audit_package),
        ]
        runs: list[StepRun] = []
        for stage, asset in stages:
            if runs and (not runs[-1].success or runs[-1].blocking_failure):
                runs.append(StepRun(stage, None, None, False, (), f"blocked: {runs[-1].stage}"))
                continue
            runs.append(self._run(stage, asset, None))
        return runs

    def run_all(self, sites: Sequence[str]) -> list[StepRun]:
        """Every stage, in dependency order."""
        runs = self.ingest(sites)
        model = self.model()
        runs.append(model)
        if model.success:
            predictions = self.predictions(sites, runs)
            runs += predictions
            audit = self.audit([r.site for r in predictions if r.success and r.site])
            runs += audit
            runs += self.decide(audit)
        # Record the model and policy versions this audit used, so the automation (make ui)
        # does not mistake its first observation of them for a change and re-audit once more.
        observe_sources(dg.Definitions(assets=ALL_ASSETS, resources=self.resources), self.instance)
        return runs
