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

from clinaudit.reporting.kit import (
    DECISIONS,
    SIMULATED_BAND,
    Appendix,
    ReportFrame,
    Section,
    Table,
    fmt_ci,
    fmt_num,
    fmt_pct,
    pct_ci,
    table,
)
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.pdf import render_template, report_environment
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.report_figures import FigureFile
from clinaudit.reporting.study_package import ReportContent

from .decisions import FALLBACK_MODE
from .evidence import certification_of
from .memo_figures import POLICY_LABELS, calibration_svg, queue_svg
from .memo_sections import (
    appendix,
    backlog_table,
    before_after,
    certificate_section,
    metric,
    metric_text,
    monitoring_table,
    throughput_section,
)
from .policy import TriagePolicy

__all__ = ["TEMPLATE", "TITLE", "MemoView", "build_memo_view", "triage_memo"]

TITLE = "Chest X-ray triage in the reporting queue: operations memo"
TEMPLATE = "cxr_triage/memo.html.j2"
#: Reading policy the memo's headline numbers describe, per deployed mode.
MODE_POLICY = {
    "priority + auto-clear": "priority_autoclear",
    "priority ordering only": "priority",
    "none": "fifo",
    FALLBACK_MODE: "fifo",
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
    backlog: Table
    appendix: Appendix
    figures: tuple[FigureFile, ...]


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
    fifo = metric(thr, "fifo", "days_to_clear_pile")
    mine = metric(thr, mode_policy, "days_to_clear_pile")
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
            metric_text(metric(thr, mode_policy, "effective_throughput_multiplier"), 2),
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
            metric_text(metric(thr, mode_policy, "abnormal_yield_ratio_vs_fifo"), 2) + " x FIFO",
            metric_text(metric(thr, mode_policy, "abnormal_read_in_first_days"), 0)
            + " abnormal read",
        ],
        [
            "Maximum wait",
            f"{fmt_num(metric(thr, mode_policy, 'max_wait_days')['estimate'], 1)} days",
            f"{name}; aging cap {w.aging_cap_days:g} days",
        ],
        [
            "Missed abnormal studies",
            metric_text(metric(thr, mode_policy, "missed_abnormal_inflow_per_day"), 1) + " per day",
            metric_text(metric(thr, mode_policy, "missed_abnormal_pile"), 0) + " in the backlog",
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
            calibration_svg(cert.reliability, before_after(cert.calibration), simulated=simulated),
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
            throughput_section(ev, policy, figures[0]),
            certificate_section(ev, cert, policy, figures[1], bundle.model),
        ),
        monitoring=monitoring_table(bundle.monitoring["plan"]),
        backlog=backlog_table(ev),
        appendix=appendix(bundle, stamp, cert, policy),
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
        "backlog_audit.csv": bundle.evidence["backlog_audit"].to_csv(index=False).encode(),
        "reread_monitor.csv": bundle.evidence["reread_monitor"].to_csv(index=False).encode(),
    }
    return ReportContent(
        html=html,
        figures={f.path: f.data for f in view.figures},
        attachments=attachments,
        metadata={"decision": view.decision, "mode": view.mode},
    )
