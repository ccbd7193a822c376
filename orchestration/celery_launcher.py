"""The ``scale`` profile's run launcher: dagster-celery's ``CeleryRunLauncher``, resume fixed.

Two defects of dagster-celery 0.29.27 stop run monitoring from resuming a run whose worker was
lost (both seen in ``make scale-smoke``):

* it sends a resumed run as ``resume_job.si(execute_job_args_packed=...)`` while its
  ``resume_job`` task takes ``resume_job_args_packed``: every resume fails with ``TypeError``;
* the resumed run stays STARTED while its task waits in Redis for a free worker, and the
  health check reports that waiting task (Celery state PENDING) as UNKNOWN, which run monitoring
  takes for a second lost worker: the run is failed before any worker could pick it up.

This subclass sends the keyword the task takes, tags the run with the resume task and its time,
and reports that task as running while it waits, for at most ``resume_queue_timeout_s``
(then failed, naming the task). Everything else is the library's. ``dagster.yaml``: ``module:
clinaudit.orchestration.celery_launcher``, ``class: CeleryRunLauncher``.
"""

from __future__ import annotations

import time

from dagster import DagsterRun
from dagster import _check as check
from dagster._core.launcher import CheckRunHealthResult, ResumeRunContext, WorkerStatus
from dagster._grpc.types import ResumeRunArgs
from dagster._serdes import pack_value
from dagster_celery.config import TASK_RESUME_JOB_NAME
from dagster_celery.launcher import CeleryRunLauncher as _LibraryLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG
from dagster_celery.tasks import create_resume_job_task

#: Run tags: the Celery task that resumes the run, and when it was sent (seconds since epoch).
RESUME_TASK_TAG = "clinaudit/resume_task_id"
RESUME_SENT_TAG = "clinaudit/resume_sent_at"


class CeleryRunLauncher(_LibraryLauncher):
    """``dagster_celery.launcher.CeleryRunLauncher`` whose ``resume_run`` works."""

    #: How long a resume task may wait for a free worker before the run is failed.
    resume_queue_timeout_s: float = 900.0

    def resume_run(self, context: ResumeRunContext) -> None:
        run = context.dagster_run
        args = ResumeRunArgs(
            job_origin=check.not_none(run.job_code_origin),
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
            set_exit_code_on_failure=True,
        )
        task = create_resume_job_task(self.celery)
        self._launch_celery_task_run(
            run=run,
            task_signature=task.si(resume_job_args_packed=pack_value(args)),
            routing_key=TASK_RESUME_JOB_NAME,
        )
        sent = check.not_none(self._instance.get_run_by_id(run.run_id))
        self._instance.add_run_tags(
            run.run_id,
            {
                RESUME_TASK_TAG: sent.tags[DAGSTER_CELERY_TASK_ID_TAG],
                RESUME_SENT_TAG: f"{time.time():.3f}",
            },
        )

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        result = super().check_run_worker_health(run)
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        queued = result.status == WorkerStatus.UNKNOWN and "PENDING" in (result.msg or "")
        if not (queued and task_id and task_id == run.tags.get(RESUME_TASK_TAG)):
            return result
        waited = time.time() - float(run.tags.get(RESUME_SENT_TAG, "0"))
        if waited <= self.resume_queue_timeout_s:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"resume task {task_id} waits for a worker ({waited:.0f} s)"
            )
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"resume task {task_id} was not started by any worker in {waited:.0f} s "
            f"(limit {self.resume_queue_timeout_s:.0f} s): are the run workers up?",
        )
