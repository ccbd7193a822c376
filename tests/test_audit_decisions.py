"""Per-site decisions and the monitoring plan on small synthetic audit tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from clinaudit.audit.types import AuditInputError
from clinaudit.studies.multisite_cxr.decisions import (
    CRITERIA_COLUMNS,
    DECISION_COLUMNS,
    decide_sites,
)
from clinaudit.studies.multisite_cxr.monitoring import PLAN_COLUMNS, alert_rate, monitoring_plan
from clinaudit.studies.multisite_cxr.policy import Policy, load_policy

SHIPPED = Path(__file__).resolve().parents[1] / "studies" / "multisite_cxr" / "policy.yaml"
FINDINGS = ("Atelectasis", "Effusion", "Pneumothorax", "Hernia")  # Hernia: not critical
QUALITY = ("mean_intensity", "contrast", "entropy", "sharpness", "noise_sigma",
           "clipped_fraction", "dynamic_range", "pixel_spacing_mm", "rows", "cols")  # fmt: skip
GOOD = {
    "status": "ok", "n_pos": 50, "n_neg": 450, "prevalence": 0.1, "auroc": 0.9,
    "auroc_ci_low": 0.85, "auroc_ci_high": 0.95, "sensitivity": 0.85, "sensitivity_ci_low": 0.75,
    "sensitivity_ci_high": 0.92, "specificity": 0.9, "ece_width": 0.03, "ece_width_ci_low": 0.02,
    "ece_width_ci_high": 0.05, "method": "platt", "ece_after": 0.03, "ece_after_ci_low": 0.02,
    "ece_after_ci_high": 0.05, "sensitivity_site_threshold": 0.85,
    "sensitivity_site_threshold_ci_low": 0.75, "sensitivity_site_threshold_ci_high": 0.92,
    "specificity_site_threshold": 0.88, "site_threshold_raw": 0.31,
}  # fmt: skip
METRICS = ["status", "n_pos", "n_neg", "prevalence", "auroc", "auroc_ci_low", "auroc_ci_high",
           "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high", "specificity"]  # fmt: skip
CALIBRATION = ["status", "ece_width", "ece_width_ci_low", "ece_width_ci_high"]
RECAL = ["status", "method", "ece_after", "ece_after_ci_low", "ece_after_ci_high",
         "sensitivity_site_threshold", "sensitivity_site_threshold_ci_low",
         "sensitivity_site_threshold_ci_high", "specificity_site_threshold",
         "site_threshold_raw"]  # fmt: skip


def _tables(cells: dict[str, dict[tuple[str, str], Any]], drift: dict[str, dict] | None = None):
    """Audit tables of the given sites: every cell GOOD unless overridden by (finding, column).

    ``drift[site]`` maps a feature to ``(psi, level)``, or ``"__mmd__"`` to ``True``
    (significant); every other quality / score feature has PSI 0.02 ("none").
    """
    rows = []
    for site, overrides in cells.items():
        for f in FINDINGS:
            cell = dict(GOOD) | {col: v for (ff, col), v in overrides.items() if ff == f}
            rows.append({"group": site, "target": f} | cell)
    table = pd.DataFrame(rows)
    keys = ["group", "target"]
    drift_rows = []
    for site in cells:
        spec = (drift or {}).get(site, {})
        for feat in (*QUALITY, "score_Effusion"):
            psi, level = spec.get(feat, (0.02, "none"))
            drift_rows.append({"group": site, "feature": feat, "kind": "numeric", "psi": psi,
                               "psi_level": level, "significant": level != "none",
                               "p_adj": 0.5, "drifted": level != "none"})  # fmt: skip
        sig = bool(spec.get("__mmd__", False))
        drift_rows.append({"group": site, "feature": "__mmd__", "kind": "multivariate",
                           "psi": np.nan, "psi_level": "n/a", "significant": sig,
                           "p_adj": 0.004 if sig else 0.4, "drifted": sig})  # fmt: skip
    return (table[keys + METRICS], table[keys + CALIBRATION], table[keys + RECAL],
            pd.DataFrame(drift_rows))  # fmt: skip


def _policy(mutate=None) -> Policy:
    raw = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    if mutate:
        mutate(raw)
    return Policy.from_bytes(yaml.safe_dump(raw, sort_keys=False).encode(), source="test.yaml")


def _with_mmd() -> Policy:
    return _policy(lambda raw: raw["drift"].update(mmd=True))


def _decide(policy: Policy, tables, retraining=None, sites=None):
    m, c, r, d = tables
    return decide_sites(
        policy, metrics=m, calibration=c, recalibration=r, drift=d, retraining=retraining,
        sites=sites or sorted(m["group"].unique()),
    )  # fmt: skip


def _row(decisions, site: str, criterion: str, finding: str = "") -> pd.Series:
    c = decisions.criteria
    hit = c[(c["site"] == site) & (c["criterion"] == criterion) & (c["finding"] == finding)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_site_passing_everything_is_go() -> None:
    policy = load_policy()
    out = _decide(policy, _tables({"site_ok": {}}))
    assert list(out.table.columns) == list(DECISION_COLUMNS)
    assert list(out.criteria.columns) == list(CRITERIA_COLUMNS)
    row = out.table.iloc[0]
    assert row["decision"] == "GO"
    # 3 critical findings x 4 criteria + PSI drift (the shipped policy reports MMD, never flags it)
    assert row["n_criteria"] == 3 * 4 + 1 and row["n_failed_before"] == row["n_failed_after"] == 0
    assert row["reasons"] == "GO: all 13 criteria pass without mitigation"
    assert "monthly" in row["conditions"]
    assert (row["policy_id"], row["policy_version"], row["policy_sha256"]) == (
        policy.policy_id, policy.version, policy.sha256,
    )  # fmt: skip
    assert set(out.criteria["finding"]) == {"", "Atelectasis", "Effusion", "Pneumothorax"}
    assert out.criteria["passed_before"].all() and (out.criteria["mitigation"] == "").all()


def test_failed_ece_rescued_by_site_recalibration_is_conditional_go() -> None:
    cells = {("Effusion", "ece_width"): 0.25, ("Effusion", "ece_after"): 0.04}
    out = _decide(load_policy(), _tables({"site_cal": cells}))
    assert out.decision("site_cal") == "CONDITIONAL GO"
    ece = _row(out, "site_cal", "ece", "Effusion")
    assert (ece["value"], ece["limit"], ece["comparator"]) == (0.25, 0.1, "<=")
    assert not ece["passed_before"] and ece["passed_after"] and ece["value_after"] == 0.04
    assert ece["mitigation"] == "site recalibration" and "platt, cross-fitted" in ece["evidence"]
    sens = _row(out, "site_cal", "sensitivity", "Effusion")  # judged at the site threshold
    assert sens["mitigation"] == "site recalibration" and "site threshold 0.31" in sens["evidence"]
    assert _row(out, "site_cal", "ece", "Atelectasis")["mitigation"] == ""
    row = out.table.iloc[0]
    assert "ECE for Effusion 0.25 > 0.10, 0.04 <= 0.10 after site recalibration" in row["reasons"]
    assert "site recalibration map and site threshold for Effusion" in row["conditions"]
    assert (row["n_failed_before"], row["n_failed_after"]) == (1, 0)


def test_recalibration_that_does_not_rescue_or_is_not_allowed_gives_no_go() -> None:
    cells = {("Effusion", "ece_width"): 0.25, ("Effusion", "ece_after"): 0.15}
    out = _decide(load_policy(), _tables({"s": cells}))
    assert out.decision("s") == "NO-GO"
    assert (
        "ECE for Effusion 0.25 > 0.10 (0.15 after site recalibration, still failing)"
        in (out.table.iloc[0]["reasons"])
    )
    rescued = {("Effusion", "ece_width"): 0.25, ("Effusion", "ece_after"): 0.04}
    strict = _policy(lambda raw: raw.update(allowed_mitigations=[]))
    m, c, _, d = _tables({"s": rescued})
    out = decide_sites(strict, metrics=m, calibration=c, recalibration=None, drift=d, sites=["s"])
    assert out.decision("s") == "NO-GO" and _row(out, "s", "ece", "Effusion")["mitigation"] == ""


def test_auroc_below_floor_is_no_go_naming_the_criterion() -> None:
    cells = {("Pneumothorax", "auroc_ci_low"): 0.42, ("Pneumothorax", "auroc"): 0.51}
    out = _decide(load_policy(), _tables({"site_ok": {}, "site_bad": cells}))
    assert out.table["site"].tolist() == ["site_bad", "site_ok"]
    bad = out.table.iloc[0]
    assert bad["decision"] == "NO-GO"
    assert bad["reasons"] == "NO-GO: AUROC lower CI for Pneumothorax 0.42 < 0.60"
    assert bad["conditions"] == "not deployed; re-audit after remediation"
    auroc = _row(out, "site_bad", "auroc", "Pneumothorax")
    assert (auroc["value"], auroc["estimate"], auroc["comparator"]) == (0.42, 0.51, ">=")
    assert not auroc["passed_after"]
    assert out.decision("site_ok") == "GO"


def test_value_is_printed_with_enough_digits_to_differ_from_the_limit() -> None:
    out = _decide(load_policy(), _tables({"s": {("Effusion", "auroc_ci_low"): 0.5996}}))
    assert "AUROC lower CI for Effusion 0.5996 < 0.60" in out.table.iloc[0]["reasons"]


def test_drift_alone_caps_at_conditional_go() -> None:
    tables = _tables(
        {"psi": {}, "mmd": {}, "moderate": {}, "scores": {}},
        drift={
            "psi": {"sharpness": (6.84, "major"), "contrast": (0.15, "moderate")},
            "mmd": {"__mmd__": True},
            "moderate": {"contrast": (0.15, "moderate")},
            "scores": {"score_Effusion": (3.0, "major")},
        },
    )
    shipped = _decide(load_policy(), tables)
    assert shipped.decision("mmd") == "GO"  # MMD alone does not flag under the shipped policy
    out = _decide(_with_mmd(), tables)
    decided = dict(zip(out.table["site"], out.table["decision"], strict=True))
    assert decided == {"mmd": "CONDITIONAL GO", "moderate": "GO", "psi": "CONDITIONAL GO",
                       "scores": "GO"}  # fmt: skip
    psi = out.table.set_index("site").loc["psi"]
    assert "input drift (PSI): PSI major: sharpness 6.84" in psi["reasons"]
    assert "contrast" not in psi["reasons"]
    assert "monitor the input drift flagged at audit (input drift (PSI))" in psi["conditions"]
    assert not _row(out, "psi", "drift_psi")["blocking"]
    assert "adjusted p 0.004 (significant)" in out.table.set_index("site").loc["mmd", "reasons"]
    lenient = _policy(lambda raw: raw["drift"].update(max_decision="GO"))
    out = _decide(lenient, tables)
    assert set(out.table["decision"]) == {"GO"}
    assert "noted, not limiting: input drift" in out.table.set_index("site").loc["psi", "reasons"]


def test_insufficient_data_for_a_critical_finding_is_no_go() -> None:
    cells = {("Pneumothorax", "status"): "insufficient data", ("Pneumothorax", "n_pos"): 3,
             ("Hernia", "status"): "insufficient data"}  # fmt: skip
    out = _decide(load_policy(), _tables({"s": cells}))
    row = out.table.iloc[0]
    assert row["decision"] == "NO-GO"
    assert row["reasons"].startswith("NO-GO: insufficient evidence for Pneumothorax")
    assert "'insufficient data'" in row["reasons"] and "3 positives" in row["reasons"]
    rows = out.criteria[out.criteria["finding"] == "Pneumothorax"]
    assert rows["criterion"].tolist() == ["data_sufficiency"]  # nothing else is evaluable
    assert "Hernia" not in row["reasons"]  # not a critical finding


def test_failed_sensitivity_rescued_by_site_threshold() -> None:
    cells = {("Atelectasis", "sensitivity_ci_low"): 0.2}
    out = _decide(load_policy(), _tables({"s": cells}))
    assert out.decision("s") == "CONDITIONAL GO"
    sens = _row(out, "s", "sensitivity", "Atelectasis")
    assert sens["value_after"] == 0.75 and sens["mitigation"] == "site recalibration"
    assert (
        "sensitivity lower CI for Atelectasis 0.20 < 0.50, 0.75 >= 0.50"
        in (out.table.iloc[0]["reasons"])
    )
    unusable = cells | {("Atelectasis", "status"): "ok"}
    m, c, r, d = _tables({"s": unusable})
    r.loc[r["target"] == "Atelectasis", "status"] = "insufficient data"
    out = _decide(load_policy(), (m, c, r, d))
    assert (
        out.decision("s") == "NO-GO"
        and "site recalibration not available" in (out.table.iloc[0]["reasons"])
    )


def test_retraining_is_evidence_unless_the_policy_counts_it() -> None:
    cells = {("Effusion", "auroc_ci_low"): 0.5}
    retraining = pd.DataFrame([
        {"group": "s", "target": "Effusion", "split": "test", "status": "ok",
         "auroc_after": 0.88, "auroc_after_ci_low": 0.8, "auroc_after_ci_high": 0.93},
    ])  # fmt: skip
    out = _decide(load_policy(), _tables({"s": cells}), retraining=retraining)
    auroc = _row(out, "s", "auroc", "Effusion")
    assert out.decision("s") == "NO-GO" and auroc["mitigation"] == ""
    assert (
        "re-trained model AUROC on split 'test' 0.88 [0.80, 0.93] (evidence only"
        in (auroc["evidence"])
    )
    counting = _policy(lambda raw: raw.update(retrained_model_counts=True))
    out = _decide(counting, _tables({"s": cells}), retraining=retraining)
    auroc = _row(out, "s", "auroc", "Effusion")
    assert out.decision("s") == "CONDITIONAL GO"
    assert (auroc["mitigation"], auroc["value_after"]) == ("focused re-training", 0.8)
    assert "deploy the re-trained model version" in out.table.iloc[0]["conditions"]
    with pytest.raises(AuditInputError, match="retraining"):
        _decide(counting, _tables({"s": cells}))


def test_decisions_are_deterministic_and_ignore_input_order() -> None:
    sites = {"b": {("Effusion", "ece_width"): 0.3}, "a": {("Atelectasis", "auroc_ci_low"): 0.3},
             "c": {}}  # fmt: skip
    tables = _tables(sites, drift={"c": {"noise_sigma": (0.4, "major")}})
    first, second = _decide(load_policy(), tables), _decide(load_policy(), tables)
    shuffled = tuple(t.sample(frac=1.0, random_state=3) for t in tables)
    third = _decide(load_policy(), shuffled, sites=["c", "a", "b"])
    for other in (second, third):
        pd.testing.assert_frame_equal(first.table, other.table)
        pd.testing.assert_frame_equal(first.criteria, other.criteria)
    assert first.table["site"].tolist() == ["a", "b", "c"]


def test_missing_or_malformed_inputs_are_clear_errors() -> None:
    m, c, r, d = _tables({"s": {}})
    policy = load_policy()
    with pytest.raises(AuditInputError, match=r"recalibration: received None.*site_recalibration"):
        decide_sites(policy, metrics=m, calibration=c, recalibration=None, drift=d, sites=["s"])
    with pytest.raises(AuditInputError, match=r"calibration: received a table without columns"):
        decide_sites(policy, metrics=m, calibration=c.drop(columns="ece_width"), recalibration=r,
                     drift=d, sites=["s"])  # fmt: skip
    with pytest.raises(AuditInputError, match=r"no row for group 's', target 'Effusion'"):
        decide_sites(policy, metrics=m[m["target"] != "Effusion"], calibration=c,
                     recalibration=r, drift=d, sites=["s"])  # fmt: skip
    with pytest.raises(AuditInputError, match=r"two rows for"):
        decide_sites(policy, metrics=pd.concat([m, m]), calibration=c, recalibration=r, drift=d,
                     sites=["s"])  # fmt: skip
    with pytest.raises(AuditInputError, match=r"sites: received \['nowhere'\]"):
        decide_sites(policy, metrics=m, calibration=c, recalibration=r, drift=d,
                     sites=["nowhere"])  # fmt: skip
    with pytest.raises(AuditInputError, match=r"features \['__mmd__'\]"):
        decide_sites(_with_mmd(), metrics=m, calibration=c, recalibration=r,
                     drift=d[d["feature"] != "__mmd__"], sites=["s"])  # fmt: skip


def _plan_case():
    sites = {
        "go": {},
        "cond": {("Effusion", "ece_width"): 0.25, ("Effusion", "ece_after"): 0.04},
        "nogo": {("Pneumothorax", "auroc_ci_low"): 0.4},
    }
    drift = {"cond": {"sharpness": (0.6, "major"), "score_Effusion": (0.15, "moderate")},
             "nogo": {"sharpness": (5.0, "major")}}  # fmt: skip
    tables = _tables(sites, drift=drift)
    policy = load_policy()
    decisions = _decide(policy, tables)
    m, c, r, d = tables
    return (
        policy,
        decisions,
        monitoring_plan(policy, decisions, drift=d, metrics=m, calibration=c, recalibration=r),
    )


def test_monitoring_plan_items_per_site() -> None:
    policy, decisions, plan = _plan_case()
    assert dict(zip(decisions.table["site"], decisions.table["decision"], strict=True)) == {
        "cond": "CONDITIONAL GO", "go": "GO", "nogo": "NO-GO",
    }  # fmt: skip
    assert list(plan.columns) == list(PLAN_COLUMNS)
    nogo = plan[plan["site"] == "nogo"]
    assert len(nogo) == 1 and nogo.iloc[0]["item"] == "not deployed"
    assert nogo.iloc[0]["action"] == "not deployed: re-audit after remediation"
    cond = plan[plan["site"] == "cond"].set_index("item")
    drift_items = cond[cond["kind"] == "input drift"]
    assert {"input drift: sharpness", "input drift: score_Effusion"} <= set(drift_items.index)
    sharp = cond.loc["input drift: sharpness"]
    assert (sharp["baseline"], sharp["warn_threshold"], sharp["action_threshold"]) == (
        0.6, 0.1, 0.25)  # fmt: skip
    assert "major drift at audit" in sharp["reason"]
    assert set(cond["cadence"]) == {"weekly"}
    assert set(plan.loc[plan["site"] == "go", "cadence"]) == {"monthly"}
    assert "input drift: sharpness" not in set(plan.loc[plan["site"] == "go", "item"])
    assert cond.loc["calibration: Effusion", "baseline"] == 0.04  # after recalibration
    assert "after site recalibration" in cond.loc["calibration: Effusion", "reason"]
    assert cond.loc["calibration: Atelectasis", "baseline"] == 0.03
    disc = cond.loc["discrimination: Pneumothorax"]
    assert (disc["baseline"], disc["action_threshold"], disc["direction"]) == (0.85, 0.6, "below")
    assert disc["warn_threshold"] == pytest.approx(0.65)
    # alert rate: vendor threshold for unmapped findings, site threshold for the mapped one
    assert cond.loc["alert rate: Atelectasis", "baseline"] == pytest.approx(
        alert_rate(0.1, 0.85, 0.9)
    )
    assert cond.loc["alert rate: Effusion", "baseline"] == pytest.approx(
        alert_rate(0.1, 0.85, 0.88)
    )
    assert "suspend the model at the site after 2 consecutive windows" in sharp["action"]
    assert sharp["escalation"] == "site AI lead -> governance committee chair"
    kinds = set(plan.loc[plan["site"] == "go", "kind"])
    assert kinds == {"input drift", "discrimination", "calibration", "alert rate"}


def test_monitoring_plan_refuses_decisions_of_another_policy() -> None:
    _, decisions, _ = _plan_case()
    other = _policy(lambda raw: raw.update(version="9.9.9"))
    m, c, r, d = _tables({"go": {}, "cond": {}, "nogo": {}})
    with pytest.raises(AuditInputError, match="decisions made under policy sha256"):
        monitoring_plan(other, decisions, drift=d, metrics=m, calibration=c, recalibration=r)


def test_a_criterion_the_reference_fails_too_is_marked_and_said_in_the_reasons() -> None:
    """Reference self-check: sensitivity fails on the reference group as at the site, so it
    cannot discriminate between sites; a criterion only the site fails is not marked."""
    low = {("Effusion", "sensitivity_ci_low"): 0.2, ("Effusion", "sensitivity"): 0.3}
    bad_site = low | {("Pneumothorax", "auroc_ci_low"): 0.5}
    metrics, calibration, recal, drift = _tables({"site_a": bad_site, "vendor_dev:test": low})
    recal["status"] = "insufficient data"  # no rescue: the failures stay
    d = decide_sites(
        load_policy(), metrics=metrics, calibration=calibration, recalibration=recal,
        drift=drift, sites=["site_a"], reference="vendor_dev:test",
    )  # fmt: skip
    crit = d.criteria.set_index(["criterion", "finding"])
    assert bool(crit.loc[("sensitivity", "Effusion"), "fails_at_reference"])
    assert not bool(crit.loc[("auroc", "Pneumothorax"), "fails_at_reference"])
    reasons = d.decision("site_a"), str(d.table["reasons"].iloc[0])
    assert reasons[0] == "NO-GO"
    assert "sensitivity lower CI for Effusion 0.20 < 0.50" in reasons[1]
    assert "fails on the vendor's reference split too: cannot discriminate" in reasons[1]
    assert reasons[1].count("cannot discriminate") == 1  # not on the AUROC failure
    ref = d.reference.set_index(["criterion", "finding"])
    assert set(ref["site"]) == {"vendor_dev:test"}
    assert bool(ref.loc[("sensitivity", "Effusion"), "fails_at_reference"])
    assert int(ref["fails_at_reference"].sum()) == 1
    # Without a reference group nothing is marked.
    plain = decide_sites(
        load_policy(), metrics=metrics, calibration=calibration, recalibration=recal,
        drift=drift, sites=["site_a"],
    )  # fmt: skip
    assert not plain.criteria["fails_at_reference"].any() and plain.reference.empty


def test_derived_thresholds_are_named_on_the_sensitivity_rows() -> None:
    low = {("Effusion", "sensitivity_ci_low"): 0.2}
    metrics, calibration, recal, drift = _tables({"site_a": low})
    recal["status"] = "insufficient data"
    d = decide_sites(
        load_policy(), metrics=metrics, calibration=calibration, recalibration=recal,
        drift=drift, sites=["site_a"], derived_thresholds=True,
    )  # fmt: skip
    sens = d.criteria[d.criteria["criterion"] == "sensitivity"]
    derived = sens["evidence"].str.contains("derived on the reference (not the", regex=False)
    assert derived.all()
    reasons = str(d.table["reasons"].iloc[0])
    assert "sensitivity lower CI for Effusion (at the derived threshold) 0.20 < 0.50" in reasons
