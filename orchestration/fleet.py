"""A fleet of sites through one profile's real processes, measured from the event log.

``make scale-smoke`` (``tests/test_scale_smoke.py``) and ``bench/bench_profiles.py`` use this: a
home of its own, the profile's services (``scale``: PostgreSQL, SeaweedFS and Redis from
``orchestration/services.py``), a baseline audit in this process (``PipelineRunner``, as
``make demo`` does), then ``n_sites`` new simulated sites landed at once and handled by the
processes a deployment runs -- ``dagster-daemon`` (landing sensor -> run queue -> automation
sensor, run monitoring, run retries) and, in the ``scale`` profile, Celery run workers -- until
the signed package covers every site. What happened is read back from the instance's run and
event records (:class:`FleetReport`, ``orchestration/fleet_events.py``), not from the
processes' word.

The fleet's study is ``multisite_cxr`` (sites are its partitions); its embedded model trains at
the fleet's scale (``CLINAUDIT_MULTISITE_CXR_TRAINING``), so the daemon, its code server and the
workers fingerprint the model the baseline built.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster._core.storage.dagster_run import RunRecord

from clinaudit.assets.resources import ClinauditHome, StudyModel, read_stored, study_env
from clinaudit.orchestration.automation import SOURCE_STAGES, automation_sensor_name
from clinaudit.orchestration.definitions import EXECUTOR_ENV, study_assets
from clinaudit.orchestration.fleet_events import (
    FleetReport,
    RunKiller,
    log_errors,
    max_overlap,
    read_runs,
    utc,
)
from clinaudit.orchestration.runner import (
    PipelineRunner,
    apply_pool_limits,
    init_home,
    register_partitions,
)
from clinaudit.orchestration.services import (
    ServicePorts,
    free_port,
    free_s3_base,
    services_down,
    services_up,
)
from clinaudit.sources.cxr_simulator import simulate_cohort, simulate_site_batch
from clinaudit.sources.cxr_sites import DEFAULT_SITES, SCALES
from clinaudit.studies import get_study

__all__ = ["Fleet", "FleetError", "FleetReport", "FleetSettings", "RunKiller", "environment"]

STUDY = "multisite_cxr"
#: Audited before the fleet lands: the reference site (the embedded model trains on it) and one
#: deployment site.
BASELINE_SITES = ("vendor_dev", "site_a")
#: Where the ``scale`` fleet moves ``<artifacts>/models`` after the baseline (see ``baseline``).
MODELS_ASIDE = "models-trained-by-the-baseline"
#: The deployment-site profiles the fleet's sites cycle through (renamed ``site_01`` ...).
FLEET_PROFILES = ("site_a", "site_b", "site_c", "site_d")
_IN_FLIGHT = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


class FleetError(RuntimeError):
    """The fleet could not be set up or did not settle (the message says what and where)."""


@dataclass(frozen=True)
class FleetSettings:
    """What a fleet run does. ``workers``: Celery run workers (``scale`` only; one run each)."""

    profile: str = "scale"
    n_sites: int = 20
    workers: int = 4
    scale: str = "tiny"
    images_per_site: int | None = None
    seed: int = 0
    #: Seconds from the daemon's start until the package must cover every site.
    settle_timeout_s: float = 900.0


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored on exit."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Fleet:
    """One profile's processes over a home of their own (a context manager: services, the
    daemon and the workers stop on exit; the home's data is kept for inspection)."""

    def __init__(self, root: Path, settings: FleetSettings | None = None) -> None:
        self.settings = settings or FleetSettings()
        if self.settings.profile not in ("local", "scale"):
            raise FleetError(f"profile {self.settings.profile!r} is not one of local, scale")
        self.root = root.resolve()
        self.home = ClinauditHome(root=str(self.root))
        self.logs = self.root / "logs"
        self.study = get_study(STUDY)
        self.env: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.instance: dg.DagsterInstance | None = None
        self._env_cm: Any = None
        self.sites: list[str] = []
        self.started_at = 0.0

    @property
    def scale_profile(self) -> bool:
        return self.settings.profile == "scale"

    # ------------------------------------------------------------------ set-up / tear-down
    def __enter__(self) -> Fleet:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        env = {
            "CLINAUDIT_HOME": str(self.root),
            "DAGSTER_HOME": str(self.root / "dagster_home"),
            study_env(STUDY, "training"): json.dumps({"scale": self.settings.scale}),
            EXECUTOR_ENV: "in_process" if self.scale_profile else "multiprocess",
        }
        try:
            if self.scale_profile:
                ports = ServicePorts(
                    postgres=free_port(55432), redis=free_port(56379), s3_base=free_s3_base()
                )
                env.update(services_up(self.root, ports))
            self.env = env
            self._env_cm = environment(env)
            self._env_cm.__enter__()
            init_home(self.home, self.settings.profile)
            self.instance = dg.DagsterInstance.get()
            if self.scale_profile:
                apply_pool_limits(self.instance)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_processes()
        if self.instance is not None:
            self.instance.dispose()
            self.instance = None
        if self._env_cm is not None:
            self._env_cm.__exit__(None, None, None)
            self._env_cm = None
        if self.scale_profile:
            services_down(self.root)

    def _popen(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # the child keeps its own copy
        proc = subprocess.Popen(
            args,
            cwd=self.root,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_processes(self) -> None:
        """Start the run workers (``scale``) and ``dagster-daemon run``; ``started_at`` is now."""
        bin_dir = Path(sys.executable).parent
        workspace = self.root / "workspace.yaml"
        workspace.write_text(
            "load_from:\n  - python_module:\n      module_name: "
            "clinaudit.orchestration.definitions\n      attribute: defs\n"
            "      location_name: clinaudit\n",
            encoding="utf-8",
        )
        self.started_at = time.time()
        if self.scale_profile:
            for i in range(self.settings.workers):
                self._popen(
                    f"worker{i}",
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "clinaudit.orchestration.celery_app",
                        "worker",
                        "-Q",
                        "dagster",
                        "--concurrency",
                        "1",
                        "--pool",
                        "prefork",
                        "-n",
                        f"clinaudit{i}@%h",
                        "--loglevel",
                        "INFO",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                    ],  # fmt: skip
                )
        self._popen("daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)])

    def stop_processes(self, timeout: float = 30.0) -> None:
        """SIGTERM each process group, SIGKILL what is left after ``timeout``."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    # ------------------------------------------------------------------ the work
    def baseline(self) -> float:
        """Land and audit ``BASELINE_SITES`` in this process; returns the seconds it took.

        ``scale``: then ``<artifacts>/models`` is moved to ``<root>/`` :data:`MODELS_ASIDE`, as
        if the workers ran elsewhere: they must fetch the model from the store.
        """
        t0 = time.perf_counter()
        simulate_cohort(
            self.home.landing,
            truth_root=self.root / "truth",
            scale=self.settings.scale,
            sites=list(BASELINE_SITES),
            seed=self.settings.seed,
            workers=1,
        )
        model = StudyModel(study=STUDY, training={"scale": self.settings.scale})
        runner = PipelineRunner(
            self._instance, self.home, self.study, model=model, workers=1, console_level="WARNING"
        )
        runs = runner.run_all(register_partitions(self._instance, self.home, self.study))
        failed = [r for r in runs if r.blocking_failure or r.skipped_because]
        if failed:
            raise FleetError(f"the baseline audit failed: {failed}")
        if self.scale_profile:
            # Run workers on other machines never see the folder the model was trained in: move
            # it aside (kept), so the workers must fetch the package the model stage published.
            self.home.artifacts.joinpath("models").rename(self.root / MODELS_ASIDE)
        return time.perf_counter() - t0

    def land_sites(self) -> float:
        """Land ``n_sites`` new sites (``site_01`` ...); returns the seconds it took."""
        t0 = time.perf_counter()
        for i in range(self.settings.n_sites):
            base = DEFAULT_SITES[FLEET_PROFILES[i % len(FLEET_PROFILES)]]
            name = f"site_{i + 1:02d}"
            simulate_site_batch(
                self.home.landing,
                truth_root=self.root / "truth",
                site=dataclasses.replace(base, name=name),
                n_images=self.settings.images_per_site
                or SCALES[self.settings.scale].n_images(base.name),
                scale=self.settings.scale,
                seed=self.settings.seed,
                workers=1,
            )
            self.sites.append(name)
        return time.perf_counter() - t0

    @property
    def _instance(self) -> dg.DagsterInstance:
        if self.instance is None:
            raise FleetError("the fleet is not entered (use `with Fleet(...) as fleet`)")
        return self.instance

    def run_records(self) -> list[RunRecord]:
        """Every run created since the daemon started, oldest first."""
        records = self._instance.get_run_records(
            filters=dg.RunsFilter(created_after=utc(self.started_at))
        )
        return sorted(records, key=lambda r: r.create_timestamp.timestamp())

    def settled(self) -> bool:
        """No run in flight, every fleet site's latest partition run succeeded, and the latest
        package (made after them) decided every site."""
        records = self.run_records()
        if any(r.dagster_run.status in _IN_FLIGHT for r in records):
            return False
        latest: dict[str, RunRecord] = {}
        for r in records:
            part = r.dagster_run.tags.get("dagster/partition")
            if part is not None:
                latest[part] = r
        if any(
            s not in latest or latest[s].dagster_run.status != dg.DagsterRunStatus.SUCCESS
            for s in self.sites
        ):
            return False
        last_site_end = max(latest[s].end_time or 0.0 for s in self.sites)
        package = self._instance.fetch_materializations(
            dg.AssetKey([STUDY, "package"]), limit=1
        ).records
        if not package or package[0].timestamp < last_site_end:
            return False
        decisions = read_stored(self.home, f"{STUDY}/decisions")["decisions"]
        return set(self.sites) <= set(decisions["site"])

    def _check_processes(self) -> None:
        """Raise FleetError naming every fleet process (daemon, workers) that has exited."""
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise FleetError(f"processes exited: {dead} (logs in {self.logs})")

    def wait_settled(self, on_poll: Callable[[Fleet], None] | None = None) -> float:
        """Poll (every 0.5 s; ``on_poll`` each time) until :meth:`settled`; returns the seconds
        since the daemon started. Raises FleetError naming the state at the timeout, or a
        process that exited."""
        deadline = self.started_at + self.settings.settle_timeout_s
        next_check = 0.0
        while time.time() < deadline:
            self._check_processes()
            if on_poll is not None:
                on_poll(self)
            if time.time() >= next_check:
                if self.settled():
                    return time.time() - self.started_at
                next_check = time.time() + 3.0
            time.sleep(0.5)
        states = {r.dagster_run.run_id[:8]: r.dagster_run.status.value for r in self.run_records()}
        raise FleetError(
            f"not settled after {self.settings.settle_timeout_s:.0f} s: runs {states} "
            f"(logs in {self.logs})"
        )

    def wait_drained(self, timeout_s: float = 180.0) -> None:
        """Poll (every 0.5 s) until no run is in flight. A schedule or sensor may create a run
        between :meth:`settled` and :meth:`report` (the model and policy sources' 5-minute
        observation cron does); the report must see it finished, not count it as not succeeded
        while it is still queued. Raises FleetError naming the runs still in flight, or a
        process that exited."""
        deadline = time.time() + timeout_s
        while True:
            self._check_processes()
            flying = {
                r.dagster_run.run_id[:8]: r.dagster_run.status.value
                for r in self.run_records()
                if r.dagster_run.status in _IN_FLIGHT
            }
            if not flying:
                return
            if time.time() >= deadline:
                raise FleetError(
                    f"runs still in flight {timeout_s:.0f} s after the fleet settled: {flying} "
                    f"(logs in {self.logs})"
                )
            time.sleep(0.5)

    def sensor_ticks(self, name: str, after: float) -> int:
        """How many ticks sensor ``name`` completed (skipped or requested) after ``after``."""
        instance = self._instance
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.instigator_name == name:
                ticks = instance.get_ticks(
                    state.instigator_origin_id, state.selector_id, after=after, limit=100
                )
                done = (TickStatus.SKIPPED, TickStatus.SUCCESS)
                return sum(1 for t in ticks if t.status in done)
        return 0

    def reland_identical(self, site: str, batch: str = "b0002", ticks: int = 2) -> list[str]:
        """Land ``site``'s first batch again under ``batch`` (the same bytes, manifest last),
        wait for ``ticks`` landing-sensor and automation-sensor ticks, and return the ids of the
        study's runs created meanwhile that materialize something (none is expected). Not
        counted: runs that only observe the model and policy sources (their 5-minute cron may
        pass during the wait; an unchanged version starts nothing downstream) and other studies'
        runs."""
        landing = self.home.landing / self.study.landing_dir / site
        src, dst = landing / "b0001", landing / batch
        t0 = time.time()
        manifest = "manifest.json"
        for path in sorted(src.rglob("*")):
            if path.is_file() and path.name != manifest:
                (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dst / path.relative_to(src))
        shutil.copy2(src / manifest, dst / manifest)
        sensors = (f"{STUDY}_landing_sensor", automation_sensor_name(self.study))
        deadline = t0 + 180.0
        while any(self.sensor_ticks(s, t0) < ticks for s in sensors):
            if time.time() > deadline:
                raise FleetError(f"sensors {sensors} did not tick {ticks} times in 180 s")
            time.sleep(2.0)
        sources = {dg.AssetKey([STUDY, stage]) for stage in SOURCE_STAGES}
        started = []
        for record in self.run_records():
            run = record.dagster_run
            if record.create_timestamp.timestamp() < t0:
                continue
            selection = set(run.asset_selection or ())
            ours = run.job_name == f"{STUDY}_partition_job" or any(
                k.path[0] == STUDY for k in selection
            )
            if ours and not (selection and selection <= sources):
                started.append(run.run_id)
        return started

    # ------------------------------------------------------------------ what happened
    def report(self, seconds: float) -> FleetReport:
        """Runs, concurrency and pool peaks from the event log; storage errors from the event
        log and the processes' logs; packages published to the store. Waits first until no run
        is in flight (:meth:`wait_drained`), so every run is read in its final state; ``seconds``
        (the throughput) was measured when the fleet settled."""
        self.wait_drained()
        pools = {
            a.op.name: a.op.pool
            for a in study_assets(self.study)
            if getattr(a, "op", None) is not None and a.op.pool
        }
        seen = read_runs(self._instance, self.run_records(), pools)
        return FleetReport(
            profile=self.settings.profile,
            sites=list(self.sites),
            seconds=seconds,
            runs=seen.runs,
            max_in_flight=max_overlap(seen.in_flight),
            max_executing=max_overlap(seen.executing),
            pool_peaks={p: max_overlap(v) for p, v in sorted(seen.steps.items())},
            storage_errors=seen.errors + log_errors(self.logs),
            retries=seen.retries,
            packages=self.published_packages(),
        )

    def published_packages(self) -> list[str]:
        """The package folders published to the store (``scale``), as store URLs."""
        store = self.home.package_store
        if store is None:
            return []
        root = store / STUDY
        if not root.exists():
            return []
        base = self.env.get("CLINAUDIT_STORE_URL", "").rstrip("/")
        return sorted(f"{base}/packages/{STUDY}/{p.name}" for p in root.iterdir() if p.is_dir())
