"""Reader of dermatology (photo, note) batches: simulated batches, PAD-UFES-20-style exports, and
a quarantine record (file, line, column, fix) for every kind of bad row, file or photo."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

from clinaudit.sources.derm_metadata import read_derm_metadata
from clinaudit.sources.derm_pairs import DERM_COLUMNS, ingest_derm_batch
from clinaudit.sources.derm_simulator import STUDY, simulate_derm_clinic
from clinaudit.sources.derm_truth import read_derm_truth
from clinaudit.sources.landing import LandingError, write_manifest
from clinaudit.validation.errors import BatchStructureError
from clinaudit.validation.ingest_loop import ingest_partition

BATCH = "b-0001"
KEY = b"test-pseudonym-key-0123456789"


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("derm_pairs")
    simulate_derm_clinic(
        root / "landing", truth_root=root / "truth", clinic="southside_clinic", scale="tiny",
        n_pairs=80, workers=1,
    )  # fmt: skip
    return root / "landing", read_derm_truth(root / "truth", STUDY, "southside_clinic", BATCH)


def _photo(rgb=(205, 150, 125), size=64, fmt="PNG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    arr = np.zeros((size, size, 3), np.uint8) + np.array(rgb, np.uint8)
    arr[size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] //= 2  # a darker "lesion"
    Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def _land(root: Path, csv_text: str, files: dict[str, bytes], *, layout="derm_pairs") -> Path:
    batch = root / STUDY / "clinic_x" / BATCH
    for rel, data in files.items():
        (batch / rel).parent.mkdir(parents=True, exist_ok=True)
        (batch / rel).write_bytes(data)
    (batch / "metadata.csv").write_text(csv_text, encoding="utf-8")
    write_manifest(
        batch, study=STUDY, site="clinic_x", batch=BATCH, label_file="metadata.csv",
        label_layout=layout, simulated=False, created_utc="2026-01-01T00:00:00Z",
    )  # fmt: skip
    return batch


def test_simulated_batch_ingests_whole(landed) -> None:
    landing, truth = landed
    res = ingest_derm_batch(landing / STUDY / "southside_clinic" / BATCH)
    table = res.table
    assert res.simulated and res.n_rows_in == 80 and len(table) == 80
    assert list(table.columns) == list(DERM_COLUMNS)
    assert (res.quarantine["severity"] == "error").sum() == 0
    by_file = truth.table.assign(file="images/" + truth.table["img_id"]).set_index("file")
    t = by_file.loc[table["file"]]
    assert (table["category"].to_numpy() == t["diagnostic"].to_numpy()).all()
    assert (table["note"].to_numpy() == t["note"].to_numpy()).all()
    assert (table["note"] == "").sum() == (truth.table["note"] == "").sum()
    fa = t["fitzpatrick_a"].replace(0, np.nan).to_numpy(float)
    np.testing.assert_array_equal(table["fitzpatrick_a"].to_numpy(), fa)
    assert (table["site"] == "southside_clinic").all() and (table["batch"] == BATCH).all()
    assert set(table["image_type"]) <= {"dermoscopic", "clinical"}
    dermo = table["image_type"] == "dermoscopic"
    assert table.loc[dermo, "dark_border"].mean() > table.loc[~dermo, "dark_border"].mean() + 0.3
    assert spearmanr(t["fitzpatrick_true"], table["ita"])[0] < -0.6  # heuristic skin mask


def test_same_table_with_workers_and_pseudonyms(landed) -> None:
    landing, _ = landed
    batch = landing / STUDY / "southside_clinic" / BATCH
    one = ingest_derm_batch(batch)
    two = ingest_derm_batch(batch, workers=2)
    pd.testing.assert_frame_equal(one.table, two.table)
    keyed = ingest_derm_batch(batch, pseudonym_key=KEY).table
    assert not set(keyed["patient"]) & set(one.table["patient"])
    assert keyed["patient"].nunique() == one.table["patient"].nunique()
    assert keyed["patient"].str.fullmatch(r"[0-9a-f]{16}").all()


def test_ingest_loop_takes_the_batch(landed) -> None:
    landing, _ = landed
    res = ingest_partition(
        landing, STUDY, "southside_clinic", ingest_batch=lambda ref: ingest_derm_batch(ref.path),
        empty_table=pd.DataFrame(columns=list(DERM_COLUMNS)), sort_by=("image_id",),
    )  # fmt: skip
    assert len(res.table) == 80 and res.simulated and res.failed_batches == []


BAD_CSV = """\
img_id,patient_id,lesion_id,diagnostic,age,gender,region,fitzpatrick_a,fitzpatrick_b,note
ok.png,P1,L1,MEL,60,MALE,BACK,2,3,itchy
cat.png,P2,L2,melanomma,60,FEMALE,BACK,2,2,
fitz.png,P3,L3,NEV,40,MALE,ARM,7,II,
age.png,P4,L4,NEV,abc,MALE,ARM,3,3,
old.png,P5,L5,NEV,130,MALE,ARM,3,3,
,P6,L6,SEK,50,FEMALE,FACE,3,3,
dup.png,P7,L7,SCC,70,MALE,HAND,4,4,
dup.png,P8,L8,SCC,70,MALE,HAND,4,4,
../../etc/passwd,P9,L9,ACK,70,MALE,FACE,2,2,
sub/x.png,P10,L10,ACK,70,MALE,FACE,2,2,
sex.png,P11,L11,BCC,70,X,FACE,2,2,
absent.png,P12,L12,BCC,70,MALE,FACE,2,2,
gray.png,P13,L13,BCC,70,MALE,FACE,2,2,
broken.png,P14,L14,BCC,70,MALE,FACE,2,2,
changed.png,P15,L15,BCC,70,MALE,FACE,2,2,
bkl.png,P16,L16,BKL,70,MALE,FACE,2,2,
"""


def test_every_bad_row_kind_is_quarantined_with_line_column_and_fix(tmp_path: Path) -> None:
    photo = _photo()
    files = {
        f"images/{n}.png": photo for n in ("ok", "cat", "fitz", "age", "old", "dup", "sex", "bkl")
    }
    files["images/gray.png"] = _photo(mode="L")
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        noisy, format="PNG"
    )
    files["images/broken.png"] = noisy.getvalue()[: len(noisy.getvalue()) // 2]  # truncated
    files["images/changed.png"] = photo
    files["images/stray.png"] = photo
    batch = _land(tmp_path, BAD_CSV, files)
    (batch / "images" / "changed.png").write_bytes(_photo(rgb=(90, 60, 50)))  # after the manifest
    res = ingest_derm_batch(batch)
    assert res.table["image_id"].tolist() == ["ok"] and res.n_rows_in == 16
    q = res.quarantine
    got = {(r.check, r.row, r.column) for r in q.itertuples() if r.severity == "error"}
    expected = {
        ("unknown_category", 3, "diagnostic"), ("fitzpatrick_domain", 4, "fitzpatrick_a"),
        ("age_range", 5, "age"), ("age_range", 6, "age"), ("image_name_missing", 7, "img_id"),
        ("duplicate_image_id", 8, None), ("duplicate_image_id", 9, None),
        ("path_traversal", 10, "img_id"), ("path_traversal", 11, "img_id"),
        ("sex_domain", 12, "gender"), ("image_missing", 13, None), ("photometric", 14, None),
        ("corrupt_image", 15, None), ("hash_mismatch", 16, None),
        ("unknown_category", 17, "diagnostic"),
    }  # fmt: skip
    assert got == expected
    assert q["fix"].str.len().gt(0).all() and q["file"].str.len().gt(0).all()
    typo = q[(q["check"] == "unknown_category") & (q["row"] == 3)].iloc[0]
    assert "did you mean 'MEL'" in typo["fix"]
    assert "seborrheic" in q[(q["check"] == "unknown_category") & (q["row"] == 17)].iloc[0]["fix"]
    assert q.loc[q["check"] == "image_missing", "file"].tolist() == ["images/absent.png"]
    warned = q[q["severity"] == "warning"]
    assert warned[["check", "file"]].values.tolist() == [["image_unreferenced", "images/stray.png"]]
    assert not (q["message"].str.contains("etc/passwd") & (q["check"] != "path_traversal")).any()


def test_pad_ufes_20_export_loads_with_notes_from_its_columns(tmp_path: Path) -> None:
    csv_text = (
        "patient_id,lesion_id,smoke,drink,background_father,background_mother,age,pesticide,"
        "gender,skin_cancer_history,cancer_history,has_piped_water,has_sewage_system,fitspatrick,"
        "region,diameter_1,diameter_2,diagnostic,itch,grew,hurt,changed,bleed,elevation,img_id,"
        "biopsed\n"
        "PAT_46,881,False,False,POMERANIA,POMERANIA,55,False,FEMALE,True,True,True,True,3.0,"
        "NECK,6.0,5.0,BCC,True,True,False,False,True,True,PAT_46_881_939.png,True\n"
        "PAT_1545,1867,,,,,77,,,,,,,,FACE,,,ACK,True,False,False,False,False,False,"
        "PAT_1545_1867_547.png,False\n"
        "PAT_1989,4061,,,,,75,,,,,,,,FACE,,,SEK,UNK,UNK,UNK,UNK,UNK,UNK,PAT_1989_4061_108.png,"
        "False\n"
    )
    files = {
        "imgs_part_1/PAT_46_881_939.png": _photo(),
        "imgs_part_2/PAT_1545_1867_547.png": _photo((150, 100, 80)),
        "imgs_part_2/PAT_1989_4061_108.png": _photo((120, 80, 60)),
    }
    res = ingest_derm_batch(_land(tmp_path, csv_text, files))
    t = res.table.set_index("image_id")
    assert len(t) == 3 and (res.quarantine["severity"] == "error").sum() == 0
    first = t.loc["PAT_46_881_939"]
    assert first["file"] == "imgs_part_1/PAT_46_881_939.png" and first["category"] == "BCC"
    assert (
        first["fitzpatrick_a"] == 3.0 and np.isnan(first["fitzpatrick_b"]) and first["sex"] == "F"
    )
    assert first["note"] == (
        "site: neck; itch: yes; grew: yes; hurt: no; changed: no; bleeding: yes; elevated: yes; "
        "history of skin cancer: yes"
    )
    assert t.loc["PAT_1545_1867_547", "sex"] == "U" and np.isnan(
        t.loc["PAT_1545_1867_547", "fitzpatrick_a"]
    )
    assert t.loc["PAT_1989_4061_108", "note"] == "site: face"
    assert "note_from_columns" in set(res.quarantine["check"])


def test_metadata_reader_aliases_and_structure_errors() -> None:
    data = (
        b"isic_id,dx,age_approx,sex,fitzpatrick_scale,image_type\n"
        b"ISIC_1,nv,45,male,VI,dermoscopic\nISIC_2,AKIEC,,female,,clinical: close-up\n"
        b"ISIC_3,bcc,60,,type 2,TBP tile\n"
    )
    table, records = read_derm_metadata("meta.csv", site="s", batch="b", data=data)
    assert table["category"].tolist() == ["NEV", "ACK", "BCC"]
    assert table["fitzpatrick_a"].tolist()[0] == 6.0 and table["fitzpatrick_a"].tolist()[2] == 2.0
    assert table["image_type"].tolist() == ["dermoscopic", "clinical", ""]
    assert np.isnan(table["age"].iat[1]) and table["sex"].tolist() == ["M", "F", "U"]
    assert [r.check for r in records] == ["image_type_domain"]
    with pytest.raises(BatchStructureError) as err:
        read_derm_metadata("meta.csv", site="s", batch="b", data=b"img_id,diagnosys\na.png,MEL\n")
    rec = err.value.records[0]
    assert rec.check == "missing_column" and rec.column == "diagnostic" and "diagnosys" in rec.fix


def test_batch_level_refusals(tmp_path: Path, landed) -> None:
    csv_text = "img_id,diagnostic\na.png,MEL\n"
    wrong = _land(tmp_path / "w", csv_text, {"images/a.png": _photo()}, layout="nih")
    with pytest.raises(BatchStructureError, match="label_layout") as err:
        ingest_derm_batch(wrong)
    assert err.value.batch_facts["content_hash"]
    changed = _land(tmp_path / "c", csv_text, {"images/a.png": _photo()})
    (changed / "metadata.csv").write_text(csv_text + "b.png,NEV\n")
    with pytest.raises(BatchStructureError) as err:
        ingest_derm_batch(changed)
    assert err.value.records[0].check == "hash_mismatch"
    with pytest.raises(LandingError, match="manifest.json is missing"):
        ingest_derm_batch(tmp_path / "nowhere")
    landing, _ = landed
    manifest = json.loads(
        (landing / STUDY / "southside_clinic" / BATCH / "manifest.json").read_text()
    )
    assert manifest["label_layout"] == "derm_pairs" and manifest["simulated"] is True


def test_photos_unlisted_or_ambiguous_are_quarantined(tmp_path: Path) -> None:
    csv_text = "img_id,diagnostic\nlate.png,MEL\ntwin.png,NEV\nISIC_9,SEK\n"
    files = {
        "part_1/twin.png": _photo(),
        "part_2/twin.png": _photo(),
        "images/ISIC_9.jpg": _photo(fmt="JPEG"),
    }
    batch = _land(tmp_path, csv_text, files)
    (batch / "images" / "late.png").write_bytes(_photo())  # uploaded after the manifest
    res = ingest_derm_batch(batch)
    assert res.table["file"].tolist() == ["images/ISIC_9.jpg"]
    assert res.table["image_format"].tolist() == ["jpeg"]
    rows = res.quarantine[res.quarantine["severity"] == "error"]
    assert rows[["row", "check"]].values.tolist() == [
        [2, "not_in_manifest"],
        [3, "image_ambiguous"],
    ]
