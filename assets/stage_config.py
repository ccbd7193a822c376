"""Run configuration of the study stages: a Dagster ``Config`` per study options dataclass.

A study declares each stage's settings as a frozen dataclass (``ingest_options``,
``evaluate_options``, ``MitigationStage.options_type``); its fields become the stage's run
config (Dagster UI launchpad, ``run_config``) and are converted back into the dataclass for the
study function. Defaults live in the dataclass only.

No ``from __future__ import annotations``: Dagster reads the built classes from annotations.
"""

import dataclasses
from typing import Any

import dagster as dg

from clinaudit.studies.base import Study

#: Owners of every asset of the project (shown in the Dagster UI).
OWNERS = ["team:clinical-ai-governance"]


def config_class(name: str, options_type: type | None) -> type[dg.Config]:
    """A Dagster ``Config`` whose fields are those of the frozen dataclass ``options_type``."""
    namespace: dict[str, Any] = {"__annotations__": {}, "__module__": __name__}
    for f in dataclasses.fields(options_type) if options_type else ():
        namespace["__annotations__"][f.name] = f.type if not isinstance(f.type, str) else Any
        namespace[f.name] = f.default
    return type(name, (dg.Config,), namespace)


def options_of(study: Study, options_type: type | None, config: dg.Config) -> Any:
    """The study's options dataclass from a stage's run config."""
    return study.options(options_type, config.model_dump())


#: Concurrency pools (Dagster ``pool=``): no limit on the ``local`` profile; the ``scale``
#: profile sets ``signing`` to 1 (the signing key lives only where signing runs) and
#: ``inference`` to its workers' capacity.
INFERENCE_POOL = "inference"
SIGNING_POOL = "signing"
