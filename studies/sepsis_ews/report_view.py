"""View model of the sepsis_ews audit report, and its first sections (summary to calibration).

Every field is final text, a :class:`~clinaudit.reporting.kit.Table` of text cells or a figure
file: the template (``templates/sepsis_ews/report.html.j2``, extending ``base_report.html.j2``)
only lays it out. Number formats and the words for missing values ("not estimable",
"insufficient data (n_pos=3)") come from the report kit (:mod:`clinaudit.reporting.kit`), shared
by every study.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from clinaudit.audit.policy_base import COMPARATORS
from clinaudit.reporting.kit import (
    DECISIONS,
    Cell,
    MethodNote,
    ProvenanceBlock,
    ReportFrame,
    Section,
    Table,
    finite,
    fmt_ci,
    fmt_num,
    fmt_p,
    fmt_pct,
    insufficient,
    pct_ci,
    table,
)
from clinaudit.reporting.report_figures import FigureFile

from .decisions import CRITERION_NAMES
from .result import SepsisAuditResult


# --------------------------------------------------------------------------- view model
@dataclass(frozen=True)
class Summary:
    """Page 1: the recommendation, why, on which conditions, and the key numbers."""

    recommendation: str
    css: str
    ask: str
    overview: str
    reasons: tuple[str, ...]
    conditions: tuple[str, ...]
    findings: tuple[str, ...]
    kpis: Table
    criteria: Table


@dataclass(frozen=True, kw_only=True)
class Appendix(ProvenanceBlock):
    """Methods, the TRIPOD+AI mapping, the policy in words and the provenance (with the
    hospitals left out of the audit, ``None`` when none)."""

    methods: tuple[MethodNote, ...]
    tripod: Table
    policy: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class SepsisReportView(ReportFrame):
    """Everything the sepsis_ews report template shows (one object per report)."""

    summary: Summary
    sections: tuple[Section, ...]
    appendix: Appendix
    figures: tuple[FigureFile, ...]


# --------------------------------------------------------------------------- helpers
def ci(row: pd.Series | dict[str, Any], col: str, digits: int = 2) -> str:
    """``col`` of a row with its ``*_ci_low``/``*_ci_high`` (or the insufficient-data text)."""
    if row.get("status", "ok") != "ok":
        return insufficient(row["n_pos"], row["n_neg"]) if "n_neg" in row else "insufficient data"
    return fmt_ci(row[col], row.get(f"{col}_ci_low"), row.get(f"{col}_ci_high"), digits)


def group_label(attribute: str, group: str) -> str:
    """``"network"`` for the overall row, else ``"race_ethnicity: Black"``."""
    if attribute == "overall":
        return "network"
    return "vendor held-out (card)" if attribute == "vendor_card" else f"{attribute}: {group}"


def overall(frame: pd.DataFrame) -> pd.Series:
    """The ``overall``/``all`` row of a per-group table."""
    return frame[(frame["attribute"] == "overall") & (frame["group"] == "all")].iloc[0]


# --------------------------------------------------------------------------- 1 summary
def _kpis(res: SepsisAuditResult) -> Table:
    d, b = overall(res.discrimination), overall(res.burden)
    cal, fr = overall(res.calibration), overall(res.fairness_rates)
    vendor = res.discrimination[res.discrimination["attribute"] == "vendor_card"]
    v_note = "no model card (scores-only audit)"
    if len(vendor):
        v = vendor.iloc[0]
        held_out = fmt_ci(v["auroc"], v["auroc_delong_ci_low"], v["auroc_delong_ci_high"])
        diff = fmt_ci(d["auroc_diff_vs_vendor"], d["diff_ci_low"], d["diff_ci_high"])
        v_note = f"vendor held-out {held_out}; difference {diff}, p {fmt_p(d['diff_p'])}"
    rows = [
        ["AUROC", ci(d, "auroc", 3), v_note],
        [
            "AUPRC",
            ci(d, "auprc", 3),
            f"a score without skill scores the prevalence, {fmt_pct(d['prevalence'])}",
        ],
        [
            "Sensitivity (TPR)",
            pct_ci(fr["tpr"], fr["tpr_ci_low"], fr["tpr_ci_high"]),
            "septic stays alerted",
        ],
        [
            "Alert rate",
            pct_ci(b["alert_rate"], b["alert_rate_ci_low"], b["alert_rate_ci_high"]),
            "stays alerted (alert fatigue)",
        ],
        [
            "Alerts per 100 stay-days",
            ci(b, "alerts_per_100_stay_days", 1),
            "exposure: ICU admission to the end of the prediction window",
        ],
        [
            "Missed sepsis per 1,000 stays",
            ci(b, "missed_per_1000_stays", 1),
            "septic stays without an alert",
        ],
        [
            "PPV / alerts per true case",
            f"{pct_ci(b['ppv'], b['ppv_ci_low'], b['ppv_ci_high'])} / {fmt_num(b['nne'], 1)}",
            "alerts evaluated per case found",
        ],
        ["ECE", ci(cal, "ece_width", 3), f"calibration slope {fmt_num(cal['cal_slope'])}"],
    ]
    return table(
        ("Measure", "Network (95% CI)", "Context"),
        rows,
        (24, 28, 48),
        caption="Table 1.1 Key numbers at the vendor's operating threshold.",
        css="compact",
    )


def _criteria_table(criteria: pd.DataFrame) -> Table:
    stat = {"estimate": "", "ci_low": " (lower CI)", "ci_high": " (upper CI)"}
    rows: list[list[str | Cell]] = []
    for r in criteria.itertuples():
        where = "" if r.attribute == "overall" else f" {r.attribute}"
        name = f"{CRITERION_NAMES[r.criterion]}{where}{stat[r.statistic]}"
        value = fmt_ci(r.estimate, r.ci_low, r.ci_high, 3) if finite(r.value) else r.evidence
        rows.append(
            [
                name,
                value,
                f"{COMPARATORS[r.comparator]} {fmt_num(r.limit)}",
                Cell("pass" if r.passed else "fail", "pass" if r.passed else "fail"),
                Cell(
                    f"{fmt_num(r.value_after, 3)} {'pass' if r.passed_after else 'fail'}"
                    if finite(r.value_after)
                    else "insufficient data",
                    "pass" if r.passed_after else "fail",
                ),
                r.evidence,
            ]
        )
    return table(
        ("Criterion", "Value (95% CI)", "Limit", "Vendor threshold", "With mitigation", "Detail"),
        rows,
        (22, 20, 9, 11, 14, 24),
        caption="Table 1.2 Criteria of the policy, at the vendor threshold and with the "
        "mitigation (out-of-fold).",
        css="compact",
    )


def _findings(res: SepsisAuditResult) -> tuple[str, ...]:
    out = []
    for r in res.disadvantaged.itertuples():
        if r.status != "ok":
            out.append(f"{r.attribute}: too few septic stays in all but one group to compare.")
            continue
        versus = (
            f"; vs {r.reference} ({fmt_num(r.reference_tpr)}): "
            f"{fmt_ci(r.diff_vs_reference, r.diff_ci_low, r.diff_ci_high)}"
            if r.group != r.reference
            else f" (the reference group; highest: {r.highest_group})"
        )
        flag = "the CI excludes 0" if r.gap_excludes_zero else "the CI includes 0"
        lead = "Largest gap. " if r.largest else ""
        out.append(
            f"{lead}{r.attribute}: {r.group} patients have the lowest sensitivity, "
            f"{fmt_ci(r.tpr, r.tpr_ci_low, r.tpr_ci_high)} ({int(r.n_pos)} septic stays){versus}. "
            f"Max-min gap {fmt_num(r.max_min_gap)} ({r.highest_group} - {r.group}); {flag}."
        )
    return tuple(out)


def _mitigation_sentence(res: SepsisAuditResult) -> str:
    s = res.summary
    if res.mitigation.empty:
        return "No mitigation was run: no attribute had two groups with enough septic stays."
    m = res.mitigation[res.mitigation["method"] == s["mitigation_method"]].set_index("quantity")
    gap, metric = m.loc[f"{s['mitigation_metric']}_gap"], s["mitigation_metric"].upper()

    def change(q: str, pct: bool = True) -> str:
        r = m.loc[q]
        if pct:
            return (
                f"{100 * r['change']:+.1f} points ({100 * r['change_ci_low']:+.1f} to "
                f"{100 * r['change_ci_high']:+.1f})"
            )
        return fmt_ci(r["change"], r["change_ci_low"], r["change_ci_high"], 1)

    return (
        f"Mitigation ({s['mitigation_method'].replace('_', ' ')} by {s['mitigation_attribute']}, "
        f"cross-fitted): the {metric} gap goes from {fmt_num(gap['before'])} to "
        f"{fmt_ci(gap['after'], gap['after_ci_low'], gap['after_ci_high'])}; sensitivity "
        f"{change('sensitivity')}, alert rate {change('alert_rate')}, missed sepsis per 1,000 "
        f"stays {change('missed_per_1000_stays', pct=False)}."
    )


def summary_section(res: SepsisAuditResult, model: dict[str, Any]) -> Summary:
    """Page 1: recommendation, reasons, conditions, who is failed, key numbers, criteria."""
    s = res.summary
    css, ask = DECISIONS[res.recommendation]
    vendor = f"{model.get('vendor', 'vendor')} model v{model.get('version', '?')}"
    if model.get("mode") == "scores":
        vendor = "vendor scores (CSV)"
    overview = (
        f"The sepsis early-warning score ({vendor}) was audited on {s['n_stays']:,} ICU stays of "
        f"{s['n_hospitals']} hospitals admitted {s['first_month']} to {s['last_month']} "
        f"({fmt_pct(s['prevalence'])} septic). Alerts fire when the score is at least "
        f"{s['threshold']:.3f} ({s['threshold_source']}). Policy {s['policy_id']} "
        f"v{s['policy_version']}."
    )
    if s.get("n_unlabelled"):
        overview += (
            f" {s['n_unlabelled']:,} of the stays have no sepsis label yet: they are in no "
            "measured number and the recommendation is not based on them (the septic share is "
            "that of the labelled stays; the PROVISIONAL section estimates their months)."
        )
    return Summary(
        recommendation=res.recommendation,
        css=css,
        ask=ask,
        overview=overview,
        reasons=res.reasons,
        conditions=res.conditions,
        findings=(*_findings(res), _mitigation_sentence(res)),
        kpis=_kpis(res),
        criteria=_criteria_table(res.criteria),
    )
