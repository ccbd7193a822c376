"""Appendix of the sepsis_ews report: methods, TRIPOD+AI mapping, policy summary, provenance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clinaudit.reporting.kit import (
    Cell,
    MethodNote,
    PolicyInfo,
    Table,
    fmt_num,
    fmt_pct,
    left_out_table,
    provenance_tables,
    table,
)

from .policy import SepsisPolicy
from .report_view import Appendix
from .result import SepsisAuditResult

STUDY = "sepsis_ews"


@dataclass(frozen=True)
class SepsisProvenance:
    """Where the report's evidence comes from (printed in appendix D): the audit's stamp, the
    landed batches as ingest read them and the audited model's identity."""

    audit_id: str
    generated_at: str
    input_batches: Mapping[str, str]
    model_identity: str
    code_version: str
    signer: str
    development_signature: bool


# --------------------------------------------------------------------------- appendix
TRIPOD = (
    ("1-2", "Title and abstract", "title, 1", "partly", "structured summary, not an abstract"),
    ("3", "Background, objectives", "1", "yes", "audit of a deployed vendor score"),
    ("5", "Data sources, dates", "2, D", "yes", "hospitals, admission months, batch hashes"),
    ("6", "Participants, eligibility", "2", "yes", "adult ICU stays; quarantine rules"),
    ("7", "Data preparation, quality checks", "2, A", "yes", "named row errors, quarantine"),
    ("8", "Outcome definition", "2", "partly", "hospital-coded sepsis label, not adjudicated"),
    ("9", "Predictors", "7, D", "yes", "14 window features; card lists them in order"),
    ("10", "Sample size", "2", "partly", "counts per cell; no power calculation"),
    ("11", "Missing data", "7, A", "yes", "labs missing not at random: rates compared"),
    ("12", "Analysis methods, CIs", "3-6, A", "yes", "stay bootstrap, paired gaps"),
    ("13", "Class imbalance", "3", "yes", "AUPRC, PPV, missed per 1,000"),
    ("14", "Fairness", "5, 6", "yes", "sex, race/ethnicity, age band and intersections"),
    ("16", "Development vs evaluation data", "2, 7", "yes", "vendor population vs network"),
    ("17", "Ethics approval", "", "no", "outside this report"),
    ("18", "Funding, conflicts of interest", "", "no", "outside this report"),
    ("19", "Protocol, pre-specified analysis", "C", "yes", "hashed policy file"),
    ("20", "Data and code availability", "D", "partly", "hashes and code version"),
    ("21", "Patient and public involvement", "", "no", "not reported"),
    ("23", "Participant flow and characteristics", "2", "partly", "no flow diagram"),
    ("24", "Performance with CIs, heterogeneity", "3-5", "yes", "per hospital and group"),
    ("25", "Model updating", "6", "yes", "group thresholds, cross-fitted"),
    ("26", "Interpretation, limitations", "1, A", "partly", "short note"),
    ("27", "Implications for use", "1, 7", "yes", "recommendation and monitoring plan"),
)


def _tripod_table() -> Table:
    css = {"yes": "pass", "partly": "warn", "no": "fail"}
    rows = [
        [i, topic, where or "not covered", Cell(filled, css[filled]), note]
        for i, topic, where, filled, note in TRIPOD
    ]
    n = {k: sum(t[3] == k for t in TRIPOD) for k in css}
    return table(
        ("Item", "Topic", "Section", "Covered", "Note"),
        rows,
        (8, 32, 12, 10, 38),
        caption="Table B.1 TRIPOD+AI (2024) items and where this report covers them.",
        note=f"{n['yes']} items covered, {n['partly']} partly, {n['no']} not.",
        css="compact",
    )


def psi_noise_words(extra: Mapping[str, Any]) -> str:
    """The drift flagging rule in plain words, from the settings the run used."""
    alpha, draws = float(extra["psi_noise_alpha"]), int(extra["psi_noise_draws"])
    cut = f"{extra['psi_moderate']:g} moderate, {extra['psi_major']:g} major"
    return (
        f"A feature is flagged only when its PSI exceeds both the cut-off ({cut}) and the PSI "
        "that sampling noise alone reaches at the group's and the card's numbers of stays: the "
        f"1 - {alpha:g}/m quantile of a parametric bootstrap with B = {draws:,} draws from the "
        "card's bin proportions (m = features and attributes compared in that group, so a group "
        f"without drift is flagged with probability at most {100 * alpha:g}%; a card without "
        "stay counts is taken as exact). A larger PSI within that bound is reported, not flagged."
    )


def _methods(res: SepsisAuditResult, policy: SepsisPolicy) -> tuple[MethodNote, ...]:
    s, a = res.summary, res.settings  # the settings the numbers were computed with
    level = f"{100 * s['ci_level']:.0f}%"
    notes = [
        MethodNote(
            "Confidence intervals",
            f"{level} percentile intervals from {s['n_boot']:,} "
            "bootstrap resamples of stays (the stays table has no patient id). Fairness "
            "rates of all groups come from the same resamples, so gap intervals are paired; "
            "the max-min gap is also judged with a Bonferroni-adjusted level over all pairs. "
            f"Cells with fewer than {a['min_pos']} septic or {a['min_neg']} non-septic stays are "
            "reported as insufficient data. AUROC differences from the vendor use DeLong's "
            "variance for the network and Hanley-McNeil's for the card's counts.",
        ),
        MethodNote(
            "Calibration",
            f"ECE over {a['n_bins']} equal-width bins, Brier score, logistic "
            "calibration slope and intercept; reliability bins with Wilson intervals.",
        ),
        MethodNote(
            "Alert burden",
            "Alerts per 100 stay-days use the stay's observed time from "
            "ICU admission to the end of its prediction window; missed cases are septic "
            "stays without an alert, per 1,000 stays.",
        ),
        MethodNote(
            "Mitigation",
            f"Group-aware rules are fitted on {policy.mitigation.n_folds - 1} "
            f"of {policy.mitigation.n_folds} stay-disjoint folds (stratified by group and "
            "outcome) and applied to the held-out fold; the deployable rule is refitted on "
            "all stays. Groups too small to fit keep the vendor threshold.",
        ),
        MethodNote(
            "Drift against a model card",
            "The card holds quantiles (1-99%), missing rates "
            "and group shares, not data. PSI uses the card's distinct quantiles as bins plus "
            "a missing bin; where the card lists one value at several quantiles (integer "
            "features) its CDF is only bounded, and the bound closest to the local data is "
            f"used, so PSI is a lower bound. {psi_noise_words(a['extra'])} Monitoring compares "
            "each window with this audit's own stays.",
        ),
        MethodNote(
            "Limitations",
            (
                "All data are simulated: the numbers show how the audit "
                "behaves, not how a real model performs. "
                if s["simulated"]
                else ""
            )
            + "Labels are the hospitals' sepsis codes; race/ethnicity is as recorded; "
            "one score per stay; the policy's thresholds are governance choices.",
        ),
    ]
    return tuple(notes)


def _intake_note(intake: Mapping[str, Any]) -> str:
    """What of these batches was set aside: stays quarantined and their vendor scores."""
    rows = sum(dict(intake.get("rows_quarantined", {})).values())
    aside = sum(dict(intake.get("scores_set_aside", {})).values())
    if not rows:
        return ""
    scores = f"; {aside} vendor score(s) of them were set aside" if aside else ""
    return f" {rows} stays of these batches were quarantined at ingest and not audited{scores}."


def _batches_table(batches: Mapping[str, str], intake: Mapping[str, Any]) -> Table:
    """Every input batch with the first 24 hex digits of its hash, two batches per row."""
    items = [
        (name.removeprefix(f"{STUDY}/"), digest[:24]) for name, digest in sorted(batches.items())
    ]
    half = -(-len(items) // 2)
    rows = []
    for k in range(half):
        right = items[k + half] if k + half < len(items) else ("", "")
        rows.append([items[k][0], Cell(items[k][1], "hash"), right[0], Cell(right[1], "hash")])
    return table(
        ("Input batch", "sha256 (first 24 hex)", "Input batch", "sha256 (first 24 hex)"),
        rows,
        (22, 28, 22, 28),
        caption=f"Table D.2 The {len(items)} landed batches behind this audit (manifest content "
        "hashes).",
        note="The full sha256 of every batch, the model and the policy are listed in "
        f"the embedded, signed manifest.json (inputs).{_intake_note(intake)}",
        css="compact",
    )


def appendix(
    res: SepsisAuditResult,
    policy: SepsisPolicy,
    model: Mapping[str, Any],
    p: SepsisProvenance,
    left_out: Mapping[str, str],
) -> Appendix:
    """Appendix A-D; ``left_out``: hospitals landed but not audited, and why."""
    info = PolicyInfo(policy.policy_id, policy.version, policy.sha256, policy.text)
    card = {row[0]: row[1] for row in model_card_rows(model)}
    card["Model file sha256"] = str(model.get("model_sha256", ""))
    prov, _, card_table, note = provenance_tables(
        audit_id=p.audit_id,
        generated_at=p.generated_at,
        code_version=p.code_version,
        model_sha256=p.model_identity,
        policy=info,
        signer=p.signer,
        development_signature=p.development_signature,
        input_batches=p.input_batches,
        model_card=card,
    )
    return Appendix(
        methods=_methods(res, policy),
        tripod=_tripod_table(),
        policy=policy.rule_lines(),
        provenance=prov,
        inputs=_batches_table(p.input_batches, res.intake),
        model_card=card_table,
        signature_note=note,
        left_out=left_out_table(left_out, "Hospital"),
    )


def model_card_rows(model: Mapping[str, object]) -> list[list[str]]:
    """Model-card facts printed in the appendix (only those present)."""
    names = (
        ("vendor", "Vendor"),
        ("version", "Version"),
        ("estimator", "Estimator"),
        ("intended_use", "Intended use"),
        ("created_utc", "Released"),
        ("threshold_rule", "Threshold rule"),
    )
    rows = [[label, str(model[k])] for k, label in names if model.get(k)]
    val = model.get("validation") or {}
    if isinstance(val, Mapping) and "auroc" in val:
        rows.append(
            [
                "Vendor validation",
                f"AUROC {fmt_num(val['auroc'], 3)} on {val.get('n')} "
                f"held-out stays ({val.get('n_pos')} septic)",
            ]
        )
    td = model.get("training_data") or {}
    if isinstance(td, Mapping) and "n_stays" in td:
        hospitals = ", ".join(f"{k} {v}" for k, v in (td.get("hospitals") or {}).items())
        rows.append(
            [
                "Training data",
                f"{td['n_stays']:,} stays, prevalence {fmt_pct(td.get('prevalence'))}; {hospitals}",
            ]
        )
    return rows
