"""Drift core: KS/chi-square/Wasserstein equal scipy, PSI and MMD against slow loops, errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

from clinaudit.audit.drift import (
    DriftConfig,
    drift_table,
    mmd_permutation_test,
    permutation_indicators,
    population_stability_index,
)
from clinaudit.audit.serialize import metrics_to_json
from clinaudit.audit.types import AuditInputError


def _frames(seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame(
        {
            "brightness": rng.normal(0.5, 0.1, 400),
            "noise": np.round(rng.gamma(2.0, 1.0, 400), 1),  # ties
            "manufacturer": rng.choice(["GE", "Siemens", "Philips"], 400),
        }
    )
    sites = []
    for i, shift in enumerate((0.0, 0.05, 0.0)):
        n = 150
        site = pd.DataFrame(
            {
                "brightness": rng.normal(0.5 + shift, 0.1, n),
                "noise": np.round(rng.gamma(2.0, 1.0 + 0.5 * (i == 2), n), 1),
                "manufacturer": rng.choice(["GE", "Siemens", "Agfa"] if i == 1 else ["GE"], n),
                "site": f"site_{i}",
            }
        )
        sites.append(site)
    data = pd.concat(sites, ignore_index=True)
    data.loc[3, "brightness"] = np.nan
    return data, ref


def _slow_psi(ref, smp, n_bins, eps):
    inner = sorted(set(np.quantile(ref, [i / n_bins for i in range(1, n_bins)]).tolist()))

    split_below = min(ref) == inner[0]  # point mass at the minimum: own bin below it

    def counts(values):
        c = [0] * (len(inner) + 1 + split_below)
        for v in values:
            if split_below and v < min(ref):
                c[-1] += 1
            else:
                c[sum(1 for e in inner if v > e)] += 1
        return c

    e, a = counts(ref), counts(smp)
    total = 0.0
    for ei, ai in zip(e, a, strict=True):
        pe, pa = (ei / len(ref)) or eps, (ai / len(smp)) or eps
        total += (pa - pe) * math.log(pa / pe)
    return total


def test_numeric_rows_equal_scipy_and_slow_psi() -> None:
    data, ref = _frames()
    table = drift_table(
        data, ref, groups="site", numeric=["brightness", "noise"], config=DriftConfig(n_perm=50)
    )
    for _, row in table[table["kind"] == "numeric"].iterrows():
        site = data.loc[data["site"] == row["group"], row["feature"]].dropna().to_numpy()
        r = ref[row["feature"]].to_numpy()
        ks = ks_2samp(site, r, method="asymp")
        assert abs(row["statistic"] - ks.statistic) < 1e-12
        assert abs(row["p_value"] - ks.pvalue) < 1e-12
        assert abs(row["wasserstein_norm"] - wasserstein_distance(site, r) / r.std(ddof=1)) < 1e-12
        smd = (site.mean() - r.mean()) / np.sqrt((site.var(ddof=1) + r.var(ddof=1)) / 2)
        assert abs(row["smd"] - smd) < 1e-12
        assert abs(row["psi"] - _slow_psi(r, site, 10, 1e-4)) < 1e-12
    missing = table[(table["group"] == "site_0") & (table["feature"] == "brightness")].iloc[0]
    assert missing["n_missing"] == 1 and missing["n"] == 149


def test_categorical_rows_equal_scipy_chi2_and_psi() -> None:
    data, ref = _frames(1)
    table = drift_table(
        data, ref, groups="site", categorical=["manufacturer"], config=DriftConfig(n_perm=10)
    )
    assert (table["kind"] == "categorical").all()  # no numeric feature: no MMD row
    for _, row in table.iterrows():
        site = data.loc[data["site"] == row["group"], "manufacturer"]
        cats = sorted(set(site) | set(ref["manufacturer"]))
        obs = np.array(
            [[np.sum(site == c) for c in cats], [np.sum(ref["manufacturer"] == c) for c in cats]]
        )
        res = chi2_contingency(obs, correction=False)
        assert abs(row["statistic"] - res.statistic) < 1e-12
        assert abs(row["p_value"] - res.pvalue) < 1e-12
        pe = np.where(obs[1] > 0, obs[1] / obs[1].sum(), 1e-4)
        pa = np.where(obs[0] > 0, obs[0] / obs[0].sum(), 1e-4)
        assert abs(row["psi"] - np.sum((pa - pe) * np.log(pa / pe))) < 1e-12
    assert table.set_index("group").loc["site_1", "psi_level"] == "major"


def _slow_mmd2(x, y, bandwidth):
    def k(a, b):
        return math.exp(-float(np.sum((a - b) ** 2)) / (2 * bandwidth**2))

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_mmd_statistic_and_permutation_pvalue_equal_slow_loop() -> None:
    g = np.random.default_rng(3)
    x, y = g.normal(0.3, 1, (12, 2)), g.normal(0, 1, (15, 2))
    res = mmd_permutation_test(x, y, n_perm=60, rng=np.random.default_rng(9))
    pooled = np.vstack([x, y])
    dists = [np.linalg.norm(pooled[i] - pooled[j]) for i in range(27) for j in range(i + 1, 27)]
    bandwidth = float(np.median(dists))
    assert abs(res.bandwidth - bandwidth) < 1e-12
    observed = _slow_mmd2(x, y, bandwidth)
    assert abs(res.mmd2 - observed) < 1e-12
    perms = permutation_indicators(12, 15, 60, np.random.default_rng(9))
    exceed = 0
    for row in perms:
        stat = _slow_mmd2(pooled[row == 1], pooled[row == 0], bandwidth)
        exceed += stat >= observed - 1e-12
    assert res.p_value == (1 + exceed) / 61


def test_table_flags_shifted_site_and_is_deterministic() -> None:
    data, ref = _frames(2)
    cfg = DriftConfig(n_perm=200, seed=3, mmd_max_rows=100)
    table = drift_table(data, ref, groups="site", config=cfg)
    assert table.groupby("group").size().tolist() == [4, 4, 4]  # 3 features + MMD
    mmd = table[table["kind"] == "multivariate"].set_index("group")
    assert mmd.loc["site_2", "p_adj"] < 0.05 and bool(mmd.loc["site_2", "drifted"])
    b = table.set_index(["group", "feature"])
    assert b.loc[("site_1", "brightness"), "significant"]
    assert not b.loc[("site_0", "brightness"), "drifted"]
    assert (table["p_adj"] >= table["p_value"]).all()
    assert metrics_to_json(table) == metrics_to_json(
        drift_table(data, ref, groups="site", config=cfg)
    )
    assert population_stability_index(np.arange(50.0), np.arange(50.0)) == 0.0


def test_bad_inputs_raise() -> None:
    data, ref = _frames()
    with pytest.raises(AuditInputError, match=r"reference: received columns .*'noise'"):
        drift_table(data, ref.drop(columns="noise"), groups="site", numeric=["noise"])
    with pytest.raises(AuditInputError, match=r"column 'manufacturer' of dtype object"):
        drift_table(data, ref, groups="site", numeric=["manufacturer"])
    with pytest.raises(AuditInputError, match=r"groups: received 'hospital'"):
        drift_table(data, ref, groups="hospital")
    with pytest.raises(AuditInputError, match=r"p_adjust: received 'sidak'"):
        DriftConfig(p_adjust="sidak")
    with pytest.raises(AuditInputError, match=r"0 < psi_moderate < psi_major"):
        DriftConfig(psi_moderate=0.3, psi_major=0.2)
    with pytest.raises(AuditInputError, match=r"2-D arrays with the same columns"):
        mmd_permutation_test(np.ones((5, 2)), np.ones((5, 3)), rng=np.random.default_rng(0))


def test_psi_sees_a_shift_out_of_a_constant_reference() -> None:
    """A site-constant feature (pixel spacing) that moves below the reference's value is a major
    shift, not PSI 0 (the edge bin must not absorb it)."""
    ref = np.full(500, 1.28)
    assert population_stability_index(ref, np.full(300, 1.12)) > 0.25
    assert population_stability_index(ref, np.full(300, 1.41)) > 0.25
    assert population_stability_index(ref, np.full(300, 1.28)) == 0.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=2000)
    assert abs(population_stability_index(x, x[:1000]) - _slow_psi(x, x[:1000], 10, 1e-4)) < 1e-12
    tied = np.round(rng.gamma(1.0, 1.0, 500), 0)  # point mass at the minimum (0)
    low = tied - 1.0
    assert abs(population_stability_index(tied, low) - _slow_psi(tied, low, 10, 1e-4)) < 1e-12
