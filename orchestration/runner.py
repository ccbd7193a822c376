"""Run a study's assets in-process on a persistent Dagster instance, stage by stage.

``make demo`` and the ``clinaudit`` command use this, so everything they materialize shows up in
the Dagster UI (``make ui``) afterwards, with the same lineage and metadata as a run started there.
One runner serves every study: the stages are the factory's (``assets/factory.py``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from clinaudit.assets.factory import partitions_name
from clinaudit.assets.resources import ClinauditHome, StudyModel, StudyPolicy, study_resources
from clinaudit.assets.stage_config import INFERENCE_POOL, SIGNING_POOL
from clinaudit.orchestration.automation import observe_sources
from clinaudit.orchestration.definitions import study_assets
from clinaudit.sources.landing import scan_landing
from clinaudit.studies import Study

DAGSTER_YAML = """\
# Dagster instance for clinaudit, written once by `clinaudit init-home` (edit freely).
# Embedded default: SQLite storage under this directory, runs launched in-process by the daemon.
# For Postgres storage and other executors, see docs/operations.md in the clinaudit repository.
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 2
"""


#: The ``scale`` profile (docs/operations.md): storage on PostgreSQL, a run queue with pools,
#: whole runs on Celery workers over Redis, run monitoring with one retry. Every address and
#: secret comes from the environment that ``clinaudit services up`` writes (``env.sh``).
SCALE_DAGSTER_YAML = """\
# Dagster instance for clinaudit, `scale` profile, written once by
# `clinaudit init-home --profile scale` (edit freely; docs/operations.md).
# Needs the environment of `source <home>/services/env.sh` (or your own services').
telemetry:
  enabled: false
storage:
  postgres:
    postgres_db:
      hostname: { env: CLINAUDIT_PG_HOST }
      port: { env: CLINAUDIT_PG_PORT }
      username: { env: CLINAUDIT_PG_USER }
      password: { env: CLINAUDIT_PG_PASSWORD }
      db_name: { env: CLINAUDIT_PG_DB }
      # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the scale extra installs psycopg2.
      scheme: postgresql+psycopg2
run_launcher:
  # dagster-celery's launcher with its resume of a run fixed (celery_launcher.py).
  module: clinaudit.orchestration.celery_launcher
  class: CeleryRunLauncher
  config:
    broker: { env: CLINAUDIT_REDIS_URL }
    backend: { env: CLINAUDIT_REDIS_URL }
concurrency:
  runs:
    # Launched runs wait in Redis for a free worker slot, and run monitoring fails a run that
    # waits longer than start_timeout_seconds: keep this at most the workers' total slots.
    max_concurrent_runs: 4
  pools:
    # A pool without its own limit runs one step at a time; `clinaudit init-home --profile
    # scale` sets signing 1 and inference 2 (`dagster instance concurrency set <pool> <n>`).
    default_limit: 1
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  poll_interval_seconds: 10
  # A run whose worker is lost (its Celery task failed) is resumed once on another worker by
  # run monitoring itself; run retries (below) would re-launch it too, but the daemon that
  # retries can read the failure event before the run's status changes and then never retries.
  max_resume_run_attempts: 1
  # A run lost with its worker never releases its pool slots itself.
  free_slots_after_run_end_seconds: 30
run_retries:
  enabled: true
  max_retries: 1
"""

PROFILES = {"local": DAGSTER_YAML, "scale": SCALE_DAGSTER_YAML}
#: Pool limits the ``scale`` profile sets on its instance (``default_limit`` covers the rest).
POOL_LIMITS = {SIGNING_POOL: 1, INFERENCE_POOL: 2}


def apply_pool_limits(
    instance: dg.DagsterInstance, limits: Mapping[str, int] = POOL_LIMITS
) -> dict[str, int]:
    """Set each pool's limit on ``instance`` (stored in its database; needs Postgres or SQLite
    storage that supports concurrency limits). Returns the limits set."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        raise ValueError(
            f"{type(storage).__name__} does not support pool limits; use the scale profile's "
            "PostgreSQL storage (docs/operations.md)"
        )
    for pool, limit in limits.items():
        storage.set_concurrency_slots(pool, limit)
    return dict(limits)


def init_home(home: ClinauditHome, profile: str = "local") -> Path:
    """Create the run-time tree and ``dagster_home/dagster.yaml`` of ``profile`` (``local`` or
    ``scale``; a file already present is kept).

    Returns the Dagster home directory.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is not one of {sorted(PROFILES)}")
    for path in (home.landing, home.artifacts, home.quarantine, home.reports):
        path.mkdir(parents=True, exist_ok=True)
    home.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home.root_dir / "dagster_home")
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(PROFILES[profile], encoding="utf-8")
    return dagster_home.resolve()


def get_instance(home: ClinauditHome) -> dg.DagsterInstance:
    """The persistent instance under ``$DAGSTER_HOME`` (set to ``<home>/dagster_home`` if unset)."""
    dagster_home = init_home(home)
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dg.DagsterInstance.get()


@dataclass(frozen=True)
class StepRun:
    """Outcome of one run of one stage (for one partition, or across partitions when
    ``partition`` is ``None``)."""

    stage: str
    partition: str | None
    run_id: str | None
    success: bool
    failed_checks: tuple[str, ...] = ()
    skipped_because: str | None = None
    error: str | None = None
    #: Why each failed blocking check failed (its ``reason`` metadata), e.g. the refused file.
    block_reasons: tuple[str, ...] = ()

    @property
    def blocked_by_check(self) -> bool:
        """The run stopped because a blocking (ERROR) check failed, not because of an error."""
        checked = any(c.endswith("(ERROR)") for c in self.failed_checks)
        return checked and (self.error is None or "DagsterAssetCheckFailedError" in self.error)

    @property
    def blocking_failure(self) -> bool:
        """The run failed, or a blocking (ERROR) check failed: later stages must not use it.

        A skipped stage is not itself a failure: its cause is the upstream run that failed (and
        counted), or an input that this audit does not have (e.g. no reference partition).
        """
        if self.skipped_because is not None:
            return False
        return not self.success or any(c.endswith("(ERROR)") for c in self.failed_checks)


def register_partitions(
    instance: dg.DagsterInstance, home: ClinauditHome, study: Study
) -> list[str]:
    """Add a partition for every landed site / hospital of ``study`` with a ready batch."""
    scan = scan_landing(home.landing, study.landing_dir)
    for err in scan.refused:
        print(f"refused landing directory: {err}")
    parts = sorted({b.site for b in scan.batches if b.ready})
    name = partitions_name(study)
    new = [s for s in parts if s not in set(instance.get_dynamic_partitions(name))]
    if new:
        instance.add_dynamic_partitions(name, new)
    return parts


def _failed_checks(result: dg.ExecuteInProcessResult) -> tuple[str, ...]:
    failed = [
        f"{e.check_name} ({e.severity.value})"
        for e in result.get_asset_check_evaluations()
        if not e.passed
    ]
    return tuple(sorted(failed))


def _block_reasons(result: dg.ExecuteInProcessResult) -> tuple[str, ...]:
    """``"<check>: <reason>"`` of every failed ERROR check that states a ``reason``."""
    out = []
    for e in result.get_asset_check_evaluations():
        reason = e.metadata.get("reason")
        if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR and reason is not None:
            out.append(f"{e.check_name}: {reason.value}")
    return tuple(sorted(out))


def _first_error(result: dg.ExecuteInProcessResult) -> str | None:
    """The message of the run's first failed step (what the user must fix), if any."""
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        if error is not None:
            cause = error.cause if error.cls_name == "DagsterExecutionStepExecutionError" else None
            return (cause or error).message.strip()
    return None


class PipelineRunner:
    """Materializes one study's stages in dependency order on one instance.

    Each partition is its own run, so one bad site or hospital never stops the others; a
    partition whose ingest failed a blocking check gets no predictions (the rule Dagster applies
    inside a run, enforced here across runs).
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        home: ClinauditHome,
        study: Study,
        *,
        model: StudyModel | None = None,
        policy_path: str | None = None,
        workers: int = 2,
        console_level: str = "INFO",
    ) -> None:
        self.instance, self.study, self.workers = instance, study, workers
        self.console_level = console_level
        self.assets = study_assets(study)
        self.resources = study_resources(
            home,
            models={study.name: model} if model else None,
            policies={study.name: StudyPolicy(study=study.name, path=policy_path)}
            if policy_path
            else None,
            studies=[study.name],
        )
        self.by_stage = {key.path[-1]: asset for asset in self.assets for key in asset.keys}

    def _run(self, stage: str, partition: str | None, run_config: dict | None = None) -> StepRun:
        # The console shows INFO and above; the full event log (DEBUG) stays in the instance.
        config = {"loggers": {"console": {"config": {"log_level": self.console_level}}}}
        result = dg.materialize(
            self.assets,
            selection=[self.by_stage[stage]],
            partition_key=partition,
            instance=self.instance,
            resources=self.resources,
            raise_on_error=False,
            tags={
                "clinaudit/study": self.study.name,
                "clinaudit/stage": stage,
                **({"clinaudit/partition": partition} if partition else {}),
            },
            run_config={**config, **(run_config or {})},
        )
        return StepRun(
            stage,
            partition,
            result.run_id,
            result.success,
            _failed_checks(result),
            error=_first_error(result),
            block_reasons=_block_reasons(result),
        )

    def _skip(self, stages: Sequence[str], why: str) -> list[StepRun]:
        return [StepRun(s, None, None, False, (), f"blocked: {why}") for s in stages]

    def ingest(self, partitions: Sequence[str]) -> list[StepRun]:
        """Ingest per partition, then the cross-partition cohort summary."""
        fields = {f.name for f in dataclasses.fields(self.study.ingest_options)}
        op = f"{self.study.name}__ingest"
        config = {"ops": {op: {"config": {"workers": self.workers}}}} if "workers" in fields else {}
        runs = [self._run("validated", p, config) for p in partitions]
        if any(r.success for r in runs):
            runs.append(self._run("cohort", None))
        return runs

    def per_partition(self, partitions: Sequence[str], ingest: Sequence[StepRun]) -> list[StepRun]:
        """Predictions (and partition metrics) of every partition whose ingest passed."""
        by_partition = {r.partition: r for r in ingest}
        out = []
        for p in partitions:
            prior = by_partition.get(p)
            if prior is not None and prior.blocking_failure:
                checks = prior.success or prior.blocked_by_check
                why = ", ".join(prior.failed_checks) if checks else "ingest failed"
                if prior.block_reasons:
                    why += f" ({'; '.join(prior.block_reasons)})"
                out.append(StepRun("predictions", p, None, False, (), f"blocked: {why}"))
                continue
            out.append(self._run("predictions", p))
            if out[-1].success and "partition_metrics" in self.by_stage:
                out.append(self._run("partition_metrics", p))
        return out

    def audit(self, predicted: Sequence[str]) -> list[StepRun]:
        """Evidence, mitigations, decisions, monitoring and the signed package, in order; a
        stage whose input failed is skipped with the reason."""
        refs = self.study.training_partitions()
        names = ["evidence", *(f"mitigation_{m.name}" for m in self.study.mitigations)]
        names += ["decisions", "monitoring", "package"]
        if not predicted:
            return self._skip(names, f"no {self.study.partition_by} was scored")
        unscored = [r for r in refs if r not in predicted]
        if unscored:
            return self._skip(
                names, f"reference {self.study.partition_by} {', '.join(unscored)} not scored"
            )
        runs: list[StepRun] = []
        for stage in names:
            failed = [r.stage for r in runs if r.blocking_failure or r.skipped_because]
            if failed:
                runs += self._skip([stage], f"{failed[0]} did not run")
                continue
            runs.append(self._run(stage, None))
        return runs

    def run_changed(self, changed: Sequence[str], partitions: Sequence[str]) -> list[StepRun]:
        """After new batches landed at ``changed`` (every partition of ``partitions`` audited
        before): their ingest and predictions, then the audit over ``partitions``; the other
        partitions' materializations stand (what the automation does when a batch lands)."""
        runs = self.ingest(changed)
        model = self._run("model", None)
        runs.append(model)
        if model.success:
            scored = self.per_partition(changed, runs)
            runs += scored
            failed = {r.partition for r in scored if r.stage == "predictions" and not r.success}
            runs += self.audit([p for p in partitions if p not in failed])
        self._observe_sources()
        return runs

    def _observe_sources(self) -> None:
        """Record the model and policy versions this audit used, so the automation (make ui)
        does not mistake its first observation of them for a change and re-audit once more."""
        defs = dg.Definitions(assets=self.assets, resources=self.resources)
        observe_sources(defs, self.instance, self.study)

    def run_all(self, partitions: Sequence[str]) -> list[StepRun]:
        """Every stage, in dependency order, then one observation of the model and policy."""
        runs = self.ingest(partitions)
        model = self._run("model", None)
        runs.append(model)
        if model.success:
            scored = self.per_partition(partitions, runs)
            runs += scored
            predicted = [r.partition for r in scored if r.stage == "predictions" and r.success]
            runs += self.audit([p for p in predicted if p])
        self._observe_sources()
        return runs
