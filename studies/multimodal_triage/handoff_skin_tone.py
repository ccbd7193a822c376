"""Page 4 of the ``multimodal_triage`` hand-off document: known biases by skin tone.

The skin-tone audit of the held-out clinic (Fitzpatrick groups and types of annotator A,
annotator B, ITA bands), tone x clinic cells and annotator agreement, next to the published
Diverse Dermatology Images anchor (real data, stated as not comparable with these results).
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

from .decisions import TONE_ATTRIBUTE
from .handoff_sections import verdict_cell
from .policy import MultimodalPolicy

__all__ = ["DDI_ANCHOR", "FITZPATRICK17K_AGREEMENT", "tone_section"]

#: Published anchor (real data, not this audit): Diverse Dermatology Images (Daneshjou et al.,
#: Sci. Adv. 2022), AUROC of a state-of-the-art model on Fitzpatrick I-II vs V-VI.
DDI_ANCHOR = (0.72, 0.57)
#: Fitzpatrick17k (Groh et al., 2021): exact agreement of its two labelling vendors.
FITZPATRICK17K_AGREEMENT = 0.479
#: Tone attributes of the skin-tone audit, in the order the document shows them.
TYPE_A, GROUP_B, ITA = (
    "Fitzpatrick type (annotator A)", "Fitzpatrick group (annotator B)", "ITA band (pixels)",
)  # fmt: skip


def tone_section(ev: TableSet, policy: MultimodalPolicy, simulated: bool) -> Section:
    """Page 4: the skin-tone audit at the held-out clinic, next to the published anchor."""
    t = ev["tone_audit"]
    gap = policy.tone_audit.min_gap
    main = pd.concat([t[t["attribute"] == TONE_ATTRIBUTE], t[t["attribute"] == TYPE_A]])
    rows = [
        [
            ("group " if r.attribute == TONE_ATTRIBUTE else "type ") + str(r.group),
            str(r.n),
            fmt_ci(r.accuracy, r.accuracy_ci_low, r.accuracy_ci_high),
            fmt_ci(r.macro_f1, r.macro_f1_ci_low, r.macro_f1_ci_high),
            _ci_of(r, "malignant_sensitivity") + f" n={r.n_malignant}",
            fmt_ci(r.ece, r.ece_ci_low, r.ece_ci_high),
            pct_ci(r.deferral_rate, r.deferral_rate_ci_low, r.deferral_rate_ci_high, 0),
            _accepted_cell(r),
            _verdict(r, gap),
        ]
        for r in main.itertuples()
    ]  # fmt: skip
    main_table = table(
        ("Fitzpatrick (A)", "n", "Accuracy", "Macro F1", "Malignant sensitivity", "ECE",
         "Deferred", "Accuracy of accepted", "Gap verdict"),
        rows, (10, 4, 11, 11, 13, 11, 12, 13, 15),
        caption=f"Table 4.1 {policy.model.deployed_arm} at the held-out clinic by Fitzpatrick "
        "group and type, annotator A (primary); 95% CIs; not recorded: no tone label.",
        css="compact",
    )  # fmt: skip
    other = t[t["attribute"].isin([GROUP_B, ITA])]
    other_rows = [
        [
            "B " + str(r.group) if r.attribute == GROUP_B else "ITA " + str(r.group),
            str(r.n),
            fmt_ci(r.accuracy, r.accuracy_ci_low, r.accuracy_ci_high),
            fmt_ci(r.accuracy_gap, r.gap_ci_low, r.gap_ci_high),
            pct_ci(r.deferral_rate, r.deferral_rate_ci_low, r.deferral_rate_ci_high, 0),
            _accepted_cell(r),
            _verdict(r, gap),
        ]
        for r in other.itertuples()
    ]
    other_table = table(
        ("Annotator B / ITA band", "n", "Accuracy", "Gap to rest", "Deferred",
         "Accuracy of accepted", "Gap verdict"),
        other_rows, (20, 5, 15, 15, 13, 15, 17),
        caption="Table 4.2 The same under annotator B's labels and ITA bands from the pixels.",
        css="compact",
    )  # fmt: skip
    lowered = t[t["deferral_lowers_accuracy"].astype(bool)]
    bullets = tuple(
        f"{r.attribute} {r.group}: deferral lowers accuracy (accepted "
        f"{fmt_num(r.accepted_accuracy, 2)} vs all {fmt_num(r.accuracy, 2)})"
        for r in lowered.itertuples()
    ) or ("No group's accepted outputs are less accurate than all of its outputs.",)
    n_tests = int(t["p_value"].notna().sum())
    return Section(
        new_page=True,
        anchor="skin-tone",
        title="4 Known biases by skin tone",
        paragraphs=(
            f"A gap is an accuracy difference to the rest of the attribute of at least {gap:.0%} "
            f"with a Holm-adjusted p-value below {policy.tone_audit.family_alpha:g} over all "
            f"{n_tests} groups tested (one family). A group that can neither show nor exclude "
            "such a gap is marked insufficient evidence, with the width of its interval: that is "
            "not a pass, and its outputs are not validated.",
            _annotator_words(ev),
            _anchor_words(simulated),
        ),
        tables=(main_table, other_table, _tone_clinic_table(ev, policy)),
        bullets_title="Where deferral lowers a group's accuracy",
        bullets=bullets,
    )


def _ci_of(r, name: str) -> str:
    return fmt_ci(getattr(r, name), getattr(r, f"{name}_ci_low"), getattr(r, f"{name}_ci_high"))


def _verdict(r, min_gap: float) -> Cell:
    cell = verdict_cell(r.verdict, min_gap)
    if cell.text == "gap":
        return Cell(f"gap {fmt_ci(r.accuracy_gap, r.gap_ci_low, r.gap_ci_high)}", "fail")
    return cell


def _accepted_cell(r) -> Cell:
    if not finite(r.accepted_accuracy):
        return Cell("none accepted", "muted")
    text = fmt_ci(r.accepted_accuracy, r.accepted_accuracy_ci_low, r.accepted_accuracy_ci_high)
    return Cell(text + " (lower)", "fail") if r.deferral_lowers_accuracy else Cell(text)


def _annotator_words(ev: TableSet) -> str:
    a = ev["annotators"].set_index("scope")
    parts = [
        f"{scope}: exact {fmt_pct(r['exact'])}, within one type {fmt_pct(r['within_one'])}, "
        f"kappa {fmt_num(r['kappa'], 2)} (n={int(r['n'])})"
        for scope, r in a.iterrows()
    ]
    return (
        "Skin type itself is uncertain. The two tone annotators agree as follows: "
        + "; ".join(parts)
        + f". Fitzpatrick17k's labelling vendors agreed exactly on only "
        f"{FITZPATRICK17K_AGREEMENT:.1%} of images: a group's result depends on who labelled it."
    )


def _anchor_words(simulated: bool) -> str:
    hi, lo = DDI_ANCHOR
    data = (
        "The results above are from simulated data and are not comparable to that published number"
        if simulated
        else "The results above are accuracies of this model at one clinic and are not "
        "comparable to that published number"
    )
    return (
        f"Published anchor (real data, not this audit): on the Diverse Dermatology Images set, "
        f"a state-of-the-art classifier reached AUC {hi:.2f} on Fitzpatrick I-II vs {lo:.2f} on "
        f"V-VI (Daneshjou et al. 2022). {data} (other data, model, task and metric); it only "
        "shows that such gaps exist in practice."
    )


def _tone_clinic_table(ev: TableSet, policy: MultimodalPolicy) -> Table:
    tc = ev["tone_by_clinic"]
    groups = sorted(tc["tone_group"].unique(), key=lambda g: (g == "not recorded", g))
    rows = []
    for clinic, g in tc.groupby("clinic", sort=True):
        cells = g.set_index("tone_group")
        row = [str(clinic)]
        for grp in groups:
            if grp not in cells.index:
                row.append(Cell("none", "muted"))
                continue
            r = cells.loc[grp]
            row.append(
                Cell(f"{fmt_ci(r['accuracy'], r['ci_low'], r['ci_high'])} n={int(r['n'])}")
                if bool(r["shown"])
                else Cell(f"n={int(r['n'])} (too few)", "muted")
            )
        rows.append(row)
    width = 80 // max(1, len(groups))
    return table(
        ("Clinic (all test pairs)", *groups), rows, (20, *[width] * len(groups)),
        caption=f"Table 4.3 Accuracy per clinic x Fitzpatrick group (annotator A); cells with "
        f"fewer than {policy.tone_audit.min_cell_n} pairs are not shown.",
        css="compact",
    )  # fmt: skip
