"""ingest_batch end to end on tiny landed batches: quarantine, structure, privacy, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cxr_fixtures import (
    NIH_HEADER,
    PATIENT_NAME,
    dicom_bytes,
    make_manifest,
    nih_batch,
    nih_row,
    phantom,
    png_bytes,
    tree_hashes,
    write_csv,
)
from pandera.errors import SchemaErrors

from clinaudit.sources.chexpert_labels import CHEXPERT_REQUIRED
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.landing import LandingError, read_manifest
from clinaudit.validation.errors import BatchStructureError
from clinaudit.validation.ingest import IngestConfig, ingest_batch, pseudonymise
from clinaudit.validation.privacy import phi_leaks
from clinaudit.validation.schemas import VALIDATED_COLUMNS, CanonicalLabels, ValidatedImages

KEY = b"k" * 32


def _append_row(d: Path, row: list[str]) -> None:
    with open(d / "labels.csv", "a", encoding="utf-8") as fh:
        fh.write(",".join(row) + "\n")


def _checks(res) -> dict[str, str]:
    q = res.quarantine
    return dict(zip(q["file"], q["check"], strict=True))


def test_clean_nih_dicom_batch(tmp_path: Path) -> None:
    d = nih_batch(tmp_path, n=4)
    calls: list[tuple[int, int]] = []
    res = ingest_batch(
        d, pseudonym_key=KEY, progress=lambda done, total: calls.append((done, total))
    )
    t = res.table
    assert (res.n_rows_in, res.n_images_ok, res.summary) == (4, 4, {})
    assert res.quarantine.empty and list(res.quarantine.columns)[:3] == ["site", "batch", "file"]
    assert tuple(t.columns) == VALIDATED_COLUMNS and "patient_id" not in t.columns
    assert t["image_id"].tolist() == sorted(t["image_id"])
    assert set(t["split"]) == {"eval"} and set(t["site"]) == {"site_a"}
    manifest = read_manifest(d)
    assert t["sha256"].tolist() == [manifest.entry(f).sha256 for f in t["file"]]
    assert t["meta_Modality"].eq("DX").all() and t["rows"].eq(64).all()
    assert t["noise_sigma"].between(0.01, 0.03).all()
    assert calls[-1] == (4, 4)
    ValidatedImages.validate(t)
    assert phi_leaks(t) == []
    assert issubclass(ValidatedImages, CanonicalLabels)
    with pytest.raises(SchemaErrors, match="column 'patient_id' not in DataFrameSchema"):
        ValidatedImages.validate(t.assign(patient_id="x"), lazy=True)


def test_no_phi_leaves_ingest_and_landing_is_unchanged(tmp_path: Path) -> None:
    d = nih_batch(tmp_path, n=4)
    before = tree_hashes(tmp_path)
    res = ingest_batch(d, pseudonym_key=KEY)
    assert tree_hashes(tmp_path) == before
    raw_ids = {"MRN00001", "MRN00002"}
    cells = [str(v) for frame in (res.table, res.quarantine) for v in frame.to_numpy().ravel()]
    cells += [str(c) for c in res.table.columns]
    for cell in cells:
        assert PATIENT_NAME not in cell and "DOE" not in cell and "JANE" not in cell
        assert not any(pid in cell for pid in raw_ids), cell


def test_pseudonyms_are_stable_and_keyed(tmp_path: Path) -> None:
    d = nih_batch(tmp_path, n=4)  # images 0,1 -> patient 1; images 2,3 -> patient 2
    a = ingest_batch(d, pseudonym_key=KEY).table["patient_pseudonym"].tolist()
    again = ingest_batch(d, pseudonym_key=KEY).table["patient_pseudonym"].tolist()
    other = ingest_batch(d, pseudonym_key=b"z" * 32).table["patient_pseudonym"].tolist()
    assert a == again and a[0] == a[1] and a[2] == a[3] and a[0] != a[2]
    assert not set(a) & set(other)
    assert a[0] == pseudonymise("MRN00001", site="site_a", key=KEY)
    assert pseudonymise("MRN00001", site="site_b", key=KEY) != a[0]
    with pytest.raises(ValueError, match="at least 16"):
        ingest_batch(d, pseudonym_key=b"short")


def test_bad_images_are_quarantined_and_the_rest_ingested(tmp_path: Path) -> None:
    d = nih_batch(tmp_path, n=6, manifest=False)
    images = d / "images"
    good = (images / "00000001_000.dcm").read_bytes()
    (images / "00000001_000.dcm").write_bytes(good[: len(good) // 2])  # corrupt DICOM
    rng = np.random.default_rng(5)
    png = png_bytes(np.rint(phantom(rng, 96, 96, noise=0.05) * 255).astype(np.uint8))
    (images / "trunc.png").write_bytes(png[: len(png) // 2])  # truncated PNG
    _append_row(d, nih_row("trunc.png", "Mass", patient="MRN00009"))
    (images / "tiny.dcm").write_bytes(dicom_bytes(np.zeros((32, 32), np.uint16)))
    _append_row(d, nih_row("tiny.dcm", patient="MRN00010"))
    _append_row(d, nih_row("absent.dcm", patient="MRN00011"))
    _append_row(d, nih_row("late.dcm", patient="MRN00012"))
    (images / "stray.dcm").write_bytes(good)
    make_manifest(d)
    # After the manifest: one image replaced by another valid DICOM, one deleted.
    (images / "00000002_000.dcm").write_bytes(good)
    (images / "00000003_000.dcm").unlink()
    # Landed after the manifest, named by the label table: present but unlisted.
    (images / "late.dcm").write_bytes(good)
    res = ingest_batch(d, pseudonym_key=KEY)
    assert res.table["image_id"].tolist() == [
        "00000000_000.dcm",
        "00000004_000.dcm",
        "00000005_000.dcm",
    ]
    assert res.n_rows_in == 10 and res.n_images_ok == 3
    checks = _checks(res)
    assert checks == {
        "images/00000001_000.dcm": "corrupt_dicom",
        "images/00000002_000.dcm": "hash_mismatch",
        "images/00000003_000.dcm": "image_missing",
        "images/trunc.png": "corrupt_image",
        "images/tiny.dcm": "image_size",
        # Neither on disk nor in the manifest: one bad row (re-creating the manifest cannot
        # help), not a manifest problem that would block the whole site.
        "images/absent.dcm": "image_missing",
        "images/late.dcm": "not_in_manifest",
        "images/stray.dcm": "image_unreferenced",
    }
    q = res.quarantine.set_index("file")
    assert q.loc["images/00000001_000.dcm", "row"] == 3  # data row 2 -> line 3
    assert q.loc["images/trunc.png", "row"] == 8
    assert "was not decoded" in q.loc["images/00000002_000.dcm", "message"]
    assert "remove its row from the label table" in q.loc["images/absent.dcm", "fix"]
    assert q.loc["images/stray.dcm", "severity"] == "warning"
    assert set(q.loc[q["severity"] == "error", "check"]) == set(checks.values()) - {
        "image_unreferenced"
    }
    assert res.summary["corrupt_dicom"] == 1 and sum(res.summary.values()) == len(q)


def test_results_do_not_depend_on_workers(tmp_path: Path) -> None:
    d = nih_batch(tmp_path, n=10, fmt="png", manifest=False)
    (d / "images" / "00000004_000.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    make_manifest(d)
    one = ingest_batch(d, pseudonym_key=KEY, config=IngestConfig(workers=1))
    calls: list[tuple[int, int]] = []
    two = ingest_batch(
        d,
        pseudonym_key=KEY,
        config=IngestConfig(workers=2),
        progress=lambda done, total: calls.append((done, total)),
    )
    pd.testing.assert_frame_equal(one.table, two.table)
    pd.testing.assert_frame_equal(one.quarantine, two.quarantine)
    assert one.n_images_ok == 9 and one.table["image_format"].eq("png").all()
    assert calls[-1] == (10, 10) and len(calls) > 1


def test_reference_batch_split_lists(tmp_path: Path) -> None:
    split = {"00000000_000.dcm": "train", "00000001_000.dcm": "test", "00000002_000.dcm": "train"}
    d = nih_batch(tmp_path, site="vendor_ref", n=4, split=split)
    res = ingest_batch(d, pseudonym_key=KEY)
    assert dict(zip(res.table["image_id"], res.table["split"], strict=True)) == split
    (rec,) = res.quarantine.itertuples()
    assert (rec.check, rec.file, rec.row) == ("split_missing", "images/00000003_000.dcm", 5)


def test_structural_failures(tmp_path: Path) -> None:
    d = nih_batch(tmp_path, n=2, manifest=False)
    with pytest.raises(LandingError, match="manifest.json is missing"):
        ingest_batch(d, pseudonym_key=KEY)
    path = make_manifest(d)
    doc = json.loads(path.read_text())
    doc["files"] = [f for f in doc["files"] if f["path"] != "labels.csv"]
    path.write_text(json.dumps(doc))
    with pytest.raises(BatchStructureError, match="not among its listed files") as info:
        ingest_batch(d, pseudonym_key=KEY)
    assert info.value.records[0].check == "label_file_unlisted"

    make_manifest(d)
    _append_row(d, nih_row("late.dcm"))
    with pytest.raises(BatchStructureError) as info:
        ingest_batch(d, pseudonym_key=KEY)
    assert (info.value.records[0].check, info.value.records[0].file) == (
        "hash_mismatch",
        "labels.csv",
    )

    write_csv(d / "labels.csv", [h for h in NIH_HEADER if h != "Patient Gender"], [])
    make_manifest(d)
    with pytest.raises(BatchStructureError, match="'Patient Gender' is missing"):
        ingest_batch(d, pseudonym_key=KEY)

    write_csv(d / "labels.csv", NIH_HEADER, [])
    make_manifest(d)
    with pytest.raises(BatchStructureError, match="0 data rows"):
        ingest_batch(d, pseudonym_key=KEY)


def test_config_restrictions_and_validation(tmp_path: Path) -> None:
    d = nih_batch(tmp_path, n=2, manifest=False)
    stored = np.rint(phantom(np.random.default_rng(0), 64, 64) * 4095).astype(np.uint16)
    (d / "images" / "00000001_000.dcm").write_bytes(dicom_bytes(stored, photometric="MONOCHROME1"))
    make_manifest(d)
    res = ingest_batch(
        d, pseudonym_key=KEY, config=IngestConfig(allowed_photometric=("MONOCHROME2",))
    )
    assert _checks(res) == {"images/00000001_000.dcm": "photometric"}
    res = ingest_batch(d, pseudonym_key=KEY, config=IngestConfig(allowed_bits=(8, 16)))
    assert set(res.quarantine["check"]) == {"bit_depth"} and res.table.empty
    assert tuple(res.table.columns) == VALIDATED_COLUMNS
    with pytest.raises(ValueError, match="workers=0"):
        IngestConfig(workers=0)
    with pytest.raises(ValueError, match="uncertainty"):
        IngestConfig(uncertainty="maybe")  # type: ignore[arg-type]


def test_chexpert_png_batch(tmp_path: Path) -> None:
    d = tmp_path / "cxr" / "site_c" / "b7"
    rng = np.random.default_rng(2)
    rows = []
    for k, (patient, study) in enumerate([(1, 1), (1, 2), (2, 1)]):
        rel = Path("train") / f"patient{patient:05d}" / f"study{study}" / "view1_frontal.png"
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(png_bytes(np.rint(phantom(rng, 64, 64) * 255).astype(np.uint8)))
        rows.append(
            [
                f"CheXpert-v1.0/{rel.as_posix()}",
                "Female",
                str(50 + k),
                "Frontal",
                "PA",
                "",
                "-1.0",
                "1.0",
                "",
            ]
        )
    write_csv(
        d / "labels.csv",
        [*CHEXPERT_REQUIRED, "No Finding", "Cardiomegaly", "Pleural Effusion", "Edema"],
        rows,
    )
    make_manifest(d, layout="chexpert")
    res = ingest_batch(d, pseudonym_key=KEY, config=IngestConfig(uncertainty="ignore"))
    t = res.table
    assert t["file"].tolist() == [
        "train/patient00001/study1/view1_frontal.png",
        "train/patient00001/study2/view1_frontal.png",
        "train/patient00002/study1/view1_frontal.png",
    ]
    assert t["follow_up"].tolist() == [0, 1, 0] and t["Cardiomegaly"].isna().all()
    assert t["Effusion"].eq(1.0).all() and t["Edema"].eq(0.0).all() and t["Mass"].isna().all()
    assert t["patient_pseudonym"].nunique() == 2
    assert res.labelled_findings == ("Cardiomegaly", "Effusion", "Edema")
    # CheXpert paths carry the patient id (patientNNNNN/...): reported, as for any export.
    assert set(res.quarantine["check"]) == {"unlabelled_findings", "identifier_in_image_id"}


def test_unlabelled_rows_need_the_option(tmp_path: Path) -> None:
    d = nih_batch(tmp_path, n=4, manifest=False)
    rows = [line.split(",") for line in (d / "labels.csv").read_text().splitlines()[1:]]
    for k in (1, 3):
        rows[k][1] = ""  # Finding Labels: not labelled
    write_csv(d / "labels.csv", NIH_HEADER, rows)
    make_manifest(d)
    res = ingest_batch(d, pseudonym_key=KEY)
    assert res.table["image_id"].tolist() == ["00000000_000.dcm", "00000002_000.dcm"]
    q = res.quarantine[res.quarantine["severity"] == "error"]
    assert q["check"].tolist() == ["unknown_finding"] * 2 and q["row"].tolist() == [3, 5]
    assert q["message"].str.contains("not labelled").all()
    res = ingest_batch(d, pseudonym_key=KEY, config=IngestConfig(allow_unlabelled=True))
    t = res.table.set_index("image_id")
    assert res.quarantine.empty and res.n_images_ok == 4
    findings = list(FINDINGS)
    assert t.loc[["00000001_000.dcm", "00000003_000.dcm"], findings].isna().all().all()
    assert t.loc[["00000000_000.dcm", "00000002_000.dcm"], findings].notna().all().all()
    assert t["mean_intensity"].notna().all() and t["patient_pseudonym"].str.len().eq(16).all()
    ValidatedImages.validate(res.table, lazy=True)
    with pytest.raises(ValueError, match="allow_unlabelled='yes'"):
        IngestConfig(allow_unlabelled="yes")  # type: ignore[arg-type]
