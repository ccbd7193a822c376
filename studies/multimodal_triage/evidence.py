"""Evidence of study ``multimodal_triage``: what the hand-off document and the decision read.

From the validated pairs and the arms' probabilities (0 % notes removed unless stated):

* ``composition``: pairs, patients, categories, skin tones and missing notes per clinic x split;
* ``discrimination``: accuracy, macro F1 and per-category sensitivity / specificity / precision
  / F1 of every arm on the in-distribution test split and on the held-out clinic
  (clustered bootstrap over patients, :func:`~clinaudit.audit.multiclass.multiclass_audit`);
* ``fusion_vs_single``: paired bootstrap interval of fusion minus each single-modality arm, on
  the same held-out (and in-distribution) cases; ``best_single`` marks the baseline with the best
  *validation* macro F1 (chosen before any test set is looked at);
* ``domain_shift``: the in-distribution -> held-out drop of accuracy and macro F1 per arm
  (normal interval from the two independent bootstrap intervals);
* ``note_removal``: every arm with 0 / 30 / 70 % of the present notes removed;
* ``deferral_rule``: the review score (fitted on the validation split), the rule certified on
  the calibration split (:func:`~clinaudit.audit.deferral.certify_deferral`) and what it did on
  the in-distribution test split and at the held-out clinic (exact intervals);
* ``selective``: AURC / AUGRC of the review score against the max-softmax baseline;
  ``risk_coverage``: the curves (for the figure); ``deferral_where``: deferral rates by true
  category, clinic, skin tone and note presence;
* ``tone_audit``: :func:`~clinaudit.audit.group_gaps.group_gaps` at the held-out clinic over
  Fitzpatrick type and group under annotator A (primary), annotator B and ITA bands (one Holm
  family); ``tone_by_clinic``: accuracy per clinic x tone group on every test pair;
  ``annotators``: agreement of the two tone annotators;
* ``headline``: the numbers the decision reads; ``settings``: what this run used.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import entropy, norm

from clinaudit.audit.calibration import expected_calibration_error
from clinaudit.audit.deferral import (
    augrc,
    aurc,
    certify_deferral,
    deferral_by_group,
    fit_deferral_score,
    risk_coverage,
)
from clinaudit.audit.group_gaps import group_gaps
from clinaudit.audit.multiclass import multiclass_audit, paired_difference
from clinaudit.audit.partitions import UnitWords, usable_partitions
from clinaudit.audit.records import TableSet
from clinaudit.audit.selective import clopper_pearson
from clinaudit.audit.types import AuditInputError
from clinaudit.studies.base import AuditData

from .model import PROB_PREFIX
from .policy import MultimodalPolicy
from .splits import assign_splits
from .tone import annotator_agreement, fitzpatrick_group, fitzpatrick_type, ita_band

__all__ = ["REVIEW_FEATURES", "SCOPES", "TONE_ATTRIBUTES", "evidence_tableset", "scored_pairs"]

#: Evaluation scopes: the in-distribution test split and the held-out clinic.
SCOPES: dict[str, str] = {"test": "in-distribution test", "held_out": "held-out clinic"}
#: Per-case inputs of the review score.
REVIEW_FEATURES: tuple[str, ...] = (
    "top_probability", "margin", "entropy", "p_malignant", "modalities_disagree", "note_missing",
)  # fmt: skip
_CURVE_POINTS = 101
#: The skin-tone attributes of the audit -> their column in the scored table.
TONE_ATTRIBUTES: dict[str, str] = {
    "Fitzpatrick type (annotator A)": "type_a",
    "Fitzpatrick group (annotator A)": "tone_a",
    "Fitzpatrick group (annotator B)": "tone_b",
    "ITA band (pixels)": "ita_band",
}
UNKNOWN_TONE = ("not recorded", "not measured")


def _probs(pred: pd.DataFrame, arm: str, removed: float, labels: tuple[str, ...]) -> pd.DataFrame:
    rows = pred[(pred["arm"] == arm) & np.isclose(pred["notes_removed"], removed)]
    return rows.set_index("image_id")[[f"{PROB_PREFIX}{c}" for c in labels]]


def scored_pairs(data: AuditData, policy: MultimodalPolicy) -> tuple[pd.DataFrame, dict]:
    """Validated pairs of every usable clinic with split, tone groups and every arm's
    probabilities (``<arm>:<removed>:<category>`` columns); and the clinics left out."""
    clinics, left_out = usable_partitions(
        data.validated, data.predictions, id_column="image_id",
        identity=data.model.partition_identity, words=UnitWords("pair", "prediction", "clinic"),
    )  # fmt: skip
    if policy.held_out_clinic not in clinics:
        raise AuditInputError(
            "held-out clinic", policy.held_out_clinic,
            f"a landed, validated and scored clinic (usable: {clinics}; left out: {left_out})",
            "land the deployment clinic's pairs (docs/formats.md) or name it in clinics.held_out",
        )  # fmt: skip
    s, labels = policy.splits, policy.labels
    frames = []
    for clinic in clinics:
        t = data.validated[clinic].reset_index(drop=True)
        pred = data.predictions[clinic]
        for arm in policy.model.arms:
            for removed in (0.0, *policy.model.note_removal):
                p = _probs(pred, arm, removed, labels).reindex(t["image_id"])
                if p.isna().any().any():
                    raise AuditInputError(
                        "predictions", f"{clinic}: arm {arm}, {removed:.0%} notes removed missing",
                        "probabilities of every arm the policy names",
                        "re-materialize multimodal_triage/model and predictions",
                    )  # fmt: skip
                for c in labels:
                    t[f"{arm}:{removed:g}:{c}"] = p[f"{PROB_PREFIX}{c}"].to_numpy()
        frames.append(t)
    table = pd.concat(frames, ignore_index=True)
    table["split"] = assign_splits(
        table, held_out=policy.held_out_clinic, shares=(s.train, s.validation, s.calibration)
    )
    stray = sorted(set(table["category"]) - set(labels))
    if stray:
        raise AuditInputError(
            "category", repr(stray), f"one of {list(labels)}", "list it in categories.labels"
        )
    table["tone_a"] = fitzpatrick_group(table["fitzpatrick_a"])
    table["tone_b"] = fitzpatrick_group(table["fitzpatrick_b"])
    table["type_a"] = fitzpatrick_type(table["fitzpatrick_a"])
    table["ita_band"] = ita_band(table["ita"])
    table["note_missing"] = table["note"].astype(str).str.strip().eq("").astype(float)
    return table, left_out


def _prob_matrix(table: pd.DataFrame, arm: str, labels: tuple[str, ...], removed: float = 0.0):
    return table[[f"{arm}:{removed:g}:{c}" for c in labels]].to_numpy(float)


def _predicted(table: pd.DataFrame, arm: str, labels, removed: float = 0.0) -> np.ndarray:
    return np.asarray(labels, dtype=object)[_prob_matrix(table, arm, labels, removed).argmax(1)]


def review_features(table: pd.DataFrame, policy: MultimodalPolicy) -> pd.DataFrame:
    """The review score's inputs (:data:`REVIEW_FEATURES`) of every pair."""
    labels, arm = policy.labels, policy.model.deployed_arm
    p = _prob_matrix(table, arm, labels)
    top2 = np.sort(p, axis=1)[:, -2:]
    mal = [labels.index(c) for c in policy.malignant]
    arms = policy.model.arms
    disagree = (
        (_predicted(table, "image_only", labels) != _predicted(table, "text_only", labels))
        if {"image_only", "text_only"} <= set(arms)
        else np.zeros(len(table), dtype=bool)
    )
    return pd.DataFrame(
        {
            "top_probability": top2[:, 1],
            "margin": top2[:, 1] - top2[:, 0],
            "entropy": entropy(np.clip(p, 1e-12, 1), axis=1),
            "p_malignant": p[:, mal].sum(axis=1),
            "modalities_disagree": disagree.astype(float),
            "note_missing": table["note_missing"].to_numpy(float),
        },
        index=table.index,
    )


def _audit(table: pd.DataFrame, pred: np.ndarray, policy: MultimodalPolicy, key: str):
    ev = policy.evaluation
    return multiclass_audit(
        table["category"].to_numpy(object), pred, classes=policy.labels,
        clusters=(table["site"] + "/" + table["patient"]).to_numpy(object), n_boot=ev.n_boot,
        ci_level=ev.ci_level, seed=0, key=key,
    )  # fmt: skip


def _discrimination(table: pd.DataFrame, policy: MultimodalPolicy) -> pd.DataFrame:
    out = []
    for scope in SCOPES:
        rows = table[table["split"] == scope]
        for arm in policy.model.arms:
            for removed in (0.0, *policy.model.note_removal):
                res = _audit(rows, _predicted(rows, arm, policy.labels, removed), policy, arm)
                out.append(res.assign(arm=arm, scope=scope, notes_removed=removed))
    frame = pd.concat(out, ignore_index=True)
    cols = ["arm", "scope", "notes_removed", "metric", "category", "n", "estimate", "ci_low",
            "ci_high"]  # fmt: skip
    return frame[cols]


def _best_single(table: pd.DataFrame, policy: MultimodalPolicy) -> tuple[str, dict[str, float]]:
    """The baseline with the best validation macro F1 (ties: the first listed)."""
    val = table[table["split"] == "validation"]
    scores = {}
    for arm in policy.model.baselines:
        res = multiclass_audit(
            val["category"].to_numpy(object), _predicted(val, arm, policy.labels),
            classes=policy.labels, n_boot=0,
        )  # fmt: skip
        scores[arm] = float(res.loc[res["metric"] == "macro_f1", "estimate"].iloc[0])
    best = max(policy.model.baselines, key=lambda a: (scores[a], -policy.model.baselines.index(a)))
    return best, scores


def _fusion_vs_single(table: pd.DataFrame, policy: MultimodalPolicy, best: str) -> pd.DataFrame:
    ev, rows = policy.evaluation, []
    for scope in SCOPES:
        t = table[table["split"] == scope]
        clusters = (t["site"] + "/" + t["patient"]).to_numpy(object)
        for fused in policy.model.fusion_arms:
            for single in policy.model.baselines:
                for metric in ("macro_f1", "accuracy"):
                    d = paired_difference(
                        t["category"].to_numpy(object), _predicted(t, fused, policy.labels),
                        _predicted(t, single, policy.labels), classes=policy.labels,
                        metric=metric, clusters=clusters, n_boot=ev.n_boot,
                        ci_level=ev.ci_level, seed=0,
                    )  # fmt: skip
                    rows.append(
                        {
                            "scope": scope, "fusion_arm": fused, "single_arm": single,
                            "best_single": single == best, "metric": metric, "n": d.n,
                            "fusion": d.estimate_a, "single": d.estimate_b,
                            "difference": d.difference, "ci_low": d.ci_low, "ci_high": d.ci_high,
                            "share_below_zero": d.share_below_zero,
                        }
                    )  # fmt: skip
    return pd.DataFrame(rows)


def _domain_shift(disc: pd.DataFrame, policy: MultimodalPolicy) -> pd.DataFrame:
    z = float(norm.ppf(0.5 + policy.evaluation.ci_level / 2))
    rows = []
    base = disc[(disc["notes_removed"] == 0.0) & disc["metric"].isin(["accuracy", "macro_f1"])]
    for (arm, metric), g in base.groupby(["arm", "metric"], sort=False):
        g = g.set_index("scope")
        a, h = g.loc["test"], g.loc["held_out"]
        se = math.hypot(*((r["ci_high"] - r["ci_low"]) / (2 * z) for r in (a, h)))
        drop = float(a["estimate"] - h["estimate"])
        rows.append(
            {
                "arm": arm, "metric": metric, "in_distribution": float(a["estimate"]),
                "held_out": float(h["estimate"]), "drop": drop, "ci_low": drop - z * se,
                "ci_high": drop + z * se,
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def _share_row(k: int, n: int, level: float) -> tuple[float, float, float]:
    if n == 0:
        return np.nan, np.nan, np.nan
    lo, hi = clopper_pearson(k, n, ci_level=level)
    return k / n, float(lo), float(hi)


def _deferral(table: pd.DataFrame, policy: MultimodalPolicy):
    """Review score, certified rule, and its outcomes per scope."""
    labels, d, level = policy.labels, policy.deferral, policy.evaluation.ci_level
    feats = review_features(table, policy)
    pred = _predicted(table, policy.model.deployed_arm, labels)
    error = (pred != table["category"].to_numpy(object)).astype(int)
    malignant = table["category"].isin(policy.malignant).to_numpy().astype(int)
    missed = malignant * (~pd.Series(pred).isin(policy.malignant).to_numpy()).astype(int)
    val = (table["split"] == "validation").to_numpy()
    scorer = fit_deferral_score(feats[val], error[val], features=REVIEW_FEATURES, seed=0)
    score = scorer.predict(feats)
    cal = (table["split"] == "calibration").to_numpy()
    rule = certify_deferral(
        error[cal], malignant[cal], missed[cal], score[cal], alpha_error=d.alpha_error,
        alpha_malignant=d.alpha_malignant, delta=d.delta, min_coverage=d.min_coverage,
    )  # fmt: skip
    deferred = np.ones(len(table), bool) if rule.threshold is None else score >= rule.threshold
    rows = []
    for scope in ("calibration", *SCOPES):
        m = (table["split"] == scope).to_numpy()
        acc = m & ~deferred
        n_acc, err_acc = int(acc.sum()), int(error[acc].sum())
        n_mal, miss_acc = int(malignant[m].sum()), int((missed * ~deferred)[m].sum())
        e, e_lo, e_hi = _share_row(err_acc, n_acc, level)
        mm, mm_lo, mm_hi = _share_row(miss_acc, n_mal, level)
        cov, cov_lo, cov_hi = _share_row(n_acc, int(m.sum()), level)
        sens, sens_lo, sens_hi = _share_row(n_mal - int(missed[m].sum()), n_mal, level)
        rows.append(
            {
                "scope": scope, "n": int(m.sum()), "n_accepted": n_acc, "coverage": cov,
                "coverage_ci_low": cov_lo, "coverage_ci_high": cov_hi,
                "accepted_errors": err_acc, "accepted_error": e, "accepted_error_ci_low": e_lo,
                "accepted_error_ci_high": e_hi, "n_malignant": n_mal,
                "malignant_missed_accepted": miss_acc, "malignant_miss": mm,
                "malignant_miss_ci_low": mm_lo, "malignant_miss_ci_high": mm_hi,
                "error_all": float(error[m].mean()) if m.any() else np.nan,
                "malignant_sensitivity": sens, "malignant_sensitivity_ci_low": sens_lo,
                "malignant_sensitivity_ci_high": sens_hi,
            }
        )  # fmt: skip
    outcomes = pd.DataFrame(rows)
    certificate = pd.DataFrame(
        [
            {
                "certified": rule.certified,
                "threshold": np.nan if rule.threshold is None else float(rule.threshold),
                "alpha_error": rule.alpha_error, "alpha_malignant": rule.alpha_malignant,
                "delta": rule.delta, "n_calibration": rule.n, "n_accepted": rule.n_accepted,
                "errors_accepted": rule.errors_accepted,
                "error_rate_upper": rule.error_rate_upper, "n_malignant": rule.n_malignant,
                "malignant_missed": rule.malignant_missed,
                "malignant_miss_upper": rule.malignant_miss_upper, "coverage": rule.coverage,
                "p_value": rule.p_value, "n_tested": rule.n_tested,
                "n_validation_fit": int(val.sum()),
                "features": ", ".join(REVIEW_FEATURES),
            }
        ]
    )  # fmt: skip
    return score, deferred, error, certificate, outcomes


def _selective(table, score, error, policy) -> tuple[pd.DataFrame, pd.DataFrame]:
    top = review_features(table, policy)["top_probability"].to_numpy()
    rows, curves = [], []
    for scope in SCOPES:
        m = (table["split"] == scope).to_numpy()
        for name, s in (("review score", score[m]), ("max-softmax baseline", 1.0 - top[m])):
            rows.append(
                {"scope": scope, "score": name, "n": int(m.sum()), "aurc": aurc(error[m], s),
                 "augrc": augrc(error[m], s), "error_all": float(error[m].mean())}
            )  # fmt: skip
            rc = risk_coverage(error[m], s)
            pick = np.unique(np.linspace(0, len(rc) - 1, _CURVE_POINTS).round().astype(int))
            curves.append(rc.iloc[pick].assign(scope=scope, score=name))
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


def _tone_audit(table, deferred, policy) -> pd.DataFrame:
    ho = (table["split"] == "held_out").to_numpy()
    t = table[ho]
    labels, arm = policy.labels, policy.model.deployed_arm
    probs = _prob_matrix(t, arm, labels)
    ta = policy.tone_audit
    return group_gaps(
        t["category"].to_numpy(object), _predicted(t, arm, labels), probs.max(axis=1),
        deferred[ho].astype(float),
        {  # photos without a type (or ITA) are in no group: composition counts them
            name: t[col].where(~t[col].isin(UNKNOWN_TONE), "")
            for name, col in TONE_ATTRIBUTES.items()
        },
        classes=labels, malignant=policy.malignant, min_gap=ta.min_gap,
        family_alpha=ta.family_alpha, n_boot=ta.n_boot, ci_level=policy.evaluation.ci_level,
        seed=0,
    )  # fmt: skip


def _tone_by_clinic(table, policy) -> pd.DataFrame:
    level, rows = policy.evaluation.ci_level, []
    t = table[table["split"].isin(list(SCOPES))]
    pred = _predicted(t, policy.model.deployed_arm, policy.labels)
    correct = pred == t["category"].to_numpy(object)
    for (clinic, tone), idx in t.groupby(["site", "tone_a"]).indices.items():
        n = len(idx)
        acc, lo, hi = _share_row(int(correct[idx].sum()), n, level)
        shown = n >= policy.tone_audit.min_cell_n
        rows.append(
            {"clinic": clinic, "tone_group": tone, "n": n,
             "accuracy": acc if shown else np.nan, "ci_low": lo if shown else np.nan,
             "ci_high": hi if shown else np.nan, "shown": shown}
        )  # fmt: skip
    return pd.DataFrame(rows)


def _where(table, deferred, policy) -> pd.DataFrame:
    t = table[table["split"].isin(list(SCOPES))]
    d = deferred[table["split"].isin(list(SCOPES)).to_numpy()]
    ho = (t["split"] == "held_out").to_numpy()
    parts = [
        deferral_by_group(
            d[ho].astype(int),
            {"true category": t.loc[ho, "category"], "skin tone (annotator A)": t.loc[ho, "tone_a"],
             "note": np.where(t.loc[ho, "note_missing"] > 0, "missing", "present")},
            ci_level=policy.evaluation.ci_level,
        ).assign(scope="held_out"),
        deferral_by_group(
            d.astype(int), {"clinic": t["site"]}, ci_level=policy.evaluation.ci_level
        ).assign(scope="all test pairs"),
    ]  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def _calibration(table, policy) -> pd.DataFrame:
    rows = []
    for scope in SCOPES:
        t = table[table["split"] == scope]
        for arm in policy.model.arms:
            p = _prob_matrix(t, arm, policy.labels)
            pred = np.asarray(policy.labels, dtype=object)[p.argmax(1)]
            correct = (pred == t["category"].to_numpy(object)).astype(float)
            rows.append(
                {"scope": scope, "arm": arm, "n": len(t),
                 "top_label_ece": expected_calibration_error(
                     correct, p.max(1), n_bins=policy.evaluation.n_bins),
                 "mean_confidence": float(p.max(1).mean()), "accuracy": float(correct.mean())}
            )  # fmt: skip
    return pd.DataFrame(rows)


def _composition(table: pd.DataFrame) -> pd.DataFrame:
    g = table.groupby(["site", "split"], sort=True)
    out = g.agg(
        n_pairs=("image_id", "size"), n_patients=("patient", "nunique"),
        malignant_share=("malignant", "mean"), note_missing_share=("note_missing", "mean"),
    ).reset_index()  # fmt: skip
    tone = pd.crosstab([table["site"], table["split"]], table["tone_a"]).reset_index()
    cats = pd.crosstab([table["site"], table["split"]], table["category"]).reset_index()
    out = out.merge(tone, on=["site", "split"]).merge(cats, on=["site", "split"])
    return out.rename(columns={"site": "clinic"})


def _annotators(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for scope, t in (
        ("all clinics", table),
        ("held-out clinic", table[table["split"] == "held_out"]),
    ):
        rows.append({"scope": scope, **annotator_agreement(t["fitzpatrick_a"], t["fitzpatrick_b"])})
    return pd.DataFrame(rows)


def evidence_tableset(data: AuditData, policy: MultimodalPolicy) -> TableSet:
    """All evidence tables (module docstring) with the run's settings in the facts."""
    table, left_out = scored_pairs(data, policy)
    for split in ("validation", "calibration", "test", "held_out"):
        if not (table["split"] == split).any():
            raise AuditInputError(
                "split", f"no {split} pairs", "pairs in every split",
                "land more development patients or widen the policy's split shares",
            )  # fmt: skip
    disc = _discrimination(table, policy)
    best, val_scores = _best_single(table, policy)
    score, deferred, error, certificate, outcomes = _deferral(table, policy)
    selective, curves = _selective(table, score, error, policy)
    tone = _tone_audit(table, deferred, policy)
    headline = _headline(disc, outcomes, policy)
    settings = {
        "seed": 0,
        "clinics": sorted(table["site"].unique().tolist()),
        "held_out_clinic": policy.held_out_clinic,
        "deployed_arm": policy.model.deployed_arm,
        "best_single_on_validation": best,
        "validation_macro_f1": val_scores,
        "n_boot": policy.evaluation.n_boot,
        "ci_level": policy.evaluation.ci_level,
        "model_facts": dict(data.model.facts),
    }
    return TableSet(
        {
            "headline": headline,
            "composition": _composition(table),
            "discrimination": disc,
            "calibration": _calibration(table, policy),
            "fusion_vs_single": _fusion_vs_single(table, policy, best),
            "domain_shift": _domain_shift(disc, policy),
            "deferral_rule": certificate,
            "deferral_outcomes": outcomes,
            "selective": selective,
            "risk_coverage": curves,
            "deferral_where": _where(table, deferred, policy),
            "tone_audit": tone,
            "tone_by_clinic": _tone_by_clinic(table, policy),
            "annotators": _annotators(table),
        },
        facts={"left_out": left_out, "settings": settings, "simulated": data.simulated},
    )


def _headline(disc: pd.DataFrame, outcomes: pd.DataFrame, policy: MultimodalPolicy):
    d = disc[(disc["arm"] == policy.model.deployed_arm) & (disc["notes_removed"] == 0.0)]
    rows = []
    for scope in SCOPES:
        s = d[(d["scope"] == scope) & (d["category"] == "")]
        for metric in ("accuracy", "macro_f1"):
            r = s[s["metric"] == metric].iloc[0]
            rows.append(
                {"scope": scope, "metric": metric, "n": int(r["n"]), "estimate": r["estimate"],
                 "ci_low": r["ci_low"], "ci_high": r["ci_high"]}
            )  # fmt: skip
        o = outcomes.set_index("scope").loc[scope]
        rows.append(
            {"scope": scope, "metric": "malignant_sensitivity", "n": int(o["n_malignant"]),
             "estimate": o["malignant_sensitivity"], "ci_low": o["malignant_sensitivity_ci_low"],
             "ci_high": o["malignant_sensitivity_ci_high"]}
        )  # fmt: skip
        for metric, col in (("coverage", "coverage"), ("accepted_error", "accepted_error")):
            rows.append(
                {"scope": scope, "metric": metric, "n": int(o["n"] if metric == "coverage"
                                                            else o["n_accepted"]),
                 "estimate": o[col], "ci_low": o[f"{col}_ci_low"], "ci_high": o[f"{col}_ci_high"]}
            )  # fmt: skip
    return pd.DataFrame(rows)
