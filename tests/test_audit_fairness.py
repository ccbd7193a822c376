"""Fairness core: group rates and gaps equal fairlearn's MetricFrame; paired bootstrap; burden."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import average_precision_score, precision_score, roc_auc_score

from clinaudit.audit.bootstrap import bootstrap_counts, derive_rng
from clinaudit.audit.burden import alert_burden
from clinaudit.audit.fairness import group_rates
from clinaudit.audit.types import STATUS_INSUFFICIENT, STATUS_OK, AuditInputError

TOL = 1e-12
THR = 0.4
METRICS = {
    "tpr": true_positive_rate,
    "fpr": false_positive_rate,
    "selection_rate": selection_rate,
    "ppv": lambda y, p: precision_score(y, p, zero_division=np.nan),
}


def _cohort(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Stays of ~0.8 n patients; group B's positives score lower (a sensor under-reading)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "sex": rng.choice(["F", "M"], n),
            "race": rng.choice(["A", "B", "C"], n, p=[0.55, 0.25, 0.2]),
            "age": rng.choice(["18-64", "65+"], n),
            "patient": rng.integers(0, int(0.8 * n), n),
        }
    )
    df["y"] = (rng.random(n) < 0.12).astype(int)
    logit = -1.2 + 2.0 * df["y"] + rng.normal(size=n) - 1.0 * df["y"] * (df["race"] == "B")
    df["score"] = np.round(1.0 / (1.0 + np.exp(-logit)), 3)  # rounding: ties exercised too
    return df


def _rates(df: pd.DataFrame, **kw: object):
    groups = {"sex": df["sex"], "race": df["race"], "age": df["age"]}
    kw = {"threshold": THR, "clusters": df["patient"], "n_boot": 100, **kw}
    return group_rates(df["y"], df["score"], groups=groups, **kw)


def _row(table: pd.DataFrame, attribute: str, group: str) -> pd.Series:
    hit = table[(table["attribute"] == attribute) & (table["group"] == group)]
    assert len(hit) == 1, (attribute, group)
    return hit.iloc[0]


def test_rates_and_gaps_equal_fairlearn_metricframe() -> None:
    df = _cohort()
    res = _rates(df)
    pred = (df["score"] >= THR).astype(int)
    for attr in ("sex", "race", "age"):
        mf = MetricFrame(metrics=METRICS, y_true=df["y"], y_pred=pred, sensitive_features=df[attr])
        between = mf.difference(method="between_groups")
        for g, expected in mf.by_group.iterrows():
            row = _row(res.rates, attr, str(g))
            assert row["status"] == STATUS_OK
            for m in METRICS:
                assert abs(row[m] - expected[m]) < TOL, (attr, g, m)
        for m in METRICS:
            gap = res.gaps.query("attribute == @attr and metric == @m and comparison == 'max_min'")
            assert len(gap) == 1 and abs(gap["difference"].iloc[0] - between[m]) < TOL
    overall = _row(res.rates, "overall", "all")
    for m in METRICS:
        assert abs(overall[m] - mf.overall[m]) < TOL


def test_intersections_equal_fairlearn_multi_feature_metricframe() -> None:
    df = _cohort(4000, seed=3)
    res = _rates(df, intersections=[("sex", "race")], min_pos=5, min_neg=5)
    pred = (df["score"] >= THR).astype(int)
    mf = MetricFrame(
        metrics=METRICS, y_true=df["y"], y_pred=pred, sensitive_features=df[["sex", "race"]]
    )
    cells = res.rates[res.rates["attribute"] == "sex x race"]
    assert len(cells) == 6 and cells["is_intersection"].all()
    for (sex, race), expected in mf.by_group.iterrows():
        row = _row(res.rates, "sex x race", f"{sex} & {race}")
        for m in METRICS:
            assert abs(row[m] - expected[m]) < TOL
    between = mf.difference(method="between_groups")
    gaps = res.gaps.query("attribute == 'sex x race' and comparison == 'max_min'")
    for m in METRICS:
        assert abs(gaps.set_index("metric").loc[m, "difference"] - between[m]) < TOL


def test_auroc_auprc_per_group_equal_sklearn_and_reference_gaps() -> None:
    df = _cohort()
    res = _rates(df, reference={"race": "C"})
    for race in ("A", "B", "C"):
        sub = df[df["race"] == race]
        row = _row(res.rates, "race", race)
        assert abs(row["auroc"] - roc_auc_score(sub["y"], sub["score"])) < TOL
        assert abs(row["auprc"] - average_precision_score(sub["y"], sub["score"])) < TOL
    assert res.reference["race"] == "C"
    # default reference = largest group
    sizes = df["sex"].value_counts()
    assert res.reference["sex"] == sizes.idxmax()
    vs = res.gaps.query("attribute == 'race' and comparison == 'vs_reference'")
    assert sorted(vs["group"].unique()) == ["A", "B"] and set(vs["versus"]) == {"C"}
    for _, gap in vs.iterrows():
        expected = (
            _row(res.rates, "race", gap["group"])[gap["metric"]]
            - _row(res.rates, "race", "C")[gap["metric"]]
        )
        assert abs(gap["difference"] - expected) < TOL
    # the injected gap: B's TPR below C's, and the interval says so
    tpr_b = vs.query("group == 'B' and metric == 'tpr'").iloc[0]
    assert tpr_b["difference"] < 0 and tpr_b["ci_high"] < 0 and tpr_b["ci_excludes_zero"]
    largest = res.largest_gap()
    assert (largest["attribute"], largest["metric"], largest["versus"]) == ("race", "tpr", "B")


def test_bootstrap_replicates_equal_slow_weighted_reference() -> None:
    df = _cohort(1500, seed=5)
    n_boot = 40
    res = _rates(df, n_boot=n_boot, seed=11, chunk_size=7, intersections=None)
    codes = pd.factorize(df["patient"])[0]
    counts = bootstrap_counts(codes.max() + 1, n_boot, derive_rng(11, "fairness"))
    y, s = df["y"].to_numpy(), df["score"].to_numpy()
    pred = s >= THR
    for race in ("A", "B"):
        m = (df["race"] == race).to_numpy()
        reps = res.replicates[("race", race)]
        for b in range(n_boot):
            w = counts[b, codes] * m
            tpr = (w * y * pred).sum() / (w * y).sum()
            sel = (w * pred).sum() / w.sum()
            assert abs(reps["tpr"][b] - tpr) < 1e-12
            assert abs(reps["selection_rate"][b] - sel) < 1e-12
            assert abs(reps["auroc"][b] - roc_auc_score(y[m], s[m], sample_weight=w[m])) < 1e-12
    # the gap interval is the percentile interval of the paired difference of the same replicates
    gap = res.gaps.query("attribute == 'race' and metric == 'tpr' and comparison == 'max_min'")
    gap = gap.iloc[0]
    diff = (
        res.replicates[("race", gap["group"])]["tpr"]
        - res.replicates[("race", gap["versus"])]["tpr"]
    )
    lo, hi = np.quantile(diff, [0.025, 0.975])
    assert abs(gap["ci_low"] - lo) < TOL and abs(gap["ci_high"] - hi) < TOL
    assert gap["spread_ci_low"] >= 0.0


def test_deterministic_and_chunk_size_invariant() -> None:
    df = _cohort(1200, seed=2)
    a, b = _rates(df, seed=4), _rates(df, seed=4, chunk_size=13)
    pd.testing.assert_frame_equal(a.rates, b.rates)
    pd.testing.assert_frame_equal(a.gaps, b.gaps)
    c = _rates(df, seed=5)
    assert not np.allclose(a.rates["tpr_ci_low"], c.rates["tpr_ci_low"], equal_nan=True)
    assert list(a.rates.columns[:5]) == [
        "attribute",
        "group",
        "is_intersection",
        "is_reference",
        "status",
    ]
    races = a.rates.loc[a.rates["attribute"] == "race", "group"].tolist()
    assert races == sorted(races)


def test_insufficient_groups_are_reported_and_left_out_of_gaps() -> None:
    df = _cohort(1500, seed=7)
    rare = df.index[:40]  # a small group: about 5 positives
    df.loc[rare, "race"] = "D"
    res = _rates(df, n_boot=30)
    d = _row(res.rates, "race", "D")
    assert d["status"] == STATUS_INSUFFICIENT and d["n"] == 40
    assert d["n_pos"] == int(df.loc[rare, "y"].sum()) and np.isfinite(d["prevalence"])
    assert np.isnan(d["tpr"]) and np.isnan(d["auroc"]) and np.isnan(d["tpr_ci_low"])
    gap = res.gaps.query("attribute == 'race' and metric == 'tpr' and comparison == 'max_min'")
    assert gap["n_groups"].iloc[0] == 3 and "D" not in (gap["group"].iloc[0], gap["versus"].iloc[0])
    vs_d = res.gaps.query("attribute == 'race' and group == 'D'")
    assert (vs_d["status"] == STATUS_INSUFFICIENT).all() and vs_d["difference"].isna().all()
    # an attribute with fewer than two sufficient groups has no gap
    one = group_rates(
        df["y"],
        df["score"],
        groups={"site": np.where(df.index < 40, "small", "big")},
        threshold=THR,
        n_boot=0,
    )
    assert (one.gaps["status"] == STATUS_INSUFFICIENT).all()
    assert one.largest_gap() is None


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"groups": {"sex": np.array(["F", "M"])}}, "groups['sex']"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"reference": {"sex": "X"}}, "reference"),
        ({"reference": {"ethnicity": "A"}}, "reference"),
        ({"groups": ["F", "M"]}, "groups"),
        ({"groups": {}}, "groups"),
        ({"groups": None}, "groups"),
        ({"reference": "A"}, "reference"),
        ({"intersections": [("sex", "zip")]}, "intersections"),
        ({"n_boot": -1}, "n_boot"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs: dict, argument: str) -> None:
    df = _cohort(300)
    args = {"groups": {"sex": df["sex"]}, "threshold": THR, "n_boot": 0, **kwargs}
    with pytest.raises(AuditInputError) as err:
        group_rates(df["y"], df["score"], **args)
    assert err.value.argument == argument
    assert "Fix:" in str(err.value)


def test_bad_labels_and_scores_are_named() -> None:
    df = _cohort(300)
    with pytest.raises(AuditInputError, match="y_score"):
        group_rates(df["y"], df["score"] * 3, groups={"sex": df["sex"]}, threshold=THR)
    y = df["y"].astype(float).copy()
    y.iloc[4] = np.nan
    with pytest.raises(AuditInputError, match="y_true: received an unlabelled"):
        group_rates(y, df["score"], groups={"sex": df["sex"]}, threshold=THR)


def test_alert_burden_equals_hand_computation_and_pairs_with_group_rates() -> None:
    df = _cohort(2000, seed=9)
    days = np.random.default_rng(1).uniform(0.5, 4.0, len(df))
    table = alert_burden(
        df["y"],
        df["score"],
        THR,
        exposure_days=days,
        groups={"race": df["race"]},
        clusters=df["patient"],
        n_boot=100,
    )
    assert table[["attribute", "group"]].values.tolist() == [
        ["overall", "all"],
        ["race", "A"],
        ["race", "B"],
        ["race", "C"],
    ]
    pred = (df["score"] >= THR).to_numpy()
    y = df["y"].to_numpy()
    for _, row in table.iterrows():
        m = (
            np.ones(len(df), bool)
            if row["group"] == "all"
            else (df["race"] == row["group"]).to_numpy()
        )
        tp = (y * pred)[m].sum()
        assert row["n_stays"] == m.sum() and row["n_alerts"] == pred[m].sum()
        assert abs(row["alert_rate"] - pred[m].mean()) < TOL
        assert abs(row["alerts_per_100_stay_days"] - 100 * pred[m].sum() / days[m].sum()) < 1e-9
        assert abs(row["missed_per_1000_stays"] - 1000 * (y[m] * ~pred[m]).sum() / m.sum()) < 1e-9
        assert abs(row["ppv"] - tp / pred[m].sum()) < TOL
        assert abs(row["nne"] - pred[m].sum() / tp) < 1e-9
        assert abs(row["sensitivity"] - tp / y[m].sum()) < TOL
        assert row["alert_rate_ci_low"] <= row["alert_rate"] <= row["alert_rate_ci_high"]
    # same data, clusters and seed: the burden's alert-rate intervals are group_rates' intervals
    res = group_rates(
        df["y"],
        df["score"],
        groups={"race": df["race"]},
        threshold=THR,
        clusters=df["patient"],
        n_boot=100,
        intersections=None,
    )
    assert np.allclose(table["alert_rate_ci_low"], res.rates["selection_rate_ci_low"], atol=0)
    constant = alert_burden(df["y"], df["score"], THR, exposure_days=2.0, n_boot=0)
    assert abs(constant["alerts_per_100_stay_days"].iloc[0] - 50 * pred.mean()) < 1e-9


@pytest.mark.parametrize("days", [0.0, -1.0, np.nan, np.ones(5)])
def test_alert_burden_rejects_bad_exposure(days: object) -> None:
    df = _cohort(200)
    with pytest.raises(AuditInputError) as err:
        alert_burden(df["y"], df["score"], THR, exposure_days=days, n_boot=0)
    assert err.value.argument == "exposure_days"
