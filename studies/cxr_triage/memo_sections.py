"""Pages 2-3 and the appendix of the ``cxr_triage`` operations memo (see :mod:`.memo`).

Section builders take the stored evidence and the loaded policy and return report-kit objects
(final text): throughput (page 2), the model, calibration and the certificate (page 3), the
monitoring table and the appendix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

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
    pct_ci,
    table,
)
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.report_figures import FigureFile

from .memo_figures import POLICY_LABELS
from .policy import TriagePolicy

__all__ = [
    "appendix",
    "before_after",
    "certificate_section",
    "metric",
    "metric_text",
    "backlog_table",
    "monitoring_table",
    "throughput_section",
]


def metric(table_: pd.DataFrame, policy: str, metric: str) -> pd.Series:
    return table_[(table_["policy"] == policy) & (table_["metric"] == metric)].iloc[0]


def metric_text(row: pd.Series, digits: int = 1) -> str:
    if not row["depends_on_truth"]:
        return fmt_num(row["estimate"], digits)
    return fmt_ci(row["estimate"], row["ci_low"], row["ci_high"], digits)


def throughput_section(ev, policy: TriagePolicy, figure: FigureFile) -> Section:
    thr, w, facts = ev["throughput"], policy.workload, ev.facts["throughput"]
    metrics = [
        ("days_to_clear_pile", "Days to clear the backlog", 1),
        ("abnormal_read_in_first_days", f"Abnormal read in first {w.first_days} days", 0),
        ("abnormal_yield_ratio_vs_fifo", "  ratio to FIFO", 2),
        ("abnormal_turnaround_mean_days", "Abnormal turnaround, mean (days)", 1),
        ("abnormal_turnaround_p90_days", "Abnormal turnaround, p90 (days)", 1),
        ("critical_turnaround_mean_days", "Critical turnaround, mean (days)", 1),
        ("critical_turnaround_max_days", "Critical turnaround, max (days)", 1),
        ("max_wait_days", "Maximum wait (days)", 1),
        ("missed_abnormal_pile", "Missed abnormal, backlog", 0),
        ("missed_abnormal_inflow_per_day", "Missed abnormal per day", 1),
        ("effective_throughput_multiplier", "Capacity multiplier", 2),
    ]
    policies = list(POLICY_LABELS)
    rows = [
        [label, *[metric_text(metric(thr, p, m), d) for p in policies]] for m, label, d in metrics
    ]
    backlog = (
        f"the {facts['n_landed']:,} landed backlog studies resampled (with replacement) to "
        f"{facts['n_pile']:,}"
        if facts["resampled"]
        else f"the {facts['n_pile']:,} landed backlog studies"
    )
    return Section(
        new_page=True,
        anchor="throughput",
        title=f"2 Throughput under {w.reads_per_day:,.0f} reads a day",
        paragraphs=(
            f"Capacity: {w.radiologists} radiologists x {w.hours_per_day:g} h x "
            f"{w.reads_per_hour:g} reads/h. Backlog: {backlog}, all waiting on day 0; then "
            f"{facts['n_inflow']:,} new studies over {facts['inflow_days']} working days "
            f"(about {w.daily_inflow:,} a day, drawn from the same studies). Priority order reads "
            "the highest value first (P(abnormal) x severity); a study waiting longer than "
            f"{w.aging_cap_days:g} days is read before any other. Auto-clear takes the cleared "
            f"bucket off the worklist except a random {policy.monitoring.reread_fraction:.0%} "
            "re-read quota.",
        ),
        figures=(figure,),
        tables=(
            table(
                ("Outcome", *[POLICY_LABELS[p] for p in policies]),
                rows,
                (34, 22, 22, 22),
                caption="Table 2 Reading policies compared (95% intervals over label draws).",
                css="compact",
            ),
        ),
    )


def certificate_section(
    ev, cert, policy: TriagePolicy, figure: FigureFile, bundle_model
) -> Section:
    c, f, plan = cert.certificate, cert.flag, cert.label_plan
    cal = before_after(cert.calibration)
    cal_rows = [
        [
            str(r.group),
            fmt_ci(r.ece_width, r.ece_width_ci_low, r.ece_width_ci_high, 3),
            fmt_ci(r.ece_mass, r.ece_mass_ci_low, r.ece_mass_ci_high, 3),
            fmt_ci(r.brier, r.brier_ci_low, r.brier_ci_high, 3),
        ]
        for r in cal.itertuples()
    ]
    cert_rows = [
        ["Auto-clear below", fmt_num(c.threshold, 4) if c.certified else "none certified"],
        ["Guarantee", f"P(miss rate ≤ {c.alpha:g}) ≥ {1 - c.delta:g} (Learn-then-Test)"],
        ["Abnormal / normal calibration studies", f"{c.n_abnormal:,} / {c.n_normal:,}"],
        ["Misses at the threshold", f"{c.misses} (upper bound {fmt_pct(c.miss_rate_upper, 2)})"],
        ["Normals cleared (calibration)", fmt_pct(c.normals_cleared)],
        [
            "Flag abnormal at or above",
            fmt_num(f.threshold, 3) if f.threshold is not None else "none certified",
        ],
        ["Labels any certificate needs", f"{plan.abnormal:,} abnormal studies"],
    ]
    sub = cert.subgroups
    changed = sub[sub["action"] != "keep"] if len(sub) else sub
    bullets = tuple(
        f"{r.attribute} {r.group}: {r.action} ({int(r.n_abnormal)} abnormal calibration studies)"
        for r in changed.itertuples()
    ) or ("Every subgroup keeps the global threshold.",)
    return Section(
        new_page=True,
        anchor="certificate",
        title="3 Calibration and the auto-clear certificate",
        paragraphs=(
            _model_words(bundle_model),
            _temperature_words(cert),
            f"The miss rate is the share of abnormal studies the rule clears. A labelled sample "
            f"needs at least {plan.abnormal:,} abnormal studies (about {plan.studies:,} studies, "
            f"{plan.radiologist_days:.1f} radiologist-days at {plan.reads_per_day:,.0f} reads a "
            f"day) before a miss rate of {plan.alpha:g} can be certified at all; each subgroup "
            f"needs as many. A random sample of {len(ev['audit_sample']):,} backlog studies "
            "(evidence table audit_sample) is drawn for reading and labelling, to check the "
            f"certificate on the backlog itself; {ev.facts['backlog_audit']['n_read']:,} "
            "audit-sample reads have landed (Table C.2).",
        ),
        figures=(figure,),
        tables=(
            table(
                ("Test split", "ECE equal-width", "ECE equal-mass", "Brier"),
                cal_rows,
                (34, 22, 22, 22),
                caption="Table 3 Calibration of P(abnormal) on the test split (95% CIs).",
                css="compact",
            ),
            table(
                ("Certificate", "Value"),
                cert_rows,
                (50, 50),
                caption="Table 4 The auto-clear certificate and the flag rule (calibration split).",
                css="compact",
            ),
        ),
        bullets_title="Subgroup re-certification (" + ", ".join(policy.certificate.subgroups) + ")",
        bullets=bullets,
    )


def monitoring_table(plan: pd.DataFrame) -> Table:
    rows = [
        [
            str(r.item),
            "" if pd.isna(r.value) else f"{fmt_num(r.value, 3)} {r.unit}".strip(),
            r.detail,
        ]
        for r in plan.itertuples()
    ]
    return table(
        ("Item", "Value", "Detail"),
        rows,
        (24, 20, 56),
        caption="Table C.1 The monitoring plan (re-read quota, alarm, fallback).",
        css="compact",
    )


def backlog_table(ev) -> Table:
    """What the landed reads of backlog studies say about the current rule (Table C.2)."""
    facts = ev.facts["backlog_audit"]
    out = ev["backlog_audit"].set_index("metric")
    m = ev["reread_monitor"].iloc[0]

    def outcome(name: str) -> str:
        r = out.loc[name]
        if int(r["n"]) == 0:
            return "none yet"
        return f"{pct_ci(r['estimate'], r['ci_low'], r['ci_high'])} ({int(r['k'])}/{int(r['n'])})"

    rows = [
        [
            "Audit sample read",
            f"{facts['n_read']:,} reads",
            f"{facts['n_read_of_drawn']:,} of the {facts['n_drawn']:,} drawn; "
            f"{facts['n_abnormal']:,} read abnormal",
        ],
        ["Miss rate, cleared bucket", outcome("miss_rate"), "abnormal cleared / abnormal read"],
        ["Normals cleared", outcome("normals_cleared"), "normal cleared / normal read"],
        ["Flag PPV", outcome("flag_ppv"), "abnormal among flagged reads"],
        [
            "Re-read monitor",
            str(m["status"]),
            (
                f"{int(m['n_misses'])} abnormal in {int(m['n_monitored'])} re-reads of cleared "
                f"studies (null {fmt_num(m['null_rate'], 4)}, e-value {fmt_num(m['e_value'], 2)}"
                f", alarm at {1 / float(m['level']):g})"
                + (f"; alarm on {m['alarm_date']}" if bool(m["alarm"]) else "")
                + (
                    f"; {int(m['n_not_cleared'])} re-reads of studies this rule does not clear"
                    if int(m["n_not_cleared"])
                    else ""
                )
            ),
        ],
    ]
    return table(
        ("Backlog reads", "Value (95% CI)", "Detail"),
        rows,
        (24, 30, 46),
        caption="Table C.2 The current rule on the reads of backlog studies landed so far "
        "(exact intervals; the monitor is anytime-valid).",
        css="compact",
    )


def _model_words(model) -> str:
    """Where the model came from and what fine-tuning bought over training from scratch."""
    rows = {r["label"]: r for r in model.facts.get("transfer_vs_scratch", [])}
    if "abnormal" not in rows:
        return (
            f"The audited model is a {model.mode} triage package (sha256 {model.identity[:12]}); "
            "no from-scratch comparison was run."
        )
    r = rows["abnormal"]

    def ci(metric: str, low: str = "", high: str = "") -> str:
        lo, hi = low or f"{metric}_ci_low", high or f"{metric}_ci_high"
        return fmt_ci(r[metric], r[lo], r[hi], 3)

    return (
        f"The model was fine-tuned from {model.facts.get('backbone', 'a backbone package')}. "
        f"Test AUROC of P(abnormal): {ci('auroc_transfer')} fine-tuned vs "
        f"{ci('auroc_scratch')} for the same network trained from scratch on the same studies "
        f"and epochs; gain {ci('auroc_difference')} (paired patient bootstrap; DeLong "
        f"{ci('auroc_difference', 'delong_ci_low', 'delong_ci_high')}), the gain at this "
        f"budget: {_fine_tuning_words(model.facts.get('fine_tuning'))}"
    )


#: The part of the backbone a fine-tuning trains (``TransferConfig.trainable``), in words.
_TRAINABLE_WORDS = {"all": "every weight", "last_block": "the last block and the head",
                    "head": "the head"}  # fmt: skip


def _fine_tuning_words(f: Mapping[str, Any] | None) -> str:
    """The settings both arms were trained with (the model stage's facts: what the run used)."""
    if not f:
        return "settings not recorded."
    epochs = (
        f"{f['epochs']} epochs"
        if f["epochs"] == f["epochs_scratch"]
        else f"{f['epochs']} epochs fine-tuned, {f['epochs_scratch']} from scratch"
    )
    return (
        f"both arms {f['architecture']} at {f['input_size']} px, {f['n_train']:,} training "
        f"studies ({f['n_val']:,} more chose the epoch), {epochs} in batches of "
        f"{f['batch_size']}; fine-tuned: {_TRAINABLE_WORDS.get(f['trainable'], f['trainable'])} "
        f"at lr {f['lr']:g}; from scratch: every weight at lr {f['scratch_lr']:g}."
    )


def _temperature_words(cert) -> str:
    n = f"{cert.facts['n_calibration_in_scope']:,} in-scope calibration studies"
    t = cert.temperature
    if t is None:
        return (
            f"No positive temperature fits the logits of the {n} "
            f"({cert.facts['temperature_not_fitted']}); the probabilities below are the "
            "uncalibrated scores and the decision fails on it."
        )
    return (
        f"Temperature scaling on {n}: T = {t.temperature:.3f} (mean log-loss "
        f"{t.nll_before:.3f} -> {t.nll_after:.3f}); AUROC changes by "
        f"{cert.facts['auroc_change_from_temperature']:.1e} (a positive temperature keeps every "
        "rank)."
    )


def before_after(calibration: pd.DataFrame) -> pd.DataFrame:
    """Calibration rows in reading order: before temperature scaling, then after."""
    return calibration.sort_values("group", key=lambda g: ~g.str.startswith("before"))


def appendix(bundle: AuditBundle, stamp: AuditStamp, cert, policy: TriagePolicy) -> Appendix:
    facts = cert.facts
    prov, inputs, card, note = bundle_provenance_tables(bundle, stamp, policy)
    methods = (
        MethodNote(
            "Splits",
            "Calibration and test studies are labelled and patient-disjoint from the training "
            "studies; the backlog is unlabelled. Out-of-scope studies never enter the "
            "certificate and are bucketed uncertain by rule.",
        ),
        MethodNote(
            "Certificate",
            f"Learn-then-Test with fixed-sequence testing over increasing thresholds; exact "
            f"binomial p-values at delta {facts['delta']:g}; subgroups re-certified "
            f"({facts['subgroup_multiplicity']} multiplicity). Held-out checks use exact "
            "(Clopper-Pearson) intervals.",
        ),
        MethodNote(
            "Intervals",
            f"{100 * facts['ci_level']:.0f}% percentile intervals from {facts['n_boot']:,} "
            "bootstrap resamples of patients (AUROC, ECE, Brier); seed "
            f"{facts['seed']}.",
        ),
    )
    return Appendix(
        provenance=prov,
        inputs=inputs,
        model_card=card,
        signature_note=note,
        left_out=left_out_table(bundle.provenance.left_out),
        methods=methods,
        policy=policy.rule_lines(),
    )
