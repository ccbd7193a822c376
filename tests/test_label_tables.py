"""Label-table readers: NIH ChestX-ray14 and CheXpert layouts, row quarantine, structural errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cxr_fixtures import NIH_HEADER, nih_row, write_csv
from pandera.errors import SchemaErrors

from clinaudit.sources.chexpert_labels import CHEXPERT_REQUIRED
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.label_tables import read_label_table, read_split_lists
from clinaudit.validation.errors import BatchStructureError, QuarantineRecord, records_to_frame
from clinaudit.validation.schemas import (
    CanonicalLabels,
    schema_failures_to_records,
    validate_frame,
)

CHEX_HEADER = [
    *CHEXPERT_REQUIRED,
    "No Finding",
    "Cardiomegaly",
    "Pleural Effusion",
    "Edema",
    "Support Devices",
]


def _nih(tmp_path: Path, rows: list[list[str]], header: list[str] = NIH_HEADER) -> Path:
    path = tmp_path / "labels.csv"
    write_csv(path, header, rows)
    return path


def _read(path: Path, layout: str = "nih", **kw: object):
    return read_label_table(path, layout=layout, site="site_a", batch="b1", **kw)


def _by_check(res, check: str) -> list:
    return [r for r in res.quarantine if r.check == check]


def test_nih_parses_real_header_and_labels(tmp_path: Path) -> None:
    rows = [
        nih_row("a.png", "Cardiomegaly|Effusion", patient="00017", age="058Y", sex="F"),
        nih_row("b.png", "No Finding", follow="3", age="61"),
        nih_row("c.png", "Pleural_Thickening", age="006M", view="ap"),
    ]
    res = _read(_nih(tmp_path, rows))
    t = res.table
    assert list(t.columns[:8]) == [
        "image_id",
        "file",
        "patient_id",
        "follow_up",
        "age",
        "sex",
        "view_position",
        "source_row",
    ]
    assert t["image_id"].tolist() == ["a.png", "b.png", "c.png"]
    assert t["file"].tolist() == ["images/a.png", "images/b.png", "images/c.png"]
    assert t["source_row"].tolist() == [2, 3, 4]  # header is line 1
    assert t["patient_id"].iloc[0] == "00017"  # raw, leading zeros kept
    assert t["age"].tolist() == pytest.approx([58.0, 61.0, 0.5])
    assert t["sex"].tolist() == ["F", "M", "M"]
    assert t["view_position"].tolist() == ["PA", "PA", "AP"]
    assert t["follow_up"].tolist() == [0, 3, 0]
    assert t.loc[0, ["Cardiomegaly", "Effusion"]].tolist() == [1.0, 1.0]
    assert t.loc[0, list(FINDINGS)].sum() == 2.0 and t.loc[1, list(FINDINGS)].sum() == 0.0
    assert t.loc[2, "Pleural_Thickening"] == 1.0
    assert res.quarantine == [] and res.ignored_columns == () and res.labelled_findings == FINDINGS
    CanonicalLabels.validate(t)


def test_nih_accepts_missing_trailing_columns_and_lists_extra(tmp_path: Path) -> None:
    header = [*NIH_HEADER[:7], "Comment"]
    res = _read(_nih(tmp_path, [nih_row("a.png")[:6] + ["PA", "x"], nih_row("b.png")[:7]], header))
    assert res.table["image_id"].tolist() == ["a.png", "b.png"]
    assert res.ignored_columns == ("Comment",)


def test_missing_and_renamed_columns_fail_the_batch(tmp_path: Path) -> None:
    header = [h if h != "Patient Age" else "Patient_Age" for h in NIH_HEADER]
    header = [h for h in header if h != "View Position"]
    with pytest.raises(BatchStructureError, match="Patient Age") as info:
        _read(_nih(tmp_path, [], header))
    recs = {r.column: r for r in info.value.records}
    assert set(recs) == {"Patient Age", "View Position"}
    assert "closest present column is 'Patient_Age'" in recs["Patient Age"].message
    assert recs["Patient Age"].fix.startswith("rename 'Patient_Age' to 'Patient Age'")
    assert all(r.check == "missing_column" and r.row == 1 for r in recs.values())
    assert isinstance(info.value, ValueError)


def test_unreadable_tables_fail_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(b"Image Index,Finding Labels\n\xff\xfe,x\n")
    with pytest.raises(BatchStructureError, match="not UTF-8"):
        _read(path)
    path.write_bytes(b"")
    with pytest.raises(BatchStructureError, match="empty"):
        _read(path)
    path.write_bytes(b"Image Index;Finding Labels;Patient ID\n")
    with pytest.raises(BatchStructureError) as info:
        _read(path)
    assert "';' as delimiter" in info.value.records[0].fix
    with pytest.raises(BatchStructureError, match="cannot be read"):
        _read(tmp_path / "absent.csv")


def test_row_problems_quarantine_rows_and_keep_the_rest(tmp_path: Path) -> None:
    rows = [
        nih_row("ok.png", "Mass"),
        nih_row("u.png", "Mass|Pneumotorax"),
        nih_row("age.png", age="130"),
        nih_row("age2.png", age="old"),
        nih_row("sex.png", sex="X"),
        nih_row("dup.png"),
        nih_row("dup.png", "Hernia"),
        nih_row("nf.png", "No Finding|Mass"),
        nih_row("sub/dir.png"),
        nih_row("fu.png", follow="-1"),
        nih_row("blank_view.png", view=""),
    ]
    res = _read(_nih(tmp_path, rows))
    assert res.table["image_id"].tolist() == ["ok.png", "blank_view.png"]
    assert res.table["view_position"].tolist() == ["PA", "UNKNOWN"]
    assert res.n_rows == len(rows)
    (unknown,) = [r for r in _by_check(res, "unknown_finding") if r.row == 3]
    assert unknown.column == "Finding Labels" and unknown.file == "labels.csv"
    assert "['Pneumotorax']" in unknown.message and "did you mean 'Pneumothorax'" in unknown.message
    assert "Atelectasis" in unknown.message  # the known list
    ages = _by_check(res, "age_range")
    assert [(r.row, r.column) for r in ages] == [(4, "Patient Age"), (5, "Patient Age")]
    assert "outside [0, 120]" in ages[0].message and "not a number" in ages[1].message
    (sex,) = _by_check(res, "sex_domain")
    assert (sex.row, sex.column) == (6, "Patient Gender") and "'X'" in sex.message
    dups = _by_check(res, "duplicate_image_id")
    assert [r.row for r in dups] == [7, 8] and "line(s) [8]" in dups[0].message
    assert [r.row for r in _by_check(res, "unknown_finding")] == [3, 9]
    assert _by_check(res, "image_id")[0].row == 10
    assert _by_check(res, "follow_up")[0].row == 11
    (view,) = _by_check(res, "view_missing")
    assert view.severity == "warning" and view.row == 12
    assert all(r.severity == "error" for r in res.quarantine if r.check != "view_missing")
    frame = records_to_frame(res.quarantine)
    assert frame["row"].dtype == "Int64" and len(frame) == len(res.quarantine)


def _chexpert(tmp_path: Path, rows: list[list[str]]) -> Path:
    prefix = tmp_path / "train" / "patient00001" / "study2"
    prefix.mkdir(parents=True)
    (prefix / "view1_frontal.jpg").write_bytes(b"jpeg")
    path = tmp_path / "labels.csv"
    write_csv(path, CHEX_HEADER, rows)
    return path


@pytest.mark.parametrize(("policy", "expected"), [("zeros", 0.0), ("ones", 1.0), ("ignore", None)])
def test_chexpert_layout_and_uncertainty_policies(
    tmp_path: Path, policy: str, expected: float | None
) -> None:
    rows = [
        # Dataset prefix stripped because the file exists without it.
        [
            "CheXpert-v1.0/train/patient00001/study2/view1_frontal.jpg",
            "Female",
            "68",
            "Frontal",
            "AP",
            "",
            "1.0",
            "-1.0",
            "",
            "1.0",
        ],
        [
            "valid/patient00002/study1/view2_lateral.jpg",
            "Male",
            "45",
            "Lateral",
            "",
            "1",
            "0.0",
            "0",
            "-1",
            "",
        ],
    ]
    res = _read(_chexpert(tmp_path, rows), "chexpert", uncertainty=policy)
    t = res.table
    assert t["file"].tolist() == [
        "train/patient00001/study2/view1_frontal.jpg",
        "valid/patient00002/study1/view2_lateral.jpg",
    ]
    assert t["image_id"].tolist() == t["file"].tolist()
    assert t["patient_id"].tolist() == ["patient00001", "patient00002"]
    assert t["follow_up"].tolist() == [1, 0]
    assert t["sex"].tolist() == ["F", "M"] and t["view_position"].tolist() == ["AP", "LATERAL"]
    assert t.loc[0, "Cardiomegaly"] == 1.0 and t.loc[0, "Edema"] == 0.0  # blank = negative
    got = t.loc[0, "Effusion"]  # Pleural Effusion alias, -1
    assert np.isnan(got) if expected is None else got == expected
    got_edema = t.loc[1, "Edema"]
    assert np.isnan(got_edema) if expected is None else got_edema == expected
    assert res.labelled_findings == ("Cardiomegaly", "Effusion", "Edema")
    assert res.ignored_columns == ("No Finding", "Support Devices")
    assert t["Mass"].isna().all()  # no column: not labelled
    (warn,) = _by_check(res, "unlabelled_findings")
    assert warn.severity == "warning" and "Mass" in warn.message


def test_chexpert_row_problems(tmp_path: Path) -> None:
    rows = [
        [
            "train/patient00001/study2/view1_frontal.jpg",
            "Female",
            "68",
            "Frontal",
            "AP",
            "",
            "2",
            "",
            "",
            "",
        ],
        ["train/patient00003/view1_frontal.jpg", "Male", "40", "Frontal", "PA", "", "", "", "", ""],
        ["../etc/passwd", "Male", "40", "Frontal", "PA", "", "", "", "", ""],
        [
            "train/patient00004/study1/view1_frontal.jpg",
            "Unknown",
            "-3",
            "Side",
            "PA",
            "",
            "",
            "",
            "",
            "",
        ],
    ]
    res = _read(_chexpert(tmp_path, rows), "chexpert")
    assert res.table.empty
    (dom,) = _by_check(res, "label_domain")
    assert (dom.row, dom.column) == (2, "Cardiomegaly") and "'2'" in dom.message
    assert _by_check(res, "path_layout")[0].row == 3
    assert _by_check(res, "path")[0].row == 4
    assert {r.check for r in res.quarantine if r.row == 5} == {"age_range", "view_domain"}


def test_chexpert_without_finding_columns_fails(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    write_csv(path, ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "Fracture"], [])
    with pytest.raises(BatchStructureError, match="no observation column"):
        _read(path, "chexpert")


def test_split_lists(tmp_path: Path) -> None:
    assert read_split_lists(tmp_path) is None
    (tmp_path / "train_val_list.txt").write_text("a.png\nb.png\n\n")
    with pytest.raises(BatchStructureError, match="test_list.txt' is missing"):
        read_split_lists(tmp_path)
    (tmp_path / "test_list.txt").write_text("c.png\n")
    assert read_split_lists(tmp_path) == {"a.png": "train", "b.png": "train", "c.png": "test"}
    (tmp_path / "test_list.txt").write_text("c.png\nb.png\n")
    with pytest.raises(BatchStructureError, match="in both") as info:
        read_split_lists(tmp_path)
    assert "b.png" in info.value.records[0].message


def test_schema_failures_become_records() -> None:
    frame = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "file": ["images/a", "images/b"],
            "patient_id": ["1", "2"],
            "follow_up": [0, 0],
            "age": [50.0, 150.0],
            "sex": ["M", "Q"],
            "view_position": ["PA", "PA"],
            "source_row": [2, 3],
            **{f: [0.0, 1.0] for f in FINDINGS},
        }
    )
    with pytest.raises(SchemaErrors) as info:
        CanonicalLabels.validate(frame, lazy=True)
    recs = schema_failures_to_records(info.value, "site_a", "b1", file="labels.csv")
    assert {(r.row, r.column) for r in recs} == {(3, "age"), (3, "sex")}
    assert all(r.file == "labels.csv" and r.check.startswith("schema:") for r in recs)


def test_validate_frame_drops_failing_rows_and_fails_on_table_errors() -> None:
    frame = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "file": ["images/a", "images/b", "images/c"],
            "patient_id": ["1", "2", "3"],
            "follow_up": [0, 0, 1],
            "age": [50.0, 150.0, 20.0],
            "sex": ["M", "F", "U"],
            "view_position": ["PA", "AP", "PA"],
            "source_row": [2, 3, 4],
            **{f: [0.0, 1.0, np.nan] for f in FINDINGS},
        }
    )
    good, recs = validate_frame(CanonicalLabels, frame, site="s", batch="b", file="labels.csv")
    assert good["image_id"].tolist() == ["a", "c"]
    assert [(r.row, r.column, r.file) for r in recs] == [(3, "age", "labels.csv")]
    with pytest.raises(BatchStructureError) as info:
        validate_frame(CanonicalLabels, frame.drop(columns="sex"), site="s", batch="b")
    assert info.value.records[0].column == "sex" and info.value.records[0].row is None


def test_bom_blank_lines_and_record_errors(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    body = ",".join(NIH_HEADER) + "\n\n" + ",".join(nih_row("a.png")) + "\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    res = _read(path)
    assert res.table["source_row"].tolist() == [3]  # the blank line 2 still counts
    with pytest.raises(ValueError, match="severity='fatal'"):
        QuarantineRecord("s", "b", "f", None, None, "c", "m", "x", "fatal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        BatchStructureError([])
    rec = QuarantineRecord("s", "b", "labels.csv", 4, "Patient Age", "age_range", "bad", "fix it")
    assert str(rec) == "[error:age_range] labels.csv line 4 column 'Patient Age': bad. Fix: fix it"
    assert "labels.csv line 4" in str(BatchStructureError([rec]))


# ---- unlabelled rows (allow_unlabelled) -------------------------------------------------------


def _mixed_rows() -> list[list[str]]:
    return [
        nih_row("lab.png", "Cardiomegaly|Effusion", patient="P1", age="061Y"),
        nih_row("empty.png", "", patient="P2", age="45", sex="F", view="AP"),
        nih_row("nf.png", "No Finding", patient="P3", follow="2"),
        nih_row("blank.png", "   ", patient="P4", age="70"),
        nih_row("typo.png", "Cardiomegally", patient="P5"),
    ]


def test_empty_finding_labels_quarantine_by_default(tmp_path: Path) -> None:
    res = _read(_nih(tmp_path, _mixed_rows()))
    assert res.table["image_id"].tolist() == ["lab.png", "nf.png"]
    assert res.n_unlabelled_rows == 0
    recs = _by_check(res, "unknown_finding")
    assert [r.row for r in recs] == [3, 5, 6]
    empty, blank, typo = recs
    for r in (empty, blank):
        assert r.column == "Finding Labels" and r.severity == "error"
        assert "empty: the row is not labelled" in r.message
        assert "'No Finding'" in r.fix and "allow_unlabelled=True" in r.fix
    assert "did you mean 'Cardiomegaly'" in typo.message  # unknown names keep their message


def test_allow_unlabelled_keeps_empty_rows_with_nan_findings(tmp_path: Path) -> None:
    path = _nih(tmp_path, _mixed_rows())
    res = _read(path, allow_unlabelled=True)
    t = res.table.set_index("image_id")
    assert t.index.tolist() == ["lab.png", "empty.png", "nf.png", "blank.png"]
    assert res.n_unlabelled_rows == 2
    for image in ("empty.png", "blank.png"):
        assert t.loc[image, list(FINDINGS)].isna().all()
    # Every other column of an unlabelled row is parsed as usual.
    row = t.loc["empty.png"]
    assert (row["patient_id"], row["age"], row["sex"], row["view_position"]) == (
        "P2",
        45.0,
        "F",
        "AP",
    )
    assert (row["file"], row["source_row"], row["follow_up"]) == ("images/empty.png", 3, 0)
    # Labelled rows are unchanged by the option.
    default = _read(path).table.set_index("image_id")
    pd.testing.assert_frame_equal(t.loc[["lab.png", "nf.png"]], default)
    assert t.loc["nf.png", list(FINDINGS)].eq(0.0).all()
    # An unknown name is still refused.
    assert [r.row for r in res.quarantine] == [6] and res.quarantine[0].check == "unknown_finding"
    assert res.labelled_findings == FINDINGS and res.unlabelled_findings == ()
    assert res.referenced_files >= {"images/empty.png", "images/blank.png"}
    CanonicalLabels.validate(res.table, lazy=True)


def test_allow_unlabelled_whole_pile_and_chexpert_labelled_rows_unaffected(tmp_path: Path) -> None:
    rows = [nih_row(f"{k}.png", "", patient=f"P{k}") for k in range(3)]
    res = _read(_nih(tmp_path, rows), allow_unlabelled=True)
    assert len(res.table) == 3 and res.n_unlabelled_rows == 3 and res.quarantine == []
    assert res.table[list(FINDINGS)].isna().all().all()
    assert res.table[list(FINDINGS)].dtypes.eq("float64").all()
    chex_rows = [
        ["CheXpert-v1.0/train/patient00001/study2/view1_frontal.jpg", "Female", "68", "Frontal",
         "AP", "", "1.0", "", "", ""],
    ]  # fmt: skip
    chex = _chexpert(tmp_path / "c", chex_rows)
    on, off = _read(chex, "chexpert", allow_unlabelled=True), _read(chex, "chexpert")
    pd.testing.assert_frame_equal(on.table, off.table)
    assert on.quarantine == off.quarantine and on.n_unlabelled_rows == 0


def test_a_chexpert_row_with_every_observation_blank_is_unlabelled_only_with_the_option(
    tmp_path: Path,
) -> None:
    prefix = "CheXpert-v1.0/train/patient0000{}/study1/view1_frontal.jpg"
    rows = [
        [prefix.format(1), "Female", "68", "Frontal", "AP", "", "", "", "", ""],  # nobody read it
        [prefix.format(2), "Male", "50", "Frontal", "PA", "", "", "", "", "1.0"],  # devices only
        [prefix.format(3), "Male", "51", "Frontal", "PA", "1.0", "", "", "", ""],  # No Finding
    ]
    path = _chexpert(tmp_path, rows)
    on, off = _read(path, "chexpert", allow_unlabelled=True), _read(path, "chexpert")
    # By default blank is negative (the CheXpert convention): three labelled rows.
    assert off.n_unlabelled_rows == 0 and off.table[["Cardiomegaly", "Effusion"]].eq(0).all().all()
    t = on.table.set_index("patient_id")
    assert on.n_unlabelled_rows == 1
    assert t.loc["patient00001", list(FINDINGS)].isna().all()
    # A row with any observation written (a finding, No Finding, even Support Devices) is labelled.
    for patient in ("patient00002", "patient00003"):
        assert t.loc[patient, ["Cardiomegaly", "Effusion", "Edema"]].eq(0.0).all()
    CanonicalLabels.validate(on.table, lazy=True)
