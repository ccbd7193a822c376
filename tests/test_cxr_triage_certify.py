"""Study cxr_triage: the certificate assembly on a synthetic scored table (no images)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cxr_triage_fixtures import POLICY, scored_table, small_workload
from sklearn.metrics import roc_auc_score

from clinaudit.audit.selective import certify_clear_threshold
from clinaudit.audit.types import AuditInputError
from clinaudit.studies.cxr_triage.certify import SCORED_COLUMNS, certify_triage


@pytest.fixture(scope="module")
def result():
    return certify_triage(scored_table(), POLICY, seed=0)


def test_temperature_undoes_the_over_confidence_and_keeps_auroc(result) -> None:
    assert result.temperature.temperature == pytest.approx(2.5, rel=0.1)
    assert result.facts["auroc_change_from_temperature"] < 1e-9
    cal = result.calibration.set_index("group")
    before = cal.filter(like="before", axis=0)["ece_width"].iloc[0]
    after = cal.filter(like="after", axis=0)["ece_width"].iloc[0]
    assert after < before


def test_certificate_is_the_one_of_the_in_scope_calibration_rows(result) -> None:
    scored = scored_table()
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
    in_scope = test[test["scope_reason"] == ""]  # discrimination: the intended population
    assert auroc == pytest.approx(roc_auc_score(in_scope["abnormal"], in_scope["logit_abnormal"]))
    assert result.label_plan.abnormal == 299


def test_no_certifiable_threshold_clears_nothing() -> None:
    scored = scored_table(1, n=900, pile=100)  # ~140 abnormal calibration studies: fewer than 299
    res = certify_triage(scored, POLICY, seed=0)
    assert not res.certificate.certified
    assert (res.rows["bucket"] != "clear").all()
    assert (res.subgroups["action"] == "no auto-clear").all()


def test_bad_scored_tables_are_named() -> None:
    scored = scored_table(2, n=900, pile=10)
    with pytest.raises(AuditInputError, match="logit_critical"):
        certify_triage(scored.drop(columns="logit_critical"), POLICY)
    with pytest.raises(AuditInputError, match="split.*'holdout'"):
        certify_triage(scored.replace({"split": {"test": "holdout"}}), POLICY)
    one_class = scored.assign(abnormal=np.where(scored["split"] == "test", 0.0, scored["abnormal"]))
    with pytest.raises(AuditInputError, match="test studies with 1 class"):
        certify_triage(one_class, POLICY)
    assert set(SCORED_COLUMNS) <= set(scored.columns)


def test_throughput_resamples_a_small_pile_and_compares_three_policies(result) -> None:
    from clinaudit.studies.cxr_triage.throughput import double_verdict, simulate_throughput

    pile = result.rows[result.rows["split"] == "pile"]
    policy = small_workload()
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
    curves = run.curves
    assert set(curves["policy"]) == {"fifo", "priority", "priority_autoclear"}
    for _, c in curves.groupby("policy"):
        assert c["abnormal_read"].is_monotonic_increasing
        assert c["pile_left"].is_monotonic_decreasing and c["pile_left"].iloc[-1] == 0
        assert c["pile_left"].iloc[0] <= 5000
    first = curves[curves["day"] == 2].set_index("policy")
    assert first.loc["priority", "abnormal_read"] > first.loc["fifo", "abnormal_read"]


def test_decision_goes_with_auto_clear_when_every_criterion_passes(result) -> None:
    from clinaudit.studies.cxr_triage.decisions import decide_triage

    table, criteria = decide_triage(result, POLICY)
    assert list(criteria["criterion"]) == [
        "temperature", "certified", "test_miss_rate", "auroc", "ece", "normals_cleared",
        "backlog_miss_rate",
    ]  # fmt: skip
    assert criteria["passed"].all(), criteria
    row = table.iloc[0]
    assert row["decision"] == "GO" and row["mode"] == "priority + auto-clear"
    assert "re-read 5% of cleared studies" in row["conditions"]
    assert row["policy_sha256"] == POLICY.sha256
    miss = criteria.set_index("criterion").loc["test_miss_rate"]
    upper = result.test_outcomes.set_index("metric").loc["miss_rate", "ci_high"]
    assert miss["value"] == upper and miss["statistic"] == "ci_high"


def test_no_certificate_means_priority_ordering_only() -> None:
    from clinaudit.studies.cxr_triage.decisions import decide_triage

    res = certify_triage(scored_table(1, n=1500, pile=100), POLICY, seed=0)
    table, criteria = decide_triage(res, POLICY)
    row = table.iloc[0]
    assert row["decision"] == "CONDITIONAL GO" and row["mode"] == "priority ordering only"
    assert "no threshold certifiable" in row["reasons"] and "at least 299" in row["reasons"]
    assert not criteria.set_index("criterion").loc["certified", "passed"]


def test_a_poor_model_is_no_go() -> None:
    from clinaudit.studies.cxr_triage.decisions import decide_triage

    scored = scored_table(3, n=9000, pile=100)
    noise = np.random.default_rng(99).normal(0, 40.0, len(scored))  # not _scored's stream
    res = certify_triage(scored.assign(logit_abnormal=scored["logit_abnormal"] + noise), POLICY)
    table, criteria = decide_triage(res, POLICY)
    assert table.iloc[0]["decision"] == "NO-GO"
    assert not criteria.set_index("criterion").loc["auroc", "passed"]


def test_logits_that_rank_backwards_are_a_no_go_finding() -> None:
    from clinaudit.studies.cxr_triage.decisions import decide_triage

    scored = scored_table(4, n=3000, pile=100)
    res = certify_triage(scored.assign(logit_abnormal=-scored["logit_abnormal"]), POLICY)
    assert res.temperature is None
    assert res.facts["temperature_not_fitted"].startswith("received inverse temperature -")
    assert list(res.calibration["group"]) == ["before (T = 1)"]
    table, criteria = decide_triage(res, POLICY)
    assert table.iloc[0]["decision"] == "NO-GO"
    assert "no positive temperature fits" in table.iloc[0]["reasons"]


def test_monitoring_plan_sizes_the_re_read_alarm(result) -> None:
    from clinaudit.studies.cxr_triage.monitoring import monitoring_plan

    plan = monitoring_plan(
        result, POLICY, cleared_per_day=200.0, mode="priority + auto-clear", n_sims=200
    ).set_index("item")
    assert plan.loc["re-reads per day", "value"] == pytest.approx(10.0)
    r0 = plan.loc["null false-omission rate", "value"]
    assert 0 < r0 < 0.05
    fast, slow = (
        plan.loc["re-reads to alarm at 3x", "value"],
        plan.loc["re-reads to alarm at 2x", "value"],
    )
    assert fast < slow
    assert POLICY.monitoring.fallback in plan.loc["on alarm", "detail"]
    off = monitoring_plan(result, POLICY, cleared_per_day=0.0, mode="priority ordering only")
    assert "off" in off.set_index("item").loc["auto-clear", "detail"]


def test_evidence_round_trips_through_its_tables(result) -> None:
    from clinaudit.audit.records import TableSet
    from clinaudit.studies.cxr_triage.decisions import decide_triage
    from clinaudit.studies.cxr_triage.evidence import certification_of, evidence_tableset
    from clinaudit.studies.cxr_triage.throughput import simulate_throughput

    pile = result.rows[result.rows["split"] == "pile"]
    thr = simulate_throughput(pile, small_workload(), seed=0)
    ts = evidence_tableset(
        result, thr, simulated=True, left_out={}, settings={"seed": 0}, policy=POLICY
    )
    assert isinstance(ts, TableSet) and ts.facts["throughput"]["resampled"]
    back = certification_of(ts)
    assert back.certificate == result.certificate
    assert back.flag == result.flag and back.label_plan == result.label_plan
    assert back.temperature == result.temperature
    a, _ = decide_triage(back, POLICY)
    b, _ = decide_triage(result, POLICY)
    pd.testing.assert_frame_equal(a, b)
    assert list(ts["verdict"]["metric"]) == [
        "effective_throughput_multiplier",
        "abnormal_yield_ratio_vs_fifo",
    ]
