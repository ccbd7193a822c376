"""The report kit every study's report is built with: number formats, text cells, tables,
sections, the SIMULATED band and the provenance tables.

Every field of a view is final text (or a figure file): templates only lay it out, so the words
for missing values ("insufficient data (n_pos=3)", "not estimable") are decided and tested here,
and nothing like ``nan`` or ``None`` can reach a page. Templates: ``templates/_macros.html.j2``
renders :class:`Table`, :class:`Section` and figures; ``templates/base_report.html.j2`` is the
page frame (band, running head, title, sections, appendix) a study's template extends, or uses
as it is with a :class:`ReportView`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from clinaudit.audit.policy_base import Decision, PolicyBase
from clinaudit.reporting.package import AuditStamp
from clinaudit.reporting.provenance import AuditBundle
from clinaudit.reporting.report_figures import FigureFile

#: Text of the band printed on every page of a report built from simulated data.
SIMULATED_BAND = "SIMULATED DATA — not real patients"

#: Decision -> (CSS class, what the committee is asked to approve).
DECISIONS: Mapping[str, tuple[str, str]] = {d.value: (d.css, d.ask) for d in Decision}


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
class Section:
    """A numbered report section: paragraphs, figures, tables and bullet lists, in that order."""

    anchor: str
    title: str
    paragraphs: tuple[str, ...]
    figures: tuple[FigureFile, ...] = ()
    tables: tuple[Table, ...] = ()
    bullets_title: str = ""
    bullets: tuple[str, ...] = ()
    new_page: bool = False


def pct_ci(value: object, low: object, high: object, digits: int = 1) -> str:
    """A rate with its CI as percentages: ``"48.9% (44.4–53.6)"``."""
    if not finite(value):
        return "not estimable"
    text = fmt_pct(value, digits)
    if finite(low) and finite(high):
        return f"{text} ({100 * float(low):.{digits}f}–{100 * float(high):.{digits}f})"  # type: ignore[arg-type]
    return f"{text} (CI not estimable)"


def provenance_tables(
    *,
    audit_id: str,
    generated_at: str,
    code_version: str,
    model_sha256: str,
    policy: PolicyInfo,
    signer: str,
    development_signature: bool,
    input_batches: Mapping[str, str],
    model_card: Mapping[str, object],
) -> tuple[Table, Table, Table, str]:
    """Provenance, input-batch and model-card tables, and the signature note."""
    kind = "development signature (self-signed)" if development_signature else "PAdES signature"
    prov = table(
        ("Item", "Value"),
        [
            ["Audit id", audit_id],
            ["Generated at", generated_at],
            ["Code version", code_version],
            ["Audited model sha256", Cell(model_sha256, "hash")],
            ["Decision policy", f"{policy.policy_id} version {policy.version}"],
            ["Policy sha256", Cell(policy.sha256, "hash")],
            ["Signer", signer],
            ["Signature", kind],
        ],
        (25, 75),
        caption="Table D.1 Provenance of this report.",
    )
    inputs = table(
        ("Input batch", "sha256"),
        [[name, Cell(h, "hash")] for name, h in sorted(input_batches.items())],
        (30, 70),
        caption="Table D.2 Input batches (sha256 of each landed batch's manifest content).",
        css="compact",
    )
    card = table(
        ("Model card field", "Value"),
        [[str(k), _card_value(v)] for k, v in model_card.items()],
        (30, 70),
        caption="Table D.3 Summary of the audited model's card.",
        css="compact",
    )
    if development_signature:
        note = (
            f"Development signature: this file is signed with a key and self-signed certificate "
            f"({signer}) created on the audit machine. The signature proves the file was not "
            "altered after signing; it does not identify an approver. Sign with the institution's "
            "certificate before the committee relies on it."
        )
    else:
        note = (
            f"Signed by {signer} (PAdES baseline). Check with `clinaudit verify` or any PDF "
            "signature validator; the embedded manifest lists the sha256 of every attachment."
        )
    return prov, inputs, card, note


def bundle_provenance_tables(
    bundle: AuditBundle, stamp: AuditStamp, policy: PolicyBase
) -> tuple[Table, Table, Table, str]:
    """:func:`provenance_tables` of one audit: the stamp, the audited model, the loaded policy
    and the bundle's input batches and model card."""
    return provenance_tables(
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


def _card_value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if finite(v) else "not stated"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {_card_value(x)}" for k, x in v.items()) or "not stated"
    if isinstance(v, list | tuple):
        return ", ".join(_card_value(x) for x in v) or "not stated"
    return str(v) if v is not None and str(v) else "not stated"


@dataclass(frozen=True, kw_only=True)
class ProvenanceBlock:
    """The provenance part of every report's appendix (``render_provenance`` in the macros):
    the provenance table, the input batches, the model card, the signature note and the
    partitions left out of the audit (``None`` when none)."""

    provenance: Table
    inputs: Table
    model_card: Table
    signature_note: str
    left_out: Table | None = None


@dataclass(frozen=True, kw_only=True)
class Appendix(ProvenanceBlock):
    """The generic appendix: methods, the policy in plain words, provenance tables."""

    methods: tuple[MethodNote, ...]
    policy: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ReportFrame:
    """What the page frame of every report prints (``base_report.html.j2``): the title, the
    audit id and time, and whether the SIMULATED band runs across every page."""

    study_title: str
    audit_id: str
    generated_at: str
    simulated: bool
    band_text: str


@dataclass(frozen=True, kw_only=True)
class ReportView(ReportFrame):
    """A study report laid out by ``base_report.html.j2`` as it is: numbered sections and the
    generic appendix (a study with its own layout extends the template instead)."""

    head_title: str
    footnote: str
    subtitle: str
    sections: tuple[Section, ...]
    appendix: Appendix
    figures: tuple[FigureFile, ...]


def left_out_table(left_out: Mapping[str, str], partition: str = "Site") -> Table | None:
    """The partitions left out of the cross-partition audit and why (``None`` when none)."""
    if not left_out:
        return None
    return table(
        (partition, "Why it is not in this audit"),
        [[name, why] for name, why in sorted(left_out.items())],
        (20, 80),
        caption=f"{partition}s left out of this audit (landed and validated, but not audited).",
        css="compact",
    )


@dataclass(frozen=True)
class MultiplicityWords:
    """How a report names the multiplicity adjustment a run used (``p_adjust`` setting)."""

    short: str
    correction: str
    method: str
    adjusted: str
    error: str


_MULTIPLICITY: Mapping[str, MultiplicityWords] = {
    "holm": MultiplicityWords(
        "Holm", "Holm's correction", "Holm's step-down method", "Holm-adjusted", "family-wise error"
    ),
    "bh": MultiplicityWords(
        "BH",
        "the Benjamini–Hochberg correction",
        "the Benjamini–Hochberg method",
        "BH-adjusted",
        "false discovery rate",
    ),
    "none": MultiplicityWords(
        "unadjusted",
        "no multiplicity correction",
        "no adjustment",
        "not adjusted for multiplicity",
        "per-test error",
    ),
}


def multiplicity_words(p_adjust: str) -> MultiplicityWords:
    """The words for ``p_adjust`` (``"holm"``, ``"bh"`` or ``"none"``).

    Examples
    --------
    >>> multiplicity_words("holm").adjusted
    'Holm-adjusted'
    """
    try:
        return _MULTIPLICITY[p_adjust]
    except KeyError:
        raise ValueError(
            f"p_adjust={p_adjust!r} is not one of {sorted(_MULTIPLICITY)}; record the method the "
            "run used"
        ) from None
