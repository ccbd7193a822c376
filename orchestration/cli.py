"""The ``clinaudit`` command: one path for every registered study.

``clinaudit demo [--study NAME]``   simulate the embedded cohort(s) once and run the pipeline
``clinaudit audit --study NAME``    run the pipeline on your own landed data
``clinaudit ingest --study NAME``   only validate + de-identify every landed batch
``clinaudit simulate --study NAME`` write a simulated cohort into a landing directory
``clinaudit init-home``             create the run-time tree and the Dagster instance config
``clinaudit services up|down|status`` the scale profile's PostgreSQL, SeaweedFS (S3) and Redis
``clinaudit verify``                check a signed audit package (signature, manifest hashes)
``clinaudit portal``                serve the committee portal (every package, verified on view)

Every command materializes the same Dagster assets in-process on a persistent instance, so the
runs appear in the Dagster UI (``make ui``) afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# Everything heavy (Dagster, torch, the studies) is imported inside the commands: a worker pool
# with the "spawn" start method (the image ingest's) re-imports this module in every worker, and
# importing the studies costs ~9 CPU-s there (measured: a 2-worker pool of an ingest batch went
# from 18.6 to 0.8 CPU-s of start-up on the 2-core machine).
if TYPE_CHECKING:
    import dagster as dg

    from clinaudit.assets.resources import ClinauditHome, StudyModel
    from clinaudit.orchestration.runner import StepRun
    from clinaudit.studies import Study

#: Settings of the embedded model that the command line can set (the study decides their use).
TRAINING_OPTIONS = ("arch", "input_size", "epochs", "backbone", "base_model")


def _studies(name: str) -> list[Study]:
    from clinaudit.studies import get_study, registered_studies

    # "all" runs in registration order: cxr_triage fine-tunes the vendor model multisite_cxr
    # trained just before it (studies/__init__.py registers them in that order).
    return registered_studies(order="registration") if name == "all" else [get_study(name)]


def _home(args: argparse.Namespace) -> ClinauditHome:
    from clinaudit.assets.resources import ClinauditHome

    home = getattr(args, "home", None) or getattr(args, "out", None)
    root = str(Path(home).resolve()) if home else None
    landing = str(Path(args.landing).resolve()) if getattr(args, "landing", None) else None
    return ClinauditHome(root=root, landing_dir=landing)


def _model(args: argparse.Namespace, study: Study) -> StudyModel:
    """The study's model resource from the command line (what is audited and how it runs)."""
    from clinaudit.assets.resources import StudyModel

    training = {k: getattr(args, k) for k in TRAINING_OPTIONS if getattr(args, k, None)}
    for path_option in ("backbone", "base_model"):
        if path_option in training:
            training[path_option] = str(Path(training[path_option]).resolve())
    if getattr(args, "scale", None):
        training["scale"] = args.scale
    model, scores = getattr(args, "model", None), getattr(args, "predictions", None)
    return StudyModel(
        study=study.name,
        package_dir=str(Path(model).resolve()) if model else None,
        scores=str(Path(scores).resolve()) if scores else None,
        threshold=getattr(args, "threshold", None),
        thresholds=_resolved(getattr(args, "thresholds", None)),
        device=args.device,
        precision=args.precision,
        seed=getattr(args, "seed", 0) or 0,
        training=training,
    )


def _resolved(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _input_problems(args: argparse.Namespace) -> list[str]:
    """Command-line inputs that are wrong before anything runs (each with its fix)."""
    problems = []
    threshold = getattr(args, "threshold", None)
    if threshold is not None and not 0.0 < threshold < 1.0:
        hint = f" (a percentage? use {threshold / 100:g})" if 1.0 < threshold <= 100.0 else ""
        problems.append(
            f"--threshold {threshold:g} is outside (0, 1){hint}: the operating threshold is a "
            "probability; alert at score >= threshold"
        )
    landing = getattr(args, "landing", None)
    if landing and not Path(landing).is_dir():
        problems.append(
            f"--landing {landing}: no such directory (it is never created: check the path; the "
            "landing directory holds <study dir>/<site>/<batch>/ folders, docs/formats.md)"
        )
    for option in ("model", "predictions", "thresholds", "policy"):
        value = getattr(args, option, None)
        if value and not Path(value).exists():
            problems.append(f"--{option} {value}: no such file or directory")
    if getattr(args, "model", None) and getattr(args, "predictions", None):
        problems.append("give either --model PACKAGE_DIR or --predictions PATH, not both")
    if getattr(args, "thresholds", None) and not getattr(args, "predictions", None):
        problems.append(
            "--thresholds goes with --predictions (a model package carries its thresholds in its "
            "model card)"
        )
    return problems


def _print_runs(runs: Sequence[StepRun]) -> int:
    """Print one line per stage run; return the number of runs with a blocking failure."""
    for r in runs:
        if r.skipped_because:
            state, detail = "SKIPPED", r.skipped_because
        else:
            state = "ok"
            if not r.success:
                state = "BLOCKED" if r.blocked_by_check else "FAILED"
            elif r.blocking_failure:
                state = "BLOCKED"
            elif r.failed_checks:
                state = "ok, warnings"
            detail = f"run {str(r.run_id)[:8]}"
            if r.failed_checks:
                detail += f"  failed checks: {', '.join(r.failed_checks)}"
        where = r.partition or "(all)"
        print(f"  {r.stage:<26} {where:<12} {state:<14} {detail}")
        if r.error and not r.blocked_by_check:
            print(f"      error: {r.error.splitlines()[0][:400]}")
        for reason in r.block_reasons:
            print(f"      blocked: {reason[:400]}")
    return sum(r.blocking_failure for r in runs)


def _print_outcome(
    instance: dg.DagsterInstance, home: ClinauditHome, study: Study, runs: Sequence[StepRun]
) -> None:
    """The decisions under the policy, and where the signed package is with its verdict."""
    import dagster as dg

    from clinaudit.assets.resources import read_stored

    decided = next((r for r in runs if r.stage == "decisions" and r.success), None)
    if decided is not None:
        decisions = read_stored(home, f"{study.name}/decisions")
        facts = decisions.facts
        print(f"decisions under policy {facts['policy_id']} v{facts['policy_version']}:")
        for where, line in study.decision_lines(decisions):
            print(f"  {where:<12} {line}")
    package = next((r for r in runs if r.stage == "package" and r.success), None)
    if package is None:
        return
    event = instance.get_latest_materialization_event(dg.AssetKey([study.name, "package"]))
    meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
    if event is None or event.run_id != package.run_id or "pdf" not in meta:
        return
    verdict = "VERIFIED" if meta["verified"].value else "VERIFICATION FAILED"
    print(f"signed audit PDF : {meta['pdf'].value}  ({verdict}; check: clinaudit verify PDF)")
    print(f"audit package    : {meta['package_dir'].value}")
    if "portal_url" in meta:
        print(f"committee portal : {meta['portal_url'].value}  (clinaudit portal, make ui)")


def _run_study(
    args: argparse.Namespace,
    home: ClinauditHome,
    study: Study,
    changed: Sequence[str] | None = None,
) -> int:
    """Run ``study`` on its landed partitions; with ``changed``, only those partitions' ingest
    and predictions, then the audit (the demo's second audit after a later batch lands)."""
    from clinaudit.orchestration.runner import PipelineRunner, get_instance, register_partitions
    from clinaudit.sources.landing import scan_landing

    t0 = time.perf_counter()
    instance = get_instance(home)
    scan = scan_landing(home.landing, study.landing_dir)
    for b in scan.batches:
        if not b.ready:
            print(
                f"waiting for manifest: {b.site}/{b.batch} is not audited until its "
                "manifest.json exists (write it last, after every file of the batch)"
            )
    partitions = register_partitions(instance, home, study)
    if getattr(args, "sites", None):
        wanted = set(args.sites.split(","))
        partitions = [p for p in partitions if p in wanted]
    if not partitions:
        print(
            f"{study.name}: no ready batch under {home.landing / study.landing_dir} (a batch is "
            "ready once its manifest.json exists)"
        )
        return 2
    print(
        f"{study.name}: auditing {len(partitions)} {study.partition_by}s: {', '.join(partitions)}"
    )
    policy = getattr(args, "policy", None)
    runner = PipelineRunner(
        instance,
        home,
        study,
        model=_model(args, study),
        policy_path=str(Path(policy).resolve()) if policy else None,
        workers=args.workers,
    )
    if changed:
        runs = runner.run_changed([p for p in partitions if p in set(changed)], partitions)
    elif args.command == "ingest":
        runs = runner.ingest(partitions)
    else:
        runs = runner.run_all(partitions)
    bad = _print_runs(runs)
    _print_outcome(instance, home, study, runs)
    for label, path in (
        ("tables", home.artifacts / "tables" / study.name),
        ("quarantine", home.quarantine / study.landing_dir),
    ):
        if path.exists():  # only what this run (or an earlier one) wrote
            print(f"{label:<17}: {path}")
    print(f"Dagster home     : {instance.root_directory}  (browse it with `make ui`)")
    print(f"{study.name} finished in {time.perf_counter() - t0:.1f} s")
    if scan.refused:
        print(f"{len(scan.refused)} landing directories were refused (named above): exit status 1")
    return 1 if bad or scan.refused else 0


def cmd_demo(args: argparse.Namespace) -> int:
    home = _home(args)
    truth = home.root_dir / "simulator_truth"
    status = 0
    for study in _studies(args.study):
        summary = study.simulate(
            home.landing, truth, scale=args.scale, seed=args.seed, workers=args.workers
        )
        if summary.partitions:
            print(f"{study.name}: simulated the '{args.scale}' cohort (seed {args.seed})")
            for where, n in sorted(summary.partitions.items()):
                print(f"  {where:<12} {n:>6} {study.unit}s (SIMULATED data)")
        else:
            print(f"{study.name}: landing already holds its batches, nothing re-simulated")
        first = _run_study(args, home, study)
        status = max(status, first)
        if first:
            continue  # the follow-up shows a change against a successful audit only
        later = study.land_demo_followup(home.landing, truth, scale=args.scale)
        if later.partitions:
            print(f"{study.name}: landed later batches ({later.what}); auditing again")
            for where, n in sorted(later.partitions.items()):
                print(f"  {where:<12} {n:>6} rows (SIMULATED data)")
            status = max(status, _run_study(args, home, study, changed=list(later.partitions)))
    print(f"simulator truth  : {truth}  (read by tests only, never by the audit)")
    return status


def cmd_audit(args: argparse.Namespace) -> int:
    problems = _input_problems(args)
    for problem in problems:
        print(f"clinaudit {args.command}: {problem}", file=sys.stderr)
    if problems:
        return 2
    (study,) = _studies(args.study)
    return _run_study(args, _home(args), study)


def cmd_simulate(args: argparse.Namespace) -> int:
    truth = Path(args.truth)
    for study in _studies(args.study):
        summary = study.simulate(
            Path(args.landing), truth, scale=args.scale, seed=args.seed, workers=args.workers
        )
        for where, n in sorted(summary.partitions.items()):
            print(f"{study.name:<14} {where:<12} {n:>6} {study.unit}s")
    return 0


def cmd_init_home(args: argparse.Namespace) -> int:
    from clinaudit.orchestration.runner import POOL_LIMITS, apply_pool_limits, init_home

    home = _home(args)
    dagster_home = init_home(home, profile=args.profile)
    print(dagster_home)
    if args.profile != "scale":
        return 0
    if not os.environ.get("CLINAUDIT_PG_HOST"):
        print(
            f"pool limits {POOL_LIMITS} not set yet (until then every pool runs one step at a "
            f"time): source {home.root_dir / 'services' / 'env.sh'} (make services-up) and run "
            "`clinaudit init-home --profile scale` again"
        )
        return 0
    os.environ.setdefault("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance:
        print(f"pool limits set: {apply_pool_limits(instance)}")
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    from clinaudit.orchestration.services import (
        ServiceError,
        services_down,
        services_status,
        services_up,
    )

    root = _home(args).root_dir.resolve()
    try:
        if args.action == "up":
            env = services_up(root)
            print(f"PostgreSQL  127.0.0.1:{env['CLINAUDIT_PG_PORT']}  db {env['CLINAUDIT_PG_DB']}")
            print(f"SeaweedFS   {env['CLINAUDIT_S3_ENDPOINT']}  store {env['CLINAUDIT_STORE_URL']}")
            print(f"Redis       {env['CLINAUDIT_REDIS_URL'].rsplit('@', 1)[1]}")
            print(f"environment (secrets, 0600): source {root / 'services' / 'env.sh'}")
        elif args.action == "down":
            stopped = services_down(root)
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        else:
            for name, pid in services_status(root).items():
                print(f"{name:<10} {'running, pid ' + str(pid) if pid else 'stopped'}")
    except ServiceError as err:
        print(f"clinaudit services {args.action}: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from clinaudit.reporting.verify import main as verify_main

    return verify_main(args.rest)


def cmd_portal(args: argparse.Namespace) -> int:
    from clinaudit.portal.server import main as portal_main

    return portal_main(args.rest)


def _study_choices(include_all: bool) -> list[str]:
    from clinaudit.studies import registered_studies

    names = [s.name for s in registered_studies()]
    return ["all", *names] if include_all else names


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
        p.add_argument("--arch", help="architecture of an embedded image model (e.g. resnet10t)")
        p.add_argument("--input-size", type=int, help="input side of an embedded image model")
        p.add_argument("--epochs", type=int, help="training epochs of an embedded model")
        p.add_argument(
            "--backbone",
            help="pretrained model package an embedded model is fine-tuned from (studies that "
            "fine-tune, e.g. cxr_triage)",
        )
        p.add_argument(
            "--base-model",
            help="local directory of a real vision-language checkpoint (PaliGemma, LLaVA, "
            "Idefics3 / SmolVLM; saved with save_pretrained) the embedded VQA model is "
            "LoRA-tuned from, read with local_files_only; its class is read from its "
            "config.json (peds_vqa)",
        )

    def study_option(p: argparse.ArgumentParser, *, include_all: bool, required: bool) -> None:
        names = _study_choices(include_all)
        p.add_argument(
            "--study",
            choices=names,
            required=required,
            default="all" if include_all else None,
            help=f"one of {', '.join(names)}",
        )

    home_help = "run-time directory (default $CLINAUDIT_HOME or ./var)"
    p = sub.add_parser("demo", help="simulate the embedded cohorts and run the pipeline on them")
    p.add_argument("--home", help=home_help)
    p.add_argument("--scale", default="demo", help="tiny | demo | full (default demo)")
    p.add_argument("--seed", type=int, default=0)
    study_option(p, include_all=True, required=False)
    run_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("audit", help="audit a model on landed data (your own data)")
    study_option(p, include_all=False, required=True)
    p.add_argument("--landing", required=True, help="landing directory (<landing>/<study dir>/..)")
    p.add_argument("--out", required=True, help="run-time directory for everything produced")
    p.add_argument("--model", help="vendor model package directory (docs/model_package.md)")
    p.add_argument(
        "--predictions",
        help="vendor scores: a directory with one <site>.csv per site, or one CSV file",
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="operating threshold of vendor scores that come without one (alert at score >= it)",
    )
    p.add_argument(
        "--thresholds",
        help="with --predictions: JSON file of the vendor's operating threshold per output, "
        '{"<finding>": <threshold>, ...} (docs/model_package.md)',
    )
    p.add_argument("--sites", help="comma-separated subset of sites / hospitals")
    p.add_argument("--policy", help="policy YAML (default: the policy shipped with the study)")
    run_options(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("ingest", help="only validate + de-identify the landed batches")
    study_option(p, include_all=False, required=True)
    p.add_argument("--home", help=home_help)
    p.add_argument("--landing", help="landing directory (default <home>/landing)")
    p.add_argument("--sites", help="comma-separated subset of sites / hospitals")
    run_options(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("simulate", help="write a simulated cohort into a landing directory")
    study_option(p, include_all=True, required=False)
    p.add_argument("--landing", required=True)
    p.add_argument("--truth", required=True, help="where the simulator's truth sidecars go")
    p.add_argument("--scale", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "verify",
        help="verify a signed audit package PDF (exit 1 on any failure)",
        add_help=False,
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "portal",
        help="serve the read-only committee portal of the signed packages (clinaudit portal -h)",
        add_help=False,
    )
    p.set_defaults(func=cmd_portal)

    p = sub.add_parser("init-home", help="create the run-time tree and dagster.yaml")
    p.add_argument("--home", help=home_help)
    p.add_argument(
        "--profile",
        choices=["local", "scale"],
        default="local",
        help="local: SQLite, runs as local processes (default); scale: PostgreSQL, queued runs on "
        "Celery workers, values on S3 (docs/operations.md)",
    )
    p.set_defaults(func=cmd_init_home)

    p = sub.add_parser(
        "services", help="start / stop the scale profile's services (loopback only, data in <home>)"
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--home", help=home_help)
    p.set_defaults(func=cmd_services)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["verify"]:
        # `clinaudit verify` is the verifier's own command line (its --help lists the options).
        return cmd_verify(argparse.Namespace(rest=argv[1:]))
    if argv[:1] == ["portal"]:  # likewise the portal's (docs/portal.md)
        return cmd_portal(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
