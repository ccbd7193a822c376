"""Sections of the peds_vqa evaluation report, built from the stored evidence (final text): the
verdict, data, model and limitations sections; the result sections (operating point,
calibration, controls, subgroups, localization, time) are in :mod:`.report_results`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from clinaudit.audit.types import STATUS_OK
from clinaudit.reporting.kit import Cell, Section, fmt_num, fmt_pct, pct_ci, table
from clinaudit.reporting.report_figures import FigureFile

from .decisions import ALL

__all__ = [
    "MODEL_NAMES",
    "base_checkpoint",
    "category_name",
    "data_section",
    "limitations_section",
    "model_section",
    "summary_section",
]

#: How the report names the two models.
MODEL_NAMES = {"base": "base (zero-shot)", "tuned": "LoRA-tuned"}


def base_checkpoint(model) -> str | None:
    """The local checkpoint the base model was read from (``--base-model``), or ``None`` when
    it was pretrained here on simulated adult films."""
    source = (model.facts.get("pretraining") or {}).get("source")
    return str(source) if source else None


def category_name(c: str) -> str:
    """A category as the report writes it (``interstitial_opacity`` -> ``interstitial opacity``)."""
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
            rows.append([category_name(cat), "no threshold", _pass(False), "no threshold",
                         _pass(False), "n/a", verdict])  # fmt: skip
            continue
        r = pooled.loc[cat]
        rows.append([
            category_name(cat),
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
        f"{category_name(r.category)} {r.auroc_delta:+.3f} ({r.ci_low:+.3f} to {r.ci_high:+.3f})"
        if r.status == STATUS_OK
        else f"{category_name(r.category)} not estimable "
        f"({r.n_pos} yes / {r.n_neg} no: too few for DeLong)"
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
            f"{category_name(r.category)} {'yes' if r.answer else 'no'} {r.taken}/{r.wanted}"
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
