"""Appendix of the multisite_cxr report: methods, reporting checklist and provenance."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from clinaudit.reporting.kit import Cell, MethodNote, Table, multiplicity_words, table

#: Section names used by the checklist (they match the template's headings).
SECTIONS = {
    "1": "1 Executive summary",
    "2": "2 Cohorts and data quality",
    "3": "3 Discrimination",
    "4": "4 Calibration",
    "5": "5 Input drift",
    "6": "6 Worst cells and mitigations",
    "7": "7 Deployment plan",
    "A": "A Methods",
    "B": "B Decision policy",
    "D": "D Provenance",
}


@dataclass(frozen=True)
class ChecklistItem:
    """One reporting-guideline item and where (and how far) this report covers it."""

    guideline: str
    item: str
    topic: str
    sections: str
    filled: str
    note: str


def checklist_items(
    *, recalibrated: bool, retrained: bool, p_adjust: str = "holm"
) -> tuple[ChecklistItem, ...]:
    """TRIPOD+AI (2024) and CLAIM (2024) items, with an honest yes / partly / no per item."""
    t, c = "TRIPOD+AI", "CLAIM"
    updating = "yes" if recalibrated else "no"
    update_note = (
        "site recalibration (cross-fitted)" + (" and focused re-training" if retrained else "")
        if recalibrated
        else "no model updating was run"
    )
    return (
        ChecklistItem(t, "1", "Title", "title page", "partly", "names the study, not the design"),
        ChecklistItem(t, "2", "Abstract", "1", "partly", "executive summary, not structured"),
        ChecklistItem(t, "5", "Data sources", "2", "partly", "sites named; collection dates not"),
        ChecklistItem(t, "6", "Participants, eligibility", "2", "partly", "as exported by sites"),
        ChecklistItem(t, "7", "Data preparation, quality checks", "2, A", "yes", "validation"),
        ChecklistItem(t, "8", "Outcome definition", "2", "partly", "site labels, not adjudicated"),
        ChecklistItem(t, "10", "Sample size", "2", "partly", "counts; no power calculation"),
        ChecklistItem(
            t, "11", "Missing data", "2, A", "yes", "unlabelled rows excluded per finding"
        ),
        ChecklistItem(t, "12", "Analytical methods, CIs", "3-6, A", "yes", "clustered bootstrap"),
        ChecklistItem(t, "13", "Class imbalance", "3", "partly", "AUPRC shown; no resampling"),
        ChecklistItem(t, "14", "Fairness", "3, 4", "partly", "by site only; no sex/age subgroups"),
        ChecklistItem(t, "16", "Development vs evaluation data", "2, A", "yes", "sites external"),
        ChecklistItem(t, "17", "Ethics approval", "", "no", "outside this report"),
        ChecklistItem(t, "18", "Funding, conflicts of interest", "", "no", "outside this report"),
        ChecklistItem(t, "19", "Protocol, pre-specified analysis", "B", "partly", "hashed policy"),
        ChecklistItem(t, "20", "Data and code availability", "D", "partly", "hashes, code version"),
        ChecklistItem(t, "21", "Patient and public involvement", "", "no", "not reported"),
        ChecklistItem(t, "23", "Participant flow and characteristics", "2", "partly", "no diagram"),
        ChecklistItem(t, "24", "Performance with CIs, heterogeneity", "3-5", "yes", "per site"),
        ChecklistItem(t, "25", "Model updating", "4, 6", updating, update_note),
        ChecklistItem(t, "26", "Interpretation, limitations", "1, A", "partly", "short note"),
        ChecklistItem(t, "27", "Implications for use", "7", "yes", "per-site plan"),
        ChecklistItem(c, "9", "De-identification", "2, A", "yes", "PHI removed at ingest"),
        ChecklistItem(c, "15", "Image acquisition", "5", "partly", "metadata drift, no protocol"),
        ChecklistItem(c, "17", "Reference standard", "2", "partly", "site labels, no readers"),
        ChecklistItem(c, "21", "Data partitions, patient-level", "A", "yes", "patient-disjoint"),
        ChecklistItem(c, "22", "Model description", "D", "partly", "model card summary"),
        ChecklistItem(c, "28", "Performance metrics with CIs", "3, 4", "yes", ""),
        ChecklistItem(
            c,
            "29",
            "Statistical tests, multiplicity",
            "3, A",
            "yes",
            f"DeLong, {multiplicity_words(p_adjust).short}",
        ),
        ChecklistItem(c, "30", "Robustness analysis", "A", "partly", "bootstrap only"),
        ChecklistItem(c, "31", "Explainability", "", "no", "not assessed"),
        ChecklistItem(c, "32", "External testing", "3-5", "yes", "every site external"),
        ChecklistItem(c, "37", "Failure analysis", "6", "yes", "worst cells"),
    )


def checklist_table(items: tuple[ChecklistItem, ...]) -> Table:
    """The checklist as a table, yes / partly / no coloured."""
    css = {"yes": "pass", "partly": "warn", "no": "fail"}
    rows: list[list[str | Cell]] = [
        [
            i.guideline,
            i.item,
            i.topic,
            i.sections or "not covered",
            Cell(i.filled, css[i.filled]),
            i.note,
        ]
        for i in items
    ]
    n = {k: sum(i.filled == k for i in items) for k in css}
    return table(
        ("Guideline", "Item", "Topic", "Report section", "Filled", "Note"),
        rows,
        (13, 6, 31, 14, 9, 27),
        caption="Table C.1 Reporting checklist (item numbers of TRIPOD+AI 2024 and CLAIM 2024).",
        note=f"{n['yes']} items filled, {n['partly']} partly, {n['no']} not filled.",
        css="compact",
    )


def methods_notes(
    metrics: pd.DataFrame,
    calibration: pd.DataFrame,
    recalibration: pd.DataFrame | None,
    *,
    psi_moderate: float,
    psi_major: float,
    psi_noise_draws: int,
    simulated: bool,
    p_adjust: str,
    drift_p_adjust: str,
    alpha: float,
) -> tuple[MethodNote, ...]:
    """Methods paragraphs, with the settings the run used (tables and recorded settings)."""
    words = multiplicity_words(p_adjust)
    adjusted = (
        f"adjusted with {words.method} ({words.error} {100 * alpha:.0f}%)"
        if p_adjust != "none"
        else f"not adjusted for multiplicity (per-test level {100 * alpha:.0f}%)"
    )
    if drift_p_adjust == p_adjust:
        drift_words = "Drift tests are adjusted the same way."
    elif drift_p_adjust == "none":
        drift_words = "Drift tests are not adjusted for multiplicity."
    else:
        drift_words = f"Drift tests are adjusted with {multiplicity_words(drift_p_adjust).method}."
    n_boot = int(metrics["n_boot"].max())
    level = f"{100 * float(metrics['ci_level'].iloc[0]):.0f}%"
    n_bins = int(calibration["n_bins"].max())
    notes = [
        MethodNote(
            "Reference and cohorts",
            "Every candidate site is an external test set: the audited model was developed on the "
            "vendor's site only, and that site's patient-disjoint held-out test split is the "
            "reference for every comparison. Unlabelled findings are excluded per finding.",
        ),
        MethodNote(
            "Confidence intervals",
            f"{level} percentile intervals from {n_boot:,} bootstrap resamples of patients "
            "(clustered bootstrap: all images of a resampled patient enter together, so repeat "
            "images do not narrow the interval). A cell with too few positives or negatives for "
            "a stable estimate is reported as insufficient data with its count.",
        ),
        MethodNote(
            "DeLong test and multiplicity",
            "The AUROC difference between a site and the reference uses DeLong's variance for "
            "two independent samples; p-values over all (site, finding) cells are "
            f"{adjusted}. {drift_words}",
        ),
        MethodNote(
            "Calibration",
            f"ECE: weighted mean gap between mean predicted probability and observed rate in "
            f"{n_bins} equal-width bins (equal-mass ECE is in the package); Brier score; "
            "calibration slope from logistic recalibration; reliability bins with Wilson "
            "intervals.",
        ),
        MethodNote(
            "Drift",
            f"PSI over reference-quantile bins (moderate above {psi_moderate}, major above "
            f"{psi_major}). A feature is flagged only when its PSI exceeds both the cut-off and "
            "the PSI that sampling noise alone reaches at this site's and the reference's "
            f"sample sizes (the 1 - {alpha:g}/m quantile of a parametric bootstrap with "
            f"B = {psi_noise_draws:,} draws from the reference's bin proportions; m = features "
            f"tested at the site, so a site without drift is flagged with probability at most "
            f"{100 * alpha:g}%). Two-sample KS test for numeric and chi-square for categorical "
            "features; kernel MMD (Gaussian kernel, median-distance bandwidth, standardised "
            "features) with a permutation p-value.",
        ),
        MethodNote(
            "Worst cells",
            "A criterion (AUROC drop, sensitivity drop at the vendor threshold, ECE above "
            "tolerance) fires only when its CI excludes no harm; cells are ranked by the number "
            "of fired criteria, then by the harm the lower bounds support beyond tolerance.",
        ),
    ]
    if recalibration is not None:
        methods = ", ".join(sorted(set(recalibration["method"].dropna().astype(str))))
        notes.append(
            MethodNote(
                "Cross-fitted recalibration",
                f"Per site and finding, a map ({methods}) is fitted on "
                f"{int(recalibration['n_folds'].max())}-1 patient-disjoint folds and applied to "
                "the held-out fold, so every 'after' number is out-of-fold; the site threshold "
                "restoring the vendor's intended sensitivity is chosen inside the training "
                "folds. The deployed maps are refitted on all rows.",
            )
        )
    notes.append(
        MethodNote(
            "Limitations",
            (
                "All data are simulated: the numbers show how the audit behaves, not how the model "
                "performs on real patients. "
                if simulated
                else ""
            )
            + "Labels are those exported by each site (no reader study); decisions are per "
            "site, without sex or age subgroup analysis; thresholds are the vendor's.",
        )
    )
    return tuple(notes)
