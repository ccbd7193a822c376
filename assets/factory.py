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

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd

from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.reporting.package import write_study_package
from clinaudit.reporting.provenance import AuditBundle, PolicyMismatchError, Provenance
from clinaudit.studies.base import AuditData, CheckOutcome, Study
from clinaudit.studies.ingest_checks import GENERIC_CHECKS, generic_outcomes
from clinaudit.validation.ingest_loop import ingest_partition, write_quarantine_reports
from clinaudit.validation.privacy import PhiLeakError

from .stage_meta import metadata_values, package_metadata, stage_metadata

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

OWNERS = ["team:clinical-ai-governance"]
ALL = dg.AllPartitionMapping()
#: Stages that are partitioned (one run per site / hospital when new data lands).
PARTITION_STAGES = ("validated", "quarantine", "batches", "predictions", "partition_metrics")


def partitions_name(study: Study) -> str:
    """Name of the study's dynamic partitions definition, e.g. ``multisite_cxr_sites``."""
    return f"{study.name}_{study.partition_by}s"


def study_partitions(study: Study) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=partitions_name(study))


def config_class(name: str, options_type: type | None) -> type[dg.Config]:
    """A Dagster ``Config`` whose fields are those of the frozen dataclass ``options_type``."""
    namespace: dict[str, Any] = {"__annotations__": {}, "__module__": __name__}
    for f in dataclasses.fields(options_type) if options_type else ():
        namespace["__annotations__"][f.name] = f.type if not isinstance(f.type, str) else Any
        namespace[f.name] = f.default
    return type(name, (dg.Config,), namespace)


def _options(study: Study, options_type: type | None, config: dg.Config) -> Any:
    return study.options(options_type, config.model_dump())


def _under_policy(tables: TableSet, policy: Any) -> TableSet:
    """The stage's tables with the identity of the policy they were computed under."""
    return tables.with_facts(**policy.identity())


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
            self._evidence(),
            *(self._mitigation(i) for i in range(len(study.mitigations))),
            self._decisions(),
            self._monitoring(),
            self._package(),
        ]

    def key(self, stage: str) -> dg.AssetKey:
        return dg.AssetKey([self.p, stage])

    def _in(self, stage: str, *, all_partitions: bool = False) -> dg.AssetIn:
        return dg.AssetIn(key=self.key(stage), partition_mapping=ALL if all_partitions else None)

    def _common(self, stage: str, description: str) -> dict[str, Any]:
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
            options = _options(study, study.ingest_options, config)
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
            **self._common(
                "cohort",
                f"Cohort and data-quality summary of every {study.partition_by}: rows, "
                "demographics, quarantined records.",
            ),
            ins={
                "validated": self._in("validated", all_partitions=True),
                "quarantine": self._in("quarantine", all_partitions=True),
            },
        )
        def cohort(validated: dict, quarantine: dict) -> dg.Output[pd.DataFrame]:
            summary = study.cohort(validated, quarantine)
            return dg.Output(summary, metadata=stage_metadata(study, "cohort", summary))

        return cohort

    # ---------------------------------------------------------------- model
    def _model(self) -> dg.AssetsDefinition:
        study, model_res = self.study, self.model_res
        ref = study.reference_partition
        ins = {}
        if ref is not None:
            ins["reference"] = dg.AssetIn(
                key=self.key("validated"),
                partition_mapping=dg.SpecificPartitionsPartitionMapping([ref]),
            )

        @dg.asset(
            **self._common(
                "model",
                "The model under audit (a ModelRef record): a verified vendor package, vendor "
                "scores, or the embedded model; its identity, operating thresholds and card.",
            ),
            ins=ins,
            deps=[self.key("model_source")],
            required_resource_keys={model_res, "home"},
        )
        def model(context: dg.AssetExecutionContext, **inputs: Any) -> dg.Output[ModelRef]:
            reference = (inputs.get("reference") or {}).get(ref) if ref else None
            resolved = study.resolve_model(
                getattr(context.resources, model_res).spec(),
                reference=reference,
                dirs=context.resources.home.dirs(),
                log=context.log.info,
            )
            return dg.Output(
                resolved,
                data_version=dg.DataVersion(resolved.identity),
                metadata=stage_metadata(study, "model", resolved),
            )

        return model

    # ---------------------------------------------------------------- per-partition stages
    def _predictions(self) -> dg.AssetsDefinition:
        study, model_res = self.study, self.model_res

        @dg.asset(
            **self._common(
                "predictions",
                f"One score per validated {study.unit} and target, with the identity of the "
                "model package (or scores file) that produced it.",
            ),
            partitions_def=self.partitions,
            ins={"validated": self._in("validated"), "model": self._in("model")},
            required_resource_keys={model_res, "home"},
        )
        def predictions(
            context: dg.AssetExecutionContext, validated: pd.DataFrame, model: ModelRef
        ) -> dg.Output[pd.DataFrame]:
            scores, facts = study.predict(
                model,
                validated,
                partition=context.partition_key,
                spec=getattr(context.resources, model_res).spec(),
                dirs=context.resources.home.dirs(),
                log=context.log.info,
            )
            return dg.Output(scores, metadata=metadata_values(facts))

        return predictions

    def _partition_metrics(self) -> list[dg.AssetsDefinition]:
        study = self.study
        if type(study).partition_metrics is Study.partition_metrics:
            return []

        @dg.asset(
            **self._common(
                "partition_metrics",
                f"One {study.partition_by} on its own: discrimination and calibration with CIs "
                "(shown as soon as its run finishes; the audit itself is cross-partition).",
            ),
            partitions_def=self.partitions,
            ins={n: self._in(n) for n in ("validated", "predictions", "model")},
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

    # ---------------------------------------------------------------- cross-partition stages
    def _data_ins(self) -> dict[str, dg.AssetIn]:
        return {
            "validated": self._in("validated", all_partitions=True),
            "predictions": self._in("predictions", all_partitions=True),
            "batches": self._in("batches", all_partitions=True),
            "model": self._in("model"),
        }

    def _evidence(self) -> dg.AssetsDefinition:
        study, policy_res = self.study, self.policy_res
        config_type = config_class(f"{self.p}_EvaluateConfig", study.evaluate_options)

        @dg.asset(
            **self._common(
                "evidence",
                f"The audit across {study.partition_by}s (a table set): discrimination, "
                "calibration, drift, subgroup or worst-cell tables with CIs, the settings they "
                "were computed with and the partitions left out (and why).",
            ),
            ins=self._data_ins(),
            deps=[self.key("policy_source")],
            required_resource_keys={policy_res},
        )
        def evidence(
            context: dg.AssetExecutionContext,
            config: config_type,
            validated: dict,
            predictions: dict,
            batches: dict,
            model: ModelRef,
        ) -> dg.Output[TableSet]:
            policy = getattr(context.resources, policy_res).load()
            result = study.evaluate(
                AuditData(validated, predictions, model, batches),
                policy=policy,
                options=_options(study, study.evaluate_options, config),
            )
            for partition, why in dict(result.facts.get("left_out", {})).items():
                context.log.warning(f"{partition} left out of the audit: {why}")
            return _table_set_output(study, "evidence", _under_policy(result, policy))

        return evidence

    def _mitigation(self, index: int) -> dg.AssetsDefinition:
        study, policy_res = self.study, self.policy_res
        stage = study.mitigations[index]
        name = self.mitigation_names[index]
        config_type = config_class(f"{self.p}_{stage.name}_Config", stage.options_type)

        @dg.asset(
            **self._common(name, stage.description),
            ins={"evidence": self._in("evidence"), **self._data_ins()},
            deps=[self.key("policy_source")],
            required_resource_keys={policy_res, "home"},
        )
        def mitigation(
            context: dg.AssetExecutionContext,
            config: config_type,
            evidence: TableSet,
            validated: dict,
            predictions: dict,
            batches: dict,
            model: ModelRef,
        ) -> dg.Output[TableSet]:
            policy = getattr(context.resources, policy_res).load()
            result = stage.run(
                evidence,
                AuditData(validated, predictions, model, batches),
                policy=policy,
                options=_options(study, stage.options_type, config),
                dirs=context.resources.home.dirs(),
                log=context.log.info,
                run_id=context.run.run_id,
            )
            return _table_set_output(study, name, _under_policy(result, policy))

        return mitigation

    def _decisions(self) -> dg.AssetsDefinition:
        study, policy_res, names = self.study, self.policy_res, self.mitigation_names

        @dg.asset(
            **self._common(
                "decisions",
                "GO / CONDITIONAL GO / NO-GO under the versioned policy, with every criterion "
                "before and after the allowed mitigations and the reasons and conditions.",
            ),
            ins={"evidence": self._in("evidence"), **{n: self._in(n) for n in names}},
            deps=[self.key("policy_source")],
            required_resource_keys={policy_res},
        )
        def decisions(
            context: dg.AssetExecutionContext, evidence: TableSet, **mitigations: TableSet
        ) -> dg.Output[TableSet]:
            policy = getattr(context.resources, policy_res).load()
            result = study.decide(evidence, _by_name(mitigations, names), policy=policy)
            for where, decision in study.decision_summary(result).items():
                context.log.info(f"{where}: {decision}")
            return _table_set_output(study, "decisions", _under_policy(result, policy))

        return decisions

    def _monitoring(self) -> dg.AssetsDefinition:
        study, policy_res, names = self.study, self.policy_res, self.mitigation_names

        @dg.asset(
            **self._common(
                "monitoring",
                "The monitoring plan of what is deployed: what to watch, warn / action "
                "thresholds from this audit's baselines, cadence and escalation.",
            ),
            ins={
                "evidence": self._in("evidence"),
                "decisions": self._in("decisions"),
                **{n: self._in(n) for n in names},
                **self._data_ins(),
            },
            deps=[self.key("policy_source")],
            required_resource_keys={policy_res},
        )
        def monitoring(
            context: dg.AssetExecutionContext,
            evidence: TableSet,
            decisions: TableSet,
            validated: dict,
            predictions: dict,
            batches: dict,
            model: ModelRef,
            **mitigations: TableSet,
        ) -> dg.Output[TableSet]:
            policy = getattr(context.resources, policy_res).load()
            result = study.monitor(
                evidence,
                _by_name(mitigations, names),
                decisions,
                AuditData(validated, predictions, model, batches),
                policy=policy,
            )
            return _table_set_output(study, "monitoring", _under_policy(result, policy))

        return monitoring

    # ---------------------------------------------------------------- package
    def _package(self) -> dg.AssetsDefinition:
        study, policy_res, names = self.study, self.policy_res, self.mitigation_names

        @dg.asset(
            key=self.key("package"),
            group_name=self.p,
            owners=OWNERS,
            description=f"The committee's report ({study.title}) as a PAdES-signed PDF with the "
            "evidence and a manifest of every input hash embedded; written to "
            f"reports/{study.name}/<audit-id>/ and verified. Older packages are kept.",
            ins={
                **{n: self._in(n) for n in ("evidence", "decisions", "monitoring", "cohort")},
                **{n: self._in(n) for n in names},
                "model": self._in("model"),
                "quarantine": self._in("quarantine", all_partitions=True),
                "batches": self._in("batches", all_partitions=True),
            },
            required_resource_keys={policy_res, "home", "signer"},
        )
        def package(context: dg.AssetExecutionContext, **inputs: Any) -> dg.MaterializeResult:
            home = context.resources.home
            bundle = audit_bundle(
                study,
                inputs,
                names,
                policy=getattr(context.resources, policy_res).load(),
            )
            try:
                written = write_study_package(
                    bundle,
                    lambda stamp: study.report(bundle, stamp),
                    policy_name=study.policy_attachment,
                    signer=context.resources.signer.spec(home.key_dir),
                    reports_root=home.reports,
                )
            except PolicyMismatchError as err:
                raise dg.Failure(str(err)) from err
            context.log.info(f"signed package {written.package.dir} ({written.pages} pages)")
            meta = package_metadata(written, study.decision_summary(bundle.decisions))
            return dg.MaterializeResult(
                metadata=meta, data_version=dg.DataVersion(written.audit_id)
            )

        return package


def audit_bundle(
    study: Study, inputs: Mapping[str, Any], mitigation_names: list[str], *, policy: Any
) -> AuditBundle:
    """The package's single input, from the stored stage outputs."""
    evidence: TableSet = inputs["evidence"]
    return AuditBundle(
        study=study.name,
        title=study.title,
        evidence=evidence,
        mitigations=_by_name(inputs, mitigation_names),
        decisions=inputs["decisions"],
        monitoring=inputs["monitoring"],
        cohort=inputs["cohort"],
        quarantine=dict(inputs["quarantine"]),
        policy=policy,
        model=inputs["model"],
        provenance=Provenance.from_ingest(
            study.landing_dir, inputs["batches"], evidence.facts.get("left_out", {})
        ),
    )


def _by_name(values: Mapping[str, Any], names: list[str]) -> dict[str, TableSet]:
    """``mitigation_<name>`` inputs as name -> table set, in the study's order."""
    return {n.removeprefix("mitigation_"): values[n] for n in names}


def _table_set_output(study: Study, stage: str, tables: TableSet) -> dg.Output[TableSet]:
    return dg.Output(
        tables,
        data_version=dg.DataVersion(tables.digest()),
        metadata=stage_metadata(study, stage, tables),
    )


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
