"""Ingest of ``sepsis_ews`` batches: verify, read, validate, quarantine (one hospital at a time).

A batch is ``<landing>/sepsis_ews/<hospital>/<batch>/`` holding ``stays.parquet`` (or
``stays.csv``) and ``manifest.json`` (written last: present = ready). The generic ingest loop
(:mod:`clinaudit.validation.ingest_loop`) runs :func:`ingest_stays_batch` on every ready batch of
one hospital:

1. the manifest is parsed (:func:`clinaudit.sources.landing.read_manifest`) and every listed file
   is checked for presence, size and sha256 (:func:`~clinaudit.sources.landing.verify_batch`);
   a missing or changed file fails the batch, an unlisted file is a warning;
2. the stays table named by the manifest is read (:func:`clinaudit.sources.sepsis_tables.
   read_stays`) and validated (:func:`clinaudit.studies.sepsis_ews.schema.validate_stays`): bad
   rows become named quarantine records and the other rows proceed; a table without the required
   columns fails the batch;
3. rows whose ``hospital`` is not the hospital they were landed under are quarantined.

A failed batch raises :class:`~clinaudit.validation.errors.BatchStructureError` (records and what
is known of it): it contributes records and no rows and never stops the other batches or
hospitals. Across the batches of one hospital, :func:`finish_hospital` quarantines every copy of a
stay id landed in several batches (each record naming the other places). Landed files are only
read, never modified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.schemas import OutputSchema, count_field, schema_columns, validate_table
from clinaudit.sources.landing import BatchRef, LandingError, Manifest, read_manifest, verify_batch
from clinaudit.sources.sepsis_tables import STAY_COLUMNS, StaysFileError, read_stays
from clinaudit.validation.errors import BatchStructureError, QuarantineRecord, records_to_frame
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest

from .schema import ERROR_COLUMNS, StayQuarantine, StaysStructureError, validate_stays

__all__ = [
    "INGESTED_COLUMNS",
    "HospitalSummary",
    "duplicate_stays",
    "empty_stays",
    "finish_hospital",
    "hospital_summary",
    "ingest_stays_batch",
    "absent_columns",
    "ingested_columns",
    "n_rows_quarantined",
    "quarantined_stays",
    "refused_tables",
    "quarantine_frame",
]

#: Columns of the ingested stays table: the validated columns plus the landing batch.
INGESTED_COLUMNS: tuple[str, ...] = (*STAY_COLUMNS, "batch")


class HospitalSummary(OutputSchema):
    """The cohort stage's table (:func:`hospital_summary`): one row per hospital landed, what
    validation kept (batches, stays, septic stays, admission months: ``""`` when no stay was
    kept) and what it quarantined (records, rows refused, batches refused)."""

    hospital: Series[str] = pa.Field(unique=True)
    n_batches: Series[int] = count_field()
    n_stays: Series[int] = count_field()
    n_sepsis: Series[int] = count_field()
    first_month: Series[str] = pa.Field(str_matches=r"^(\d{4}-\d{2})?$")
    last_month: Series[str] = pa.Field(str_matches=r"^(\d{4}-\d{2})?$")
    n_records: Series[int] = count_field()
    n_rows_quarantined: Series[int] = count_field()
    n_batches_refused: Series[int] = count_field()

    class Config:
        ordered = True


#: Column order of the per-hospital summary (its schema's).
SUMMARY_COLUMNS: tuple[str, ...] = schema_columns(HospitalSummary)


def empty_stays() -> pd.DataFrame:
    """The ingested stays table with no rows (typed like a validated one)."""
    types = {"sepsis": "Int64", "simulated": "bool", "source_row": "int64"}
    text = {"stay_id", "hospital", "admit_month", "sex", "race_ethnicity", "age_band", "batch"}
    return pd.DataFrame(
        {
            c: pd.Series(dtype=types.get(c, object if c in text else "float64"))
            for c in INGESTED_COLUMNS
        }
    )


def ingested_columns(stays: pd.DataFrame) -> pd.DataFrame:
    """``stays`` with its columns in the canonical order of :data:`INGESTED_COLUMNS` (an optional
    column the sender left out stays absent; batches that differ give the union)."""
    return stays.loc[:, [c for c in INGESTED_COLUMNS if c in stays.columns]]


def quarantine_frame(frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """Quarantine records as :class:`~.schema.StayQuarantine` (``value`` and ``stay_id`` ``""``
    if absent)."""
    out = records_to_frame([]) if frame is None else frame.copy()
    for column in ("value", "stay_id"):
        if column not in out.columns:
            out[column] = pd.Series([""] * len(out), index=out.index, dtype=object)
    return validate_table(out.loc[:, list(ERROR_COLUMNS)].reset_index(drop=True), StayQuarantine)


def _record(
    site: str, batch: str, file: str, check: str, message: str, fix: str, severity: str = "error"
) -> QuarantineRecord:
    return QuarantineRecord(site, batch, file, None, None, check, message, fix, severity)  # type: ignore[arg-type]


def _fail(
    ref: BatchRef, manifest: Manifest | None, n_in: int, records: list[QuarantineRecord]
) -> BatchStructureError:
    facts = {"n_rows_in": n_in}
    if manifest is not None:
        facts.update(content_hash=manifest.content_hash, simulated=manifest.simulated)
    return BatchStructureError(records, batch_facts=facts)


def _integrity(ref: BatchRef, manifest: Manifest) -> list[QuarantineRecord]:
    check = verify_batch(ref.path, manifest)
    records = [
        _record(ref.site, ref.batch, file, "integrity", problem, fix,
                "warning" if file in check.unlisted else "error")
        for file, problem, fix in check.problems()
    ]  # fmt: skip
    if manifest.label_file not in {e.path for e in manifest.files}:
        records.append(
            _record(ref.site, ref.batch, manifest.label_file, "label_file_unlisted",
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
    return records_to_frame(rows).assign(
        value=other["hospital"].astype(str).to_numpy(), stay_id=other["stay_id"].to_numpy()
    )


def ingest_stays_batch(ref: BatchRef) -> BatchIngest:
    """Verify, read and validate one ready batch (see the module docstring).

    Returns
    -------
    BatchIngest
        Valid stays (columns :data:`INGESTED_COLUMNS`), quarantine records (columns
        :data:`ERROR_COLUMNS`), the manifest's content hash and simulated flag, rows read.

    Raises
    ------
    BatchStructureError
        The batch cannot be ingested (manifest, integrity, unreadable table, missing columns);
        ``batch_facts`` carries what is known of it.
    """
    site, batch = ref.site, ref.batch
    try:
        manifest = read_manifest(ref.path)
    except LandingError as err:
        raise _fail(ref, None, 0, [
            _record(site, batch, "manifest.json", "manifest", err.message, err.fix)
        ]) from err  # fmt: skip
    records = _integrity(ref, manifest)
    if any(r.severity == "error" for r in records):
        raise _fail(ref, manifest, 0, records)
    source = f"{site}/{batch}/{manifest.label_file}"
    try:
        raw = read_stays(ref.path / manifest.label_file)
    except StaysFileError as err:
        records.append(_record(site, batch, source, "unreadable_table", err.message, err.fix))
        raise _fail(ref, manifest, 0, records) from err
    try:
        valid, errors = validate_stays(raw, source=source, site=site, batch=batch)
    except StaysStructureError as err:
        raise _fail(ref, manifest, len(raw), records + list(err.records)) from err
    mismatch = _site_mismatch(valid, site, batch, source)
    valid = valid[valid["hospital"].astype(str) == site]
    frames = [f for f in (quarantine_frame(records_to_frame(records)), errors, mismatch) if len(f)]
    return BatchIngest(
        table=ingested_columns(valid.assign(batch=batch)),
        quarantine=quarantine_frame(pd.concat(frames, ignore_index=True) if frames else None),
        content_hash=manifest.content_hash,
        simulated=manifest.simulated,
        n_rows_in=len(raw),
    )


def quarantined_stays(quarantine: pd.DataFrame | None) -> frozenset[str]:
    """Stay ids of the rows quarantined at ingest (error records about a row that has an id)."""
    q = quarantine_frame(quarantine)
    rows = q[(q["severity"] == "error") & q["row"].notna() & q["stay_id"].ne("")]
    return frozenset(rows["stay_id"].astype(str))


def n_rows_quarantined(quarantine: pd.DataFrame | None) -> int:
    """Rows quarantined at ingest (a row with several problems counts once)."""
    q = quarantine_frame(quarantine)
    rows = q[(q["severity"] == "error") & q["row"].notna()]
    return len(rows.drop_duplicates(["batch", "row"]))


def refused_tables(quarantine: pd.DataFrame | None, limit: int = 4) -> str:
    """Each batch refused whole and why, in one line naming the file (``""`` when none)."""
    q = quarantine_frame(quarantine)
    refused = q[(q["severity"] == "error") & q["row"].isna()]
    parts = []
    for (batch, file), recs in refused.groupby(["batch", "file"], sort=True):
        missing = recs.loc[recs["check"] == "missing_column", "column"].astype(str).tolist()
        if missing:
            parts.append(f"{file} (batch {batch}) lacks required columns {missing}")
        else:
            parts.append(f"{file} (batch {batch}): {'; '.join(recs['message'].head(limit))}")
    return "; ".join(parts)


def absent_columns(quarantine: pd.DataFrame | None) -> tuple[str, ...]:
    """Optional columns some batch left out (its ``absent_column`` warnings), sorted."""
    q = quarantine_frame(quarantine)
    return tuple(sorted(set(q.loc[q["check"] == "absent_column", "column"].astype(str))))


def duplicate_stays(stays: pd.DataFrame, *, by: str = "batch") -> tuple[pd.Series, pd.DataFrame]:
    """Every copy of a stay id landed in several batches (``by="batch"``) or hospitals.

    Returns
    -------
    duplicated : pandas.Series of bool
        Rows of ``stays`` whose stay id repeats.
    records : pandas.DataFrame
        One quarantine record per copy (columns :data:`ERROR_COLUMNS`), naming every place.
    """
    dup = stays["stay_id"].duplicated(keep=False)
    if not dup.any():
        return dup, quarantine_frame()
    where = (
        stays[dup]
        .groupby("stay_id")[["hospital", "batch", "source_row"]]
        .apply(lambda g: [f"{h}/{b} line {r}" for h, b, r in g.itertuples(index=False)])
    )
    check, places = (
        ("duplicate_stay_id", "several batches")
        if by == "batch"
        else ("duplicate_stay_id_across_hospitals", "several hospitals")
    )
    rows = [
        QuarantineRecord(r.hospital, r.batch, f"{r.hospital}/{r.batch}", int(r.source_row),
                         "stay_id", check,
                         f"stay id {r.stay_id!r} was landed in {places}: {where[r.stay_id]}",
                         "land each stay once (all copies are quarantined until fixed)")
        for r in stays[dup].itertuples()
    ]  # fmt: skip
    ids = stays.loc[dup, "stay_id"].to_numpy()
    records = records_to_frame(rows).assign(value=ids, stay_id=ids)
    return dup, quarantine_frame(records)


def finish_hospital(ingest: PartitionIngest) -> PartitionIngest:
    """Quarantine stay ids landed in several batches of the hospital; uniform record columns."""
    ingest = replace(
        ingest,
        table=ingested_columns(ingest.table),
        quarantine=quarantine_frame(ingest.quarantine),
    )
    if ingest.table.empty:
        return ingest
    dup, records = duplicate_stays(ingest.table)
    return ingest.with_table(ingest.table[~dup], records)


def hospital_summary(
    validated: Mapping[str, pd.DataFrame], quarantine: Mapping[str, pd.DataFrame]
) -> pd.DataFrame:
    """Per hospital: batches and stays kept by validation, septic stays, admission months, and
    the quarantine records (all, errors, rows refused, batches refused): :class:`HospitalSummary`.
    """
    rows = []
    for hospital in sorted(set(validated) | set(quarantine)):
        stays = validated.get(hospital, empty_stays())
        q = quarantine.get(hospital, quarantine_frame())
        errors = q[q["severity"] == "error"] if len(q) else q
        months = stays["admit_month"].astype(str)
        rows.append(
            {
                "hospital": hospital,
                "n_batches": int(stays["batch"].nunique()),
                "n_stays": len(stays),
                "n_sepsis": int(stays["sepsis"].sum()),
                "first_month": months.min() if len(stays) else "",
                "last_month": months.max() if len(stays) else "",
                "n_records": len(q),
                "n_rows_quarantined": len(errors.dropna(subset=["row"]).drop_duplicates(
                    ["batch", "row"])) if len(errors) else 0,
                "n_batches_refused": int(errors.loc[errors["row"].isna(), "batch"].nunique())
                if len(errors) else 0,
            }
        )  # fmt: skip
    return validate_table(pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)), HospitalSummary)
