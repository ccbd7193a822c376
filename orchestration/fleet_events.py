"""What a fleet run did, read from the instance's run and event records (``fleet.py``).

Runs in flight (launched, not finished) and executing, per-pool step overlap from step start /
end events, storage errors in event messages and the processes' logs; and :class:`RunKiller`,
which kills a run's process on a run worker mid-step, as a lost worker would.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from dagster._core.storage.dagster_run import RunRecord

if TYPE_CHECKING:
    from clinaudit.orchestration.fleet import Fleet

#: Text that means the instance's storage failed under concurrency.
STORAGE_ERRORS = re.compile(r"database is locked|OperationalError")
_RUN_ENDS = (
    dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
)
_STEP_ENDS = (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE)


def utc(ts: float) -> datetime.datetime:
    """Seconds since the epoch as an aware UTC datetime (run filters take those)."""
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


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


@dataclass
class RunsSeen:
    """Per run: status, retries (parent -> (retry, status)); the runs' in-flight and executing
    intervals; per pool, its steps' intervals; storage errors in the event log."""

    runs: dict[str, str] = field(default_factory=dict)
    retries: dict[str, tuple[str, str]] = field(default_factory=dict)
    in_flight: list[Interval] = field(default_factory=list)
    executing: list[Interval] = field(default_factory=list)
    steps: dict[str, list[Interval]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def read_runs(
    instance: dg.DagsterInstance, records: Iterable[RunRecord], pools: Mapping[str, str]
) -> RunsSeen:
    """Read ``records``' event logs; ``pools``: step key -> pool of the steps to follow.

    A run is in flight from RUN_STARTING (the queue launched it) and executing from RUN_START,
    both until its end event (now, if it has none); a step from STEP_START to its success or
    failure, or to the run's end when it never finished (its process was killed).
    """
    seen = RunsSeen(steps={p: [] for p in set(pools.values())})
    for record in records:
        run = record.dagster_run
        seen.runs[run.run_id] = run.status.value
        parent = run.tags.get("dagster/parent_run_id")
        if parent:
            seen.retries[parent] = (run.run_id, run.status.value)
        times: dict[str, float] = {}
        open_steps: dict[str, float] = {}
        for e in instance.all_logs(run.run_id):
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
                        seen.steps[pools[key]].append(
                            Interval(f"{run.run_id}:{key}", open_steps.pop(key), e.timestamp)
                        )
                error = getattr(e.dagster_event.event_specific_data, "error", None)
                if error is not None:
                    text += " " + error.to_string()
            if STORAGE_ERRORS.search(text):
                seen.errors.append(f"run {run.run_id}: {text[:300]}")
        end = times.get("end", time.time())
        for key, began in open_steps.items():  # a step the run never finished (killed)
            if key in pools:
                seen.steps[pools[key]].append(Interval(f"{run.run_id}:{key}", began, end))
        if "starting" in times or "start" in times:
            first = times.get("starting", times.get("start", end))
            seen.in_flight.append(Interval(run.run_id, first, end))
        if "start" in times:
            seen.executing.append(Interval(run.run_id, times["start"], end))
    return seen


def log_errors(logs: Path) -> list[str]:
    """``"<log>:<line>: <text>"`` of every storage error in ``logs/*.log``."""
    errors = []
    for log in sorted(logs.glob("*.log")):
        for n, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            if STORAGE_ERRORS.search(line):
                errors.append(f"{log.name}:{n}: {line[:300]}")
    return errors


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
                created_after=utc(fleet.started_at),
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
