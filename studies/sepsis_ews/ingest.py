"""Ingest every ready landed batch of study ``sepsis_ews``: verify, read, validate, quarantine.

A batch is ``<landing>/sepsis_ews/<hospital>/<batch>/`` holding ``stays.parquet`` (or
``stays.csv``) and ``manifest.json`` (written last: present = ready). For each ready batch:

1. the manifest is parsed (:func:`clinaudit.sources.landing.read_manifest`) and every listed file
   is checked for presence, size and sha256 (:func:`~clinaudit.sources.landing.verify_batch`);
   a missing or changed file fails the batch, an unlisted file is a warning;
2. the stays table named by the manifest is read (:func:`clinaudit.sources.sepsis_tables.
   read_stays`) and validated (:func:`clinaudit.validation.sepsis_schema.validate_stays`): bad
   rows become named quarantine records and the other rows proceed; a table without the required
   columns fails the batch;
3. rows whose ``hospital`` is not the landing site, and stay ids landed in several batches, are
   quarantined too (every copy, each record naming the other places).

A failed batch contributes records and no rows; it never stops the other batches or hospitals.
Landed files are only read, never modified.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clinaudit.sources.landing import (
    LandingError,
    Manifest,
    read_manifest,
    scan_landing,
    verify_batch,
)
from clinaudit.sources.sepsis_tables import STAY_COLUMNS, STUDY, StaysFileError, read_stays
from clinaudit.validation.errors import QuarantineRecord, records_to_frame
from clinaudit.validation.sepsis_schema import ERROR_COLUMNS, StaysStructureError, validate_stays

__all__ = ["SepsisBatch", "SepsisIngest", "ingest_sepsis_landing", "write_sepsis_quarantine"]

#: Columns of the ingested stays table: the validated columns plus the landing batch.
INGESTED_COLUMNS: tuple[str, ...] = (*STAY_COLUMNS, "batch")


@dataclass(frozen=True)
class SepsisBatch:
    """What happened to one ready batch."""

    site: str
    batch: str
    status: str  # "ingested" or "failed"
    content_hash: str | None
    simulated: bool
    n_rows_in: int
    n_rows_ok: int
    n_records: int


@dataclass(frozen=True)
class SepsisIngest:
    """All ready batches: valid stays (with ``batch``), quarantine records, one entry per batch."""

    stays: pd.DataFrame
    quarantine: pd.DataFrame
    batches: tuple[SepsisBatch, ...]

    @property
    def simulated(self) -> bool:
        """True when any ingested batch was landed as simulated."""
        return any(b.simulated for b in self.batches if b.status == "ingested")

    @property
    def failed(self) -> tuple[SepsisBatch, ...]:
        """Batches that contributed no rows (structure or integrity failures)."""
        return tuple(b for b in self.batches if b.status == "failed")

    @property
    def data_version(self) -> str:
        """Content hashes of every ready batch: changes exactly when the landed data changes."""
        return ",".join(
            f"{b.site}/{b.batch}:{(b.content_hash or 'failed')[:16]}" for b in self.batches
        )


def _record(
    site: str, batch: str, file: str, check: str, message: str, fix: str, severity: str = "error"
) -> QuarantineRecord:
    return QuarantineRecord(site, batch, file, None, None, check, message, fix, severity)  # type: ignore[arg-type]


def _frame(records: list[QuarantineRecord]) -> pd.DataFrame:
    return records_to_frame(records).assign(value="")


def _failed(
    site: str, batch: str, manifest: Manifest | None, n_in: int, records: list[QuarantineRecord]
) -> tuple[SepsisBatch, pd.DataFrame, pd.DataFrame]:
    digest, simulated = (manifest.content_hash, manifest.simulated) if manifest else (None, False)
    outcome = SepsisBatch(site, batch, "failed", digest, simulated, n_in, 0, len(records))
    return outcome, pd.DataFrame(), _frame(records)


def _integrity(path: Path, site: str, batch: str, manifest: Manifest) -> list[QuarantineRecord]:
    check = verify_batch(path, manifest)
    records = [
        _record(site, batch, file, "integrity", problem, fix,
                "warning" if file in check.unlisted else "error")
        for file, problem, fix in check.problems()
    ]  # fmt: skip
    if manifest.label_file not in {e.path for e in manifest.files}:
        records.append(
            _record(site, batch, manifest.label_file, "label_file_unlisted",
                    "the stays table is not listed in manifest.json",
                    "re-create the manifest after writing the table")
        )  # fmt: skip
    return records


def _site_mismatch(valid: pd.DataFrame, site: str, batch: str, source: str) -> pd.DataFrame:
    other = valid[valid["hospital"].astype(str) != site]
    rows = [
        QuarantineRecord(site, batch, source, int(r.source_row), "hospital", "site_mismatch",
                         f"hospital {r.hospital!r} landed under site {site!r}",
                         "land each hospital's stays under its own site directory")
        for r in other.itertuples()
    ]  # fmt: skip
    return records_to_frame(rows).assign(value=other["hospital"].astype(str).to_numpy())


def _ingest_batch(
    path: Path, site: str, batch: str
) -> tuple[SepsisBatch, pd.DataFrame, pd.DataFrame]:
    """One batch: (outcome, valid rows with ``batch``, quarantine records)."""
    try:
        manifest = read_manifest(path)
    except LandingError as err:
        rec = _record(site, batch, "manifest.json", "manifest", err.message, err.fix)
        return _failed(site, batch, None, 0, [rec])
    records = _integrity(path, site, batch, manifest)
    if any(r.severity == "error" for r in records):
        return _failed(site, batch, manifest, 0, records)
    source = f"{site}/{batch}/{manifest.label_file}"
    try:
        raw = read_stays(path / manifest.label_file)
    except StaysFileError as err:
        records.append(_record(site, batch, source, "unreadable_table", err.message, err.fix))
        return _failed(site, batch, manifest, 0, records)
    try:
        valid, errors = validate_stays(raw, source=source, site=site, batch=batch)
    except StaysStructureError as err:
        return _failed(site, batch, manifest, len(raw), records + err.records)
    mismatch = _site_mismatch(valid, site, batch, source)
    valid = valid[valid["hospital"].astype(str) == site]
    errors = pd.concat([f for f in (_frame(records), errors, mismatch) if len(f)] or [errors])
    outcome = SepsisBatch(
        site, batch, "ingested", manifest.content_hash, manifest.simulated, len(raw), len(valid),
        len(errors),
    )  # fmt: skip
    return outcome, valid.assign(batch=batch), errors.reset_index(drop=True)


def _cross_batch_duplicates(stays: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quarantine every copy of a stay id landed in several batches."""
    dup = stays["stay_id"].duplicated(keep=False)
    if not dup.any():
        return stays, _frame([])
    where = (
        stays[dup]
        .groupby("stay_id")[["hospital", "batch", "source_row"]]
        .apply(lambda g: [f"{h}/{b} line {r}" for h, b, r in g.itertuples(index=False)])
    )
    rows = [
        QuarantineRecord(r.hospital, r.batch, f"{r.hospital}/{r.batch}", int(r.source_row),
                         "stay_id", "duplicate_stay_id",
                         f"stay id {r.stay_id!r} was landed in several batches: {where[r.stay_id]}",
                         "land each stay once (all copies are quarantined until fixed)")
        for r in stays[dup].itertuples()
    ]  # fmt: skip
    extra = records_to_frame(rows).assign(value=stays.loc[dup, "stay_id"].to_numpy())
    return stays[~dup], extra


def ingest_sepsis_landing(landing_root: str | os.PathLike[str]) -> SepsisIngest:
    """Ingest every ready batch under ``<landing_root>/sepsis_ews/`` (see the module docstring).

    Returns
    -------
    SepsisIngest
        ``stays``: columns :data:`INGESTED_COLUMNS`, sorted by hospital, batch and source line;
        ``quarantine``: columns of :data:`~clinaudit.validation.sepsis_schema.ERROR_COLUMNS`.

    Raises
    ------
    LandingError
        If no batch is ready (nothing to audit).
    """
    scan = scan_landing(landing_root, STUDY)
    ready = scan.ready()
    if not ready:
        raise LandingError(
            Path(landing_root) / STUDY,
            "no ready sepsis_ews batch (a batch is ready once its manifest.json exists)",
            "land <hospital>/<batch>/stays.parquet with its manifest.json",
        )
    outcomes, tables, records = [], [], []
    for ref in ready:
        outcome, valid, errors = _ingest_batch(ref.path, ref.site, ref.batch)
        outcomes.append(outcome)
        tables += [valid] if len(valid) else []
        records += [errors] if len(errors) else []
    stays = (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame({c: pd.Series(dtype=object) for c in INGESTED_COLUMNS})
    )
    stays, dup = _cross_batch_duplicates(stays)
    records += [dup] if len(dup) else []
    quarantine = pd.concat(records, ignore_index=True) if records else _frame([])
    stays = stays.sort_values(["hospital", "batch", "source_row"], kind="stable")
    return SepsisIngest(
        stays.loc[:, list(INGESTED_COLUMNS)].reset_index(drop=True),
        quarantine.loc[:, list(ERROR_COLUMNS)].reset_index(drop=True),
        tuple(outcomes),
    )


def write_sepsis_quarantine(quarantine: pd.DataFrame, root: str | os.PathLike[str]) -> list[Path]:
    """One JSON file of records per batch under ``<root>/sepsis_ews/<site>/<batch>.json``.

    The landing area is never touched: the files name the landed file, line, check and fix.
    """
    out = []
    for (site, batch), part in quarantine.groupby(["site", "batch"], sort=True):
        target = Path(root) / STUDY / str(site)
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{batch}.json"
        doc = {"site": site, "batch": batch, "records": json.loads(part.to_json(orient="records"))}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        out.append(path)
    return out
