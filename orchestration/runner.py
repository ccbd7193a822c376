"""Run the project's assets in-process on a persistent Dagster instance.

``make demo`` and the ``clinaudit`` command use this, so everything they materialize shows up in the
Dagster UI (``make ui``) afterwards, with the same lineage and metadata as a sensor-triggered run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from clinaudit.assets import multisite_cxr
from clinaudit.orchestration.definitions import build_resources
from clinaudit.orchestration.resources import ClinauditHome
from clinaudit.sources.landing import scan_landing

DAGSTER_YAML = """\
# Dagster instance for clinaudit, written once by `clinaudit init-home` (edit freely).
# Embedded default: SQLite storage under this directory, runs launched in-process by the daemon.
# For Postgres storage and multiprocess / Kubernetes executors, see docs/operations.md.
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 2
"""


class RunFailed(RuntimeError):
    """A Dagster run of the project did not succeed."""


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
class SiteRun:
    """Outcome of one site's ingest run."""

    site: str
    run_id: str
    success: bool
    failed_checks: tuple[str, ...]


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


def ingest_sites(
    instance: dg.DagsterInstance,
    home: ClinauditHome,
    sites: Sequence[str],
    *,
    workers: int = 2,
) -> list[SiteRun]:
    """Materialize ``cxr_ingest`` for each site (one run per partition), then the cohort summary."""
    resources = build_resources(home)
    runs = []
    run_config = {"ops": {"cxr_ingest": {"config": {"workers": workers}}}}
    for site in sites:
        result = dg.materialize(
            multisite_cxr.ASSETS,
            selection=[multisite_cxr.cxr_ingest],
            partition_key=site,
            instance=instance,
            resources=resources,
            run_config=run_config,
            raise_on_error=False,
            tags={"clinaudit/site": site},
        )
        runs.append(SiteRun(site, result.run_id, result.success, _failed_checks(result)))
    if any(r.success for r in runs):
        summary = dg.materialize(
            multisite_cxr.ASSETS,
            selection=[multisite_cxr.cxr_cohort_summary],
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        if not summary.success:
            raise RunFailed(f"cxr_cohort_summary run {summary.run_id} failed; see `make ui`")
    return runs
