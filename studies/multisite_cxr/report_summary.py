"""Page 1 of the multisite_cxr report: decisions, the notices and the findings behind them.

Notices come first: where the operating thresholds come from (a warning when the audit derived
them), a failed reference self-check (the model fails a blocking criterion on the vendor's own
reference split), and sites that landed but were not audited, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from .report_plan import blocking_row, criterion_label, decision_style
from .report_sections import MMD_FEATURE, cell_index, metric_text
from .report_view import DECISIONS, DecisionRow, ExecutiveSummary, fmt_ci, fmt_num

__all__ = ["executive_summary"]


def executive_summary(
    decisions: pd.DataFrame,
    criteria: pd.DataFrame,
    worst: pd.DataFrame,
    metrics: pd.DataFrame,
    drift: pd.DataFrame,
    retraining_summary: Mapping[str, Any] | None,
    *,
    threshold_source: str = "",
    reference_check: pd.DataFrame | None = None,
    left_out: Mapping[str, str] | None = None,
) -> ExecutiveSummary:
    """Per-site decisions, the 3-5 findings that drove them and the overall ask; the notices
    first: where the operating thresholds come from, criteria the reference fails itself, and
    sites landed but not audited."""
    rows = []
    for _, d in decisions.sort_values("site", kind="stable").iterrows():
        css, ask = decision_style(str(d["decision"]), str(d["site"]))
        rows.append(
            DecisionRow(
                site=str(d["site"]),
                decision=str(d["decision"]),
                css=css,
                ask=ask,
                reasons=str(d["reasons"]),
                conditions=str(d["conditions"]) or "none",
                criteria_failed=f"{int(d['n_failed_before'])} → {int(d['n_failed_after'])} "
                f"of {int(d['n_criteria'])}",
            )
        )
    counts = decisions["decision"].value_counts()
    overview = (
        f"{len(rows)} sites audited: "
        + ", ".join(f"{int(counts.get(k, 0))} {k}" for k in DECISIONS)
        + f". Policy {decisions['policy_id'].iloc[0]} v{decisions['policy_version'].iloc[0]}."
    )
    findings = _worst_findings(worst, metrics, 2) + _criteria_findings(criteria, 2)
    findings += _drift_findings(drift) + _retraining_findings(retraining_summary)
    notices = _notices(threshold_source, reference_check, left_out or {})
    return ExecutiveSummary(
        overview=overview,
        decisions=tuple(rows),
        findings=tuple(findings[:5]),
        notices=tuple(notices),
    )


def _reference_failure(r: Any) -> str:
    text = criterion_label(str(r.criterion)) + (f" for {r.finding}" if r.finding else "")
    if r.criterion == "data_sufficiency":
        return f"{text} ({r.evidence})"
    return f"{text} {fmt_num(r.value)} vs limit {fmt_num(r.limit)}"


def _notices(
    threshold_source: str, reference_check: pd.DataFrame | None, left_out: Mapping[str, str]
) -> list[tuple[str, str]]:
    """(css class, text) of the page-1 notices."""
    out = []
    if threshold_source:
        css = "warn" if threshold_source.startswith("derived") else ""
        out.append((css, f"Operating thresholds: {threshold_source}."))
    failed = (
        reference_check[reference_check["fails_at_reference"].astype(bool)]
        if reference_check is not None and len(reference_check)
        else None
    )
    if failed is not None and len(failed):
        where = str(failed["site"].iloc[0])
        items = "; ".join(
            f"{criterion_label(str(r.criterion))}"
            + (f" for {r.finding}" if r.finding else "")
            + (
                f" {fmt_num(r.value)} vs limit {fmt_num(r.limit)}"
                if r.criterion != "data_sufficiency"
                else ""
            )
            for r in failed.itertuples()
        )
        out.append(
            (
                "fail",
                f"Reference self-check failed: on the vendor's own reference split ({where}) the "
                f"model fails {len(failed)} blocking criteria of the policy ({items}). The policy "
                "or the operating thresholds are inconsistent with this model: these criteria "
                "cannot discriminate between sites, and the decision rows mark them.",
            )
        )
    if left_out:
        named = "; ".join(f"{s}: {why}" for s, why in sorted(left_out.items()))
        out.append(("fail", f"Not audited ({len(left_out)} landed sites): {named}."))
    return out


def _worst_findings(worst: pd.DataFrame, metrics: pd.DataFrame, k: int) -> list[str]:
    idx = cell_index(metrics)
    out = []
    for _, w in worst.sort_values("rank").head(k).iterrows():
        m = idx[(str(w["group"]), str(w["target"]))]
        out.append(
            f"Worst cell #{int(w['rank'])}, {w['group']} / {w['target']}: AUROC "
            f"{metric_text(m, 'auroc')} against {fmt_num(w['auroc_reference'])} on the reference; "
            f"sensitivity at the vendor threshold {fmt_num(w['sensitivity'])} against "
            f"{fmt_num(w['sensitivity_reference'])}; ECE "
            f"{fmt_ci(w['ece'], w['ece_ci_low'], w['ece_ci_high'], 3)}."
        )
    return out


def _criteria_findings(criteria: pd.DataFrame, k: int) -> list[str]:
    failed = criteria[~criteria["passed_before"].astype(bool)]
    if failed.empty:
        return ["Every policy criterion passed at every site before mitigation."]
    n_sites = criteria["site"].nunique()
    groups = failed.groupby(["criterion", "finding"], sort=True)
    ranked = sorted(groups, key=lambda kv: (-kv[1]["site"].nunique(), kv[0]))
    out = []
    for (criterion, finding), part in ranked[:k]:
        sites = sorted(part["site"].unique())
        rescued = sorted(part.loc[part["passed_after"].astype(bool), "site"].unique())
        what = criterion_label(str(criterion)) + (f" for {finding}" if finding else "")
        if not blocking_row(part.iloc[0]):
            after = "not blocking on its own: it requires monitoring"
        elif rescued:
            after = f"passes after mitigation at {', '.join(rescued)}"
        else:
            after = "no allowed mitigation rescued it"
        out.append(
            f"{what[:1].upper() + what[1:]} failed at {len(sites)} of {n_sites} sites "
            f"({', '.join(sites)}); {after}."
        )
    return out


def _drift_findings(drift: pd.DataFrame) -> list[str]:
    mmd = drift[(drift["feature"] == MMD_FEATURE) & drift["drifted"].astype(bool)]
    if mmd.empty:
        return []
    sites = sorted(mmd["group"].astype(str))
    return [
        f"Multivariate input drift (MMD test, adjusted p < 0.05) at {len(sites)} sites "
        f"({', '.join(sites)}): deployed sites need drift monitoring (Section 5)."
    ]


def _retraining_findings(summary: Mapping[str, Any] | None) -> list[str]:
    if summary is None:
        return []
    verdict = "accepted" if summary["accepted"] else "refused by the regression guard"
    regress = ", ".join(summary["regressions"]) or "none"
    return [
        f"Focused re-training at {summary['retrained_site']} was {verdict} (regressions: "
        f"{regress}); a re-trained model needs its own approval and does not change decisions."
    ]
