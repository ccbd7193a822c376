"""``make scale-smoke``: the ``scale`` profile end to end on real services (issue: production
profile).

PostgreSQL, SeaweedFS (S3) and Redis started by the project's own code on loopback ports; a
baseline audit (vendor_dev + site_a, tiny) in this process; then 20 tiny sites land at once and
``dagster-daemon`` (landing sensor -> run queue -> automation, run monitoring, run retries) with
four Celery run workers handles them until the signed package decides every site. One partition
run's process is killed mid-step (SIGKILL): run monitoring must see the lost worker and resume
the run on a worker, which must finish it.
Everything asserted is read back from the Postgres instance, the processes' logs and S3.

Marked ``scale`` (not part of ``make test``); the home is ``var/scale-smoke/<time>`` under the
repository (PostgreSQL refuses a data folder whose parents it cannot traverse, such as pytest's
0700 temporary folders) or ``$CLINAUDIT_SCALE_SMOKE_HOME``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from system_tools import require_tool

from clinaudit.orchestration.fleet import MODELS_ASIDE, Fleet, FleetSettings, RunKiller
from clinaudit.orchestration.runner import POOL_LIMITS
from clinaudit.reporting.verify import verify_published

pytestmark = [pytest.mark.scale, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
MARKER = ".clinaudit-scale-smoke"
SETTINGS = FleetSettings(profile="scale", n_sites=20, workers=4, settle_timeout_s=600)
#: ``max_concurrent_runs`` of the scale profile's dagster.yaml (orchestration/runner.py).
MAX_CONCURRENT_RUNS = 4


def _smoke_home() -> Path:
    """A fresh home; earlier smoke homes (those holding the marker file) are removed first."""
    parent = Path(os.environ.get("CLINAUDIT_SCALE_SMOKE_HOME") or REPO / "var" / "scale-smoke")
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        if (old / MARKER).is_file():
            shutil.rmtree(old)
    home = parent / time.strftime("%Y%m%dT%H%M%S")
    home.mkdir()
    (home / MARKER).write_text("a scale-smoke home; the next smoke run removes it\n")
    return home


@pytest.fixture(scope="module")
def smoke() -> Iterator[dict[str, Any]]:
    t0 = time.perf_counter()
    with Fleet(_smoke_home(), SETTINGS) as fleet:
        instance = fleet.instance
        assert instance is not None
        baseline = fleet.baseline()
        landing = fleet.land_sites()
        fleet.start_processes()
        killer = RunKiller()
        seconds = fleet.wait_settled(killer)
        report = fleet.report(seconds)
        report.killed, report.baseline_s, report.landing_s = killer.killed, baseline, landing
        relanded = fleet.reland_identical(fleet.sites[0])
        messages = (
            [e.message or "" for e in instance.all_logs(killer.killed)] if killer.killed else []
        )
        result = {
            "fleet": fleet,
            "report": report,
            "relanded": relanded,
            "killed_messages": messages,
            "storage": type(instance.run_storage).__name__,
            "launcher": type(instance.run_launcher).__name__,
            "launcher_module": type(instance.run_launcher).__module__,
            "model": instance.fetch_materializations(
                dg.AssetKey(["multisite_cxr", "model"]), limit=1
            ).records[0],
        }
        print(f"\nscale-smoke: {report.summary()}; whole smoke {time.perf_counter() - t0:.0f} s")
        summary = {
            "sites_per_minute": round(report.sites_per_minute, 3),
            "seconds": round(seconds, 1),
            "runs": report.runs,
            "max_in_flight": report.max_in_flight,
            "pool_peaks": report.pool_peaks,
            "killed": report.killed,
            "retries": report.retries,
        }
        (fleet.root / "scale_smoke.json").write_text(json.dumps(summary, indent=1))
        verdicts = {url: verify_published(url, use_pdfsig=_pdfsig()) for url in report.packages}
        result["verdicts"] = verdicts
        yield result


def _pdfsig() -> bool:
    require_tool("pdfsig", "poppler-utils")
    return True


def test_the_instance_is_postgres_and_runs_go_to_celery(smoke) -> None:
    assert smoke["storage"] == "PostgresRunStorage"
    assert smoke["launcher"] == "CeleryRunLauncher"  # clinaudit's, resume fixed
    assert smoke["launcher_module"] == "clinaudit.orchestration.celery_launcher"


def test_every_run_succeeds_and_the_killed_one_is_resumed_by_run_monitoring(smoke) -> None:
    report = smoke["report"]
    assert report.killed is not None, "no partition run was seen executing to kill"
    assert report.failed_runs() == []
    messages = smoke["killed_messages"]
    # Run monitoring read the lost Celery task and resumed the run on a worker, which finished it.
    assert any("Detected run worker status FAILED" in m and "Resuming run" in m for m in messages)
    assert any(m.startswith("Started process for resuming job") for m in messages), messages
    assert report.runs[report.killed] == "SUCCESS"
    partitions = {r.dagster_run.tags.get("dagster/partition") for r in smoke["fleet"].run_records()}
    assert set(report.sites) <= partitions


def test_run_queue_and_pools_hold_their_limits(smoke) -> None:
    report = smoke["report"]
    assert 1 <= report.max_in_flight <= MAX_CONCURRENT_RUNS
    assert report.max_executing <= SETTINGS.workers
    assert report.pool_peaks["signing"] == POOL_LIMITS["signing"] == 1
    assert 1 <= report.pool_peaks["inference"] <= POOL_LIMITS["inference"]


def test_no_storage_errors_under_concurrency(smoke) -> None:
    assert smoke["report"].storage_errors == []


def test_every_package_verifies_when_read_back_from_s3(smoke) -> None:
    verdicts = smoke["verdicts"]
    assert verdicts and all(url.startswith("s3://") for url in verdicts)
    bad = {url: [c for c in v.checks if not c.ok] for url, v in verdicts.items() if not v.ok}
    assert bad == {}


def test_run_workers_fetch_the_model_from_s3(smoke) -> None:
    """The baseline's model folder was moved aside: every site run scored with the package the
    model stage published to S3, fetched into the cache once and checked file by file."""
    fleet = smoke["fleet"]
    materialization = smoke["model"].asset_materialization
    published = materialization.metadata["published_to"].value
    assert published.startswith(fleet.env["CLINAUDIT_STORE_URL"] + "/models/multisite_cxr/")
    identity = published.rsplit("/", 1)[1]
    cache = fleet.home.artifacts / "models" / "cache" / "multisite_cxr" / identity
    assert not (fleet.home.artifacts / "models" / "vendor_model").exists()
    [trained] = (fleet.root / MODELS_ASIDE / "vendor_model").iterdir()  # the baseline's package

    def files(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")}

    assert files(cache) == files(trained) and "model.safetensors" in files(cache)


def test_relanding_identical_data_starts_no_run(smoke) -> None:
    assert smoke["relanded"] == []
