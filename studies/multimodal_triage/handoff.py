"""The ``multimodal_triage`` clinical hand-off document: audit bundle -> view -> HTML, figures,
attachments.

Five pages for the clinicians who receive the model at the held-out clinic, then appendices:

1. the decision, its conditions, the key numbers with intervals and what the model must not be
   used for;
2. when the model is reliable: per-category sensitivity / specificity, the in-distribution ->
   held-out drop, fusion vs each single modality, notes removed;
3. where deferral fires: the certified rule, what it did at calibration / test / held-out,
   AURC / AUGRC, deferral rates by group and the risk-coverage figure;
4. known biases by skin tone (Fitzpatrick groups and types, annotator B, ITA bands, tone x
   clinic, annotator agreement) next to the published DDI anchor;
5. the data composition and the monitoring plan.

Appendices: the model and training settings the run used, the policy, methods, provenance and
the full tables. Every number comes from the stored evidence, decisions, monitoring plan and
model facts; the settings are the ones the run used, never defaults. Pure core (no Dagster): the
package stage calls :meth:`MultimodalTriage.report`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clinaudit.audit.records import TableSet
from clinaudit.reporting.kit import (
    DECISIONS,
    SIMULATED_BAND,
    Appendix,
    Cell,
    ReportFrame,
    Section,
    Table,
    fmt_ci,
    fmt_pct,
    pct_ci,
    table,
)
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.pdf import render_template, report_environment
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.report_figures import FigureFile
from clinaudit.reporting.study_package import ReportContent

from .decisions import TONE_ATTRIBUTE
from .handoff_appendix import (
    appendix,
    composition_section,
    full_tables,
    model_appendix,
    monitoring_table,
)
from .handoff_figures import risk_coverage_svg
from .handoff_sections import deferral_section, guarantee_words, reliability_section
from .handoff_skin_tone import tone_section
from .policy import MultimodalPolicy

__all__ = ["TEMPLATE", "TITLE", "HandoffView", "build_handoff_view", "handoff_document"]

TITLE = "Skin-lesion photo + note classifier: clinical hand-off"
TEMPLATE = "multimodal_triage/handoff.html.j2"
#: How each condition of :func:`.decisions.decide_handoff` begins (a condition's own text may
#: contain the ``"; "`` the conditions are joined with).


@dataclass(frozen=True, kw_only=True)
class HandoffView(ReportFrame):
    """Everything the hand-off template prints (final text)."""

    decision: str
    css: str
    ask: str
    mode: str
    clinic: str
    reasons: tuple[str, ...]
    conditions: tuple[str, ...]
    headline: str
    kpis: Table
    must_not: tuple[str, ...]
    sections: tuple[Section, ...]
    model_words: tuple[str, ...]
    model_tables: tuple[Table, ...]
    appendix: Appendix
    full_tables: tuple[Table, ...]
    figures: tuple[FigureFile, ...]


def _split(text: str) -> tuple[str, ...]:
    """The ``"; "``-joined items of a decision's reasons or conditions (see decisions.py)."""
    return tuple(p for p in str(text).split("; ") if p)


def _kpis(ev: TableSet, policy: MultimodalPolicy) -> Table:
    head = ev["headline"].set_index(["scope", "metric"])
    out = ev["deferral_outcomes"].set_index("scope")

    def cell(scope: str, metric: str) -> str:
        r = head.loc[(scope, metric)]
        if metric in ("coverage", "accepted_error", "malignant_sensitivity"):
            if metric == "accepted_error" and int(r["n"]) == 0:
                return "no output accepted"
            return f"{pct_ci(r['estimate'], r['ci_low'], r['ci_high'])}, n={int(r['n'])}"
        return f"{fmt_ci(r['estimate'], r['ci_low'], r['ci_high'])}, n={int(r['n'])}"

    guarantee, css = guarantee_words(out.loc["held_out"], policy)
    d = policy.deferral
    rows: list[list[Any]] = [
        [
            name,
            cell("held_out", metric),
            cell("test", metric),
            basis,
        ]
        for metric, name, basis in (
            ("macro_f1", "Macro F1", "mean F1 over the six categories"),
            ("accuracy", "Accuracy", "share of pairs with the right category"),
            ("malignant_sensitivity", "Malignant sensitivity",
             f"{', '.join(policy.malignant)} called malignant, before review"),
            ("coverage", "Coverage", "share of outputs accepted without review"),
            ("accepted_error", "Error of accepted outputs",
             f"wrong among accepted; certified limit {d.alpha_error:.0%}"),
        )
    ]  # fmt: skip
    rows.append(["Guarantee at the held-out clinic", Cell(guarantee, css), "", "Section 3"])
    return table(
        ("Number", f"Held-out clinic ({policy.held_out_clinic})", "In-distribution test",
         "Basis"),
        rows, (22, 27, 27, 24),
        caption=f"Table 1 Key numbers of {policy.model.deployed_arm} (95% CIs: patient bootstrap "
        "for F1 and accuracy, exact for shares).",
        css="compact",
    )  # fmt: skip


def _headline(ev: TableSet, policy: MultimodalPolicy, decision: str) -> str:
    head = ev["headline"].set_index(["scope", "metric"])
    f1, cov = head.loc[("held_out", "macro_f1")], head.loc[("held_out", "coverage")]
    return (
        f"Decision {decision} for {policy.held_out_clinic}: at this clinic, which the model never "
        f"saw in training, {policy.model.deployed_arm} reached a macro F1 of "
        f"{fmt_ci(f1['estimate'], f1['ci_low'], f1['ci_high'])} and the deferral rule accepted "
        f"{fmt_pct(cov['estimate'])} of outputs without review"
        + (
            "; the model is not to be deployed."
            if decision == "NO-GO"
            else "; every other output goes to a clinician."
        )
    )


def _must_not(bundle: AuditBundle, policy: MultimodalPolicy, decision: str) -> tuple[str, ...]:
    ev = bundle.evidence
    tone = ev["tone_audit"]
    tone = tone[(tone["attribute"] == TONE_ATTRIBUTE) & (tone["group"] != "not recorded")]
    open_groups = [
        f"{r.group} ({'gap' if r.verdict == 'gap' else 'insufficient evidence'}, n={r.n})"
        for r in tone.itertuples()
        if not str(r.verdict).startswith("no gap")
    ]
    clinics = ev.facts["settings"]["clinics"]
    cohort = bundle.cohort
    cameras = ""
    if len(cohort) and "dermoscopic_share" in cohort.columns:
        cameras = " (photo types audited, dermoscopic share: " + ", ".join(
            f"{r.clinic} {fmt_pct(r.dermoscopic_share, 0)}" for r in cohort.itertuples()
        ) + ")"  # fmt: skip
    items = []
    if decision == "NO-GO":
        items.append(
            f"Not for any clinical use at {policy.held_out_clinic}: the decision is NO-GO "
            "(Table E.1 lists the failed criteria)."
        )
    items += [
        "Not for autonomous diagnosis: every output is a suggestion to a clinician; deferred "
        "outputs are reviewed, and accepted outputs are sampled for review "
        f"({policy.monitoring.review_sample_fraction:.0%}).",
        f"Not outside the validated clinics and cameras: held-out validation at "
        f"{policy.held_out_clinic} only; in-distribution at "
        f"{', '.join(c for c in clinics if c != policy.held_out_clinic)}{cameras}. A new clinic, "
        f"camera or dermatoscope needs a new audit ({'; '.join(policy.monitoring.recertify_on)}).",
        (
            "Not without clinician review for the Fitzpatrick groups (annotator A) marked gap or "
            f"insufficient evidence: {', '.join(open_groups)} (Section 4)."
            if open_groups
            else "Every Fitzpatrick group (annotator A) showed no gap of "
            f"{policy.tone_audit.min_gap:.0%} or more; groups outside the audited mix still need "
            "their own audit."
        ),
        f"Not for lesions outside the six categories ({', '.join(policy.labels)}): the model "
        "always answers one of them, so any other lesion gets a wrong label.",
        "Not for children unless validated: this audit did not evaluate the model by age.",
        "Not as a substitute for histopathology, nor to rule out malignancy in a lesion that "
        "looks or behaves suspicious to the clinician.",
    ]
    return tuple(items)


def build_handoff_view(bundle: AuditBundle, stamp: AuditStamp) -> HandoffView:
    """The hand-off document's view from the audit bundle (see the module docstring)."""
    ev, policy = bundle.evidence, bundle.policy
    if not isinstance(policy, MultimodalPolicy):
        raise TypeError(
            f"bundle.policy is a {type(policy).__name__}; expected a MultimodalPolicy (load the "
            "multimodal_triage policy)"
        )
    decided = bundle.decisions["decisions"].iloc[0]
    decision = str(decided["decision"])
    simulated = bundle.provenance.simulated
    rule = ev["deferral_rule"].iloc[0]
    out = ev["deferral_outcomes"].set_index("scope")
    coverage = {s: float(out.loc[s, "coverage"]) if bool(rule["certified"]) else float("nan")
                for s in out.index}  # fmt: skip
    figure = FigureFile(
        "risk_coverage.svg",
        risk_coverage_svg(
            ev["risk_coverage"], alpha_error=policy.deferral.alpha_error, coverage=coverage,
            simulated=simulated,
        ),
        "risk-coverage curves",
        "Figure 3.1 Error of the accepted outputs as more outputs are accepted (lowest review "
        "score first), review score vs max-softmax baseline; dashed: alpha_error, dotted: the "
        "certified rule's coverage.",
    )  # fmt: skip
    css, ask = DECISIONS[decision]
    model_words, model_tables = model_appendix(bundle, policy)
    return HandoffView(
        study_title=TITLE,
        audit_id=stamp.audit_id,
        generated_at=stamp.generated_at,
        simulated=simulated,
        band_text=SIMULATED_BAND,
        decision=decision,
        css=css,
        ask=ask,
        mode=str(decided["mode"]),
        clinic=str(decided["clinic"]),
        reasons=_split(decided["reasons"]),
        conditions=_split(decided["conditions"]),
        headline=_headline(ev, policy, decision),
        kpis=_kpis(ev, policy),
        must_not=_must_not(bundle, policy, decision),
        sections=(
            reliability_section(ev, policy),
            deferral_section(ev, policy, figure),
            tone_section(ev, policy, simulated),
            composition_section(
                ev,
                policy,
                dict(bundle.model.facts.get("lineage", {})),
                monitoring_table(bundle.monitoring["plan"]),
            ),
        ),  # fmt: skip
        model_words=model_words,
        model_tables=model_tables,
        appendix=appendix(bundle, stamp, policy),
        full_tables=full_tables(bundle, policy),
        figures=(figure,),
    )


def handoff_document(bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
    """Render the hand-off HTML, its figures and the evidence attached to the package.

    Parameters
    ----------
    bundle : AuditBundle
        The stored stages of a ``multimodal_triage`` audit.
    stamp : AuditStamp
        The audit's id, time, code version and signer.

    Returns
    -------
    ReportContent
        HTML, figures by path, evidence attachments (CSV) and the decision metadata.
    """
    view = build_handoff_view(bundle, stamp)
    html = render_template(report_environment(), TEMPLATE, view)
    ev = bundle.evidence
    csv = {
        "tone_audit.csv": ev["tone_audit"],
        "tone_by_clinic.csv": ev["tone_by_clinic"],
        "deferral_rule.csv": ev["deferral_rule"],
        "deferral_outcomes.csv": ev["deferral_outcomes"],
        "deferral_where.csv": ev["deferral_where"],
        "selective.csv": ev["selective"],
        "fusion_vs_single.csv": ev["fusion_vs_single"],
        "domain_shift.csv": ev["domain_shift"],
        "discrimination.csv": ev["discrimination"],
        "calibration.csv": ev["calibration"],
        "composition.csv": ev["composition"],
        "annotators.csv": ev["annotators"],
        "decision.csv": bundle.decisions["criteria"],
        "monitoring_plan.csv": bundle.monitoring["plan"],
    }
    return ReportContent(
        html=html,
        figures={f.path: f.data for f in view.figures},
        attachments={name: t.to_csv(index=False).encode() for name, t in csv.items()},
        metadata={"decision": view.decision, "mode": view.mode},
    )
