"""Calibration core: ECE/MCE vs a plain loop, recalibration vs sklearn, bootstrap, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from clinaudit.audit.bootstrap import bootstrap_counts, derive_rng
from clinaudit.audit.calibration import (
    audit_calibration,
    bin_edges,
    calibration_table,
    expected_calibration_error,
    logistic_recalibration,
    wilson_interval,
)
from clinaudit.audit.serialize import metrics_to_json
from clinaudit.audit.types import STATUS_INSUFFICIENT, AuditInputError


def _loop_ece(y, p, edges):
    """Plain Python ECE and MCE with bins [e_i, e_{i+1}), the last one closed."""
    k = len(edges) - 1
    members = [[] for _ in range(k)]
    for yi, pi in zip(y, p, strict=True):
        for i in range(k):
            last = i == k - 1
            if edges[i] <= pi < edges[i + 1] or (last and pi == edges[i + 1]):
                members[i].append((yi, pi))
                break
    ece, mce = 0.0, 0.0
    for m in members:
        if m:
            gap = abs(sum(a for a, _ in m) / len(m) - sum(b for _, b in m) / len(m))
            ece += len(m) / len(y) * gap
            mce = max(mce, gap)
    return ece, mce


def _data(seed=0, n=300):
    rng = np.random.default_rng(seed)
    p = np.clip(rng.beta(2, 5, n), 0, 1)
    p[:20] = np.round(p[:20], 1)  # values exactly on bin edges
    y = (rng.random(n) < np.clip(p * 1.3, 0, 1)).astype(float)
    return y, p


@pytest.mark.parametrize("binning", ["width", "mass"])
def test_ece_and_mce_equal_plain_loop(binning: str) -> None:
    for seed in range(5):
        y, p = _data(seed)
        for n_bins in (1, 5, 10, 15):
            edges = bin_edges(p, n_bins=n_bins, binning=binning)
            ece, mce = _loop_ece(y, p, edges)
            assert (
                abs(expected_calibration_error(y, p, n_bins=n_bins, binning=binning) - ece) < 1e-12
            )
            row = calibration_table(y, p, n_bins=n_bins, n_boot=0).iloc[0]
            assert abs(row[f"ece_{binning}"] - ece) < 1e-12
            assert abs(row[f"mce_{binning}"] - mce) < 1e-12
            assert abs(row["brier"] - np.mean((p - y) ** 2)) < 1e-12


def test_equal_mass_with_heavy_ties_keeps_distinct_edges() -> None:
    p = np.array([0.2] * 50 + [0.7] * 10)
    y = np.array([0, 1] * 30, dtype=float)
    edges = bin_edges(p, n_bins=10, binning="mass")
    assert edges.tolist() == [0.2, 0.7]
    assert abs(expected_calibration_error(y, p, binning="mass") - _loop_ece(y, p, edges)[0]) < 1e-12


def test_recalibration_matches_sklearn_unpenalised_logistic_regression() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(0.02, 0.98, 400)
    logit = np.log(p / (1 - p))
    y = (rng.random(400) < 1 / (1 + np.exp(-(0.4 + 0.6 * logit)))).astype(float)
    fit = logistic_recalibration(y, p)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(logit[:, None], y)
    assert fit.converged
    assert abs(fit.intercept - lr.intercept_[0]) < 1e-6
    assert abs(fit.slope - lr.coef_[0, 0]) < 1e-6
    # calibration-in-the-large: the score equation sum(y - expit(a + logit)) = 0 holds at a
    mu = 1 / (1 + np.exp(-(fit.citl_intercept + logit)))
    assert abs(np.sum(y - mu)) < 1e-8
    perfect = logistic_recalibration(
        np.array([0, 0, 0, 1, 1, 1.0]), np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    )
    assert not perfect.converged and np.isnan(perfect.slope)


def test_bootstrap_replicates_equal_metrics_on_materialised_resamples() -> None:
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(120), rng.choice([1, 2, 3], 120))
    n = patients.size
    p = rng.uniform(size=n)
    y = (rng.random(n) < p).astype(float)
    res = audit_calibration(y, p, clusters=patients, n_boot=20, seed=4, n_bins=5)
    reps = res.replicates[("all", "target_0")]
    codes, _ = pd.factorize(patients, sort=False)
    counts = bootstrap_counts(int(codes.max()) + 1, 20, derive_rng(4, "all"))
    edges_mass = bin_edges(p, n_bins=5, binning="mass")  # fixed at the observed sample
    for b in (0, 7, 19):
        idx = np.repeat(np.arange(n), counts[b, codes])
        assert (
            abs(reps["ece_width"][b] - _loop_ece(y[idx], p[idx], bin_edges(p, n_bins=5))[0]) < 1e-12
        )
        assert abs(reps["ece_mass"][b] - _loop_ece(y[idx], p[idx], edges_mass)[0]) < 1e-12
        assert abs(reps["brier"][b] - np.mean((p[idx] - y[idx]) ** 2)) < 1e-12
    row = res.table.iloc[0]
    assert row["ece_width_ci_low"] <= row["ece_width_ci_high"]
    assert row["brier_ci_low"] <= row["brier"] <= row["brier_ci_high"]


def test_reliability_data_and_wilson_interval() -> None:
    y, p = _data(1)
    res = audit_calibration(y, p, groups=np.where(np.arange(300) < 150, "a", "b"), n_boot=10)
    rel = res.reliability
    assert set(rel["binning"]) == {"width", "mass"}
    for _key, part in rel.groupby(["group", "binning"]):
        assert part["count"].sum() == 150
        assert (part["lower"].to_numpy()[1:] == part["upper"].to_numpy()[:-1]).all()
    lo, hi = wilson_interval(np.array([0.0, 3.0, 10.0]), np.array([10.0, 10.0, 10.0]))
    z = 1.959963984540054
    phat, nn = 0.3, 10.0
    centre = (phat + z * z / (2 * nn)) / (1 + z * z / nn)
    half = z * np.sqrt(phat * (1 - phat) / nn + z * z / (4 * nn * nn)) / (1 + z * z / nn)
    assert abs(lo[1] - (centre - half)) < 1e-12 and abs(hi[1] - (centre + half)) < 1e-12
    assert lo[0] == 0.0 and abs(hi[2] - 1.0) < 1e-12
    # the bounds contain k / n exactly: at k = n rounding used to give hi = 1 - 1e-16 < 1,
    # which a figure's error bar (phat - lo, hi - phat) then refused as negative
    n = np.arange(1.0, 2000.0)
    for k in (n, np.zeros_like(n), np.floor(n / 3)):
        lo, hi = wilson_interval(k, n)
        assert (lo <= k / n).all() and (hi >= k / n).all()


def test_insufficient_cells_determinism_and_errors() -> None:
    y, p = _data(3, n=60)
    table = calibration_table(np.zeros(60), p, n_boot=5)
    assert table.iloc[0]["status"] == STATUS_INSUFFICIENT and np.isnan(table.iloc[0]["ece_width"])
    a = metrics_to_json(calibration_table(y, p, n_boot=50, seed=1, min_pos=2, min_neg=2))
    b = metrics_to_json(calibration_table(y, p, n_boot=50, seed=1, min_pos=2, min_neg=2))
    assert a == b
    with pytest.raises(AuditInputError, match=r"y_prob: received 1\.5 at row 0.*probabilities"):
        calibration_table(y, np.r_[1.5, p[1:]])
    with pytest.raises(AuditInputError, match=r"binning: received 'quantile'"):
        expected_calibration_error(y, p, binning="quantile")
    with pytest.raises(AuditInputError, match=r"n_bins: received 0"):
        calibration_table(y, p, n_bins=0)
