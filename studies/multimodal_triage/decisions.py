"""The hand-off decision of study ``multimodal_triage`` for the held-out (deployment) clinic.

Criteria (``criteria`` table, one row each, with the statistic and threshold the policy names):

* safety (a failure is NO-GO): ``macro_f1`` and ``malignant_sensitivity`` of the deployed arm
  at the held-out clinic; ``deferral_certified`` (a deferral threshold was certified on the
  calibration split); ``held_out_accepted_error`` (the error rate of the outputs the rule
  accepts at the held-out clinic: a failure means the guarantee did not transport to the new
  clinic);
* conditions (a failure is CONDITIONAL GO): ``fusion_vs_best_single`` (the deployed fusion arm is
  not shown worse than the best single-modality arm by more than the margin, paired CI at the
  held-out clinic) and ``tone_groups`` (no Fitzpatrick group of annotator A with a ``gap`` or
  ``insufficient evidence`` verdict).

Decision (one row; ``reasons`` and ``conditions`` are ``"; "``-joined items, and no item holds
``"; "`` itself): GO (with clinician review of deferred outputs) when everything passes;
CONDITIONAL GO with one condition per failed condition criterion (e.g. every output of a skin-tone
group without evidence goes to review); NO-GO when a safety criterion fails.
"""

from __future__ import annotations

import math

import pandas as pd

from clinaudit.audit.policy_base import COMPARATORS, Criterion, Decision
from clinaudit.audit.records import TableSet

from .policy import MultimodalPolicy

__all__ = ["CRITERIA_COLUMNS", "DECISION_COLUMNS", "TONE_ATTRIBUTE", "decide_handoff"]

CRITERIA_COLUMNS = ("criterion", "kind", "enabled", "statistic", "comparator", "threshold",
                    "value", "passed", "detail")  # fmt: skip
DECISION_COLUMNS = ("clinic", "decision", "mode", "reasons", "conditions", "policy_sha256")
SAFETY = ("macro_f1", "malignant_sensitivity", "deferral_certified", "held_out_accepted_error")
#: The tone attribute the decision reads (the primary annotator's grouped types).
TONE_ATTRIBUTE = "Fitzpatrick group (annotator A)"


def _row(name: str, crit: Criterion, cmp: str, value: float, threshold: float, detail: str):
    ok = value >= threshold if cmp == ">=" else value <= threshold
    passed = bool(ok) if crit.enabled and not math.isnan(value) else (not crit.enabled)
    kind = "safety" if name in SAFETY else "condition"
    return (name, kind, crit.enabled, crit.statistic, cmp, threshold, value, passed, detail)


def _stat(row: pd.Series, stat: str, base: str = "estimate") -> float:
    return float(row[base] if stat == "estimate" else row[stat if base == "estimate"
                                                            else f"{base}_{stat}"])  # fmt: skip


def criteria_table(evidence: TableSet, policy: MultimodalPolicy) -> pd.DataFrame:
    """Every criterion with the value it was judged on (see the module docstring)."""
    c = policy.criteria
    head = evidence["headline"]
    head = head[head["scope"] == "held_out"].set_index("metric")
    rule = evidence["deferral_rule"].iloc[0]
    out = evidence["deferral_outcomes"].set_index("scope").loc["held_out"]
    fvs = evidence["fusion_vs_single"]
    fvs = fvs[
        (fvs["scope"] == "held_out") & (fvs["metric"] == "macro_f1") & fvs["best_single"]
        & (fvs["fusion_arm"] == policy.model.deployed_arm)
    ].iloc[0]  # fmt: skip
    tone = evidence["tone_audit"]
    tone = tone[tone["attribute"] == TONE_ATTRIBUTE]
    flagged = tone[~tone["verdict"].str.startswith("no gap")]
    flagged = flagged[flagged["group"] != "not recorded"]
    certified = bool(rule["certified"])
    accepted = int(out["n_accepted"])
    rows = [
        _row(
            "macro_f1", c.macro_f1, ">=", _stat(head.loc["macro_f1"], c.macro_f1.statistic),
            c.macro_f1.threshold, f"held-out macro F1 of {policy.model.deployed_arm}, "
            f"{int(head.loc['macro_f1', 'n'])} pairs",
        ),
        _row(
            "malignant_sensitivity", c.malignant_sensitivity, ">=",
            _stat(head.loc["malignant_sensitivity"], c.malignant_sensitivity.statistic),
            c.malignant_sensitivity.threshold,
            "malignant lesions predicted as a malignant category (before review), "
            f"{int(head.loc['malignant_sensitivity', 'n'])} malignant held-out lesions",
        ),
        (
            "deferral_certified", "safety", c.deferral_certified, "exists", "=", math.nan,
            float(rule["threshold"]) if certified else math.nan,
            certified or not c.deferral_certified,
            f"defer if review score >= {rule['threshold']:.4f}: error of accepted <= "
            f"{rule['alpha_error']:g} and malignant miss <= {rule['alpha_malignant']:g} with "
            f"probability >= {1 - rule['delta']:g} (coverage {rule['coverage']:.1%} of "
            f"{int(rule['n_calibration'])} calibration pairs)"
            if certified
            else f"no threshold certifiable on {int(rule['n_calibration'])} calibration pairs: "
            "every output would go to review",
        ),
        (
            "held_out_accepted_error", "safety", c.held_out_accepted_error.enabled,
            c.held_out_accepted_error.statistic, "<=", c.held_out_accepted_error.threshold, 0.0,
            True, "no held-out output was accepted: nothing can be wrong without review",
        )
        if accepted == 0
        else _row(
            "held_out_accepted_error", c.held_out_accepted_error, "<=",
            _stat(out, c.held_out_accepted_error.statistic, "accepted_error"),
            c.held_out_accepted_error.threshold,
            f"{int(out['accepted_errors'])} wrong of {accepted} accepted held-out outputs",
        ),
        _row(
            "fusion_vs_best_single", c.fusion_vs_best_single, ">=",
            float(fvs["difference"] if c.fusion_vs_best_single.statistic == "estimate"
                  else fvs["ci_high"]),
            -c.fusion_vs_best_single.threshold,
            f"{fvs['fusion_arm']} minus {fvs['single_arm']} (best single on validation): "
            f"{fvs['difference']:+.3f} [{fvs['ci_low']:+.3f}, {fvs['ci_high']:+.3f}]",
        ),
        (
            "tone_groups", "condition", c.tone_groups, "count", "<=", 0.0, float(len(flagged)),
            len(flagged) == 0 or not c.tone_groups,
            ", ".join(f"{r.group}: {r.verdict}" for r in flagged.itertuples())
            or "every Fitzpatrick group (annotator A): no gap >= "
            f"{policy.tone_audit.min_gap:.0%}",
        ),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(CRITERIA_COLUMNS))


def _phrase(r: pd.Series) -> str:
    if r["criterion"] in ("deferral_certified", "tone_groups"):
        return f"{r['criterion']}: {r['detail']}"
    cmp = COMPARATORS.get(r["comparator"], r["comparator"])
    return f"{r['criterion']} {r['statistic']} {r['value']:.3f} (needs {cmp} {r['threshold']:g})"


def _tone_conditions(evidence: TableSet) -> list[str]:
    tone = evidence["tone_audit"]
    tone = tone[(tone["attribute"] == TONE_ATTRIBUTE) & (tone["group"] != "not recorded")]
    out = []
    for r in tone.itertuples():
        if r.verdict == "gap":
            out.append(
                f"Fitzpatrick {r.group}: every output goes to clinician review (accuracy gap "
                f"{r.accuracy_gap:+.1%} [{r.gap_ci_low:+.1%}, {r.gap_ci_high:+.1%}], n = {r.n})"
            )
        elif str(r.verdict).startswith("insufficient"):
            out.append(
                f"Fitzpatrick {r.group}: not validated ({r.verdict}, n = {r.n}), so every output "
                "goes to clinician review until enough cases are audited"
            )
    return out


def decide_handoff(
    evidence: TableSet, policy: MultimodalPolicy
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The decision row and the criteria behind it (see the module docstring)."""
    criteria = criteria_table(evidence, policy)
    failed = criteria[criteria["enabled"] & ~criteria["passed"]]
    names = set(failed["criterion"])
    rule = evidence["deferral_rule"].iloc[0]
    conditions: list[str] = []
    if names & set(SAFETY):
        decision, mode = Decision.NO_GO, "not deployed"
        reasons = "; ".join(_phrase(r) for _, r in failed.iterrows())
    else:
        mode = (
            f"{policy.model.deployed_arm} with clinician review of outputs whose review score is "
            f">= {rule['threshold']:.4f}"
        )
        if "tone_groups" in names:
            conditions += _tone_conditions(evidence)
        if "fusion_vs_best_single" in names:
            conditions.append(
                "fusion is not shown non-inferior to the best single modality: the committee "
                "weighs deploying the simpler arm"
            )
        decision = Decision.CONDITIONAL_GO if names else Decision.GO
        reasons = (
            "; ".join(_phrase(r) for _, r in failed.iterrows())
            if names
            else "every enabled criterion passes"
        )
        conditions.append(
            f"clinicians review {policy.monitoring.review_sample_fraction:.0%} of accepted outputs "
            "(monitoring)"
        )
    table = pd.DataFrame(
        [(policy.held_out_clinic, decision.value, mode, reasons, "; ".join(conditions),
          policy.sha256)],
        columns=list(DECISION_COLUMNS),
    )  # fmt: skip
    return table, criteria
