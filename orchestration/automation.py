"""Declarative automation of every study: after a partition's run, the audit re-runs once.

The landing sensor (``orchestration/sensors.py``) runs a partition's per-partition stages
(ingest, predictions, partition metrics). Everything after it is re-materialized by
``AutomationCondition``s evaluated by the study's ``<study>_automation_sensor`` (on by default,
every 30 s), applied to the assets by selection so the asset factory stays free of scheduling:

* **Cross-partition assets**: every unpartitioned asset of the study's group except the model
  (cohort, evidence, mitigations, decisions, monitoring, package). They run again when a
  partition changed *and its blocking checks passed*, when an upstream cross-partition value
  changed, or when the policy's data version changed. They wait while any partition run is in
  flight (so one change, however many steps it takes, gives one cross-partition run), while the
  model is changing (its re-scoring of the partitions comes first), while a dependency or they
  themselves are in progress, and while an unpartitioned input is missing. A missing or failed
  *partition* never blocks them: the evidence stage leaves stale or missing partitions out and the
  signed report names them.
* **Re-scoring**: ``predictions`` / ``partition_metrics`` of every partition run again when the
  model's data version (its identity) changes, per partition only where that partition's blocking
  checks passed; partition metrics also follow new predictions.
* **model**: re-materialized when the observed model source changes data version, or (a study
  whose embedded model trains on a reference partition) that partition's ingest changed and
  passed its blocking checks.
* **Observed sources** (model and policy files): observed when automation starts and on every
  ``OBSERVE_CRON`` tick; only a *changed* data version counts as an update downstream.
* **Nightly mitigations** (``MitigationStage.cadence == "nightly"``, e.g. focused re-training):
  minutes of work that never changes a decision by itself; kept off the re-audit path and
  refreshed once a night.

"Once per change": each condition is latched by ``since_last_handled`` (reset when the asset is
requested or updated) and refuses while in progress, so a change gives exactly one request.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from clinaudit.studies.base import Study

AC = dg.AutomationCondition
#: How often the model package and the policy are hashed (cron, UTC).
OBSERVE_CRON = "*/5 * * * *"
#: When nightly mitigations run (cron, UTC).
NIGHTLY_CRON = "0 2 * * *"
SOURCE_STAGES = ("model_source", "policy_source")
RESCORED_STAGES = ("predictions", "partition_metrics")


def automation_sensor_name(study: Study) -> str:
    return f"{study.name}_automation_sensor"


@dataclass(frozen=True)
class StudyGraph:
    """What the conditions need to know about one study's assets, read from their definitions.

    ``site_keys``: partitioned assets; ``checked_keys``: partitioned assets with blocking checks;
    ``gated_keys``: every output of an op that has blocking checks (its siblings included, e.g.
    the quarantine); ``source_keys``: observable sources; ``cross_site_keys``: unpartitioned,
    materializable assets except the model; ``model_key``: the model; ``nightly_keys``: nightly
    mitigations; ``rescored_keys``: per-partition assets that follow the model.
    """

    site_keys: frozenset[dg.AssetKey]
    checked_keys: frozenset[dg.AssetKey]
    gated_keys: frozenset[dg.AssetKey]
    source_keys: frozenset[dg.AssetKey]
    cross_site_keys: frozenset[dg.AssetKey]
    model_key: dg.AssetKey
    nightly_keys: frozenset[dg.AssetKey] = frozenset()
    rescored_keys: frozenset[dg.AssetKey] = frozenset()
    #: Cross-site assets that read partitioned assets directly (e.g. cohort, evidence).
    site_fed_keys: frozenset[dg.AssetKey] = frozenset()

    @classmethod
    def of(cls, assets: Iterable[dg.AssetsDefinition], study: Study) -> StudyGraph:
        model = dg.AssetKey([study.name, "model"])
        site, checked, gated, sources, cross = set(), set(), set(), set(), set()
        deps: dict[dg.AssetKey, set[dg.AssetKey]] = {}
        for a in assets:
            blocking = {c.asset_key for c in a.check_specs if c.blocking}
            for spec in a.specs:
                if spec.group_name != study.name:
                    continue
                if a.is_observable and not a.is_materializable:
                    sources.add(spec.key)
                elif spec.partitions_def is not None:
                    site.add(spec.key)
                    checked |= blocking & {spec.key}
                    if blocking:
                        gated.add(spec.key)
                elif spec.key != model:
                    cross.add(spec.key)
                    deps[spec.key] = {d.asset_key for d in spec.deps}
        nightly = {
            dg.AssetKey([study.name, f"mitigation_{m.name}"])
            for m in study.mitigations
            if m.cadence == "nightly"
        }
        rescored = {dg.AssetKey([study.name, s]) for s in RESCORED_STAGES} & site
        return cls(
            *map(frozenset, (site, checked, gated, sources, cross)),
            model_key=model,
            nightly_keys=frozenset(nightly & cross),
            rescored_keys=frozenset(rescored),
            site_fed_keys=frozenset(k for k in cross if deps[k] & site),
        )

    @staticmethod
    def select(keys: Iterable[dg.AssetKey]) -> dg.AssetSelection:
        return dg.AssetSelection.assets(*sorted(keys, key=lambda k: k.to_user_string()))


def accepted_update() -> dg.AutomationCondition:
    """On a dependency: newly updated (not by this run) and no blocking check of it failed.

    Evaluated per site partition when the checks are partitioned like their asset. A tick that
    falls between a materialization and its checks (milliseconds apart) sees no failure yet and
    accepts the update; the downstream gates still wait for the site run to finish.
    """
    return (
        AC.newly_updated()
        & ~AC.executed_with_root_target()
        & ~AC.any_checks_match(AC.check_failed(), blocking_only=True)
    ).with_label("updated_and_no_blocking_check_failed")


def site_run_in_flight(site_keys: Iterable[dg.AssetKey]) -> dg.AutomationCondition:
    """Any partition of any site asset is part of a run or backfill not finished yet."""
    keys = sorted(site_keys, key=lambda k: k.to_user_string())
    if not keys:
        raise ValueError("site_keys is empty: the study defines no site-partitioned asset")
    condition = AC.asset_matches(keys[0], AC.in_progress())
    for key in keys[1:]:
        condition = condition | AC.asset_matches(key, AC.in_progress())
    return condition.with_label("site_run_in_flight")


def model_changing(model_key: dg.AssetKey) -> dg.AutomationCondition:
    """The model is requested this tick, in progress, or just updated (its re-scoring of the
    partitions is requested on this tick and not yet in flight)."""
    return AC.asset_matches(
        model_key, AC.will_be_requested() | AC.in_progress() | AC.newly_updated()
    ).with_label("model_changing")


def any_partition_materialized(graph: StudyGraph) -> dg.AutomationCondition:
    """Some partition of a partitioned dependency is materialized: a study nothing has landed
    for yet has nothing to audit (its sources' first observation must not start an audit that
    can only fail)."""
    return (AC.any_deps_match(~AC.missing()).allow(graph.select(graph.site_keys))).with_label(
        "any_partition_materialized"
    )


def cross_site_condition(graph: StudyGraph, *, site_fed: bool = False) -> dg.AutomationCondition:
    """Re-audit across sites once per accepted change (see the module docstring); an asset
    that reads partitioned assets (``site_fed``) also waits for one to be materialized."""
    gated = graph.select(graph.gated_keys)
    trigger = (
        AC.any_deps_updated().ignore(gated | graph.select({graph.model_key}))
        | AC.any_deps_match(accepted_update()).allow(graph.select(graph.checked_keys))
    ).with_label("accepted_change")
    missing = AC.any_deps_missing().ignore(graph.select(graph.site_keys | graph.source_keys))
    condition = (
        trigger.since_last_handled()
        & ~missing
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & ~site_run_in_flight(graph.site_keys)
        & ~model_changing(graph.model_key)
        & AC.all_deps_blocking_checks_passed().ignore(graph.select(graph.site_keys))
    )
    if site_fed:
        condition = condition & any_partition_materialized(graph)
    return condition.with_label("cross_site_reaudit")


def site_rescore_condition(graph: StudyGraph) -> dg.AutomationCondition:
    """Re-score a partition when the audited model's data version changed."""
    model_changed = AC.any_deps_match(AC.data_version_changed()).allow(
        dg.AssetSelection.assets(graph.model_key)
    )
    prefix = graph.model_key.path[0]
    predictions = dg.AssetSelection.assets(dg.AssetKey([prefix, "predictions"]))
    return (
        (model_changed | AC.any_deps_updated().allow(predictions)).since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & AC.all_deps_blocking_checks_passed()
    ).with_label("site_rescore_on_model_change")


def model_condition(graph: StudyGraph) -> dg.AutomationCondition:
    """The model: the observed model source changed, or the reference ingest passed anew."""
    trigger = AC.any_deps_updated().allow(graph.select(graph.source_keys)) | AC.any_deps_match(
        accepted_update()
    ).allow(graph.select(graph.checked_keys))
    return (
        trigger.since_last_handled()
        & ~AC.any_deps_missing().ignore(graph.select(graph.source_keys))
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & AC.all_deps_blocking_checks_passed()
    ).with_label("model_inputs_changed")


def source_condition() -> dg.AutomationCondition:
    """Observe a source when automation starts and on every ``OBSERVE_CRON`` tick."""
    return (
        (AC.cron_tick_passed(OBSERVE_CRON) | AC.initial_evaluation()) & ~AC.in_progress()
    ).with_label("observe_on_start_and_cron")


def nightly_condition(graph: StudyGraph) -> dg.AutomationCondition:
    """Nightly (``NIGHTLY_CRON``, UTC) when no partition run or model change is under way."""
    return (
        AC.cron_tick_passed(NIGHTLY_CRON).since_last_handled()
        & ~AC.any_deps_missing().ignore(graph.select(graph.site_keys | graph.source_keys))
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & ~site_run_in_flight(graph.site_keys)
        & ~model_changing(graph.model_key)
    ).with_label("nightly")


def conditions_for(graph: StudyGraph) -> dict[dg.AssetKey, dg.AutomationCondition]:
    """asset key -> its automation condition (assets not listed keep none: the sensor's)."""
    out: dict[dg.AssetKey, dg.AutomationCondition] = {}
    rescore = site_rescore_condition(graph)
    cross, fed = cross_site_condition(graph), cross_site_condition(graph, site_fed=True)
    out.update({k: fed if k in graph.site_fed_keys else cross for k in graph.cross_site_keys})
    out.update({k: nightly_condition(graph) for k in graph.nightly_keys})
    out.update({k: rescore for k in graph.rescored_keys})
    out.update({k: source_condition() for k in graph.source_keys})
    out[graph.model_key] = model_condition(graph)
    return out


def with_automation(
    assets: Sequence[dg.AssetsDefinition], study: Study
) -> list[dg.AssetsDefinition]:
    """The same assets with the study's automation conditions set on their specs."""
    conditions = conditions_for(StudyGraph.of(assets, study))

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        condition = conditions.get(spec.key)
        if condition is None:
            return spec
        return spec.replace_attributes(automation_condition=condition)

    return list(dg.map_asset_specs(apply, assets))


def build_automation_sensor(study: Study) -> dg.AutomationConditionSensorDefinition:
    """The study's automation sensor: evaluates the conditions of its group, on by default."""
    return dg.AutomationConditionSensorDefinition(
        automation_sensor_name(study),
        target=dg.AssetSelection.groups(study.name)
        | dg.AssetSelection.assets(*(dg.AssetKey([study.name, s]) for s in SOURCE_STAGES)),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description=f"Evaluates the {study.name} automation conditions "
        "(orchestration/automation.py): after a partition run, the audit re-runs once; a "
        "changed model re-scores every partition; a changed policy re-decides. On by default.",
    )


# --- In-process driver (tests, benchmarks, scripted re-audits) --------------------------------


@dataclass(frozen=True)
class AutomationTick:
    """One evaluation of the conditions and the runs it started.

    ``requested``: asset key -> sorted partition keys (``None`` for an unpartitioned asset);
    ``runs``: ``(run_id, success)`` per run, in the order they ran.
    """

    requested: dict[str, tuple[str | None, ...]]
    runs: tuple[tuple[str, bool], ...]
    seconds: float


def _run_groups(
    defs: dg.Definitions, requested: dict[dg.AssetKey, set[str | None]]
) -> list[tuple[str | None, list[dg.AssetKey]]]:
    """Requested keys grouped into runs as the daemon would: one per partition key, in
    dependency order (observations first: they have no upstream)."""
    graph = defs.resolve_asset_graph()
    order = {k: i for i, k in enumerate(graph.toposorted_asset_keys)}
    groups: dict[str | None, list[dg.AssetKey]] = {}
    for key in sorted(requested, key=order.__getitem__):
        for partition in sorted(requested[key], key=lambda p: p or ""):
            groups.setdefault(partition, []).append(key)
    return sorted(groups.items(), key=lambda item: min(order[k] for k in item[1]))


def observe_sources(defs: dg.Definitions, instance: dg.DagsterInstance, study: Study) -> bool:
    """Observe the study's sources once, in-process (returns whether the run succeeded).

    Run after materializing an audit outside automation (``clinaudit demo``): the automation
    then starts from the versions that audit used, and their first observation on the next
    ``make ui`` is not mistaken for a change.
    """
    graph = defs.resolve_asset_graph()
    wanted = {dg.AssetKey([study.name, s]) for s in SOURCE_STAGES}
    keys = [k for k in graph.get_all_asset_keys() if k in wanted]
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, asset_selection=keys).success


def drain_automation(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    cursor: object | None = None,
    *,
    max_ticks: int = 10,
    run_config: dict | None = None,
) -> tuple[object, list[AutomationTick]]:
    """Evaluate the automation conditions and run what they request, in-process, until a tick
    requests nothing (what the automation sensors and the daemon do, without waiting).

    Returns the cursor to pass to the next call and one :class:`AutomationTick` per tick that
    requested something. ``run_config`` (e.g. the console log level) applies to every run.

    Raises
    ------
    RuntimeError
        If ``max_ticks`` ticks all requested runs (a condition that never settles).
    """
    job = defs.resolve_implicit_global_asset_job_def()
    ticks: list[AutomationTick] = []
    for _ in range(max_ticks):
        t0 = time.perf_counter()
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        keys = {k for r in result.results for k in [r.key] if isinstance(k, dg.AssetKey)}
        requested = {k: set(result.get_requested_partitions(k)) for k in keys}
        requested = {k: ps for k, ps in requested.items() if ps}
        if not requested:
            return cursor, ticks
        runs = []
        for partition, group in _run_groups(defs, requested):
            run = job.execute_in_process(
                instance=instance,
                asset_selection=group,
                partition_key=partition,
                tags={"clinaudit/trigger": "automation"},
                run_config=run_config,
                raise_on_error=False,
            )
            runs.append((run.run_id, run.success))
        shown = {
            k.to_user_string(): tuple(sorted(ps, key=lambda p: p or ""))
            for k, ps in requested.items()
        }
        ticks.append(
            AutomationTick(dict(sorted(shown.items())), tuple(runs), time.perf_counter() - t0)
        )
    raise RuntimeError(
        f"automation still requested runs after {max_ticks} ticks: {ticks[-1].requested}; a "
        "condition does not settle (see orchestration/automation.py)"
    )
