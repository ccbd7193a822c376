"""Radiologist reads of backlog studies (study ``cxr_triage``): the triage reads format.

After the audit, two kinds of backlog (pile) studies get read and labelled: the random
**audit sample** the evidence stage draws (``evidence/audit_sample``), which checks the
certificate on the backlog itself, and the random **re-read quota** of auto-cleared studies,
which feeds the sequential miss-rate monitor. Their outcomes land as a *reads batch* beside the
image batches of the same site::

    landing/cxr_triage/<site>/<batch>/
        manifest.json     label_file "pile_reads.csv", label_layout "triage_reads"
        pile_reads.csv    one row per read, columns READ_COLUMNS (extra columns are ignored)

``Reason`` is ``audit_sample`` or ``reread``; the other columns, the checks and the quarantine
rules are those of every reads batch (:mod:`clinaudit.studies.image_reads`), with the format
:data:`TRIAGE_READS`. :func:`attach_reads` (the study's ``finish_partition``) writes the reads
onto the site's backlog rows as ``read_*`` columns: the finding columns stay empty, so a read
study never becomes training, calibration or test data. Landed files are only read.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from clinaudit.sources.landing import BatchRef
from clinaudit.studies import image_reads
from clinaudit.studies.image_reads import ATTACHED, READ_COLUMNS, ReadsFormat
from clinaudit.validation.ingest_loop import BatchIngest, PartitionIngest

__all__ = [
    "ATTACHED",
    "READS_FILE",
    "READS_LAYOUT",
    "READ_COLUMNS",
    "READ_REASONS",
    "TRIAGE_READS",
    "attach_reads",
    "ingest_reads_batch",
    "is_reads_batch",
    "write_reads_batch",
]

#: The triage reads batch: ``pile_reads.csv`` under ``landing/cxr_triage``. Reasons: the
#: evidence stage's random sample (``audit_sample``), or the re-read quota (``reread``).
TRIAGE_READS = ReadsFormat(
    "pile_reads.csv", "triage_reads", ("audit_sample", "reread"), "cxr_triage", subject="backlog"
)
READS_FILE = TRIAGE_READS.file
READS_LAYOUT = TRIAGE_READS.layout
READ_REASONS: tuple[str, ...] = TRIAGE_READS.reasons


def write_reads_batch(
    landing_root: str | os.PathLike[str],
    *,
    site: str,
    batch: str,
    reads: pd.DataFrame,
    simulated: bool,
    created_utc: str,
    landing_dir: str = TRIAGE_READS.landing_dir,
) -> Path:
    """Land ``reads`` as a triage reads batch (:func:`.image_reads.write_reads_batch`)."""
    return image_reads.write_reads_batch(
        landing_root,
        fmt=replace(TRIAGE_READS, landing_dir=landing_dir),
        site=site,
        batch=batch,
        reads=reads,
        simulated=simulated,
        created_utc=created_utc,
    )


def is_reads_batch(batch: BatchRef) -> bool:
    """Whether ``batch`` is a triage reads batch (its manifest names ``triage_reads``)."""
    return image_reads.is_reads_batch(batch, TRIAGE_READS)


def ingest_reads_batch(batch: BatchRef) -> BatchIngest:
    """Verify and parse one triage reads batch (:func:`.image_reads.ingest_reads_batch`)."""
    return image_reads.ingest_reads_batch(batch, TRIAGE_READS)


def attach_reads(ingest: PartitionIngest) -> PartitionIngest:
    """Write the landed reads onto the backlog rows, findings left empty
    (:func:`.image_reads.attach_reads`)."""
    return image_reads.attach_reads(ingest, TRIAGE_READS)
