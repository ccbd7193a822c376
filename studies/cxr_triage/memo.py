"""The ``cxr_triage`` operations memo: audit bundle -> view -> HTML, figures, attachments.

Three pages for the head of clinical operations, then appendices:

1. the decision, the numbers that matter to operations (with intervals) and what the model must
   not be used for;
2. throughput under the reading capacity: the three reading policies and the queue plot;
3. calibration and the auto-clear certificate, the subgroup re-certification and the monitoring.

Every number comes from the stored evidence, decisions and monitoring plan; the settings are the
ones the run used (the evidence's facts, the loaded policy), never defaults. Pure core (no
Dagster): the package stage calls :meth:`CxrTriage.report`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from clinaudit.reporting.kit import (
    DECISIONS,
    SIMULATED_BAND,
    Appendix,
    MethodNote,
    PolicyInfo,
    ReportFrame,
    Section,
    Table,
    fmt_ci,
    fmt_num,
    fmt_pct,
    left_out_table,
    pct_ci,
    provenance_tables,
    table,
)
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.pdf import render_template, report_environment
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.report_figures import FigureFile
from clinaudit.reporting.study_package import ReportContent

from .evidence import certification_of
from .memo_figures import POLICY_LABELS, calibration_svg, queue_svg
from .policy import TriagePolicy

__all__ = ["TEMPLATE", "TITLE", "MemoView", "build_memo_view", "triage_memo"]

TITLE = "Chest X-ray triage in the reporting queue: operations memo"
TEMPLATE = "cxr_triage/memo.html.j2"
#: Reading policy the memo's headline numbers describe, per deployed mode.
MODE_POLICY = {
    "priority + auto-clear": "priority_autoclear",
    "priority ordering only": "priority",
    "none": "fifo",
}


@dataclass(frozen=True, kw_only=True)
class MemoView(ReportFrame):
    """Everything the memo template prints (final text)."""

    decision: str
    css: str
    ask: str
    mode: str
    reasons: tuple[str, ...]
    conditions: tuple[str, ...]
    headline: str
    kpis: Table
    must_not: tuple[str, ...]
    sections: tuple[Section, ...]
    monitoring: Table
    appendix: Appendix
    figures: tuple[FigureFile, ...]


def _metric(table_: pd.DataFrame, policy: str, metric: str) -> pd.Series:
    return table_[(table_["policy"] == policy) & (table_["metric"] == metric)].iloc[0]


def _ci(row: pd.Series, digits: int = 1) -> str:
    if not row["depends_on_truth"]:
        return fmt_num(row["estimate"], digits)
    return fmt_ci(row["estimate"], row["ci_low"], row["ci_high"], digits)


def _conditions(text: str, shown: int = 3) -> tuple[str, ...]:
    """The decision's conditions; subgroup ones beyond ``shown`` are counted, not listed (all
    are in Section 3)."""
    items = [c for c in text.split("; ") if c]
    groups = [c for c in items if "auto-clear below" in c or "no auto-clear (" in c]
    other = [c for c in items if c not in groups]
    if len(groups) > shown:
        rest = len(groups) - shown
        groups = [*groups[:shown], f"... and {rest} more subgroups with narrower auto-clear"]
    return tuple(other[:1] + groups + other[1:])


def _must_not(policy: TriagePolicy, sites: Sequence[str], certified: bool) -> tuple[str, ...]:
    s = policy.scope
    where = (
        f"Not at a site, or at a prevalence, where the certificate was not re-run: certified for "
        f"{', '.join(sites)} on this audit's data only."
        if certified
        else "Not to clear any study anywhere: no auto-clear threshold could be certified."
    )
    return (
        "Not autonomous reporting without regulatory clearance: until the department holds it, "
        "auto-cleared studies are still reported by a radiologist, after the rest of the queue "
        "(the auto-clear throughput figures assume that clearance).",
        f"Not for children (under {s.min_age_years} years), lateral-only studies (views other "
        f"than {'/'.join(s.views)}), line and tube positions, comparison with prior studies, or "
        "tuberculosis / COVID-19 screening.",
        where,
        "Never to de-prioritise the uncertain bucket: it holds the studies where the "
        "radiologist's time is most valuable and is read in order of that value.",
    )


def _kpis(ev, cert, policy: TriagePolicy, mode_policy: str) -> Table:
    thr, outcomes = ev["throughput"], cert.test_outcomes.set_index("metric")
    w, c = policy.workload, cert.certificate
    sens = outcomes.loc["sensitivity"]
    normals = outcomes.loc["normals_cleared"]
    name = POLICY_LABELS[mode_policy]
    fifo = _metric(thr, "fifo", "days_to_clear_pile")
    mine = _metric(thr, mode_policy, "days_to_clear_pile")
    pile = int(ev.facts["throughput"]["n_pile"])
    rows = [
        [
            "Certified sensitivity",
            (
                f"≥ {fmt_pct(1 - c.alpha)} with probability ≥ {fmt_pct(1 - c.delta, 0)}"
                if c.certified
                else "none: no threshold could be certified"
            ),
            f"test split: {pct_ci(sens['estimate'], sens['ci_low'], sens['ci_high'])}",
        ],
        [
            "Normal studies cleared",
            pct_ci(normals["estimate"], normals["ci_low"], normals["ci_high"]),
            "test split, share of normal studies in the auto-clear bucket",
        ],
        [
            "Capacity multiplier",
            _ci(_metric(thr, mode_policy, "effective_throughput_multiplier"), 2),
            f"{name}: studies disposed per reading day / {w.reads_per_day:,.0f} reads",
        ],
        [
            f"Days to clear {pile:,} backlog studies",
            (
                f"{fmt_num(fifo['estimate'], 1)} (FIFO, no triage)"
                if mode_policy == "fifo"
                else f"{fmt_num(mine['estimate'], 1)} ({name}) vs "
                f"{fmt_num(fifo['estimate'], 1)} (FIFO)"
            ),
            f"with {w.daily_inflow:,} new studies a day",
        ],
        [
            f"Abnormal yield, first {w.first_days} days",
            _ci(_metric(thr, mode_policy, "abnormal_yield_ratio_vs_fifo"), 2) + " x FIFO",
            _ci(_metric(thr, mode_policy, "abnormal_read_in_first_days"), 0) + " abnormal read",
        ],
        [
            "Maximum wait",
            f"{fmt_num(_metric(thr, mode_policy, 'max_wait_days')['estimate'], 1)} days",
            f"{name}; aging cap {w.aging_cap_days:g} days",
        ],
        [
            "Missed abnormal studies",
            _ci(_metric(thr, mode_policy, "missed_abnormal_inflow_per_day"), 1) + " per day",
            _ci(_metric(thr, mode_policy, "missed_abnormal_pile"), 0) + " in the backlog",
        ],
    ]
    return table(
        ("What operations gets", "Value (95% interval)", "Basis"),
        rows,
        (30, 36, 34),
        caption="Table 1 The numbers that matter to operations.",
        note=(
            "Queue intervals reflect the unknown labels of the backlog drawn from the calibrated "
            f"probabilities ({w.n_draws} draws); values fixed by the reading order have none."
        ),
        css="compact",
    )


def _headline(ev) -> str:
    verdict = ev["verdict"]
    parts = []
    for r in verdict.itertuples():
        ci = fmt_ci(r.estimate, r.ci_low, r.ci_high, 2)
        word = "doubles" if r.doubles else "does not double"
        parts.append(f"{r.definition}: {ci} - {word}")
    holds = bool(verdict["doubles"].any())
    lead = (
        '"Double effective radiologist throughput" holds only for the definition marked below'
        if holds
        else '"Double effective radiologist throughput" does not hold for either definition'
    )
    return (
        lead
        + " (priority + auto-clear vs reads per day; lower interval end >= 2): "
        + ("; ".join(parts) + ".")
    )


def _throughput_section(ev, policy: TriagePolicy, figure: FigureFile) -> Section:
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
    rows = [[label, *[_ci(_metric(thr, p, m), d) for p in policies]] for m, label, d in metrics]
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


def _certificate_section(
    ev, cert, policy: TriagePolicy, figure: FigureFile, bundle_model
) -> Section:
    c, f, plan = cert.certificate, cert.flag, cert.label_plan
    cal = _before_after(cert.calibration)
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
            "certificate on the backlog itself.",
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


def _monitoring_table(plan: pd.DataFrame) -> Table:
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
        f"{ci('auroc_difference', 'delong_ci_low', 'delong_ci_high')})."
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


def _before_after(calibration: pd.DataFrame) -> pd.DataFrame:
    """Calibration rows in reading order: before temperature scaling, then after."""
    return calibration.sort_values("group", key=lambda g: ~g.str.startswith("before"))


def _appendix(bundle: AuditBundle, stamp: AuditStamp, cert, policy: TriagePolicy) -> Appendix:
    facts = cert.facts
    prov, inputs, card, note = provenance_tables(
        audit_id=stamp.audit_id,
        generated_at=stamp.generated_at,
        code_version=stamp.code_version,
        model_sha256=bundle.model.identity,
        policy=PolicyInfo(policy.policy_id, policy.version, policy.sha256, policy.text),
        signer=stamp.signer,
        development_signature=stamp.development_signature,
        input_batches=bundle.provenance.batches,
        model_card=dict(bundle.model.card),
    )
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


def build_memo_view(bundle: AuditBundle, stamp: AuditStamp) -> MemoView:
    """The memo's view from the audit bundle (see the module docstring)."""
    ev, policy = bundle.evidence, bundle.policy
    assert isinstance(policy, TriagePolicy)
    cert = certification_of(ev)
    decided = bundle.decisions["decisions"].iloc[0]
    mode = str(decided["mode"])
    mode_policy = MODE_POLICY[mode]
    simulated = bundle.provenance.simulated
    figures = (
        FigureFile(
            "queue.svg",
            queue_svg(ev["curves"], first_days=policy.workload.first_days, simulated=simulated),
            "queue plot",
            "Figure 1 Expected abnormal studies read and backlog left, per working day "
            f"(dashed: day {policy.workload.first_days}).",
        ),
        FigureFile(
            "calibration.svg",
            calibration_svg(cert.reliability, _before_after(cert.calibration), simulated=simulated),
            "reliability diagrams",
            "Figure 2 Reliability of P(abnormal) on the test split, before and after "
            "temperature scaling (observed rate with Wilson 95% CI per bin).",
            width="55%",
        ),
    )
    css, ask = DECISIONS[str(decided["decision"])]
    return MemoView(
        study_title=TITLE,
        audit_id=stamp.audit_id,
        generated_at=stamp.generated_at,
        simulated=simulated,
        band_text=SIMULATED_BAND,
        decision=str(decided["decision"]),
        css=css,
        ask=ask,
        mode=mode,
        reasons=tuple(str(decided["reasons"]).split("; ")),
        conditions=_conditions(str(decided["conditions"])),
        headline=_headline(ev),
        kpis=_kpis(ev, cert, policy, mode_policy),
        must_not=_must_not(policy, bundle.provenance.partitions, cert.certificate.certified),
        sections=(
            _throughput_section(ev, policy, figures[0]),
            _certificate_section(ev, cert, policy, figures[1], bundle.model),
        ),
        monitoring=_monitoring_table(bundle.monitoring["plan"]),
        appendix=_appendix(bundle, stamp, cert, policy),
        figures=figures,
    )


def triage_memo(bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
    """Render the memo HTML, its figures and the evidence attached to the package."""
    view = build_memo_view(bundle, stamp)
    html = render_template(report_environment(), TEMPLATE, view)
    ev = bundle.evidence
    attachments = {
        "triage_certificate.json": json.dumps(
            {
                "certificate": ev["certificate"].iloc[0].to_dict(),
                "flag": ev["flag"].iloc[0].to_dict(),
                "temperature": ev["temperature"].iloc[0].to_dict(),
                "subgroups": ev["subgroups"].to_dict(orient="records"),
            },
            indent=2,
            sort_keys=True,
            default=str,
        ).encode(),
        "throughput.csv": ev["throughput"].to_csv(index=False).encode(),
        "test_outcomes.csv": ev["test_outcomes"].to_csv(index=False).encode(),
        "decision.csv": bundle.decisions["criteria"].to_csv(index=False).encode(),
        "monitoring_plan.csv": bundle.monitoring["plan"].to_csv(index=False).encode(),
    }
    return ReportContent(
        html=html,
        figures={f.path: f.data for f in view.figures},
        attachments=attachments,
        metadata={"decision": view.decision, "mode": view.mode},
    )
