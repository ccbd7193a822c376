"""The ``clinaudit`` command.

``clinaudit demo``      simulate the embedded cohort (once) and run the pipeline on it
``clinaudit audit``     run the pipeline on your own landed data with a model package or scores
``clinaudit ingest``    only validate + de-identify every landed site batch
``clinaudit simulate``  write a simulated cohort into a landing directory
``clinaudit init-home`` create the run-time tree and the Dagster instance config
``clinaudit verify``    check a signed audit package (signature, coverage, signer, manifest hashes)

Every command materializes the same Dagster assets in-process on a persistent instance, so the
runs appear in the Dagster UI (``make ui``) afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clinaudit.orchestration.resources import ClinauditHome

if TYPE_CHECKING:
    from clinaudit.assets.multisite_cxr_model import AuditedModel
    from clinaudit.orchestration.runner import StepRun

#: Model settings per demo scale (the tiny scale is for tests: small input, two epochs).
SCALE_MODEL: dict[str, dict[str, int]] = {"tiny": {"input_size": 64, "epochs": 2}}


def _home(args: argparse.Namespace) -> ClinauditHome:
    home = getattr(args, "home", None) or getattr(args, "out", None)
    root = str(Path(home).resolve()) if home else None
    landing = str(Path(args.landing).resolve()) if getattr(args, "landing", None) else None
    return ClinauditHome(root=root, landing_dir=landing)


def _audited_model(args: argparse.Namespace) -> AuditedModel:
    from clinaudit.assets.multisite_cxr_model import AuditedModel

    settings = dict(SCALE_MODEL.get(getattr(args, "scale", ""), {}))
    settings.update(
        {k: getattr(args, k) for k in ("arch", "input_size", "epochs") if getattr(args, k)}
    )
    model = getattr(args, "model", None)
    scores = getattr(args, "predictions", None)
    return AuditedModel(
        package_dir=str(Path(model).resolve()) if model else None,
        scores_dir=str(Path(scores).resolve()) if scores else None,
        device=args.device,
        precision=args.precision,
        **settings,
    )


def _print_runs(runs: Sequence[StepRun], home: ClinauditHome) -> int:
    """Print one line per stage run; return the number of runs with a blocking failure."""
    for r in runs:
        if r.skipped_because:
            state, detail = "SKIPPED", r.skipped_because
        else:
            state = (
                "FAILED"
                if not r.success
                else "BLOCKED"
                if r.blocking_failure
                else "ok, warnings"
                if r.failed_checks
                else "ok"
            )
            detail = f"run {r.run_id[:8]}"
            if r.failed_checks:
                detail += f"  failed checks: {', '.join(r.failed_checks)}"
        print(f"  {r.stage:<18} {r.site or '(all sites)':<12} {state:<14} {detail}")
    if any(r.stage.startswith("sepsis") for r in runs):
        return sum(r.blocking_failure for r in runs)
    tables = home.artifacts / "tables"
    print(f"validated tables : {tables / 'cxr_validated_images'}")
    print(f"predictions      : {tables / 'cxr_predictions'}")
    print(f"model packages   : {home.artifacts / 'models'}")
    print(f"quarantine       : {home.quarantine / 'cxr'}")
    return sum(r.blocking_failure for r in runs)


def _print_decisions(home: ClinauditHome) -> None:
    """The per-site decisions table of the latest decision run, if there is one."""
    from clinaudit.assets.multisite_cxr_mitigation import read_decisions

    table = read_decisions(home)
    if table is None:
        return
    first = table.iloc[0]
    print(f"decisions under policy {first['policy_id']} v{first['policy_version']}:")
    for r in table.itertuples():
        print(f"  {r.site:<12} {r.decision:<15} {r.reasons}")


def _print_package(instance, run: StepRun, asset: str = "cxr_audit_package") -> None:
    """Where the signed package of this run is, and its verification verdict."""
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    if event is None or event.run_id != run.run_id or "pdf" not in meta:
        return
    verdict = "VERIFIED" if meta["verified"].value else "VERIFICATION FAILED"
    print(f"signed audit PDF : {meta['pdf'].value}  ({verdict}; check: clinaudit verify PDF)")
    print(f"audit package    : {meta['package_dir'].value}")


def _run_pipeline(args: argparse.Namespace, home: ClinauditHome, t0: float) -> int:
    from clinaudit.orchestration.runner import PipelineRunner, get_instance, register_sites

    instance = get_instance(home)
    sites = register_sites(instance, home)
    if getattr(args, "sites", None):
        wanted = set(args.sites.split(","))
        sites = [s for s in sites if s in wanted]
    if not sites:
        print(
            f"no ready batch under {home.landing / 'cxr'} "
            "(a batch is ready once its manifest.json exists)"
        )
        return 2
    print(f"auditing {len(sites)} sites: {', '.join(sites)}")
    policy = getattr(args, "policy", None)
    runner = PipelineRunner(
        instance,
        home,
        _audited_model(args),
        workers=args.workers,
        policy_path=str(Path(policy).resolve()) if policy else None,
    )
    stages = runner.ingest(sites) if args.command == "ingest" else runner.run_all(sites)
    bad = _print_runs(stages, home)
    if any(r.stage == "decisions" and r.success for r in stages):
        _print_decisions(home)
    package = next((r for r in stages if r.stage == "audit_package" and r.success), None)
    if package is not None:
        _print_package(instance, package)
    print(f"Dagster home     : {instance.root_directory}  (browse it with `make ui`)")
    print(f"finished in {time.perf_counter() - t0:.1f} s")
    return 1 if bad else 0


def _run_sepsis(args: argparse.Namespace, home: ClinauditHome, t0: float) -> int:
    """Study ``sepsis_ews`` on the stays landed under ``<landing>/sepsis_ews/``."""
    import pandas as pd

    from clinaudit.assets.sepsis_ews import SepsisModel
    from clinaudit.orchestration.runner import PipelineRunner, get_instance
    from clinaudit.sources.landing import scan_landing

    if not scan_landing(home.landing, "sepsis_ews").ready():
        print(f"no ready batch under {home.landing / 'sepsis_ews'} (docs/sepsis_formats.md)")
        return 2
    model = getattr(args, "model", None)
    scores = getattr(args, "predictions", None)
    policy = getattr(args, "policy", None)
    instance = get_instance(home)
    runner = PipelineRunner(
        instance,
        home,
        sepsis_model=SepsisModel(
            package_dir=str(Path(model).resolve()) if model else None,
            scores_csv=str(Path(scores).resolve()) if scores else None,
            threshold=getattr(args, "threshold", None),
            vendor_scale=getattr(args, "scale", None) or "demo",
        ),
        sepsis_policy_path=str(Path(policy).resolve()) if policy else None,
    )
    print("auditing study sepsis_ews")
    runs = runner.sepsis()
    bad = _print_runs(runs, home)
    decision = home.artifacts / "tables" / "sepsis_decision" / "__all__.parquet"
    if runs[-1].success and decision.exists():
        table = pd.read_parquet(decision)
        for row in table.to_dict("records"):
            shown = {k: v for k, v in row.items() if isinstance(v, str) and len(v) < 200}
            print("  " + "; ".join(f"{k}: {v}" for k, v in shown.items()))
        _print_package(instance, runs[-1], "sepsis_audit_package")
    print(f"finished in {time.perf_counter() - t0:.1f} s")
    return 1 if bad else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from clinaudit.sources.cxr_simulator import simulate_cohort
    from clinaudit.sources.landing import scan_landing

    home = _home(args)
    truth = home.root_dir / "simulator_truth"
    t0 = time.perf_counter()
    status = 0
    if args.study in ("all", "multisite_cxr"):
        if scan_landing(home.landing, "cxr").ready():
            print(f"landing already holds batches, not re-simulating: {home.landing / 'cxr'}")
        else:
            print(f"simulating the '{args.scale}' cohort (seed {args.seed}) into {home.landing}")
            summary = simulate_cohort(
                home.landing,
                truth_root=truth,
                scale=args.scale,
                seed=args.seed,
                workers=args.workers,
            )
            for s in summary.sites:
                print(f"  {s.site:<12} {s.n_images:>6} images {s.n_patients:>6} patients")
            print(f"  simulated in {time.perf_counter() - t0:.1f} s (SIMULATED data)")
        status = _run_pipeline(args, home, t0)
    if args.study in ("all", "sepsis_ews"):
        from clinaudit.assets.sepsis_ews import land_simulated_network

        t1 = time.perf_counter()
        cohort = land_simulated_network(home.landing, truth, scale=args.scale, seed=args.seed)
        print(f"sepsis_ews: {len(cohort.stays)} simulated ICU stays landed in {home.landing}")
        status = max(status, _run_sepsis(args, home, t1))
    print(f"simulator truth  : {truth}  (read by tests only, never by the audit)")
    return status


def cmd_audit(args: argparse.Namespace) -> int:
    if getattr(args, "model", None) and getattr(args, "predictions", None):
        print("give either --model PACKAGE_DIR or --predictions DIR, not both", file=sys.stderr)
        return 2
    if getattr(args, "study", "multisite_cxr") == "sepsis_ews":
        if args.predictions and args.threshold is None:
            print("--predictions for sepsis_ews needs --threshold (alert when score >= it)",
                  file=sys.stderr)  # fmt: skip
            return 2
        return _run_sepsis(args, _home(args), time.perf_counter())
    return _run_pipeline(args, _home(args), time.perf_counter())


def cmd_simulate(args: argparse.Namespace) -> int:
    from clinaudit.sources.cxr_simulator import simulate_cohort

    summary = simulate_cohort(
        Path(args.landing),
        truth_root=Path(args.truth),
        scale=args.scale,
        seed=args.seed,
        sites=args.sites.split(",") if args.sites else None,
        workers=args.workers,
    )
    for s in summary.sites:
        print(f"{s.site:<12} {s.n_images:>6} images -> {s.batch_dir}")
    return 0


def cmd_init_home(args: argparse.Namespace) -> int:
    from clinaudit.orchestration.runner import init_home

    print(init_home(_home(args)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from clinaudit.reporting.verify import main as verify_main

    return verify_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinaudit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
        p.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")
        p.add_argument(
            "--precision",
            default="auto",
            help="auto (bf16 on CUDA, float32 elsewhere) | fp32 | bf16 (also on a bf16 CPU)",
        )
        p.add_argument("--arch", help="timm architecture of the embedded model (resnet10t)")
        p.add_argument("--input-size", type=int, help="model input side in pixels (160)")
        p.add_argument("--epochs", type=int, help="training epochs of the embedded model (10)")

    home_help = "run-time directory (default $CLINAUDIT_HOME or ./var)"
    p = sub.add_parser("demo", help="simulate the embedded cohort and run the pipeline on it")
    p.add_argument("--home", help=home_help)
    p.add_argument("--scale", default="demo", help="tiny | demo | full (default demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--study",
        choices=["all", "multisite_cxr", "sepsis_ews"],
        default="all",
        help="which studies the demo runs (default all)",
    )
    run_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("audit", help="audit a model on landed site data (your own data)")
    p.add_argument("--landing", required=True, help="landing directory (<landing>/cxr/<site>/..)")
    p.add_argument("--out", required=True, help="run-time directory for everything produced")
    p.add_argument("--model", help="vendor model package directory (docs/model_package.md)")
    p.add_argument(
        "--predictions",
        help="vendor scores: a directory with one <site>.csv per site, or one CSV for one site",
    )
    p.add_argument("--sites", help="comma-separated subset of sites")
    p.add_argument(
        "--policy", help="decision policy YAML (default: the policy shipped with clinaudit)"
    )
    p.add_argument(
        "--study",
        choices=["multisite_cxr", "sepsis_ews"],
        default="multisite_cxr",
        help="multisite_cxr (default; <landing>/cxr/<site>/<batch>/) or sepsis_ews "
        "(<landing>/sepsis_ews/<hospital>/<batch>/ with a stays CSV or Parquet; --model is a "
        "tabular package, --predictions a stay_id,score CSV with --threshold)",
    )
    p.add_argument("--threshold", type=float, help="sepsis_ews scores CSV: operating threshold")
    run_options(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("ingest", help="only validate + de-identify the landed site batches")
    p.add_argument("--home", help=home_help)
    p.add_argument("--landing", help="landing directory (default <home>/landing)")
    p.add_argument("--sites", help="comma-separated subset of sites")
    run_options(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("simulate", help="write a simulated cohort into a landing directory")
    p.add_argument("--landing", required=True)
    p.add_argument("--truth", required=True, help="where the simulator's truth sidecars go")
    p.add_argument("--scale", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sites", help="comma-separated subset of sites")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "verify",
        help="verify a signed audit package PDF (exit 1 on any failure)",
        add_help=False,
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("init-home", help="create the run-time tree and dagster.yaml")
    p.add_argument("--home", help=home_help)
    p.set_defaults(func=cmd_init_home)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["verify"]:
        # `clinaudit verify` is the verifier's own command line (its --help lists the options).
        return cmd_verify(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
