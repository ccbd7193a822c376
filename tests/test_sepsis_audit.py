"""The sepsis_ews audit core on tiny simulated cohorts: fairness = fairlearn, mitigation, plan.

``run_sepsis_audit`` chains the pipeline's stage functions (evidence, mitigation, decisions,
monitoring) in memory on one stays table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from scipy.stats import binom

from clinaudit.audit.policy_base import Decision
from clinaudit.audit.policy_yaml import PolicyError
from clinaudit.audit.types import AuditInputError
from clinaudit.models.tabular import predict_stays, train_tabular_vendor_model
from clinaudit.sources import sepsis_tables
from clinaudit.sources.sepsis_simulator import (
    SepsisScale,
    simulate_network,
    simulate_vendor_population,
)
from clinaudit.studies import get_study
from clinaudit.studies.sepsis_ews.decisions import deployed_alerts
from clinaudit.studies.sepsis_ews.drift import card_drift, psi_against_quantiles
from clinaudit.studies.sepsis_ews.monitoring import PLAN_COLUMNS
from clinaudit.studies.sepsis_ews.policy import POLICY_ATTRIBUTES, SepsisPolicy
from clinaudit.studies.sepsis_ews.result import run_sepsis_audit
from clinaudit.studies.sepsis_ews.schema import validate_stays
from clinaudit.studies.sepsis_ews.tables import FEATURES

N_BOOT = 60
SMALL = SepsisScale("small", 2_000, 1_000)


@pytest.fixture(scope="module")
def vendor():
    return train_tabular_vendor_model(simulate_vendor_population("tiny", seed=0).stays, seed=0)


@pytest.fixture(scope="module")
def tiny(vendor):
    stays, errors = validate_stays(simulate_network(SMALL, seed=0).stays)
    assert (errors["severity"] == "error").sum() == 0
    return stays, predict_stays(vendor, stays)


@pytest.fixture(scope="module")
def tiny_result(tiny, vendor):
    stays, preds = tiny
    return run_sepsis_audit(stays, preds, card=vendor.card, n_boot=N_BOOT, seed=3)


def _injected(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulated stays with synthetic scores: septic Black patients score lower (TPR gap)."""
    stays, _ = validate_stays(simulate_network(SMALL, seed=seed).stays)
    rng = np.random.default_rng(seed)
    y = stays["sepsis"].to_numpy()
    black = (stays["race_ethnicity"] == "Black").to_numpy()
    logit = -2.6 + 2.4 * y - 1.6 * y * black + rng.normal(0, 1.0, len(y))
    preds = pd.DataFrame(
        {"stay_id": stays["stay_id"], "score": 1 / (1 + np.exp(-logit)), "model_sha256": "x" * 64}
    )
    return stays, preds


def test_fairness_gaps_equal_fairlearn_metricframe(tiny, tiny_result, vendor) -> None:
    stays, preds = tiny
    pred = (preds["score"] >= vendor.threshold).astype(int)
    metrics = {"tpr": true_positive_rate, "fpr": false_positive_rate, "sel": selection_rate}
    rates, gaps = tiny_result.fairness_rates, tiny_result.fairness_gaps
    for attr in ("sex", "race_ethnicity", "age_band"):
        mf = MetricFrame(
            metrics=metrics, y_true=stays["sepsis"], y_pred=pred, sensitive_features=stays[attr]
        )
        ok = rates[(rates["attribute"] == attr) & (rates["status"] == "ok")]
        assert len(ok) >= 2, attr
        for row in ok.itertuples():
            expected = mf.by_group.loc[row.group]
            assert row.tpr == pytest.approx(expected["tpr"], abs=1e-12)
            assert row.fpr == pytest.approx(expected["fpr"], abs=1e-12)
            assert row.selection_rate == pytest.approx(expected["sel"], abs=1e-12)
        if len(ok) == len(mf.by_group):  # every group sufficient: max-min over all groups
            gap = gaps.query("attribute == @attr and metric == 'tpr' and comparison == 'max_min'")
            assert gap["difference"].iloc[0] == pytest.approx(
                mf.difference(method="between_groups")["tpr"], abs=1e-12
            )
    burden = tiny_result.burden.iloc[0]
    assert burden["alert_rate"] == pytest.approx(pred.mean(), abs=1e-12)


def test_mitigation_reduces_the_injected_gap_out_of_sample() -> None:
    stays, preds = _injected(seed=1)
    res = run_sepsis_audit(stays, preds, card=None, threshold=0.25, n_boot=N_BOOT, seed=0)
    low = res.disadvantaged.set_index("attribute").loc["race_ethnicity"]
    assert low["group"] == "Black" and low["diff_vs_reference"] < -0.15
    assert res.summary["mitigation_attribute"] == "race_ethnicity"
    eff = res.mitigation_effects.query("quantity == 'tpr_gap' and attribute == 'race_ethnicity'")
    before, after = float(eff["before"].iloc[0]), float(eff["after"].iloc[0])
    assert after < before - 0.1, (before, after)  # cross-fitted: every "after" is out-of-fold
    main = res.mitigation[res.mitigation["method"] == "group_thresholds"]
    assert set(res.mitigation["method"]) == {"group_thresholds", "threshold_optimizer"}
    assert {"sensitivity", "alert_rate", "missed_per_1000_stays"} <= set(main["quantity"])
    # The deployable rule (fitted on all stays) on a cohort it never saw: the gap shrinks there too.
    new, new_preds = _injected(seed=2)
    y, black = new["sepsis"].to_numpy() == 1, (new["race_ethnicity"] == "Black").to_numpy()

    def gap(alerts: np.ndarray) -> float:
        return alerts[y & ~black].mean() - alerts[y & black].mean()

    vendor_rule = new_preds["score"].to_numpy() >= 0.25
    mitigated = deployed_alerts(
        res.mitigation_thresholds, new_preds["score"], new["race_ethnicity"],
        method="group_thresholds", threshold=0.25,
    )  # fmt: skip
    assert gap(vendor_rule) > 0.15 and abs(gap(mitigated)) < gap(vendor_rule) / 2
    assert res.recommendation in (Decision.CONDITIONAL_GO, Decision.NO_GO)
    assert any("race_ethnicity" in c for c in res.conditions) or res.recommendation == "NO-GO"
    assert res.caveats and any("Disparate treatment" in c for c in res.caveats)


def test_monitoring_plan_has_rows_for_drifted_features(tiny_result) -> None:
    plan, drift = tiny_result.monitoring, tiny_result.drift
    assert tuple(plan.columns) == PLAN_COLUMNS
    moved = drift[(drift["kind"] == "numeric") & (drift["psi_level"].isin(["moderate", "major"]))]
    assert len(moved), "the network should drift from the vendor population"
    for feature in set(moved["feature"]):
        assert f"input drift: {feature}" in set(plan["item"]), feature
    for feature in set(drift.loc[drift["missing_flag"].astype(bool), "feature"]):
        assert f"missing rate: {feature}" in set(plan["item"]), feature
    kinds = set(plan["kind"])
    assert {"input drift", "alert rate", "discrimination", "calibration", "fairness"} <= kinds
    numbers = plan[["baseline", "warn_threshold", "action_threshold", "window_stays"]]
    assert np.isfinite(numbers.to_numpy(float)).all()
    outcome = plan[plan["kind"].isin(["discrimination", "sensitivity", "fairness"])]
    assert (
        outcome["suspends"].all() and not plan.loc[plan["kind"] == "input drift", "suspends"].any()
    )
    auroc = plan[plan["item"] == "AUROC"].iloc[0]
    assert auroc["action_threshold"] < auroc["warn_threshold"] < auroc["baseline"]
    assert all("switch the alerts off" in a for a in outcome["on_action"])


def test_same_inputs_same_tables(tiny, vendor, tiny_result) -> None:
    stays, preds = tiny
    again = run_sepsis_audit(stays, preds, card=vendor.card, n_boot=N_BOOT, seed=3)
    for name, table in tiny_result.tables().items():
        pd.testing.assert_frame_equal(table, again.tables()[name], obj=name)
    assert again.summary == tiny_result.summary
    assert again.recommendation == tiny_result.recommendation
    other = run_sepsis_audit(stays, preds, card=vendor.card, n_boot=N_BOOT, seed=4)
    assert not other.discrimination["auroc_ci_low"].equals(
        tiny_result.discrimination["auroc_ci_low"]
    )


def test_tables_report_every_section(tiny_result, vendor) -> None:
    disc = tiny_result.discrimination
    assert {"overall", "hospital", "sex", "race_ethnicity", "age_band", "vendor_card"} <= set(
        disc["attribute"]
    )
    vendor_row = disc[disc["attribute"] == "vendor_card"].iloc[0]
    assert vendor_row["auroc"] == pytest.approx(vendor.card["validation"]["auroc"])
    overall = disc[disc["attribute"] == "overall"].iloc[0]
    assert overall["auroc_ci_low"] < overall["auroc"] < overall["auroc_ci_high"]
    assert np.isfinite(overall["diff_ci_low"])
    cal = tiny_result.calibration
    assert cal.loc[cal["attribute"] == "overall", "ece_width"].iloc[0] >= 0
    assert set(tiny_result.reliability["attribute"]) >= {"overall", "race_ethnicity"}
    burden = tiny_result.burden.iloc[0]
    assert burden["alerts_per_100_stay_days"] > 0 and burden["missed_per_1000_stays"] > 0
    assert tiny_result.cohort["hospital"].tolist()[-1] == "network"
    assert set(tiny_result.criteria["criterion"]) == {"auroc", "ece", "alert_rate", "tpr_gap"}
    assert tiny_result.recommendation in set(Decision)
    assert tiny_result.reasons


def test_drift_against_the_card_is_zero_on_the_vendors_own_data(vendor) -> None:
    held_out = simulate_vendor_population("tiny", seed=0).stays.query("split == 'test'")
    card = vendor.card["training_data"]
    for f in FEATURES:
        psi, _ = psi_against_quantiles(held_out[f], card["features"][f])
        assert psi < 0.1, (f, psi)
    network = simulate_network("tiny", seed=0).stays
    table = card_drift(network, card, features=FEATURES, scopes=("race_ethnicity",))
    spo2 = table.query("feature == 'spo2' and scope == 'race_ethnicity' and group == 'Black'")
    assert spo2["psi_level"].iloc[0] == "major"  # pulse-oximetry overestimation
    lactate = table.query("feature == 'lactate' and scope == 'network'").iloc[0]
    assert lactate["missing_rate_change"] < 0  # the network orders lactate more often
    comp = table.query("kind == 'composition' and feature == 'race_ethnicity'")
    assert comp["psi_level"].iloc[0] == "major"  # few Black patients in the vendor's data
    exact = {"quantiles": {"0.25": 1.0, "0.5": 2.0, "0.75": 3.0}, "missing_fraction": 0.0}
    assert psi_against_quantiles([0.5, 1.5, 2.5, 3.5], exact)[0] == pytest.approx(0.0, abs=1e-12)


def test_scores_only_audit_and_bad_inputs(tiny) -> None:
    stays, preds = tiny
    with pytest.raises(AuditInputError, match="threshold"):
        run_sepsis_audit(stays, preds, card=None, n_boot=0)
    res = run_sepsis_audit(stays, preds, card=None, threshold=0.1, n_boot=0)
    assert res.drift.empty and "vendor_card" not in set(res.discrimination["attribute"])
    assert not any(i.startswith("input drift") for i in res.monitoring["item"])
    with pytest.raises(AuditInputError, match="predictions.*differ"):
        run_sepsis_audit(stays, preds.iloc[1:], card=None, threshold=0.1, n_boot=0)
    doubled = pd.concat([preds, preds.iloc[:1]])
    with pytest.raises(AuditInputError, match="repeated stay ids"):
        run_sepsis_audit(stays, doubled, card=None, threshold=0.1, n_boot=0)
    with pytest.raises(AuditInputError, match="probabilities"):
        run_sepsis_audit(stays, preds.assign(score=preds["score"] * 100), card=None,
                         threshold=0.1, n_boot=0)  # fmt: skip


def test_core_constants_match_the_stays_format() -> None:
    # audit/ does not import sources/: its copies of the format's names must agree with it.
    assert FEATURES == sepsis_tables.FEATURES
    assert POLICY_ATTRIBUTES == sepsis_tables.ATTRIBUTES


def test_policy_is_strict_and_names_every_problem() -> None:
    policy = get_study("sepsis_ews").load_policy()
    assert isinstance(policy, SepsisPolicy)
    assert policy.study == "sepsis_ews" and len(policy.sha256) == 64
    assert policy.analysis.reference_groups["race_ethnicity"] == "White"
    text = policy.text.replace("limit: 0.10", "limt: 0.10").replace(
        "attribute: largest", "attribute: eye"
    )
    with pytest.raises(PolicyError) as err:
        SepsisPolicy.from_bytes(text.encode())
    keys = {p.key for p in err.value.problems}
    assert "criteria.fairness_gap.limt" in keys and "criteria.fairness_gap.limit" in keys
    text = policy.text.replace("psi_warn: 0.10", "psi_warn: 0.30")
    with pytest.raises(PolicyError, match="psi_warn < psi_action"):
        SepsisPolicy.from_bytes(text.encode())
    bad_attribute = policy.text.replace("attribute: largest", "attribute: eye")
    with pytest.raises(PolicyError, match="mitigation.attribute"):
        SepsisPolicy.from_bytes(bad_attribute.encode())
    other_study = policy.text.replace("study: sepsis_ews", "study: multisite_cxr")
    with pytest.raises(PolicyError, match="study"):
        SepsisPolicy.from_bytes(other_study.encode())


def test_policy_describes_its_rules_in_plain_words() -> None:
    policy = get_study("sepsis_ews").load_policy()
    lines = policy.describe().splitlines()
    assert lines[0].startswith("clinaudit.sepsis_ews.network_deployment version 1.0.0")
    assert "lower CI bound of network AUROC ≥ 0.70" in lines[2]
    assert "max-min TPR gap of each attribute ≤ 0.10" in lines[2]
    disabled = policy.text.replace("  ece:\n    enabled: true", "  ece:\n    enabled: false")
    assert "ECE" not in SepsisPolicy.from_bytes(disabled.encode()).describe().splitlines()[2]


def test_the_threshold_source_is_stated(tiny, vendor) -> None:
    stays, preds = tiny
    card = run_sepsis_audit(stays, preds, card=vendor.card, n_boot=0)
    assert card.summary["threshold_source"] == "model card"
    assert card.summary["threshold"] == vendor.threshold
    configured = run_sepsis_audit(stays, preds, card=vendor.card, threshold=0.2, n_boot=0)
    assert (configured.summary["threshold"], configured.summary["threshold_source"]) == (
        0.2,
        "configured",
    )
    assert configured.settings["threshold"] == 0.2


def _card_population(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    """Stays with integer (atoms in the card), continuous and 30%-missing features; ``shift``
    SDs on heart rate."""
    lactate = rng.lognormal(0.5, 0.5, n)
    lactate[rng.random(n) < 0.3] = np.nan
    return pd.DataFrame(
        {
            "heart_rate": np.round(rng.normal(90 + 15 * shift, 15, n)),
            "spo2": np.clip(np.round(rng.normal(96, 2, n)), 70, 100),
            "lactate": lactate,
            "resp_rate": rng.normal(20, 4, n),
            "sex": rng.choice(["F", "M"], n),
            "sepsis": rng.random(n) < 0.1,
        }
    )


def test_card_drift_levels_need_the_psi_to_exceed_its_noise_bound() -> None:
    """Local stays (n = 300) drawn from the card's own population are not flagged (at most 5% of
    replicates: the 99th percentile of Binomial(R, 0.05)); a 0.5 SD heart-rate shift is (at
    least 80%: the 1st percentile of Binomial(R, 0.8))."""
    features = ["heart_rate", "spo2", "lactate", "resp_rate"]
    rng = np.random.default_rng(14)
    card = sepsis_tables.summarize_stays(_card_population(rng, 3000), features=features)
    reps, alarms, hits = 20, 0, 0
    for r in range(reps):
        clean = card_drift(_card_population(rng, 300), card, features=features, seed=r)
        shifted = card_drift(_card_population(rng, 300, 0.5), card, features=features, seed=r)
        assert clean["psi_noise_bound"].notna().all() and (clean["psi_noise_bound"] > 0).all()
        assert (clean["psi_level"].eq("none") | clean["psi"].gt(clean["psi_noise_bound"])).all()
        alarms += bool(clean["psi_level"].isin(["moderate", "major"]).any())
        hits += bool(shifted.set_index("feature").loc["heart_rate", "psi_level"] != "none")
    assert alarms <= binom.ppf(0.99, reps, 0.05), alarms
    assert hits >= binom.ppf(0.01, reps, 0.8), hits
    # Composition rows get a bound too (the card's n_stays), and a card without counts is exact:
    # only the local side is noise, so its bound is smaller.
    local = _card_population(rng, 300)
    card["groups"] = {"sex": {"F": 0.5, "M": 0.5}}
    with_n = card_drift(local, card, features=features)
    assert with_n.query("kind == 'composition'")["psi_noise_bound"].notna().all()
    exact = {**card, "features": {f: {k: v for k, v in s.items() if k != "n"}
                                  for f, s in card["features"].items()}}  # fmt: skip
    del exact["n_stays"]
    no_n = card_drift(local, exact, features=features)
    assert (no_n["psi_noise_bound"] < with_n["psi_noise_bound"]).all()
    pd.testing.assert_frame_equal(with_n, card_drift(local, card, features=features))
    with pytest.raises(AuditInputError, match="alpha"):
        card_drift(local, card, features=features, alpha=1.5)
