"""Sections 2-5 of the sepsis_ews report: cohort, discrimination, calibration, fairness.

Each builder turns :class:`~clinaudit.studies.sepsis_ews.result.SepsisAuditResult` tables into
final text cells and figure files (formats in :mod:`clinaudit.reporting.kit`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from clinaudit.reporting.kit import (
    Cell,
    Section,
    Table,
    fmt_ci,
    fmt_num,
    fmt_pct,
    insufficient,
    pct_ci,
    table,
)
from clinaudit.reporting.report_figures import FigureFile

from .figures import auroc_forest_svg, group_rates_svg, reliability_svg
from .report_view import ci, group_label, overall
from .result import SepsisAuditResult

METRIC_NAMES = {"tpr": "TPR", "fpr": "FPR", "ppv": "PPV", "selection_rate": "alert rate"}


# --------------------------------------------------------------------------- 2 cohort
def intake_notes(intake: Mapping[str, Any]) -> list[str]:
    """What ingest set aside: stays quarantined (and their vendor scores), absent features."""
    notes = []
    rows = dict(intake.get("rows_quarantined", {}))
    aside = dict(intake.get("scores_set_aside", {}))
    if rows:
        where = ", ".join(f"{h} {n}" for h, n in sorted(rows.items()))
        n_aside = sum(aside.values())
        scores = (
            f"; their {n_aside} vendor score(s) were set aside (not audited, not taken for "
            "unknown stays)"
            if n_aside
            else ""
        )
        notes.append(
            f"{sum(rows.values())} stays were quarantined at ingest ({where}; Table 2.3, records "
            f"in tables/quarantine.csv) and are not audited{scores}. The audit runs on the "
            "other stays."
        )
    absent = dict(intake.get("absent_features", {}))
    if absent:
        named = "; ".join(f"{h}: {', '.join(f)}" for h, f in sorted(absent.items()))
        notes.append(
            f"Optional model-feature columns absent from the stays table ({named}): no drift "
            "against the model card is computed for them."
        )
    return notes


def _quality_table(kept: pd.DataFrame, quarantine: pd.DataFrame) -> Table:
    rows: list[list[str | Cell]] = []
    by_hospital = kept.set_index(kept["hospital"].astype(str))
    hospitals = sorted(set(by_hospital.index) | set(quarantine["site"].astype(str)))
    for h in hospitals:
        n_batches, n_stays = (
            (int(by_hospital.at[h, "n_batches"]), int(by_hospital.at[h, "n_stays"]))
            if h in by_hospital.index
            else (0, 0)
        )
        q = quarantine[quarantine["site"].astype(str) == h]
        err = q[q["severity"] == "error"]
        bad_rows = err.dropna(subset=["row"]).drop_duplicates(["batch", "row"])
        failed = err[err["row"].isna()]["batch"].nunique()
        checks = (
            ", ".join(
                f"{c.replace('_', ' ')} ({n})"
                for c, n in err["check"].value_counts().sort_index().items()
            )
            or "none"
        )
        rows.append(
            [
                h,
                str(n_batches),
                f"{n_stays:,}",
                str(len(bad_rows)),
                Cell(str(failed), "fail" if failed else ""),
                Cell(checks, "fail" if len(err) else ""),
            ]
        )
    return table(
        (
            "Hospital",
            "Batches kept",
            "Stays kept",
            "Rows quarantined",
            "Batches refused",
            "Error checks (records)",
        ),
        rows,
        (14, 11, 11, 13, 12, 39),
        caption="Table 2.3 Validation and quarantine per hospital.",
        note="A row with any error is quarantined with the file, line, column, check and fix "
        "(records in the package); a batch failing its manifest or structure is refused whole. "
        "Landed files are never modified.",
        css="compact",
    )


def cohort_section(
    res: SepsisAuditResult,
    kept: pd.DataFrame,
    quarantine: pd.DataFrame,
    left_out: Mapping[str, str],
) -> Section:
    """Hospitals, group composition against the vendor's population, data quality.

    ``kept``: per hospital the batches and stays kept by validation (``hospital``, ``n_batches``,
    ``n_stays``); ``quarantine``: every quarantine record (incl. stays left out as landed at
    several hospitals); ``left_out``: hospitals validated but not audited, and why.
    """
    c = res.cohort
    rows = [
        [
            r.hospital,
            f"{r.n_stays:,}",
            f"{r.n_sepsis:,}",
            fmt_pct(r.prevalence),
            f"{r.first_month} to {r.last_month}",
            fmt_num(r.window_hours, 0),
            fmt_num(r.age_median, 0),
            fmt_pct(r.female_share),
        ]
        for r in c.itertuples()
    ]
    hospitals = table(
        (
            "Hospital",
            "Stays",
            "Septic",
            "Prevalence",
            "Admissions",
            "Window (h)",
            "Median age",
            "Female",
        ),
        rows,
        (16, 10, 9, 11, 20, 11, 11, 12),
        caption="Table 2.1 Stays per hospital after validation (aggregate counts only).",
        css="compact",
    )
    comp = res.composition
    has_card = comp["card_share"].notna().any()
    comp_rows = [
        [
            r.attribute,
            r.group,
            f"{r.n_stays:,}",
            fmt_pct(r.share),
            fmt_pct(r.prevalence),
            fmt_pct(r.card_share) if has_card else "no card",
        ]
        for r in comp.itertuples()
    ]
    composition = table(
        ("Attribute", "Group", "Stays", "Share", "Prevalence", "Vendor training share"),
        comp_rows,
        (20, 14, 12, 14, 16, 24),
        caption="Table 2.2 Protected groups in the network and in the vendor's training data.",
        css="compact",
    )
    net = c.iloc[-1]
    text = (
        f"{int(net['n_stays']):,} validated stays ({int(net['n_sepsis']):,} septic, "
        f"{fmt_pct(net['prevalence'])}) from {len(c) - 1} hospitals. The stays table carries no "
        "patient identifier, so every interval resamples stays."
    )
    notes = []
    if left_out:
        named = "; ".join(f"{h}: {why}" for h, why in sorted(left_out.items()))
        notes.append(
            f"Left out of this audit although landed ({len(left_out)} hospital"
            f"{'s' if len(left_out) > 1 else ''}, listed in appendix D): {named}."
        )
    n_excluded, n_unmatched = len(res.excluded_stays), len(res.unmatched_scores)
    if n_excluded:
        notes.append(
            f"{n_excluded} stays are left out because their stay id was landed at several "
            "hospitals (every copy; records in tables/quarantine.csv, Table 2.3)."
        )
    if n_unmatched:
        notes.append(
            f"{n_unmatched} rows of the vendor's network-wide scores file belong to no validated "
            "stay (nor to a stay quarantined at ingest) and are not audited (records in "
            "tables/unmatched_scores.csv)."
        )
    notes += intake_notes(res.intake)
    return Section(
        "cohort",
        "2 Cohort and data quality",
        (text, *notes),
        tables=(hospitals, composition, _quality_table(kept, quarantine)),
    )


# --------------------------------------------------------------------------- 3 discrimination
def discrimination_section(res: SepsisAuditResult) -> Section:
    """AUROC forest plot, and AUROC/AUPRC/sensitivity/specificity/PPV per group."""
    d = res.discrimination
    figure = FigureFile(
        "auroc_forest.svg",
        auroc_forest_svg(d, simulated=res.summary["simulated"]),
        "AUROC with 95% CI per hospital and group",
        "Figure 3.1 AUROC (95% CI, stay bootstrap) "
        "of the network, each hospital and each group; dashed: the vendor's held-out AUROC.",
        width="92%",
    )
    rows: list[list[str | Cell]] = []
    for _, r in d.iterrows():
        label = group_label(str(r["attribute"]), str(r["group"]))
        if r["attribute"] == "vendor_card":
            rows.append(
                [
                    label,
                    f"{int(r['n_pos'])} / {int(r['n']):,}",
                    fmt_ci(r["auroc"], r["auroc_delong_ci_low"], r["auroc_delong_ci_high"], 3),
                    "not in card",
                    fmt_pct(r["sensitivity"]),
                    fmt_pct(r["specificity"]),
                    "not in card",
                ]
            )
            continue
        if r["status"] != "ok":
            rows.append(
                [
                    label,
                    f"{int(r['n_pos'])} / {int(r['n']):,}",
                    Cell(insufficient(r["n_pos"], r["n_neg"]), "muted"),
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        rows.append(
            [
                label,
                f"{int(r['n_pos'])} / {int(r['n']):,}",
                ci(r, "auroc", 3),
                ci(r, "auprc", 3),
                pct_ci(r["sensitivity"], r["sensitivity_ci_low"], r["sensitivity_ci_high"], 0),
                pct_ci(r["specificity"], r["specificity_ci_low"], r["specificity_ci_high"], 0),
                pct_ci(r["ppv"], r["ppv_ci_low"], r["ppv_ci_high"], 0),
            ]
        )
    tab = table(
        ("Group", "Septic / stays", "AUROC", "AUPRC", "Sensitivity", "Specificity", "PPV"),
        rows,
        (21, 11, 15, 15, 13, 13, 12),
        caption="Table 3.1 Discrimination and the operating point (95% CI).",
        css="compact",
    )
    o = overall(d)
    vendor = d[d["attribute"] == "vendor_card"]
    compare = ""
    if len(vendor):
        compare = (
            f" The vendor reported {fmt_num(vendor['auroc'].iloc[0], 3)} on its own held-out stays "
            f"(interval from its counts, Hanley-McNeil); the network's difference is "
            f"{fmt_ci(o['auroc_diff_vs_vendor'], o['diff_ci_low'], o['diff_ci_high'], 3)}."
        )
    worst = d[(d["status"] == "ok") & ~d["attribute"].isin(["overall", "vendor_card"])]
    low = worst.loc[worst["auroc"].idxmin()] if len(worst) else None
    low_text = ""
    if low is not None:
        name = group_label(low["attribute"], low["group"])
        low_text = f" The lowest AUROC is {name}, {ci(low, 'auroc', 3)}."
    text = f"Network AUROC {ci(o, 'auroc', 3)}, AUPRC {ci(o, 'auprc', 3)}.{compare}{low_text}"
    return Section("discrimination", "3 Discrimination", (text,), (figure,), (tab,))


# --------------------------------------------------------------------------- 4 calibration
def _reliability_cells(res: SepsisAuditResult, k: int = 3) -> list[tuple[str, str]]:
    """The network and the ``k`` groups (hospitals included) with the highest ECE."""
    cal = res.calibration[
        (res.calibration["status"] == "ok") & (res.calibration["attribute"] != "overall")
    ]
    worst = cal.sort_values(["ece_width", "attribute", "group"], ascending=[False, True, True])
    return [
        ("overall", "all"),
        *zip(worst["attribute"].head(k), worst["group"].head(k), strict=True),
    ]


def calibration_section(res: SepsisAuditResult) -> Section:
    """Reliability diagrams (network and groups) and ECE / Brier / slope per group."""
    cal = res.calibration
    cells = _reliability_cells(res)
    index = {(r.attribute, r.group): r for r in cal.itertuples()}
    subtitles = [f"ECE {fmt_num(index[c].ece_width, 3)}, n={index[c].n:,}" for c in cells]
    figure = FigureFile(
        "reliability.svg",
        reliability_svg(res.reliability, cells, subtitles, simulated=res.summary["simulated"]),
        "Reliability diagrams of the network and groups",
        "Figure 4.1 Observed sepsis rate (Wilson 95% CI) against the mean predicted probability "
        "in 10 equal-width bins, for the network and the three groups with the highest ECE; the "
        "diagonal is perfect calibration.",
    )
    rows: list[list[str | Cell]] = []
    for r in cal.itertuples():
        label = group_label(r.attribute, r.group)
        if r.status != "ok":
            rows.append(
                [label, f"{r.n:,}", Cell(insufficient(r.n_pos, r.n_neg), "muted"), "", "", "", ""]
            )
            continue
        rows.append(
            [
                label,
                f"{r.n:,}",
                fmt_pct(r.mean_predicted),
                fmt_pct(r.prevalence),
                fmt_ci(r.ece_width, r.ece_width_ci_low, r.ece_width_ci_high, 3),
                fmt_ci(r.brier, r.brier_ci_low, r.brier_ci_high, 3),
                fmt_num(r.cal_slope),
            ]
        )
    tab = table(
        ("Group", "Stays", "Mean predicted", "Observed", "ECE (95% CI)", "Brier (95% CI)", "Slope"),
        rows,
        (22, 9, 12, 10, 18, 19, 10),
        caption="Table 4.1 Calibration per group (ECE: 10 equal-width bins).",
        css="compact",
    )
    o = overall(cal)
    direction = "over-predicts" if o["mean_predicted"] > o["prevalence"] else "under-predicts"
    text = (
        f"The network ECE is {ci(o, 'ece_width', 3)}: on average the score {direction} the "
        f"observed rate ({fmt_pct(o['mean_predicted'])} predicted, {fmt_pct(o['prevalence'])} "
        f"observed); calibration slope {fmt_num(o['cal_slope'])} (1 is ideal; below 1 the "
        "scores are too extreme). Group thresholds do not change the probability shown."
    )
    return Section("calibration", "4 Calibration", (text,), (figure,), (tab,))


# --------------------------------------------------------------------------- 5 fairness
def _gap_table(res: SepsisAuditResult) -> Table:
    g = res.fairness_gaps
    g = g[~g["is_intersection"].astype(bool)]
    rows: list[list[str | Cell]] = []
    for (attr, metric), part in g.groupby(["attribute", "metric"], sort=False):
        mm = part[part["comparison"] == "max_min"].iloc[0]
        vs = part[(part["comparison"] == "vs_reference") & (part["status"] == "ok")]
        if mm["status"] != "ok":
            rows.append(
                [attr, METRIC_NAMES[metric], Cell("insufficient data", "muted"), "", "", ""]
            )
            continue
        worst = vs.loc[vs["difference"].abs().idxmax()] if len(vs) else None
        rows.append(
            [
                attr,
                METRIC_NAMES[metric],
                f"{mm['group']} - {mm['versus']}",
                Cell(
                    fmt_ci(mm["difference"], mm["ci_low"], mm["ci_high"]),
                    "fail" if mm["ci_excludes_zero"] else "",
                ),
                "yes" if mm["ci_excludes_zero_adjusted"] else "no",
                f"{worst['group']} - {worst['versus']}: "
                f"{fmt_ci(worst['difference'], worst['ci_low'], worst['ci_high'])}"
                if worst is not None
                else "reference only",
            ]
        )
    return table(
        (
            "Attribute",
            "Metric",
            "Largest gap (high - low)",
            "Gap (95% CI)",
            "Excludes 0 after Bonferroni",
            "Largest gap vs the reference group (95% CI)",
        ),
        rows,
        (15, 9, 17, 17, 12, 30),
        caption="Table 5.1 Gaps between groups at the vendor threshold (paired bootstrap CIs; "
        "bold red: the CI excludes 0).",
        css="compact",
    )


def _intersection_table(res: SepsisAuditResult, k: int = 6) -> Table:
    r = res.fairness_rates
    inter = r[r["is_intersection"].astype(bool)]
    ok = inter[inter["status"] == "ok"].sort_values("tpr").head(k)
    rows: list[list[str | Cell]] = [
        [
            x.attribute,
            x.group,
            f"{x.n_pos} / {x.n:,}",
            pct_ci(x.tpr, x.tpr_ci_low, x.tpr_ci_high),
            pct_ci(x.fpr, x.fpr_ci_low, x.fpr_ci_high),
        ]
        for x in ok.itertuples()
    ]
    n_small = int((inter["status"] != "ok").sum())
    return table(
        ("Intersection", "Cell", "Septic / stays", "TPR (95% CI)", "FPR (95% CI)"),
        rows,
        (24, 26, 14, 18, 18),
        caption=f"Table 5.2 The {len(rows)} intersectional cells with the lowest sensitivity.",
        note=f"{n_small} of {len(inter)} intersectional cells have too few septic or non-septic "
        "stays for rates; they are in the package tables.",
        css="compact",
    )


def _burden_table(res: SepsisAuditResult) -> Table:
    b = res.burden
    keep = b[
        b["attribute"].isin(["overall", "hospital", res.summary["mitigation_attribute"] or ""])
    ]
    rows = [
        [
            group_label(x.attribute, x.group),
            f"{x.n_stays:,}",
            pct_ci(x.alert_rate, x.alert_rate_ci_low, x.alert_rate_ci_high),
            fmt_ci(
                x.alerts_per_100_stay_days,
                x.alerts_per_100_stay_days_ci_low,
                x.alerts_per_100_stay_days_ci_high,
                1,
            ),
            fmt_ci(
                x.missed_per_1000_stays,
                x.missed_per_1000_stays_ci_low,
                x.missed_per_1000_stays_ci_high,
                1,
            ),
            pct_ci(x.ppv, x.ppv_ci_low, x.ppv_ci_high, 0),
        ]
        for x in keep.itertuples()
    ]
    return table(
        ("Group", "Stays", "Alert rate", "Alerts / 100 stay-days", "Missed / 1,000 stays", "PPV"),
        rows,
        (22, 10, 18, 18, 18, 14),
        caption="Table 5.3 Alert burden and missed sepsis at the vendor threshold (95% CI).",
        css="compact",
    )


def fairness_section(res: SepsisAuditResult, attributes: tuple[str, ...]) -> Section:
    """Rates per group with CIs, gaps, intersections, alert burden; the disadvantaged named."""
    s = res.summary
    figure = FigureFile(
        "group_rates.svg",
        group_rates_svg(
            res.fairness_rates, attributes, simulated=s["simulated"], threshold=s["threshold"]
        ),
        "TPR and FPR per group with 95% CI",
        "Figure 5.1 Sensitivity (TPR) and false-positive rate per group at the vendor threshold "
        "(95% CI; n+ = septic stays). Groups with too few cases are not drawn.",
    )
    refs = ", ".join(f"{a} {g}" for a, g in s["references"].items())
    dis = res.disadvantaged[res.disadvantaged["status"] == "ok"]
    named = [
        f"{r.group} ({r.attribute}, TPR {fmt_num(r.tpr)} vs {fmt_num(r.reference_tpr)} for "
        f"{r.reference})"
        for r in dis.itertuples()
        if r.group != r.reference
    ]
    text = (
        "Rates at the vendor threshold per group; every interval comes from one bootstrap of "
        "all stays, so the gaps' intervals are paired. Reference groups: "
        f"{refs}. Lowest sensitivity per attribute: {'; '.join(named) or 'the reference group'}."
    )
    return Section(
        "fairness",
        "5 Fairness gaps and alert burden",
        (text,),
        (figure,),
        (_gap_table(res), _intersection_table(res), _burden_table(res)),
        new_page=True,
    )
