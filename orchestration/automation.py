"""Declarative automation of study ``multisite_cxr``: new site data becomes a new audit by itself.

The landing sensor (``sensors.py``) runs a site's partition (ingest, predictions, site metrics).
Everything after it is re-materialized here, by ``AutomationCondition``s evaluated by
``cxr_automation_sensor`` (on by default, every 30 s), applied to the assets by selection so the
asset modules stay free of scheduling:

* **Cross-site assets**: every unpartitioned asset of group ``multisite_cxr`` except
  ``vendor_model`` (cohort summary, audit metrics, drift, mitigations, decisions, and any later
  report / package asset). They run again when a site partition changed *and its blocking checks
  passed*, when an upstream cross-site table changed, or when the decision policy's data version
  changed. They wait while any site-partition run is in flight (so one change, however many
  steps it takes, gives one cross-site run), while ``vendor_model`` is changing (its re-scoring
  of the sites comes first), while a dependency or they themselves are in progress, and while
  an unpartitioned input is missing. A missing or failed *site* never
  blocks them: the audit assets leave stale or missing sites out and list them in metadata.
* **Site re-scoring**: ``cxr_predictions`` / ``cxr_site_metrics`` of every site run again when
  ``vendor_model``'s data version (the model's sha256) changes, per site only where that site's
  blocking checks passed; site metrics also follow new predictions.
* **vendor_model**: re-materialized when the observed model source changes data version, or the
  reference site's ingest changed and passed its blocking checks.
* **Observed sources** (``assets/multisite_cxr_sources.py``): observed when automation starts and
  on every ``OBSERVE_CRON`` tick; only a *changed* data version counts as an update downstream.

"Once per change": each condition is latched by ``since_last_handled`` (reset when the asset is
requested or updated) and refuses while in progress, so a change gives exactly one request.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dagster as dg

from clinaudit.assets.multisite_cxr import GROUP
from clinaudit.assets.multisite_cxr_sources import MODEL_SOURCE, POLICY_SOURCE

AC = dg.AutomationCondition
#: How often the model package and the decision policy are hashed (cron, UTC).
OBSERVE_CRON = "*/5 * * * *"
MODEL_ASSET = dg.AssetKey("vendor_model")
SOURCE_NAMES = (MODEL_SOURCE, POLICY_SOURCE)
AUTOMATION_SENSOR = "cxr_automation_sensor"


@dataclass(frozen=True)
class StudyGraph:
    """What the conditions need to know about the study's assets, read from their definitions.

    ``site_keys``: assets partitioned by site; ``checked_keys``: site assets with blocking checks;
    ``gated_keys``: every output of an op that has blocking checks (its siblings included, e.g.
    ``cxr_quarantine``); ``source_keys``: observable sources; ``cross_site_keys``: unpartitioned,
    materializable assets of the group except ``vendor_model``.
    """

    site_keys: frozenset[dg.AssetKey]
    checked_keys: frozenset[dg.AssetKey]
    gated_keys: frozenset[dg.AssetKey]
    source_keys: frozenset[dg.AssetKey]
    cross_site_keys: frozenset[dg.AssetKey]

    @classmethod
    def of(cls, assets: Iterable[dg.AssetsDefinition]) -> StudyGraph:
        site, checked, gated, sources, cross = set(), set(), set(), set(), set()
        for a in assets:
            blocking = {c.asset_key for c in a.check_specs if c.blocking}
            for spec in a.specs:
                if spec.group_name != GROUP:
                    continue
                if a.is_observable and not a.is_materializable:
                    sources.add(spec.key)
                elif spec.partitions_def is not None:
                    site.add(spec.key)
                    checked |= blocking & {spec.key}
                    if blocking:
                        gated.add(spec.key)
                elif spec.key != MODEL_ASSET:
                    cross.add(spec.key)
        return cls(*map(frozenset, (site, checked, gated, sources, cross)))

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


def model_changing() -> dg.AutomationCondition:
    """vendor_model is requested this tick, in progress, or just updated (its re-scoring of the
    sites is requested on this tick and not yet in flight)."""
    return AC.asset_matches(
        MODEL_ASSET, AC.will_be_requested() | AC.in_progress() | AC.newly_updated()
    ).with_label("model_changing")


def cross_site_condition(graph: StudyGraph) -> dg.AutomationCondition:
    """Re-audit across sites once per accepted change (see the module docstring)."""
    gated = graph.select(graph.gated_keys)
    trigger = (
        AC.any_deps_updated().ignore(gated | graph.select({MODEL_ASSET}))
        | AC.any_deps_match(accepted_update()).allow(graph.select(graph.checked_keys))
    ).with_label("accepted_change")
    missing = AC.any_deps_missing().ignore(graph.select(graph.site_keys | graph.source_keys))
    return (
        trigger.since_last_handled()
        & ~missing
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & ~site_run_in_flight(graph.site_keys)
        & ~model_changing()
        & AC.all_deps_blocking_checks_passed().ignore(graph.select(graph.site_keys))
    ).with_label("cross_site_reaudit")


def site_rescore_condition() -> dg.AutomationCondition:
    """Re-score a site when the audited model's data version changed (per site partition)."""
    model_changed = AC.any_deps_match(AC.data_version_changed()).allow(
        dg.AssetSelection.assets(MODEL_ASSET)
    )
    predictions = dg.AssetSelection.assets("cxr_predictions")
    return (
        (model_changed | AC.any_deps_updated().allow(predictions)).since_last_handled()
        & ~AC.any_deps_missing()
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & AC.all_deps_blocking_checks_passed()
    ).with_label("site_rescore_on_model_change")


def model_condition(graph: StudyGraph) -> dg.AutomationCondition:
    """vendor_model: the observed model source changed, or the reference ingest passed anew."""
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


RESCORED = frozenset({dg.AssetKey("cxr_predictions"), dg.AssetKey("cxr_site_metrics")})
#: Focused re-training (minutes of fine-tuning) never changes a decision under the shipped policy
#: (``retrained_model_counts: false``): it is kept off the re-audit path and refreshed nightly;
#: the report names the sites its guard has not evaluated yet.
RETRAINING = frozenset({dg.AssetKey("cxr_retraining"), dg.AssetKey("cxr_retrained_model")})
RETRAIN_CRON = "0 2 * * *"


def retraining_condition(graph: StudyGraph) -> dg.AutomationCondition:
    """Re-train nightly (``RETRAIN_CRON``, UTC) when no site run or model change is under way."""
    return (
        AC.cron_tick_passed(RETRAIN_CRON).since_last_handled()
        & ~AC.any_deps_missing().ignore(graph.select(graph.site_keys | graph.source_keys))
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
        & ~site_run_in_flight(graph.site_keys)
        & ~model_changing()
    ).with_label("nightly_retraining")


def conditions_for(graph: StudyGraph) -> dict[dg.AssetKey, dg.AutomationCondition]:
    """asset key -> its automation condition (assets not listed keep none: the sensor's)."""
    out: dict[dg.AssetKey, dg.AutomationCondition] = {}
    cross, rescore = cross_site_condition(graph), site_rescore_condition()
    out.update({k: cross for k in graph.cross_site_keys})
    out.update({k: retraining_condition(graph) for k in RETRAINING & graph.cross_site_keys})
    out.update({k: rescore for k in RESCORED & graph.site_keys})
    out.update({k: source_condition() for k in graph.source_keys})
    out[MODEL_ASSET] = model_condition(graph)
    return out


def with_automation(assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """The same assets with the study's automation conditions set on their specs."""
    conditions = conditions_for(StudyGraph.of(assets))

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        condition = conditions.get(spec.key)
        if condition is None:
            return spec
        return spec.replace_attributes(automation_condition=condition)

    return list(dg.map_asset_specs(apply, assets))


automation_sensor = dg.AutomationConditionSensorDefinition(
    AUTOMATION_SENSOR,
    target=dg.AssetSelection.groups(GROUP) | dg.AssetSelection.assets(MODEL_SOURCE, POLICY_SOURCE),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the multisite_cxr automation conditions (orchestration/automation.py): "
    "after a site run, the cross-site audit re-runs once; a changed model package re-scores "
    "every site; a changed decision policy re-decides. On by default.",
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


def observe_sources(defs: dg.Definitions, instance: dg.DagsterInstance) -> bool:
    """Observe the study's sources once, in-process (returns whether the run succeeded).

    Run after materializing an audit outside automation (``clinaudit demo``): the automation
    then starts from the versions that audit used, and their first observation on the next
    ``make ui`` is not mistaken for a change.
    """
    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.get_all_asset_keys() if k.to_user_string() in SOURCE_NAMES]
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
    requests nothing (what ``cxr_automation_sensor`` and the daemon do, without waiting).

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
