"""Label-free estimates (audit/label_free.py): the expected metrics, the prior shift and its
identification, the gate, and validation by simulation (fast version; bench/bench_label_free.py
runs the full one)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from clinaudit.audit.label_free import (
    ESTIMATE_COLUMNS,
    em_prior,
    estimate_cell,
    expected_auroc,
    expected_rates,
    support_gate,
)
from clinaudit.audit.label_free_sim import simulate_shift
from clinaudit.audit.types import AuditInputError


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    r = rankdata(s)
    n1 = int(y.sum())
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * (y.size - n1)))


def test_expected_auroc_is_exact_on_known_labels_and_the_mean_over_label_draws() -> None:
    rng = np.random.default_rng(0)
    s = np.round(rng.random(300), 2)  # ties on purpose
    y = rng.random(300) < 0.4
    assert expected_auroc(y.astype(float), s) == pytest.approx(_auroc(y, s), abs=1e-12)
    p = 1 / (1 + np.exp(-4 * (s - 0.5)))
    draws = [(_auroc(d, s)) for d in (rng.random((4000, 300)) < p)]
    # The ratio of expectations vs the mean of the ratio: equal to O(1/n).
    assert expected_auroc(p, s) == pytest.approx(np.mean(draws), abs=0.003)


def test_expected_rates_count_expected_confusion_cells() -> None:
    out = expected_rates([0.9, 0.5, 0.2, 0.1], [0.8, 0.6, 0.4, 0.2], threshold=0.5)
    assert out["sensitivity"] == pytest.approx((0.9 + 0.5) / 1.7)
    assert out["specificity"] == pytest.approx((0.8 + 0.9) / 2.3)
    assert out["prevalence"] == pytest.approx(0.425)
    assert out["accuracy"] == pytest.approx((1.4 + 1.7) / 4)


def test_prior_shift_is_applied_only_when_identified() -> None:
    applied = {
        scenario: [
            estimate_cell(d.reference_scores, d.reference_labels, d.target_scores,
                          threshold=d.threshold, n_boot=0, seed=seed)["prior_shift_applied"].iloc[0]
            for seed in range(20)
            for d in [simulate_shift(scenario, seed=seed)]
        ]
        for scenario in ("none", "covariate", "prevalence")
    }  # fmt: skip
    assert np.mean(applied["prevalence"]) >= 0.9, applied
    assert np.mean(applied["none"]) <= 0.1, applied
    # A covariate shift moves the mean probability too, but its scores are no mixture of the
    # reference's classes: re-weighting would count the shift twice.
    assert np.mean(applied["covariate"]) <= 0.2, applied
    same = em_prior(np.full(500, 0.3), 0.3)
    assert not same.applied and same.prior == pytest.approx(0.3)


def test_covariate_shift_estimate_beats_carrying_the_reference_forward() -> None:
    err, base, covered = [], [], []
    for seed in range(30):
        d = simulate_shift("covariate", seed=seed)
        est = estimate_cell(d.reference_scores, d.reference_labels, d.target_scores,
                            threshold=d.threshold, n_boot=150, seed=seed)  # fmt: skip
        r = est[(est["method"] == "cbpe") & (est["metric"] == "auroc")].iloc[0]
        truth = _auroc(d.target_labels, d.target_scores)
        err.append(abs(r["estimate"] - truth))
        base.append(abs(_auroc(d.reference_labels, d.reference_scores) - truth))
        covered.append(r["ci_low"] <= truth <= r["ci_high"])
    assert np.mean(err) <= 0.025 and np.mean(err) <= 0.5 * np.mean(base), (err, base)
    assert 0.75 <= np.mean(covered) <= 1.0, covered


def test_the_gate_withholds_a_new_acquisition_and_says_why() -> None:
    closed = []
    for seed in range(20):
        d = simulate_shift("concept_drift", seed=seed)
        gate = support_gate(d.reference_scores, d.target_scores)
        closed.append(not gate.estimable)
        est = estimate_cell(d.reference_scores, d.reference_labels, d.target_scores,
                            threshold=d.threshold, n_boot=0, gate=gate)  # fmt: skip
        assert list(est.columns) == list(ESTIMATE_COLUMNS)
        if not gate.estimable:
            assert est["estimate"].isna().all() and not est["estimable"].any()
            assert est["reason"].str.startswith("not estimable: inputs outside the reference").all()
    assert np.mean(closed) >= 0.9
    d = simulate_shift("none", seed=0)
    assert support_gate(d.reference_scores, d.target_scores).estimable
    drift = support_gate(d.reference_scores, d.target_scores, drift={"image quality": "PSI 0.4"})
    assert not drift.estimable and "image quality: PSI 0.4" in drift.reason


def test_label_noise_without_input_change_is_invisible_to_any_label_free_estimate() -> None:
    # The documented limit (Garg et al. 2022): the scores cannot show a changed P(y | x).
    errs = []
    for seed in range(10):
        d = simulate_shift("concept", seed=seed)
        assert support_gate(d.reference_scores, d.target_scores).estimable
        est = estimate_cell(d.reference_scores, d.reference_labels, d.target_scores,
                            threshold=d.threshold, n_boot=0)  # fmt: skip
        auroc = est[(est["method"] == "cbpe") & (est["metric"] == "auroc")]["estimate"].iloc[0]
        errs.append(auroc - _auroc(d.target_labels, d.target_scores))
    assert np.mean(errs) > 0.1  # confidently optimistic: only labels (or input drift) tell


def test_bad_input_names_what_to_fix() -> None:
    with pytest.raises(AuditInputError, match="reference_labels"):
        estimate_cell([0.1, 0.2], [0, 2], [0.3], threshold=0.5)
    with pytest.raises(AuditInputError, match="both classes"):
        estimate_cell([0.1, 0.2], [0, 0], [0.3], threshold=0.5)
    with pytest.raises(AuditInputError, match="prior_shift"):
        estimate_cell([0.1, 0.2], [0, 1], [0.3], threshold=0.5, prior_shift="maybe")


def _site(scenarios: dict[str, str], seed: int):
    import pandas as pd

    ref, tgt, thr = {}, {}, {}
    for finding, scenario in scenarios.items():
        d = simulate_shift(scenario, seed=seed)
        ref[f"score_{finding}"], ref[finding] = d.reference_scores, d.reference_labels
        tgt[f"score_{finding}"], tgt[finding] = d.target_scores, d.target_labels
        thr[finding] = d.threshold
    return pd.DataFrame(ref), pd.DataFrame(tgt), thr


def test_a_site_is_estimated_per_finding_and_scored_when_its_labels_land() -> None:
    from clinaudit.audit.label_free_site import estimate_site, score_estimates

    scenarios = {"Effusion": "covariate", "Mass": "prevalence", "Nodule": "concept_drift"}
    reference, labelled, thresholds = _site(scenarios, seed=3)
    target = labelled.drop(columns=list(scenarios))  # what lands first: scores, no labels
    frozen = estimate_site(reference, target, findings=list(scenarios), thresholds=thresholds,
                           n_boot=150, site="new_site")  # fmt: skip
    assert set(frozen["finding"]) == set(scenarios)
    withheld = frozen[~frozen["estimable"]]
    assert set(withheld["finding"]) == {"Nodule"}  # the new acquisition is not estimated
    cells, summary = score_estimates(frozen, reference, labelled, thresholds=thresholds)
    auroc = cells[cells["metric"] == "auroc"].set_index("finding")
    assert not auroc.loc["Nodule", "covered"] and np.isnan(auroc.loc["Nodule", "estimate"])
    assert abs(auroc.loc["Effusion", "error"]) < abs(auroc.loc["Effusion", "baseline_error"])
    row = summary.set_index("metric").loc["auroc"]
    assert row["cells"] == 3 and row["estimable"] == 2
    # Scoring a whole site's drift withholds every finding.
    all_out = estimate_site(reference, target, findings=list(scenarios), thresholds=thresholds,
                            n_boot=0, drift={"image quality": "PSI 0.31 > 0.25"})  # fmt: skip
    assert not all_out["estimable"].any()
    with pytest.raises(AuditInputError, match="score_<finding>"):
        estimate_site(reference, target, findings=["Hernia"], thresholds=thresholds)
