"""What the Dagster UI shows for each stage's output: generic facts plus the study's own.

Plain values become Dagster metadata: markdown text (starting with ``"|"``, ``"#"`` or ``"!["``)
as markdown, mappings and lists as JSON, numbers, booleans and other text as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd

from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.reporting.package import PackageResult
from clinaudit.studies.base import Study
from clinaudit.validation.ingest_loop import PartitionIngest

__all__ = ["metadata_values", "package_metadata", "stage_metadata"]

_MARKDOWN = ("|", "#", "![")


def _value(value: Any) -> Any:
    if isinstance(value, dg.MetadataValue):
        return value
    if isinstance(value, str) and value.startswith(_MARKDOWN):
        return dg.MetadataValue.md(value)
    if isinstance(value, Mapping | list | tuple):
        return dg.MetadataValue.json(_jsonable(value))
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        return value.item()
    return value


def metadata_values(facts: Mapping[str, Any]) -> dict[str, Any]:
    """Dagster metadata from plain facts (see the module docstring)."""
    return {str(k): _value(v) for k, v in facts.items()}


def _generic(stage: str, value: Any, partition: str | None) -> dict[str, Any]:
    if isinstance(value, PartitionIngest):
        table = value.table
        return {
            "partition": partition,
            "simulated": value.simulated,
            "n_rows": len(table),
            "batches": value.batches.to_markdown(index=False),
        }
    if isinstance(value, TableSet):
        rows = {name: len(frame) for name, frame in sorted(value.tables.items())}
        return {"tables": rows, "files": sorted(value.files)}
    if isinstance(value, ModelRef):
        return {
            "mode": value.mode,
            "identity": value.identity,
            "source": value.source,
            "threshold_source": value.threshold_source,
        }
    if isinstance(value, pd.DataFrame):
        return {"n_rows": len(value)}
    return {}


def stage_metadata(
    study: Study, stage: str, value: Any, *, partition: str | None = None
) -> dict[str, Any]:
    """Generic facts of a stage's output and the study's :meth:`Study.describe_stage`."""
    return metadata_values(
        {**_generic(stage, value, partition), **study.describe_stage(stage, value)}
    )


def package_metadata(
    written: PackageResult, decisions: Mapping[str, str], *, portal_url: str | None = None
) -> dict[str, Any]:
    """What a package materialization records: where it is (and its committee portal page),
    whether it verified, who signed it, whether its data were simulated, the decisions and the
    time it took."""
    package = written.package
    return {
        "audit_id": written.audit_id,
        **({"portal_url": dg.MetadataValue.url(portal_url)} if portal_url else {}),
        "package_dir": dg.MetadataValue.path(str(package.dir)),
        "pdf": dg.MetadataValue.path(str(package.pdf_path)),
        "verified": package.verdict.ok,
        "signer": written.signer,
        "development_signature": written.development_signature,
        "simulated": written.simulated,
        "pages": written.pages,
        "decisions": dg.MetadataValue.json(dict(decisions)),
        "inputs": written.n_inputs,
        "seconds": dg.MetadataValue.json({k: round(v, 2) for k, v in written.seconds.items()}),
    }
