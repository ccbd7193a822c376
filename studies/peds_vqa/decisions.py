"""peds_vqa verdicts: the brief's success criteria judged per category, and the follow-up plan.

This is a research-grade evaluation for an advisory board, not a deployment decision: ``GO``
means "the model meets the brief's success criteria on this evaluation and may go on to the next
research stage", never clinical use. Per category, on the pooled test set at the operating
threshold fixed on validation: sensitivity >= floor and specificity >= floor (policy
``criteria``; the statistic is the point estimate or the conservative end of its Wilson
interval). Calibration is judged once for all categories together (its criterion row is
``overall``): the debiased ECE of the recalibrated P(yes) on the pooled test set; failing it
fails every category. ``overall`` is the worst of the categories.
"""

from __future__ import annotations

import math

import pandas as pd

from clinaudit.audit.policy_base import Criterion, Decision
from clinaudit.audit.records import TableSet

from .policy import PedsVqaPolicy

__all__ = ["ALL", "decide_brief", "monitoring_plan"]

ALL = "overall"


def _row(cat: str, name: str, rule: Criterion, comparator: str, value: float, detail: str) -> dict:
    ok = math.isfinite(value) and (
        value >= rule.threshold if comparator == ">=" else value <= rule.threshold
    )
    return {
        "category": cat, "criterion": name, "kind": "brief", "enabled": rule.enabled,
        "statistic": rule.statistic, "comparator": comparator, "threshold": rule.threshold,
        "value": value, "passed": bool(ok) if rule.enabled else None, "detail": detail,
    }  # fmt: skip


def decide_brief(evidence: TableSet, policy: PedsVqaPolicy) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(decisions, criteria)``: one decision row per category plus ``overall``, and every
    criterion behind them (the columns ``outcomes_of_criteria`` reads, plus ``category``)."""
    c = policy.criteria
    ops = evidence["operating"]
    pooled = ops[(ops["set"] == "pooled_test") & (ops["model"] == "tuned")].set_index("group")
    thr = evidence["thresholds"]
    rows = []
    for cat in policy.categories:
        if cat not in pooled.index:  # no validation threshold (see evidence ``thresholds``)
            v = thr[thr["category"] == cat].iloc[0]
            detail = (f"not estimable: no operating threshold, the validation split has "
                      f"{int(v['n_pos'])} yes / {int(v['n_neg'])} no images")  # fmt: skip
            for name, rule in (("sensitivity", c.sensitivity), ("specificity", c.specificity)):
                rows.append(_row(cat, name, rule, ">=", float("nan"), detail))
            continue
        r = pooled.loc[cat]
        for name, rule in (("sensitivity", c.sensitivity), ("specificity", c.specificity)):
            value = float(r[name] if rule.statistic == "estimate" else r[f"{name}_ci_low"])
            detail = (
                f"{r[name]:.3f} (95% CI {r[f'{name}_ci_low']:.3f}-{r[f'{name}_ci_high']:.3f})"
                if math.isfinite(r[name])
                else "not estimable (no " + ("yes" if name == "sensitivity" else "no")
                + " image in the pooled test set)"
            ) + (
                f", n_pos {int(r['n_pos'])}, n_neg {int(r['n_neg'])}, threshold "
                f"{r['threshold']:.3f} fixed on validation"
            )  # fmt: skip
            rows.append(_row(cat, name, rule, ">=", value, detail))
    cal = evidence["calibration"]
    e = cal[(cal["set"] == "pooled_test") & (cal["model"] == "tuned")
            & (cal["scale"] == "recalibrated")].iloc[0]  # fmt: skip
    value = float(e["debiased_ece"] if c.ece.statistic == "estimate" else e["debiased_ci_high"])
    rows.append(
        _row(ALL, "debiased_ece", c.ece, "<=", value,
             f"{e['debiased_ece']:.3f} (95% CI {e['debiased_ci_low']:.3f}-"
             f"{e['debiased_ci_high']:.3f}) on {int(e['n'])} questions; a perfectly calibrated "
             f"model gives median {e['perfect_debiased_median']:.3f} at this n")
    )  # fmt: skip
    criteria = pd.DataFrame(rows)
    decisions = []
    failed_all = criteria[(criteria["category"] == ALL) & (criteria["passed"] == False)]  # noqa: E712
    for cat in policy.categories:
        mine = criteria[(criteria["category"] == cat) & (criteria["passed"] == False)]  # noqa: E712
        failed = [*mine["criterion"], *failed_all["criterion"]]
        decisions.append({
            "category": cat,
            "decision": str(Decision.NO_GO if failed else Decision.GO),
            "reasons": "; ".join(f"{f} not met" for f in failed) or "every criterion met",
        })  # fmt: skip
    worst = Decision.worst(d["decision"] for d in decisions)
    decisions.append({
        "category": ALL, "decision": str(worst),
        "reasons": "worst of the categories (research evaluation only; no clinical use)",
    })  # fmt: skip
    return pd.DataFrame(decisions), criteria


def monitoring_plan(evidence: TableSet, decisions: TableSet, policy: PedsVqaPolicy) -> pd.DataFrame:
    """What to re-check before the next research stage (a research model is never deployed)."""
    dec = decisions["decisions"].set_index("category")["decision"]
    thr = evidence["thresholds"]
    tuned = thr[thr["model"] == "tuned"].set_index("category")
    rows = []
    for cat in policy.categories:
        th = float(tuned.loc[cat, "threshold"])
        rows.append({
            "item": f"{cat}: sensitivity / specificity at threshold {th:.3f}" if math.isfinite(th)
            else f"{cat}: no threshold yet (validation split lacks yes or no images)",
            "when": "every new labelled batch (re-audit runs on landing)",
            "action": "re-fix the threshold on validation only; never on test questions",
            "status": dec[cat],
        })  # fmt: skip
    rows += [
        {"item": "debiased ECE beside the perfectly calibrated reference at the same n",
         "when": "every re-audit", "action": "refit the per-category calibration on the "
         "calibration split", "status": dec["overall"]},
        {"item": "blank / shuffled-image controls and paraphrase consistency",
         "when": "every new model version", "action": "a model that answers from the words "
         "alone is withdrawn from evaluation", "status": "check"},
        {"item": "evaluation on real pediatric data (e.g. a local VinDr-PCXR copy)",
         "when": "before any claim", "action": "land it with clinaudit.sources.vindr_pcxr and "
         "re-run this audit; simulated results are not evidence about real children",
         "status": "required"},
    ]  # fmt: skip
    return pd.DataFrame(rows)
