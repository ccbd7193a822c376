"""Landing a local VinDr-PCXR copy: a small fake copy in the real layout (``train/*.dicom``,
``image_labels_train.csv``, ``annotations_train.csv``) is landed, read back by the ingest, and
every kind of incomplete copy is refused with the file, column and fix."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from clinaudit.sources.dicom_io import CxrDicomMeta, deterministic_uid, write_cxr_dicom
from clinaudit.sources.landing import LandingError, read_manifest, verify_batch
from clinaudit.sources.peds_vindr import ingest_peds_batch
from clinaudit.sources.vindr_pcxr import CLASS_MAP, category_of, land_vindr_pcxr, main

KEY = b"test-pseudonym-key-0123456789"
# image id -> (PatientID, age string, sex, view)
IMAGES = {
    "0a1b": ("P1", "008M", "M", "AP"),
    "1c2d": ("P1", "009M", "M", "AP"),
    "2e3f": ("", "006Y", "F", "PA"),
    "3a4b": ("P3", "010Y", "F", "PA"),
}
LABEL_COLUMNS = ["image_id", "rad_ID", "Consolidation", "Cardiomegaly", "Pleural effusion",
                 "Bronchitis", "No finding"]  # fmt: skip


def _dicom(image_id: str, patient: str, age: str, sex: str, view: str) -> bytes:
    meta = CxrDicomMeta(
        deterministic_uid("sop", image_id), deterministic_uid("study", image_id),
        deterministic_uid("series", image_id), patient, "ANON", sex, 0, view, "DX", "Vendor",
        "Model", "HOSPITAL", "MONOCHROME1", 12, 0.2, 70.0, "20200101",
    )  # fmt: skip
    pixels = (np.arange(100 * 80, dtype=np.uint16).reshape(100, 80) % 4096).astype(np.uint16)
    ds = pydicom.dcmread(io.BytesIO(write_cxr_dicom(None, pixels, meta)))
    ds.PatientAge = age
    if not patient:
        del ds.PatientID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture()
def vindr(tmp_path: Path) -> Path:
    src = tmp_path / "vindr-pcxr"
    (src / "train").mkdir(parents=True)
    for image_id, info in IMAGES.items():
        (src / "train" / f"{image_id}.dicom").write_bytes(_dicom(image_id, *info))
    labels = pd.DataFrame(
        [["0a1b", "R1", 1, 0, 0, 1, 0], ["0a1b", "R2", 0, 0, 0, 1, 0],
         ["1c2d", "R1", 0, 1, 1, 0, 0], ["2e3f", "R3", 0, 0, 0, 0, 1],
         ["3a4b", "R3", 0, 0, 0, 0, 1]],
        columns=LABEL_COLUMNS,
    )  # fmt: skip
    labels.to_csv(src / "image_labels_train.csv", index=False)
    ann = pd.DataFrame(
        [["0a1b", "R1", "Consolidation", 10.0, 20.0, 30.0, 50.0],
         ["0a1b", "R2", "Other opacity", 5.0, 5.0, 9.0, 9.0],
         ["1c2d", "R1", "Cardiomegaly", 20.0, 40.0, 60.0, 80.0],
         ["1c2d", "R1", "Pleural effusion", 4.0, 70.0, 20.0, 95.0],
         ["1c2d", "R1", "Pleural effusion", 60.0, 75.0, 76.0, 99.0],
         ["2e3f", "R3", "No finding", None, None, None, None],
         ["3a4b", "R3", "No finding", None, None, None, None]],
        columns=["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
    )  # fmt: skip
    ann.to_csv(src / "annotations_train.csv", index=False)
    return src


def test_land_then_ingest_a_fake_vindr_copy(vindr: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in vindr.rglob("*") if p.is_file()}
    out = land_vindr_pcxr(vindr, tmp_path / "landing", site="vindr", batch="train-0001", limit=3)
    assert (out.n_images, out.n_label_rows, out.n_annotation_rows) == (3, 4, 6)
    batch_dir = out.batch_dir
    assert batch_dir == tmp_path / "landing" / "peds_vqa" / "vindr" / "train-0001"
    manifest = read_manifest(batch_dir)
    assert not manifest.simulated and manifest.label_layout == "peds_vindr"
    assert verify_batch(batch_dir, manifest).ok
    assert json.loads((batch_dir / "manifest.json").read_text())["simulated"] is False
    assert sorted(p.name for p in (batch_dir / "images").iterdir()) == [
        "0a1b.dicom", "1c2d.dicom", "2e3f.dicom",
    ]  # fmt: skip
    assert (batch_dir / "images" / "0a1b.dicom").read_bytes() == before["0a1b.dicom"]
    meta = pd.read_csv(batch_dir / "metadata.csv", dtype=str, keep_default_na=False)
    assert meta.values.tolist() == [
        ["0a1b", "P1", "008M", "M", "AP"], ["1c2d", "P1", "009M", "M", "AP"],
        ["2e3f", "2e3f", "006Y", "F", "PA"],
    ]  # fmt: skip
    assert {p.name: p.read_bytes() for p in vindr.rglob("*") if p.is_file()} == before

    res = ingest_peds_batch(batch_dir, pseudonym_key=KEY)
    assert res.quarantine[res.quarantine["severity"] == "error"].empty
    warnings = set(res.quarantine["check"])
    assert warnings == {"label_column_missing"}  # no interstitial label column in this copy
    t = res.table.set_index("image_id")
    assert t["consolidation"].tolist() == [1, 0, 0]
    assert t["cardiomegaly"].tolist() == [0, 1, 0] and t["effusion"].tolist() == [0, 1, 0]
    assert (t["rows"] == 100).all() and (t["columns"] == 80).all()
    box = [f"consolidation_{k}" for k in ("x0", "y0", "x1", "y1")]
    assert t.loc["0a1b", box].tolist() == [10 / 80, 20 / 100, 30 / 80, 0.5]
    # Two effusion boxes merge into their union, normalised by columns (x) and rows (y).
    assert t.loc["1c2d", ["effusion_x0", "effusion_y0", "effusion_x1", "effusion_y1"]].tolist() == [
        4 / 80, 0.70, 76 / 80, 0.99,
    ]  # fmt: skip
    assert (
        t.loc["0a1b", "age_years"] == pytest.approx(8 / 12) and t.loc["0a1b", "age_band"] == "0-1"
    )
    assert t.loc["0a1b", "patient"] == t.loc["1c2d", "patient"] != t.loc["2e3f", "patient"]


def test_incomplete_copies_are_refused_with_the_file_and_fix(vindr: Path, tmp_path: Path) -> None:
    (vindr / "train" / "2e3f.dicom").unlink()
    with pytest.raises(LandingError, match=r"1 of 4 images .*2e3f\.dicom.*--limit"):
        land_vindr_pcxr(vindr, tmp_path / "landing", site="vindr", batch="b1")
    assert not (tmp_path / "landing").exists()

    ann = pd.read_csv(vindr / "annotations_train.csv").drop(columns=["x_max"])
    ann.to_csv(vindr / "annotations_train.csv", index=False)
    with pytest.raises(LandingError, match=r"annotations_train\.csv.*\['x_max'\] are missing"):
        land_vindr_pcxr(vindr, tmp_path / "landing", site="vindr", batch="b1", limit=1)

    (vindr / "image_labels_train.csv").unlink()
    with pytest.raises(LandingError, match=r"image_labels_train\.csv.*download"):
        land_vindr_pcxr(vindr, tmp_path / "landing", site="vindr", batch="b1")
    with pytest.raises(LandingError, match="test"):
        land_vindr_pcxr(vindr, tmp_path / "landing", site="vindr", batch="b1", split="test")


def test_cli_lands_and_refuses_an_existing_batch(vindr: Path, tmp_path: Path, capsys) -> None:
    landing = tmp_path / "landing"
    argv = [str(vindr), "--landing", str(landing), "--site", "vindr", "--batch", "b-0001"]
    assert main(argv) == 0
    assert "landed 4 images" in capsys.readouterr().out
    with pytest.raises(LandingError, match="immutable"):
        main(argv)
    with pytest.raises(LandingError, match="safe directory name"):
        land_vindr_pcxr(vindr, landing, site="../up", batch="b-0002")


def test_class_map_is_case_insensitive_and_covers_the_categories() -> None:
    assert category_of("PLEURAL EFFUSION") == "effusion"
    assert category_of("  Peribronchovascular   interstitial opacity") == "interstitial_opacity"
    assert category_of("Bronchitis") is None and category_of("No finding") is None
    assert set(CLASS_MAP.values()) == {
        "consolidation", "interstitial_opacity", "cardiomegaly", "effusion",
    }  # fmt: skip
