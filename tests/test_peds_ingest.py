"""Ingest of peds_vqa batches (VinDr-PCXR layout): exact round trip of labels and boxes, a
quarantine record for every kind of broken row or image, structural failures, read-only."""

from __future__ import annotations

import doctest
import importlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinaudit.sources.landing import LandingError, sha256_file, write_manifest
from clinaudit.sources.peds_render import PEDS_CATEGORIES
from clinaudit.sources.peds_simulator import SCALES, SITE, simulate_peds_study
from clinaudit.sources.peds_truth import read_peds_masks, read_peds_truth
from clinaudit.sources.peds_vindr import (
    PEDS_COLUMNS,
    age_band,
    ingest_peds_batch,
    load_peds_pixels,
    parse_dicom_age,
)
from clinaudit.sources.vindr_pcxr import NO_FINDING, STUDY
from clinaudit.validation.errors import BatchStructureError

BATCH = "b-0001"
KEY = b"test-pseudonym-key-0123456789"


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("peds_ingest")
    simulate_peds_study(root / "landing", truth_root=root / "truth", scale="tiny", seed=1)
    batch_dir = root / "landing" / STUDY / SITE / BATCH
    return batch_dir, read_peds_truth(root / "truth", STUDY, SITE, BATCH), root


def _hashes(batch_dir: Path) -> dict[str, str]:
    return {p.relative_to(batch_dir).as_posix(): sha256_file(p)
            for p in sorted(batch_dir.rglob("*")) if p.is_file()}  # fmt: skip


def _copy(batch_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "landing" / STUDY / SITE / BATCH
    shutil.copytree(batch_dir, target)
    return target


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _remanifest(batch_dir: Path) -> None:
    (batch_dir / "manifest.json").unlink()
    write_manifest(
        batch_dir,
        study=STUDY,
        site=SITE,
        batch=BATCH,
        label_file="image_labels.csv",
        label_layout="peds_vindr",
        simulated=True,
        created_utc="2024-01-01T00:00:00Z",
    )


def test_round_trip_of_labels_boxes_and_metadata(landed) -> None:
    batch_dir, truth, _ = landed
    before = _hashes(batch_dir)
    res = ingest_peds_batch(batch_dir, pseudonym_key=KEY, workers=2)
    assert _hashes(batch_dir) == before  # strictly read-only
    table = res.table
    assert tuple(table.columns) == PEDS_COLUMNS
    assert res.quarantine.empty and res.simulated and res.n_rows_in == len(truth) == 80
    assert len(table) == 80 and table["image_id"].is_monotonic_increasing
    assert table["patient"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert not table["patient"].str.startswith("CH").any()
    merged = table.merge(truth, on="image_id", suffixes=("", "_truth"), validate="1:1")
    assert (merged["file"] == merged["file_truth"]).all()
    assert (merged["view"] == merged["view_truth"]).all()
    assert (merged["sex"] == merged["sex_truth"]).all()
    assert (np.abs(merged["age_years"] - merged["age_years_truth"]) < 1.0).all()
    size = SCALES["tiny"].image_px
    assert (merged["rows"] == size).all() and (merged["columns"] == size).all()
    for c in PEDS_CATEGORIES:
        present = merged[f"sev_{c}"] > 0
        assert (merged[c] == present.astype(int)).all(), c
        for k in ("x0", "y0", "x1", "y1"):
            got, want = merged[f"{c}_{k}"], merged[f"{c}_{k}_truth"] / size
            assert got[~present].isna().all()
            assert (np.abs(got[present] - want[present]) <= 1.0 / size + 1e-9).all(), (c, k)
    # Same patient, same pseudonym; no pseudonym shared by two landed patient ids.
    pairs = merged[["patient", "patient_id"]].drop_duplicates()
    assert pairs["patient"].is_unique and pairs["patient_id"].is_unique
    assert set(table["age_band"]) <= {"0-1", "1-5", "5-10"}


def test_pixels_load_with_the_right_polarity_for_png_and_dicom(landed) -> None:
    batch_dir, truth, root = landed
    masks = read_peds_masks(root / "truth", STUDY, SITE, BATCH)
    table = ingest_peds_batch(batch_dir, pseudonym_key=None).table
    by_format = truth.set_index("image_id")["format"]
    for fmt in ("png16", "png8", "dicom"):
        row = table[table["image_id"].map(by_format) == fmt].iloc[0]
        full = load_peds_pixels(batch_dir, row["file"], SCALES["tiny"].image_px)
        small = load_peds_pixels(batch_dir, row["file"], 64)
        assert small.shape == (64, 64) and small.dtype == np.float32
        assert 0.0 <= small.min() and small.max() <= 1.0
        n = full.shape[0]
        spine = full[n // 3 : n // 2, n // 2 - 2 : n // 2 + 2].mean()
        lung = full[n // 3 : n // 2, n // 5 : n // 5 + 6].mean()
        assert spine > lung + 0.15, fmt  # MONOCHROME1 DICOMs are inverted on load
    heart_id = truth.loc[truth["sev_cardiomegaly"] > 0, "image_id"].iloc[0]
    heart = masks[f"{heart_id}__cardiomegaly"]
    img = load_peds_pixels(
        batch_dir, table.set_index("image_id").at[heart_id, "file"], heart.shape[0]
    )
    assert img[heart].mean() > img[~heart].mean()
    with pytest.raises(ValueError, match="inside the batch"):
        load_peds_pixels(batch_dir, "../b-0002/images/x.png", 64)


def _pick(truth: pd.DataFrame, n: int, **flags: bool) -> list[str]:
    sel = truth
    for c, present in flags.items():
        sel = sel[(sel[f"sev_{c}"] > 0) == present]
    return sel["image_id"].tolist()[:n]


def test_every_quarantine_reason_fires_on_a_broken_copy(landed, tmp_path: Path) -> None:
    batch_dir, truth, _ = landed
    original = _hashes(batch_dir)
    work = _copy(batch_dir, tmp_path)
    files = truth.set_index("image_id")["file"]
    normals = _pick(truth, 12, **dict.fromkeys(PEDS_CATEGORIES, False))
    with_box = _pick(truth, 3, effusion=True)
    expect: dict[str, str] = {}

    meta = _csv(work / "metadata.csv")
    at = meta.set_index("image_id").index.get_loc
    for image_id, col, value, check in (
        (normals[0], "ViewPosition", "LL", "unknown_view"),
        (normals[1], "PatientAge", "about four", "age_unparseable"),
        (normals[2], "PatientAge", "016Y", None),  # a teenager is still pediatric
        (normals[3], "PatientAge", "025Y", "age_range"),
    ):
        meta.loc[at(image_id), col] = value
        if check:
            expect[check] = image_id
    meta = pd.concat([meta, meta.iloc[[at(normals[4])]]], ignore_index=True)
    expect["duplicate_image_id"] = normals[4]
    meta.to_csv(work / "metadata.csv", index=False, lineterminator="\n")

    labels = _csv(work / "image_labels.csv")
    first = labels.groupby("image_id").head(1).set_index("image_id").index
    labels.loc[labels["image_id"] == normals[5], "Cardiomegaly"] = "1"
    expect["label_box_mismatch"] = normals[5]
    labels.loc[labels["image_id"] == normals[6], "Pleural effusion"] = "2"
    expect["label_value"] = normals[6]
    labels = labels[labels["image_id"] != normals[7]]
    expect["labels_missing"] = normals[7]
    assert normals[5] in first
    labels.to_csv(work / "image_labels.csv", index=False, lineterminator="\n")

    ann = _csv(work / "annotations.csv")
    eff = ann["class_name"] == "Pleural effusion"
    ann.loc[eff & (ann["image_id"] == with_box[0]), "x_max"] = "999"
    expect["box_outside_image"] = with_box[0]
    row = ann.index[eff & (ann["image_id"] == with_box[1])][0]
    ann.loc[row, "x_min"] = ann.loc[row, "x_max"]
    expect["box_order"] = with_box[1]
    ann.loc[eff & (ann["image_id"] == with_box[2]), "y_min"] = "n/a"
    expect["box_unparseable"] = with_box[2]
    ann.loc[len(ann)] = ["not-in-metadata", "R1", "Cardiomegaly", "1", "1", "5", "5"]
    ann.to_csv(work / "annotations.csv", index=False, lineterminator="\n")

    (work / files[normals[8]]).unlink()
    expect["image_missing"] = normals[8]
    (work / files[normals[9]]).write_bytes(b"this is not an image" * 10)
    expect["image_format"] = normals[9]
    _remanifest(work)
    data = (work / files[normals[10]]).read_bytes()
    (work / files[normals[10]]).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    expect["hash_mismatch"] = normals[10]

    res = ingest_peds_batch(work, pseudonym_key=KEY)
    q = res.quarantine
    errors = q[q["severity"] == "error"]
    for check, image_id in expect.items():
        hit = errors[errors["check"] == check]
        assert len(hit), f"{check} did not fire"
        assert hit["fix"].str.len().gt(10).all() and hit["message"].str.len().gt(10).all()
        assert image_id not in set(res.table["image_id"]), check
    assert {"file", "row", "column"} <= set(q.columns)
    view = errors[errors["check"] == "unknown_view"].iloc[0]
    assert view["file"] == "metadata.csv" and view["column"] == "ViewPosition"
    assert view["row"] == at(normals[0]) + 2
    assert errors.loc[errors["check"] == "label_box_mismatch", "column"].tolist() == [
        "Cardiomegaly"
    ]
    assert "annotation_orphan" in set(q.loc[q["severity"] == "warning", "check"])
    teen = res.table.set_index("image_id").loc[normals[2]]
    assert teen["age_years"] == 16.0 and teen["age_band"] == ">10"
    broken = set(expect.values())
    assert len(res.table) == 80 - len(broken)
    assert res.n_rows_in == 81
    assert _hashes(batch_dir) == original  # the original batch was never touched


def test_structural_failures_fail_the_batch(landed, tmp_path: Path) -> None:
    batch_dir, _, _ = landed
    work = _copy(batch_dir, tmp_path / "changed")
    with open(work / "annotations.csv", "a", encoding="utf-8") as fh:
        fh.write("x,R1,Cardiomegaly,1,1,2,2\n")
    with pytest.raises(BatchStructureError, match="annotations.csv") as err:
        ingest_peds_batch(work, pseudonym_key=KEY)
    assert err.value.records[0].check == "hash_mismatch"

    work = _copy(batch_dir, tmp_path / "column")
    meta = _csv(work / "metadata.csv").drop(columns=["ViewPosition"])
    meta.to_csv(work / "metadata.csv", index=False)
    _remanifest(work)
    with pytest.raises(BatchStructureError, match="ViewPosition") as err:
        ingest_peds_batch(work, pseudonym_key=KEY)
    assert err.value.records[0].check == "missing_column"

    work = _copy(batch_dir, tmp_path / "layout")
    (work / "manifest.json").unlink()
    write_manifest(
        work,
        study=STUDY,
        site=SITE,
        batch=BATCH,
        label_file="image_labels.csv",
        label_layout="nih",
        simulated=True,
        created_utc="2024-01-01T00:00:00Z",
    )
    with pytest.raises(BatchStructureError, match="peds_vindr"):
        ingest_peds_batch(work, pseudonym_key=KEY)

    work = _copy(batch_dir, tmp_path / "nomanifest")
    (work / "manifest.json").unlink()
    with pytest.raises(LandingError, match="manifest.json is missing"):
        ingest_peds_batch(work, pseudonym_key=KEY)


def test_labels_from_boxes_when_a_label_column_is_absent(landed, tmp_path: Path) -> None:
    batch_dir, truth, _ = landed
    work = _copy(batch_dir, tmp_path)
    labels = _csv(work / "image_labels.csv").drop(columns=["Pleural effusion", NO_FINDING])
    labels.to_csv(work / "image_labels.csv", index=False, lineterminator="\n")
    _remanifest(work)
    res = ingest_peds_batch(work, pseudonym_key=KEY)
    assert list(res.quarantine["check"]) == ["label_column_missing"]
    assert res.quarantine["severity"].iloc[0] == "warning"
    merged = res.table.merge(truth, on="image_id")
    assert (merged["effusion"] == (merged["sev_effusion"] > 0).astype(int)).all()


def test_age_parsing_and_bands() -> None:
    assert parse_dicom_age("018M") == 1.5 and parse_dicom_age("004Y") == 4.0
    assert parse_dicom_age("014D") == pytest.approx(14 / 365.25)
    assert parse_dicom_age("2W") == pytest.approx(14 / 365.25)
    assert parse_dicom_age("") is None and parse_dicom_age("4.5Y") is None
    assert [age_band(a) for a in (0.0, 0.99, 1.0, 4.9, 5.0, 9.99, 10.0, 17.0)] == [
        "0-1", "0-1", "1-5", "1-5", "5-10", "5-10", ">10", ">10",
    ]  # fmt: skip


def test_the_peds_vindr_rows_examples_run() -> None:
    result = doctest.testmod(importlib.import_module("clinaudit.sources.peds_vindr_rows"))
    assert result.attempted >= 1 and result.failed == 0
