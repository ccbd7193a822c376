"""The cross-partition stages of a study's asset graph: evidence, mitigations, decisions,
monitoring and the signed package (built by :class:`~clinaudit.assets.factory.StudyAssets`).

No ``from __future__ import annotations``: the run-config classes are built per study and Dagster
reads them from the functions' annotations.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg

from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.portal.urls import package_url
from clinaudit.reporting.provenance import AuditBundle, PolicyMismatchError, Provenance
from clinaudit.reporting.study_package import audit_summary, write_study_package
from clinaudit.studies.base import AuditData, Study

from .stage_config import OWNERS, SIGNING_POOL, config_class, options_of
from .stage_failures import explain_left_out
from .stage_meta import package_metadata, stage_metadata
from .storage import check_key_part, describe, publish_folder

if TYPE_CHECKING:
    from .factory import StudyAssets


def _under_policy(tables: TableSet, policy: Any) -> TableSet:
    """The stage's tables with the identity of the policy they were computed under."""
    return tables.with_facts(**policy.identity())


def evidence_asset(sa: "StudyAssets") -> dg.AssetsDefinition:
    """``<study>/evidence``: the study's evaluation across partitions."""
    study, policy_res = sa.study, sa.policy_res
    config_type = config_class(f"{sa.p}_EvaluateConfig", study.evaluate_options)

    @dg.asset(
        **sa.common(
            "evidence",
            f"The audit across {study.partition_by}s (a table set): discrimination, "
            "calibration, drift, subgroup or worst-cell tables with CIs, the settings they "
            "were computed with and the partitions left out (and why).",
        ),
        ins=sa.data_ins(),
        deps=[sa.key("policy_source")],
        required_resource_keys={policy_res, "home"},
    )
    def evidence(
        context: dg.AssetExecutionContext,
        config: config_type,
        validated: dict,
        predictions: dict,
        batches: dict,
        quarantine: dict,
        model: ModelRef,
    ) -> dg.Output[TableSet]:
        policy = getattr(context.resources, policy_res).load()
        home = context.resources.home
        local = home.local_model(model)  # the scale profile: fetched from the store if need be
        result = study.evaluate(
            AuditData(
                validated,
                predictions,
                local,
                batches,
                quarantine,
                reports=home.dirs().reports,
                landing=home.dirs().landing,
            ),
            policy=policy,
            options=options_of(study, study.evaluate_options, config),
        )
        seen = set(validated) | set(predictions)
        left_out = dict(result.facts.get("left_out", {}))
        left_out = explain_left_out(
            context.instance,
            sa.p,
            left_out,
            context.instance.get_dynamic_partitions(sa.partitions.name),
            seen - set(left_out),
        )
        result = result.with_facts(left_out=left_out)
        for partition, why in left_out.items():
            context.log.warning(f"{partition} left out of the audit: {why}")
        return _table_set_output(study, "evidence", _under_policy(result, policy))

    return evidence


def mitigation_asset(sa: "StudyAssets", index: int) -> dg.AssetsDefinition:
    """``<study>/mitigation_<name>``: one of the study's mitigations."""
    study, policy_res = sa.study, sa.policy_res
    stage = study.mitigations[index]
    name = sa.mitigation_names[index]
    config_type = config_class(f"{sa.p}_{stage.name}_Config", stage.options_type)

    @dg.asset(
        **sa.common(name, stage.description),
        ins={"evidence": sa.input("evidence"), **sa.data_ins()},
        deps=[sa.key("policy_source")],
        required_resource_keys={policy_res, "home"},
    )
    def mitigation(
        context: dg.AssetExecutionContext,
        config: config_type,
        evidence: TableSet,
        validated: dict,
        predictions: dict,
        batches: dict,
        quarantine: dict,
        model: ModelRef,
    ) -> dg.Output[TableSet]:
        policy = getattr(context.resources, policy_res).load()
        local = context.resources.home.local_model(model)  # fetched from the store if need be
        result = stage.run(
            evidence,
            AuditData(validated, predictions, local, batches, quarantine),
            policy=policy,
            options=options_of(study, stage.options_type, config),
            dirs=context.resources.home.dirs(),
            log=context.log.info,
            run_id=context.run.run_id,
        )
        return _table_set_output(study, name, _under_policy(result, policy))

    return mitigation


def decisions_asset(sa: "StudyAssets") -> dg.AssetsDefinition:
    """``<study>/decisions``: the decisions under the policy."""
    study, policy_res, names = sa.study, sa.policy_res, sa.mitigation_names

    @dg.asset(
        **sa.common(
            "decisions",
            "GO / CONDITIONAL GO / NO-GO under the versioned policy, with every criterion "
            "before and after the allowed mitigations and the reasons and conditions.",
        ),
        ins={"evidence": sa.input("evidence"), **{n: sa.input(n) for n in names}},
        deps=[sa.key("policy_source")],
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


def monitoring_asset(sa: "StudyAssets") -> dg.AssetsDefinition:
    """``<study>/monitoring``: the monitoring plan."""
    study, policy_res, names = sa.study, sa.policy_res, sa.mitigation_names

    @dg.asset(
        **sa.common(
            "monitoring",
            "The monitoring plan of what is deployed: what to watch, warn / action "
            "thresholds from this audit's baselines, cadence and escalation.",
        ),
        ins={
            "evidence": sa.input("evidence"),
            "decisions": sa.input("decisions"),
            **{n: sa.input(n) for n in names},
            **sa.data_ins(),
        },
        deps=[sa.key("policy_source")],
        required_resource_keys={policy_res},
    )
    def monitoring(
        context: dg.AssetExecutionContext,
        evidence: TableSet,
        decisions: TableSet,
        validated: dict,
        predictions: dict,
        batches: dict,
        quarantine: dict,
        model: ModelRef,
        **mitigations: TableSet,
    ) -> dg.Output[TableSet]:
        policy = getattr(context.resources, policy_res).load()
        result = study.monitor(
            evidence,
            _by_name(mitigations, names),
            decisions,
            AuditData(validated, predictions, model, batches, quarantine),
            policy=policy,
        )
        return _table_set_output(study, "monitoring", _under_policy(result, policy))

    return monitoring


def package_asset(sa: "StudyAssets") -> dg.AssetsDefinition:
    """``<study>/package``: the signed, verified audit package."""
    study, policy_res, names = sa.study, sa.policy_res, sa.mitigation_names

    @dg.asset(
        key=sa.key("package"),
        group_name=sa.p,
        owners=OWNERS,
        description=f"The committee's report ({study.title}) as a PAdES-signed PDF with the "
        "evidence and a manifest of every input hash embedded; written to "
        f"reports/{study.name}/<audit-id>/ and verified. Older packages are kept.",
        ins={
            **{n: sa.input(n) for n in ("evidence", "decisions", "monitoring", "cohort")},
            **{n: sa.input(n) for n in names},
            "model": sa.input("model"),
            "quarantine": sa.input("quarantine", all_partitions=True),
            "batches": sa.input("batches", all_partitions=True),
        },
        required_resource_keys={policy_res, "home", "signer"},
        pool=SIGNING_POOL,
    )
    def package(context: dg.AssetExecutionContext, **inputs: Any) -> dg.MaterializeResult:
        home = context.resources.home
        bundle = audit_bundle(
            study,
            inputs,
            names,
            policy=getattr(context.resources, policy_res).load(),
        )
        decided = study.decision_summary(bundle.decisions)
        try:
            written = write_study_package(
                bundle,
                lambda stamp: study.report(bundle, stamp),
                policy_name=study.policy_attachment,
                signer=context.resources.signer.spec(home.key_dir),
                reports_root=home.reports,
                summary=audit_summary(bundle, decided, study.decision_criteria(bundle.decisions)),
                run_id=context.run.run_id,
            )
        except PolicyMismatchError as err:
            raise dg.Failure(str(err)) from err
        context.log.info(f"signed package {written.package.dir} ({written.pages} pages)")
        meta = package_metadata(
            written, decided, portal_url=package_url(study.name, written.audit_id)
        )
        if home.package_store is not None:  # the scale profile: also on object storage
            target = home.package_store / study.name / check_key_part(written.audit_id, "audit id")
            pdf = written.package.pdf_path.relative_to(written.package.dir).as_posix()
            publish_folder(written.package.dir, target, last=pdf)
            context.log.info(f"published package to {target}")
            meta["published_to"] = dg.MetadataValue.text(describe(target))
        return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(written.audit_id))

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


def stored_bundle(home: Any, study: Study, *, policy: Any = None) -> AuditBundle:
    """The audit bundle of the latest materialized stages of ``study`` under ``home`` (the
    package stage's input, read back: re-render a report, or check it, outside a run)."""
    from .resources import read_stored, stored_partitions

    names = [f"mitigation_{m.name}" for m in study.mitigations]
    stages = ("evidence", "decisions", "monitoring", "cohort", "model", *names)
    inputs: dict[str, Any] = {s: read_stored(home, f"{study.name}/{s}") for s in stages}
    for per_partition in ("quarantine", "batches"):
        key = f"{study.name}/{per_partition}"
        inputs[per_partition] = {p: read_stored(home, key, p) for p in stored_partitions(home, key)}
    return audit_bundle(study, inputs, names, policy=policy or study.load_policy())


def _by_name(values: Mapping[str, Any], names: list[str]) -> dict[str, TableSet]:
    """``mitigation_<name>`` inputs as name -> table set, in the study's order."""
    return {n.removeprefix("mitigation_"): values[n] for n in names}


def _table_set_output(study: Study, stage: str, tables: TableSet) -> dg.Output[TableSet]:
    return dg.Output(
        tables,
        data_version=dg.DataVersion(tables.digest()),
        metadata=stage_metadata(study, stage, tables),
    )
