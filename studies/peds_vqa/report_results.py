"""Result sections of the peds_vqa evaluation report (final text): answers at the fixed
operating point, calibration, blank / shuffled controls and paraphrases, subgroups,
localization maps and time per question. The verdict, data, model and limitations sections are
in :mod:`.report_sections`."""

from __future__ import annotations

import pandas as pd

from clinaudit.audit.types import STATUS_OK
from clinaudit.reporting.kit import Section, fmt_num, fmt_pct, pct_ci, table
from clinaudit.reporting.report_figures import FigureFile

from .evidence import SUBGROUPS
from .report_sections import MODEL_NAMES, category_name

__all__ = [
    "calibration_section",
    "controls_section",
    "discrimination_section",
    "latency_section",
    "localization_section",
    "subgroup_section",
]


def _ops_rows(ops: pd.DataFrame, set_name: str) -> list[list[str]]:
    rows = []
    part = ops[ops["set"] == set_name]
    for r in part.sort_values(["group", "model"]).itertuples():
        rows.append([category_name(r.group), MODEL_NAMES[r.model], fmt_num(r.threshold, 3),
                     pct_ci(r.sensitivity, r.sensitivity_ci_low, r.sensitivity_ci_high),
                     pct_ci(r.specificity, r.specificity_ci_low, r.specificity_ci_high),
                     pct_ci(r.accuracy, r.accuracy_ci_low, r.accuracy_ci_high),
                     f"{fmt_num(r.auroc, 3)} ({fmt_num(r.auroc_ci_low, 3)}–"
                     f"{fmt_num(r.auroc_ci_high, 3)})"])  # fmt: skip
    return rows


def discrimination_section(ev, policy) -> Section:
    """Section 4: thresholds from validation, metrics on the evaluation and pooled test sets."""
    header = ("Category", "Model", "Threshold", "Sensitivity", "Specificity", "Accuracy",
              "AUROC (95% CI)")  # fmt: skip
    widths = (15, 15, 9, 16, 16, 14, 15)
    ops = ev["operating"]
    thr = ev["thresholds"]
    missing = thr[thr["status"] != STATUS_OK]
    unmet = thr[(thr["status"] == STATUS_OK) & ~thr["met"].astype(bool)]
    note = (
        "Every threshold met the validation specificity floor."
        if unmet.empty
        else "No validation threshold reached the specificity floor for: "
        + ", ".join(
            f"{category_name(r.category)} ({MODEL_NAMES[r.model]})" for r in unmet.itertuples()
        )
        + "; the most specific threshold was used."
    ) + "".join(
        f" No threshold for {category_name(r.category)}: its {r.n} validation images are all "
        f"{'yes' if r.n_pos else 'no'}, so it is not evaluated at an operating point and is "
        "NO-GO (insufficient data)."
        for r in missing[missing["model"] == "tuned"].itertuples()
    )
    return Section(
        "discrimination",
        "4 Answers at the fixed operating point",
        (
            "Each category's threshold on recalibrated P(yes) is the highest validation "
            f"sensitivity at validation specificity ≥ "
            f"{policy.operating_point.min_specificity:.2f}; test questions never choose it. "
            + note,
        ),
        tables=(
            table(
                header,
                _ops_rows(ops, "evaluation_set"),
                widths,
                css="compact",
                caption="Table 4 The evaluation set (Wilson 95% CIs; DeLong for AUROC).",
            ),
            table(
                header,
                _ops_rows(ops, "pooled_test"),
                widths,
                css="compact",
                caption="Table 5 The pooled test set.",
            ),
        ),  # fmt: skip
    )


def calibration_section(ev, policy, fig: FigureFile) -> Section:
    """Section 5: ECE beside the perfectly calibrated reference at the same n."""
    rows = []
    for r in ev["calibration"].itertuples():
        if r.model != "tuned":
            continue
        rows.append([r.set.replace("_", " "), r.scale, f"{r.n:,}",
                     f"{fmt_pct(r.plugin_ece)} ({fmt_pct(r.plugin_ci_low)}–"
                     f"{fmt_pct(r.plugin_ci_high)})",
                     f"{fmt_pct(r.perfect_plugin_median)} (p95 {fmt_pct(r.perfect_plugin_p95)})",
                     f"{fmt_pct(r.debiased_ece)} ({fmt_pct(r.debiased_ci_low)}–"
                     f"{fmt_pct(r.debiased_ci_high)})",
                     f"{fmt_pct(r.perfect_debiased_median)} (p95 "
                     f"{fmt_pct(r.perfect_debiased_p95)})"])  # fmt: skip
    cal = policy.calibration
    rel = ev["reliability"]
    share = rel[["frac_pos", "mean_p"]].mul(rel["n"], axis=0).groupby(rel["set"]).sum().div(
        rel.groupby("set")["n"].sum(), axis=0)  # fmt: skip
    shift = ""
    if {"pooled_test", "evaluation_set"} <= set(share.index):
        pt_yes, (es_yes, es_p) = share.loc["pooled_test", "frac_pos"], share.loc["evaluation_set"]
        shift = (
            f" Share of yes: pooled test set {fmt_pct(pt_yes, 0)}, evaluation set "
            f"{fmt_pct(es_yes, 0)} (mean P(yes) there {fmt_pct(es_p, 0)})."
        )
        if abs(es_yes - pt_yes) >= 0.10:
            shift += (
                " P(yes) is calibrated to the cohort's prevalence, so on an evaluation set "
                "sampled to another share of yes (policy evaluation_set.yes_share) its ECE "
                "largely reflects that sampling; the criterion is judged on the pooled test set."
            )
    fits = ev["calibrators"]
    tuned = fits[fits["model"] == "tuned"]
    fit_text = "; ".join(
        f"{category_name(r.group)} T = {fmt_num(r.temperature, 2)}" if r.method == "temperature"
        else f"{category_name(r.group)} slope {fmt_num(r.slope, 2)}, "
             f"intercept {fmt_num(r.intercept, 2)}"
        if r.method == "platt" else f"{category_name(r.group)}: {r.method} ({r.refused})"
        for r in tuned.itertuples()
    )  # fmt: skip
    return Section(
        "calibration", "5 Calibration",
        (
            f"{cal.method.capitalize()} scaling per category fitted on the calibration split "
            f"(tuned model: {fit_text}). ECE with {cal.n_bins} "
            f"{'equal-mass' if cal.binning == 'mass' else 'equal-width'} bins; intervals are "
            f"{cal.n_boot:,} bootstrap resamples of images. The plug-in ECE is biased upwards at "
            "small n; the debiased estimator (Kumar et al. 2019) subtracts each bin's sampling "
            f"variance. 'Perfect' columns: the same estimator on {cal.n_sim:,} samples drawn from "
            "the model's own probabilities (a perfectly calibrated model at this n). The "
            "plug-in bootstrap interval describes spread and may not contain the estimate."
            + shift,
        ),
        figures=(fig,),
        tables=(table(
            ("Set", "P(yes)", "n", "Plug-in ECE (CI)", "Perfect: plug-in", "Debiased ECE (CI)",
             "Perfect: debiased"),
            rows, (13, 11, 7, 19, 16, 19, 15), css="compact",
            caption="Table 6 Calibration of the tuned model."),),
    )  # fmt: skip


def controls_section(ev) -> Section:
    """Section 6: blank / shuffled images and paraphrase consistency."""
    rows = []
    for r in ev["controls"].sort_values(["control", "category", "model"]).itertuples():
        orig = "" if pd.isna(r.accuracy_original) else fmt_pct(r.accuracy_original, 0)
        rows.append([r.control, category_name(r.category), MODEL_NAMES[r.model], str(r.n),
                     fmt_pct(r.share_yes, 0), fmt_pct(r.accuracy, 0), orig])  # fmt: skip
    para = [
        [
            category_name(r.category),
            MODEL_NAMES[r.model],
            str(r.n_questions),
            str(r.n_wordings),
            fmt_pct(r.all_agree, 0),
            fmt_num(r.mean_p_range, 3),
        ]
        for r in ev["paraphrases"].sort_values(["category", "model"]).itertuples()
    ]
    return Section(
        "controls", "6 Does it look at the image? Controls and paraphrases",
        (
            "Blank images (uniform grey): the right answer is no. Shuffled images: an evaluation "
            "question asked about a test image whose answer is the opposite; a model that "
            "answers from the words alone gets these wrong while it gets the originals right. "
            "Paraphrases: the same question in other wordings (one never seen in tuning); the "
            "answer should not change.",
        ),
        tables=(
            table(("Control", "Category", "Model", "n", "Says yes", "Correct", "Originals"),
                  rows, (12, 20, 20, 8, 13, 13, 14), css="compact",
                  caption="Table 7 Image controls at each category's threshold."),
            table(("Category", "Model", "Questions", "Wordings", "All agree", "Mean P range"),
                  para, (22, 22, 14, 14, 14, 14), css="compact",
                  caption="Table 8 Paraphrase consistency on the evaluation set."),
        ),
    )  # fmt: skip


def subgroup_section(ev) -> Section:
    """Section 7: age band, view and sex on the pooled test set (tuned model)."""
    sub = ev["subgroups"]
    rows = []
    for attr in SUBGROUPS:
        part = sub[(sub["attribute"] == attr) & (sub["model"] == "tuned")]
        for r in part.sort_values("group").itertuples():
            rows.append(
                [
                    attr.replace("_", " "),
                    r.group,
                    f"{r.n_pos} / {r.n_neg}",
                    pct_ci(r.sensitivity, r.sensitivity_ci_low, r.sensitivity_ci_high),
                    pct_ci(r.specificity, r.specificity_ci_low, r.specificity_ci_high),
                ]
            )
    return Section(
        "subgroups", "7 Subgroups",
        ("All categories together, each question at its category's threshold (pooled test set, "
         "tuned model). Small groups have wide intervals: read them before the point values.",),
        tables=(table(("Attribute", "Group", "yes / no", "Sensitivity (95% CI)",
                       "Specificity (95% CI)"), rows, (16, 14, 14, 28, 28), css="compact",
                      caption="Table 9 Subgroups."),),
    )  # fmt: skip


def localization_section(ev, policy, fig: FigureFile | None) -> Section:
    """Section 8: maps scored against boxes, faithfulness and the randomisation check."""
    s = ev["localization_summary"]
    rows = []
    for r in s.itertuples() if len(s) else ():
        rows.append([r.method, category_name(r.category), str(r.n),
                     pct_ci(r.hit_rate, r.hit_ci_low, r.hit_ci_high, 0),
                     f"{fmt_num(r.energy_mean, 2)} (box {fmt_num(r.box_area_mean, 2)})",
                     fmt_num(r.iou_mean, 2)])  # fmt: skip
    f = ev["faithfulness"]
    faith = (
        "; ".join(f"{m}: deletion AUC {fmt_num(g['deletion_auc'].mean(), 3)}, insertion AUC "
                  f"{fmt_num(g['insertion_auc'].mean(), 3)}" for m, g in f.groupby("method"))
        if len(f) else "no true-positive answer to test"
    )  # fmt: skip
    rnd = ev["randomization"]
    rand = (
        "; ".join(f"{r.method}: median Spearman ρ {fmt_num(r.median_rho, 2)} (IQR "
                  f"{fmt_num(r.q25, 2)}–{fmt_num(r.q75, 2)}, n {r.n}) - "
                  + ("FAILS (maps barely depend on the weights)" if r.fails else "passes")
                  for r in rnd.itertuples())
        if len(rnd) else "not run (no true-positive answer)"
    )  # fmt: skip
    cfg = policy.localization
    empty = (
        int(s.loc[s["category"] == "all", "empty_maps"].sum())
        if len(s) and "empty_maps" in s
        else 0
    )
    return Section(
        "localization", "8 Localization maps",
        (
            "Maps of the tuned model on true-positive answers of the evaluation set, scored "
            "against the category's ground-truth box: pointing hit (the centre of the map's peak "
            f"cell inside the box; Wilson CI), share of map energy in the box (uniform map = box "
            f"area), IoU of the map thresholded at its {cfg.map_quantile:.0%} quantile. "
            "Grad-CAM targets z_yes − z_no on the vision tower's last layer; attention rollout "
            "is question-agnostic (a weaker, second method). "
            f"Empty maps (no patch supports yes; counted as misses): {empty}.",
            f"Faithfulness (RISE, mean-grey baseline, first {cfg.faithfulness_answers} answers, "
            f"lower deletion / higher insertion is better than the random map): {faith}.",
            f"Model-randomisation sanity check (Adebayo et al. 2018; first "
            f"{cfg.randomization_answers} answers): {rand}.",
        ),
        figures=(fig,) if fig else (),
        tables=(table(("Method", "Category", "n", "Hit rate (95% CI)", "Energy in box",
                       "IoU"), rows, (14, 24, 8, 22, 18, 14), css="compact",
                      caption="Table 10 Localization on true-positive answers."),),
        new_page=True,
    )  # fmt: skip


def latency_section(ev) -> Section:
    """Section 9: median and p95 seconds per question on the hardware named."""
    lat = ev["latency"]
    if lat.empty:
        return Section("latency", "9 Time per question", ("No question was timed.",))
    r = lat.iloc[0]
    sec = lat["seconds"]
    text = (
        f"{len(lat)} evaluation questions answered one at a time by the tuned model on "
        f"{r['hardware']} ({r['device']}, {int(r['threads'])} threads, {r['precision']}): median "
        f"{fmt_num(1000 * sec.median(), 1)} ms, p95 {fmt_num(1000 * sec.quantile(0.95), 1)} ms "
        f"per question. Vision encoding is cached per image ({int((~lat['cached']).sum())} "
        f"encodings, median {fmt_num(1000 * lat.loc[~lat['cached'], 'encode_seconds'].median(), 1)}"
        f" ms); the prefill alone has median "
        f"{fmt_num(1000 * lat['prefill_seconds'].median(), 1)} ms. Model loading is not counted. "
        "bench/bench_peds_vqa_latency.py compares this path with a naive generate() loop."
    )
    return Section("latency", "9 Time per question", (text,))
