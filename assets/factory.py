"""``build_study_assets(study)``: the Dagster asset graph of any registered study.

Every study gets the same stages (see :mod:`clinaudit.studies.base`), keyed ``<study>/<stage>``,
in asset group ``<study>``, with one dynamic partition per site / hospital
(``<study>_<partition_by>s``). Each asset body reads its inputs, calls one study function and
returns the value with metadata; the logic lives in the study package and the core. Resources:
``home``, ``table_io``, ``signer`` and ``<study>_model`` / ``<study>_policy``
(:mod:`clinaudit.assets.resources`).

This module deliberately has no ``from __future__ import annotations``: the run-config classes
are built per study and Dagster reads them from the functions' annotations.
"""

import warnings
from typing import Any

import dagster as dg
import pandas as pd

from clinaudit.audit.records import ModelRef
from clinaudit.studies.base import CheckOutcome, Study
from clinaudit.studies.ingest_checks import GENERIC_CHECKS, generic_outcomes
from clinaudit.validation.ingest_loop import ingest_partition, write_quarantine_reports
from clinaudit.validation.privacy import PhiLeakError

from .audit_stages import (
    decisions_asset,
    evidence_asset,
    mitigation_asset,
    monitoring_asset,
    package_asset,
)
from .stage_config import INFERENCE_POOL, OWNERS, config_class, options_of
from .stage_meta import metadata_values, stage_metadata

# Output(data_version=...) is marked beta in Dagster 1.13; it is the documented way to version data.
warnings.filterwarnings("ignore", message=r"Parameter `data_version`", category=dg.BetaWarning)
# Partitioned asset checks (a preview in 1.13) keep each partition's blocking checks to it.
warnings.filterwarnings(
    "ignore",
    message=r"Specifying a partitions_def on an AssetCheckSpec",
    category=dg.PreviewWarning,
)
# multi_observable_source_asset is beta in Dagster 1.13; it is how sources get owners.
warnings.filterwarnings(
    "ignore", message=r"Function `multi_observable_source_asset`", category=dg.BetaWarning
)

ALL = dg.AllPartitionMapping()
#: Stages that are partitioned (one run per site / hospital when new data lands).
PARTITION_STAGES = ("validated", "quarantine", "batches", "predictions", "partition_metrics")


def partitions_name(study: Study) -> str:
    """Name of the study's dynamic partitions definition, e.g. ``multisite_cxr_sites``."""
    return f"{study.name}_{study.partition_by}s"


def study_partitions(study: Study) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=partitions_name(study))


class StudyAssets:
    """The asset definitions of one study (``.assets``) and its keys and jobs."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.p = study.name
        self.partitions = study_partitions(study)
        self.model_res, self.policy_res = f"{self.p}_model", f"{self.p}_policy"
        self.mitigation_names = [f"mitigation_{m.name}" for m in study.mitigations]
        self.assets: list[dg.AssetsDefinition] = [
            self._sources(),
            self._ingest(),
            self._cohort(),
            self._model(),
            self._predictions(),
            *self._partition_metrics(),
            evidence_asset(self),
            *(mitigation_asset(self, i) for i in range(len(study.mitigations))),
            decisions_asset(self),
            monitoring_asset(self),
            package_asset(self),
        ]

    def data_ins(self) -> dict[str, dg.AssetIn]:
        """The inputs every cross-partition stage reads (all partitions, and the model)."""
        return {
            "validated": self.input("validated", all_partitions=True),
            "predictions": self.input("predictions", all_partitions=True),
            "batches": self.input("batches", all_partitions=True),
            "quarantine": self.input("quarantine", all_partitions=True),
            "model": self.input("model"),
        }

    def key(self, stage: str) -> dg.AssetKey:
        return dg.AssetKey([self.p, stage])

    def input(self, stage: str, *, all_partitions: bool = False) -> dg.AssetIn:
        return dg.AssetIn(key=self.key(stage), partition_mapping=ALL if all_partitions else None)

    def common(self, stage: str, description: str) -> dict[str, Any]:
        return {
            "key": self.key(stage),
            "group_name": self.p,
            "owners": OWNERS,
            "io_manager_key": "table_io",
            "description": description,
        }

    # ---------------------------------------------------------------- observed sources
    def _sources(self) -> dg.AssetsDefinition:
        study, model_res, policy_res = self.study, self.model_res, self.policy_res
        model_key, policy_key = self.key("model_source"), self.key("policy_source")
        specs = [
            dg.AssetSpec(
                model_key,
                group_name=self.p,
                owners=OWNERS,
                description="What is audited as configured (resource "
                f"{model_res}): the package's sha256, the scores files' sha256s or the embedded "
                "model's training settings. A new version re-resolves the model, re-scores every "
                "partition and re-audits.",
            ),
            dg.AssetSpec(
                policy_key,
                group_name=self.p,
                owners=OWNERS,
                description=f"The study's policy file (resource {policy_res}): data version = "
                "sha256 of the file bytes; parsed strictly, so an invalid edit fails here. A new "
                "version re-runs the audit stages and writes a new package.",
            ),
        ]

        @dg.multi_observable_source_asset(
            specs=specs,
            name=f"{self.p}__observe_sources",
            required_resource_keys={model_res, policy_res},
            can_subset=True,
        )
        def observe(context: dg.AssetExecutionContext):
            selected = context.selected_asset_keys
            if model_key in selected:
                version, meta = study.model_fingerprint(
                    getattr(context.resources, model_res).spec()
                )
                context.log.info(f"audited model: data version {version[:40]}")
                yield dg.ObserveResult(
                    asset_key=model_key,
                    data_version=dg.DataVersion(version),
                    metadata=metadata_values(meta),
                )
            if policy_key in selected:
                policy = getattr(context.resources, policy_res).load()
                yield dg.ObserveResult(
                    asset_key=policy_key,
                    data_version=dg.DataVersion(policy.sha256),
                    metadata={"path": dg.MetadataValue.path(policy.source), **policy.identity()},
                )

        return observe

    # ---------------------------------------------------------------- ingest (per partition)
    def _ingest(self) -> dg.AssetsDefinition:
        study, p = self.study, self.p
        specs = [
            dg.AssetCheckSpec(
                c.name,
                asset=self.key("validated"),
                partitions_def=self.partitions,
                blocking=c.blocking,
                description=c.description,
            )
            for c in (*GENERIC_CHECKS, *study.ingest_checks)
        ]
        blocking = {c.name for c in (*GENERIC_CHECKS, *study.ingest_checks) if c.blocking}
        config_type = config_class(f"{p}_IngestConfig", study.ingest_options)
        unit = study.unit

        @dg.multi_asset(
            name=f"{p}__ingest",
            outs={
                "validated": dg.AssetOut(
                    key=self.key("validated"),
                    io_manager_key="table_io",
                    owners=OWNERS,
                    description=f"Validated, de-identified {unit} table of one "
                    f"{study.partition_by}: every ready landed batch, checked row by row. PHI "
                    "never leaves this step.",
                ),
                "quarantine": dg.AssetOut(
                    key=self.key("quarantine"),
                    io_manager_key="table_io",
                    owners=OWNERS,
                    description="Quarantine records: file / row / column / check / message / fix "
                    "of every refused row or batch. Landed files are never modified.",
                ),
                "batches": dg.AssetOut(
                    key=self.key("batches"),
                    io_manager_key="table_io",
                    owners=OWNERS,
                    description="What ingest read, batch by batch: status, manifest content "
                    "hash, simulated flag and row counts (the package's provenance).",
                ),
            },
            partitions_def=self.partitions,
            group_name=p,
            check_specs=specs,
            can_subset=False,
            required_resource_keys={"home"},
        )
        def ingest(context: dg.AssetExecutionContext, config: config_type):
            home, partition = context.resources.home, context.partition_key
            options = options_of(study, study.ingest_options, config)
            key = home.pseudonym_secret()
            result = study.finish_partition(
                ingest_partition(
                    home.landing,
                    study.landing_dir,
                    partition,
                    ingest_batch=lambda ref: study.ingest_batch(ref, key=key, options=options),
                    empty_table=study.empty_table(),
                    sort_by=study.sort_by,
                )
            )
            leaks = study.privacy_problems(result.table) if len(result.table) else []
            if leaks:  # before anything is stored: a blocking check would come too late
                raise PhiLeakError(partition, leaks)
            reports = write_quarantine_reports(
                result.quarantine, home.quarantine, study.landing_dir
            )
            version = dg.DataVersion(result.data_version)
            meta = stage_metadata(study, "validated", result, partition=partition)
            meta["pseudonym_key"] = home.pseudonym_key_source()
            yield dg.Output(result.table, "validated", data_version=version, metadata=meta)
            yield dg.Output(
                result.quarantine,
                "quarantine",
                data_version=version,
                metadata={"n_records": len(result.quarantine), "reports": list(map(str, reports))},
            )
            yield dg.Output(result.batches, "batches", data_version=version)
            outcomes = [
                *generic_outcomes(result, options, study.privacy_problems),
                *study.check_partition(result, options),
            ]
            for outcome in outcomes:
                yield _check_result(outcome, self.key("validated"), outcome.name in blocking)

        return ingest

    # ---------------------------------------------------------------- cohort
    def _cohort(self) -> dg.AssetsDefinition:
        study = self.study

        @dg.asset(
            **self.common(
                "cohort",
                f"Cohort and data-quality summary of every {study.partition_by}: rows, "
                "demographics, quarantined records.",
            ),
            ins={
                "validated": self.input("validated", all_partitions=True),
                "quarantine": self.input("quarantine", all_partitions=True),
            },
        )
        def cohort(validated: dict, quarantine: dict) -> dg.Output[pd.DataFrame]:
            summary = study.cohort(validated, quarantine)
            return dg.Output(summary, metadata=stage_metadata(study, "cohort", summary))

        return cohort

    # ---------------------------------------------------------------- model
    def _model(self) -> dg.AssetsDefinition:
        study, model_res = self.study, self.model_res
        refs = study.training_partitions()
        ins = {}
        if refs:
            ins["reference"] = dg.AssetIn(
                key=self.key("validated"),
                partition_mapping=dg.SpecificPartitionsPartitionMapping(list(refs)),
            )

        @dg.asset(
            **self.common(
                "model",
                "The model under audit (a ModelRef record): a verified vendor package, vendor "
                "scores, or the embedded model; its identity, operating thresholds and card.",
            ),
            ins=ins,
            deps=[self.key("model_source"), self.key("policy_source")],
            required_resource_keys={model_res, self.policy_res, "home"},
        )
        def model(context: dg.AssetExecutionContext, **inputs: Any) -> dg.Output[ModelRef]:
            tables = inputs.get("reference") or {}
            if len(refs) > 1:  # several training partitions: one table, in the declared order
                reference = pd.concat([tables[p] for p in refs], ignore_index=True)
            else:
                reference = tables.get(refs[0]) if refs else None
            resolved = study.resolve_model(
                getattr(context.resources, model_res).spec(),
                reference=reference,
                dirs=context.resources.home.dirs(),
                log=context.log.info,
                policy=getattr(context.resources, self.policy_res).load(),
            )
            metadata = stage_metadata(study, "model", resolved)
            published = context.resources.home.publish_model(resolved)
            if published is not None:  # the scale profile: run workers fetch it from the store
                context.log.info(f"model package in the store: {published}")
                metadata["published_to"] = dg.MetadataValue.text(published)
            return dg.Output(
                resolved,
                data_version=dg.DataVersion(resolved.version()),
                metadata=metadata,
            )

        return model

    # ---------------------------------------------------------------- per-partition stages
    def _predictions(self) -> dg.AssetsDefinition:
        study, model_res = self.study, self.model_res
        ins = {"validated": self.input("validated"), "model": self.input("model")}
        if study.predict_reads_quarantine:
            ins["quarantine"] = self.input("quarantine")

        @dg.asset(
            **self.common(
                "predictions",
                f"One score per validated {study.unit} and target, with the identity of the "
                "model package (or scores file) that produced it.",
            ),
            partitions_def=self.partitions,
            ins=ins,
            required_resource_keys={model_res, "home"},
            # Scoring takes the CPU / GPU: the scale profile limits the pool (docs/operations.md).
            pool=INFERENCE_POOL,
        )
        def predictions(
            context: dg.AssetExecutionContext,
            validated: pd.DataFrame,
            model: ModelRef,
            **quarantine: pd.DataFrame,
        ) -> dg.Output[pd.DataFrame]:
            scores, facts = study.predict(
                context.resources.home.local_model(model),
                validated,
                partition=context.partition_key,
                spec=getattr(context.resources, model_res).spec(),
                dirs=context.resources.home.dirs(),
                log=context.log.info,
                **quarantine,
            )
            return dg.Output(scores, metadata=metadata_values(facts))

        return predictions

    def _partition_metrics(self) -> list[dg.AssetsDefinition]:
        study = self.study
        if type(study).partition_metrics is Study.partition_metrics:
            return []

        @dg.asset(
            **self.common(
                "partition_metrics",
                f"One {study.partition_by} on its own: discrimination and calibration with CIs "
                "(shown as soon as its run finishes; the audit itself is cross-partition).",
            ),
            partitions_def=self.partitions,
            ins={n: self.input(n) for n in ("validated", "predictions", "model")},
        )
        def partition_metrics(
            context: dg.AssetExecutionContext,
            validated: pd.DataFrame,
            predictions: pd.DataFrame,
            model: ModelRef,
        ) -> dg.Output[pd.DataFrame]:
            result = study.partition_metrics(
                validated, predictions, model, partition=context.partition_key
            )
            assert result is not None  # the study overrides partition_metrics
            table, facts = result
            return dg.Output(table, metadata=metadata_values(facts))

        return [partition_metrics]


def _check_result(
    outcome: CheckOutcome, asset_key: dg.AssetKey, blocking: bool
) -> dg.AssetCheckResult:
    error = outcome.severity == "error" and blocking
    return dg.AssetCheckResult(
        check_name=outcome.name,
        asset_key=asset_key,
        passed=bool(outcome.passed),
        severity=dg.AssetCheckSeverity.ERROR if error else dg.AssetCheckSeverity.WARN,
        metadata=metadata_values(outcome.metadata),
    )


def build_study_assets(study: Study) -> list[dg.AssetsDefinition]:
    """Every asset of ``study``, keyed ``<study>/<stage>`` in group ``<study>``."""
    return StudyAssets(study).assets


def partition_job(study: Study) -> Any:
    """The job a landing sensor starts for one partition: ingest (with its blocking checks),
    predictions and, where the study has them, partition metrics."""
    stages = ["validated", "predictions"]
    if type(study).partition_metrics is not Study.partition_metrics:
        stages.append("partition_metrics")
    selection = dg.AssetSelection.assets(*(dg.AssetKey([study.name, s]) for s in stages))
    return dg.define_asset_job(
        f"{study.name}_partition_job",
        selection=selection.required_multi_asset_neighbors(),
        description=f"One {study.partition_by}'s per-partition stages: ingest (with its blocking "
        f"checks), {', '.join(stages[1:])}. Started by the {study.name} landing sensor when a "
        "batch is ready.",
    )
