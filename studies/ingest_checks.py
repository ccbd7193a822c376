"""The ingest checks every study's partitions get, whatever the study adds.

* ``batch_structure`` (blocking): every ready batch could be read, and rows were ingested;
* ``manifest_integrity`` (blocking on changed or missing bytes, a warning for stray files): the
  landed files are what the sender's manifest promised;
* ``deidentified`` (blocking): the study's privacy check finds nothing (ingest also refuses to
  write a table that fails it);
* ``quarantine_rate`` (warning): the share of received rows quarantined is within the limit.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from clinaudit.validation.errors import INTEGRITY_CHECKS, records_markdown
from clinaudit.validation.ingest_loop import PartitionIngest

from .base import CheckOutcome, CheckSpec, IngestOptions

__all__ = ["GENERIC_CHECKS", "generic_outcomes", "structure_reason"]

GENERIC_CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(
        "batch_structure",
        "Every ready batch of the partition has a readable manifest and table with the required "
        "columns, and at least one row was ingested.",
        blocking=True,
    ),
    CheckSpec(
        "manifest_integrity",
        "Every file listed in manifest.json is present with the listed size and sha256, and no "
        "unlisted file lies in the batch.",
        blocking=True,
    ),
    CheckSpec(
        "deidentified",
        "No PHI column or raw patient identifier leaves ingest.",
        blocking=True,
    ),
    CheckSpec(
        "quarantine_rate",
        "Share of received rows quarantined by row checks is within the limit.",
    ),
)


def _of_checks(records: pd.DataFrame, checks: frozenset[str]) -> pd.DataFrame:
    return records[records["check"].isin(checks)] if len(records) else records


def _refused(ingest: PartitionIngest) -> pd.DataFrame:
    q = ingest.quarantine
    return q[q["batch"].astype(str).isin(ingest.failed_batches)] if len(q) else q


def structure_reason(ingest: PartitionIngest, limit: int = 3) -> str:
    """Why the partition has no usable rows, in one line naming each refused file and problem
    (``""`` when rows were ingested and no batch was refused).

    Examples
    --------
    >>> structure_reason(ingest)  # doctest: +SKIP
    "batch b1 refused: hosp_a/b1/stays.csv: required column 'wbc' is absent"
    """
    q, failed = ingest.quarantine, ingest.failed_batches
    parts = []
    for batch in failed[:limit]:
        recs = q[(q["batch"].astype(str) == batch) & (q["severity"] == "error")] if len(q) else q
        shown = recs.head(4)
        problems = [
            f"{file}: {'; '.join(part['message'].astype(str))}"
            for file, part in shown.groupby(shown["file"].astype(str), sort=True)
        ]
        more = f" (and {len(recs) - 4} more)" if len(recs) > 4 else ""
        parts.append(f"batch {batch} refused: {'; '.join(problems) or 'unreadable'}{more}")
    if len(failed) > limit:
        parts.append(f"and {len(failed) - limit} more refused batch(es)")
    if not failed and not len(ingest.table):
        parts.append(f"no row passed validation ({ingest.n_rows_in} received, all quarantined)")
    return "; ".join(parts)


def generic_outcomes(
    ingest: PartitionIngest,
    options: IngestOptions,
    privacy_problems: Callable[[pd.DataFrame], list[str]],
) -> list[CheckOutcome]:
    """Outcomes of :data:`GENERIC_CHECKS` for one partition's ingest."""
    integrity = _of_checks(ingest.quarantine, INTEGRITY_CHECKS)
    errors = int((integrity["severity"] == "error").sum()) if len(integrity) else 0
    leaks = privacy_problems(ingest.table)
    n_in, refused = ingest.n_rows_in, ingest.n_rows_refused
    return [
        CheckOutcome(
            "batch_structure",
            not ingest.failed_batches and len(ingest.table) > 0,
            metadata={
                "failed_batches": ingest.failed_batches,
                "n_rows": len(ingest.table),
                # What a later stage blocked by this check says (file and problem).
                "reason": structure_reason(ingest) or "none",
                "problems": records_markdown(_refused(ingest)),
            },
        ),
        CheckOutcome(
            "manifest_integrity",
            integrity.empty,
            # Errors (changed or missing bytes) block the partition; stray files only warn.
            severity="error" if errors else "warn",
            metadata={"n_problems": len(integrity), "problems": records_markdown(integrity)},
        ),
        CheckOutcome("deidentified", not leaks, metadata={"problems": leaks or ["none"]}),
        CheckOutcome(
            "quarantine_rate",
            n_in > 0 and refused / n_in <= options.max_quarantine_rate,
            severity="warn",
            metadata={
                # Rows refused / rows received (a row with several problems counts once).
                "rate": refused / n_in if n_in else "no rows received",
                "limit": options.max_quarantine_rate,
                "n_rows_in": n_in,
                "n_rows_refused": refused,
            },
        ),
    ]
