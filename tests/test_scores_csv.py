"""Vendor scores CSV: accepted when clean; every problem named by line, column and fix."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from clinaudit.models.scores_csv import ScoresError
from clinaudit.models.vendor_scores import read_vendor_scores
from clinaudit.sources.cxr_labels import FINDINGS

IDS = ["a.png", "b.png", "c.png"]


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {"image_id": IDS, "site": "site_a", "patient_pseudonym": ["p1", "p1", "p2"], "batch": "b1"}
    )


def _scores(ids=IDS) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.random((len(ids), len(FINDINGS))).round(4), columns=list(FINDINGS))
    frame.insert(0, "Image Index", ids)
    return frame


def _read(path):
    return read_vendor_scores(path, label_table=_table(), site="site_a", batch="b1")


def _problems(path) -> list:
    with pytest.raises(ScoresError) as err:
        _read(path)
    return list(err.value.problems)


def test_clean_csv_gives_predictions_in_label_table_order(tmp_path):
    scores = _scores()[::-1].assign(Comment="x")  # reversed rows, one extra column
    path = tmp_path / "scores.csv"
    scores.to_csv(path, index=False)
    preds, warnings = _read(path)
    assert list(preds["image_id"]) == IDS
    assert preds.loc[0, "Mass"] == scores.set_index("Image Index").loc["a.png", "Mass"]
    assert set(preds["model_sha256"]) == {hashlib.sha256(path.read_bytes()).hexdigest()}
    assert [(w.check, w.column, w.severity) for w in warnings] == [
        ("extra_column", "Comment", "warning")
    ]


def test_mismatched_ids_are_named_in_both_directions(tmp_path):
    path = tmp_path / "s.csv"
    _scores(["a.png", "b.png", "zzz.png"]).to_csv(path, index=False)
    problems = _problems(path)
    unknown = [p for p in problems if p.check == "unknown_id"]
    unscored = [p for p in problems if p.check == "unscored_id"]
    assert [(p.row, p.column) for p in unknown] == [(4, "Image Index")]
    assert "'zzz.png' is not in the label table" in unknown[0].message
    assert [p.message for p in unscored] == ["image 'c.png' of the label table has no score"]
    assert all(p.site == "site_a" and p.batch == "b1" and p.file == str(path) for p in problems)


def test_nan_out_of_range_and_text_are_named_by_line_and_column(tmp_path):
    scores = _scores().astype({"Mass": object, "Edema": object, "Hernia": object})
    scores.loc[1, "Mass"] = None
    scores.loc[2, "Edema"] = 1.5
    scores.loc[0, "Hernia"] = "high"
    path = tmp_path / "s.csv"
    scores.to_csv(path, index=False)
    with pytest.raises(ScoresError, match=r"line 3, column 'Mass': probability is missing") as e:
        _read(path)
    found = {(p.check, p.row, p.column) for p in e.value.problems}
    assert found == {
        ("missing_value", 3, "Mass"),
        ("out_of_range", 4, "Edema"),
        ("not_a_number", 2, "Hernia"),
    }


def test_percentages_get_a_specific_fix(tmp_path):
    scores = _scores()
    scores["Nodule"] = [12.0, 80.0, 3.0]
    path = tmp_path / "s.csv"
    scores.to_csv(path, index=False)
    problems = _problems(path)
    assert {p.row for p in problems} == {2, 3, 4}
    assert all("percentages: divide the column by 100" in p.fix for p in problems)


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (1.5, "looks like a logit"),  # a raw output just above 1: the sigmoid, not "percent"
        (-0.7, "looks like a logit"),
        (87.0, "looks like a percentage: write 0.87"),
        (450.0, "not a probability nor a percentage"),
    ],
)
def test_one_out_of_range_score_gets_the_fix_that_matches_its_value(tmp_path, value, hint):
    scores = _scores()
    scores.loc[1, "Mass"] = value
    path = tmp_path / "s.csv"
    scores.to_csv(path, index=False)
    (problem,) = _problems(path)
    assert (problem.check, problem.row, problem.column) == ("out_of_range", 3, "Mass")
    assert hint in problem.fix, problem.fix


def test_missing_finding_column_and_duplicate_ids(tmp_path):
    scores = pd.concat([_scores(), _scores().iloc[[0]]]).rename(
        columns={"Pleural_Thickening": "Pleural Thickening"}
    )
    scores = scores.drop(columns=["Hernia"])
    path = tmp_path / "s.csv"
    scores.to_csv(path, index=False)
    problems = _problems(path)
    missing = {p.column: p for p in problems if p.check == "missing_column"}
    assert set(missing) == {"Hernia", "Pleural_Thickening"}
    assert "did you mean to rename 'Pleural Thickening'" in missing["Pleural_Thickening"].message
    dup = [p for p in problems if p.check == "duplicate_id"]
    assert [(p.row, p.message) for p in dup] == [(5, "image id 'a.png' already scored on line 2")]


def test_missing_id_column_and_chexpert_alias(tmp_path):
    path = tmp_path / "s.csv"
    _scores().rename(columns={"Image Index": "Image_Index"}).to_csv(path, index=False)
    problems = _problems(path)
    assert problems[0].check == "missing_column" and problems[0].column == "Image Index"
    alias = tmp_path / "alias.csv"
    _scores().rename(columns={"Effusion": "Pleural Effusion"}).to_csv(alias, index=False)
    preds, warnings = _read(alias)
    assert "Effusion" in preds.columns and [w.check for w in warnings] == ["alias"]


def test_many_identical_problems_are_capped_with_a_count(tmp_path):
    table = pd.DataFrame(
        {"image_id": [f"{i}.png" for i in range(30)], "site": "s", "patient_pseudonym": "p"}
    )
    scores = _scores([f"{i}.png" for i in range(30)]).assign(Mass=np.nan)
    path = tmp_path / "s.csv"
    scores.to_csv(path, index=False)
    with pytest.raises(ScoresError) as err:
        read_vendor_scores(path, label_table=table, site="s", batch="b", max_per_check=5)
    mass = [p for p in err.value.problems if p.column == "Mass"]
    assert len(mass) == 6 and mass[-1].row is None and "25 more row(s)" in mass[-1].message


def test_rows_of_set_aside_ids_are_counted_not_unknown_and_not_checked(tmp_path):
    from clinaudit.models.scores_csv import IdRules, read_scores

    rules = IdRules("stay_id", "stay", "stays table", "name it", "fix the id", "add rows")
    path = tmp_path / "s.csv"
    # "q1" was quarantined at ingest: its row is set aside even with a bad score.
    path.write_text("stay_id,score\ns1,0.2\nq1,150\ns2,0.7\n")
    expected = pd.Series(["s2", "s1"])
    read = read_scores(
        path, expected=expected, rules=rules, labels=("score",), site="h", batch="",
        set_aside={"q1"},
    )  # fmt: skip
    assert read.values["score"].tolist() == [0.7, 0.2]
    assert read.set_aside_ids == ("q1",) and read.n_set_aside == 1 and read.n_other_rows == 0
    # Without it, the same row is an unknown id (and its score out of range): the file fails.
    with pytest.raises(ScoresError) as err:
        read_scores(path, expected=expected, rules=rules, labels=("score",), site="h", batch="")
    assert {p.check for p in err.value.problems} == {"unknown_id", "out_of_range"}
    with pytest.raises(ValueError, match="both expected and set aside"):
        read_scores(
            path, expected=expected, rules=rules, labels=("score",), site="h", batch="",
            set_aside={"s1"},
        )  # fmt: skip
