"""The scale profile's run launcher: dagster-celery's, with the resume of a lost run fixed.

No broker is contacted: the task is captured where the library would send it, and the Celery
state the library would read is given.
"""

from __future__ import annotations

import time
from typing import Any

import dagster as dg
import pytest
from dagster._core.launcher import CheckRunHealthResult, ResumeRunContext, WorkerStatus
from dagster._grpc.types import ResumeRunArgs
from dagster._serdes import unpack_value
from dagster_celery.launcher import CeleryRunLauncher as LibraryLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

from clinaudit.orchestration.celery_launcher import (
    RESUME_SENT_TAG,
    RESUME_TASK_TAG,
    CeleryRunLauncher,
)


@dg.op
def noop() -> None:
    pass


@dg.job(executor_def=dg.in_process_executor)
def small_job() -> None:
    noop()


@pytest.fixture
def launched(monkeypatch, tmp_path) -> Any:
    """A launcher on a test instance, a finished run of ``small_job``, the tasks it sent."""
    sent: list[Any] = []

    def capture(self, run, task_signature, routing_key) -> None:
        sent.append((task_signature, routing_key))
        self._instance.add_run_tags(run.run_id, {DAGSTER_CELERY_TASK_ID_TAG: f"task-{len(sent)}"})

    monkeypatch.setattr(LibraryLauncher, "_launch_celery_task_run", capture)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        launcher = CeleryRunLauncher(
            default_queue="dagster", broker="memory://", backend="cache+memory://"
        )
        launcher.register_instance(instance)
        run = dg.reconstructable(small_job)
        result = dg.execute_job(run, instance=instance)
        yield launcher, instance, instance.get_run_by_id(result.run_id), sent


def test_resume_sends_the_keyword_the_resume_task_takes(launched) -> None:
    launcher, instance, run, sent = launched
    launcher.resume_run(ResumeRunContext(dagster_run=run, workspace=None, resume_attempt_number=1))
    [(signature, routing_key)] = sent
    assert routing_key == "resume_job"
    assert set(signature.kwargs) == {"resume_job_args_packed"}  # the library sends another name
    args = unpack_value(signature.kwargs["resume_job_args_packed"], as_type=ResumeRunArgs)
    assert args.run_id == run.run_id
    tags = instance.get_run_by_id(run.run_id).tags
    assert tags[RESUME_TASK_TAG] == tags[DAGSTER_CELERY_TASK_ID_TAG] == "task-1"
    assert abs(float(tags[RESUME_SENT_TAG]) - time.time()) < 60


def _health(monkeypatch, launcher, run, state: str) -> CheckRunHealthResult:
    statuses = {"PENDING": WorkerStatus.UNKNOWN, "FAILURE": WorkerStatus.FAILED}
    result = CheckRunHealthResult(statuses[state], f"Unknown task status: {state}")
    monkeypatch.setattr(LibraryLauncher, "check_run_worker_health", lambda self, r: result)
    return launcher.check_run_worker_health(run)


def test_a_queued_resume_task_is_running_until_its_timeout(monkeypatch, launched) -> None:
    launcher, instance, run, _ = launched
    # A first-launch task still PENDING stays UNKNOWN (the library's verdict).
    assert _health(monkeypatch, launcher, run, "PENDING").status == WorkerStatus.UNKNOWN
    launcher.resume_run(ResumeRunContext(dagster_run=run, workspace=None, resume_attempt_number=1))
    resumed = instance.get_run_by_id(run.run_id)
    health = _health(monkeypatch, launcher, resumed, "PENDING")
    assert health.status == WorkerStatus.RUNNING and "waits for a worker" in health.msg
    # A lost resumed task is still failed at once.
    assert _health(monkeypatch, launcher, resumed, "FAILURE").status == WorkerStatus.FAILED
    stale = f"{time.time() - launcher.resume_queue_timeout_s - 5:.3f}"
    instance.add_run_tags(run.run_id, {RESUME_SENT_TAG: stale})
    late = _health(monkeypatch, launcher, instance.get_run_by_id(run.run_id), "PENDING")
    assert late.status == WorkerStatus.FAILED and "not started by any worker" in late.msg
