"""Benchmark: sites per minute of the ``local`` and the ``scale`` profile on the same sites.

Usage::

    python bench/bench_profiles.py [--sites 20] [--workers 4] [--root DIR]

Both profiles get the same work, in one run: a fresh home, the same baseline audit (vendor_dev
and site_a at tiny scale, in this process; not timed), then ``--sites`` tiny sites landed at once
(same seed, identical bytes; not timed) and ``dagster-daemon`` started. Timed: daemon start ->
the signed package decides every landed site (landing sensor, queued runs, the automation's
re-audits, signing), read from the instance's run records (``orchestration/fleet.py``).

* ``local`` (the baseline, today's default): SQLite instance, runs launched by the daemon as
  local processes, multiprocess executor, ``max_concurrent_runs: 2``.
* ``scale``: PostgreSQL instance, Celery run workers (``--workers``, one run each, in-process
  executor) over Redis, ``max_concurrent_runs: 4`` with pools, tables and packages on SeaweedFS S3.

Prints each profile's sites/min and the ratio scale / local. On a 2-core machine both profiles
share the same two cores, so the ratio measures orchestration overhead, not added hardware.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from clinaudit.orchestration.fleet import Fleet, FleetReport, FleetSettings


def run_profile(profile: str, root: Path, sites: int, workers: int) -> FleetReport:
    settings = FleetSettings(profile=profile, n_sites=sites, workers=workers, settle_timeout_s=1800)
    with Fleet(root / profile, settings) as fleet:
        baseline = fleet.baseline()
        landing = fleet.land_sites()
        fleet.start_processes()
        seconds = fleet.wait_settled()
        report = fleet.report(seconds)
        report.baseline_s, report.landing_s = baseline, landing
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4, help="Celery run workers (scale)")
    parser.add_argument("--root", type=Path, help="keep the homes here (default: a temp dir)")
    args = parser.parse_args(argv)
    # PostgreSQL needs traversable parents: a temporary folder under the repository's var/.
    var = Path(__file__).resolve().parents[1] / "var"
    var.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-profiles-", dir=var) as tmp:
        root = args.root or Path(tmp)
        root.chmod(0o755)
        reports = {p: run_profile(p, root, args.sites, args.workers) for p in ("local", "scale")}
    for report in reports.values():
        print(report.summary())
        if report.failed_runs():
            print(f"  failed runs: {report.failed_runs()}")
        for error in report.storage_errors[:5]:
            print(f"  storage error: {error}")
    local, scale = reports["local"], reports["scale"]
    print(
        f"scale / local: {scale.sites_per_minute / local.sites_per_minute:.2f}x sites per minute "
        f"({scale.sites_per_minute:.2f} vs {local.sites_per_minute:.2f}; baseline: local)"
    )
    return 1 if any(r.failed_runs() or r.storage_errors for r in reports.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
