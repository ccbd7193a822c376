"""Ingest of study ``multisite_cxr``: image batches, and the labels a site lands after them.

A site may land its images before its labels: an NIH image batch whose ``Finding Labels`` are
empty keeps those rows as not labelled (:class:`CxrIngestOptions`), and a later *site reads*
batch (:data:`SITE_READS`, the reads format of :mod:`clinaudit.studies.image_reads`) labels
them::

    landing/cxr/<site>/<batch>/
        manifest.json     label_file "site_reads.csv", label_layout "site_reads"
        site_reads.csv    Image Index, Finding Labels, Read Date, Reason ("site_labels")

:func:`finish_cxr_partition` fills the rows' 14 finding columns from the reads exactly as an NIH
label table would have, and keeps ``read_batch`` / ``read_date`` so the audit can tell which
labels arrived late. A row nobody has read stays unlabelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from clinaudit.sources.landing import BatchRef
from clinaudit.studies.image_ingest import ImageIngestOptions, ingest_image_batch
from clinaudit.studies.image_reads import (
    ReadsFormat,
    ingest_reads_batch,
    is_reads_batch,
    label_rows_from_reads,
)
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest

__all__ = ["SITE_READS", "CxrIngestOptions", "finish_cxr_partition", "ingest_cxr_batch"]

#: The labels a site lands after its images (one reason: ``site_labels``).
SITE_READS = ReadsFormat("site_reads.csv", "site_reads", ("site_labels",), "cxr")


@dataclass(frozen=True)
class CxrIngestOptions(ImageIngestOptions):
    """Ingest settings of a ``multisite_cxr`` site: as every image study's, and a site may land
    its images before its labels (``allow_unlabelled`` on): an NIH row with an empty ``Finding
    Labels`` is kept as not labelled until a site reads batch (:data:`SITE_READS`) labels it."""

    allow_unlabelled: bool = True


def ingest_cxr_batch(batch: BatchRef, *, key: bytes, options: ImageIngestOptions) -> BatchIngest:
    """A site reads batch (:data:`SITE_READS`), or an image batch (NIH or CheXpert layout)."""
    if is_reads_batch(batch, SITE_READS):
        return ingest_reads_batch(batch, SITE_READS)
    return ingest_image_batch(batch, key=key, options=options)


def finish_cxr_partition(ingest: PartitionIngest) -> PartitionIngest:
    """The site's landed reads as the labels of the rows they read
    (:func:`~clinaudit.studies.image_reads.label_rows_from_reads`)."""
    return label_rows_from_reads(ingest, SITE_READS)
