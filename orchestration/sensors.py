"""The landing sensor of every study: a partition's ready batch starts that partition's run.

One sensor per study (:func:`build_landing_sensor`). Every tick scans all of
``<landing>/<landing_dir>/<partition>/<batch>/`` (the cursor only remembers decisions, so a
lagging sensor drops nothing). No ``manifest.json``: still uploading, ignored. Manifest parses
and every listed file has its size and sha256: *ready*; content not handled before -> one
``RunRequest`` of the study's partition job with ``run_key "<partition>:<batch>:<content
hash>"`` (several new batches of a partition in one tick: one run, ``"<p>:<b1>:<h1>+<b2>:<h2>"``),
plus a partition add request for a new site / hospital. The same content again (same batch
re-exported, re-sent under another batch name, or already in the partition's latest validated
table) starts no run. Manifest unreadable or not verifying: *pending*; after
``LandingWatch.quarantine_after_s`` quarantined (JSON reason record
``<quarantine>/landing/<landing_dir>/<partition>/<batch>.json``, warning in the sensor log), looked
at again only when the manifest or a file changes. Unsafe directory names are logged once and
listed in ``<quarantine>/landing/<landing_dir>/_refused_names.json``. Landed files are never
modified.

The decisions are plain Python (``orchestration/landing_plan.py``), tested without an instance;
this module is the Dagster wiring.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import dagster as dg

from clinaudit.assets.factory import partitions_name
from clinaudit.assets.resources import ClinauditHome, LandingWatch
from clinaudit.sources.landing import LandingScan, scan_landing
from clinaudit.studies.base import Study

from .landing_plan import (
    REFUSED_FILE,
    BatchObservation,
    LandingCursor,
    TickPlan,
    observe_landing,
    plan_tick,
    sites_to_look_up,
    write_quarantine_record,
    write_refused_names,
)

__all__ = [
    "REFUSED_FILE",
    "BatchObservation",
    "LandingCursor",
    "build_landing_sensor",
    "ingested_batches",
    "plan_tick",
]


# --- Dagster wiring -------------------------------------------------------------------------


def ingested_batches(
    instance: dg.DagsterInstance, sites: Iterable[str], key: dg.AssetKey
) -> dict[str, dict[str, str]]:
    """partition -> batch -> content-hash prefix in the partition's latest validated table.

    Read from the materialization's data version (``"<batch>:<hash16>,..."``, see
    ``PartitionIngest.data_version``).
    """
    out: dict[str, dict[str, str]] = {}
    for site in sites:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[site]), limit=1
        ).records
        mat = records[0].asset_materialization if records else None
        version = (mat.tags or {}).get("dagster/data_version", "") if mat else ""
        pairs = (item.rpartition(":") for item in version.split(",") if ":" in item)
        out[site] = {b: h for b, _, h in pairs if h != "failed"}
    return out


def build_landing_sensor(study: Study, job: Any) -> dg.SensorDefinition:
    """The landing sensor of ``study``: ``<study>_landing_sensor``, on by default, every 30 s."""
    validated = dg.AssetKey([study.name, "validated"])
    partitions = dg.DynamicPartitionsDefinition(name=partitions_name(study))
    landing_dir = study.landing_dir

    @dg.sensor(
        name=f"{study.name}_landing_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Polls <landing>/{landing_dir}/<{study.partition_by}>/<batch>/: a batch "
        f"whose manifest.json verifies starts its {study.partition_by}'s partition run (run key "
        f"= content hash), a new {study.partition_by} gets a partition, a batch that never "
        "verifies is quarantined after LandingWatch.quarantine_after_s.",
    )
    def landing_sensor(
        context: dg.SensorEvaluationContext, home: ClinauditHome, landing_watch: LandingWatch
    ) -> dg.SensorResult:
        watch = landing_watch
        try:
            cursor = LandingCursor.from_json(context.cursor)
        except ValueError as err:
            context.log.warning(f"{err}; starting from an empty cursor")
            cursor = LandingCursor()
        scan = scan_landing(home.landing, landing_dir)
        ingested = ingested_batches(context.instance, sites_to_look_up(scan, cursor), validated)
        plan = plan_tick(
            observe_landing(scan, cursor, ingested),
            cursor,
            known_sites=set(context.instance.get_dynamic_partitions(partitions.name)),
            now=time.time(),
            quarantine_after_s=watch.quarantine_after_s,
            refused=scan.refused,
        )
        _report_plan(context, plan, scan, cursor, home, landing_dir)
        requests = [
            dg.RunRequest(run_key=run.run_key, partition_key=run.site, tags=run.tags)
            for run in plan.runs
        ]
        adds = [partitions.build_add_request(list(plan.new_sites))] if plan.new_sites else []
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=adds,
            cursor=plan.cursor.to_json(),
            skip_reason=None if requests else f"no new ready batch ({plan.cursor.summary()})",
        )

    return landing_sensor


def _report_plan(
    context: dg.SensorEvaluationContext,
    plan: TickPlan,
    scan: LandingScan,
    cursor: LandingCursor,
    home: ClinauditHome,
    landing_dir: str,
) -> None:
    """Write the tick's quarantine records and refused-name list, and log what was decided."""
    quarantine, landing = home.quarantine, home.landing
    for q in plan.quarantines:
        path = write_quarantine_record(quarantine, q, landing_root=landing, landing_dir=landing_dir)
        first = "; ".join(f"{f}: {p}" for f, p, _ in q.problems[:3])
        context.log.warning(
            f"quarantined {q.site}/{q.batch} ({len(q.problems)} problems: {first}); record {path}"
        )
    if set(plan.cursor.refused) != set(cursor.refused):  # the list changed: rewrite it
        path = write_refused_names(quarantine, scan.refused, landing_dir)
        for message in plan.refused:
            context.log.warning(f"refused landing directory: {message} (listed in {path})")
    for note in plan.notes:
        context.log.info(note)
