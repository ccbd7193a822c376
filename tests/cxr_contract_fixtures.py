"""Synthetic contract A/B/C tables of study multisite_cxr for the report tests.

Recalibration (A), re-training guard (B), decisions, criteria and monitoring plan (C), built from
real audit tables with exactly the contract columns and the conventions of
``clinaudit.audit.decisions`` / ``monitoring`` (criterion keys, ``blocking``, deployment rows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clinaudit.validation.quality import QUALITY_FEATURES

SITES = ("site_a", "site_b", "site_c", "site_d", "site_e")
REF_GROUP = "vendor_dev:test"
CRITICAL = ("Effusion", "Pneumothorax", "Atelectasis")


def recalibration_table(metrics: pd.DataFrame, calibration: pd.DataFrame) -> pd.DataFrame:
    """Contract A rows for every non-reference cell: "after" numbers derived from "before"."""
    m = metrics[~metrics["is_reference"]].set_index(["group", "target"])
    rows = []
    for _, c in calibration[calibration["group"] != REF_GROUP].iterrows():
        r = m.loc[(c["group"], c["target"])]
        ok = c["status"] == "ok"
        e, s = c["ece_width"], r["sensitivity"]
        row = {
            "group": c["group"],
            "target": c["target"],
            "status": "ok" if ok else "insufficient data",
            "method": ("platt" if e > 0.05 else "temperature") if ok else None,
            "n": int(c["n"]),
            "n_pos": int(c["n_pos"]),
            "n_folds": 5,
            "threshold": r["threshold"],
            "intended_sensitivity": 0.8,
            "site_threshold": 0.21 if ok else np.nan,
            "site_threshold_raw": 0.27 if ok else np.nan,
        }
        vals = {
            "ece_before": e,
            "ece_after": e * 0.4,
            "brier_before": c["brier"],
            "brier_after": c["brier"] * 0.9,
            "sensitivity_before": s,
            "sensitivity_after": min(1.0, s + 0.1),
            "specificity_before": r["specificity"],
            "specificity_after": r["specificity"],
            "sensitivity_site_threshold": 0.79,
            "specificity_site_threshold": 0.83,
        }
        for k, v in vals.items():
            v = v if ok else np.nan
            row.update({k: v, f"{k}_ci_low": v * 0.8, f"{k}_ci_high": min(1.0, v * 1.2)})
        rows.append(row)
    return pd.DataFrame(rows)


def retraining_table(
    metrics: pd.DataFrame, site: str, targeted: list[str]
) -> tuple[pd.DataFrame, dict]:
    """Contract B table and summary: targeted cells improve, one reference cell regresses."""
    rows = []
    ok = metrics[metrics["status"] == "ok"].sort_values(["group", "target"])
    for _, r in ok.iterrows():
        if r["target"] not in (*CRITICAL, *targeted):
            continue
        gain = 0.08 if (r["group"] == site and r["target"] in targeted) else 0.0
        if r["group"] == REF_GROUP and r["target"] == CRITICAL[0]:
            gain = -0.05  # the guard must catch this one
        after = min(0.999, r["auroc"] + gain)
        rows.append(
            {
                "group": r["group"],
                "target": r["target"],
                "split": "test" if r["group"] == site else "all",
                "n": int(r["n"]),
                "n_pos": int(r["n_pos"]),
                "auroc_before": r["auroc"],
                "auroc_before_ci_low": r["auroc_ci_low"],
                "auroc_before_ci_high": r["auroc_ci_high"],
                "auroc_after": after,
                "auroc_after_ci_low": after - 0.05,
                "auroc_after_ci_high": min(1.0, after + 0.03),
                "auroc_change": after - r["auroc"],
                "tolerance": 0.02,
                "regressed": gain < -0.02,
                "improved": gain > 0.05,
                "status": "ok",
            }
        )
    table = pd.DataFrame(rows)
    summary = {
        "retrained_site": site,
        "cells_targeted": [f"{site}/{t}" for t in targeted],
        "package_dir": "/packages/retrained",
        "package_sha256": "ab" * 32,
        "parent_package_sha256": "cd" * 32,
        "accepted": False,
        "regressions": [f"{REF_GROUP}/{CRITICAL[0]}"],
        "epochs": 3,
        "train_seconds": 41.7,
        "device": "cpu",
    }
    return table, summary


def _row(
    site,
    criterion,
    finding,
    value,
    lo,
    hi,
    limit,
    cmp,
    evidence,
    *,
    blocking=True,
    after=None,
    mitigation="site recalibration",
) -> dict:
    """A criteria row as clinaudit.audit.decisions writes it (contract C + blocking)."""
    passed = bool(
        value >= limit if cmp == ">=" else value <= limit if cmp == "<=" else value == limit
    )
    rescued = (
        not passed
        and blocking
        and after is not None
        and bool(after >= limit if cmp == ">=" else after <= limit)
    )
    return {
        "site": site,
        "criterion": criterion,
        "finding": finding,
        "value": value,
        "ci_low": lo,
        "ci_high": hi,
        "limit": limit,
        "comparator": cmp,
        "passed_before": passed,
        "value_after": after if after is not None else value,
        "passed_after": passed or rescued,
        "mitigation": mitigation if (not passed and after is not None) else "",
        "evidence": evidence,
        "blocking": blocking,
    }


def criteria_table(
    metrics: pd.DataFrame, calibration: pd.DataFrame, recal: pd.DataFrame, drift: pd.DataFrame
) -> pd.DataFrame:
    """Contract C criteria per site: data sufficiency, AUROC, ECE, sensitivity, drift."""
    m, c = metrics.set_index(["group", "target"]), calibration.set_index(["group", "target"])
    rc = recal.set_index(["group", "target"])
    rows = []
    for site in SITES:
        for f in CRITICAL:
            r, cal, re_ = m.loc[(site, f)], c.loc[(site, f)], rc.loc[(site, f)]
            ok = r["status"] == "ok" and cal["status"] == "ok"
            rows.append(
                _row(
                    site,
                    "data_sufficiency",
                    f,
                    float(ok),
                    np.nan,
                    np.nan,
                    1.0,
                    ">=",
                    f"metrics status {r['status']!r} ({int(r['n_pos'])} positives)",
                )
            )
            if not ok:
                continue
            auroc = (r["auroc"], r["auroc_ci_low"], r["auroc_ci_high"])
            rows.append(
                _row(
                    site,
                    "auroc",
                    f,
                    auroc[1],
                    *auroc[1:],
                    0.6,
                    ">=",
                    f"AUROC {auroc[0]:.2f} [{auroc[1]:.2f}, {auroc[2]:.2f}]",
                )
            )
            ece = (cal["ece_width"], cal["ece_width_ci_low"], cal["ece_width_ci_high"])
            rows.append(
                _row(
                    site,
                    "ece",
                    f,
                    ece[0],
                    *ece[1:],
                    0.1,
                    "<=",
                    f"ECE {ece[0]:.3f} [{ece[1]:.3f}, {ece[2]:.3f}]",
                    after=re_["ece_after"],
                )
            )
            sens = (r["sensitivity"], r["sensitivity_ci_low"], r["sensitivity_ci_high"])
            rows.append(
                _row(
                    site,
                    "sensitivity",
                    f,
                    sens[1],
                    *sens[1:],
                    0.5,
                    ">=",
                    f"sensitivity {sens[0]:.2f} [{sens[1]:.2f}, {sens[2]:.2f}]",
                    after=re_["sensitivity_site_threshold_ci_low"],
                )
            )
        part = drift[drift["group"] == site]
        major = part[(part["psi_level"] == "major") & part["feature"].isin(QUALITY_FEATURES)]
        rows.append(
            _row(
                site,
                "drift_psi",
                "",
                float(len(major)),
                np.nan,
                np.nan,
                0.0,
                "<=",
                "PSI major: " + (", ".join(major["feature"]) or "none"),
                blocking=False,
            )
        )
        mmd = part[part["feature"] == "__mmd__"].iloc[0]
        rows.append(
            _row(
                site,
                "drift_mmd",
                "",
                float(mmd["significant"]),
                np.nan,
                np.nan,
                0.0,
                "==",
                f"MMD permutation test adjusted p {mmd['p_adj']:.3g}",
                blocking=False,
            )
        )
    return pd.DataFrame(rows)


def decisions_table(criteria: pd.DataFrame, sha: str) -> pd.DataFrame:
    """Contract C decisions: NO-GO on a blocking failure, CONDITIONAL GO when rescued."""
    rows = []
    for site, part in criteria.groupby("site", sort=True):
        failed_before = part[~part["passed_before"]]
        failed_after = part[~part["passed_after"] & part["blocking"]]
        decision = (
            "NO-GO" if len(failed_after) else "CONDITIONAL GO" if len(failed_before) else "GO"
        )
        shown = failed_after if len(failed_after) else failed_before
        names = "; ".join(
            f"{c} for {f}: {e}" if f else f"{c}: {e}"
            for c, f, e in shown[["criterion", "finding", "evidence"]].to_numpy()
        )
        conditions = {
            "GO": "follow the monitoring plan monthly",
            "NO-GO": "not deployed; re-audit after remediation",
            "CONDITIONAL GO": "deploy with the site recalibration map and site "
            "threshold; follow the monitoring plan weekly",
        }[decision]
        rows.append(
            {
                "site": site,
                "decision": decision,
                "reasons": f"{decision}: {names or f'all {len(part)} criteria pass'}",
                "conditions": conditions,
                "n_criteria": len(part),
                "n_failed_before": len(failed_before),
                "n_failed_after": len(failed_after),
                "policy_id": "clinaudit.multisite_cxr.site_deployment",
                "policy_version": "1.0.0",
                "policy_sha256": sha,
            }
        )
    return pd.DataFrame(rows)


def monitoring_table(
    decisions: pd.DataFrame, calibration: pd.DataFrame, drift: pd.DataFrame
) -> pd.DataFrame:
    """Contract C monitoring plan: a deployment row for NO-GO sites, items for the others."""
    c = calibration.set_index(["group", "target"])
    rows = []
    esc = "site AI lead -> governance committee chair"
    act = "warn: notify site AI lead; suspend after 2 consecutive windows past the action threshold"
    for _, d in decisions.iterrows():
        site = d["site"]
        common = {"site": site, "escalation": esc, "action": act}
        if d["decision"] == "NO-GO":
            rows.append(
                {
                    **common,
                    "item": "not deployed",
                    "kind": "deployment",
                    "metric": "none",
                    "baseline": np.nan,
                    "warn_threshold": np.nan,
                    "action_threshold": np.nan,
                    "cadence": "after remediation",
                    "action": "re-audit after remediation",
                    "reason": "NO-GO",
                }
            )
            continue
        cadence = "weekly" if d["decision"] == "CONDITIONAL GO" else "monthly"
        moved = drift[(drift["group"] == site) & drift["psi_level"].isin(["moderate", "major"])]
        for _, r in moved.iterrows():
            rows.append(
                {
                    **common,
                    "item": f"input drift: {r['feature']}",
                    "kind": "input drift",
                    "metric": "PSI of the window vs this site's audit sample",
                    "baseline": r["psi"],
                    "warn_threshold": 0.1,
                    "action_threshold": 0.25,
                    "cadence": cadence,
                    "reason": f"{r['psi_level']} drift at audit",
                }
            )
        for f in CRITICAL:
            rows.append(
                {
                    **common,
                    "item": f"calibration: {f}",
                    "kind": "calibration",
                    "metric": "ECE of the deployed score",
                    "baseline": c.loc[(site, f), "ece_width"],
                    "warn_threshold": 0.08,
                    "action_threshold": 0.1,
                    "cadence": cadence,
                    "reason": "policy ECE limit",
                }
            )
    return pd.DataFrame(rows)
