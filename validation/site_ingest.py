"""Ingest every ready batch of one site: the unit a Dagster site partition materializes.

Each batch is ingested on its own (``clinaudit.validation.ingest.ingest_batch``); a batch that fails
structurally (unreadable manifest or label table, missing required columns) contributes quarantine
records and no rows, and never stops the other batches of the site. Other exceptions are bugs and
propagate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clinaudit.sources.landing import LandingError, scan_landing, validate_name
from clinaudit.validation.errors import BatchStructureError, QuarantineRecord, records_to_frame
from clinaudit.validation.ingest import IngestConfig, ingest_batch
from clinaudit.validation.privacy import PhiLeakError, phi_leaks
from clinaudit.validation.schemas import VALIDATED_COLUMNS


@dataclass(frozen=True)
class BatchOutcome:
    """What happened to one batch of the site."""

    batch: str
    status: str  # "ingested" or "failed"
    content_hash: str | None
    simulated: bool
    n_rows_in: int
    n_images_ok: int
    n_quarantined: int


@dataclass(frozen=True)
class SiteIngest:
    """All ready batches of one site, ingested."""

    site: str
    table: pd.DataFrame
    quarantine: pd.DataFrame
    batches: tuple[BatchOutcome, ...]

    @property
    def simulated(self) -> bool:
        return any(b.simulated for b in self.batches)

    @property
    def failed_batches(self) -> tuple[BatchOutcome, ...]:
        return tuple(b for b in self.batches if b.status == "failed")

    @property
    def data_version(self) -> str:
        """Content hashes of the ingested batches: changes exactly when the site's data changes."""
        return ",".join(f"{b.batch}:{(b.content_hash or 'failed')[:16]}" for b in self.batches)


def _structure_records(site: str, batch: str, err: Exception) -> list[QuarantineRecord]:
    if isinstance(err, BatchStructureError):
        return list(err.records)
    assert isinstance(err, LandingError)
    return [
        QuarantineRecord(
            site=site,
            batch=batch,
            file=err.path,
            row=None,
            column=None,
            check="manifest",
            message=err.message,
            fix=err.fix,
            severity="error",
        )
    ]


def ingest_site(
    landing_root: str | os.PathLike[str],
    site: str,
    *,
    study: str = "cxr",
    pseudonym_key: bytes,
    config: IngestConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> SiteIngest:
    """Ingest every ready batch of ``site`` under ``<landing_root>/<study>/``.

    Parameters
    ----------
    landing_root : path
        The landing directory (read only).
    site : str
        Site name (a safe directory name).
    study : str
        Landing sub-directory of the study.
    pseudonym_key : bytes
        Secret for the keyed patient pseudonyms.
    config : IngestConfig, optional
        Ingest options.
    progress : callable, optional
        ``progress(batch, done, total)`` while images are processed.

    Returns
    -------
    SiteIngest
        Concatenated validated table (sorted by batch, image id), all quarantine records, and one
        :class:`BatchOutcome` per ready batch.

    Raises
    ------
    LandingError
        If the site has no ready batch.
    """
    validate_name("site", site)
    config = config or IngestConfig()
    scan = scan_landing(landing_root, study)
    ready = scan.ready(site)
    if not ready:
        raise LandingError(
            Path(landing_root) / study / site,
            f"site {site!r} has no ready batch (a batch is ready once its manifest.json exists)",
            "land a batch with its manifest.json, or remove the site partition",
        )
    tables, records, outcomes = [], [], []
    for ref in ready:
        cb = None if progress is None else (lambda d, t, b=ref.batch: progress(b, d, t))
        try:
            res = ingest_batch(ref.path, pseudonym_key=pseudonym_key, config=config, progress=cb)
        except (BatchStructureError, LandingError) as err:
            recs = _structure_records(site, ref.batch, err)
            records.append(records_to_frame(recs))
            outcomes.append(BatchOutcome(ref.batch, "failed", None, False, 0, 0, len(recs)))
            continue
        tables.append(res.table)
        records.append(res.quarantine)
        outcomes.append(
            BatchOutcome(
                ref.batch,
                "ingested",
                res.manifest.content_hash,
                res.manifest.simulated,
                res.n_rows_in,
                res.n_images_ok,
                len(res.quarantine),
            )
        )
    table = (
        pd.concat(tables, ignore_index=True).sort_values(["batch", "image_id"], kind="stable")
        if tables
        else pd.DataFrame({c: pd.Series(dtype=object) for c in VALIDATED_COLUMNS})
    )
    quarantine = (
        pd.concat([r for r in records if len(r)], ignore_index=True)
        if any(len(r) for r in records)
        else records_to_frame([])
    )
    # Checked here, before anything is returned or stored: a blocking asset check would only
    # stop later steps, after the IO manager had already written the table.
    leaks = phi_leaks(table) if len(table) else []
    if leaks:
        raise PhiLeakError(site, leaks)
    return SiteIngest(site, table.reset_index(drop=True), quarantine, tuple(outcomes))


def write_quarantine_reports(
    site_ingest: SiteIngest, quarantine_root: Path, study: str = "cxr"
) -> list[Path]:
    """Write one JSON report per batch with records under ``<quarantine_root>/<study>/<site>/``.

    Landing data is never moved or modified: the report names the landed files and the fix.
    """
    out = []
    frame = site_ingest.quarantine
    if frame.empty:
        return out
    target = quarantine_root / study / site_ingest.site
    target.mkdir(parents=True, exist_ok=True)
    for batch, part in frame.groupby("batch", sort=True):
        path = target / f"{batch}.json"
        doc = {
            "site": site_ingest.site,
            "batch": batch,
            "records": json.loads(part.to_json(orient="records")),
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        out.append(path)
    return out
