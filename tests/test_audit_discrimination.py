"""Discrimination core: exact agreement with sklearn / fairlearn, bootstrap replicates, errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

from clinaudit.audit.bootstrap import bootstrap_counts, derive_rng
from clinaudit.audit.discrimination import (
    audit_discrimination,
    discrimination_table,
    metrics_to_json,
    weighted_binary_metrics,
)
from clinaudit.audit.types import STATUS_INSUFFICIENT, AuditInputError

TOL = 1e-12


def _sk_threshold_metrics(y, s, thr, w=None):
    pred = (s >= thr).astype(int)
    w = np.ones_like(s) if w is None else w
    tp = np.sum(w * (pred == 1) * (y == 1))
    fp = np.sum(w * (pred == 1) * (y == 0))
    tn = np.sum(w * (pred == 0) * (y == 0))
    fn = np.sum(w * (pred == 0) * (y == 1))
    with np.errstate(invalid="ignore"):  # 0/0 -> NaN: undefined metric, compared as NaN below
        return tp / (tp + fn), tn / (tn + fp), tp / (tp + fp), tn / (tn + fn)


@pytest.mark.parametrize("kind", ["continuous", "many_ties", "all_tied", "tiny"])
def test_point_and_weighted_metrics_equal_sklearn(kind: str) -> None:
    rng = np.random.default_rng(42)
    for _ in range(40):
        n = int(rng.integers(2, 6)) if kind == "tiny" else int(rng.integers(20, 200))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            y[0] = 1 - y[0]
        if kind == "continuous":
            s = rng.normal(size=n) + y
        elif kind == "many_ties":
            s = rng.integers(0, 4, n) / 3.0
        elif kind == "all_tied":
            s = np.full(n, 0.5)
        else:
            s = rng.integers(0, 3, n) / 2.0
        weights = np.vstack([np.ones(n), rng.integers(0, 4, (5, n))]).astype(float)
        got = weighted_binary_metrics(y, s, weights, threshold=0.5)
        for k, w in enumerate(weights):
            has_both = (w * y).sum() > 0 and (w * (1 - y)).sum() > 0
            if not has_both:
                assert np.isnan(got["auroc"][k]) and np.isnan(got["auprc"][k])
                continue
            assert abs(got["auroc"][k] - roc_auc_score(y, s, sample_weight=w)) < TOL
            assert abs(got["auprc"][k] - average_precision_score(y, s, sample_weight=w)) < TOL
            sens, spec, ppv, npv = _sk_threshold_metrics(y, s, 0.5, w)
            for name, ref in zip(
                ("sensitivity", "specificity", "ppv", "npv"), (sens, spec, ppv, npv), strict=True
            ):
                if np.isfinite(ref):
                    assert abs(got[name][k] - ref) < TOL, name
                else:
                    assert np.isnan(got[name][k]), name


def _clustered_data(seed: int = 0, n_patients: int = 150, n_targets: int = 2):
    rng = np.random.default_rng(seed)
    per_patient = rng.choice([1, 2, 3], size=n_patients, p=[0.8, 0.15, 0.05])
    patient = np.repeat(np.arange(n_patients), per_patient)
    n = patient.size
    site = np.where(patient % 3 == 0, "s0", np.where(patient % 3 == 1, "s1", "s2"))
    y = (rng.random((n, n_targets)) < 0.3).astype(float)
    s = np.round(y * 0.7 + rng.normal(size=(n, n_targets)), 1)  # rounding makes ties
    y[rng.random((n, n_targets)) < 0.1] = np.nan
    return y, s, site, patient


def test_bootstrap_replicates_equal_sklearn_on_materialised_resamples() -> None:
    y, s, site, patient = _clustered_data()
    res = audit_discrimination(
        y,
        s,
        groups=site,
        clusters=patient,
        n_boot=30,
        min_pos=5,
        min_neg=5,
        seed=7,
        thresholds=[0.3, 0.6],
    )
    group = "s1"
    rows = np.flatnonzero(site == group)
    codes, _ = pd.factorize(patient[rows], sort=False)
    counts = bootstrap_counts(int(codes.max()) + 1, 30, derive_rng(7, group))
    for t, name in enumerate(("target_0", "target_1")):
        reps = res.replicates[(group, name)]
        for b in (0, 1, 17, 29):
            # materialise the resample: each drawn patient's rows, repeated by its count
            idx = np.repeat(rows, counts[b, codes])
            yt, st = y[idx, t], s[idx, t]
            keep = ~np.isnan(yt)
            yt, st = yt[keep], st[keep]
            assert abs(reps["auroc"][b] - roc_auc_score(yt, st)) < TOL
            assert abs(reps["auprc"][b] - average_precision_score(yt, st)) < TOL
            thr = (0.3, 0.6)[t]
            assert abs(reps["sensitivity"][b] - recall_score(yt, st >= thr)) < TOL
            assert abs(reps["ppv"][b] - precision_score(yt, st >= thr)) < TOL


def test_results_do_not_depend_on_chunk_size_and_json_is_byte_identical() -> None:
    y, s, site, patient = _clustered_data(seed=3)
    kw = dict(groups=site, clusters=patient, n_boot=50, min_pos=5, min_neg=5, seed=11)
    a = audit_discrimination(y, s, chunk_size=7, **kw)
    b = audit_discrimination(y, s, chunk_size=200, **kw)
    for key, reps in a.replicates.items():
        for metric, values in reps.items():
            np.testing.assert_array_equal(values, b.replicates[key][metric])
    ja, jb = metrics_to_json(a.table), metrics_to_json(b.table)
    assert ja.encode() == jb.encode()
    assert ja == metrics_to_json(discrimination_table(y, s, chunk_size=7, **kw))
    other = discrimination_table(y, s, **{**kw, "seed": 12})
    assert metrics_to_json(other) != ja
    assert "NaN" not in ja and '"status": "ok"' in ja


def test_point_metrics_per_group_equal_fairlearn_metricframe() -> None:
    y, s, site, patient = _clustered_data(seed=5, n_patients=400, n_targets=1)
    keep = ~np.isnan(y[:, 0])
    yk, sk, gk = y[keep, 0].astype(int), s[keep, 0], site[keep]
    table = discrimination_table(y, s, groups=site, n_boot=0, min_pos=2, min_neg=2, thresholds=0.2)
    mf = MetricFrame(
        metrics={"auroc": roc_auc_score, "auprc": average_precision_score},
        y_true=yk,
        y_pred=sk,
        sensitive_features=gk,
    ).by_group
    pred = (sk >= 0.2).astype(int)
    mf_thr = MetricFrame(
        metrics={
            "sensitivity": recall_score,
            "specificity": lambda a, b: recall_score(a, b, pos_label=0),
            "ppv": precision_score,
            "npv": lambda a, b: precision_score(a, b, pos_label=0),
        },
        y_true=yk,
        y_pred=pred,
        sensitive_features=gk,
    ).by_group
    for _, row in table.iterrows():
        for metric in ("auroc", "auprc"):
            assert abs(row[metric] - mf.loc[row["group"], metric]) < TOL
        for metric in ("sensitivity", "specificity", "ppv", "npv"):
            assert abs(row[metric] - mf_thr.loc[row["group"], metric]) < TOL
    assert table["group"].tolist() == ["s0", "s1", "s2"]


def test_nan_labels_exclude_rows_from_that_target_only() -> None:
    y, s, site, _ = _clustered_data(seed=9, n_targets=2)
    table = discrimination_table(y, s, n_boot=0, min_pos=2, min_neg=2)
    for t in range(2):
        keep = ~np.isnan(y[:, t])
        row = table.iloc[t]
        assert row["n"] == keep.sum()
        assert abs(row["auroc"] - roc_auc_score(y[keep, t], s[keep, t])) < TOL


def test_insufficient_cells_have_status_and_nan_metrics() -> None:
    y = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=float)  # c: one class only
    s = np.linspace(0, 1, 12)
    g = np.repeat(["a", "b", "c"], 4)
    table = discrimination_table(y, s, groups=g, n_boot=20, min_pos=2, min_neg=2)
    a, b, c = (table.iloc[i] for i in range(3))
    assert a["status"] == "ok" and np.isfinite(a["auroc"]) and np.isfinite(a["auroc_ci_low"])
    for row in (b, c):
        assert row["status"] == STATUS_INSUFFICIENT
        metric_cols = [
            col
            for col in table.columns
            if col.startswith(("auroc", "auprc", "sens", "spec", "ppv", "npv"))
        ]
        assert all(np.isnan(row[col]) for col in metric_cols)
    assert (b["n_pos"], b["n_neg"]) == (1, 3) and (c["n_pos"], c["n_neg"]) == (0, 4)


def test_reference_comparison_and_dataframe_inputs() -> None:
    rng = np.random.default_rng(1)
    n = 600
    g = np.repeat(["vendor", "site_a", "site_b"], n // 3)
    y = pd.DataFrame({"effusion": rng.integers(0, 2, n), "nodule": rng.integers(0, 2, n)})
    noise = np.where(g == "site_b", 3.0, 1.0)[:, None]
    s = pd.DataFrame(y.to_numpy() * 1.5 + rng.normal(size=(n, 2)) * noise, columns=y.columns)
    table = discrimination_table(y, s, groups=g, reference_group="vendor", n_boot=100)
    assert table["target"].tolist()[:2] == ["effusion", "nodule"]
    ref_rows = table[table["is_reference"]]
    assert ref_rows["delong_p"].isna().all() and len(ref_rows) == 2
    site_b = table[table["group"] == "site_b"]
    assert (site_b["auroc_diff_vs_reference"] < 0).all()
    assert (site_b["delong_p_adj"] < 0.05).all()
    assert (table["delong_p_adj"].dropna() >= table["delong_p"].dropna()).all()


def test_bad_inputs_raise_with_what_was_received() -> None:
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.9, 0.3, 0.7])
    with pytest.raises(AuditInputError, match=r"shape \(3, 1\) while y_true has shape \(4, 1\)"):
        discrimination_table(y, s[:3])
    with pytest.raises(AuditInputError, match=r"label 2\.0 at row 1, column 0"):
        discrimination_table(np.array([0, 2, 0, 1]), s)
    with pytest.raises(AuditInputError, match=r"non-finite score nan at row 2"):
        discrimination_table(y, np.array([0.1, 0.9, np.nan, 0.7]))
    with pytest.raises(AuditInputError, match=r"p_adjust: received 'bonferroni'.*'holm', 'bh'"):
        discrimination_table(y, s, p_adjust="bonferroni")
    with pytest.raises(AuditInputError, match=r"reference_group: received 'vendor'"):
        discrimination_table(y, s, groups=["a", "a", "b", "b"], reference_group="vendor")
    with pytest.raises(AuditInputError, match=r"groups: received an array of shape \(3,\)"):
        discrimination_table(y, s, groups=["a", "b", "c"])
    with pytest.raises(AuditInputError, match=r"thresholds: received 3 values"):
        discrimination_table(y, s, thresholds=[0.1, 0.2, 0.3])
    with pytest.raises(AuditInputError, match=r"n_boot: received -1"):
        discrimination_table(y, s, n_boot=-1)


def _load_coverage_sim():
    path = Path(__file__).resolve().parents[1] / "bench" / "coverage_sim.py"
    spec = importlib.util.spec_from_file_location("coverage_sim", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_clustered_bootstrap_coverage_small() -> None:
    sim = _load_coverage_sim()
    covered, n_sims = sim.run_coverage(n_sims=200, n_patients=200, n_boot=300, seed=2024)
    rate = covered / n_sims
    mc_se = np.sqrt(0.95 * 0.05 / n_sims)
    # 200 datasets: allow 3 Monte-Carlo standard errors around the nominal 95%
    assert abs(rate - 0.95) < 3 * mc_se + 0.01, rate
