"""Stays tables: every bad-row kind gets a named error; bad rows are quarantined, not dropped."""

from __future__ import annotations

import pandas as pd
import pytest

from clinaudit.sources.sepsis_simulator import simulate_network
from clinaudit.sources.sepsis_tables import STAY_COLUMNS, StaysFileError, read_stays
from clinaudit.studies.sepsis_ews.schema import (
    ERROR_COLUMNS,
    StaysStructureError,
    validate_stays,
)
from clinaudit.validation.errors import BatchStructureError


@pytest.fixture(scope="module")
def stays() -> pd.DataFrame:
    return simulate_network("tiny", seed=0).stays.head(12).reset_index(drop=True)


def _csv(tmp_path, frame: pd.DataFrame, edits: dict[tuple[int, str], str] | None = None):
    """Write ``frame`` as CSV, apply text edits ``{(data_row, column): text}``, read it back."""
    text = frame.astype(object).where(frame.notna(), "").astype(str)
    for (row, column), value in (edits or {}).items():
        text.loc[row, column] = value
    path = tmp_path / "stays.csv"
    text.to_csv(path, index=False)
    return path, read_stays(path)


def _one(errors: pd.DataFrame, check: str) -> pd.Series:
    hits = errors[errors["check"] == check]
    assert len(hits) == 1, errors[["row", "column", "check", "message"]]
    return hits.iloc[0]


def test_clean_csv_is_valid_and_typed(tmp_path, stays):
    path, raw = _csv(tmp_path, stays)
    valid, errors = validate_stays(raw, source=str(path))
    assert errors.empty
    assert list(errors.columns) == list(ERROR_COLUMNS)
    assert list(valid.columns) == list(STAY_COLUMNS)
    assert valid["source_row"].tolist() == list(range(2, 14))
    assert valid["simulated"].all()
    assert valid["spo2"].dtype == float and valid["sepsis"].dtype.kind == "i"
    pd.testing.assert_series_equal(valid["heart_rate"], stays["heart_rate"])


@pytest.mark.parametrize(
    ("column", "text", "check", "words"),
    [
        ("age", "-5", "negative_value", "age -5 is negative"),
        ("heart_rate", "350", "impossible_value", "[0, 300] beats/min"),
        ("spo2", "101", "impossible_value", "[0, 100] %"),
        ("temperature_c", "101.2", "impossible_value", "[25, 45] degrees C"),
        ("resp_rate", "-3", "negative_value", "resp_rate -3 is negative"),
        ("gcs", "2", "impossible_value", "[3, 15] points"),
        ("race_ethnicity", "black", "unknown_category", "did you mean 'Black'"),
        ("sex", "Female", "unknown_category", "did you mean 'F'"),
        ("age_band", "90+", "unknown_category", "not an allowed age_band label"),
        ("lactate", "high", "not_a_number", "'high' is not a number"),
        ("age", "", "missing_value", "age is missing"),
        ("sepsis", "2", "invalid_label", "not 0 or 1"),
        ("age", "12", "under_18", "below 18"),
        ("admit_month", "March", "bad_month", "not YYYY-MM"),
        ("hospital", "../etc", "unsafe_name", "not a safe directory name"),
        ("gcs", "12.5", "not_integer", "not a whole number"),
        ("simulated", "maybe", "not_a_boolean", "not true/false"),
    ],
)
def test_each_bad_value_is_named_and_its_row_quarantined(
    tmp_path, stays, column, text, check, words
):
    path, raw = _csv(tmp_path, stays, {(4, column): text})
    valid, errors = validate_stays(raw, source=str(path), site="hosp_a", batch="b1")
    err = _one(errors, check)
    assert (err["file"], err["row"], err["column"]) == (str(path), 6, column)
    assert (err["site"], err["batch"], err["severity"]) == ("hosp_a", "b1", "error")
    assert words in err["message"]
    assert err["fix"]
    assert err["value"] == text
    assert len(valid) == len(stays) - 1
    assert 6 not in valid["source_row"].tolist()


def test_fahrenheit_and_fraction_hints(tmp_path, stays):
    _, raw = _csv(tmp_path, stays, {(0, "temperature_c"): "101.2", (1, "spo2"): "0.95"})
    raw.loc[1, "spo2"] = "195"
    _, errors = validate_stays(raw)
    temp = errors[errors["column"] == "temperature_c"].iloc[0]
    assert "Fahrenheit" in temp["fix"]
    assert "multiply by 100" in errors[errors["column"] == "spo2"].iloc[0]["fix"]


def test_duplicate_stay_ids_quarantine_every_copy_and_name_all_lines(tmp_path, stays):
    dup = stays.loc[0, "stay_id"]
    path, raw = _csv(tmp_path, stays, {(3, "stay_id"): dup, (7, "stay_id"): dup})
    valid, errors = validate_stays(raw, source=str(path))
    hits = errors[errors["check"] == "duplicate_stay_id"]
    assert hits["row"].tolist() == [2, 5, 9]
    assert all("[2, 5, 9]" in m for m in hits["message"])
    assert dup not in set(valid["stay_id"])
    assert len(valid) == len(stays) - 3


def test_age_band_must_match_age_and_map_not_above_sbp(tmp_path, stays):
    row = stays.loc[2]
    wrong_band = "80+" if row["age_band"] != "80+" else "18-44"
    edits = {(2, "age_band"): wrong_band, (5, "map"): str(stays.loc[5, "sbp"] + 10)}
    _, raw = _csv(tmp_path, stays, edits)
    _, errors = validate_stays(raw)
    band = _one(errors, "age_band_mismatch")
    assert band["row"] == 4 and repr(row["age_band"]) in band["message"]
    assert _one(errors, "map_above_sbp")["row"] == 7


def test_several_problems_in_one_row_are_all_reported(tmp_path, stays):
    _, raw = _csv(tmp_path, stays, {(1, "age"): "-1", (1, "sex"): "X", (1, "spo2"): "150"})
    valid, errors = validate_stays(raw)
    assert sorted(errors["check"]) == ["impossible_value", "negative_value", "unknown_category"]
    assert set(errors["row"]) == {3}
    assert len(valid) == len(stays) - 1


def test_blank_labs_are_allowed(tmp_path, stays):
    _, raw = _csv(tmp_path, stays, {(0, "lactate"): "", (0, "bilirubin"): "NA"})
    valid, errors = validate_stays(raw)
    assert errors.empty
    assert valid.loc[0, ["lactate", "bilirubin"]].isna().all()


def test_missing_required_columns_raise_a_structural_error(tmp_path, stays):
    # spo2 is optional (a scores-only audit needs no model feature), age is not.
    frame = stays.drop(columns=["sepsis", "age", "spo2"]).rename(columns={"race_ethnicity": "race"})
    with pytest.raises(StaysStructureError) as err:
        validate_stays(frame, source="upload.csv")
    assert isinstance(err.value, BatchStructureError)
    columns = [r.column for r in err.value.records]
    assert columns == ["race_ethnicity", "age", "sepsis"]
    assert all(r.check == "missing_column" for r in err.value.records)
    assert "found 'race'" in err.value.records[0].message
    assert str(err.value).startswith("upload.csv: the stays table cannot be validated")


def test_extra_columns_are_warned_and_dropped(stays):
    valid, errors = validate_stays(stays.assign(split="train"))
    warning = _one(errors, "extra_column")
    assert warning["severity"] == "warning" and warning["column"] == "split"
    assert len(valid) == len(stays) and "split" not in valid.columns


def test_typed_frame_rows_are_numbered_like_a_csv(stays):
    frame = stays.copy()
    frame.loc[3, "age"] = -40.0
    frame.loc[5, "heart_rate"] = 400.0
    _, errors = validate_stays(frame)
    assert errors[["row", "column"]].values.tolist() == [[5, "age"], [7, "heart_rate"]]


def test_parquet_round_trip(tmp_path, stays):
    path = tmp_path / "stays.parquet"
    stays.to_parquet(path, index=False)
    valid, errors = validate_stays(read_stays(path), source=str(path))
    assert errors.empty and len(valid) == len(stays)


def test_read_stays_refuses_unreadable_files(tmp_path, stays):
    with pytest.raises(StaysFileError, match="unknown file type '.xlsx'"):
        read_stays(tmp_path / "stays.xlsx")
    with pytest.raises(StaysFileError, match="does not exist"):
        read_stays(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(StaysFileError, match="empty"):
        read_stays(tmp_path / "empty.csv")
    (tmp_path / "twice.csv").write_text("stay_id,age,age\nx,50,51\n")
    with pytest.raises(StaysFileError, match=r"\['age'\] appear more than once"):
        read_stays(tmp_path / "twice.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(StaysFileError, match="not a readable Parquet file"):
        read_stays(tmp_path / "bad.parquet")
    (tmp_path / "latin1.csv").write_bytes("stay_id,hospital\nx,h\u00f4p\n".encode("latin-1"))
    with pytest.raises(StaysFileError, match="not UTF-8"):
        read_stays(tmp_path / "latin1.csv")
