"""multisite_cxr ingest: the image studies' shared batch ingest and checks
(:mod:`clinaudit.studies.image_ingest`) under this study's names. Every row must be labelled
(``allow_unlabelled`` stays off), so the label suite runs on the whole site."""

from __future__ import annotations

from clinaudit.studies.image_ingest import (
    IMAGE_CHECKS,
    ImageIngestOptions,
    check_image_partition,
    empty_images,
    ingest_image_batch,
)

__all__ = ["CHECKS", "CxrIngestOptions", "check_site", "empty_images", "ingest_image_batch"]

CHECKS = IMAGE_CHECKS
#: Ingest settings of a site (run config of ``multisite_cxr/validated``).
CxrIngestOptions = ImageIngestOptions
check_site = check_image_partition
