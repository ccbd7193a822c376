"""A fleet of sites through one profile's real processes, measured from the event log.

``make scale-smoke`` (``tests/test_scale_smoke.py``) and ``bench/bench_profiles.py`` use this: a
home of its own, the profile's services (``scale``: PostgreSQL, SeaweedFS and Redis from
``orchestration/services.py``), a baseline audit in this process (``PipelineRunner``, as
``make demo`` does), then ``n_sites`` new simulated sites landed at once and handled by the
processes a deployment runs -- ``dagster-daemon`` (landing sensor -> run queue -> automation
sensor, run monitoring, run retries) and, in the ``scale`` profile, Celery run workers -- until
the signed package covers every site. What happened is read back from the instance's run and
event records (:class:`FleetReport`), not from the processes' word.

The fleet's study is ``multisite_cxr`` (sites are its partitions); its embedded model trains at
the fleet's scale (``CLINAUDIT_MULTISITE_CXR_TRAINING``), so the daemon, its code server and the
workers fingerprint the model the baseline built.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster._core.storage.dagster_run import RunRecord

from clinaudit.assets.resources import ClinauditHome, StudyModel, read_stored, study_env
from clinaudit.orchestration.automation import SOURCE_STAGES, automation_sensor_name
from clinaudit.orchestration.definitions import EXECUTOR_ENV, study_assets
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

STUDY = "multisite_cxr"
#: Audited before the fleet lands: the reference site (the embedded model trains on it) and one
#: deployment site.
BASELINE_SITES = ("vendor_dev", "site_a")
#: Where the ``scale`` fleet moves ``<artifacts>/models`` after the baseline (see ``baseline``).
MODELS_ASIDE = "models-trained-by-the-baseline"
#: The deployment-site profiles the fleet's sites cycle through (renamed ``site_01`` ...).
FLEET_PROFILES = ("site_a", "site_b", "site_c", "site_d")
#: Text that means the instance's storage failed under concurrency.
STORAGE_ERRORS = re.compile(r"database is locked|OperationalError")
_IN_FLIGHT = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)
_RUN_ENDS = (
    dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
)
_STEP_ENDS = (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE)


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


@dataclass(frozen=True)
class Interval:
    """One run's or one step's time span (seconds since the epoch)."""

    name: str
    start: float
    end: float


def max_overlap(intervals: Sequence[Interval]) -> int:
    """The largest number of ``intervals`` open at one instant (an end before a start at a tie)."""
    points = sorted([(i.start, 1) for i in intervals] + [(i.end, -1) for i in intervals])
    now = peak = 0
    for _, delta in points:
        now += delta
        peak = max(peak, now)
    return peak


@dataclass
class FleetReport:
    """What the instance recorded of one fleet run."""

    profile: str
    sites: list[str]
    seconds: float
    runs: dict[str, str]
    max_in_flight: int
    max_executing: int
    pool_peaks: dict[str, int]
    storage_errors: list[str]
    killed: str | None = None
    retries: dict[str, tuple[str, str]] = field(default_factory=dict)
    packages: list[str] = field(default_factory=list)
    baseline_s: float = 0.0
    landing_s: float = 0.0

    @property
    def sites_per_minute(self) -> float:
        return len(self.sites) / (self.seconds / 60.0)

    def failed_runs(self) -> list[str]:
        return [r for r, status in self.runs.items() if status != "SUCCESS"]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for status in self.runs.values():
            counts[status] = counts.get(status, 0) + 1
        return (
            f"{self.profile}: {len(self.sites)} sites in {self.seconds:.0f} s = "
            f"{self.sites_per_minute:.2f} sites/min (daemon start -> signed package covering every "
            f"site); runs {counts}; most runs in flight {self.max_in_flight}, executing "
            f"{self.max_executing}; pool peaks {self.pool_peaks}; baseline "
            f"{self.baseline_s:.0f} s, landing {self.landing_s:.0f} s"
        )


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
            filters=dg.RunsFilter(created_after=_utc(self.started_at))
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

    def wait_settled(self, on_poll: Callable[[Fleet], None] | None = None) -> float:
        """Poll (every 0.5 s; ``on_poll`` each time) until :meth:`settled`; returns the seconds
        since the daemon started. Raises FleetError naming the state at the timeout, or a
        process that exited."""
        deadline = self.started_at + self.settings.settle_timeout_s
        next_check = 0.0
        while time.time() < deadline:
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead:
                raise FleetError(f"processes exited: {dead} (logs in {self.logs})")
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
        log and the processes' logs; packages published to the store."""
        instance = self._instance
        pools = {
            a.op.name: a.op.pool
            for a in study_assets(self.study)
            if getattr(a, "op", None) is not None and a.op.pool
        }
        in_flight, executing, steps = [], [], {p: [] for p in set(pools.values())}
        errors: list[str] = []
        runs, retries = {}, {}
        for record in self.run_records():
            run = record.dagster_run
            runs[run.run_id] = run.status.value
            parent = run.tags.get("dagster/parent_run_id")
            if parent:
                retries[parent] = (run.run_id, run.status.value)
            events = instance.all_logs(run.run_id)
            times: dict[str, float] = {}
            open_steps: dict[str, float] = {}
            for e in events:
                text = e.message or ""
                if e.dagster_event is not None:
                    et = e.dagster_event.event_type
                    if et == dg.DagsterEventType.RUN_STARTING:
                        times["starting"] = e.timestamp
                    elif et == dg.DagsterEventType.RUN_START:
                        times["start"] = e.timestamp
                    elif et in _RUN_ENDS:
                        times["end"] = e.timestamp
                    elif et == dg.DagsterEventType.STEP_START:
                        open_steps[e.step_key or ""] = e.timestamp
                    elif et in _STEP_ENDS and (e.step_key or "") in open_steps:
                        key = e.step_key or ""
                        if key in pools:
                            steps[pools[key]].append(
                                Interval(f"{run.run_id}:{key}", open_steps.pop(key), e.timestamp)
                            )
                    error = getattr(e.dagster_event.event_specific_data, "error", None)
                    if error is not None:
                        text += " " + error.to_string()
                if STORAGE_ERRORS.search(text):
                    errors.append(f"run {run.run_id}: {text[:300]}")
            end = times.get("end", time.time())
            for key, began in open_steps.items():  # a step the run never finished (killed)
                if key in pools:
                    steps[pools[key]].append(Interval(f"{run.run_id}:{key}", began, end))
            if "starting" in times or "start" in times:
                first = times.get("starting", times.get("start", end))
                in_flight.append(Interval(run.run_id, first, end))
            if "start" in times:
                executing.append(Interval(run.run_id, times["start"], end))
        for log in sorted(self.logs.glob("*.log")):
            for n, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
                if STORAGE_ERRORS.search(line):
                    errors.append(f"{log.name}:{n}: {line[:300]}")
        return FleetReport(
            profile=self.settings.profile,
            sites=list(self.sites),
            seconds=seconds,
            runs=runs,
            max_in_flight=max_overlap(in_flight),
            max_executing=max_overlap(executing),
            pool_peaks={p: max_overlap(v) for p, v in sorted(steps.items())},
            storage_errors=errors,
            retries=retries,
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


class RunKiller:
    """Kills (SIGKILL) the process of the first partition run seen executing a step on a run
    worker: what a worker lost mid-run looks like to run monitoring. Only a process whose parent
    is one of the fleet's workers is ever signalled."""

    def __init__(self) -> None:
        self.killed: str | None = None
        self.pid: int | None = None

    def __call__(self, fleet: Fleet) -> None:
        if self.killed is not None:
            return
        instance = fleet._instance
        workers = {p.pid for n, p in fleet.procs.items() if n.startswith("worker")}
        started = instance.get_run_records(
            filters=dg.RunsFilter(
                statuses=[dg.DagsterRunStatus.STARTED],
                created_after=_utc(fleet.started_at),
            )
        )
        for record in started:
            run = record.dagster_run
            if "dagster/partition" not in run.tags or "dagster/parent_run_id" in run.tags:
                continue
            events = instance.all_logs(run.run_id)
            if not any(
                e.dagster_event is not None
                and e.dagster_event.event_type == dg.DagsterEventType.STEP_START
                for e in events
            ):
                continue
            pids = {
                int(e.dagster_event.engine_event_data.metadata["pid"].value)
                for e in events
                if e.dagster_event is not None
                and e.dagster_event.event_type == dg.DagsterEventType.ENGINE_EVENT
                and "pid" in (e.dagster_event.engine_event_data.metadata or {})
            }
            for pid in pids:
                if _parent_pid(pid) in workers:
                    os.kill(pid, signal.SIGKILL)
                    self.killed, self.pid = run.run_id, pid
                    return


def _parent_pid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^PPid:\s+(\d+)", status, re.M)
    return int(match.group(1)) if match else None


def _utc(ts: float) -> Any:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)
