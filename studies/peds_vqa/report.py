"""The peds_vqa research-grade evaluation report: audit bundle -> view -> HTML, figures,
attachments.

Ten numbered sections (verdict against the brief, data and questions, model, answers at the
fixed operating point, calibration, controls and paraphrases, subgroups, localization maps, time
per question, limitations and context) then the generic appendix (methods, policy, provenance),
laid out by ``base_report.html.j2`` as it is. Every number comes from the stored evidence,
decisions and model facts (the settings the run used); every page carries the SIMULATED band when
the data are simulated. Attachments: the evaluation-set questions with their answers (JSON), the
evidence tables (CSV), the decisions and the follow-up plan.
"""

from __future__ import annotations

import json

from clinaudit.reporting.kit import (
    SIMULATED_BAND,
    Appendix,
    MethodNote,
    ReportView,
    bundle_provenance_tables,
    left_out_table,
)
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.pdf import render_template, report_environment
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.report_figures import FigureFile
from clinaudit.reporting.study_package import ReportContent

from .localization import MAP_FILE
from .policy import PedsVqaPolicy
from .report_figures import auroc_svg, maps_svg, reliability_counts_svg
from .report_results import (
    calibration_section,
    controls_section,
    discrimination_section,
    latency_section,
    localization_section,
    subgroup_section,
)
from .report_sections import data_section, limitations_section, model_section, summary_section

__all__ = ["TITLE", "evaluation_report"]

TITLE = "Yes/no questions on pediatric chest X-rays: research evaluation"
_CSV = ("operating", "calibration", "reliability", "thresholds", "calibrators", "controls",
        "paraphrases", "subgroups", "zero_shot", "localization", "localization_summary",
        "faithfulness", "randomization", "latency", "completeness")  # fmt: skip


def _figures(bundle: AuditBundle) -> tuple[FigureFile, FigureFile, FigureFile | None]:
    ev, sim = bundle.evidence, bundle.provenance.simulated
    cal = ev["calibration"]
    texts = {
        r.set: f"debiased ECE {100 * r.debiased_ece:.1f}%, plug-in {100 * r.plugin_ece:.1f}%"
        for r in cal[(cal["model"] == "tuned") & (cal["scale"] == "recalibrated")].itertuples()
    }
    auroc = FigureFile("auroc.svg", auroc_svg(ev["operating"], simulated=sim), "AUROC bars",
                       "Figure 1 AUROC per category on the pooled test set (DeLong 95% CI).",
                       width="75%")  # fmt: skip
    rel = FigureFile(
        "reliability.svg", reliability_counts_svg(ev["reliability"], texts, simulated=sim),
        "reliability diagrams",
        "Figure 2 Reliability of recalibrated P(yes): observed share of yes with Wilson 95% CI "
        "per equal-mass bin; the number above each point is the bin's count.",
    )  # fmt: skip
    maps = None
    if len(ev["map_examples"]):
        maps = FigureFile(
            "maps.svg", maps_svg(ev["map_examples"], ev.files[MAP_FILE], simulated=sim),
            "localization maps",
            "Figure 3 True-positive answers: image with the ground-truth box, Grad-CAM and "
            "attention rollout of the tuned model.",
        )  # fmt: skip
    return auroc, rel, maps


def _methods(bundle: AuditBundle, policy: PedsVqaPolicy) -> tuple[MethodNote, ...]:
    s = bundle.evidence.facts["settings"]
    return (
        MethodNote("Splits", "Patients are assigned to train / calibration / validation / test "
                   "by a salted hash of their first landed image (not of the pseudonym, so the "
                   "same data splits the same way in every installation); the LoRA tuning "
                   "reads train only, the "
                   "recalibration the calibration split, the thresholds validation; everything "
                   "judged is on test."),
        MethodNote("Answer", "P(yes) = sigmoid(z_yes − z_no) from the first-token logits of one "
                   "prefill forward; vision features computed once per image."),
        MethodNote("Intervals", f"Wilson {100 * s['calibration']['ci_level']:.0f}% intervals for "
                   "proportions; DeLong for AUROC (paired DeLong for base vs tuned); ECE "
                   f"intervals from {s['calibration']['n_boot']:,} bootstrap resamples of "
                   f"images; seed {s['seed']}."),
        MethodNote("Criteria", "A criterion passes when its policy statistic (point estimate or "
                   "the conservative end of its interval) meets the floor / limit; both are "
                   "shown so a pass on the point estimate with an interval across the floor is "
                   "visible."),
    )  # fmt: skip


def evaluation_report(bundle: AuditBundle, stamp: AuditStamp) -> ReportContent:
    """Render the report HTML, its figures and the evidence attached to the package."""
    ev, policy = bundle.evidence, bundle.policy
    assert isinstance(policy, PedsVqaPolicy)
    sim = bundle.provenance.simulated
    decisions, criteria = bundle.decisions["decisions"], bundle.decisions["criteria"]
    auroc, rel, maps = _figures(bundle)
    prov, inputs, card, note = bundle_provenance_tables(bundle, stamp, policy)
    view = ReportView(
        study_title=TITLE, audit_id=stamp.audit_id, generated_at=stamp.generated_at,
        simulated=sim, band_text=SIMULATED_BAND, head_title="Pediatric CXR VQA evaluation",
        footnote="peds_vqa research evaluation (no clinical claims)",
        subtitle="For the advisory board",
        sections=(
            summary_section(ev, decisions, criteria, policy, sim, bundle.model),
            data_section(ev, bundle.cohort, policy, bundle.model),
            model_section(bundle.model, auroc),
            discrimination_section(ev, policy),
            calibration_section(ev, policy, rel),
            controls_section(ev),
            subgroup_section(ev),
            localization_section(ev, policy, maps),
            latency_section(ev),
            limitations_section(sim, bundle.model),
        ),
        appendix=Appendix(
            methods=_methods(bundle, policy), policy=policy.rule_lines(), provenance=prov,
            inputs=inputs, model_card=card, signature_note=note,
            left_out=left_out_table(bundle.provenance.left_out),
        ),
        figures=tuple(f for f in (auroc, rel, maps) if f),
    )  # fmt: skip
    html = render_template(report_environment(), "base_report.html.j2", view)
    questions = ev["evaluation_set"]
    attachments = {
        "evaluation_set.json": json.dumps(
            {
                "policy_sha256": policy.sha256,
                "settings": ev.facts["settings"]["evaluation_set"],
                "questions": questions.to_dict(orient="records"),
            },
            indent=2,
            sort_keys=True,
            default=str,
        ).encode(),  # fmt: skip
        **{f"{name}.csv": ev[name].to_csv(index=False).encode() for name in _CSV},
        "decision.csv": criteria.to_csv(index=False).encode(),
        "follow_up_plan.csv": bundle.monitoring["plan"].to_csv(index=False).encode(),
    }
    overall = str(decisions.set_index("category").loc["overall", "decision"])
    return ReportContent(
        html=html,
        figures={f.path: f.data for f in view.figures},
        attachments=attachments,
        metadata={"decision": overall},
    )
