"""Pages 2-5 of the ``multimodal_triage`` hand-off document (see :mod:`.handoff`).

Section builders take the stored evidence and the loaded policy and return report-kit objects
(final text): when the model is reliable (page 2) and where deferral fires (page 3); the skin-tone
page is :mod:`.handoff_skin_tone`, the data and monitoring page :mod:`.handoff_appendix`.
"""

from __future__ import annotations

import pandas as pd

from clinaudit.audit.records import TableSet
from clinaudit.reporting.kit import (
    Cell,
    Section,
    Table,
    finite,
    fmt_ci,
    fmt_num,
    fmt_pct,
    pct_ci,
    table,
)
from clinaudit.reporting.report_figures import FigureFile

from .evidence import SCOPES
from .policy import MultimodalPolicy

__all__ = [
    "deferral_section",
    "disc",
    "guarantee_words",
    "reliability_section",
    "verdict_cell",
]


def disc(ev: TableSet, arm: str, scope: str, metric: str, category: str = "", removed=0.0):
    """One row of the ``discrimination`` table (``None`` when the evidence has none)."""
    d = ev["discrimination"]
    rows = d[
        (d["arm"] == arm) & (d["scope"] == scope) & (d["metric"] == metric)
        & (d["category"] == category) & ((d["notes_removed"] - removed).abs() < 1e-9)
    ]  # fmt: skip
    return rows.iloc[0] if len(rows) else None


def _ci(row, digits: int = 2) -> str:
    return "not estimable" if row is None else fmt_ci(row.estimate, row.ci_low, row.ci_high, digits)


def _interval_words(lo: float, hi: float) -> str:
    if lo > 0:
        return "the interval excludes no change"
    if hi < 0:
        return "the interval lies below zero"
    return "the interval includes no change"


def verdict_cell(verdict: str, min_gap: float) -> Cell:
    """The gap verdict as printed: a gap fails, insufficient evidence is a warning (never a
    pass), only ``no gap >= min_gap`` passes."""
    v = str(verdict)
    if v == "gap":
        return Cell("gap", "fail")
    if v.startswith("no gap"):
        return Cell(f"no gap ≥ {min_gap:.0%}", "pass")
    return Cell(v, "warn")


# --------------------------------------------------------------------------- page 2
def reliability_section(ev: TableSet, policy: MultimodalPolicy) -> Section:
    """Page 2: per-category reliability, the domain shift, fusion vs single, note removal."""
    arm, held = policy.model.deployed_arm, policy.held_out_clinic
    rows = []
    for c in policy.labels:
        sizes = [disc(ev, arm, scope, "sensitivity", c) for scope in SCOPES]
        cells = [c, " / ".join(str(int(r.n)) if r is not None else "0" for r in sizes)]
        for metric in ("sensitivity", "specificity"):
            cells += [_ci(disc(ev, arm, scope, metric, c)) for scope in SCOPES]
        rows.append(cells)
    per_category = table(
        ("Category", "Lesions test / held-out", "Sensitivity, test", "Sensitivity, held-out",
         "Specificity, test", "Specificity, held-out"),
        rows, (10, 14, 19, 19, 19, 19),
        caption=f"Table 2.1 {arm} per category: in-distribution test split vs the held-out clinic "
        f"({held}), 95% CIs (patient bootstrap).",
        css="compact",
    )  # fmt: skip
    shift = ev["domain_shift"].set_index(["arm", "metric"])
    removal = policy.model.note_removal
    shift_rows = []
    for a in policy.model.arms:
        s = shift.loc[(a, "macro_f1")]
        shift_rows.append(
            [
                f"{a} (deployed)" if a == arm else a,
                fmt_num(s["in_distribution"], 3),
                fmt_num(s["held_out"], 3),
                fmt_ci(s["drop"], s["ci_low"], s["ci_high"], 3),
                *[_ci(disc(ev, a, "held_out", "macro_f1", removed=f), 3) for f in removal],
            ]
        )
    shift_table = table(
        ("Arm", "Macro F1, test", "Macro F1, held-out", "Drop test -> held-out (95% CI)",
         *[f"Held-out, {f:.0%} notes removed" for f in removal]),
        shift_rows, (17, 12, 13, 20, *[38 // len(removal)] * len(removal)),
        caption="Table 2.2 Domain shift and note removal (macro F1; 0% removed unless stated).",
        css="compact",
    )  # fmt: skip
    fvs = ev["fusion_vs_single"]
    fvs = fvs[fvs["scope"] == "held_out"]
    fvs_rows = [
        [
            f"{r.fusion_arm} - {r.single_arm}" + (" (best single)" if r.best_single else ""),
            r.metric.replace("macro_f1", "macro F1"),
            f"{fmt_num(r.fusion, 3)} vs {fmt_num(r.single, 3)}",
            fmt_ci(r.difference, r.ci_low, r.ci_high, 3),
            _fusion_reading(r.difference, r.ci_low, r.ci_high),
        ]
        for r in fvs.itertuples()
    ]
    fvs_table = table(
        ("Fusion - single modality", "Metric", "Fusion vs single", "Difference (paired 95% CI)",
         "Reading"),
        fvs_rows, (30, 10, 17, 21, 22),
        caption=f"Table 2.3 Fusion vs each single modality at the held-out clinic (same "
        f"{int(fvs['n'].iloc[0]) if len(fvs) else 0} pairs, paired patient bootstrap).",
        css="compact",
    )  # fmt: skip
    return Section(
        new_page=True,
        anchor="reliability",
        title="2 When the model is reliable",
        paragraphs=(
            _shift_words(ev, policy),
            _fusion_words(ev, policy),
            _note_words(ev, policy),
        ),
        tables=(per_category, shift_table, fvs_table),
    )


def _fusion_reading(diff: float, lo: float, hi: float) -> Cell:
    if not (finite(lo) and finite(hi)):
        return Cell("not estimable", "muted")
    if hi < 0:
        return Cell("fusion loses", "fail")
    if lo > 0:
        return Cell("fusion wins", "pass")
    return Cell("fusion lower, not shown" if diff < 0 else "no difference shown")


def _shift_words(ev: TableSet, policy: MultimodalPolicy) -> str:
    arm = policy.model.deployed_arm
    shift = ev["domain_shift"].set_index(["arm", "metric"])
    parts = []
    for metric, name in (("macro_f1", "Macro F1"), ("accuracy", "accuracy")):
        s = shift.loc[(arm, metric)]
        parts.append(
            f"{name} {fmt_num(s['in_distribution'], 3)} on the in-distribution test split and "
            f"{fmt_num(s['held_out'], 3)} at the held-out clinic: drop "
            f"{fmt_ci(s['drop'], s['ci_low'], s['ci_high'], 3)} "
            f"({_interval_words(s['ci_low'], s['ci_high'])})"
        )
    return (
        f"The deployed arm is {arm}; the held-out clinic {policy.held_out_clinic} was never "
        f"trained on. {parts[0][0].upper()}{parts[0][1:]}; {parts[1]}. The model is reliable only "
        "where "
        "Table 2.1's held-out intervals are high and narrow; a category with few held-out lesions "
        "has an interval too wide to rely on."
    )


def _fusion_words(ev: TableSet, policy: MultimodalPolicy) -> str:
    fvs = ev["fusion_vs_single"]
    best = fvs[
        (fvs["scope"] == "held_out") & fvs["best_single"] & (fvs["metric"] == "macro_f1")
        & (fvs["fusion_arm"] == policy.model.deployed_arm)
    ]  # fmt: skip
    if not len(best):
        return "No fusion vs single-modality comparison was stored for the deployed arm."
    r = best.iloc[0]
    ci = fmt_ci(r["difference"], r["ci_low"], r["ci_high"], 3)
    if r["ci_high"] < 0:
        verdict = (
            f"Fusion loses: {r['fusion_arm']} is worse than {r['single_arm']} alone at the "
            f"held-out clinic (macro F1 difference {ci}); the photo + note model does not earn "
            "its extra input here."
        )
    elif r["difference"] < 0:
        verdict = (
            f"Fusion does not beat {r['single_arm']} alone at the held-out clinic: macro F1 "
            f"difference {ci}, lower but not shown worse."
        )
    elif r["ci_low"] > 0:
        verdict = f"Fusion beats {r['single_arm']} alone at the held-out clinic: macro F1 {ci}."
    else:
        verdict = (
            f"Fusion is not shown better than {r['single_arm']} alone at the held-out clinic: "
            f"macro F1 difference {ci}."
        )
    return (
        f"The best single modality, chosen on the validation split before any test set was "
        f"read, is {r['single_arm']}. {verdict} Every arm was trained here under the same budget "
        "(Appendix A)."
    )


def _note_words(ev: TableSet, policy: MultimodalPolicy) -> str:
    arm = policy.model.deployed_arm
    fracs = (0.0, *policy.model.note_removal)
    vals = [disc(ev, arm, "held_out", "macro_f1", removed=f) for f in fracs]
    text = ", ".join(f"{_ci(v, 3)} with {f:.0%}" for v, f in zip(vals, fracs, strict=True))
    return (
        f"Notes removed: the same held-out photos scored with a share of the present notes "
        f"blanked give {arm} a macro F1 of {text} of the notes removed (Table 2.2); the "
        "model must be expected to degrade when notes are missing or thin."
    )


# --------------------------------------------------------------------------- page 3
def guarantee_words(out: pd.Series, policy: MultimodalPolicy) -> tuple[str, str]:
    """Whether the certified guarantee held in one scope: (short verdict, CSS class)."""
    d = policy.deferral
    if int(out["n_accepted"]) == 0:
        return "not testable: no output accepted", "muted"
    err_ok = out["accepted_error"] <= d.alpha_error
    mal_ok = not finite(out["malignant_miss"]) or out["malignant_miss"] <= d.alpha_malignant
    if err_ok and mal_ok:
        return "held", "pass"
    broken = out["accepted_error_ci_low"] > d.alpha_error or (
        finite(out["malignant_miss_ci_low"]) and out["malignant_miss_ci_low"] > d.alpha_malignant
    )
    if broken:
        return "did not hold (lower CI bound above the limit)", "fail"
    return "not shown to hold (estimate above the limit)", "warn"


def deferral_section(ev: TableSet, policy: MultimodalPolicy, figure: FigureFile) -> Section:
    """Page 3: the certified rule, its outcomes, selective scores and where deferral fires."""
    rule = ev["deferral_rule"].iloc[0]
    certified = bool(rule["certified"])
    rule_rows = [
        [
            "Guarantee",
            f"P(error of accepted ≤ {rule['alpha_error']:g} and malignant miss ≤ "
            f"{rule['alpha_malignant']:g}) ≥ {1 - rule['delta']:g} (Learn-then-Test)",
        ],
        ["Defer when review score ≥", fmt_num(rule["threshold"], 4) if certified else
         "none certified: every output goes to review"],
        ["Calibration pairs (malignant)", f"{int(rule['n_calibration'])} "
         f"({int(rule['n_malignant'])})"],
        ["Accepted at calibration", f"{int(rule['n_accepted'])} (coverage "
         f"{fmt_pct(rule['coverage'])})"],
        ["Errors accepted (upper bound)", f"{int(rule['errors_accepted'])} "
         f"({fmt_pct(rule['error_rate_upper'])})"],
        ["Malignant missed (upper bound)", f"{int(rule['malignant_missed'])} "
         f"({fmt_pct(rule['malignant_miss_upper'])})"],
        ["Thresholds tested; last p-value", f"{int(rule['n_tested'])}; "
         f"{fmt_num(rule['p_value'], 3)}"],
        ["Review score fitted on", f"{int(rule['n_validation_fit'])} validation pairs"],
    ]  # fmt: skip
    out = ev["deferral_outcomes"]
    out_rows = []
    for r in out.itertuples():
        words, css = guarantee_words(out.loc[r.Index], policy)
        scope = SCOPES.get(r.scope, "calibration split")
        out_rows.append(
            [
                f"{scope} (n={r.n})",
                pct_ci(r.coverage, r.coverage_ci_low, r.coverage_ci_high),
                f"{pct_ci(r.accepted_error, r.accepted_error_ci_low, r.accepted_error_ci_high)}"
                f" [{r.accepted_errors}/{r.n_accepted}]"
                if r.n_accepted
                else "no output accepted",
                f"{pct_ci(r.malignant_miss, r.malignant_miss_ci_low, r.malignant_miss_ci_high)}"
                f" [{r.malignant_missed_accepted}/{r.n_malignant}]",
                pct_ci(r.malignant_sensitivity, r.malignant_sensitivity_ci_low,
                       r.malignant_sensitivity_ci_high),
                Cell(words, css),
            ]
        )  # fmt: skip
    sel = ev["selective"]
    sel_rows = [
        [SCOPES[r.scope], r.score, fmt_num(r.aurc, 3), fmt_num(r.augrc, 3), fmt_pct(r.error_all)]
        for r in sel.itertuples()
    ]
    return Section(
        new_page=True,
        anchor="deferral",
        title="3 Where deferral fires",
        paragraphs=(_rule_words(rule, ev), _held_words(ev, policy), _selective_words(sel)),
        figures=(figure,),
        tables=(
            table(
                ("Certified rule", "Value"),
                rule_rows,
                (32, 68),
                caption="Table 3.1 The deferral rule certified on the calibration split.",
                css="compact",
            ),  # fmt: skip
            table(
                (
                    "Scope",
                    "Coverage",
                    "Error of accepted",
                    "Malignant missed and accepted",
                    "Malignant sensitivity (before review)",
                    "Guarantee",
                ),
                out_rows,
                (17, 15, 18, 18, 16, 16),
                caption="Table 3.2 What the rule did (exact 95% CIs): accepted = not deferred; "
                "missed = malignant lesion accepted with a benign label, per malignant lesion.",
                css="compact",
            ),  # fmt: skip
            table(
                ("Scope", "Score", "AURC", "AUGRC", "Error of all outputs"),
                sel_rows,
                (26, 26, 16, 16, 16),
                caption="Table 3.3 Ranking quality of the review score vs the max-softmax "
                "baseline (lower is better).",
                css="compact",
            ),  # fmt: skip
            _where_table(ev),
        ),
    )


def _rule_words(rule: pd.Series, ev: TableSet) -> str:
    head = (
        f"A clinician reviews every output whose review score (a calibrated P(wrong) from the "
        f"deployed arm's probabilities, the two modalities' disagreement and a missing note; "
        f"features: {rule['features']}) reaches the threshold. "
    )
    if bool(rule["certified"]):
        return head + (
            f"The threshold {fmt_num(rule['threshold'], 4)} was certified on "
            f"{int(rule['n_calibration'])} calibration pairs and accepts "
            f"{fmt_pct(rule['coverage'])} of them."
        )
    return head + (
        f"No threshold could be certified on the {int(rule['n_calibration'])} calibration pairs: "
        "every output goes to clinician review, and the model saves no review work."
    )


def _held_words(ev: TableSet, policy: MultimodalPolicy) -> str:
    out = ev["deferral_outcomes"].set_index("scope").loc["held_out"]
    words, _ = guarantee_words(out, policy)
    if int(out["n_accepted"]) == 0:
        return (
            "At the held-out clinic no output was accepted, so the guarantee could not be "
            "checked there: every output was reviewed."
        )
    err, miss, cov = (
        pct_ci(out[c], out[f"{c}_ci_low"], out[f"{c}_ci_high"])
        for c in ("accepted_error", "malignant_miss", "coverage")
    )
    return (
        f"At the held-out clinic the guarantee {words}: error of accepted outputs {err} (limit "
        f"{policy.deferral.alpha_error:.0%}), malignant lesions missed {miss} (limit "
        f"{policy.deferral.alpha_malignant:.0%}), coverage {cov}."
    )


def _selective_words(sel: pd.DataFrame) -> str:
    s = sel[sel["scope"] == "held_out"].set_index("score")
    if not {"review score", "max-softmax baseline"} <= set(s.index):
        return "Selective scores: see Table 3.3."
    a, b = s.loc["review score", "aurc"], s.loc["max-softmax baseline", "aurc"]
    lower = "a lower" if a < b else "no lower"
    return (
        f"At the held-out clinic the review score has {lower} AURC than the max-softmax baseline "
        f"({fmt_num(a, 3)} vs {fmt_num(b, 3)}; Figure 3.1; point estimates on one clinic, no "
        "interval: a small difference may be chance)."
    )


def _where_table(ev: TableSet) -> Table:
    w = ev["deferral_where"]
    rows = []
    for (attr, scope), g in w.groupby(["attribute", "scope"], sort=False):
        cells = "; ".join(
            f"{r.group} {pct_ci(r.rate, r.ci_low, r.ci_high, 0)} n={r.n}" for r in g.itertuples()
        )
        rows.append([f"{attr} ({'held-out' if scope == 'held_out' else scope})", cells])
    return table(
        ("Deferred by", "Deferral rate per group (exact 95% CI), n"), rows, (22, 78),
        caption="Table 3.4 Where deferral fires.", css="compact",
    )  # fmt: skip
