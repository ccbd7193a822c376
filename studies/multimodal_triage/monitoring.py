"""The monitoring plan of study ``multimodal_triage`` after hand-off: what is measured, how often,
the audit's value it is compared with, the alarm and who is told."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clinaudit.audit.records import TableSet

from .policy import MultimodalPolicy

__all__ = ["PLAN_COLUMNS", "monitoring_plan"]

PLAN_COLUMNS = ("signal", "how", "cadence", "audit_value", "alarm", "action")


def monitoring_plan(
    evidence: TableSet, decisions: TableSet, policy: MultimodalPolicy
) -> pd.DataFrame:
    """One row per monitored signal (values from this audit's held-out clinic)."""
    mon = policy.monitoring
    out = evidence["deferral_outcomes"].set_index("scope").loc["held_out"]
    comp = evidence["composition"]
    ho = comp[comp["split"] == "held_out"]
    note_missing = float((ho["note_missing_share"] * ho["n_pairs"]).sum() / ho["n_pairs"].sum())
    deferral_rate = 1.0 - float(out["coverage"])
    tell = ", ".join(mon.escalation)

    def value(x: float) -> str:
        return f"{x:.3f}" if np.isfinite(x) else "not estimable (nothing accepted)"

    decision = str(decisions["decisions"].iloc[0]["decision"])
    rows = [
        (
            "error rate of accepted outputs",
            f"a clinician reviews a random {mon.review_sample_fraction:.0%} of accepted outputs",
            "monthly", value(float(out["accepted_error"])),
            f"lower CI bound above alpha_error {policy.deferral.alpha_error:g}",
            f"suspend auto-acceptance (review everything); tell {tell}",
        ),
        (
            "malignant lesions accepted as benign",
            "histopathology of reviewed sample and of later excisions",
            "monthly", value(float(out["malignant_miss"])),
            f"above alpha_malignant {policy.deferral.alpha_malignant:g}",
            f"suspend auto-acceptance; tell {tell}",
        ),
        (
            "deferral rate", "share of outputs sent to review", "weekly", f"{deferral_rate:.3f}",
            f"moves by more than {mon.max_deferral_rate_shift:.0%}",
            f"re-audit (input shift: camera, population or notes); tell {tell}",
        ),
        (
            "notes missing", "share of pairs without a clinical note", "weekly",
            f"{note_missing:.3f}", f"moves by more than {mon.max_note_missing_shift:.0%}",
            "re-audit with the note-removal results; remind clinicians to document",
        ),
        (
            "skin-tone mix", "share of photos per Fitzpatrick group (annotator A)", "monthly",
            "see composition", "a group grows beyond what the audit validated",
            "extend the skin-tone audit before relying on outputs for that group",
        ),
        (
            "re-certification", "; ".join(mon.recertify_on), "on event", decision,
            "any listed event", "re-run the audit; the current decision lapses",
        ),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS))
