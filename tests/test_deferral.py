"""The deferral core: the certified rule holds in simulation and equals a brute-force reference;
risk-coverage areas; the review score beats the max-softmax baseline when it should."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from clinaudit.audit import deferral
from clinaudit.audit.deferral import (
    augrc,
    aurc,
    certify_deferral,
    deferral_by_group,
    fit_deferral_score,
    risk_coverage,
)
from clinaudit.audit.types import AuditInputError

ALPHA_E, ALPHA_M, DELTA = 0.10, 0.05, 0.05


def _draw(rng: np.random.Generator, n: int):
    """Score ~ U(0, 1); P(error | s) = 0.3 s; malignant w.p. 0.2, missed w.p. 0.3 s.

    True risks of ``accept if s < t``: error rate 0.15 t; malignant miss rate 0.15 t^2."""
    s = rng.random(n)
    mal = (rng.random(n) < 0.2).astype(int)
    miss = mal * (rng.random(n) < 0.3 * s)
    err = np.maximum((rng.random(n) < 0.3 * s).astype(int), miss)
    return err, mal, miss, s


def test_the_joint_guarantee_holds_over_200_seeds() -> None:
    violations = 0
    coverages = []
    for seed in range(200):
        err, mal, miss, s = _draw(np.random.default_rng(seed), 2000)
        rule = certify_deferral(
            err, mal, miss, s, alpha_error=ALPHA_E, alpha_malignant=ALPHA_M, delta=DELTA
        )
        t = rule.threshold if rule.threshold is not None else 0.0
        t = min(t, 1.0)
        # The error of accepted outputs mixes the two error sources exactly as _draw does.
        p_err = 1 - (1 - 0.3 * np.linspace(0, t, 2001)) * (1 - 0.2 * 0.3 * np.linspace(0, t, 2001))
        true_error = float(np.mean(p_err)) if t > 0 else 0.0
        true_miss = 0.15 * t**2
        violations += true_error > ALPHA_E or true_miss > ALPHA_M
        coverages.append(rule.coverage)
    # At most delta of runs violate, up to binomial noise of 200 runs (P(X > 17) < 1 % at 5 %).
    assert violations <= binom.ppf(0.99, 200, DELTA), violations
    # Not trivially conservative: the malignant risk binds near t = 0.577.
    assert 0.35 < float(np.mean(coverages)) < 0.58


def _brute_force(err, mal, miss, s, grid):
    """Every threshold in a plain loop: accept s < t, exact binomial p-values, fixed sequence."""
    n_mal = int(mal.sum())
    n_min = max(
        int(np.ceil(np.log(DELTA) / np.log(1 - ALPHA_E) - 1e-12)), int(np.ceil(0.1 * len(s)))
    )
    best = None
    for t in grid:
        acc = s < t
        if acc.sum() < n_min:
            continue
        p1 = binom.cdf(err[acc].sum(), acc.sum(), ALPHA_E)
        p2 = binom.cdf(miss[acc].sum(), n_mal, ALPHA_M) if n_mal else 1.0
        if max(p1, p2) > DELTA:
            break
        best = t
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_threshold_equals_a_brute_force_reference(seed: int) -> None:
    err, mal, miss, s = _draw(np.random.default_rng(100 + seed), 1500)
    s = np.round(s, 2)  # ties
    grid = np.concatenate([[0.0], np.unique(s[s > 0]), [s.max() + 1.0]])
    rule = certify_deferral(
        err, mal, miss, s, alpha_error=ALPHA_E, alpha_malignant=ALPHA_M, delta=DELTA, grid=grid
    )
    assert rule.threshold == _brute_force(err, mal, miss, s, grid)
    acc = s < rule.threshold
    assert rule.n_accepted == acc.sum() and rule.errors_accepted == err[acc].sum()
    assert rule.malignant_missed == miss[acc].sum() and rule.error_rate_upper <= ALPHA_E


def test_too_few_cases_certify_nothing_and_bad_inputs_are_named() -> None:
    err, mal, miss, s = _draw(np.random.default_rng(0), 20)
    rule = certify_deferral(
        err, mal, miss, s, alpha_error=ALPHA_E, alpha_malignant=ALPHA_M, delta=DELTA
    )
    assert not rule.certified and rule.n_accepted == 0 and rule.min_accepted == 29
    big = certify_deferral(
        *_draw(np.random.default_rng(0), 1000), alpha_error=ALPHA_E, alpha_malignant=ALPHA_M,
        delta=DELTA, min_coverage=0.2,
    )  # fmt: skip
    assert big.min_accepted == 200 and big.n_accepted >= 200
    with pytest.raises(AuditInputError, match="subset of malignant"):
        certify_deferral([1], [0], [1], [0.5], alpha_error=0.1, alpha_malignant=0.1, delta=0.1)
    with pytest.raises(AuditInputError, match="0 or 1"):
        certify_deferral([2], [0], [0], [0.5], alpha_error=0.1, alpha_malignant=0.1, delta=0.1)


def test_risk_coverage_areas_equal_their_definitions() -> None:
    rng = np.random.default_rng(3)
    err = (rng.random(300) < 0.3).astype(int)
    s = rng.random(300)
    order = np.argsort(s)
    cum = np.cumsum(err[order])
    k = np.arange(1, 301)
    assert aurc(err, s) == pytest.approx(np.mean(cum / k), abs=1e-12)
    assert augrc(err, s) == pytest.approx(np.mean(cum / 300), abs=1e-12)
    rc = risk_coverage(err, s)
    assert rc["coverage"].iloc[-1] == 1.0 and rc["selective_risk"].iloc[-1] == err.mean()
    # One tied score: every coverage has the overall error rate (errors spread evenly).
    tied = risk_coverage(err, np.zeros(300))
    assert np.allclose(tied["selective_risk"], err.mean())
    # A score that ranks every error last beats a random one.
    assert aurc(err, err + 0.01 * s) < aurc(err, s)


def test_the_review_score_beats_max_softmax_when_a_missing_note_matters() -> None:
    rng = np.random.default_rng(4)
    n = 6000
    top = rng.uniform(0.4, 1.0, n)
    missing = (rng.random(n) < 0.3).astype(float)
    p_wrong = np.clip((1 - top) * (0.5 + 1.2 * missing), 0, 1)
    err = (rng.random(n) < p_wrong).astype(int)
    frame = pd.DataFrame({"top_probability": top, "note_missing": missing})
    fit, test = slice(0, 3000), slice(3000, None)
    scorer = fit_deferral_score(
        frame.iloc[fit], err[fit], features=("top_probability", "note_missing")
    )
    score = scorer.predict(frame.iloc[test])
    assert abs(score.mean() - err[test].mean()) < 0.02  # calibrated in the large
    assert aurc(err[test], score) < aurc(err[test], 1 - top[test])
    with pytest.raises(AuditInputError, match="missing"):
        scorer.predict(frame[["top_probability"]])


def test_deferral_by_group_counts_and_intervals() -> None:
    out = deferral_by_group([1, 0, 1, 1], {"tone": ["V-VI", "I-II", "V-VI", "I-II"]})
    row = out.set_index("group").loc["V-VI"]
    assert (row["n"], row["deferred"], row["rate"]) == (2, 2, 1.0) and row["ci_high"] == 1.0
    result = doctest.testmod(deferral)
    assert result.attempted > 0 and result.failed == 0
