"""Reads that land after their images (clinaudit.studies.image_reads): multisite_cxr site labels
that arrive late become the rows' labels, exactly as if the images had landed labelled."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cxr_fixtures import NIH_HEADER, make_manifest, nih_row, phantom, png_bytes, write_csv

from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.landing import BatchRef, write_manifest
from clinaudit.studies.cxr_triage.reads import TRIAGE_READS
from clinaudit.studies.image_ingest import ImageIngestOptions, labelled_rows
from clinaudit.studies.image_reads import (
    ATTACHED,
    ReadsFormat,
    attach_reads,
    ingest_reads_batch,
    write_reads_batch,
)
from clinaudit.studies.multisite_cxr.ingest import (
    SITE_READS,
    CxrIngestOptions,
    finish_cxr_partition,
    ingest_cxr_batch,
)
from clinaudit.validation.errors import BatchStructureError
from clinaudit.validation.ingest_loop import PartitionIngest, ingest_partition

KEY = b"k" * 32
OPTIONS = CxrIngestOptions(workers=1)
CREATED = "2024-03-01T00:00:00Z"
#: Six images: the first four land unlabelled, the last two labelled.
LANDED = ["", "", "", "", "Mass", "No Finding"]
#: What the site's radiologists read for the first three (the fourth stays unread).
READ = ["No Finding", "Mass|Effusion", "Hernia"]


def _image(k: int) -> str:
    return f"{k:08d}_000.png"


def _image_batch(landing: Path, site: str, batch: str, labels: list[str]) -> None:
    d = landing / "cxr" / site / batch
    (d / "images").mkdir(parents=True)
    rng = np.random.default_rng(7)
    rows = []
    for k, text in enumerate(labels):
        img = np.rint(phantom(rng, 64, 64) * 255).astype(np.uint8)
        (d / "images" / _image(k)).write_bytes(png_bytes(img))
        rows.append(nih_row(_image(k), text, patient=f"P{k // 2:05d}", age=str(40 + k)))
    write_csv(d / "labels.csv", NIH_HEADER, rows)
    make_manifest(d)


def _reads(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "finding_labels", "read_date", "reason"])


def _land_reads(landing: Path, site: str, batch: str, rows) -> Path:
    return write_reads_batch(
        landing, fmt=SITE_READS, site=site, batch=batch, reads=_reads(rows), simulated=True,
        created_utc=CREATED,
    )  # fmt: skip


def _ingest(landing: Path, site: str, *, options=OPTIONS, finish: bool = True) -> PartitionIngest:
    part = ingest_partition(
        landing, "cxr", site,
        ingest_batch=lambda ref: ingest_cxr_batch(ref, key=KEY, options=options),
        empty_table=pd.DataFrame(), sort_by=("batch", "image_id"),
    )  # fmt: skip
    return finish_cxr_partition(part) if finish else part


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """site_a: images first (four unlabelled), then reads of three of them; twin: the same
    images landed with those labels from the start."""
    landing = tmp_path_factory.mktemp("image_reads") / "landing"
    _image_batch(landing, "site_a", "img-0001", LANDED)
    _land_reads(
        landing, "site_a", "reads-0001",
        [(_image(k), text, f"2024-02-0{k + 1}", "site_labels") for k, text in enumerate(READ)],
    )  # fmt: skip
    _image_batch(landing, "twin", "img-0001", [*READ, *LANDED[len(READ) :]])
    return landing


# ---------------------------------------------------------------------------------- late labels


def test_an_image_batch_may_land_before_its_labels(landed: Path) -> None:
    assert CxrIngestOptions().allow_unlabelled and not ImageIngestOptions().allow_unlabelled
    part = _ingest(landed, "site_a", finish=False)
    t = part.table.set_index("image_id")
    assert len(t) == 6 and part.quarantine.empty
    assert t.loc[[_image(k) for k in range(4)], list(FINDINGS)].isna().all().all()
    assert labelled_rows(part.table).sum() == 2
    # The same batch under the image studies' default is refused row by row.
    strict = _ingest(landed, "site_a", options=ImageIngestOptions(workers=1), finish=False)
    q = strict.quarantine[strict.quarantine["batch"] == "img-0001"]
    assert sorted(q["row"]) == [2, 3, 4, 5] and set(q["check"]) == {"unknown_finding"}
    assert set(q["column"]) == {"Finding Labels"} and len(strict.table) == 2


def test_late_labels_equal_the_labels_of_a_twin_that_landed_labelled(landed: Path) -> None:
    part = _ingest(landed, "site_a")
    twin = _ingest(landed, "twin").table.set_index("image_id")
    t = part.table.set_index("image_id")
    read = [_image(k) for k in range(len(READ))]
    got, want = t.loc[read, list(FINDINGS)], twin.loc[read, list(FINDINGS)]
    assert got.dtypes.eq(float).all() and want.dtypes.eq(float).all()
    pd.testing.assert_frame_equal(got, want)
    assert t.loc[_image(1), "Mass"] == 1.0 and t.loc[_image(1), "Effusion"] == 1.0
    assert t.loc[_image(0), list(FINDINGS)].eq(0.0).all()  # No Finding: all 14 absent
    # Every column but the read_* ones and what depends on the site equals the twin's row.
    same = [c for c in twin.columns if c not in ("site", "patient_pseudonym", *ATTACHED)]
    pd.testing.assert_frame_equal(t.loc[read, same], twin.loc[read, same])
    # Which labels arrived late, and when; the unread image stays unlabelled.
    assert t.loc[read, "read_batch"].eq("reads-0001").all()
    assert t.loc[read, "read_date"].tolist() == ["2024-02-01", "2024-02-02", "2024-02-03"]
    assert t.loc[read, "read_reason"].eq("site_labels").all()
    assert t.loc[read, "read_findings"].tolist() == READ
    assert t.loc[[_image(3), _image(4)], "read_batch"].eq("").all()
    assert t.loc[_image(3), list(FINDINGS)].isna().all()
    assert t.loc[_image(4), "Mass"] == 1.0  # landed labelled, untouched
    assert labelled_rows(part.table).sum() == 5
    rows = part.batches.set_index("batch")
    assert rows.loc["reads-0001", "n_rows_ok"] == 3 and rows.loc["reads-0001", "status"] == (
        "ingested"
    )
    assert rows.loc["img-0001", "n_rows_ok"] == 6


def test_attach_reads_alone_leaves_the_findings_empty(landed: Path) -> None:
    part = attach_reads(_ingest(landed, "site_a", finish=False), SITE_READS)
    t = part.table.set_index("image_id")
    assert t.loc[_image(1), "read_findings"] == "Mass|Effusion"
    assert t.loc[[_image(k) for k in range(4)], list(FINDINGS)].isna().all().all()


def test_reads_of_unknown_labelled_or_already_read_images_are_quarantined(
    landed: Path, tmp_path: Path
) -> None:
    import shutil

    landing = tmp_path / "landing"
    shutil.copytree(landed, landing)
    _land_reads(
        landing, "site_a", "reads-0002",
        [
            ("nobody.png", "No Finding", "2024-02-10", "site_labels"),  # line 2
            (_image(4), "No Finding", "2024-02-10", "site_labels"),  # labelled on landing
            (_image(1), "Pneumonia", "2024-02-10", "site_labels"),  # read in reads-0001
            (_image(3), "Pneumothorax", "2024-02-10", "site_labels"),  # accepted
            (_image(3), "Edema", "2024-02-10", "site_labels"),  # twice in this file
            (_image(2), "Edema", "2024-02-10", "reread"),  # not a site_reads reason
        ],
    )  # fmt: skip
    part = _ingest(landing, "site_a")
    q = part.quarantine[part.quarantine["batch"] == "reads-0002"].set_index("row")
    assert set(q["file"]) == {"site_reads.csv"}
    assert q.loc[2, "check"] == "unknown_image" and q.loc[2, "column"] == "Image Index"
    assert "'nobody.png' is not a landed image of 'site_a'" in q.loc[2, "message"]
    assert "image batch first" in q.loc[2, "fix"]
    assert q.loc[3, "check"] == "read_of_labelled" and "landed labelled" in q.loc[3, "message"]
    assert "drop this row" in q.loc[3, "fix"] and q.loc[3, "column"] == "Image Index"
    assert q.loc[4, "check"] == "duplicate_read" and q.loc[4, "column"] == "Image Index"
    assert "already read on 2024-02-02 (batch reads-0001)" in q.loc[4, "message"]
    assert q.loc[6, "check"] == "read_row" and "first on line 5" in q.loc[6, "message"]
    assert q.loc[7, "check"] == "read_row" and q.loc[7, "column"] == "Reason"
    assert "['site_labels']" in q.loc[7, "fix"]
    assert 5 not in q.index
    t = part.table.set_index("image_id")
    assert t.loc[_image(3), "Pneumothorax"] == 1.0 and t.loc[_image(3), "read_batch"] == (
        "reads-0002"
    )
    assert t.loc[_image(1), "Pneumonia"] == 0.0  # the first read counts
    assert t.loc[_image(4), "Mass"] == 1.0 and t.loc[_image(4), "read_batch"] == ""
    rows = part.batches.set_index("batch")
    assert rows.loc["reads-0002", "n_rows_ok"] == 1
    assert rows.loc["reads-0002", "n_quarantined"] == 5
    assert labelled_rows(part.table).sum() == 6


# ---------------------------------------------------------------------------------- the batch


def test_a_reads_batch_holds_only_its_file(tmp_path: Path) -> None:
    d = tmp_path / "cxr" / "site_a" / "reads-0001"
    d.mkdir(parents=True)
    write_csv(d / "labels.csv", ["Image Index", "Finding Labels", "Read Date", "Reason"], [])
    write_manifest(
        d, study="cxr", site="site_a", batch="reads-0001", label_layout="site_reads",
        simulated=True, created_utc=CREATED,
    )  # fmt: skip
    ref = BatchRef("cxr", "site_a", "reads-0001", d, True)
    with pytest.raises(BatchStructureError) as err:
        ingest_cxr_batch(ref, key=KEY, options=OPTIONS)
    (rec,) = err.value.records
    assert (rec.file, rec.column, rec.check) == ("manifest.json", "label_file", "reads_batch")
    assert "holds only site_reads.csv" in rec.message and "site_reads.csv" in rec.fix
    # An extra file beside the reads fails the batch too, naming the file.
    d2 = _land_reads(
        tmp_path, "site_a", "reads-0002", [(_image(0), "Mass", "2024-02-01", "site_labels")]
    )
    (d2 / "notes.txt").write_text("x")
    with pytest.raises(BatchStructureError) as err:
        ingest_reads_batch(BatchRef("cxr", "site_a", "reads-0002", d2, True), SITE_READS)
    assert {r.file for r in err.value.records} >= {"notes.txt"}
    # A triage reads batch is not a site reads batch: the image ingest refuses its layout.
    d3 = write_reads_batch(
        tmp_path, fmt=replace(TRIAGE_READS, landing_dir="cxr"), site="site_a", batch="reads-0003",
        reads=_reads([(_image(0), "Mass", "2024-02-01", "reread")]), simulated=True,
        created_utc=CREATED,
    )  # fmt: skip
    with pytest.raises(BatchStructureError, match="not a chest X-ray label layout"):
        ingest_cxr_batch(
            BatchRef("cxr", "site_a", "reads-0003", d3, True), key=KEY, options=OPTIONS
        )
    with pytest.raises(Exception, match="immutable"):
        _land_reads(tmp_path, "site_a", "reads-0002", [(_image(0), "Mass", "2024-02-01", "x")])


def test_a_reads_format_needs_reasons() -> None:
    with pytest.raises(ValueError, match="non-empty tuple"):
        ReadsFormat("r.csv", "r_reads", (), "cxr")
