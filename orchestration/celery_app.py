"""The Celery app of the ``scale`` profile's run workers (docs/operations.md).

Start a worker with ``celery -A clinaudit.orchestration.celery_app worker -Q dagster
--concurrency 1`` in the environment of ``<home>/services/env.sh``: the broker and result
backend come from ``CLINAUDIT_REDIS_URL`` (never from a file), and the tasks are dagster-celery's
own (``execute_job`` / ``resume_job``, what ``CeleryRunLauncher`` sends: one whole run per task).
"""

from __future__ import annotations

import multiprocessing.process as mp_process
import os

from celery.signals import worker_process_init
from dagster_celery.config import DEFAULT_CONFIG
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task

BROKER_ENV = "CLINAUDIT_REDIS_URL"

_url = os.environ.get(BROKER_ENV)
if not _url:
    raise RuntimeError(
        f"{BROKER_ENV} is not set: source <home>/services/env.sh (make services-up) or set it to "
        "redis://:<password>@<host>:<port>/0"
    )

app = make_app(
    {
        "broker": _url,
        "backend": _url,
        "include": [],
        # STARTED lets run monitoring tell a running task from one a killed worker lost
        # (CeleryRunLauncher.check_run_worker_health reads the task state).
        "config_source": {**DEFAULT_CONFIG, "task_track_started": True},
        "task_default_queue": "dagster",
    }
)
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)


@worker_process_init.connect
def _allow_child_processes(**_: object) -> None:
    """Let a run's steps start processes (ingest checks images in a process pool).

    Celery's prefork pool (billiard) marks its children daemonic, and Python refuses children
    to a daemonic process; and billiard's authentication key refuses to be pickled by the
    standard library's ``spawn`` start method. Undo both in the child (a fresh key of the
    standard library's type). The pool's parent still supervises the child: if it dies mid-run,
    the task fails with ``WorkerLostError``, which run monitoring reads through the launcher.
    """
    current = mp_process.current_process()
    current.daemon = False
    current._config["authkey"] = mp_process.AuthenticationString(os.urandom(32))
