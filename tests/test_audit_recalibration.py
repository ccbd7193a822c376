"""Site recalibration: maps, selection, cross-fitting, operating points and paired bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from clinaudit.audit.bootstrap import bootstrap_counts, derive_rng
from clinaudit.audit.recalibration import (
    RecalibrationConfig,
    apply_site_maps,
    recalibrate_sites,
)
from clinaudit.audit.recalibration_maps import (
    IsotonicMap,
    PlattMap,
    TemperatureMap,
    fit_map,
    map_from_dict,
    select_map,
)
from clinaudit.audit.types import AuditInputError

FAST = RecalibrationConfig(n_boot=200)


def _frame(
    distort=lambda p: p, *, n_patients=600, seed=0, group="site_x", offset=5000
) -> pd.DataFrame:
    """1-3 images per patient, true risk ``p``, reported score ``distort(p)``, shuffled index."""
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(n_patients), rng.integers(1, 4, n_patients))
    p = expit(rng.normal(-1.0, 1.5, patient.size))
    y = (rng.uniform(size=p.size) < p).astype(float)
    df = pd.DataFrame(
        {
            "group": group,
            "cluster": [f"{group}/P{i}" for i in patient],
            "t": y,
            "score_t": distort(p),
        }
    )
    df.index = offset + rng.permutation(len(df))  # labels, not positions, must be recorded
    return df


def _run(frame: pd.DataFrame, config: RecalibrationConfig = FAST, **kw):
    kw = {"targets": ["t"], "thresholds": 0.5, "intended_sensitivity": 0.8, **kw}
    return recalibrate_sites(frame, config=config, **kw)


def test_recalibration_lowers_held_out_ece_on_a_miscalibrated_cell():
    res = _run(_frame(lambda p: p**3))
    row = res.table.iloc[0]
    assert row["status"] == "ok"
    assert row["ece_before"] > 0.15
    assert row["ece_after"] < 0.04
    # paired bootstrap: the whole interval of the change is below zero
    assert row["ece_change_ci_high"] < 0
    assert row["brier_after"] < row["brier_before"]
    for m in ("ece_before", "ece_after", "brier_after", "sensitivity_after"):
        assert row[f"{m}_ci_low"] <= row[f"{m}_ci_high"]
    assert row["brier_before_ci_low"] <= row["brier_before"] <= row["brier_before_ci_high"]


def test_calibrated_cell_is_left_essentially_unchanged_and_ranking_is_kept():
    frame = _frame(seed=1)
    res = _run(frame)
    row = res.table.iloc[0]
    assert abs(row["ece_after"] - row["ece_before"]) < 0.02
    assert row["method"] in ("temperature", "platt")
    deployed = apply_site_maps(res.maps, "site_x", frame[["score_t"]])
    auroc_raw = roc_auc_score(frame["t"], frame["score_t"])
    assert roc_auc_score(frame["t"], deployed["score_t"]) == pytest.approx(auroc_raw, abs=1e-12)
    assert row["auroc_before"] == pytest.approx(auroc_raw, abs=1e-12)
    assert row["auroc_deployed"] == pytest.approx(auroc_raw, abs=1e-12)
    # the deployed map barely moves calibrated probabilities
    assert np.abs(deployed["score_t"] - frame["score_t"]).max() < 0.1


def test_cross_fitting_never_evaluates_on_rows_or_patients_it_was_fitted_on():
    frame = _frame(lambda p: p**2, seed=2)
    res = _run(frame)
    folds = res.folds
    assert sorted(folds["row"]) == sorted(frame.index)  # every labelled row scored exactly once
    for f in range(FAST.n_folds):
        fitted = res.fit_rows[("site_x", "t", f)]
        held_out = folds.loc[folds["fold"] == f, "row"].to_numpy()
        assert len(held_out) > 0 and len(fitted) > 0
        assert not set(fitted) & set(held_out)
        assert set(fitted) | set(held_out) == set(frame.index)
        patients_fit = set(frame.loc[fitted, "cluster"])
        assert not patients_fit & set(frame.loc[held_out, "cluster"])
        # the held-out probabilities are exactly the fold's map applied to the raw scores
        fold_map = res.fold_maps[("site_x", "t", f)]
        assert fold_map.n_fit == len(fitted)
        expected = fold_map.apply(frame.loc[held_out, "score_t"].to_numpy())
        got = folds.loc[folds["fold"] == f, "recalibrated"].to_numpy()
        np.testing.assert_array_equal(got, expected)


def test_maps_round_trip_through_dict_and_json_exactly():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.01, 0.99, 400)
    y = (rng.uniform(size=400) < p**2).astype(float)
    for method in ("temperature", "platt", "isotonic"):
        fitted = fit_map(method, p, y)
        again = map_from_dict(json.loads(json.dumps(fitted.to_dict())))
        assert again == fitted
        np.testing.assert_array_equal(again.apply(p), fitted.apply(p))
    frame = _frame(lambda p: p**2, seed=3)
    for methods in (("isotonic",), ("temperature", "platt", "isotonic")):
        res = _run(frame, RecalibrationConfig(methods=methods, n_boot=0))
        loaded = json.loads(json.dumps(res.maps))
        assert loaded == res.maps
        scores = frame[["score_t"]]
        pd.testing.assert_frame_equal(
            apply_site_maps(loaded, "site_x", scores), apply_site_maps(res.maps, "site_x", scores)
        )
    assert loaded["maps"]["site_x"]["t"]["n_fit"] == len(frame)


def test_map_from_dict_rejects_bad_input():
    with pytest.raises(AuditInputError, match="method 'spline'"):
        map_from_dict({"method": "spline", "params": {}, "n_fit": 3})
    with pytest.raises(AuditInputError, match="temperature"):
        map_from_dict({"method": "temperature", "params": {"temperature": -1.0}, "n_fit": 3})
    with pytest.raises(AuditInputError, match="params"):
        map_from_dict({"method": "platt", "params": {"slope": 1.0}, "n_fit": 3})
    with pytest.raises(AuditInputError, match="non-decreasing"):
        map_from_dict({"method": "isotonic", "params": {"x": [0.2, 0.1], "y": [0, 1]}, "n_fit": 3})


def test_maps_are_the_documented_functions():
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(TemperatureMap(2.0, 1).apply(p), expit(logit(p) / 2.0))
    np.testing.assert_allclose(PlattMap(0.5, 1.5, 1).apply(p), expit(0.5 + 1.5 * logit(p)))
    iso = IsotonicMap((0.2, 0.6), (0.1, 0.5), 1)
    np.testing.assert_allclose(iso.apply(np.array([0.0, 0.4, 1.0])), [0.1, 0.3, 0.5])
    with pytest.raises(AuditInputError, match="p:"):
        iso.apply(np.array([1.5]))


def test_selection_prefers_temperature_for_a_pure_temperature_distortion():
    for seed in (0, 1):
        res = _run(_frame(lambda p: expit(2.5 * logit(p)), seed=seed))
        row = res.table.iloc[0]
        assert row["method"] == "temperature"
        assert set(row["fold_methods"].split(",")) == {"temperature"}
        assert row["ece_after"] < 0.03 < row["ece_before"]


def test_selection_needs_more_than_a_temperature_for_other_distortions():
    # a shift in logit space: a temperature cannot express it
    row = _run(_frame(lambda p: p**3, seed=4)).table.iloc[0]
    assert row["method"] in ("platt", "isotonic")
    # a step in the true risk: only the isotonic map can follow it
    rng = np.random.default_rng(5)
    patient = np.repeat(np.arange(800), rng.integers(1, 4, 800))
    s = rng.uniform(0.02, 0.98, patient.size)
    y = (rng.uniform(size=s.size) < np.where(s < 0.5, 0.05, 0.6)).astype(float)
    step = pd.DataFrame({"group": "g", "cluster": patient, "t": y, "score_t": s})
    row = _run(step).table.iloc[0]
    assert row["method"] == "isotonic"
    assert row["ece_after"] < 0.05 < row["ece_before"]


def test_single_method_selection_skips_cross_validation_and_ties_go_to_the_simpler():
    rng = np.random.default_rng(6)
    p = rng.uniform(0.05, 0.95, 300)
    y = (rng.uniform(size=300) < p).astype(float)
    codes = np.arange(300)
    only = select_map(p, y, codes, methods=["platt"], inner_folds=3, rng=rng)
    assert only.method == "platt"
    # with an infinite tolerance every method ties: the simplest wins
    tied = select_map(
        p,
        y,
        codes,
        methods=["isotonic", "platt", "temperature"],
        inner_folds=3,
        rng=rng,
        tolerance=1e9,
    )
    assert tied.method == "temperature"


def test_site_threshold_restores_the_intended_sensitivity_out_of_sample():
    frame = _frame(lambda p: p**2, n_patients=900, seed=7)
    res = _run(frame, intended_sensitivity=0.8)
    row = res.table.iloc[0]
    assert row["sensitivity_before"] < 0.5  # the vendor threshold misses positives here
    assert abs(row["sensitivity_site_threshold"] - 0.8) < 0.04
    assert (
        row["sensitivity_site_threshold_ci_low"] < 0.8 < row["sensitivity_site_threshold_ci_high"]
    )
    # raw and recalibrated thresholds describe the same operating point
    deployed = apply_site_maps(
        res.maps, "site_x", pd.DataFrame({"score_t": [row["site_threshold_raw"]]})
    )
    assert deployed["score_t"].iloc[0] == pytest.approx(row["site_threshold"])
    assert res.maps["maps"]["site_x"]["t"]["site_threshold_raw"] == row["site_threshold_raw"]
    # each fold's threshold was fitted without it: thresholds differ between folds
    assert res.folds.groupby("fold")["fold_threshold_raw"].nunique().eq(1).all()
    assert res.folds["fold_threshold_raw"].nunique() == FAST.n_folds


def test_bootstrap_matches_a_slow_weighted_reference_and_is_paired():
    frame = _frame(lambda p: p**2, n_patients=300, seed=8)
    config = RecalibrationConfig(n_boot=50, n_bins=10)
    res = _run(frame, config, thresholds=0.3)
    reps = res.replicates[("site_x", "t")]
    codes = pd.factorize(frame["cluster"].to_numpy())[0]
    counts = bootstrap_counts(codes.max() + 1, 50, derive_rng(0, "recalibration/site_x/bootstrap"))
    folds = res.folds.set_index("row").loc[frame.index]
    y, p, q = frame["t"].to_numpy(), frame["score_t"].to_numpy(), folds["recalibrated"].to_numpy()
    site = p >= folds["fold_threshold_raw"].to_numpy()
    for b in (0, 17, 49):
        w = counts[b, codes].astype(float)

        def ece(prob, w=w):
            bins = np.minimum((prob * 10).astype(int), 9)
            return sum(abs((w * (y - prob))[bins == k].sum()) for k in range(10)) / w.sum()

        assert reps["ece_before"][b] == pytest.approx(ece(p), abs=1e-12)
        assert reps["ece_after"][b] == pytest.approx(ece(q), abs=1e-12)
        assert reps["ece_change"][b] == pytest.approx(ece(q) - ece(p), abs=1e-12)
        pos, neg = w * (y == 1), w * (y == 0)
        assert reps["sensitivity_after"][b] == pytest.approx((pos * (q >= 0.3)).sum() / pos.sum())
        assert reps["specificity_before"][b] == pytest.approx((neg * (p < 0.3)).sum() / neg.sum())
        assert reps["sensitivity_site_threshold"][b] == pytest.approx(
            (pos * site).sum() / pos.sum()
        )
        brier = (w * (q - y) ** 2).sum() / w.sum()
        assert reps["brier_after"][b] == pytest.approx(brier, abs=1e-12)


def test_deterministic_and_groups_default_to_sites_without_colon():
    frame = pd.concat(
        [
            _frame(lambda p: p**2, n_patients=250, seed=9, group="site_b", offset=0),
            _frame(lambda p: p**2, n_patients=250, seed=10, group="site_a", offset=1000),
            _frame(n_patients=250, seed=11, group="vendor_dev:test", offset=2000),
        ]
    )
    a, b = _run(frame), _run(frame)
    pd.testing.assert_frame_equal(a.table, b.table)
    pd.testing.assert_frame_equal(a.folds, b.folds)
    assert a.maps == b.maps
    assert a.table["group"].tolist() == ["site_a", "site_b"]
    assert sorted(a.maps["maps"]) == ["site_a", "site_b"]
    only = _run(frame, groups=["vendor_dev:test"])
    assert only.table["group"].tolist() == ["vendor_dev:test"]


def test_insufficient_cell_gets_a_status_nan_metrics_and_no_map():
    frame = _frame(n_patients=200, seed=12)
    frame["rare"] = 0.0
    frame.loc[frame.index[:4], "rare"] = 1.0
    frame["score_rare"] = frame["score_t"]
    res = _run(frame, targets=["t", "rare"], intended_sensitivity={"t": 0.8, "rare": 0.9})
    table = res.table.set_index("target")
    assert table.loc["rare", "status"] == "insufficient data"
    assert "4 positives" in table.loc["rare", "note"]
    assert table.loc["rare", "method"] is None
    assert table.loc["rare", ["ece_after", "ece_after_ci_low", "site_threshold"]].isna().all()
    assert set(res.maps["maps"]["site_x"]) == {"t"}
    assert table.loc["t", "status"] == "ok"
    with pytest.raises(AuditInputError, match="score_rare"):
        apply_site_maps(res.maps, "site_x", frame[["score_t", "score_rare"]])
    kept = apply_site_maps(res.maps, "site_x", frame[["score_t", "score_rare"]], missing="keep")
    pd.testing.assert_series_equal(kept["score_rare"], frame["score_rare"])


def test_nan_intended_sensitivity_leaves_site_threshold_empty():
    res = _run(_frame(seed=13), intended_sensitivity={"t": float("nan")})
    row = res.table.iloc[0]
    assert row["status"] == "ok"
    assert np.isnan(row["site_threshold"]) and np.isnan(row["sensitivity_site_threshold"])
    assert res.maps["maps"]["site_x"]["t"]["site_threshold_raw"] is None


@pytest.mark.parametrize(
    ("change", "argument"),
    [
        ({"frame": lambda f: f.drop(columns="score_t")}, "frame"),
        ({"frame": lambda f: f.assign(score_t=f["score_t"] + 1.0)}, "frame"),
        ({"frame": lambda f: f.assign(t=2.0)}, "frame"),
        ({"intended_sensitivity": 1.5}, "intended_sensitivity"),
        ({"intended_sensitivity": 0.0}, "intended_sensitivity"),
        ({"intended_sensitivity": {"other": 0.8}}, "intended_sensitivity"),
        ({"thresholds": {"other": 0.5}}, "thresholds"),
        ({"groups": ["nowhere"]}, "groups"),
        ({"targets": []}, "targets"),
    ],
)
def test_bad_inputs_name_the_argument(change, argument):
    frame = _frame(n_patients=100, seed=14)
    kw = dict(change)
    frame = kw.pop("frame", lambda f: f)(frame)
    with pytest.raises(AuditInputError) as err:
        _run(frame, **kw)
    assert err.value.argument == argument
    if "score_t" not in frame.columns:
        assert "score_t" in str(err.value)


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"n_folds": 1}, "n_folds"),
        ({"inner_folds": 1}, "inner_folds"),
        ({"methods": ("spline",)}, "methods"),
        ({"methods": ()}, "methods"),
        ({"ci_level": 1.5}, "ci_level"),
        ({"tie_tolerance": -1.0}, "tie_tolerance"),
    ],
)
def test_bad_config_names_the_argument(options, argument):
    with pytest.raises(AuditInputError) as err:
        RecalibrationConfig(**options)
    assert err.value.argument == argument


def test_table_has_the_contract_columns_in_a_fixed_order():
    table = _run(_frame(n_patients=150, seed=15), RecalibrationConfig(n_boot=20)).table
    ci = ("", "_ci_low", "_ci_high")
    contract = [
        "group", "target", "status", "method", "n", "n_pos", "n_folds", "threshold",
        "intended_sensitivity", "site_threshold", "site_threshold_raw",
        *(f"{m}_{w}{s}" for m in ("ece", "brier", "sensitivity", "specificity")
          for w in ("before", "after") for s in ci),
        *(f"{m}_site_threshold{s}" for m in ("sensitivity", "specificity") for s in ci),
    ]  # fmt: skip
    assert not set(contract) - set(table.columns)
    assert table.columns.tolist() == list(dict.fromkeys(table.columns))
    assert table["n"].dtype == np.int64 and table["n_folds"].iloc[0] == 5
