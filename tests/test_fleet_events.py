"""What the scale smoke asserts from the event log: overlaps, run and step intervals, errors."""

from __future__ import annotations

import threading
from pathlib import Path

import dagster as dg
import pytest

from clinaudit.orchestration.fleet import Fleet, FleetError
from clinaudit.orchestration.fleet_events import Interval, log_errors, max_overlap, read_runs


def test_max_overlap_counts_an_end_before_a_start_at_the_same_instant() -> None:
    assert max_overlap([]) == 0
    spans = [Interval("a", 0, 2), Interval("b", 2, 3), Interval("c", 1, 2.5)]
    assert max_overlap(spans) == 2  # a ends as b starts: a, c then c, b
    assert max_overlap([Interval("a", 0, 5), Interval("b", 1, 4), Interval("c", 2, 3)]) == 3


@dg.op(pool="signing")
def sign() -> None:
    pass


@dg.op
def other() -> None:
    pass


@dg.job(executor_def=dg.in_process_executor)
def two_steps() -> None:
    sign()
    other()


def test_runs_and_pooled_steps_are_read_from_the_event_log(tmp_path: Path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        first = two_steps.execute_in_process(instance=instance)
        second = two_steps.execute_in_process(instance=instance)
        records = instance.get_run_records(dg.RunsFilter(run_ids=[first.run_id, second.run_id]))
        seen = read_runs(instance, records, {"sign": "signing"})
    assert seen.runs == {first.run_id: "SUCCESS", second.run_id: "SUCCESS"}
    assert {i.name for i in seen.executing} == {first.run_id, second.run_id}
    assert max_overlap(seen.executing) == 1  # one after the other
    assert [i.name.split(":")[1] for i in seen.steps["signing"]] == ["sign", "sign"]
    assert all(i.start <= i.end for i in seen.steps["signing"] + seen.executing)
    assert seen.retries == {} and seen.errors == []


def test_storage_errors_in_the_processes_logs_are_named_with_their_line(tmp_path: Path) -> None:
    (tmp_path / "daemon.log").write_text("ok\nsqlite3.OperationalError: database is locked\n")
    (tmp_path / "worker0.log").write_text("all fine\n")
    [error] = log_errors(tmp_path)
    assert error.startswith("daemon.log:2: sqlite3.OperationalError")


def test_the_report_waits_for_a_run_created_after_the_fleet_settled(tmp_path: Path) -> None:
    # The 5-minute source-observation cron can create a run between settled() and report();
    # read at once, it was counted NOT_STARTED, i.e. as a run that did not succeed.
    fleet = Fleet(tmp_path / "fleet")
    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        fleet.instance = instance
        late = instance.create_run_for_job(two_steps)
        assert late.status == dg.DagsterRunStatus.NOT_STARTED
        with pytest.raises(FleetError, match=rf"still in flight.*{late.run_id[:8]}.*NOT_STARTED"):
            fleet.wait_drained(timeout_s=0.6)

        # Another process ends it (here: reports it failed) while the fleet waits.
        finish = threading.Timer(0.5, lambda: instance.report_run_failed(late))
        finish.start()
        fleet.wait_drained(timeout_s=30.0)
        finish.join()
        seen = read_runs(instance, fleet.run_records(), {})
        assert seen.runs == {late.run_id: "FAILURE"}  # read in its final state
        fleet.instance = None
