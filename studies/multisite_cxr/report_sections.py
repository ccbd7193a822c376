"""Sections 2-5 of the multisite_cxr report: cohorts, discrimination, calibration, drift.

Each builder turns the pipeline tables into final text cells (formats in
:mod:`clinaudit.reporting.cxr_view`); the figures are built here too, as deterministic SVG bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from clinaudit.reporting.kit import multiplicity_words
from clinaudit.reporting.report_figures import FigureFile, drift_svg, heatmap_svg, reliability_svg

from .report_view import (
    CalibrationSection,
    Cell,
    CohortSection,
    DiscriminationSection,
    DriftSection,
    Table,
    fmt_ci,
    fmt_num,
    fmt_p,
    fmt_pct,
    insufficient,
    table,
)

STATUS_OK = "ok"
MMD_FEATURE = "__mmd__"


def cell_index(frame: pd.DataFrame) -> dict[tuple[str, str], pd.Series]:
    """Rows of a per-(group, target) table by ``(group, target)``."""
    return {(str(r["group"]), str(r["target"])): r for _, r in frame.iterrows()}


def metric_text(row: pd.Series, metric: str, digits: int = 2) -> str:
    """``metric`` of a cell with its CI, or the insufficient-data text of the cell."""
    if row["status"] != STATUS_OK:
        return insufficient(row["n_pos"], row["n_neg"])
    return fmt_ci(row[metric], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"], digits)


def ordered_groups(metrics: pd.DataFrame) -> list[str]:
    """Sites in name order, the reference group last."""
    ref = set(metrics.loc[metrics["is_reference"].astype(bool), "group"])
    groups = sorted(set(metrics["group"]) - ref)
    return groups + sorted(ref)


def _human(check: str) -> str:
    return check.replace("_", " ")


def cohort_section(
    cohort: pd.DataFrame,
    quarantine: pd.DataFrame,
    reference: str,
    audited: Sequence[str] | None = None,
    intake: Mapping[str, Mapping[str, int]] | None = None,
) -> CohortSection:
    """Sites, counts, demographics, prevalence and validation results; ``audited`` are the
    decided sites (a validated site left out of the audit is counted apart); ``intake`` the
    evidence stage's images quarantined and vendor scores set aside per site."""
    cohort = cohort.sort_values("site", kind="stable")
    q = quarantine.copy()
    demo_rows = []
    for _, r in cohort.iterrows():
        qs = q[q["site"] == r["site"]]
        err, warn = int((qs["severity"] == "error").sum()), int((qs["severity"] == "warning").sum())
        name = f"{r['site']} (reference)" if r["site"] == reference else str(r["site"])
        demo_rows.append(
            [
                name,
                f"{int(r['n_images']):,}",
                f"{int(r['n_patients']):,}",
                fmt_num(r["age_median"], 0),
                fmt_pct(r["female_share"]),
                fmt_pct(r["ap_share"]),
                f"{err} / {warn}",
            ]
        )
    demographics = table(
        ("Site", "Images", "Patients", "Median age", "Female", "AP views", "Quarantine err / warn"),
        demo_rows,
        (20, 12, 12, 12, 12, 12, 20),
        caption="Table 2.1 Cohorts after validation (aggregate counts only).",
    )
    prev_cols = [c for c in cohort.columns if c.startswith("prev_")]
    sites = list(cohort["site"])
    prevalence = table(
        ("Finding", *sites),
        [[c.removeprefix("prev_"), *(fmt_pct(v) for v in cohort[c])] for c in prev_cols],
        (22, *_split(78, len(sites))),
        caption="Table 2.2 Prevalence of each finding among labelled images.",
    )
    n_images, n_patients = int(cohort["n_images"].sum()), int(cohort["n_patients"].sum())
    deployment = [s for s in sites if s != reference]
    decided = deployment if audited is None else [s for s in deployment if s in set(audited)]
    text = (
        f"{len(decided)} candidate sites ({', '.join(decided) or 'none'}) were audited against "
        f"the vendor's development site {reference}, whose held-out test split is the reference. "
        f"After validation the landed data hold {n_images:,} images of {n_patients:,} patients."
    )
    if len(decided) < len(deployment):
        skipped = [s for s in deployment if s not in set(decided)]
        text += (
            f" {len(skipped)} validated sites were left out of the audit ({', '.join(skipped)}; "
            "the reasons are on page 1 and in Appendix A)."
        )
    text += _intake_text(intake or {})
    return CohortSection(
        text=text,
        demographics=demographics,
        prevalence=prevalence,
        quarantine=_quarantine_table(q, sites),
    )


def _intake_text(intake: Mapping[str, Mapping[str, int]]) -> str:
    """E.g. " Quarantined at ingest and not audited: site_b 1 image (its vendor score set
    aside)." (empty when nothing was quarantined)."""
    quarantined, aside = dict(intake.get("images_quarantined", {})), intake.get("scores_set_aside")
    if not quarantined:
        return ""
    parts = []
    for site, n in sorted(quarantined.items()):
        text = f"{site} {n} image{'s' if n != 1 else ''}"
        k = int((aside or {}).get(site, 0))
        if k:
            text += f" (the vendor's scores of {k} set aside, not audited)"
        parts.append(text)
    return f" Quarantined at ingest and not audited: {'; '.join(parts)}."


def _split(total: int, n: int) -> tuple[int, ...]:
    """``n`` integer widths summing to ``total``."""
    base = [total // n] * n
    for k in range(total - sum(base)):
        base[k] += 1
    return tuple(base)


def _quarantine_table(q: pd.DataFrame, sites: Sequence[str]) -> Table:
    rows: list[list[str | Cell]] = []
    for site in sites:
        part = q[q["site"] == site]
        if part.empty:
            rows.append([site, "no problem found", "", "", "0", "every landed row kept"])
            continue
        part = part.assign(column=part["column"].fillna("(whole file)").astype(str))
        for (check, column, severity), grp in part.groupby(["check", "column", "severity"]):
            n, in_rows = len(grp), int(grp["row"].notna().sum())
            if severity != "error":
                effect = "reported, rows kept"
            else:
                files = n - in_rows
                parts = [f"{in_rows} rows removed"] if in_rows else []
                if files:
                    parts.append(
                        f"{files} {'file or batch' if files == 1 else 'files or batches'} excluded"
                    )
                effect = ", ".join(parts)
            css = "fail" if severity == "error" else ""
            rows.append(
                [site, _human(str(check)), column, Cell(str(severity), css), str(n), effect]
            )
    return table(
        ("Site", "Check", "Column", "Severity", "Records", "Effect"),
        rows,
        (14, 30, 16, 12, 10, 18),
        caption="Table 2.3 Validation and quarantine records per site and check.",
        note="Errors remove the row (or refuse a structurally broken batch); warnings are "
        "reported only. Record texts are kept in the audit package, not printed here.",
    )


def discrimination_section(
    metrics: pd.DataFrame,
    *,
    targets: Sequence[str],
    critical: Sequence[str],
    simulated: bool,
    p_adjust: str,
) -> DiscriminationSection:
    """AUROC heatmap, AUPRC per cell and the operating point of the critical findings
    (``p_adjust``: the multiplicity adjustment the audit ran with)."""
    words = multiplicity_words(p_adjust)
    groups = ordered_groups(metrics)
    idx = cell_index(metrics)
    heat = FigureFile(
        name="auroc_heatmap.svg",
        data=heatmap_svg(metrics, targets=targets, simulated=simulated),
        alt="AUROC per site and finding with 95% confidence intervals",
        caption="Figure 3.1 AUROC per site (columns) and finding (rows), 95% patient-clustered "
        "bootstrap CI; cells with too few positives say so.",
        width="82%",
    )
    auprc = table(
        ("Finding", *groups),
        [[t, *(_maybe(idx, g, t, "auprc") for g in groups)] for t in targets],
        (16, *_split(84, len(groups))),
        caption="Table 3.1 AUPRC (95% CI). A model without skill scores the prevalence "
        "(Table 2.2).",
        css="compact",
    )
    op_rows: list[list[str | Cell]] = []
    for t in critical:
        for g in groups:
            r = idx.get((g, t))
            if r is None:
                continue
            base = [t, g, f"{int(r['n_pos'])} / {int(r['n'])}", fmt_num(r["threshold"], 3)]
            if r["status"] != STATUS_OK:
                op_rows.append(
                    [*base, Cell(insufficient(r["n_pos"], r["n_neg"]), "muted"), "", "", ""]
                )
                continue
            ref = bool(r["is_reference"])
            op_rows.append(
                [
                    *base,
                    metric_text(r, "sensitivity"),
                    metric_text(r, "specificity"),
                    "reference"
                    if ref
                    else fmt_ci(
                        r["auroc_diff_vs_reference"],
                        r["delong_diff_ci_low"],
                        r["delong_diff_ci_high"],
                    ),
                    "" if ref else fmt_p(r["delong_p_adj"]),
                ]
            )
    operating = table(
        (
            "Finding",
            "Site",
            "Pos / n",
            "Threshold",
            "Sensitivity",
            "Specificity",
            "ΔAUROC vs ref. (DeLong CI)",
            f"{words.short} p",
        ),
        op_rows,
        (12, 13, 8, 10, 15, 15, 19, 8),
        caption="Table 3.2 Critical findings at the vendor's operating threshold (95% CI).",
    )
    text = (
        "AUROC measures how well the score ranks images with the finding above those without "
        "(1 = perfect, 0.5 = chance). Sensitivity and specificity are measured at the vendor's "
        "operating threshold; the AUROC difference to the reference uses DeLong's test with "
        f"{words.correction} across all cells."
    )
    return DiscriminationSection(text=text, heatmap=heat, auprc=auprc, operating=operating)


def _maybe(idx: dict[tuple[str, str], pd.Series], g: str, t: str, metric: str) -> str | Cell:
    r = idx.get((g, t))
    if r is None:
        return Cell("not audited", "muted")
    text = metric_text(r, metric)
    return Cell(text, "muted") if r["status"] != STATUS_OK else text


def reliability_cells(
    worst: pd.DataFrame, calibration: pd.DataFrame, k: int = 4
) -> list[tuple[str, str]]:
    """Cells to draw: worst cells whose calibration criterion fired, else the worst ECE cells."""
    fired = worst[worst["calibration_fired"].astype(bool)]
    cells = [(str(g), str(t)) for g, t in fired[["group", "target"]].to_numpy()]
    if len(cells) < k:
        ok = calibration[calibration["status"] == STATUS_OK].sort_values(
            ["ece_width", "group", "target"], ascending=[False, True, True]
        )
        cells += [(str(g), str(t)) for g, t in ok[["group", "target"]].to_numpy()]
    return list(dict.fromkeys(cells))[:k]


def calibration_section(
    calibration: pd.DataFrame,
    reliability: pd.DataFrame,
    worst: pd.DataFrame,
    recalibration: pd.DataFrame | None,
    *,
    cells: Sequence[tuple[str, str]],
    simulated: bool,
) -> CalibrationSection:
    """Reliability diagrams of the worst cells and the ECE table before / after recalibration."""
    cal = cell_index(calibration)
    drawn = [c for c in reliability_cells(worst, calibration) if c in cal]
    figure = None
    if drawn:
        subtitles = [f"ECE {metric_text(cal[c], 'ece_width', 3)}" for c in drawn]
        figure = FigureFile(
            name="reliability.svg",
            data=reliability_svg(reliability, drawn, subtitles, simulated=simulated),
            alt="Reliability diagrams of the worst-calibrated cells",
            caption="Figure 4.1 Reliability of the worst-calibrated cells: observed rate (Wilson "
            "95% CI) against mean predicted probability in 10 equal-width bins; the dashed line "
            "is perfect calibration.",
        )
    if recalibration is None:
        ece = table(
            ("Site", "Finding", "Pos / n", "ECE", "Brier", "Calibration slope"),
            [_ece_plain(cal[c], c) for c in cells if c in cal],
            (16, 18, 12, 22, 18, 14),
            caption="Table 4.1 Calibration of the audited cells (95% CI); site recalibration "
            "was not run in this audit.",
        )
    else:
        recal = cell_index(recalibration)
        ece = table(
            (
                "Site",
                "Finding",
                "Pos / n",
                "Method",
                "ECE before (CI)",
                "ECE after (CI)",
                "Brier before → after",
            ),
            [_ece_recal(recal[c], c) for c in cells if c in recal],
            (9, 13, 9, 11, 20, 20, 18),
            caption="Table 4.1 ECE and Brier score before and after site recalibration (95% CI; "
            "'after' is cross-fitted: each image is scored by a map fitted without it).",
        )
    text = (
        "Calibration asks whether a predicted probability of 30% means the finding is present in "
        "about 30% of such images. ECE is the average gap between predicted and observed rates "
        "(0 = perfect). Site recalibration fits a small monotone map per site and finding."
    )
    return CalibrationSection(text=text, reliability=figure, ece=ece)


def _ece_plain(r: pd.Series, c: tuple[str, str]) -> list[str | Cell]:
    base: list[str | Cell] = [c[0], c[1], f"{int(r['n_pos'])} / {int(r['n'])}"]
    if r["status"] != STATUS_OK:
        return [*base, Cell(insufficient(r["n_pos"], r["n_neg"]), "muted"), "", ""]
    return [
        *base,
        metric_text(r, "ece_width", 3),
        metric_text(r, "brier", 3),
        fmt_num(r["cal_slope"], 2),
    ]


def _ece_recal(r: pd.Series, c: tuple[str, str]) -> list[str | Cell]:
    base: list[str | Cell] = [c[0], c[1], f"{int(r['n_pos'])} / {int(r['n'])}"]
    if r["status"] != STATUS_OK:
        n_neg = int(r["n"]) - int(r["n_pos"])
        return [*base, Cell(insufficient(r["n_pos"], n_neg), "muted"), "", "", ""]
    return [
        *base,
        str(r["method"]),
        metric_text(r, "ece_before", 3),
        metric_text(r, "ece_after", 3),
        f"{fmt_num(r['brier_before'], 3)} → {fmt_num(r['brier_after'], 3)}",
    ]


def drift_section(
    drift: pd.DataFrame,
    *,
    features: Sequence[str],
    psi_moderate: float,
    psi_major: float,
    psi_noise_draws: int,
    alpha: float,
    simulated: bool,
    p_adjust: str,
) -> DriftSection:
    """PSI bars of the image features and, per site, the drifted features and the MMD test
    (levels, noise bound and multiplicity adjustment: the settings the drift stage ran with)."""
    figure = FigureFile(
        name="drift_psi.svg",
        data=drift_svg(
            drift,
            features=features,
            simulated=simulated,
            psi_moderate=psi_moderate,
            psi_major=psi_major,
        ),
        alt="Population stability index per site and image feature",
        caption=f"Figure 5.1 PSI of each image-quality feature against the reference (dashed "
        f"lines: moderate {psi_moderate}, major {psi_major}; bars clipped at 2).",
    )
    rows: list[list[str | Cell]] = []
    for g, part in drift.groupby("group", sort=True):
        uni = part[part["feature"] != MMD_FEATURE]
        img = uni[uni["feature"].isin(features)]
        scores = uni[uni["feature"].str.startswith("score_")]
        meta = uni[~uni["feature"].isin(features) & ~uni["feature"].str.startswith("score_")]
        major = img[img["psi_level"] == "major"].sort_values("psi", ascending=False)
        top = ", ".join(major["feature"].head(3)) or "none"
        mmd = part[part["feature"] == MMD_FEATURE]
        rows.append(
            [
                str(g),
                f"{len(major)} of {len(img)} ({top})",
                _count_level(img, "moderate"),
                _count_level(scores, "major"),
                _count_level(meta, "major"),
                *_mmd_cells(mmd),
            ]
        )
    summary = table(
        (
            "Site",
            "Image features: major PSI",
            "Moderate",
            "Model scores: major",
            "Acquisition metadata: major",
            "MMD² (p adj.)",
            "Multivariate drift",
        ),
        rows,
        (9, 31, 10, 12, 14, 13, 11),
        caption="Table 5.1 Drift per site against the reference sample.",
    )
    text = (
        f"Each site's image-quality features, model scores and acquisition metadata are compared "
        f"with the vendor's reference sample. PSI (population stability index) above "
        f"{psi_moderate} is a moderate shift, above {psi_major} a major one, but only where it "
        "also exceeds the PSI that sampling noise alone reaches at the site's and the reference's "
        f"sample sizes ({psi_noise_draws:,} simulated draws, at most {100 * alpha:g}% chance "
        "that a site without drift is flagged): a PSI above a cut-off but within that noise "
        "bound is not flagged. KS and chi-square "
        f"tests are {multiplicity_words(p_adjust).adjusted}; a kernel MMD permutation test checks "
        "all features jointly."
    )
    return DriftSection(text=text, figure=figure, summary=summary)


def _count_level(part: pd.DataFrame, level: str) -> str:
    return f"{int((part['psi_level'] == level).sum())} of {len(part)}"


def _mmd_cells(mmd: pd.DataFrame) -> list[str | Cell]:
    if mmd.empty:
        return [Cell("not computed", "muted"), Cell("not computed", "muted")]
    r = mmd.iloc[0]
    if r["status"] != STATUS_OK:
        return [Cell(str(r["status"]), "muted"), Cell("not tested", "muted")]
    verdict = Cell("drift", "fail") if bool(r["drifted"]) else Cell("no evidence", "pass")
    return [f"{fmt_num(r['statistic'], 3)} ({fmt_p(r['p_adj'])})", verdict]
