"""View model of the multisite_cxr deployment-plan report, and the number formats it uses.

Every field is final text (or a figure file): the template only lays it out, so the wording of
missing values ("insufficient data (n_pos=3)", "not estimable") is decided and tested here, and
nothing like ``nan`` or ``None`` can reach the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from clinaudit.reporting.report_figures import FigureFile

#: Text of the band printed on every page of a report built from simulated data.
SIMULATED_BAND = "SIMULATED DATA — not real patients"

#: Decision -> (CSS class, what the committee is asked to approve).
DECISIONS: Mapping[str, tuple[str, str]] = {
    "GO": ("go", "Deploy"),
    "CONDITIONAL GO": ("conditional", "Deploy with conditions"),
    "NO-GO": ("nogo", "Do not deploy"),
}


def finite(x: object) -> bool:
    """True for a real, finite number (``None``, NaN, inf and ``pd.NA`` are not)."""
    try:
        return x is not None and math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def fmt_num(x: object, digits: int = 2) -> str:
    """``x`` with ``digits`` decimals (no "-0.00"), or "not estimable" when not a finite number."""
    if not finite(x):
        return "not estimable"
    text = f"{float(x):.{digits}f}"  # type: ignore[arg-type]
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt_ci(value: object, low: object, high: object, digits: int = 2) -> str:
    """``"0.54 (0.45–0.63)"``; says so when the estimate or its interval could not be computed."""
    if not finite(value):
        return "not estimable"
    if not (finite(low) and finite(high)):
        return f"{fmt_num(value, digits)} (CI not estimable)"
    lo, hi = fmt_num(low, digits), fmt_num(high, digits)
    sep = " to " if lo.startswith("-") or hi.startswith("-") else "–"
    return f"{fmt_num(value, digits)} ({lo}{sep}{hi})"


def fmt_pct(x: object, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage (``0.108`` -> ``"10.8%"``)."""
    return f"{100 * float(x):.{digits}f}%" if finite(x) else "not estimable"  # type: ignore[arg-type]


def fmt_p(p: object) -> str:
    """A p-value: ``"<0.001"`` below one in a thousand, else three decimals."""
    if not finite(p):
        return "not estimable"
    return "<0.001" if float(p) < 0.001 else f"{float(p):.3f}"  # type: ignore[arg-type]


def insufficient(n_pos: object, n_neg: object) -> str:
    """Text of a cell with too few cases: names the smaller class and its count."""
    pos, neg = int(n_pos), int(n_neg)  # type: ignore[call-overload]
    return f"insufficient data (n_pos={pos})" if pos <= neg else f"insufficient data (n_neg={neg})"


@dataclass(frozen=True)
class Cell:
    """One table cell: its text and an optional CSS class (``"fail"``, ``"pass"``, ``"muted"``)."""

    text: str
    css: str = ""


@dataclass(frozen=True)
class Table:
    """A table of text cells, laid out with fixed column widths (percent of the text width)."""

    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    widths: tuple[int, ...]
    caption: str = ""
    note: str = ""
    css: str = ""

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.header):
            raise ValueError(f"{len(self.widths)} widths for {len(self.header)} columns")
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"row of {len(row)} cells under {len(self.header)} columns")


def table(
    header: tuple[str, ...],
    rows: list[list[str | Cell]],
    widths: tuple[int, ...],
    **text: str,
) -> Table:
    """Build a :class:`Table`, wrapping plain strings into cells."""
    cells = tuple(tuple(c if isinstance(c, Cell) else Cell(str(c)) for c in r) for r in rows)
    return Table(header=header, rows=cells, widths=widths, **text)


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


@dataclass(frozen=True)
class MethodNote:
    """One paragraph of the methods appendix."""

    title: str
    text: str


@dataclass(frozen=True)
class PolicyInfo:
    """The decision policy as shipped: identifier, version, sha256 of its bytes, its text, and
    its rules in plain words (``audit.policy.describe_policy``; empty where a study has none)."""

    policy_id: str
    version: str
    sha256: str
    text: str
    rules: str = ""


@dataclass(frozen=True)
class Appendix:
    """Methods, the decision policy, the reporting checklist and the provenance."""

    methods: tuple[MethodNote, ...]
    policy: PolicyInfo
    policy_lines: tuple[str, ...]
    checklist: Table
    provenance: Table
    inputs: Table
    model_card: Table
    signature_note: str


@dataclass(frozen=True)
class CxrReportView:
    """Everything the multisite_cxr report template shows (one object per report)."""

    study_title: str
    audit_id: str
    generated_at: str
    simulated: bool
    band_text: str
    executive: ExecutiveSummary
    cohort: CohortSection
    discrimination: DiscriminationSection
    calibration: CalibrationSection
    drift: DriftSection
    mitigation: MitigationSection
    plans: tuple[SitePlan, ...]
    appendix: Appendix
    figures: tuple[FigureFile, ...]
