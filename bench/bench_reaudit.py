"""Benchmark: a new site's batch lands -> verified, signed audit package, on the CPU.

Usage::

    python bench/bench_reaudit.py [--home DIR] [--images 2400] [--workers 2] [--keep DIR]

Without ``--home`` a minimal audited baseline is built first in a temporary directory (not
timed): the reference site ``vendor_dev`` and ``site_a`` / ``site_b`` at tiny scale, audited with
the embedded model at its default architecture and input size (2 training epochs). With
``--home`` an already audited run-time directory is reused (e.g. after ``make demo``:
``--home var/demo``, with ``DAGSTER_HOME`` set as the Makefile sets it); the benchmark then adds
site ``site_bench`` to it.

A batch of ``--images`` simulated images (profile of ``site_c``, full-scale image sizes) is
landed under the new site ``site_bench`` (not timed: that is the site's upload). The timed part
is what the deployment does by itself, run in-process with the daemon's own steps:

* one landing-sensor tick (scan, manifest and sha256 verification of every file, run request);
* the site run it requested (``multisite_cxr_partition_job``: ingest, predictions, site
  metrics);
* the automation ticks until nothing is requested (the cross-site re-audit and the package);
* an independent verification of the new package's PDF (signature, manifest, files).

Prints the breakdown and the total against the target (under 120 s). The daemon adds up to one
sensor interval and one automation interval (30 s each) of waiting, not included.
"""

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from clinaudit.assets.factory import partition_job
from clinaudit.assets.resources import ClinauditHome, LandingWatch, StudyModel
from clinaudit.orchestration.automation import SOURCE_STAGES, drain_automation, observe_sources
from clinaudit.orchestration.definitions import build_defs
from clinaudit.orchestration.runner import PipelineRunner, get_instance, register_partitions
from clinaudit.orchestration.sensors import build_landing_sensor
from clinaudit.reporting.verify import verify_pdf
from clinaudit.sources.cxr_simulator import simulate_cohort, simulate_site_batch
from clinaudit.sources.cxr_sites import DEFAULT_SITES
from clinaudit.studies import get_study

TARGET_S = 120.0
NEW_SITE = "site_bench"
STUDY = get_study("multisite_cxr")
PACKAGE = dg.AssetKey([STUDY.name, "package"])
SOURCE_NAMES = {f"{STUDY.name}/{s}" for s in SOURCE_STAGES}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def build_baseline(
    home: ClinauditHome, instance: dg.DagsterInstance, model: StudyModel, workers: int
) -> float:
    """Simulate and audit the minimal baseline; seconds taken."""
    t0 = time.perf_counter()
    sites = ["vendor_dev", "site_a", "site_b"]
    truth = home.root_dir / "truth"
    simulate_cohort(home.landing, truth_root=truth, scale="tiny", sites=sites, workers=workers)
    runner = PipelineRunner(
        instance, home, STUDY, model=model, workers=workers, console_level="WARNING"
    )
    runs = runner.run_all(register_partitions(instance, home, STUDY))
    bad = [r for r in runs if r.blocking_failure]
    if bad:
        raise RuntimeError(f"baseline audit failed: {bad}")
    return time.perf_counter() - t0


def land_new_site(home: ClinauditHome, n_images: int, workers: int) -> float:
    """Simulate the new site's batch into the landing area; seconds taken (not in the total)."""
    if (home.landing / STUDY.landing_dir / NEW_SITE).exists():
        raise SystemExit(
            f"{home.landing / STUDY.landing_dir / NEW_SITE} exists already: this home was "
            "benchmarked before; use a fresh --home (or none)"
        )
    profile = dataclasses.replace(DEFAULT_SITES["site_c"], name=NEW_SITE, code="bn")
    t0 = time.perf_counter()
    simulate_site_batch(
        home.landing,
        truth_root=home.root_dir / "truth",
        site=profile,
        n_images=n_images,
        scale="full",
        workers=workers,
    )
    return time.perf_counter() - t0


def slowest_steps(instance: dg.DagsterInstance, run_id: str, n: int = 4) -> str:
    """The ``n`` longest steps of a run, ``"name 12.3 s, ..."``."""
    stats = [(s.end_time - s.start_time, s.step_key) for s in instance.get_run_step_stats(run_id)]
    return ", ".join(f"{k} {t:.1f} s" for t, k in sorted(stats, reverse=True)[:n] if t is not None)


def package_count(instance: dg.DagsterInstance) -> int:
    return len(instance.fetch_materializations(PACKAGE, limit=1000).records)


def timed_reaudit(
    defs: dg.Definitions, home: ClinauditHome, instance: dg.DagsterInstance, cursor: object
) -> dict[str, float]:
    """Sensor tick -> site run -> automation ticks -> verification; seconds per step."""
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    ctx = dg.build_sensor_context(
        instance=instance, resources={"home": home, "landing_watch": LandingWatch()}
    )
    tick = build_landing_sensor(STUDY, partition_job(STUDY))(ctx)
    for add in tick.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
    steps["sensor tick"] = time.perf_counter() - t0
    if [r.partition_key for r in tick.run_requests] != [NEW_SITE]:
        raise RuntimeError(f"the sensor requested {tick.run_requests}, expected one {NEW_SITE} run")

    t0 = time.perf_counter()
    req = tick.run_requests[0]
    site_run = defs.resolve_job_def(f"{STUDY.name}_partition_job").execute_in_process(
        partition_key=req.partition_key, instance=instance, tags=req.tags, run_config=QUIET
    )
    steps["site run (ingest, predictions, site metrics)"] = time.perf_counter() - t0
    if not site_run.success:
        raise RuntimeError(f"site run {site_run.run_id} failed")
    print(f"  site run steps: {slowest_steps(instance, site_run.run_id)}")

    before = package_count(instance)
    t0 = time.perf_counter()
    _, ticks = drain_automation(defs, instance, cursor, run_config=QUIET)
    steps["automation: cross-site re-audit + package"] = time.perf_counter() - t0
    for t in ticks:
        ok = all(success for _, success in t.runs)
        what = ", ".join(t.requested) if len(t.requested) <= 3 else f"{len(t.requested)} assets"
        print(f"  automation tick: {what}; {len(t.runs)} run(s), ok={ok}, {t.seconds:.1f} s")
        for run_id, _ in t.runs:
            print(f"    steps: {slowest_steps(instance, run_id)}")
    if package_count(instance) != before + 1:
        raise RuntimeError(f"expected one new package, got {package_count(instance) - before}")

    t0 = time.perf_counter()
    record = instance.fetch_materializations(PACKAGE, limit=1).records[0]
    meta = record.asset_materialization.metadata
    pdf, package_dir = Path(meta["pdf"].value), Path(meta["package_dir"].value)
    verdict = verify_pdf(pdf, package_dir=package_dir)
    steps["package verification"] = time.perf_counter() - t0
    if not verdict.ok:
        raise RuntimeError(f"{pdf} does not verify: {[c for c in verdict.checks if not c.ok]}")
    print(f"  new package: {package_dir} (audit {meta['audit_id'].value})")
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="an audited run-time directory to reuse (written to)")
    parser.add_argument("--images", type=int, default=2400, help="images of the new site")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", help="build the baseline here instead of a temporary dir")
    parser.add_argument("--epochs", type=int, help="embedded model epochs (baseline: 2)")
    parser.add_argument("--input-size", type=int, help="embedded model input size (160)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.home or args.keep or tmp).resolve()
        home = ClinauditHome(root=str(root))
        if not args.home:
            os.environ["DAGSTER_HOME"] = str(root / "dagster_home")
        instance = get_instance(home)
        settings = {"epochs": args.epochs or (None if args.home else 2)}
        settings["input_size"] = args.input_size
        training = {k: v for k, v in settings.items() if v is not None}
        model = StudyModel(study=STUDY.name, training=training)
        if not args.home:
            print(f"building the baseline audit in {root} ...")
            seconds = build_baseline(home, instance, model, args.workers)
            print(f"  baseline (3 tiny sites, embedded model) in {seconds:.1f} s")
        defs = build_defs(home, studies=[STUDY], models={STUDY.name: model})
        # The automation starts from the audited state: sources observed, nothing pending.
        observe_sources(defs, instance, STUDY)
        cursor, settle = drain_automation(defs, instance, run_config=QUIET)
        extra = [t.requested for t in settle if set(t.requested) - set(SOURCE_NAMES)]
        if extra:
            print(f"  note: settling the baseline ran {extra}")
        seconds = land_new_site(home, args.images, args.workers)
        print(f"landed {args.images} simulated images as {NEW_SITE} in {seconds:.1f} s (not timed)")
        steps = timed_reaudit(defs, home, instance, cursor)
    total = sum(steps.values())
    print(f"\nbatch landed -> verified signed package, {args.images} images, CPU:")
    for name, s in steps.items():
        print(f"  {name:<45} {s:7.1f} s")
    verdict = "within" if total <= TARGET_S else "OVER"
    print(f"  {'total':<45} {total:7.1f} s   ({verdict} the {TARGET_S:.0f} s target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
