"""Appendix of the sepsis_ews report: methods, TRIPOD+AI mapping, policy summary, provenance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clinaudit.audit.sepsis_audit import SepsisAuditResult
from clinaudit.audit.sepsis_policy import SepsisPolicy
from clinaudit.reporting.cxr_view import (
    Cell,
    MethodNote,
    PolicyInfo,
    fmt_num,
    fmt_pct,
    table,
)
from clinaudit.reporting.kit import provenance_tables
from clinaudit.reporting.sepsis_view import Appendix

STUDY = "sepsis_ews"


@dataclass(frozen=True)
class SepsisProvenance:
    """Where the report's evidence comes from (printed in appendix D)."""

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


def _tripod_table() -> object:
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


def _methods(res: SepsisAuditResult, policy: SepsisPolicy) -> tuple[MethodNote, ...]:
    s, a = res.summary, policy.analysis
    level = f"{100 * s['ci_level']:.0f}%"
    notes = [
        MethodNote(
            "Confidence intervals",
            f"{level} percentile intervals from {s['n_boot']:,} "
            "bootstrap resamples of stays (the stays table has no patient id). Fairness "
            "rates of all groups come from the same resamples, so gap intervals are paired; "
            "the max-min gap is also judged with a Bonferroni-adjusted level over all pairs. "
            f"Cells with fewer than {a.min_pos} septic or {a.min_neg} non-septic stays are "
            "reported as insufficient data. AUROC differences from the vendor use DeLong's "
            "variance for the network and Hanley-McNeil's for the card's counts.",
        ),
        MethodNote(
            "Calibration",
            f"ECE over {a.n_bins} equal-width bins, Brier score, logistic "
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
            "used, so PSI is a lower bound. Monitoring compares each window with this "
            "audit's own stays.",
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


def _policy_lines(policy: SepsisPolicy) -> tuple[str, ...]:
    """The policy's rules in a few lines (the file itself is embedded in the package)."""
    c, a, m, mit = policy.criteria, policy.analysis, policy.monitoring, policy.mitigation
    stat = {"estimate": "", "ci_low": "lower CI bound of ", "ci_high": "upper CI bound of "}
    crit = [
        (c.auroc, f"{stat[c.auroc.statistic]}network AUROC ≥ {c.auroc.threshold:.2f}"),
        (c.ece, f"{stat[c.ece.statistic]}ECE ≤ {c.ece.threshold:.2f}"),
        (c.alert_rate, f"alert rate ≤ {c.alert_rate.threshold:.2f}"),
        (
            c.fairness_gap,
            f"{stat[c.fairness_gap.statistic]}max-min "
            f"{'/'.join(x.upper() for x in c.fairness_metrics)} gap of each attribute ≤ "
            f"{c.fairness_gap.threshold:.2f}",
        ),
    ]
    refs = ", ".join(f"{k} {v}" for k, v in a.reference_groups.items()) or "largest groups"
    return (
        f"{policy.policy_id} version {policy.version}: {policy.title}.",
        f"Attributes {', '.join(a.attributes)} (intersections: "
        f"{'yes' if a.intersections else 'no'}); reference groups {refs}; cells need "
        f"{a.min_pos} septic and {a.min_neg} non-septic stays; {a.n_boot:,} bootstrap resamples.",
        "Criteria: " + "; ".join(text for crit_, text in crit if crit_.enabled) + ".",
        "NO-GO when AUROC fails or a criterion still fails with the mitigation; CONDITIONAL GO "
        "when every criterion passes only with it; GO when all pass at the vendor threshold.",
        f"Mitigation: {mit.method} on the {mit.attribute} gap, {mit.n_folds}-fold cross-fitting; "
        f"alternatives {', '.join(mit.alternatives) or 'none'}. Drift levels PSI "
        f"{policy.drift.psi_moderate:g} / {policy.drift.psi_major:g}.",
        f"Monitoring: inputs {m.cadence_inputs}, outcomes {m.cadence_outcomes}; escalation "
        f"{' -> '.join(m.escalation)}; suspension after {m.suspend_after_consecutive_actions} "
        "consecutive windows past an action threshold.",
    )


def _batches_table(batches: Mapping[str, str]) -> object:
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
        "the embedded, signed manifest.json (inputs).",
        css="compact",
    )


def appendix(
    res: SepsisAuditResult, policy: SepsisPolicy, model: Mapping[str, Any], p: SepsisProvenance
) -> Appendix:
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
        _methods(res, policy),
        _tripod_table(),
        _policy_lines(policy),
        prov,  # type: ignore[arg-type]
        _batches_table(p.input_batches),
        card_table,
        note,  # type: ignore[arg-type]
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
