"""peds_vqa evidence: calibration, operating points, metrics with CIs, controls, paraphrases,
subgroups, base (zero-shot) vs LoRA-tuned, plus localization and latency (their own modules).

Order, so that no test question ever chooses anything:

1. per model and category, recalibrate z = z_yes - z_no on the *calibration* split (temperature
   or Platt, policy ``calibration``), canonical wording only; a fit the calibration data refuse
   (e.g. scores that rank "no" answers above "yes" ones: no positive temperature exists) leaves
   that category's P(yes) raw, and the ``calibrators`` table says so and why;
2. per model and category, fix the operating threshold on the *validation* split (highest
   sensitivity at validation specificity >= policy ``operating_point.min_specificity``);
3. judge on the *test* split: the pooled test set (every test image x category, canonical
   wording) and the fixed evaluation set (policy ``evaluation_set``; 4 x 50 questions, 25 yes /
   25 no) with Wilson intervals for sensitivity / specificity / accuracy, DeLong for AUROC, the
   debiased ECE with a bootstrap over images and the ECE a perfectly calibrated model gives at the
   same n; controls (blank and shuffled images) and paraphrase consistency on the evaluation set;
   subgroups (age band, view, sex) on the pooled test set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.calibration_fit import expit, logit
from clinaudit.audit.delong import delong_paired_test
from clinaudit.audit.group_calibration import apply_group_calibrators, fit_group_calibrators
from clinaudit.audit.operating_point import (
    MIN_PER_CLASS,
    choose_threshold,
    per_group_operating_table,
)
from clinaudit.audit.records import TableSet
from clinaudit.audit.selective import TemperatureFit
from clinaudit.audit.small_sample_calibration import (
    ece_with_ci,
    perfect_calibration_reference,
    reliability_table,
)
from clinaudit.audit.types import STATUS_INSUFFICIENT, STATUS_OK, AuditInputError
from clinaudit.studies.base import AuditData

from .latency import latency_table
from .localization import localization_tables
from .model import MODELS, answer_plan
from .policy import PedsVqaPolicy
from .questions import assign_splits, evaluation_set, shuffled_controls

__all__ = ["SUBGROUPS", "answers_table", "evidence_tableset", "thresholded_categories"]

#: Subgroup attributes of the pooled test set (columns of the validated table).
SUBGROUPS: tuple[str, ...] = ("age_band", "view", "sex")


def answers_table(data: AuditData, policy: PedsVqaPolicy) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every site's answers joined to its images' metadata and splits, and the images table.

    Raises
    ------
    AuditInputError
        When the answers were made under another question plan than the policy's (the model
        stage must be re-materialized) or no site has answers.
    """
    plan = answer_plan(policy)
    if dict(data.model.facts.get("plan", {})) != plan:
        raise AuditInputError(
            "model plan", str(data.model.facts.get("plan")), f"the policy's plan {plan}",
            "re-materialize peds_vqa/model and predictions under this policy",
        )  # fmt: skip
    frames, images = [], []
    for site in sorted(data.predictions):
        pred, table = data.predictions[site], data.validated.get(site)
        if table is None or pred.empty:
            continue
        table = table.assign(split=assign_splits(table, plan["shares"], plan["salt"]))
        table = table.assign(site=site, image_key=table["batch"] + "/" + table["file"])
        images.append(table)
        meta = table[["image_key", "site", "patient", *SUBGROUPS]]
        frames.append(pred.assign(site=site).merge(meta, on=["image_key", "site"], how="left"))
    if not frames:
        raise AuditInputError(
            "predictions", "none", "answers of at least one site", "materialize predictions"
        )
    return pd.concat(frames, ignore_index=True), pd.concat(images, ignore_index=True)


def _calibrate(ans: pd.DataFrame, policy: PedsVqaPolicy) -> tuple[pd.DataFrame, pd.DataFrame]:
    cal = policy.calibration
    out, rows = [], []
    for name in MODELS:
        part = ans[ans["model"] == name].copy()
        fit_rows = part[(part["split"] == "calibration") & (part["template"] == 0)]
        groups = fit_rows["category"] if cal.per_category else pd.Series("all", fit_rows.index)
        fits, refused = {}, {}
        for group in sorted(groups.astype(str).unique()):
            rows_g = fit_rows[groups.astype(str) == group]
            try:
                fits.update(fit_group_calibrators(
                    rows_g["answer"], rows_g["z"], [group] * len(rows_g), method=cal.method
                ))  # fmt: skip
            except AuditInputError as err:  # e.g. scores that rank "no" above "yes"
                fits[group] = TemperatureFit(1.0, len(rows_g), np.nan, np.nan)
                refused[group] = str(err)
        target = part["category"] if cal.per_category else pd.Series("all", part.index)
        part["p_raw"] = expit(part["z"].to_numpy(float))
        part["p"] = apply_group_calibrators(part["z"], target.astype(str), fits)
        out.append(part)
        for group, fit in fits.items():
            rows.append(
                {"model": name, "group": group,
                 "method": "none (fit refused)" if group in refused else cal.method,
                 "n_fit": fit.n_fit, "temperature": getattr(fit, "temperature", np.nan),
                 "slope": getattr(fit, "slope", np.nan),
                 "intercept": getattr(fit, "intercept", np.nan),
                 "refused": refused.get(group, "")}
            )  # fmt: skip
    return pd.concat(out, ignore_index=True), pd.DataFrame(rows)


def _thresholds(ans: pd.DataFrame, policy: PedsVqaPolicy) -> pd.DataFrame:
    """Each (model, category) threshold from its validation questions. A category whose
    validation images are all "yes" or all "no" gets no threshold (``NaN``, status
    ``"insufficient data"``): it is reported and judged NO-GO, never guessed."""
    rows = []
    for name in MODELS:
        for cat in policy.categories:
            val = ans[(ans["model"] == name) & (ans["split"] == "validation")
                      & (ans["category"] == cat) & (ans["template"] == 0)]  # fmt: skip
            n_pos = int(val["answer"].sum())
            if min(n_pos, len(val) - n_pos) == 0:
                rows.append({"model": name, "category": cat, "status": STATUS_INSUFFICIENT,
                             "threshold": np.nan, "met": False, "n": len(val), "n_pos": n_pos,
                             "n_neg": len(val) - n_pos, "val_sensitivity": np.nan,
                             "val_specificity": np.nan})  # fmt: skip
                continue
            choice = choose_threshold(
                val["answer"], val["p"], min_specificity=policy.operating_point.min_specificity
            )
            rows.append({"model": name, "category": cat, "status": STATUS_OK,
                         "threshold": choice.threshold, "met": choice.met, "n": choice.n,
                         "n_pos": choice.n_pos, "n_neg": choice.n_neg,
                         "val_sensitivity": choice.sensitivity,
                         "val_specificity": choice.specificity})  # fmt: skip
    return pd.DataFrame(rows)


def thresholded_categories(thr: pd.DataFrame) -> list[str]:
    """Categories with a validation threshold for every model (the others are reported as
    insufficient data and judged NO-GO)."""
    ok = thr.groupby("category", sort=False)["status"].agg(lambda s: bool((s == STATUS_OK).all()))
    return [str(c) for c, good in ok.items() if good]


def _operating(rows: pd.DataFrame, thr: pd.DataFrame, ci: float, group_col: str) -> pd.DataFrame:
    frames = []
    for name in MODELS:
        part = rows[rows["model"] == name]
        th = thr[thr["model"] == name].set_index("category")["threshold"]
        if group_col == "category":
            thresholds = {c: float(th[c]) for c in part["category"].unique()}
        else:  # a subgroup: each row at its own category's threshold, pooled over categories
            shift = logit(part["category"].map(th).to_numpy(float))
            part = part.assign(p=expit(logit(part["p"].to_numpy(float)) - shift))
            thresholds = {g: 0.5 for g in part[group_col].astype(str).unique()}
        table = per_group_operating_table(
            part.assign(**{group_col: part[group_col].astype(str)}), group_col=group_col,
            y_col="answer", p_col="p", thresholds=thresholds, ci_level=ci,
        )  # fmt: skip
        frames.append(table.assign(model=name))
    return pd.concat(frames, ignore_index=True)


def _calibration_rows(
    sets: Mapping[str, pd.DataFrame], policy: PedsVqaPolicy, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    cal = policy.calibration
    rows, rel = [], []
    for set_name, part in sets.items():
        for name in MODELS:
            m = part[part["model"] == name]
            for scale, col in (("raw", "p_raw"), ("recalibrated", "p")):
                y, p = m["answer"].to_numpy(int), m[col].to_numpy(float)
                est = ece_with_ci(
                    y, p, groups=m["image_key"].to_numpy(), n_bins=cal.n_bins,
                    binning=cal.binning, n_boot=cal.n_boot, seed=seed, ci_level=cal.ci_level,
                )  # fmt: skip
                refs = {
                    e: perfect_calibration_reference(
                        p, n_sim=cal.n_sim, seed=seed, estimator=e, n_bins=cal.n_bins,
                        binning=cal.binning,
                    )
                    for e in ("plugin", "debiased")
                }  # fmt: skip
                rows.append(
                    {"set": set_name, "model": name, "scale": scale, "n": est.n,
                     "n_images": est.n_clusters, "plugin_ece": est.plugin_ece,
                     "plugin_ci_low": est.plugin_ci_low, "plugin_ci_high": est.plugin_ci_high,
                     "debiased_ece": est.debiased_ece, "debiased_ci_low": est.debiased_ci_low,
                     "debiased_ci_high": est.debiased_ci_high, "n_bins": est.n_bins,
                     "binning": est.binning, "n_boot": est.n_boot,
                     "perfect_plugin_median": refs["plugin"].median,
                     "perfect_plugin_p95": refs["plugin"].p95,
                     "perfect_plugin_share_ge_limit": refs["plugin"].share_at_or_above(
                         policy.criteria.ece.threshold),
                     "perfect_debiased_median": refs["debiased"].median,
                     "perfect_debiased_p95": refs["debiased"].p95, "n_sim": cal.n_sim}
                )  # fmt: skip
                if scale == "recalibrated" and name == "tuned":
                    rel.append(
                        reliability_table(y, p, n_bins=cal.n_bins, binning=cal.binning,
                                          ci_level=cal.ci_level).assign(set=set_name)
                    )  # fmt: skip
    return pd.DataFrame(rows), pd.concat(rel, ignore_index=True)


def _eval_answers(ans: pd.DataFrame, questions: pd.DataFrame) -> pd.DataFrame:
    keys = ["image_key", "category", "template"]
    sub = ans[ans["control"] == "none"]
    joined = questions.merge(sub.drop(columns=["question", "answer"]), on=keys, how="left")
    if joined["z"].isna().any():
        raise AuditInputError(
            "evaluation set", "questions without answers", "an answer per question and model",
            "re-materialize predictions (the question plan changed)",
        )  # fmt: skip
    return joined


def _controls(ans: pd.DataFrame, ev: pd.DataFrame, shuffled: pd.DataFrame,
              thr: pd.DataFrame) -> pd.DataFrame:  # fmt: skip
    rows = []
    th = thr.set_index(["model", "category"])["threshold"]
    for name in MODELS:
        blank = ans[(ans["model"] == name) & (ans["control"] == "blank")]
        for cat, part in blank.groupby("category"):
            yes = part["p"].to_numpy() >= th[(name, cat)]
            rows.append(
                {
                    "model": name,
                    "control": "blank",
                    "category": cat,
                    "n": len(part),
                    "share_yes": float(yes.mean()),
                    "accuracy": float((~yes).mean()),
                    "accuracy_original": np.nan,
                    "mean_p": float(part["p"].mean()),
                }
            )
        if shuffled.empty:
            continue
        sh = _eval_answers(
            ans[ans["model"] == name], shuffled.drop(columns=["question_id", "original_image_id"])
        )
        orig = ev[(ev["model"] == name)
                  & ev["question_id"].isin(shuffled["question_id"].str[:-1])]  # fmt: skip
        for cat, part in sh.groupby("category"):
            o = orig[orig["category"] == cat]
            right = (part["p"] >= th[(name, cat)]).astype(int) == part["answer"]
            right_o = (o["p"] >= th[(name, cat)]).astype(int) == o["answer"]
            rows.append(
                {
                    "model": name,
                    "control": "shuffled",
                    "category": cat,
                    "n": len(part),
                    "share_yes": float((part["p"] >= th[(name, cat)]).mean()),
                    "accuracy": float(right.mean()),
                    "accuracy_original": float(right_o.mean()) if len(o) else np.nan,
                    "mean_p": float(part["p"].mean()),
                }
            )
    return pd.DataFrame(rows)  # fmt: skip


def _paraphrases(ans: pd.DataFrame, ev: pd.DataFrame, thr: pd.DataFrame, n: int) -> pd.DataFrame:
    rows = []
    th = thr.set_index(["model", "category"])["threshold"]
    for name in MODELS:
        part = ans[(ans["model"] == name) & (ans["control"] == "none")]
        for cat, q in ev[ev["model"] == name].groupby("category"):
            sub = part[(part["category"] == cat) & part["image_key"].isin(q["image_key"])]
            wide = sub.pivot_table(index="image_key", columns="template", values="p")
            yes = wide.ge(th[(name, cat)])
            agree = yes.nunique(axis=1).eq(1)
            rows.append(
                {
                    "model": name,
                    "category": cat,
                    "n_questions": len(wide),
                    "n_wordings": n,
                    "all_agree": float(agree.mean()),
                    "mean_p_range": float((wide.max(axis=1) - wide.min(axis=1)).mean()),
                }
            )
    return pd.DataFrame(rows)  # fmt: skip


def evidence_tableset(data: AuditData, policy: PedsVqaPolicy) -> TableSet:
    """The evidence across sites (see the module docstring)."""
    seed = int(data.model.facts.get("seed", 0))
    ans, images = answers_table(data, policy)
    ans, calibrators = _calibrate(ans, policy)
    thr = _thresholds(ans, policy)
    ci = policy.calibration.ci_level
    canonical = ans[(ans["control"] == "none") & (ans["template"] == 0)]
    pooled = canonical[canonical["split"] == "test"]
    ev_cfg = policy.evaluation_set
    questions, completeness = evaluation_set(
        images, policy.categories, per_category=ev_cfg.per_category,
        yes_share=ev_cfg.yes_share, seed=ev_cfg.seed,
    )  # fmt: skip
    ev = pd.concat([_eval_answers(ans[ans["model"] == m], questions) for m in MODELS])
    shuffled = shuffled_controls(questions, images, n=ev_cfg.shuffled_controls, seed=ev_cfg.seed)
    # Whatever needs a threshold reads only the categories that have one; calibration and the
    # AUROC comparison need none and read every category.
    cats = thresholded_categories(thr)
    if not cats:
        short = thr.drop_duplicates("category")
        raise AuditInputError(
            "validation split",
            "; ".join(f"{r.category}: {r.n_pos} yes / {r.n_neg} no" for r in short.itertuples()),
            "at least one category with both answers among its validation images",
            "land more images (the tiny scale is for tests) or change splits.shares",
        )  # fmt: skip
    th_ans, th_thr = ans[ans["category"].isin(cats)], thr[thr["category"].isin(cats)]
    th_pooled, th_ev = pooled[pooled["category"].isin(cats)], ev[ev["category"].isin(cats)]
    th_shuffled = shuffled[shuffled["category"].isin(cats)]
    pooled_ops = _operating(th_pooled, th_thr, ci, "category").assign(set="pooled_test")
    eval_ops = _operating(th_ev, th_thr, ci, "category").assign(set="evaluation_set")
    calibration, reliability = _calibration_rows(
        {"pooled_test": pooled, "evaluation_set": ev}, policy, seed
    )
    subgroups = pd.concat(
        [_operating(th_pooled, th_thr, ci, a).assign(attribute=a) for a in SUBGROUPS],
        ignore_index=True,
    )
    zero_shot = []
    for cat, part in pooled.groupby("category"):
        wide = part.pivot_table(index="image_key", columns="model", values="p")
        y = part.drop_duplicates("image_key").set_index("image_key")["answer"].loc[wide.index]
        n_pos = int(y.sum())
        n_neg = int(len(y) - n_pos)
        if min(n_pos, n_neg) < MIN_PER_CLASS:  # no DeLong variance: reported, never fatal
            zero_shot.append({"category": cat, "status": STATUS_INSUFFICIENT, "n_pos": n_pos,
                              "n_neg": n_neg, "auroc_delta": np.nan, "ci_low": np.nan,
                              "ci_high": np.nan, "p_value": np.nan})  # fmt: skip
            continue
        test = delong_paired_test(y.to_numpy(), wide["tuned"].to_numpy(), wide["base"].to_numpy(),
                                  ci_level=ci)  # fmt: skip
        zero_shot.append({"category": cat, "status": STATUS_OK, "n_pos": n_pos, "n_neg": n_neg,
                          "auroc_delta": test.difference, "ci_low": test.ci_low,
                          "ci_high": test.ci_high, "p_value": test.p_value})  # fmt: skip
    loc, files = localization_tables(data, th_ev, th_thr, images, policy, seed=seed)
    latency = latency_table(data, questions, images, policy)
    tuned = pooled_ops[pooled_ops["model"] == "tuned"]
    headline = tuned[["group", "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high",
                      "specificity", "specificity_ci_low", "specificity_ci_high", "auroc",
                      "n_pos", "n_neg"]].rename(columns={"group": "category"})  # fmt: skip
    tables = {
        "headline": headline.reset_index(drop=True),
        "calibrators": calibrators,
        "thresholds": thr,
        "operating": pd.concat([pooled_ops, eval_ops], ignore_index=True),
        "calibration": calibration,
        "reliability": reliability,
        "controls": _controls(th_ans, th_ev, th_shuffled, th_thr),
        "paraphrases": _paraphrases(th_ans, th_ev, th_thr, ev_cfg.paraphrases),
        "subgroups": subgroups,
        "zero_shot": pd.DataFrame(zero_shot),
        "evaluation_set": ev[["question_id", "category", "question", "answer", "model", "z",
                              "p", "age_band", "view", "sex"]].reset_index(drop=True),
        "completeness": completeness,
        "latency": latency,
        **loc,
    }  # fmt: skip
    splits = images.groupby("split")["patient"].agg(["size", "nunique"])
    facts: dict[str, Any] = {
        "settings": {
            "calibration": dict(vars(policy.calibration)),
            "min_specificity": policy.operating_point.min_specificity,
            "evaluation_set": dict(vars(ev_cfg)),
            "localization": dict(vars(policy.localization)),
            "seed": seed,
        },
        "splits": {
            s: {"images": int(r["size"]), "patients": int(r["nunique"])}
            for s, r in splits.iterrows()
        },  # fmt: skip
        "n_pooled_test_questions": int(len(pooled) // len(MODELS)),
        "n_evaluation_questions": int(len(questions)),
        "left_out": {},
        "simulated": data.simulated,
    }
    return TableSet(tables, facts=facts, files=files)
