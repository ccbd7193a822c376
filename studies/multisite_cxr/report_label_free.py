"""Section 8 of the multisite_cxr report: sites without labels (PROVISIONAL) and the estimates
frozen by an earlier package scored against the labels that have landed since.

Shown only when the audit has a site without labels or scored estimates. Every number comes from
the evidence's ``label_free*`` tables and the decisions' ``provisional*`` tables; the assumptions
are stated next to the numbers, and a withheld estimate says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from clinaudit.reporting.kit import Cell, Table, fmt_ci, fmt_num, fmt_pct, table

__all__ = ["ASSUMPTIONS", "LabelFreeSection", "label_free_section"]

#: What the estimates assume, in plain words (printed with every PROVISIONAL table).
ASSUMPTIONS: tuple[str, ...] = (
    "No concept shift: at the site, a given score means the same risk of the finding as on the "
    "vendor's reference split (the calibration learned there is reused). Label noise or a "
    "different reading practice at the site breaks this, and no method without labels can "
    "detect it.",
    "Inputs inside the reference's support: an estimate is withheld when the site's "
    "image-quality features drift past the policy's drift level, or when more of its scores "
    "fall outside the reference's score range than expected.",
    "Prevalence shift is corrected (EM re-estimation of the prior) only when the data identify "
    "it; otherwise the reference's score-to-risk relation is used as is.",
    "These are estimates, not measurements: calibration (ECE) cannot be estimated without "
    "labels, and the intervals cover the sampling and calibration uncertainty only.",
)
_METRICS = ("auroc", "sensitivity", "specificity", "prevalence")


@dataclass(frozen=True)
class LabelFreeSection:
    """PROVISIONAL decisions and estimates, and frozen estimates scored."""

    text: str
    assumptions: tuple[str, ...]
    provisional: Table | None
    estimates: Table | None
    scored_text: str
    scored: Table | None


def _estimate_cell(rows: pd.DataFrame, metric: str) -> Cell:
    row = rows[(rows["metric"] == metric) & (rows["method"] == "cbpe")]
    if not len(row):
        return Cell("not estimated", "muted")
    r = row.iloc[0]
    if not bool(r["estimable"]):
        return Cell("withheld", "fail")
    return Cell(fmt_ci(r["estimate"], r["ci_low"], r["ci_high"]))


def _estimates_table(estimates: pd.DataFrame, critical: tuple[str, ...], level: float) -> Table:
    rows: list[list[str | Cell]] = []
    for (site, finding), g in estimates.groupby(["site", "finding"], sort=True):
        if finding not in critical:
            continue
        rows.append([str(site), str(finding), *(_estimate_cell(g, m) for m in _METRICS)])
    withheld = estimates[~estimates["estimable"].astype(bool)]
    reasons = withheld.drop_duplicates(["site", "finding"])
    note = "; ".join(f"{r.site} {r.finding}: {r.reason}" for r in reasons.itertuples())
    note = f"Withheld: {note}" if note else ""
    return table(
        ("Site", "Finding", "AUROC", "Sensitivity", "Specificity", "Prevalence"),
        rows,
        (14, 18, 17, 17, 17, 17),
        caption=f"PROVISIONAL label-free estimates of the critical findings ({level:.0%} "
        "intervals); every finding is in label_free.csv",
        note=note,
    )


def _provisional_table(provisional: pd.DataFrame) -> Table:
    rows: list[list[str | Cell]] = []
    for r in provisional.itertuples(index=False):
        css = "nogo" if r.decision == "NO-GO" else "conditional"
        rows.append([str(r.site), Cell(f"{r.decision} (PROVISIONAL)", css), str(r.reasons)])
    return table(
        ("Site", "Provisional decision", "Why"),
        rows,
        (14, 26, 60),
        caption="Provisional decisions of sites without labels (policy: unlabelled_sites)",
    )


def _scored_table(summary: pd.DataFrame) -> Table:
    rows: list[list[str | Cell]] = []
    for r in summary.itertuples(index=False):
        better = pd.notna(r.ratio) and r.ratio < 1
        rows.append([
            str(r.site), str(r.metric), f"{int(r.estimable)} of {int(r.cells)}",
            fmt_num(r.mae, 3), fmt_num(r.baseline_mae, 3),
            Cell(fmt_num(r.ratio, 2), "pass" if better else "fail"), fmt_num(r.bias, 3),
            fmt_pct(r.coverage, 0), str(r.frozen_in),
        ])  # fmt: skip
    return table(
        ("Site", "Metric", "Scored cells", "Error", "Baseline error", "Ratio", "Bias",
         "Covered", "Frozen in"),
        rows,
        (10, 11, 9, 8, 9, 8, 8, 8, 29),
        caption="Frozen estimates vs the realised values now that labels have landed "
        "(mean absolute error over findings; baseline: carry the reference value forward)",
        note="Per cell in label_free_scored.csv. Covered: share of scored cells whose frozen "
        "interval holds the realised value.",
    )  # fmt: skip


def label_free_section(
    estimates: pd.DataFrame,
    scored: pd.DataFrame,
    summary: pd.DataFrame,
    provisional: pd.DataFrame,
    facts: Mapping[str, Any],
    *,
    critical: tuple[str, ...],
    simulated: bool,
) -> LabelFreeSection | None:
    """The section, or ``None`` when the audit has no site without labels and nothing scored."""
    sites = list(facts.get("unlabelled_sites", []))
    if not sites and not len(summary) and not facts.get("not_scored"):
        return None
    settings = facts["settings"]
    level = float(settings["ci_level"])
    who = (
        f"PROVISIONAL. {len(sites)} site(s) landed images without labels: {', '.join(sites)}. "
        "Their performance is estimated"
        if sites
        else "Every site of this audit is labelled. Estimates frozen by an earlier package "
        "were made"
    )
    text = (
        f"{who} without labels by "
        "confidence-based estimation: the model's scores are recalibrated on "
        f"{settings['reference']} (isotonic), expected AUROC and rates at the operating "
        f"threshold follow from the recalibrated risks, and {level:.0%} intervals come from "
        f"{settings['n_boot']} predictive bootstrap replicates that refit the calibrator (seed "
        f"{settings['seed']}). A confidence-threshold (ATC) accuracy is computed as a "
        "cross-check. These numbers are estimates under the assumptions below, never measured "
        "performance; they are frozen in the signed package and scored when the site's labels "
        "land."
    )
    if simulated:
        text += " The data are simulated."
    not_scored = facts.get("not_scored") or {}
    scored_text = (
        "No earlier package froze estimates for a site that is labelled now."
        if not len(summary)
        else f"{len(set(summary['site']))} site(s) were estimated without labels by an earlier "
        "signed package and are labelled now; their frozen estimates are scored against the "
        "realised values on the same images where those were labelled."
    )
    if not_scored:
        scored_text += " Not scored: " + "; ".join(f"{k}: {v}" for k, v in not_scored.items())
    refused = facts.get("packages_refused") or []
    if refused:
        scored_text += " Earlier packages not read (failed verification): " + "; ".join(refused)
    return LabelFreeSection(
        text=text,
        assumptions=ASSUMPTIONS,
        provisional=_provisional_table(provisional) if len(provisional) else None,
        estimates=_estimates_table(estimates, critical, level) if len(estimates) else None,
        scored_text=scored_text,
        scored=_scored_table(summary) if len(summary) else None,
    )
