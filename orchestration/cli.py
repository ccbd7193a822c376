"""The ``clinaudit`` command.

``clinaudit demo``      simulate the embedded cohort (once) and run the pipeline on it
``clinaudit ingest``    validate + de-identify every landed site batch (your own data)
``clinaudit simulate``  write a simulated cohort into a landing directory
``clinaudit init-home`` create the run-time tree and the Dagster instance config
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from clinaudit.orchestration.resources import ClinauditHome


def _home(args: argparse.Namespace) -> ClinauditHome:
    root = Path(args.home).resolve() if args.home else None
    landing = str(Path(args.landing).resolve()) if getattr(args, "landing", None) else None
    return ClinauditHome(root=str(root) if root else None, landing_dir=landing)


def _print_runs(runs, home: ClinauditHome) -> int:
    bad = 0
    for r in runs:
        state = (
            "ok"
            if r.success and not r.failed_checks
            else "CHECKS FAILED"
            if r.success
            else "FAILED"
        )
        extra = f" failed checks: {', '.join(r.failed_checks)}" if r.failed_checks else ""
        print(f"  {r.site:<12} {state:<14} run {r.run_id[:8]}{extra}")
        bad += (not r.success) or any("ERROR" in c for c in r.failed_checks)
    print(f"validated tables : {home.artifacts / 'tables' / 'cxr_validated_images'}")
    print(f"quarantine       : {home.quarantine / 'cxr'}")
    return bad


def cmd_demo(args: argparse.Namespace) -> int:
    from clinaudit.orchestration.runner import get_instance, ingest_sites, register_sites
    from clinaudit.sources.cxr_simulator import simulate_cohort
    from clinaudit.sources.landing import scan_landing

    home = _home(args)
    instance = get_instance(home)
    truth = home.root_dir / "simulator_truth"
    t0 = time.perf_counter()
    if scan_landing(home.landing, "cxr").ready():
        print(f"landing already holds batches, not re-simulating: {home.landing / 'cxr'}")
    else:
        print(
            f"simulating the '{args.scale}' cohort (seed {args.seed}) into {home.landing / 'cxr'}"
        )
        summary = simulate_cohort(
            home.landing, truth_root=truth, scale=args.scale, seed=args.seed, workers=args.workers
        )
        for s in summary.sites:
            print(f"  {s.site:<12} {s.n_images:>6} images {s.n_patients:>6} patients")
        print(f"  simulated in {time.perf_counter() - t0:.1f} s")
    sites = register_sites(instance, home)
    print(f"ingesting {len(sites)} sites: {', '.join(sites)}")
    runs = ingest_sites(instance, home, sites, workers=args.workers)
    bad = _print_runs(runs, home)
    print(f"simulator truth (tests only): {truth}")
    print(f"Dagster home     : {instance.root_directory}  (inspect with `make ui`)")
    print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    return 1 if bad else 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from clinaudit.orchestration.runner import get_instance, ingest_sites, register_sites

    home = _home(args)
    instance = get_instance(home)
    sites = register_sites(instance, home)
    if args.sites:
        wanted = set(args.sites.split(","))
        sites = [s for s in sites if s in wanted]
    if not sites:
        print(
            f"no ready batch under {home.landing / 'cxr'} "
            "(a batch is ready once its manifest.json exists)"
        )
        return 2
    runs = ingest_sites(instance, home, sites, workers=args.workers)
    return 1 if _print_runs(runs, home) else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from clinaudit.sources.cxr_simulator import simulate_cohort

    sites = args.sites.split(",") if args.sites else None
    summary = simulate_cohort(
        Path(args.landing),
        truth_root=Path(args.truth),
        scale=args.scale,
        seed=args.seed,
        sites=sites,
        workers=args.workers,
    )
    for s in summary.sites:
        print(f"{s.site:<12} {s.n_images:>6} images -> {s.batch_dir}")
    return 0


def cmd_init_home(args: argparse.Namespace) -> int:
    from clinaudit.orchestration.runner import init_home

    home = _home(args)
    print(init_home(home))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinaudit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--home", help="run-time directory (default $CLINAUDIT_HOME or ./var)")
        p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")

    p = sub.add_parser("demo", help="simulate the embedded cohort and run the pipeline")
    common(p)
    p.add_argument("--scale", default="demo", help="tiny | demo | full (default demo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ingest", help="validate every landed site batch")
    common(p)
    p.add_argument("--landing", help="landing directory (default <home>/landing)")
    p.add_argument("--sites", help="comma-separated subset of sites")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("simulate", help="write a simulated cohort into a landing directory")
    p.add_argument("--landing", required=True)
    p.add_argument("--truth", required=True, help="where the simulator's truth sidecars go")
    p.add_argument("--scale", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sites", help="comma-separated subset of sites")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("init-home", help="create the run-time tree and dagster.yaml")
    p.add_argument("--home")
    p.set_defaults(func=cmd_init_home)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
