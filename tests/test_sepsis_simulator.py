"""Sepsis simulator: deterministic, marked simulated, and its mechanisms exist as designed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clinaudit.sources.landing import LandingError, read_manifest, verify_batch
from clinaudit.sources.sepsis_population import OXIMETRY_GROUP, split_counts
from clinaudit.sources.sepsis_simulator import (
    NETWORK_HOSPITALS,
    VENDOR_HOSPITALS,
    land_network,
    month_label,
    simulate_network,
    simulate_vendor_population,
    write_sepsis_batch,
)
from clinaudit.sources.sepsis_tables import (
    AGE_BANDS,
    FEATURES,
    LAB_FEATURES,
    STAY_COLUMNS,
    read_stays,
)
from clinaudit.studies.sepsis_ews.schema import validate_stays


@pytest.fixture(scope="module")
def tiny():
    return simulate_network("tiny", seed=0)


@pytest.fixture(scope="module")
def demo():
    """Demo scale (6,000 stays, ~0.2 s) where a test needs a stable rate."""
    return simulate_network("demo", seed=0)


def test_same_seed_same_cohort_other_seed_other_cohort(tiny):
    again = simulate_network("tiny", seed=0)
    pd.testing.assert_frame_equal(tiny.stays, again.stays)
    pd.testing.assert_frame_equal(tiny.latent, again.latent)
    assert tiny.truth == again.truth
    other = simulate_network("tiny", seed=1)
    assert not tiny.stays["heart_rate"].equals(other.stays["heart_rate"])


def test_shape_ids_and_simulated_flag(tiny):
    stays = tiny.stays
    assert len(stays) == 600
    assert list(stays.columns) == [c for c in STAY_COLUMNS if c != "source_row"]
    assert stays["stay_id"].is_unique
    assert stays["simulated"].all()
    assert sorted(stays["hospital"].unique()) == sorted(NETWORK_HOSPITALS)
    assert sorted(stays["admit_month"].unique()) == [f"2024-{m:02d}" for m in range(1, 13)]
    assert set(stays["age_band"]) <= set(AGE_BANDS)
    assert (stays["age"] >= 18).all()


def test_a_later_month_does_not_change_earlier_months(tiny):
    extra = simulate_network("tiny", seed=0, months=(2, 13))
    feb = tiny.stays[tiny.stays["admit_month"] == "2024-02"].reset_index(drop=True)
    got = extra.stays[extra.stays["admit_month"] == "2024-02"].reset_index(drop=True)
    pd.testing.assert_frame_equal(feb, got)
    assert (extra.stays["admit_month"] == "2025-01").sum() == len(feb)
    assert month_label(2024, 13) == "2025-01"


def test_split_counts_is_exact():
    assert split_counts({"a": 1.0, "b": 1.0, "c": 1.0}, 10) == {"a": 4, "b": 3, "c": 3}
    assert sum(split_counts({"x": 0.33, "y": 0.27, "z": 0.4}, 601).values()) == 601


def test_prevalence_in_range(tiny, demo):
    assert 0.05 <= tiny.stays["sepsis"].mean() <= 0.11
    assert 0.06 <= demo.stays["sepsis"].mean() <= 0.10
    assert 0.05 <= simulate_vendor_population("tiny", seed=0).stays["sepsis"].mean() <= 0.10


def test_simulated_stays_pass_validation(tiny):
    valid, errors = validate_stays(tiny.stays, source="simulated")
    assert errors.empty
    assert len(valid) == len(tiny.stays)


def test_labs_missing_not_at_random_and_by_hospital(demo):
    stays = demo.stays
    measured = stays[list(LAB_FEATURES)].notna()
    septic = stays["sepsis"] == 1
    # Sicker stays get more labs.
    for lab in LAB_FEATURES:
        assert measured.loc[septic, lab].mean() > measured.loc[~septic, lab].mean() + 0.05, lab
    # hosp_d rarely orders lactate; the others order it several times as often.
    lactate = measured["lactate"].groupby(stays["hospital"]).mean()
    assert lactate["hosp_d"] < 0.15
    assert lactate.drop("hosp_d").min() > 2 * lactate["hosp_d"]
    # Lactate is ordered less for the disadvantaged group than for White patients.
    by_race = measured["lactate"].groupby(stays["race_ethnicity"]).mean()
    assert by_race[OXIMETRY_GROUP] < by_race["White"] - 0.03
    # Vitals are almost always present.
    assert stays["heart_rate"].notna().mean() > 0.98


def test_pulse_oximetry_overestimates_true_saturation_in_the_designed_group(demo):
    both = demo.stays.merge(demo.latent, on="stay_id")
    bias = (both["spo2"] - both["sao2"]).groupby(both["race_ethnicity"]).mean()
    assert 2.0 < bias[OXIMETRY_GROUP] < 5.0
    assert bias.drop(OXIMETRY_GROUP).abs().max() < 0.8
    # Occult hypoxemia (Sjoding 2020): SaO2 < 88 % while SpO2 reads >= 92 %.
    hypoxemic = both[both["sao2"] < 88]
    occult = (hypoxemic["spo2"] >= 92).groupby(hypoxemic["race_ethnicity"]).mean()
    assert occult[OXIMETRY_GROUP] > 0.5
    assert occult["White"] < 0.2
    truth = demo.truth["mechanisms"][0]
    assert truth["name"] == "pulse_oximetry_bias"
    assert truth["measured_bias_by_race"][OXIMETRY_GROUP] == pytest.approx(
        both.loc[both["race_ethnicity"] == OXIMETRY_GROUP, "spo2_bias"].mean(), abs=1e-3
    )


def test_vendor_population_differs(tiny):
    vendor = simulate_vendor_population("tiny", seed=0)
    stays = vendor.stays
    assert len(stays) == 1_000
    assert set(stays["hospital"]) == set(VENDOR_HOSPITALS)
    assert not set(stays["hospital"]) & set(tiny.stays["hospital"])
    assert stays["admit_month"].str.startswith("2021-").all()
    share = (stays["race_ethnicity"] == OXIMETRY_GROUP).mean()
    assert share < 0.08 < (tiny.stays["race_ethnicity"] == OXIMETRY_GROUP).mean()
    assert set(stays["split"]) == {"train", "test"}
    assert 0.18 < (stays["split"] == "test").mean() < 0.32
    # Lactate is ordered on suspicion: rarely for non-septic stays.
    lactate = stays["lactate"].notna().groupby(stays["sepsis"]).mean()
    assert lactate[0] < 0.2 < lactate[1]
    assert vendor.truth["population"] == "vendor"


def test_truth_names_the_disadvantaged_group_and_is_json(tiny):
    truth = tiny.truth
    assert truth["simulated"] is True
    assert truth["disadvantaged"] == {
        "attribute": "race_ethnicity",
        "group": OXIMETRY_GROUP,
        "metric": "tpr",
        "direction": "lower",
        "why": truth["disadvantaged"]["why"],
    }
    names = [m["name"] for m in truth["mechanisms"]]
    assert names == ["pulse_oximetry_bias", "lactate_ordering", "vendor_underrepresentation"]
    under = truth["mechanisms"][2]
    assert under["vendor_share"] < 0.05 < 0.2 < under["network_share"]
    assert truth["mechanisms"][1]["hospital"] == "hosp_d"
    json.dumps(truth, allow_nan=False)


def test_write_batch_lands_a_ready_simulated_batch(tmp_path, tiny):
    part = tiny.stays[tiny.stays["hospital"] == "hosp_a"].head(20)
    batch_dir = write_sepsis_batch(tmp_path, part, "2024-01")
    assert batch_dir == tmp_path / "sepsis_ews" / "hosp_a" / "2024-01"
    manifest = read_manifest(batch_dir)
    assert manifest.simulated is True
    assert manifest.label_file == "stays.parquet"
    assert verify_batch(batch_dir, manifest).ok
    back = read_stays(batch_dir / "stays.parquet")
    assert back["source_row"].tolist() == list(range(2, 22))
    pd.testing.assert_frame_equal(back.drop(columns="source_row"), part.reset_index(drop=True))
    with pytest.raises(LandingError, match="already exists"):
        write_sepsis_batch(tmp_path, part, "2024-01")
    with pytest.raises(ValueError, match="holds hospitals"):
        write_sepsis_batch(tmp_path, tiny.stays.head(300), "b2")


def test_write_batch_csv_reads_back_valid(tmp_path, tiny):
    part = tiny.stays[tiny.stays["hospital"] == "hosp_b"]
    batch_dir = write_sepsis_batch(tmp_path, part, "b1", fmt="csv")
    raw = read_stays(batch_dir / "stays.csv")
    valid, errors = validate_stays(raw, source="stays.csv", site="hosp_b", batch="b1")
    assert errors.empty
    assert valid["simulated"].all()
    np.testing.assert_allclose(
        valid[list(FEATURES)].to_numpy(dtype=float),
        part[list(FEATURES)].to_numpy(dtype=float),
        equal_nan=True,
    )


def test_land_network_one_batch_per_hospital_month_and_truth_outside(tmp_path):
    cohort = land_network(tmp_path / "landing", tmp_path / "truth", scale="tiny", months=(1, 2))
    batches = sorted((tmp_path / "landing" / "sepsis_ews").glob("*/*/manifest.json"))
    assert len(batches) == 2 * len(NETWORK_HOSPITALS)
    truth = json.loads((tmp_path / "truth" / "sepsis_ews" / "truth.json").read_text())
    assert truth == cohort.truth
    latent = pd.read_parquet(tmp_path / "truth" / "sepsis_ews" / "latent.parquet")
    assert len(latent) == len(cohort.stays)
    assert not list((tmp_path / "landing").rglob("truth.json"))


def test_the_study_lands_the_network_and_later_adds_only_new_months(tmp_path):
    from clinaudit.sources.landing import scan_landing
    from clinaudit.studies import get_study

    study = get_study("sepsis_ews")
    landing, truth = tmp_path / "landing", tmp_path / "truth"
    first = study.simulate(landing, truth, scale="tiny", seed=0, workers=1, months=(1,))
    before = {(b.site, b.batch) for b in scan_landing(landing, "sepsis_ews").batches}
    hospitals = ("hosp_a", "hosp_b", "hosp_c", "hosp_d")
    assert before == {(h, "2024-01") for h in hospitals}
    assert first.unit == "stay" and sorted(first.partitions) == list(hospitals)
    manifests = {p: p.read_bytes() for p in landing.rglob("manifest.json")}
    later = study.simulate(landing, truth, scale="tiny", seed=0, workers=1, months=(1, 2))
    after = {(b.site, b.batch) for b in scan_landing(landing, "sepsis_ews").batches}
    assert after - before == {(h, "2024-02") for h in hospitals}
    assert all(p.read_bytes() == data for p, data in manifests.items())  # landed: untouched
    month2 = simulate_network("tiny", seed=0, months=(2,)).stays
    assert later.partitions == month2.groupby("hospital").size().to_dict()  # only what is new
    doc = json.loads((truth / "sepsis_ews" / "truth.json").read_text())
    assert doc["disadvantaged"]["group"] == "Black"
    assert doc["n_stays"] == len(simulate_network("tiny", seed=0, months=(1, 2)).stays)
