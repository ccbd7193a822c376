"""The ingest loop every study shares: every ready batch of one partition, one quarantine writer.

A study ingests one batch (``Study.ingest_batch``: read, verify, validate); this module runs it
over every ready batch of a partition (a site or hospital) under
``<landing>/<landing_dir>/<partition>/``. A batch that fails structurally (unreadable manifest or
table, missing required columns, changed bytes) raises ``BatchStructureError`` or
``LandingError``: it contributes quarantine records and no rows and never stops the other
batches. Any other exception is a bug and propagates. Landed files are only read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from clinaudit.sources.landing import BatchRef, LandingError, scan_landing, validate_name

from .errors import BatchStructureError, QuarantineRecord, records_to_frame

__all__ = [
    "BATCH_COLUMNS",
    "BatchIngest",
    "PartitionIngest",
    "ingest_partition",
    "write_quarantine_reports",
]

#: Columns of the per-partition batch record table (what ingest read, batch by batch).
BATCH_COLUMNS: tuple[str, ...] = (
    "partition", "batch", "status", "content_hash", "simulated", "n_rows_in", "n_rows_ok",
    "n_quarantined",
)  # fmt: skip


@dataclass(frozen=True)
class BatchIngest:
    """One ingested batch: valid rows (with a ``batch`` column), quarantine records, facts.

    ``extras``: other tables the batch carried, by name (e.g. read outcomes of studies landed
    earlier); the partition collects them for ``Study.finish_partition``, which folds them into
    its table. They are not stored on their own.
    """

    table: pd.DataFrame
    quarantine: pd.DataFrame
    content_hash: str
    simulated: bool
    n_rows_in: int
    extras: Mapping[str, pd.DataFrame] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionIngest:
    """Every ready batch of one partition, ingested.

    ``batches`` has the columns :data:`BATCH_COLUMNS`, one row per ready batch (``status``
    ``"ingested"`` or ``"failed"``; the content hash of a failed batch is empty when its
    manifest could not be read). ``extras``: the batches' extra tables, concatenated per name
    in batch order.
    """

    partition: str
    table: pd.DataFrame
    quarantine: pd.DataFrame
    batches: pd.DataFrame
    extras: Mapping[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        """True when any ingested batch was landed with ``"simulated": true``."""
        ok = self.batches[self.batches["status"] == "ingested"]
        return bool(ok["simulated"].astype(bool).any())

    @property
    def failed_batches(self) -> list[str]:
        return sorted(self.batches.loc[self.batches["status"] == "failed", "batch"].astype(str))

    @property
    def n_rows_in(self) -> int:
        return int(self.batches["n_rows_in"].sum())

    @property
    def n_rows_refused(self) -> int:
        """Rows received but not used (a row with several problems counts once): per batch its
        rows not in the table, or, for a batch whose rows are attached to other batches' rows
        (e.g. radiologist reads), those not attached (``n_rows_in - n_rows_ok``)."""
        if not len(self.batches):
            return 0
        counts = self.table.groupby("batch").size() if "batch" in self.table else pd.Series()
        in_table = self.batches["batch"].map(counts)
        used = in_table.fillna(self.batches["n_rows_ok"]).astype(int)
        return int((self.batches["n_rows_in"] - used).clip(lower=0).sum())

    @property
    def data_version(self) -> str:
        """``"<batch>:<hash16>,..."``: changes exactly when the partition's landed data changes."""
        return ",".join(
            f"{b}:{(h or 'failed')[:16]}"
            for b, h in zip(self.batches["batch"], self.batches["content_hash"], strict=True)
        )

    def with_table(self, table: pd.DataFrame, extra: pd.DataFrame | None = None) -> PartitionIngest:
        """The same ingest with ``table`` instead, and ``extra`` quarantine records appended
        (counted against their batches)."""
        if extra is None or extra.empty:
            return replace(self, table=table.reset_index(drop=True))
        quarantine = pd.concat([self.quarantine, extra], ignore_index=True)
        counts = extra.groupby("batch").size()
        batches = self.batches.copy()
        batches["n_quarantined"] += batches["batch"].map(counts).fillna(0).astype(int)
        batches["n_rows_ok"] = batches["batch"].map(table.groupby("batch").size()).fillna(0)
        batches["n_rows_ok"] = batches["n_rows_ok"].astype(int)
        return replace(
            self, table=table.reset_index(drop=True), quarantine=quarantine, batches=batches
        )


def _structure_records(partition: str, batch: str, err: Exception) -> list[QuarantineRecord]:
    if isinstance(err, BatchStructureError):
        return list(err.records)
    assert isinstance(err, LandingError)
    return [
        QuarantineRecord(
            partition, batch, err.path, None, None, "manifest", err.message, err.fix, "error"
        )
    ]


def ingest_partition(
    landing_root: str | os.PathLike[str],
    landing_dir: str,
    partition: str,
    *,
    ingest_batch: Callable[[BatchRef], BatchIngest],
    empty_table: pd.DataFrame,
    sort_by: tuple[str, ...] = ("batch",),
) -> PartitionIngest:
    """Ingest every ready batch of ``partition`` under ``<landing_root>/<landing_dir>/``.

    Parameters
    ----------
    landing_root : path
        The landing directory (read only).
    landing_dir : str
        The study's landing sub-folder.
    partition : str
        Site or hospital (a safe directory name).
    ingest_batch : callable
        ``ingest_batch(ref) -> BatchIngest`` for one ready batch (``Study.ingest_batch``).
    empty_table : DataFrame
        The table to return when no batch contributed rows (the validated columns, no rows).
    sort_by : tuple of str
        Columns the concatenated table is sorted by (stable).

    Returns
    -------
    PartitionIngest

    Raises
    ------
    LandingError
        If the partition has no ready batch.
    """
    validate_name("partition", partition)
    ready = scan_landing(landing_root, landing_dir).ready(partition)
    if not ready:
        raise LandingError(
            Path(landing_root) / landing_dir / partition,
            f"{partition!r} has no ready batch (a batch is ready once its manifest.json exists)",
            "land a batch with its manifest.json, or remove the partition",
        )
    tables, records, rows = [], [], []
    extras: dict[str, list[pd.DataFrame]] = {}
    for ref in ready:
        try:
            res = ingest_batch(ref)
        except (BatchStructureError, LandingError) as err:
            recs = _structure_records(partition, ref.batch, err)
            records.append(records_to_frame(recs))
            facts = getattr(err, "batch_facts", None) or {}
            rows.append(
                {
                    "partition": partition,
                    "batch": ref.batch,
                    "status": "failed",
                    "content_hash": facts.get("content_hash") or "",
                    "simulated": bool(facts.get("simulated", False)),
                    "n_rows_in": int(facts.get("n_rows_in", 0)),
                    "n_rows_ok": 0,
                    "n_quarantined": len(recs),
                }
            )
            continue
        tables.append(res.table)
        records.append(res.quarantine)
        for name, extra in res.extras.items():
            extras.setdefault(name, []).append(extra)
        rows.append(
            {
                "partition": partition,
                "batch": ref.batch,
                "status": "ingested",
                "content_hash": res.content_hash,
                "simulated": bool(res.simulated),
                "n_rows_in": int(res.n_rows_in),
                "n_rows_ok": len(res.table),
                "n_quarantined": len(res.quarantine),
            }
        )
    live = [t for t in tables if len(t)]
    table = (
        pd.concat(live, ignore_index=True).sort_values(list(sort_by), kind="stable")
        if live
        else empty_table.iloc[:0]
    )
    present = [r for r in records if len(r)]
    quarantine = (
        pd.concat(present, ignore_index=True) if present else records_to_frame([])
    ).reset_index(drop=True)
    batches = pd.DataFrame(rows, columns=list(BATCH_COLUMNS))
    joined = {name: pd.concat(parts, ignore_index=True) for name, parts in extras.items()}
    return PartitionIngest(partition, table.reset_index(drop=True), quarantine, batches, joined)


def write_quarantine_reports(
    quarantine: pd.DataFrame, root: str | os.PathLike[str], landing_dir: str
) -> list[Path]:
    """One JSON report per (site, batch) with records: ``<root>/<landing_dir>/<site>/<batch>.json``.

    The landing area is never touched: each record names the landed file, line, column, check and
    fix. ``quarantine`` needs the columns ``site`` and ``batch`` (the quarantine record columns).
    """
    out = []
    if quarantine.empty:
        return out
    for (site, batch), part in quarantine.groupby(["site", "batch"], sort=True):
        target = Path(root) / landing_dir / str(site)
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{batch}.json"
        doc = {"site": site, "batch": batch, "records": json.loads(part.to_json(orient="records"))}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        out.append(path)
    return out
