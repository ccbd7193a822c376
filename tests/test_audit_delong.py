"""DeLong variance/CI/test against the O(m n) placement-value definition; Holm and BH by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from clinaudit.audit.delong import (
    delong_auroc,
    delong_paired_test,
    delong_unpaired_test,
    placement_values,
)
from clinaudit.audit.discrimination import discrimination_table
from clinaudit.audit.multiplicity import adjust_pvalues, benjamini_hochberg, holm
from clinaudit.audit.types import AuditInputError


def _slow_delong(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """Textbook DeLong: psi over every (positive, negative) pair."""
    x = [v for v, lab in zip(s, y, strict=True) if lab == 1]
    z = [v for v, lab in zip(s, y, strict=True) if lab == 0]
    m, n = len(x), len(z)

    def psi(a: float, b: float) -> float:
        return 1.0 if a > b else (0.5 if a == b else 0.0)

    v10 = [sum(psi(xi, zj) for zj in z) / n for xi in x]
    v01 = [sum(psi(xi, zj) for xi in x) / m for zj in z]
    auc = sum(v10) / m
    s10 = sum((v - auc) ** 2 for v in v10) / (m - 1)
    s01 = sum((v - auc) ** 2 for v in v01) / (n - 1)
    return auc, s10 / m + s01 / n


@pytest.mark.parametrize("ties", [False, True])
def test_delong_variance_and_ci_equal_slow_definition(ties: bool) -> None:
    rng = np.random.default_rng(3 if ties else 4)
    for _ in range(15):
        n = int(rng.integers(6, 80))
        y = rng.integers(0, 2, n)
        y[:2], y[2:4] = 1, 0
        s = rng.integers(0, 3, n).astype(float) if ties else rng.normal(size=n) + y
        auc, var = _slow_delong(y, s)
        res = delong_auroc(y, s, ci_level=0.9)
        assert abs(res.auroc - auc) < 1e-12
        assert abs(res.auroc - roc_auc_score(y, s)) < 1e-12
        assert abs(res.variance - var) < 1e-12
        z = norm.ppf(0.95)
        assert abs(res.ci_low - max(0.0, auc - z * np.sqrt(var))) < 1e-12
        assert abs(res.ci_high - min(1.0, auc + z * np.sqrt(var))) < 1e-12


def _slow_paired_variance(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong et al. (1988): the (1, -1) contrast of the 2x2 covariance of the two AUROCs."""

    def psi(u: float, v: float) -> float:
        return 1.0 if u > v else (0.5 if u == v else 0.0)

    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)
    v10 = np.array([[sum(psi(s[i], s[j]) for j in neg) / n for i in pos] for s in (a, b)])
    v01 = np.array([[sum(psi(s[i], s[j]) for i in pos) / m for j in neg] for s in (a, b)])
    cov = np.cov(v10, ddof=1) / m + np.cov(v01, ddof=1) / n
    c = np.array([1.0, -1.0])
    return float(v10[0].mean() - v10[1].mean()), float(c @ cov @ c)


@pytest.mark.parametrize("ties", [False, True])
def test_paired_delong_equals_the_covariance_definition(ties: bool) -> None:
    rng = np.random.default_rng(13 if ties else 14)
    for _ in range(10):
        n = int(rng.integers(6, 60))
        y = rng.integers(0, 2, n)
        y[:2], y[2:4] = 1, 0
        if ties:
            a, b = rng.integers(0, 3, n).astype(float), rng.integers(0, 3, n).astype(float)
        else:
            a = rng.normal(size=n) + y
            b = a + rng.normal(size=n)  # correlated, as two models of the same images are
        diff, var = _slow_paired_variance(y, a, b)
        t = delong_paired_test(y, a, b, ci_level=0.9)
        assert abs(t.difference - diff) < 1e-12
        assert abs(t.difference - (roc_auc_score(y, a) - roc_auc_score(y, b))) < 1e-12
        assert abs(t.se**2 - var) < 1e-12
        q = norm.ppf(0.95)
        assert (
            abs(t.ci_low - (diff - q * t.se)) < 1e-12
            and abs(t.p_value - 2 * norm.sf(abs(t.z))) < 1e-12
        )
    same = delong_paired_test(y, a, a)
    assert same.difference == 0.0 and same.se == 0.0 and same.p_value == 1.0


def test_placement_values_small_example() -> None:
    v10, v01 = placement_values(np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.4, 0.4]))
    assert v10.tolist() == [1.0, 0.75] and v01.tolist() == [1.0, 0.75]


def test_unpaired_test_matches_hand_computation_and_table() -> None:
    rng = np.random.default_rng(8)
    y1, y2 = rng.integers(0, 2, 120), rng.integers(0, 2, 150)
    s1, s2 = y1 * 1.2 + rng.normal(size=120), y2 * 0.4 + rng.normal(size=150)
    a, b = delong_auroc(y1, s1), delong_auroc(y2, s2)
    test = delong_unpaired_test(b, a)
    z = (b.auroc - a.auroc) / np.sqrt(a.variance + b.variance)
    assert abs(test.z - z) < 1e-12
    assert abs(test.p_value - 2 * norm.sf(abs(z))) < 1e-12
    table = discrimination_table(
        np.concatenate([y1, y2]),
        np.concatenate([s1, s2]),
        groups=["ref"] * 120 + ["site"] * 150,
        reference_group="ref",
        n_boot=0,
    )
    site = table[table["group"] == "site"].iloc[0]
    assert abs(site["delong_p"] - test.p_value) < 1e-12
    assert abs(site["auroc_se_delong"] - b.se) < 1e-12
    assert abs(site["auroc_diff_vs_reference"] - test.difference) < 1e-12
    # a single comparison: Holm leaves the p-value unchanged
    assert abs(site["delong_p_adj"] - test.p_value) < 1e-12


def test_delong_rejects_too_few_cases() -> None:
    with pytest.raises(AuditInputError, match=r"1 positives and 3 negatives"):
        delong_auroc([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3])
    with pytest.raises(AuditInputError, match=r"labels in \{0, 1\}"):
        delong_auroc([1, 0, 2, 0], [0.9, 0.1, 0.2, 0.3])


def test_holm_and_bh_hand_computed() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04; Holm multipliers 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04;
    # running max
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02], rtol=0, atol=1e-15)
    # BH: m p / rank = 0.02, 0.02, 0.04, 0.04 -> reverse cummin
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02], atol=1e-15)
    with_nan = adjust_pvalues(np.array([0.2, np.nan, 0.01]), method="holm")
    assert np.isnan(with_nan[1]) and with_nan.tolist()[::2] == [0.2, 0.02]
    assert holm(np.array([0.6, 0.7])).tolist() == [1.0, 1.0]
    assert adjust_pvalues(np.array([0.3]), method="none").tolist() == [0.3]
    with pytest.raises(AuditInputError, match=r"method: received 'fdr'"):
        adjust_pvalues(p, method="fdr")
    with pytest.raises(AuditInputError, match=r"1.5 at position 0"):
        holm(np.array([1.5]))
