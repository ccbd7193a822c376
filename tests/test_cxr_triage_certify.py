"""Study cxr_triage: the certificate assembly on a synthetic scored table (no images)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from clinaudit.audit.selective import certify_clear_threshold
from clinaudit.audit.types import AuditInputError
from clinaudit.studies.cxr_triage.certify import SCORED_COLUMNS, certify_triage
from clinaudit.studies.cxr_triage.policy import SHIPPED_POLICY, TriagePolicy

POLICY = TriagePolicy.load(SHIPPED_POLICY)


def _scored(seed: int = 0, n: int = 30000, *, pile: int = 2000) -> pd.DataFrame:
    """Logits 2.5 x the true log-odds (over-confident), ~half abnormal; 5 % laterals."""
    rng = np.random.default_rng(seed)
    total = n + pile
    true_logit = rng.normal(0.0, 3.0, total)
    abnormal = (rng.random(total) < 1.0 / (1.0 + np.exp(-true_logit))).astype(float)
    critical = np.where(abnormal == 1, (rng.random(total) < 0.2).astype(float), 0.0)
    third = n // 3
    split = ["train"] * third + ["calibration"] * third + ["test"] * (n - 2 * third)
    split = np.array(split + ["pile"] * pile)
    view = np.where(rng.random(total) < 0.05, "LL", np.where(rng.random(total) < 0.3, "AP", "PA"))
    return pd.DataFrame(
        {
            "image_id": [f"img{i:06d}.dcm" for i in range(total)],
            "patient_pseudonym": [f"{i // 2:016x}" for i in range(total)],
            "split": split,
            "logit_abnormal": 2.5 * true_logit,
            "logit_critical": np.where(critical == 1, 2.0, -2.0) + rng.normal(0, 1.5, total),
            "abnormal": np.where(split == "pile", np.nan, abnormal),
            "critical": np.where(split == "pile", np.nan, critical),
            "scope_reason": np.where(view == "LL", "view LL (not PA/AP)", ""),
            "sex": rng.choice(["F", "M"], total),
            "age_band": rng.choice(["18-39", "40-59", "60-79", "80+"], total),
            "view_position": view,
            "site": "main",
        }
    )


@pytest.fixture(scope="module")
def result():
    return certify_triage(_scored(), POLICY, seed=0)


def test_temperature_undoes_the_over_confidence_and_keeps_auroc(result) -> None:
    assert result.temperature.temperature == pytest.approx(2.5, rel=0.1)
    assert result.facts["auroc_change_from_temperature"] < 1e-9
    cal = result.calibration.set_index("group")
    before = cal.filter(like="before", axis=0)["ece_width"].iloc[0]
    after = cal.filter(like="after", axis=0)["ece_width"].iloc[0]
    assert after < before


def test_certificate_is_the_one_of_the_in_scope_calibration_rows(result) -> None:
    scored = _scored()
    cal = scored[(scored["split"] == "calibration") & (scored["scope_reason"] == "")]
    p = result.temperature.apply(cal["logit_abnormal"])
    again = certify_clear_threshold(cal["abnormal"], p, alpha=0.01, delta=0.05)
    assert result.certificate == again
    assert result.certificate.certified and result.certificate.miss_rate_upper < 0.01
    assert result.facts["n_calibration_in_scope"] == len(cal)


def test_every_row_is_bucketed_by_its_own_threshold(result) -> None:
    rows = result.rows
    assert set(rows["split"]) == {"test", "pile"} and len(rows) == 10000 + 2000
    out = rows[rows["scope_reason"] != ""]
    assert len(out) > 0 and (out["bucket"] == "uncertain").all()  # laterals never cleared
    clear = rows[rows["bucket"] == "clear"]
    assert (clear["p_abnormal"] < clear["clear_below"]).all()
    assert (clear["clear_below"] <= result.certificate.threshold).all()
    assert (rows.loc[rows["bucket"] == "flag", "p_abnormal"] >= result.flag.threshold).all()
    assert (rows["priority"] >= rows["p_abnormal"]).all()
    assert set(result.subgroups["attribute"]) == {"sex", "age_band", "view", "site"}


def test_held_out_outcomes_are_counted_on_the_test_split(result) -> None:
    rows = result.rows
    test = rows[rows["split"] == "test"]
    out = result.test_outcomes.set_index("metric")
    assert out.loc["miss_rate", "n"] == int((test["abnormal"] == 1).sum())
    assert out.loc["miss_rate", "k"] == int(
        ((test["abnormal"] == 1) & (test["bucket"] == "clear")).sum()
    )
    assert out.loc["normals_cleared", "estimate"] > 0.2
    assert out.loc["miss_rate", "estimate"] <= 0.02  # held out: near the certified 1 %
    auroc = result.discrimination["auroc"].iloc[0]
    assert auroc == pytest.approx(roc_auc_score(test["abnormal"], test["logit_abnormal"]))
    assert result.label_plan.abnormal == 299


def test_no_certifiable_threshold_clears_nothing() -> None:
    scored = _scored(1, n=900, pile=100)  # ~140 abnormal calibration studies: fewer than 299
    res = certify_triage(scored, POLICY, seed=0)
    assert not res.certificate.certified
    assert (res.rows["bucket"] != "clear").all()
    assert (res.subgroups["action"] == "no auto-clear").all()


def test_bad_scored_tables_are_named() -> None:
    scored = _scored(2, n=900, pile=10)
    with pytest.raises(AuditInputError, match="logit_critical"):
        certify_triage(scored.drop(columns="logit_critical"), POLICY)
    with pytest.raises(AuditInputError, match="split.*'holdout'"):
        certify_triage(scored.replace({"split": {"test": "holdout"}}), POLICY)
    one_class = scored.assign(abnormal=np.where(scored["split"] == "test", 0.0, scored["abnormal"]))
    with pytest.raises(AuditInputError, match="test studies with 1 class"):
        certify_triage(one_class, POLICY)
    assert set(SCORED_COLUMNS) <= set(scored.columns)


def _small_workload(**changes):
    from dataclasses import replace

    w = replace(POLICY.workload, simulated_pile=5000, daily_inflow=300, inflow_days=5, n_draws=20)
    return replace(POLICY, workload=replace(w, **changes))


def test_throughput_resamples_a_small_pile_and_compares_three_policies(result) -> None:
    from clinaudit.studies.cxr_triage.throughput import double_verdict, simulate_throughput

    pile = result.rows[result.rows["split"] == "pile"]
    policy = _small_workload()
    run = simulate_throughput(pile, policy, seed=0)
    assert run.resampled and run.n_landed == 2000 and run.n_pile == 5000
    table = run.table
    assert set(table["policy"]) == {"fifo", "priority", "priority_autoclear"}
    assert (table["n_pile"] == 5000).all() and (table["reads_per_day"] == 1080.0).all()
    fifo = table[table["policy"] == "fifo"].set_index("metric")
    assert fifo.loc["days_to_clear_pile", "estimate"] == pytest.approx(5000 / 1080)
    auto = table[table["policy"] == "priority_autoclear"].set_index("metric")
    assert auto.loc["auto_cleared_share", "estimate"] > 0
    verdict = double_verdict(table)
    assert list(verdict["metric"]) == [
        "effective_throughput_multiplier",
        "abnormal_yield_ratio_vs_fifo",
    ]
    assert (verdict["doubles"] == (verdict["ci_low"] >= 2)).all()
    again = simulate_throughput(pile, policy, seed=0).table
    pd.testing.assert_frame_equal(table, again)
