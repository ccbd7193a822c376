"""Selective prediction core (audit/selective.py, audit/selective_groups.py).

Each procedure is checked against a slow, obviously-correct reference and, where a maintained
library implements it, against that library: scikit-learn's temperature scaling and MAPIE's
Learn-then-Test binary controller (>= 1.4.1). The guarantee itself is checked by simulation:
over 200 seeds the certified rule's true miss rate exceeds alpha in at most delta of runs.
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar
from scipy.stats import beta as beta_dist
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score

from clinaudit.audit import selective, selective_groups
from clinaudit.audit.selective import (
    assign_buckets,
    binomial_p_value,
    certify_clear_threshold,
    clopper_pearson,
    fit_temperature,
    flag_threshold,
)
from clinaudit.audit.selective_groups import (
    bucket_outcomes,
    labels_needed,
    recertify_subgroups,
    row_thresholds,
)
from clinaudit.audit.types import AuditInputError


def _scores(seed: int, n: int = 3000, prevalence: float = 0.4, pos=(5.0, 2.0), neg=(2.0, 5.0)):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    p = np.where(y == 1, rng.beta(*pos, n), rng.beta(*neg, n))
    return y, p


def _logits(seed: int, n: int = 4000, scale: float = 3.0):
    """Over-confident logits: the true log-odds times ``scale``."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-true_logit))).astype(int)
    return y, true_logit * scale


# --- temperature scaling --------------------------------------------------------------------


def test_temperature_is_positive_and_keeps_auroc() -> None:
    y, z = _logits(0)
    fit = fit_temperature(y, z)
    assert fit.temperature > 0
    assert fit.temperature == pytest.approx(3.0, rel=0.1)  # undoes the over-confidence
    assert fit.nll_after < fit.nll_before
    assert abs(roc_auc_score(y, fit.apply(z)) - roc_auc_score(y, z)) < 1e-9


def test_temperature_equals_a_direct_likelihood_minimisation() -> None:
    y, z = _logits(1)

    def nll(log_t: float) -> float:
        zt = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, zt) - y * zt))

    ref = math.exp(minimize_scalar(nll, bounds=(-5, 5), method="bounded").x)
    assert fit_temperature(y, z).temperature == pytest.approx(ref, rel=1e-5)


class _Logit(ClassifierMixin, BaseEstimator):
    """A fitted binary classifier whose decision function is the first column of X."""

    def fit(self, X, y):
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, X):
        return np.asarray(X, dtype=float)[:, 0]

    def predict(self, X):
        return (self.decision_function(X) > 0).astype(int)


def test_temperature_equals_scikit_learns_independent_fit() -> None:
    y, z = _logits(2)
    cal = CalibratedClassifierCV(FrozenEstimator(_Logit().fit(z[:, None], y)), method="temperature")
    cal.fit(z[:, None], y)
    assert len(cal.calibrated_classifiers_) == 1  # a frozen estimator: one fit on every row
    # scikit-learn turns a binary decision d into two-class logits (-d, d): sigmoid(2 beta d).
    beta = float(cal.calibrated_classifiers_[0].calibrators[0].beta_)
    fit = fit_temperature(y, z)
    assert fit.temperature == pytest.approx(1.0 / (2.0 * beta), abs=1e-3)
    np.testing.assert_allclose(fit.apply(z), cal.predict_proba(z[:, None])[:, 1], atol=1e-4)


def test_a_negative_temperature_is_refused_not_fitted() -> None:
    y, z = _logits(3)
    with pytest.raises(AuditInputError, match="logits.*inverse temperature -"):
        fit_temperature(y, -z)
    with pytest.raises(AuditInputError, match="only class 1"):
        fit_temperature(np.ones(5), np.arange(5.0))
    with pytest.raises(AuditInputError, match="y_true.*labels in"):
        fit_temperature([0, 2, 1], [0.0, 1.0, 2.0])


# --- the auto-clear certificate -------------------------------------------------------------


def _slow_certify(y, p, alpha, delta, grid) -> float | None:
    """Fixed-sequence LTT written out: exact binomial tail by summation, one threshold at a time."""
    positives = [s for s, t in zip(p, y, strict=True) if t == 1]
    n = len(positives)
    best = None
    for lam in grid:
        k = sum(1 for s in positives if s < lam)
        p_value = sum(math.comb(n, i) * alpha**i * (1 - alpha) ** (n - i) for i in range(k + 1))
        if p_value > delta:
            break
        best = float(lam)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_certificate_equals_the_slow_reference(seed: int) -> None:
    y, p = _scores(seed, n=1200)
    grid = np.linspace(0.0, 0.6, 121)
    cert = certify_clear_threshold(y, p, alpha=0.05, delta=0.1, grid=grid)
    assert cert.threshold == _slow_certify(y, p, 0.05, 0.1, grid)
    assert cert.certified
    assert cert.misses == int(((y == 1) & (p < cert.threshold)).sum())
    assert cert.miss_rate_upper < 0.05
    assert cert.normals_cleared == pytest.approx(
        ((y == 0) & (p < cert.threshold)).mean() / 0.6, 0.1
    )


def test_certificate_equals_mapie_on_a_fixed_seed() -> None:
    from mapie.risk_control import BinaryClassificationController

    y, p = _scores(7, n=2500)
    grid = np.linspace(0.0, 0.99, 100)
    ours = certify_clear_threshold(y, p, alpha=0.02, delta=0.05, grid=grid)
    controller = BinaryClassificationController(
        predict_function=lambda x: np.column_stack([1.0 - x, x]),
        risk="recall",
        target_level=0.98,
        confidence_level=0.95,
        best_predict_param_choice="predicted_positive_fraction",
        list_predict_params=grid,
        fwer_method="fixed_sequence",
    ).calibrate(p, y)
    assert ours.certified
    assert controller.best_predict_param == pytest.approx(ours.threshold, abs=1e-12)
    assert max(controller.valid_predict_params) == pytest.approx(ours.threshold, abs=1e-12)


def test_no_certifiable_threshold_is_a_finding() -> None:
    y, p = _scores(4, n=400, prevalence=0.5)  # ~200 abnormal: fewer than 299 can never certify 1 %
    cert = certify_clear_threshold(y, p, alpha=0.01, delta=0.05)
    assert not cert.certified and cert.threshold is None
    assert cert.min_abnormal == 299 and cert.n_abnormal < 299
    assert cert.n_tested == 1
    assert (assign_buckets(p, clear_below=cert.threshold, flag_at_or_above=None) != "clear").all()


def test_the_guarantee_holds_over_200_seeds() -> None:
    """The certified rule's *true* miss rate (known score law) exceeds alpha in <= delta of runs."""
    alpha, delta, pos_law = 0.05, 0.1, (4.0, 2.0)
    exceed, certified = 0, 0
    for seed in range(200):
        y, p = _scores(1000 + seed, n=1500, pos=pos_law)
        cert = certify_clear_threshold(y, p, alpha=alpha, delta=delta)
        if cert.certified:
            certified += 1
            exceed += beta_dist.cdf(cert.threshold, *pos_law) > alpha
    assert certified == 200  # ~600 abnormal: certifiable every time, so the check has teeth
    assert exceed / 200 <= delta


def test_bad_levels_and_grids_are_named() -> None:
    y, p = _scores(0, n=200)
    with pytest.raises(AuditInputError, match="alpha.*in \\(0, 1\\)"):
        certify_clear_threshold(y, p, alpha=1.0, delta=0.05)
    with pytest.raises(AuditInputError, match="grid.*strictly increasing"):
        certify_clear_threshold(y, p, alpha=0.05, delta=0.05, grid=[0.2, 0.1])
    with pytest.raises(AuditInputError, match="p_abnormal.*shape"):
        certify_clear_threshold(y, p[:-1], alpha=0.05, delta=0.05)


# --- the flag rule, buckets ------------------------------------------------------------------


def _slow_flag(y, p, ppv, delta, grid, min_flagged) -> float | None:
    best = None
    for lam in sorted(grid, reverse=True):
        flagged = [t for s, t in zip(p, y, strict=True) if s >= lam]
        n = len(flagged)
        if n < min_flagged:
            continue
        k = n - sum(flagged)
        q = 1 - ppv
        p_value = sum(math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k + 1))
        if p_value > delta:
            break
        best = float(lam)
    return best


def test_flag_threshold_equals_the_slow_reference() -> None:
    y, p = _scores(5, n=800)
    grid = np.linspace(0.0, 0.99, 100)
    rule = flag_threshold(y, p, ppv=0.85, delta=0.05, grid=grid, min_flagged=20)
    assert rule.threshold == _slow_flag(y, p, 0.85, 0.05, grid, 20)
    flagged = p >= rule.threshold
    assert rule.n_flagged == flagged.sum() and rule.n_false == (flagged & (y == 0)).sum()
    assert rule.ppv_lower >= 0.85


def test_out_of_scope_inputs_are_never_cleared_or_flagged() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(5000)
    scope = rng.random(5000) < 0.7
    for clear, flag in [(0.3, 0.6), (1.0, None), (rng.random(5000), 0.0)]:
        b = assign_buckets(p, clear_below=clear, flag_at_or_above=flag, in_scope=scope)
        assert (b[~scope] == "uncertain").all()
        assert set(b[scope]) <= {"clear", "uncertain", "flag"}
    b = assign_buckets(p, clear_below=0.5, flag_at_or_above=0.4)  # overlap: flag wins
    assert (b[p >= 0.4] == "flag").all() and (b[p < 0.4] == "clear").all()


# --- subgroups, held-out outcomes, labelling arithmetic --------------------------------------


def test_a_failing_subgroup_gets_wider_abstention() -> None:
    y, p = _scores(6, n=8000)
    rng = np.random.default_rng(6)
    view = np.where(rng.random(y.size) < 0.25, "AP", "PA")
    # In AP films the model misses more: its abnormal scores are shrunk towards 0.
    p = np.where((view == "AP") & (y == 1), p * 0.5, p)
    cert = certify_clear_threshold(y, p, alpha=0.05, delta=0.05)
    table = recertify_subgroups(
        y, p, {"view": view}, threshold=cert.threshold, alpha=0.05, delta=0.05
    )
    rows = table.set_index("group")
    assert rows.loc["PA", "action"] == "keep" and rows.loc["PA", "threshold"] == cert.threshold
    assert rows.loc["AP", "action"] in {"widen", "no auto-clear"}
    assert not rows.loc["AP", "threshold"] >= cert.threshold  # lower, or NaN
    assert (table["delta_tested"] == 0.025).all()  # Bonferroni over the two groups
    per_row = row_thresholds(table, {"view": view}, threshold=cert.threshold)
    b = assign_buckets(p, clear_below=per_row, flag_at_or_above=None)
    ap_pos = (view == "AP") & (y == 1)
    assert (b[ap_pos] == "clear").mean() <= 0.05 + 1e-9 or rows.loc["AP", "action"] == "widen"


def test_row_thresholds_take_the_lowest_group_and_refuse_unseen_groups() -> None:
    table = pd.DataFrame(
        {
            "attribute": ["sex", "sex", "site", "site"],
            "group": ["F", "M", "a", "b"],
            "threshold": [0.10, 0.05, 0.08, np.nan],
        }
    )
    got = row_thresholds(
        table, {"sex": ["F", "M", "F", "X"], "site": ["a", "a", "b", "a"]}, threshold=0.09
    )
    np.testing.assert_array_equal(got, [0.08, 0.05, np.nan, np.nan])
    assert np.isnan(row_thresholds(table, {"sex": ["F"]}, threshold=None)).all()


def test_bucket_outcomes_count_what_happened() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    b = np.array(["clear", "flag", "uncertain", "clear", "clear", "flag", "uncertain", "flag"])
    out = bucket_outcomes(y, b, ci_level=0.9).set_index("metric")
    assert out.loc["miss_rate", ["k", "n"]].astype(int).tolist() == [1, 4]
    assert out.loc["normals_cleared", "estimate"] == 0.5
    assert out.loc["false_omission", "estimate"] == pytest.approx(1 / 3)
    assert out.loc["flag_ppv", "estimate"] == pytest.approx(2 / 3)
    assert out.loc["share_clear", "k"] == 3
    assert (out["ci_low"] <= out["estimate"]).all() and (out["estimate"] <= out["ci_high"]).all()
    with pytest.raises(AuditInputError, match="buckets.*'defer'"):
        bucket_outcomes([1], ["defer"])


def test_labels_needed_is_the_smallest_sample_that_can_certify() -> None:
    plan = labels_needed(0.01, 0.05, prevalence=0.462, reads_per_day=1080)
    assert plan.abnormal == 299  # 0.99 ** 299 = 0.0495 <= 0.05 < 0.99 ** 298
    assert 0.99**299 <= 0.05 < 0.99**298
    assert plan.studies == math.ceil(299 / 0.462)
    assert plan.radiologist_days == pytest.approx(plan.studies / 1080)
    slow = labels_needed(0.01, 0.05, prevalence=0.5, reads_per_day=1080, expected_miss_rate=0.004)
    ok = [n for n in range(1, 3000) if binomial_p_value(math.floor(n * 0.004), n, 0.01) <= 0.05]
    assert slow.abnormal == ok[0]
    with pytest.raises(AuditInputError, match="expected_miss_rate.*never be certified"):
        labels_needed(0.01, 0.05, prevalence=0.5, reads_per_day=1080, expected_miss_rate=0.01)


def test_clopper_pearson_one_sided_bound_matches_the_zero_miss_rule() -> None:
    _, hi = clopper_pearson(0, 299, ci_level=0.90)
    assert float(hi) == pytest.approx(1 - 0.05 ** (1 / 299))
    lo, hi = clopper_pearson(np.array([0, 3]), np.array([0, 10]))
    assert np.isnan(lo[0]) and np.isnan(hi[0]) and 0 < lo[1] < 0.3 < hi[1]


@pytest.mark.parametrize("module", [selective, selective_groups])
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_perfect_separation_is_named_not_fitted() -> None:
    with pytest.raises(AuditInputError, match="separate the classes perfectly"):
        fit_temperature([0, 0, 1, 1], [-2.0, -1.0, 1.0, 2.0])
