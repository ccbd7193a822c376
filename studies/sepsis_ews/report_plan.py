"""Sections 6-7 of the sepsis_ews report: mitigation of the largest gap, monitoring plan."""

from __future__ import annotations

import pandas as pd

from clinaudit.reporting.kit import (
    Cell,
    Section,
    Table,
    finite,
    fmt_ci,
    fmt_num,
    fmt_pct,
    pct_ci,
    table,
)
from clinaudit.reporting.report_figures import FigureFile

from .figures import drift_svg, mitigation_svg
from .policy import SepsisPolicy
from .report_sections import METRIC_NAMES
from .result import SepsisAuditResult

# --------------------------------------------------------------------------- 6 mitigation
_QUANTITIES = {
    "sensitivity": ("Sensitivity", True),
    "specificity": ("Specificity", True),
    "alert_rate": ("Alert rate", True),
    "ppv": ("PPV", True),
    "nne": ("Alerts per true case", False),
    "missed_per_1000_stays": ("Missed / 1,000 stays", False),
    "alerts_per_100_stay_days": ("Alerts / 100 stay-days", False),
}


def _value(r: pd.Series, key: str, pct: bool) -> str:
    low, high = r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
    if key == "change":
        if pct:
            return (
                f"{100 * r['change']:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})"
                if finite(r["change"])
                else "not estimable"
            )
        return fmt_ci(r["change"], low, high, 2)
    return pct_ci(r[key], low, high) if pct else fmt_ci(r[key], low, high, 2)


def _mitigation_table(res: SepsisAuditResult) -> Table:
    m = res.mitigation
    methods = list(dict.fromkeys(m["method"]))
    attr, metric = res.summary["mitigation_attribute"], res.summary["mitigation_metric"]
    keys: list[tuple[str, str, str, bool]] = [
        (f"{metric}_gap", "max-min", f"{metric.upper()} gap", False)
    ]
    for grp in dict.fromkeys(m.loc[m["quantity"] == metric, "group"]):
        keys.append((metric, grp, f"{metric.upper()} {grp}", True))
    keys += [(q, "all", name, pct) for q, (name, pct) in _QUANTITIES.items()]
    rows: list[list[str | Cell]] = []
    for quantity, group, name, pct in keys:
        hit = m[(m["quantity"] == quantity) & (m["group"] == group)]
        if hit.empty:
            continue
        first = hit.iloc[0]
        if first["status"] != "ok":
            rows.append(
                [name, Cell("insufficient data: vendor threshold kept", "muted")]
                + [""] * len(methods) * 2
            )
            continue
        row: list[str | Cell] = [name, _value(first, "before", pct)]
        for method in methods:
            r = hit[hit["method"] == method].iloc[0]
            row += [_value(r, "after", pct), _value(r, "change", pct)]
        rows.append(row)
    header = ("Quantity", "Vendor threshold")
    for method in methods:
        header += (method.replace("_", " "), "change")
    widths = (19, 17, *([16, 16] if len(methods) == 1 else [16, 16, 16, 16][: 2 * len(methods)]))
    widths = (*widths[:-1], 100 - sum(widths[:-1]))
    return table(
        header,
        rows,
        widths,
        caption=f"Table 6.1 The {metric.upper()} gap across {attr} and what it costs: before and "
        "after each method, out-of-fold, with paired 95% CIs (changes of rates in percentage "
        "points).",
        css="compact",
    )


def _effects_table(res: SepsisAuditResult) -> Table:
    e = res.mitigation_effects
    rows: list[list[str | Cell]] = []
    for r in e[e["quantity"].str.endswith("_gap")].itertuples():
        if r.status != "ok":
            rows.append(
                [
                    r.attribute,
                    METRIC_NAMES[r.quantity[:-4]],
                    Cell("insufficient data", "muted"),
                    "",
                    "",
                ]
            )
            continue
        rows.append(
            [
                r.attribute,
                f"{METRIC_NAMES[r.quantity[:-4]]} gap",
                fmt_num(r.before),
                fmt_num(r.after),
                Cell(
                    fmt_ci(r.change, r.change_ci_low, r.change_ci_high),
                    "fail" if r.change_ci_excludes_zero and r.change > 0 else "",
                ),
            ]
        )
    return table(
        ("Attribute", "Gap", "Before", "After", "Change (95% CI)"),
        rows,
        (24, 18, 16, 16, 26),
        caption="Table 6.2 Effect of the main method on every attribute's gaps (max-min over "
        "groups with enough cases).",
        css="compact",
    )


def _thresholds_text(res: SepsisAuditResult) -> str:
    t = res.mitigation_thresholds
    main = t[(t["fold"] == -1) & (t["method"] == res.summary["mitigation_method"])]
    parts = [
        f"{r.group} {fmt_num(r.threshold, 3)}" for r in main.itertuples() if finite(r.threshold)
    ]
    return (
        f"Deployable thresholds (fitted on all stays): {', '.join(parts)}; vendor threshold "
        f"{fmt_num(res.summary['threshold'], 3)} for every other stay."
    )


def mitigation_section(res: SepsisAuditResult) -> Section:
    """Before/after of each method with CIs, effects on other attributes, thresholds, caveats."""
    s = res.summary
    if res.mitigation.empty:
        return Section(
            "mitigation",
            "6 Mitigation of the largest gap",
            (
                "No mitigation was run: no attribute had two groups with enough septic "
                "and non-septic stays to fit and evaluate a group-aware rule.",
            ),
            bullets_title="Caveats of group-aware rules",
            bullets=res.caveats,
        )
    attr, metric = s["mitigation_attribute"], s["mitigation_metric"]
    figure = FigureFile(
        "mitigation.svg",
        mitigation_svg(res.mitigation, attr, metric, simulated=s["simulated"]),
        f"{metric.upper()} per {attr} group before and after mitigation",
        f"Figure 6.1 {metric.upper()} of each {attr} group at the vendor threshold (grey) and "
        "after each method (out-of-fold, 95% CI).",
        width="80%",
    )
    text = (
        f"The largest {metric.upper()} gap lies across {attr}. Each method was fitted on 4 of 5 "
        "stay-disjoint folds and applied to the fifth, so every 'after' number is out-of-sample; "
        f"the main method is {s['mitigation_method'].replace('_', ' ')} (per-group thresholds "
        "giving every group the pooled sensitivity), the alternative fairlearn's "
        "ThresholdOptimizer (randomised between two thresholds per group). " + _thresholds_text(res)
    )
    return Section(
        "mitigation",
        "6 Mitigation of the largest gap",
        (text,),
        (figure,),
        (_mitigation_table(res), _effects_table(res)),
        bullets_title="Legal and ethical caveats of using the attribute at run time",
        bullets=res.caveats,
        new_page=True,
    )


# --------------------------------------------------------------------------- 7 monitoring
def _limit(x: float, direction: str) -> str:
    if direction == "relative":
        return f"±{100 * x:.0f}%"
    if direction == "change":
        return f"±{100 * x:.0f} pts"
    return fmt_num(x, 3)


def _plan_table(plan: pd.DataFrame) -> Table:
    rows: list[list[str | Cell]] = []
    for r in plan.itertuples():
        monthly = (
            f"{fmt_num(r.audit_monthly_min, 3)} to {fmt_num(r.audit_monthly_max, 3)}"
            if finite(r.audit_monthly_min)
            else "too few cases per month"
        )
        rows.append(
            [
                r.item,
                r.scope,
                fmt_num(r.baseline, 3),
                _limit(r.warn_threshold, r.direction),
                _limit(r.action_threshold, r.direction),
                monthly,
                f"{r.window_stays:,} ({r.window_months} mo)",
                r.cadence,
                Cell("suspends" if r.suspends else "review", "fail" if r.suspends else ""),
            ]
        )
    return table(
        (
            "Item",
            "Scope",
            "Baseline",
            "Warn",
            "Action",
            "Audit months (range)",
            "Window stays",
            "Cadence",
            "Action",
        ),
        rows,
        (17, 21, 8, 7, 7, 13, 11, 8, 8),
        caption="Table 7.1 Monitoring plan: what is watched, thresholds, windows and cadence.",
        note="Warn/action are absolute values except '±%' (relative change of the alert rate) and "
        "'± pts' (change of a missing rate). Window: stays needed so that the action threshold is "
        "two standard errors from the baseline (judge pooled windows of that size at the cadence).",
        css="compact",
    )


def _drift_table(res: SepsisAuditResult) -> Table:
    d = res.drift
    num = d[(d["kind"] == "numeric") & (d["status"] == "ok")]
    rows: list[list[str | Cell]] = []
    for feature, part in num.groupby("feature", sort=False):
        net = part[part["scope"] == "network"].iloc[0]
        top = part.loc[part["psi"].idxmax()]
        where = "network" if top["scope"] == "network" else f"{top['scope']}={top['group']}"
        css = (
            "fail" if top["psi_level"] == "major" else "warn" if top["psi_level"] != "none" else ""
        )
        rows.append(
            [
                str(feature),
                fmt_num(net["psi"], 3),
                Cell(f"{fmt_num(top['psi'], 3)} ({where})", css),
                f"{fmt_pct(net['missing_rate'], 0)} vs {fmt_pct(net['card_missing_rate'], 0)}",
                f"{fmt_num(net['median'], 1)} vs {fmt_num(net['card_median'], 1)}",
            ]
        )
    return table(
        (
            "Feature",
            "PSI network",
            "Largest PSI (where)",
            "Missing: network vs card",
            "Median: network vs card",
        ),
        rows,
        (18, 13, 31, 20, 18),
        caption="Table 7.2 Drift of each feature against the vendor's training-data summary.",
        css="compact",
    )


def monitoring_section(res: SepsisAuditResult, policy: SepsisPolicy) -> Section:
    """Drift against the card (figure + table) and the monitoring plan with escalation."""
    m, s = policy.monitoring, res.summary
    figures, tables = (), (_plan_table(res.monitoring),)
    drift_text = "Scores-only audit: no training-data summary, so no drift against the vendor."
    if not res.drift.empty:
        features = list(dict.fromkeys(res.drift.loc[res.drift["kind"] == "numeric", "feature"]))
        figures = (
            FigureFile(
                "drift.svg",
                drift_svg(
                    res.drift,
                    features,
                    simulated=s["simulated"],
                    moderate=res.settings["extra"]["psi_moderate"],
                    major=res.settings["extra"]["psi_major"],
                ),
                "PSI per feature against the vendor's training data",
                "Figure 7.1 PSI of each feature against the card's quantiles (network and "
                "hospitals; a lower bound for integer-valued features, see Methods).",
            ),
        )
        tables = (*tables, _drift_table(res))
        drift_text = (
            "Inputs are compared with the vendor's training-data summary (quantiles and missing "
            "rates in the model card) for the network, each hospital and each group; labs are "
            "missing not at random, so missing rates are compared too. A PSI above a cut-off "
            "but within the PSI that sampling noise alone reaches at the group's size is shown, "
            "not flagged (see Methods)."
        )
    rule = (
        f"Deployed rule: {s['deployed_rule']}. Inputs are checked {m.cadence_inputs}, outcomes "
        f"{m.cadence_outcomes} (sepsis labels need chart review). A warning notifies "
        f"{m.escalation[0]}; an action threshold notifies {', '.join(m.escalation)}. Alerts are "
        f"suspended after {m.suspend_after_consecutive_actions} consecutive windows past an "
        f"outcome or alert-rate action threshold: {m.suspension}. Drift alone triggers an "
        "unscheduled outcome review, not a suspension."
    )
    return Section(
        "monitoring", "7 Input drift and monitoring plan", (drift_text, rule), figures, tables
    )
