"""The report's PROVISIONAL section: label-free estimates of the unlabelled months.

Present only when some (hospital, month) landed without sepsis labels (the evidence's
``label_free`` table, :mod:`.unlabelled_months`); the rest of the report is that of the labelled
stays, and the recommendation never reads these estimates. The text states the settings the run
used (from the evidence's settings) and the assumptions in plain words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from clinaudit.reporting.kit import Section, fmt_ci, fmt_num, fmt_pct, pct_ci, table

from .result import SepsisAuditResult

__all__ = ["PROVISIONAL_TITLE", "provisional_section"]

PROVISIONAL_TITLE = "PROVISIONAL: unlabelled months"
_METRICS = ("auroc", "sensitivity", "specificity", "prevalence")


def _cell(rows: pd.DataFrame, metric: str) -> str:
    hit = rows[(rows["metric"] == metric) & (rows["method"] == "cbpe")]
    if hit.empty or hit["status"].iloc[0] != "estimated":
        return "withheld"
    r = hit.iloc[0]
    show = pct_ci if metric == "prevalence" else fmt_ci
    return show(r["estimate"], r["ci_low"], r["ci_high"])


def _month_rows(lf: pd.DataFrame) -> tuple[list[list[str]], list[str]]:
    rows, withheld = [], []
    for (h, m), part in lf.groupby(["hospital", "month"], sort=True):
        first = part.iloc[0]
        status = str(first["status"])
        if status == "withheld":
            withheld.append(f"{h} {m}: {first['reason']}.")
        elif bool(part["prior_shift_applied"].any()):
            status = "estimated, prevalence shift corrected"
        atc = part[part["method"] == "atc"]["estimate"]
        cbpe_acc = part[(part["method"] == "cbpe") & (part["metric"] == "accuracy")]["estimate"]
        cross = (
            f"{fmt_num(cbpe_acc.iloc[0])} / {fmt_num(atc.iloc[0])}"
            if status != "withheld" and len(atc) and len(cbpe_acc)
            else "withheld"
        )
        ref = f"{first['reference']} ({int(first['n_reference']):,} stays)"
        rows.append([str(h), str(m), f"{int(first['n_stays']):,}", ref,
                     *(_cell(part, k) for k in _METRICS), cross, status])  # fmt: skip
    return rows, withheld


def _assumptions(lf_settings: Mapping[str, Any]) -> tuple[str, ...]:
    s = lf_settings
    return (
        "No concept shift: the relation between the score and sepsis risk at the hospital in "
        "that month is the one learned on the reference's labelled stays. If how sepsis presents "
        "or is coded changed while the inputs did not, the estimate is confidently wrong; no "
        "label-free method can see that, only the labels will.",
        "Inputs inside the reference's support: a month is withheld, with the reason, when more "
        f"than {fmt_pct(s['max_outside'] + 0.01)} of its scores lie outside the reference's "
        "0.5-99.5 % score range, or when a model input drifted from the reference stays (PSI of "
        f"the month against the reference at least {fmt_num(s['psi_action'])} and above the PSI "
        "that sampling noise alone reaches at the month's size).",
        "Prevalence shift is corrected only when it is identified: the month's prevalence is "
        "re-estimated from its scores (EM) and applied only when the shift is significant and "
        "the month's scores fit a mixture of the reference's septic and non-septic scores; "
        "otherwise the reference's score-to-risk relation is used as it is.",
    )


def _scored_rows(scored: pd.DataFrame) -> list[list[str]]:
    """One row per scored month and metric (the CBPE cells of :mod:`.label_free_scoring`)."""
    rows = []
    for r in scored.itertuples(index=False):
        estimated = pd.notna(r.estimate)
        show = fmt_pct if r.metric == "prevalence" else fmt_num
        rows.append([
            str(r.hospital), str(r.month), str(r.metric),
            pct_ci(r.estimate, r.ci_low, r.ci_high) if estimated and r.metric == "prevalence"
            else fmt_ci(r.estimate, r.ci_low, r.ci_high) if estimated else "withheld",
            show(r.realised) if pd.notna(r.realised) else "n/a",
            fmt_num(r.error) if estimated and pd.notna(r.error) else "",
            fmt_num(r.baseline_error) if pd.notna(r.baseline_error) else "",
            ("yes" if r.covered else "no") if estimated else "",
        ])  # fmt: skip
    return rows


def _scored_part(res: SepsisAuditResult, number: int, k: int) -> tuple[list[str], tuple]:
    """Paragraphs and table of the estimates frozen earlier and scored now (none: empty)."""
    facts = res.label_free_facts.get("frozen") or {}
    paragraphs = [
        f"Not scored: {key}: {why}." for key, why in sorted((facts.get("not_scored") or {}).items())
    ]
    paragraphs += [
        f"A package holding frozen estimates was refused and not read: {why}."
        for why in facts.get("packages_refused") or ()
    ]
    scored = res.label_free_scored
    if scored is None or not len(scored):
        return paragraphs, ()
    scored = scored[scored["finding"] == "sepsis"] if "finding" in scored else scored
    months = scored.drop_duplicates(["hospital", "month"])
    where = "; ".join(
        f"{r.hospital} {r.month} (frozen in {r.frozen_in}, realised on {r.realised_on})"
        for r in months.itertuples(index=False)
    )
    paragraphs.insert(
        0,
        "Estimates frozen earlier, scored against the labels: the signed, verified package that "
        f"estimated a month now labelled was read, and its estimates compared with what the "
        f"labels show: {where}. Error is estimate minus realised value; the baseline carries the "
        "reference's value forward (its error is reference minus realised); covered: the "
        "realised value lies in the frozen interval.",
    )
    tab = table(
        ("Hospital", "Month", "Metric", "Frozen estimate", "Realised", "Error",
         "Baseline error", "Covered"),
        _scored_rows(scored),
        (11, 9, 12, 22, 12, 10, 13, 11),
        caption=(
            f"Table {number}.{k} Estimates frozen earlier, scored against the labels that have "
            "landed since."
        ),
        css="compact",
    )  # fmt: skip
    return paragraphs, (tab,)


def provisional_section(res: SepsisAuditResult, number: int) -> Section | None:
    """Section ``number`` (``None`` when every audited month is labelled and no frozen estimate
    was scored or refused)."""
    lf = res.label_free
    has_lf = lf is not None and len(lf) > 0
    scored_text, scored_tables = _scored_part(res, number, 2 if has_lf else 1)
    if not has_lf and not scored_text:
        return None
    s = res.settings["extra"]["label_free"]
    if not has_lf:
        return Section(
            "provisional",
            f"{number} {PROVISIONAL_TITLE}",
            (
                "Every audited month is labelled now; no month is estimated in this audit. "
                "The label-free estimates an earlier audit froze are checked here against the "
                "labels that landed since.",
                *scored_text,
            ),
            tables=scored_tables,
            bullets_title="Assumptions of these estimates",
            bullets=_assumptions(s),
        )
    rows, withheld = _month_rows(lf)
    n_months = len(rows)
    n_stays = int(lf.groupby(["hospital", "month"])["n_stays"].first().sum())
    level = f"{fmt_num(100 * s['ci_level'], 0)}%"
    months = "; ".join(f"{r[0]} {r[1]} ({r[2]} stays)" for r in rows)
    intro = (
        f"These are estimates, not measurements. {n_stays:,} stays of {n_months} "
        f"hospital-month{'s' if n_months > 1 else ''} landed without sepsis labels (the outcome "
        f"is coded weeks after discharge): {months}. They count in none of the numbers of the "
        "other sections, and the recommendation and its conditions are not based on them. What "
        "their labels will show is estimated from the scores alone; the next audit, once the "
        "labels have landed, measures it and replaces these figures."
    )
    method = (
        "Confidence-based performance estimation: a monotone (isotonic) map from score to "
        "sepsis risk, fitted on the reference's labelled stays, gives each unlabelled stay a "
        "probability of sepsis; the expected AUROC, the sensitivity and specificity at the "
        f"operating threshold {fmt_num(res.settings['threshold'], 3)} and the prevalence follow. "
        f"The {level} intervals are predictive: {s['n_boot']:,} bootstrap replicates "
        f"(seed {s['seed']}) refit the map on resampled reference stays, resample the month and "
        "draw its labels, so they cover what the labels will show, not only the estimate's "
        "error. The reference is the hospital's own labelled stays when they hold at least "
        f"{s['min_reference_pos']} septic and {s['min_reference_neg']} non-septic stays, else "
        "the labelled stays of the whole network. Accuracy is cross-checked by average "
        "thresholded confidence (ATC); a large disagreement is a warning sign."
    )
    paragraphs = [intro, method, *withheld]
    partly = res.label_free_facts.get("unlabelled_in_labelled_months") or {}
    n_partly = sum(int(n) for by_month in partly.values() for n in by_month.values())
    if n_partly:
        paragraphs.append(
            f"{n_partly:,} further unlabelled stays lie in months that also have labelled stays: "
            "they count in no number and are not estimated."
        )
    tab = table(
        ("Hospital", "Month", "Stays", "Reference", "AUROC", "Sensitivity", "Specificity",
         "Prevalence", "Accuracy CBPE / ATC", "Status"),
        rows,
        (9, 8, 6, 11, 11, 11, 11, 11, 10, 12),
        caption=(
            f"Table {number}.1 PROVISIONAL label-free estimates of the unlabelled months, with "
            f"{level} predictive intervals (estimates, not measurements)."
        ),
        css="compact",
    )  # fmt: skip
    return Section(
        "provisional",
        f"{number} {PROVISIONAL_TITLE}",
        (*paragraphs, *scored_text),
        tables=(tab, *scored_tables),
        bullets_title="Assumptions of these estimates",
        bullets=_assumptions(s),
    )
