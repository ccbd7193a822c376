"""Ingest shared by the image studies (chest X-ray audit, triage, ...): one landed image batch
through the image-batch core, and the checks of a partition's images.

The batch is ingested by :func:`clinaudit.validation.ingest.ingest_batch` (manifest, structure,
label table, every image hashed, decoded, checked and measured, keyed pseudonyms,
``ValidatedImages`` schema). The checks: the Great Expectations label suite (blocking) on the
*labelled* rows (a triage backlog lands unlabelled on purpose), and opaque image ids (warning).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.landing import BatchRef
from clinaudit.validation.cohort import cohort_summary
from clinaudit.validation.errors import records_markdown
from clinaudit.validation.gx_suite import LabelSuiteConfig, run_label_suite
from clinaudit.validation.ingest import IngestConfig, ingest_batch
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest
from clinaudit.validation.privacy import phi_leaks
from clinaudit.validation.schemas import VALIDATED_COLUMNS

from .base import CheckOutcome, CheckSpec, IngestOptions, Study

__all__ = [
    "IMAGE_CHECKS",
    "ImageStudy",
    "ImageIngestOptions",
    "check_image_partition",
    "empty_images",
    "ingest_image_batch",
    "labelled_rows",
]


@dataclass(frozen=True)
class ImageIngestOptions(IngestOptions):
    """Ingest settings of an image partition (run config of ``<study>/validated``).

    ``uncertainty``: CheXpert policy for uncertain labels (zeros | ones | ignore);
    ``max_pixels``: decompression-bomb guard; ``workers``: image decoding processes;
    ``min_rows``: fewest labelled rows the label expectations accept; ``allow_unlabelled``: keep
    NIH rows with an empty ``Finding Labels`` as not labelled (a triage backlog).
    """

    uncertainty: str = "zeros"
    max_pixels: int = 50_000_000
    workers: int = 2
    min_rows: int = 20
    allow_unlabelled: bool = False

    def core(self) -> IngestConfig:
        return IngestConfig(
            uncertainty=self.uncertainty,  # type: ignore[arg-type]
            max_pixels=self.max_pixels,
            workers=self.workers,
            allow_unlabelled=self.allow_unlabelled,
        )


IMAGE_CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(
        "label_expectations",
        "Great Expectations 1.x suite on the labelled rows: row count, null rates, age/sex "
        "domains, prevalence bounds per finding.",
        blocking=True,
    ),
    CheckSpec(
        "image_ids_opaque",
        "No image id or file name contains the row's Patient ID (image ids leave ingest as "
        "given, so vendor scores can be matched on them).",
    ),
)


def empty_images() -> pd.DataFrame:
    """The validated image table's columns, no rows."""
    return pd.DataFrame({c: pd.Series(dtype=object) for c in VALIDATED_COLUMNS})


def ingest_image_batch(batch: BatchRef, *, key: bytes, options: ImageIngestOptions) -> BatchIngest:
    """One ready batch through the image-batch core (raises for a batch that cannot be read)."""
    res = ingest_batch(batch.path, pseudonym_key=key, config=options.core())
    return BatchIngest(
        table=res.table,
        quarantine=res.quarantine,
        content_hash=res.manifest.content_hash,
        simulated=res.manifest.simulated,
        n_rows_in=res.n_rows_in,
    )


def labelled_rows(table: pd.DataFrame) -> pd.Series:
    """Rows with at least one finding labelled (an unlabelled backlog row has none)."""
    present = [f for f in FINDINGS if f in table.columns]
    if not present or not len(table):
        return pd.Series(False, index=table.index)
    return pd.Series((~np.isnan(table[present].to_numpy(float))).any(axis=1), index=table.index)


def check_image_partition(
    ingest: PartitionIngest, options: ImageIngestOptions
) -> list[CheckOutcome]:
    """The image checks of one partition's ingest (see :data:`IMAGE_CHECKS`).

    With ``allow_unlabelled`` the label suite runs on the labelled rows only; a partition whose
    rows are all unlabelled passes it with a note (its labels come from another partition's
    development data, or never).
    """
    table, quarantine = ingest.table, ingest.quarantine
    suite_cfg = LabelSuiteConfig(
        min_rows=options.min_rows,
        # Under the "ignore" policy uncertain labels are NaN by design, not missing data.
        max_unlabelled_rate=1.0 if options.uncertainty == "ignore" else 0.05,
    )
    rows = table[labelled_rows(table)] if options.allow_unlabelled else table
    n_unlabelled = len(table) - len(rows)
    if len(rows):
        suite = run_label_suite(rows, suite_cfg)
        passed = suite.success
        meta: dict[str, Any] = {
            "results": suite.to_markdown(),
            "n_failed": len(suite.failures),
            "findings_not_labelled": list(suite.unlabelled),
        }
    else:
        passed = bool(options.allow_unlabelled and len(table))
        meta = {"results": "# no labelled rows ingested", "n_failed": 0 if passed else 1}
    if options.allow_unlabelled:
        meta["n_unlabelled_rows"] = n_unlabelled
    embedded = (
        quarantine[quarantine["check"] == "identifier_in_image_id"]
        if len(quarantine)
        else quarantine
    )
    return [
        CheckOutcome("label_expectations", bool(passed), metadata=meta),
        CheckOutcome(
            "image_ids_opaque",
            embedded.empty,
            severity="warn",
            metadata={"findings": "#### Image ids\n\n" + records_markdown(embedded)},
        ),
    ]


class ImageStudy(Study):
    """A study whose rows are landed images: the ingest half of the protocol, written once.

    Subclasses add the model, evidence, decisions, monitoring, report and simulator; they may
    narrow ``ingest_options`` (e.g. a backlog that lands unlabelled) or ``check_partition``.
    """

    unit = "image"
    partition_by = "site"
    ingest_checks = IMAGE_CHECKS
    ingest_options = ImageIngestOptions
    sort_by = ("batch", "image_id")
    identifiers = ("Patient ID", "PatientID", "PatientName")

    def ingest_batch(self, batch: BatchRef, *, key: bytes, options: Any) -> BatchIngest:
        return ingest_image_batch(batch, key=key, options=options)

    def empty_table(self) -> pd.DataFrame:
        return empty_images()

    def privacy_problems(self, table: pd.DataFrame) -> list[str]:
        return phi_leaks(table)

    def check_partition(self, ingest: PartitionIngest, options: Any) -> list[CheckOutcome]:
        return check_image_partition(ingest, options)

    def cohort(
        self, validated: Mapping[str, pd.DataFrame], quarantine: Mapping[str, pd.DataFrame]
    ) -> pd.DataFrame:
        return cohort_summary(validated, quarantine)
