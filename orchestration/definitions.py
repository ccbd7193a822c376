"""The Dagster code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here.

One loop over the study registry: every registered study gets its asset graph
(``assets.factory.build_study_assets``), its automation conditions, its partition job, its landing
sensor and its automation sensor. Nothing here names a study.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import dagster as dg

from clinaudit.assets.factory import build_study_assets, partition_job
from clinaudit.assets.resources import ClinauditHome, StudyModel, StudyPolicy, study_resources
from clinaudit.orchestration.automation import build_automation_sensor, with_automation
from clinaudit.orchestration.sensors import build_landing_sensor
from clinaudit.studies import Study, registered_studies


def study_assets(study: Study) -> list[dg.AssetsDefinition]:
    """The study's assets with its automation conditions."""
    return with_automation(build_study_assets(study), study)


def all_assets(studies: Sequence[Study] | None = None) -> list[dg.AssetsDefinition]:
    """Every asset of ``studies`` (default: every registered study)."""
    return [a for s in studies or registered_studies() for a in study_assets(s)]


#: How a run executes its steps: ``multiprocess`` (Dagster's default: one process per step) or
#: ``in_process`` (the ``scale`` profile's Celery workers run a whole run in their process).
EXECUTOR_ENV = "CLINAUDIT_RUN_EXECUTOR"
EXECUTORS = {"multiprocess": None, "in_process": dg.in_process_executor}


def run_executor(name: str | None = None) -> dg.ExecutorDefinition | None:
    """The executor named by ``name`` (default ``$CLINAUDIT_RUN_EXECUTOR``, else multiprocess).

    Raises
    ------
    ValueError
        For a name that is not one of ``multiprocess`` / ``in_process``.
    """
    name = name or os.environ.get(EXECUTOR_ENV) or "multiprocess"
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={name!r} is not one of {sorted(EXECUTORS)}")
    return EXECUTORS[name]


def build_defs(
    home: ClinauditHome | None = None,
    *,
    studies: Sequence[Study] | None = None,
    models: Mapping[str, StudyModel] | None = None,
    policies: Mapping[str, StudyPolicy] | None = None,
    executor: dg.ExecutorDefinition | None = None,
) -> dg.Definitions:
    """Build the project's ``Definitions``.

    Parameters
    ----------
    home : ClinauditHome, optional
        Run-time directories. By default ``$CLINAUDIT_HOME`` (else ``./var``) and the optional
        ``$CLINAUDIT_PSEUDONYM_KEY``, both read when a run uses them.
    studies : sequence of Study, optional
        The studies to serve (default: every registered study).
    models, policies : mapping, optional
        Study name -> model / policy resource; by default each study's resources read
        ``CLINAUDIT_<STUDY>_MODEL`` / ``_SCORES`` / ``_THRESHOLD`` / ``_POLICY`` when used, else
        audit the embedded model under the shipped policy.
    executor : ExecutorDefinition, optional
        Of every job (default: :func:`run_executor`, i.e. ``$CLINAUDIT_RUN_EXECUTOR``).
    """
    studies = list(studies or registered_studies())
    jobs = [partition_job(s) for s in studies]
    return dg.Definitions(
        assets=all_assets(studies),
        jobs=jobs,
        sensors=[
            sensor
            for study, job in zip(studies, jobs, strict=True)
            for sensor in (build_landing_sensor(study, job), build_automation_sensor(study))
        ],
        resources=study_resources(
            home or ClinauditHome(),
            models=models,
            policies=policies,
            studies=[s.name for s in studies],
        ),
        executor=executor or run_executor(),
    )


defs = build_defs()
