"""Helpers of the asset, sensor and automation tests: one study's assets and resources, and
materializing one of its stages in-process on a temporary instance."""

from __future__ import annotations

from typing import Any

import dagster as dg

from clinaudit.assets.resources import ClinauditHome, StudyModel, StudyPolicy, study_resources
from clinaudit.orchestration.definitions import study_assets
from clinaudit.studies import get_study


def resources(
    home: ClinauditHome,
    study: str,
    *,
    model: StudyModel | None = None,
    policy: StudyPolicy | None = None,
) -> dict[str, object]:
    """Every resource the study's assets use, around ``home``."""
    return study_resources(
        home,
        models={study: model} if model else None,
        policies={study: policy} if policy else None,
        studies=[study],
    )


def stage_asset(study: str, stage: str) -> dg.AssetsDefinition:
    """The asset definition that materializes ``<study>/<stage>``."""
    key = dg.AssetKey([study, stage])
    return next(a for a in study_assets(get_study(study)) if key in a.keys)


def materialize(
    home: ClinauditHome,
    instance: dg.DagsterInstance,
    study: str,
    stage: str,
    *,
    partition: str | None = None,
    run_config: dict[str, Any] | None = None,
    model: StudyModel | None = None,
    policy: StudyPolicy | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize one stage (one partition of it) like the runner does; never raises."""
    return dg.materialize(
        study_assets(get_study(study)),
        selection=[stage_asset(study, stage)],
        partition_key=partition,
        instance=instance,
        resources=resources(home, study, model=model, policy=policy),
        run_config=run_config,
        raise_on_error=False,
    )


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    """The run's asset-check evaluations by check name."""
    return {e.check_name: e for e in result.get_asset_check_evaluations()}
