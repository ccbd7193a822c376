"""Why a partition is missing from a cross-partition audit, read from the Dagster instance.

The evidence stage only sees the tables that exist; a partition whose ingest or predictions
failed (or whose ingest a blocking check stopped) is "left out" there without the cause. These
helpers look the cause up in the instance's event log, so the signed report names the partition
with the reason the terminal and the Dagster UI showed (the first line of the error, which names
the file, row, column and fix).
"""

from collections.abc import Iterable, Mapping

import dagster as dg

__all__ = ["explain_left_out"]


def _error_line(record: dg.EventLogEntry) -> str:
    """The first line of a step failure's error (its cause's, when Dagster wrapped it)."""
    event = record.dagster_event
    error = getattr(event.event_specific_data, "error", None) if event is not None else None
    while (
        error is not None
        and error.cause is not None
        and error.cls_name
        in (
            "DagsterExecutionStepExecutionError",
            "DagsterUserCodeExecutionError",
        )
    ):
        error = error.cause
    return error.message.strip().splitlines()[0][:400] if error is not None else "no message"


def _latest_failure(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> dg.EventLogEntry | None:
    """The step failure of the latest run planned to materialize ``key`` / ``partition``, if
    that run failed after the partition's latest materialization (a later success means the
    failure no longer matters)."""
    planned = instance.event_log_storage.get_latest_planned_materialization_info(key, partition)
    if planned is None:
        return None
    where = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition])
    done = instance.fetch_materializations(where, limit=1).records
    if done and done[0].storage_id > planned.storage_id:
        return None
    run = instance.get_run_by_id(planned.run_id)
    if run is None or run.status != dg.DagsterRunStatus.FAILURE:
        return None
    failures = instance.all_logs(planned.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    return failures[0] if failures else None


def explain_left_out(
    instance: dg.DagsterInstance,
    prefix: str,
    left_out: Mapping[str, str],
    registered: Iterable[str],
    audited: Iterable[str],
) -> dict[str, str]:
    """Reasons of the partitions left out, with the stage failure that caused it where one did.

    Parameters
    ----------
    instance : DagsterInstance
    prefix : str
        The study's asset key prefix (its name).
    left_out : mapping
        Partition -> reason, as the study's evaluation found it from the tables.
    registered : iterable of str
        Every partition known to the instance (landed and registered).
    audited : iterable of str
        The partitions the evaluation used.

    Returns
    -------
    dict
        ``left_out`` plus every registered partition neither audited nor left out; a reason is
        replaced by "<stage> failed: <error>" when that partition's ingest or predictions failed
        after its last success.
    """
    out = dict(left_out)
    audited = set(audited)
    for partition in sorted(set(registered) - audited - set(out)):
        out[partition] = "not ingested"
    for partition in sorted(out):
        for stage in ("validated", "predictions"):
            failure = _latest_failure(instance, dg.AssetKey([prefix, stage]), partition)
            if failure is not None:
                name = "ingest" if stage == "validated" else stage
                out[partition] = f"its {name} stage failed: {_error_line(failure)}"
                break
    return out
