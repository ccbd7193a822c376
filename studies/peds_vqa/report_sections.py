"""Sections of the peds_vqa evaluation report, built from the stored evidence (final text)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from clinaudit.audit.types import STATUS_OK
from clinaudit.reporting.kit import Cell, Section, fmt_num, fmt_pct, pct_ci, table
from clinaudit.reporting.report_figures import FigureFile

from .decisions import ALL
from .evidence import SUBGROUPS

__all__ = [
    "calibration_section",
    "controls_section",
    "data_section",
    "discrimination_section",
    "latency_section",
    "limitations_section",
    "localization_section",
    "model_section",
    "subgroup_section",
    "summary_section",
]

_NAMES = {"base": "base (zero-shot)", "tuned": "LoRA-tuned"}


def base_checkpoint(model) -> str | None:
    """The local checkpoint the base model was read from (``--base-model``), or ``None`` when
    it was pretrained here on simulated adult films."""
    source = (model.facts.get("pretraining") or {}).get("source")
    return str(source) if source else None


def _cat(c: str) -> str:
    return c.replace("_", " ")


def _pass(passed: Any) -> Cell:
    if passed is None or (isinstance(passed, float) and pd.isna(passed)):
        return Cell("not evaluated", "muted")
    return Cell("pass", "pass") if bool(passed) else Cell("fail", "fail")


def summary_section(ev, decisions, criteria, policy, simulated: bool, model) -> Section:
    """Section 1: the brief's criteria per category with CIs, pass / fail, and the headline."""
    ops = ev["operating"]
    pooled = ops[(ops["set"] == "pooled_test") & (ops["model"] == "tuned")].set_index("group")
    crit = criteria.set_index(["category", "criterion"])
    rows = []
    for cat in policy.categories:
        verdict = str(decisions.set_index("category").loc[cat, "decision"])
        if cat not in pooled.index:  # no threshold: the validation split lacked yes or no
            rows.append([_cat(cat), "no threshold", _pass(False), "no threshold", _pass(False),
                         "n/a", verdict])  # fmt: skip
            continue
        r = pooled.loc[cat]
        rows.append([
            _cat(cat),
            pct_ci(r["sensitivity"], r["sensitivity_ci_low"], r["sensitivity_ci_high"]),
            _pass(crit.loc[(cat, "sensitivity"), "passed"]),
            pct_ci(r["specificity"], r["specificity_ci_low"], r["specificity_ci_high"]),
            _pass(crit.loc[(cat, "specificity"), "passed"]),
            f"{int(r['n_pos'])} / {int(r['n_neg'])}",
            verdict,
        ])  # fmt: skip
    c = policy.criteria
    main = table(
        ("Category", "Sensitivity (95% CI)", f"≥ {c.sensitivity.threshold:.2f}",
         "Specificity (95% CI)", f"≥ {c.specificity.threshold:.2f}", "yes / no", "Verdict"),
        rows, (20, 19, 9, 19, 9, 11, 13),
        caption="Table 1 The brief's criteria per category: pooled test set, operating "
        "threshold fixed on the validation split (Wilson 95% intervals).",
    )  # fmt: skip
    e = crit.loc[(ALL, "debiased_ece")]
    cal = ev["calibration"]
    row = cal[(cal["set"] == "pooled_test") & (cal["model"] == "tuned")
              & (cal["scale"] == "recalibrated")].iloc[0]  # fmt: skip
    zs = ev["zero_shot"]
    delta = "; ".join(
        f"{_cat(r.category)} {r.auroc_delta:+.3f} ({r.ci_low:+.3f} to {r.ci_high:+.3f})"
        if r.status == STATUS_OK
        else f"{_cat(r.category)} not estimable ({r.n_pos} yes / {r.n_neg} no: too few for DeLong)"
        for r in zs.itertuples()
    )
    overall = str(decisions.set_index("category").loc["overall", "decision"])
    paragraphs = (
        f"Verdict: {overall} for the next research stage "
        + ("(every criterion met). " if overall == "GO" else "(at least one criterion fails, "
           "named below). ")
        + "This is a research-grade evaluation for the advisory board. It makes no clinical "
        "claim and supports no clinical use.",
        f"Calibration (all categories together): debiased ECE "
        f"{fmt_pct(row['debiased_ece'])} (95% CI {fmt_pct(row['debiased_ci_low'])}–"
        f"{fmt_pct(row['debiased_ci_high'])}) on {int(row['n'])} pooled test questions: "
        f"{_pass(e['passed']).text} against ≤ {fmt_pct(c.ece.threshold, 0)}. A perfectly "
        f"calibrated model gives a plug-in ECE of median {fmt_pct(row['perfect_plugin_median'])} "
        f"at this n (ECE ≥ {fmt_pct(c.ece.threshold, 0)} in "
        f"{fmt_pct(row['perfect_plugin_share_ge_limit'], 0)} of simulations), which is why the "
        "criterion uses the debiased estimator.",
        ("Headline, adult → child: AUROC of the LoRA-tuned model minus the adult-pretrained "
         "base model" if base_checkpoint(model) is None else "Headline: AUROC of the "
         "LoRA-tuned model minus the base checkpoint it was tuned from")
        + f" zero-shot, pooled test set (paired DeLong 95% CI): {delta}.",
    ) + (
        ("Every number here comes from SIMULATED images and labels. None of it is comparable to "
         "a published result on real children (Section 10 lists published figures as context "
         "only).",) if simulated else ()
    )  # fmt: skip
    return Section("summary", "1 Verdict against the brief", paragraphs, tables=(main,))


def data_section(ev, cohort: pd.DataFrame, policy, model) -> Section:
    """Section 2: cohort, patient-disjoint splits, the question sets and their completeness."""
    splits = ev.facts["splits"]
    rows = [[s, f"{v['images']:,}", f"{v['patients']:,}"] for s, v in splits.items()]
    split_table = table(("Split", "Images", "Patients"), rows, (40, 30, 30),
                        caption="Table 2 Patient-disjoint splits (salted hash of each "
                        "patient's first landed image).", css="compact")  # fmt: skip
    comp = ev["completeness"]
    short = comp[comp["taken"] < comp["wanted"]]
    ev_cfg = policy.evaluation_set
    n_eval = int(ev.facts["n_evaluation_questions"])
    comp_text = (
        "Every category has its full quota."
        if short.empty
        else "Short of the quota (the test split has too few images; never filled from other "
        "splits): "
        + "; ".join(
            f"{_cat(r.category)} {'yes' if r.answer else 'no'} {r.taken}/{r.wanted}"
            for r in short.itertuples()
        )  # fmt: skip
        + "."
    )
    c = cohort.iloc[0] if len(cohort) else None
    cohort_text = (
        f"{int(c['n_images']):,} images of {int(c['n_patients']):,} patients at "
        f"{len(cohort)} site(s); median age {fmt_num(c['median_age_years'], 1)} years, AP "
        f"{fmt_pct(c['ap_share'], 0)}, {int(c['n_quarantined'])} rows quarantined at ingest."
        if c is not None else "No cohort."
    )  # fmt: skip
    return Section(
        "data", "2 Data and questions",
        (
            cohort_text,
            f"Evaluation set: {n_eval} questions ({len(policy.categories)} categories × "
            f"{ev_cfg.per_category}, {fmt_pct(ev_cfg.yes_share, 0)} answered yes), at most one "
            "per image and category, drawn with seed "
            f"{ev_cfg.seed} from test patients only. {comp_text} Each is also asked in "
            f"{ev_cfg.paraphrases} wordings; {ev_cfg.blank_controls} blank-image and "
            f"{ev_cfg.shuffled_controls} shuffled-image controls. The pooled test set is every "
            f"test image × category ({int(ev.facts['n_pooled_test_questions']):,} questions), "
            "for tighter estimates; the brief's criteria are judged there.",
            "Pretraining data: simulated ADULT chest films (clinaudit's renderer, ages 20-85), "
            "yes/no questions and captions; they never include a child."
            if base_checkpoint(model) is None else
            f"Base model: the local checkpoint {base_checkpoint(model)}, read with "
            "local_files_only and not pretrained here; what it was trained on is its "
            "publisher's statement, not audited by this evaluation.",
        ),
        tables=(split_table,),
    )  # fmt: skip


def model_section(model, fig: FigureFile) -> Section:
    """Section 3: the model as trained (settings the run used) and base vs tuned."""
    f = model.facts
    pre, lora = f.get("pretraining", {}), f.get("lora", {})
    cfg = f.get("config", {})
    towers = (lora.get("lora") or {}).get("modules_by_tower", {})
    settings = f.get("settings", {})
    rows = [
        ["Class", str(model.card.get("model", ""))],
        ["Sizes", f"image {cfg.get('image_size')} px, patch {cfg.get('patch_size')}; vision "
         f"{cfg.get('vision_layers')} layers × {cfg.get('vision_hidden')}; language "
         f"{cfg.get('text_layers')} layers × {cfg.get('text_hidden')}"],
        ["Pretraining", f"{pre.get('n_images', 'n/a')} adult films, "
         f"{(pre.get('settings') or {}).get('epochs', 'n/a')} epochs, "
         f"{fmt_num(pre.get('seconds'), 0)} s" if pre.get("n_images") else
         f"none here: local checkpoint {pre['source']} (local_files_only)"
         if pre.get("source") else "not stated"],
        ["LoRA", f"rank {(lora.get('lora') or {}).get('rank', 'n/a')}, "
         f"{lora.get('n_images', 'n/a')} pediatric training images, "
         f"{(lora.get('settings') or {}).get('epochs', 'n/a')} epochs, "
         f"{lora.get('n_trainable', 'n/a')} trainable parameters, "
         f"{fmt_num(lora.get('seconds'), 0)} s"],
        ["LoRA placement", f"{towers.get('language', 'n/a')} modules in the language model, "
         f"{towers.get('vision', 'n/a')} in the vision tower"],
        ["Settings used", ", ".join(f"{k}={v}" for k, v in sorted(settings.items())
                                    if v is not None) or "supplied packages"],
        ["Reused", "yes (same settings and training data)" if f.get("reused") else "no"],
    ]  # fmt: skip
    return Section(
        "model", "3 Model",
        (
            ("A real Hugging Face vision-language class built from a small configuration, "
             "with a tokenizer trained here." if base_checkpoint(model) is None else
             "A real Hugging Face vision-language class read from a local checkpoint with its "
             "own tokenizer.")
            + " P(yes) = sigmoid(z_yes − z_no) from the first-token logits of one prefill "
            "forward (no generation).",
        ),
        figures=(fig,),
        tables=(table(("Item", "As run"), rows, (22, 78), caption="Table 3 The audited models.",
                      css="compact"),),  # fmt: skip
    )  # fmt: skip


def _ops_rows(ops: pd.DataFrame, set_name: str) -> list[list[str]]:
    rows = []
    part = ops[ops["set"] == set_name]
    for r in part.sort_values(["group", "model"]).itertuples():
        rows.append([_cat(r.group), _NAMES[r.model], fmt_num(r.threshold, 3),
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
        + ", ".join(f"{_cat(r.category)} ({_NAMES[r.model]})" for r in unmet.itertuples())
        + "; the most specific threshold was used."
    ) + "".join(
        f" No threshold for {_cat(r.category)}: its {r.n} validation images are all "
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
        f"{_cat(r.group)} T = {fmt_num(r.temperature, 2)}" if r.method == "temperature"
        else f"{_cat(r.group)} slope {fmt_num(r.slope, 2)}, intercept {fmt_num(r.intercept, 2)}"
        if r.method == "platt" else f"{_cat(r.group)}: {r.method} ({r.refused})"
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
        rows.append([r.control, _cat(r.category), _NAMES[r.model], str(r.n),
                     fmt_pct(r.share_yes, 0), fmt_pct(r.accuracy, 0), orig])  # fmt: skip
    para = [
        [
            _cat(r.category),
            _NAMES[r.model],
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
        rows.append([r.method, _cat(r.category), str(r.n),
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


def limitations_section(simulated: bool, model) -> Section:
    """Section 10: limitations, data-set bias and the anchors (context only)."""
    return Section(
        "limitations", "10 Limitations and context",
        (
            ("The images, labels and boxes are SIMULATED (a procedural renderer with pediatric "
             "anatomy). A model that does well here has learned the renderer; it says nothing "
             "about real children. Real data: land a local VinDr-PCXR copy "
             "(python -m clinaudit.sources.vindr_pcxr) and re-run this audit." if simulated
             else "Evaluated on the landed data only; other hospitals, devices and age mixes "
             "may differ."),
            "Data-set bias: one hospital, one label source (radiologist boxes; a finding is "
            "positive when any reader marked it), four categories only; no lateral views, no "
            "comparison with priors, no clinical context. "
            + ("The adult pretraining data are simulated adults." if base_checkpoint(model) is None
               else "The base checkpoint's own training data are not audited here."),
            "Small numbers: 25 yes / 25 no questions per category give sensitivity intervals "
            "about ±0.15 wide (21/25 = 0.84, 95% CI 0.65–0.94); the pooled test set narrows "
            "them, the evaluation set does not. ECE at n = 200 is dominated by sampling noise; "
            "the debiased estimator and the perfect-calibration reference are shown for that.",
            "Maps: Grad-CAM and rollout explain a tiny model's vision tower; agreement with a "
            "box is not evidence of clinical reasoning (CheXlocalize: Grad-CAM fell short of "
            "radiologists on all 10 pathologies).",
            "Published figures, context only, never comparable to the simulated results above: "
            "VinDr-PCXR (9,125 pediatric studies) predecessor baseline AUROC 0.709, sensitivity "
            "0.722 / specificity 0.579; Kermany 2018 pneumonia sensitivity 0.932 / specificity "
            "0.901; adult-trained models drop on children (AUC 0.95 → 0.82; foundation models "
            "0.88 → 0.57); zero-shot GPT-4.1 on pediatric pneumonia 0.84 / 0.76.",
        ),
    )  # fmt: skip
