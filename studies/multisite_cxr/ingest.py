"""multisite_cxr ingest: one landed chest X-ray batch, and the study's checks of a site.

The batch itself is ingested by the image-batch core (:func:`clinaudit.validation.ingest.
ingest_batch`: manifest, structure, label table, every image hashed, decoded, checked and
measured, keyed pseudonyms, ``ValidatedImages`` schema); this module adapts it to the study
protocol and adds the study's checks: the Great Expectations label suite (blocking) and opaque
image ids (warning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from clinaudit.sources.landing import BatchRef
from clinaudit.studies.base import CheckOutcome, CheckSpec, IngestOptions
from clinaudit.validation.errors import records_markdown
from clinaudit.validation.gx_suite import LabelSuiteConfig, run_label_suite
from clinaudit.validation.ingest import IngestConfig, ingest_batch
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest
from clinaudit.validation.schemas import VALIDATED_COLUMNS

__all__ = ["CHECKS", "CxrIngestOptions", "check_site", "empty_images", "ingest_image_batch"]


@dataclass(frozen=True)
class CxrIngestOptions(IngestOptions):
    """Ingest settings of a site (run config of ``multisite_cxr/validated``).

    ``uncertainty``: CheXpert policy for uncertain labels (zeros | ones | ignore);
    ``max_pixels``: decompression-bomb guard; ``workers``: image decoding processes;
    ``min_rows``: fewest rows the label expectations accept.
    """

    uncertainty: str = "zeros"
    max_pixels: int = 50_000_000
    workers: int = 2
    min_rows: int = 20

    def core(self) -> IngestConfig:
        return IngestConfig(
            uncertainty=self.uncertainty,  # type: ignore[arg-type]
            max_pixels=self.max_pixels,
            workers=self.workers,
        )


CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(
        "label_expectations",
        "Great Expectations 1.x suite: row count, null rates, age/sex domains, prevalence bounds "
        "per finding.",
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


def ingest_image_batch(batch: BatchRef, *, key: bytes, options: CxrIngestOptions) -> BatchIngest:
    """One ready batch through the image-batch core (raises for a batch that cannot be read)."""
    res = ingest_batch(batch.path, pseudonym_key=key, config=options.core())
    return BatchIngest(
        table=res.table,
        quarantine=res.quarantine,
        content_hash=res.manifest.content_hash,
        simulated=res.manifest.simulated,
        n_rows_in=res.n_rows_in,
    )


def check_site(ingest: PartitionIngest, options: CxrIngestOptions) -> list[CheckOutcome]:
    """The study's checks of one site's ingest (see :data:`CHECKS`)."""
    table, quarantine = ingest.table, ingest.quarantine
    suite_cfg = LabelSuiteConfig(
        min_rows=options.min_rows,
        # Under the "ignore" policy uncertain labels are NaN by design, not missing data.
        max_unlabelled_rate=1.0 if options.uncertainty == "ignore" else 0.05,
    )
    suite = run_label_suite(table, suite_cfg) if len(table) else None
    suite_meta: dict[str, Any] = {
        "results": suite.to_markdown() if suite else "# no rows ingested",
        "n_failed": len(suite.failures) if suite else 1,
        "findings_not_labelled": list(suite.unlabelled) if suite else [],
    }
    embedded = (
        quarantine[quarantine["check"] == "identifier_in_image_id"]
        if len(quarantine)
        else quarantine
    )
    return [
        CheckOutcome("label_expectations", bool(suite and suite.success), metadata=suite_meta),
        CheckOutcome(
            "image_ids_opaque",
            embedded.empty,
            severity="warn",
            metadata={"findings": "#### Image ids\n\n" + records_markdown(embedded)},
        ),
    ]
