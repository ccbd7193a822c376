"""Page 5 and the appendices of the ``multimodal_triage`` hand-off document (see :mod:`.handoff`).

Page 5: the data composition and the monitoring plan. Appendices: the model and training
settings the run used (model stage's facts), the methods, the provenance tables and the full
tables behind pages 1-4.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from clinaudit.audit.records import TableSet
from clinaudit.reporting.kit import (
    Appendix,
    MethodNote,
    Section,
    Table,
    bundle_provenance_tables,
    fmt_ci,
    fmt_num,
    fmt_pct,
    left_out_table,
    table,
)
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.provenance import AuditBundle

from .policy import MultimodalPolicy

__all__ = ["appendix", "composition_section", "full_tables", "model_appendix", "monitoring_table"]


def composition_section(
    ev: TableSet, policy: MultimodalPolicy, lineage: dict, monitoring: Table
) -> Section:
    """Page 5: pairs per clinic x split, categories, tone mix, missing notes; monitoring."""
    comp = ev["composition"]
    tones = [g for g in ("I-II", "III-IV", "V-VI", "not recorded") if g in comp.columns]
    rows = [
        [
            str(r["clinic"]),
            str(r["split"]),
            f"{int(r['n_pairs'])} / {int(r['n_patients'])}",
            fmt_pct(r["malignant_share"], 0),
            fmt_pct(r["note_missing_share"], 0),
            " / ".join(str(int(r[g])) for g in tones),
            ", ".join(f"{c} {int(r[c])}" for c in policy.labels if c in comp.columns),
        ]
        for _, r in comp.iterrows()
    ]
    trained = list(lineage.get("clinics", []))
    held = policy.held_out_clinic
    never = (
        f"The held-out clinic {held} is never trained on: its pairs are only in the held_out "
        f"split, and the arms were trained on {', '.join(trained)} "
        f"({lineage.get('n_train', 'not recorded')} training pairs, "
        f"{lineage.get('n_validation', 'not recorded')} validation pairs)."
        if trained and held not in trained
        else f"The arms' lineage does not list the clinics they were trained on; {held}'s pairs "
        "are only in the held_out split of this audit."
    )
    return Section(
        new_page=True,
        anchor="data",
        title="5 The data and the monitoring plan",
        paragraphs=(
            never + " Patients are split by a salted hash of their first photo, so all photos of "
            "a patient fall in one split.",
        ),
        tables=(
            table(
                (
                    "Clinic",
                    "Split",
                    "Pairs / patients",
                    "Malignant",
                    "Notes missing",
                    "Tone " + " / ".join(tones),
                    "Categories",
                ),
                rows,
                (16, 10, 10, 9, 9, 16, 30),
                caption="Table 5.1 Pairs per clinic x split (tone: Fitzpatrick group, annotator "
                "A).",
                css="compact",
            ),  # fmt: skip
            monitoring,
        ),
    )


def monitoring_table(plan: pd.DataFrame) -> Table:
    """Table 5.2: the monitoring plan after hand-off (one row per signal)."""
    rows = [
        [str(r.signal), str(r.how), str(r.cadence), str(r.audit_value), str(r.alarm),
         str(r.action)]
        for r in plan.itertuples()
    ]  # fmt: skip
    return table(
        ("Signal", "How", "Cadence", "Audit value", "Alarm", "Action"), rows,
        (16, 22, 8, 10, 18, 26),
        caption="Table 5.2 The monitoring plan after hand-off.", css="compact",
    )  # fmt: skip


def model_appendix(bundle: AuditBundle, policy: MultimodalPolicy):
    f: Mapping[str, Any] = bundle.model.facts
    training: Mapping[str, Any] = f.get("training", {})
    rows = []
    for arm, info in f.get("arms", {}).items():
        t = training.get(arm, {})
        b = t.get("budget", {})
        role = (
            "deployed" if arm == policy.model.deployed_arm
            else "baseline" if arm in policy.model.baselines else "fusion (compared)"
        )  # fmt: skip
        budget = (
            f"{b.get('epochs')} epochs x {b.get('batch_size')} ({b.get('steps')} steps, "
            f"{b.get('samples')} samples)"
            if b.get("epochs")
            else "combines " + " + ".join(t.get("components", [])) + " (no own training)"
            if t.get("components")
            else "not recorded"
        )  # fmt: skip
        rows.append(
            [
                arm, role, info.get("sha256", "")[:16], budget, str(t.get("best_epoch", "")),
                f"{int(t['n_parameters']):,}" if "n_parameters" in t else "not recorded",
                fmt_num(t.get("train_seconds"), 2) + " s" if "train_seconds" in t
                else "not recorded",
                str(t.get("device", "not recorded")),
            ]
        )  # fmt: skip
    arms = table(
        ("Arm", "Role", "sha256 (first 16)", "Budget", "Best epoch", "Parameters",
         "Training time", "Device"),
        rows, (13, 11, 16, 22, 7, 10, 11, 10),
        caption="Table A.1 The arms audited and how each was trained (model stage's facts).",
        css="compact",
    )  # fmt: skip
    s, lin, cfg = f.get("settings", {}), f.get("lineage", {}), f.get("config", {})
    settings = ", ".join(f"{k} {v}" for k, v in s.items()) or "none (arm packages supplied)"
    arch = ", ".join(f"{k} {cfg[k]}" for k in ("image_arch", "image_size", "patch_size",
                                               "image_dim", "text_dim", "text_layers",
                                               "vocab_size", "max_length", "fusion_dim")
                     if k in cfg)  # fmt: skip
    words = (
        f"Model mode {bundle.model.mode}: {bundle.model.card.get('source', bundle.model.source)}. "
        f"Training settings the run used (the same budget for every trained arm): {settings}; "
        f"seed {f.get('seed', 'not recorded')}. Total training time "
        f"{fmt_num(f.get('train_seconds_total'), 1)} s"
        + (" (the arms were reused: trained earlier with the same settings and data)."
           if f.get("reused") else "."),
        f"Network ({policy.model.deployed_arm} config): {arch or 'not recorded'}.",
        f"Lineage: {lin.get('trained_on', 'not recorded')}; clinics "
        f"{', '.join(lin.get('clinics', [])) or 'not recorded'}; "
        f"{lin.get('n_train', 'not recorded')} training and "
        f"{lin.get('n_validation', 'not recorded')} validation pairs; data sha256 "
        f"{str(lin.get('data_sha256', 'not recorded'))[:16]}. Scored with "
        + ", ".join(f"{float(x):.0%}" for x in f.get("note_removal", []))
        + " of the notes removed.",
    )  # fmt: skip
    return words, (arms,)


def full_tables(bundle: AuditBundle, policy: MultimodalPolicy) -> tuple[Table, ...]:
    ev = bundle.evidence
    crit = [
        [str(r.criterion), str(r.kind), "yes" if r.enabled else "no", str(r.statistic),
         f"{r.comparator} {fmt_num(r.threshold, 3)}" if pd.notna(r.threshold) else r.comparator,
         fmt_num(r.value, 3), "pass" if r.passed else "FAIL", str(r.detail)]
        for r in bundle.decisions["criteria"].itertuples()
    ]  # fmt: skip
    cal = [
        [str(r.scope), str(r.arm), str(r.n), fmt_num(r.top_label_ece, 3),
         fmt_num(r.mean_confidence, 3), fmt_num(r.accuracy, 3)]
        for r in ev["calibration"].itertuples()
    ]  # fmt: skip
    d = ev["discrimination"]
    d = d[d["category"] == ""]
    wide = d.pivot_table(
        index=["scope", "arm", "notes_removed"], columns="metric", values="estimate", sort=False
    ).reset_index()
    ci = d.set_index(["scope", "arm", "notes_removed", "metric"])
    disc_rows = []
    for r in wide.itertuples():
        cells = [str(r.scope), str(r.arm), f"{r.notes_removed:.0%}"]
        for m in ("accuracy", "macro_f1"):
            x = ci.loc[(r.scope, r.arm, r.notes_removed, m)]
            cells.append(fmt_ci(x["estimate"], x["ci_low"], x["ci_high"], 3))
        disc_rows.append(cells)
    fvs = [
        [str(r.scope), f"{r.fusion_arm} - {r.single_arm}", str(r.metric), str(r.n),
         fmt_ci(r.difference, r.ci_low, r.ci_high, 3), fmt_num(r.share_below_zero, 3)]
        for r in ev["fusion_vs_single"].itertuples()
    ]  # fmt: skip
    return (
        table(("Criterion", "Kind", "On", "Statistic", "Needs", "Value", "Result", "Detail"),
              crit, (14, 8, 4, 8, 9, 7, 7, 43),
              caption="Table E.1 The decision's criteria (decisions stage).", css="compact"),
        table(("Scope", "Arm", "n", "Top-label ECE", "Mean confidence", "Accuracy"), cal,
              (16, 20, 8, 18, 20, 18), caption="Table E.2 Calibration of every arm.",
              css="compact"),
        table(("Scope", "Arm", "Notes removed", "Accuracy (95% CI)", "Macro F1 (95% CI)"),
              disc_rows, (14, 18, 14, 27, 27),
              caption="Table E.3 Every arm, scope and share of notes removed.", css="compact"),
        table(("Scope", "Fusion - single", "Metric", "n", "Difference (95% CI)",
               "Share of replicates below 0"), fvs, (12, 30, 12, 8, 22, 16),
              caption="Table E.4 Every paired fusion vs single-modality comparison.",
              css="compact"),
    )  # fmt: skip


def appendix(bundle: AuditBundle, stamp: AuditStamp, policy: MultimodalPolicy) -> Appendix:
    settings = bundle.evidence.facts["settings"]
    prov, inputs, card, note = bundle_provenance_tables(bundle, stamp, policy)
    ta = policy.tone_audit
    methods = (
        MethodNote(
            "Splits",
            "Development patients are split by a salted hash of each patient's first landed "
            "photo into train / "
            "validation / calibration / in-distribution test; the held-out clinic is only "
            "evaluated. The best single modality is chosen on validation.",
        ),
        MethodNote(
            "Intervals",
            f"{settings['ci_level']:.0%} percentile intervals from {settings['n_boot']:,} "
            "bootstrap resamples of patients (F1, accuracy, paired differences); exact "
            "Clopper-Pearson intervals for shares; the in-distribution -> held-out drop uses a "
            f"normal interval from the two independent intervals; seed {settings['seed']}.",
        ),
        MethodNote(
            "Skin tone",
            f"Group gaps with Holm-adjusted z-tests (family alpha {ta.family_alpha:g}, minimum "
            f"gap {ta.min_gap:.0%}); ECE intervals from {ta.n_boot:,} case resamples.",
        ),
    )
    return Appendix(
        provenance=prov,
        inputs=inputs,
        model_card=card,
        signature_note=note,
        left_out=left_out_table(bundle.provenance.left_out, "Clinic"),
        methods=methods,
        policy=policy.rule_lines(),
    )
