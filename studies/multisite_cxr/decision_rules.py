"""Decision and reasons of one site from its criterion rows (:func:`.decisions.decide_sites`).

NO-GO when a blocking criterion fails after the allowed mitigations; CONDITIONAL GO when a
mitigation was needed or input drift is flagged (drift caps the decision at
``drift.max_decision``); GO otherwise. A failed criterion that also fails on the vendor's reference
split (``fails_at_reference``) says so in the reasons: it cannot discriminate between sites.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clinaudit.audit.policy_base import Decision

from .decisions_schema import MITIGATION_RECALIBRATION, MITIGATION_RETRAINING
from .policy import Policy

__all__ = ["LABELS", "ci_text", "conditions", "decide", "fmt"]

LABELS = {"auroc": "AUROC", "ece": "ECE", "sensitivity": "sensitivity"}
_STAT_SUFFIX = {"ci_low": " lower CI", "ci_high": " upper CI", "estimate": ""}


def fmt(value: float, limit: float | None = None) -> str:
    """Two decimals, more when needed so that a value never prints equal to a different limit."""
    if not np.isfinite(value):
        return "n/a"
    for digits in (2, 3, 4):
        text = f"{value:.{digits}f}"
        if limit is None or value == limit or text != f"{limit:.{digits}f}":
            return text
    return f"{value:.6f}"


def ci_text(estimate: float, low: float, high: float) -> str:
    return f"{fmt(estimate)} [{fmt(low)}, {fmt(high)}]"


def _label(row: dict[str, Any], policy: Policy) -> str:
    key = row["criterion"]
    if key in LABELS:
        stat = getattr(policy.criteria, key).statistic
        tag = row.get("threshold_tag", "") if key == "sensitivity" else ""
        return f"{LABELS[key]}{_STAT_SUFFIX[stat]} for {row['finding']}{tag}"
    return {"data_sufficiency": "data sufficiency", "drift_psi": "input drift (PSI)",
            "drift_mmd": "input drift (MMD)"}[key]  # fmt: skip


def _failure_text(row: dict[str, Any], policy: Policy) -> str:
    """E.g. ``AUROC lower CI for Pneumothorax 0.42 < 0.60`` (with the after-mitigation value)."""
    key, limit = row["criterion"], row["limit"]
    if key == "data_sufficiency":
        text = f"insufficient evidence for {row['finding']}: {row['evidence']}"
        if row.get("fails_at_reference"):
            text += " [insufficient on the vendor's reference split too]"
        return text
    if key.startswith("drift"):
        return f"{_label(row, policy)}: {row['evidence']}"
    broken = {">=": "<", "<=": ">"}[row["comparator"]]
    text = f"{_label(row, policy)} {fmt(row['value'], limit)} {broken} {fmt(limit)}"
    if row["mitigation"]:
        after = row["value_after"]
        if row["passed_after"]:
            ok = f"{fmt(after, limit)} {row['comparator']} {fmt(limit)}"
            text += f", {ok} after {row['mitigation']}"
        elif np.isfinite(after):
            text += f" ({fmt(after, limit)} after {row['mitigation']}, still failing)"
        else:
            text += f" ({row['mitigation']} not available)"
    if row.get("fails_at_reference"):
        text += " [fails on the vendor's reference split too: cannot discriminate between sites]"
    return text


def decide(rows: list[dict[str, Any]], policy: Policy) -> tuple[str, str]:
    blocking = [r for r in rows if r["blocking"]]
    failed = [r for r in blocking if not r["passed_after"]]
    if failed:
        no_go = Decision.NO_GO
        return no_go.value, f"{no_go}: " + "; ".join(_failure_text(r, policy) for r in failed)
    rescued = [r for r in blocking if not r["passed_before"]]
    drifted = [r for r in rows if not r["blocking"] and not r["passed_before"]]
    decision = Decision.CONDITIONAL_GO if rescued else Decision.GO
    if drifted:
        decision = Decision.worst([decision, policy.drift.max_decision])
    if not rescued and not drifted:
        return Decision.GO.value, f"GO: all {len(rows)} criteria pass without mitigation"
    parts = [_failure_text(r, policy) for r in rescued + drifted]
    if decision is Decision.GO:  # drift.max_decision: GO -> drift is reported, not limiting
        return decision.value, "GO: all blocking criteria pass; noted, not limiting: " + "; ".join(
            parts
        )
    return decision.value, f"{decision}: " + "; ".join(parts)


def conditions(decision: str, rows: list[dict[str, Any]], policy: Policy) -> str:
    m = policy.monitoring
    if decision == Decision.NO_GO:
        return f"not deployed; {m.not_deployed_action}"
    parts = []
    for mitigation, what in (
        (MITIGATION_RECALIBRATION, "deploy with the site recalibration map and site threshold for"),
        (MITIGATION_RETRAINING, "deploy the re-trained model version (own approval needed) for"),
    ):
        findings = sorted({r["finding"] for r in rows if r["mitigation"] == mitigation})
        if findings:
            parts.append(f"{what} {', '.join(findings)}")
    drifted = [_label(r, policy) for r in rows if not r["blocking"] and not r["passed_before"]]
    if drifted:
        parts.append(f"monitor the input drift flagged at audit ({', '.join(drifted)})")
    chain = " -> ".join(m.escalation)
    parts.append(f"follow the monitoring plan {m.cadence(decision)}; escalation {chain}")
    return "; ".join(parts)
