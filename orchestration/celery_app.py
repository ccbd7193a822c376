"""The Celery app of the ``scale`` profile's run workers (docs/operations.md).

Start a worker with ``celery -A clinaudit.orchestration.celery_app worker -Q dagster
--concurrency 1`` in the environment of ``<home>/services/env.sh``: the broker and result
backend come from ``CLINAUDIT_REDIS_URL`` (never from a file), and the tasks are dagster-celery's
own (``execute_job`` / ``resume_job``, what ``CeleryRunLauncher`` sends: one whole run per task).
"""

from __future__ import annotations

import os

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
        "config_source": dict(DEFAULT_CONFIG),
        "task_default_queue": "dagster",
    }
)
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)
