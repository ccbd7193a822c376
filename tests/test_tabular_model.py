"""Tabular vendor package: trained, saved and loaded safely (skops, trusted types, sha256)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import FunctionTransformer

from clinaudit.models.scores_csv import ScoresError
from clinaudit.models.tabular import (
    CARD_FILE,
    MODEL_FILE,
    TRUSTED_TYPES,
    TabularModelError,
    canonical_skops_bytes,
    load_tabular_package,
    predict_stays,
    save_tabular_package,
    train_tabular_vendor_model,
)
from clinaudit.sources.sepsis_simulator import simulate_network, simulate_vendor_population
from clinaudit.sources.sepsis_tables import FEATURES
from clinaudit.studies.sepsis_ews.scores import read_sepsis_scores, unmatched_score_ids


@pytest.fixture(scope="module")
def vendor() -> pd.DataFrame:
    return simulate_vendor_population("tiny", seed=0).stays


@pytest.fixture(scope="module")
def model(vendor):
    return train_tabular_vendor_model(vendor, seed=0)


@pytest.fixture(scope="module")
def network() -> pd.DataFrame:
    return simulate_network("tiny", seed=0).stays


@pytest.fixture()
def package(tmp_path, model):
    return save_tabular_package(model, tmp_path / "pkg")


def _rewrite(package, model_bytes: bytes) -> None:
    """Replace the model file and make the card's hash match it (a consistent, hostile package)."""
    (package / MODEL_FILE).write_bytes(model_bytes)
    card = json.loads((package / CARD_FILE).read_text())
    card["model_sha256"] = hashlib.sha256(model_bytes).hexdigest()
    (package / CARD_FILE).write_text(json.dumps(card))


def test_card_states_features_threshold_and_training_summary(model, vendor):
    card = model.card
    assert card["features"] == list(FEATURES)
    assert 0.0 < model.threshold < 1.0
    val = card["validation"]
    assert val["n"] == int((vendor["split"] == "test").sum())
    assert val["alert_rate_at_threshold"] == pytest.approx(0.15, abs=0.02)
    assert val["auroc"] > 0.6
    data = card["training_data"]
    train = vendor[vendor["split"] == "train"]
    assert data["n_stays"] == len(train)
    assert data["prevalence"] == pytest.approx(train["sepsis"].mean())
    assert data["groups"]["race_ethnicity"]["Black"] < 0.1
    assert set(data["groups"]) == {"sex", "race_ethnicity", "age_band"}
    lactate = data["features"]["lactate"]
    assert lactate["missing_fraction"] == pytest.approx(train["lactate"].isna().mean())
    assert list(lactate["quantiles"]) == ["0.01", "0.05", "0.1", "0.25", "0.5", "0.75", "0.9"] + [
        "0.95",
        "0.99",
    ]
    assert data["simulated"] is True
    json.dumps(card, allow_nan=False)


def test_training_is_deterministic(model, vendor):
    again = train_tabular_vendor_model(vendor, seed=0)
    assert again.model_sha256 == model.model_sha256
    assert again.package_sha256 == model.package_sha256
    assert canonical_skops_bytes(model.estimator) == model.model_bytes


def test_round_trip_gives_identical_predictions(package, model, network):
    loaded = load_tabular_package(package)
    assert loaded.package_sha256 == model.package_sha256
    before = predict_stays(model, network)
    after = predict_stays(loaded, network)
    pd.testing.assert_frame_equal(before, after)
    assert list(after.columns) == ["stay_id", "score", "model_sha256"]
    assert after["stay_id"].tolist() == network["stay_id"].tolist()
    assert ((after["score"] >= 0) & (after["score"] <= 1)).all()
    assert set(after["model_sha256"]) == {model.package_sha256}
    assert roc_auc_score(network["sepsis"], after["score"]) > 0.55


def test_saving_never_overwrites(package, model):
    with pytest.raises(TabularModelError, match="not empty"):
        save_tabular_package(model, package)


def test_hash_mismatch_is_refused(package):
    data = bytearray((package / MODEL_FILE).read_bytes())
    data[-10] ^= 0xFF
    (package / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(TabularModelError, match="differs from the card's model_sha256"):
        load_tabular_package(package)


def test_pickle_files_in_the_package_are_refused(package, model):
    with open(package / "model.pkl", "wb") as fh:
        pickle.dump(model.estimator, fh)
    with pytest.raises(TabularModelError, match=r"pickle-like files \['model.pkl'\]"):
        load_tabular_package(package)


def test_a_pickle_disguised_as_skops_is_refused(package, model):
    _rewrite(package, pickle.dumps(model.estimator))
    with pytest.raises(TabularModelError, match="not a skops file"):
        load_tabular_package(package)


def test_a_skops_file_needing_untrusted_types_is_refused(package):
    _rewrite(package, sio.dumps(FunctionTransformer(func=os.system)))
    with pytest.raises(
        TabularModelError, match=r"outside the trusted list: \['(posix|nt)\.system'\]"
    ):
        load_tabular_package(package)
    assert "posix.system" not in TRUSTED_TYPES


def test_another_estimator_class_is_refused(package):
    x = np.random.default_rng(0).normal(size=(40, len(FEATURES)))
    other = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    _rewrite(package, sio.dumps(other))
    with pytest.raises(TabularModelError, match="holds a LogisticRegression"):
        load_tabular_package(package)


def test_card_problems_are_named(package):
    card = json.loads((package / CARD_FILE).read_text())
    card["features"] = list(reversed(card["features"]))
    (package / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(TabularModelError, match="differ from the study's"):
        load_tabular_package(package)
    (package / CARD_FILE).write_text("{")
    with pytest.raises(TabularModelError, match="not UTF-8 JSON"):
        load_tabular_package(package)
    with pytest.raises(TabularModelError, match="does not exist"):
        load_tabular_package(package / "absent")


def test_predict_needs_every_feature(model, network):
    with pytest.raises(ValueError, match=r"lacks feature columns \['lactate'\]"):
        predict_stays(model, network.drop(columns="lactate"))


def _scores_csv(tmp_path, ids, scores) -> str:
    path = tmp_path / "scores.csv"
    pd.DataFrame({"stay_id": ids, "score": scores}).to_csv(path, index=False)
    return path


def test_scores_csv_round_trip_in_stays_order(tmp_path, network):
    stays = network.head(5)
    ids = stays["stay_id"].tolist()
    path = _scores_csv(tmp_path, ids[::-1], ["0.5", "0.4", "0.3", "0.2", "0.1"])
    scores = read_sepsis_scores(path, stays)
    assert scores["stay_id"].tolist() == ids
    assert scores["score"].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert set(scores["model_sha256"]) == {hashlib.sha256(path.read_bytes()).hexdigest()}


def test_scores_csv_problems_are_named_by_line(tmp_path, network):
    stays = network.head(5)
    ids = stays["stay_id"].tolist()
    rows = [ids[0], ids[1], ids[1], "nope", ids[3]]
    path = _scores_csv(tmp_path, rows, ["0.2", "1.5", "0.3", "0.1", ""])
    with pytest.raises(ScoresError) as err:
        read_sepsis_scores(path, stays)
    found = {(p.check, p.row) for p in err.value.problems}
    assert {("duplicate_id", 4), ("unknown_id", 5), ("out_of_range", 3)} <= found
    assert ("missing_value", 6) in found
    unscored = [p for p in err.value.problems if p.check == "unscored_id"]
    assert [ids[2] in p.message or ids[4] in p.message for p in unscored] == [True, True]
    (tmp_path / "cols.csv").write_text("stay,prob\nx,0.1\n")
    with pytest.raises(ScoresError, match="no 'stay_id' column"):
        read_sepsis_scores(tmp_path / "cols.csv", stays)


def test_one_scores_file_for_the_network_skips_other_hospitals_and_reports_strangers(
    tmp_path, network
):
    stays = network.head(6)
    hosp_a, others = stays.iloc[:3], stays.iloc[3:]
    ids = stays["stay_id"].tolist()
    path = _scores_csv(tmp_path, [*ids, "ghost-1"], ["0.1", "0.2", "0.3", "0.4", "0.5", "x", "0.7"])
    with pytest.raises(ScoresError, match="'x' is not a number"):  # a row of hosp_a's stays
        read_sepsis_scores(path, stays, shared=True)
    path = _scores_csv(tmp_path, [*ids, "ghost-1"], ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "x"])
    scores = read_sepsis_scores(path, hosp_a, site="hosp_a", shared=True)
    assert scores["stay_id"].tolist() == ids[:3] and scores["score"].tolist() == [0.1, 0.2, 0.3]
    assert scores.attrs["n_other_rows"] == 4  # other hospitals' stays and the stranger: skipped
    with pytest.raises(ScoresError, match="is not in the stays table") as err:
        read_sepsis_scores(path, hosp_a, site="hosp_a")  # one file per hospital: an error
    assert {p.row for p in err.value.problems if p.check == "unknown_id"} == {5, 6, 7, 8}
    strangers = unmatched_score_ids(path, set(hosp_a["stay_id"]) | set(others["stay_id"]))
    assert strangers[["row", "check", "value"]].values.tolist() == [[8, "unknown_id", "ghost-1"]]
    assert (
        "neither a validated nor a quarantined stay of any hospital" in strangers["message"].iloc[0]
    )
