"""View model of the multisite_cxr deployment-plan report (number formats: ``reporting.kit``).

Every field is final text (or a figure file): the template only lays it out, so the wording of
missing values ("insufficient data (n_pos=3)", "not estimable") is decided and tested here, and
nothing like ``nan`` or ``None`` can reach the page.
"""

from __future__ import annotations

from dataclasses import dataclass

from clinaudit.reporting.kit import (
    DECISIONS,
    SIMULATED_BAND,
    Cell,
    MethodNote,
    PolicyInfo,
    ProvenanceBlock,
    ReportFrame,
    Table,
    finite,
    fmt_ci,
    fmt_num,
    fmt_p,
    fmt_pct,
    insufficient,
    table,
)
from clinaudit.reporting.report_figures import FigureFile

from .report_label_free import LabelFreeSection

__all__ = [
    "DECISIONS",
    "SIMULATED_BAND",
    "Cell",
    "MethodNote",
    "PolicyInfo",
    "Table",
    "finite",
    "fmt_ci",
    "fmt_num",
    "fmt_p",
    "fmt_pct",
    "insufficient",
    "table",
]


@dataclass(frozen=True)
class DecisionRow:
    """One site's decision as shown on page 1."""

    site: str
    decision: str
    css: str
    ask: str
    reasons: str
    conditions: str
    criteria_failed: str


@dataclass(frozen=True)
class ExecutiveSummary:
    """Page 1: decisions, the findings that drove them, and what the committee approves."""

    overview: str
    decisions: tuple[DecisionRow, ...]
    findings: tuple[str, ...]
    #: (css class, text): operating thresholds, reference self-check, sites not audited.
    notices: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CohortSection:
    """Sites, counts, demographics, prevalence and the validation / quarantine results."""

    text: str
    demographics: Table
    prevalence: Table
    quarantine: Table


@dataclass(frozen=True)
class DiscriminationSection:
    """AUROC heatmap, AUPRC table and the operating point of the critical findings."""

    text: str
    heatmap: FigureFile
    auprc: Table
    operating: Table


@dataclass(frozen=True)
class CalibrationSection:
    """Reliability diagrams of the worst cells and ECE before / after site recalibration."""

    text: str
    reliability: FigureFile | None
    ece: Table


@dataclass(frozen=True)
class DriftSection:
    """Per-site input drift: PSI bars with thresholds and the per-site summary with MMD."""

    text: str
    figure: FigureFile
    summary: Table


@dataclass(frozen=True)
class MitigationSection:
    """Worst cells, the recalibration before / after, and the re-training guard."""

    worst_text: str
    worst: Table | None
    recalibration_text: str
    recalibration: Table | None
    retraining_text: str
    retraining: Table | None


@dataclass(frozen=True)
class SitePlan:
    """Deployment plan of one site: decision, conditions, failed criteria, monitoring, rollback."""

    site: str
    decision: str
    css: str
    conditions: str
    criteria: Table | None
    criteria_text: str
    monitoring: Table | None
    escalation: str
    rollback: str


@dataclass(frozen=True, kw_only=True)
class Appendix(ProvenanceBlock):
    """Methods, the decision policy, the reporting checklist and the provenance."""

    methods: tuple[MethodNote, ...]
    policy: PolicyInfo
    policy_lines: tuple[str, ...]
    checklist: Table


@dataclass(frozen=True, kw_only=True)
class CxrReportView(ReportFrame):
    """Everything the multisite_cxr report template shows (one object per report)."""

    executive: ExecutiveSummary
    cohort: CohortSection
    discrimination: DiscriminationSection
    calibration: CalibrationSection
    drift: DriftSection
    mitigation: MitigationSection
    plans: tuple[SitePlan, ...]
    appendix: Appendix
    figures: tuple[FigureFile, ...]
    #: Section 8 (sites without labels, frozen estimates scored); ``None``: not shown.
    label_free: LabelFreeSection | None = None
