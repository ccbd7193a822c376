"""Decision parts of the multisite_cxr report: mitigations and per-site plans (page 1:
:mod:`.report_summary`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from clinaudit.audit.policy_base import Decision
from clinaudit.audit.types import AuditInputError

from .report_sections import cell_index, metric_text
from .report_view import (
    DECISIONS,
    Cell,
    MitigationSection,
    SitePlan,
    Table,
    finite,
    fmt_ci,
    fmt_num,
    insufficient,
    table,
)

COMPARATORS = {">=": "≥", "<=": "≤", "==": "="}
#: Short names of the worst-cell criteria (``clinaudit.audit.worst_cells``).
WORST_CRITERIA = {
    "auroc_drop": "AUROC drop",
    "sensitivity_drop": "sens. drop",
    "calibration": "ECE",
}


def decision_style(decision: str, site: str) -> tuple[str, str]:
    """CSS class and committee ask of a decision; an unknown decision is an input error."""
    if decision not in DECISIONS:
        raise AuditInputError(
            "decisions",
            f"decision {decision!r} for site {site!r}",
            f"one of {list(DECISIONS)}",
            "regenerate cxr_decisions with clinaudit.studies.multisite_cxr.decisions",
        )
    return DECISIONS[decision]


def mitigation_section(
    worst: pd.DataFrame,
    recalibration: pd.DataFrame | None,
    retraining: pd.DataFrame | None,
    retraining_summary: Mapping[str, Any] | None,
) -> MitigationSection:
    """Worst cells, recalibration before / after at the operating point, re-training guard."""
    w_rows = []
    for _, w in worst.sort_values("rank").iterrows():
        w_rows.append(
            [
                str(int(w["rank"])),
                str(w["group"]),
                str(w["target"]),
                ", ".join(WORST_CRITERIA.get(c, c) for c in str(w["criteria"]).split(";")),
                f"{fmt_num(w['auroc'])} vs {fmt_num(w['auroc_reference'])}",
                _fired(w, "auroc_drop"),
                _fired(w, "sensitivity_drop"),
                Cell(
                    fmt_ci(w["ece"], w["ece_ci_low"], w["ece_ci_high"], 3),
                    "fail" if bool(w["calibration_fired"]) else "",
                ),
            ]
        )
    worst_table = (
        table(
            (
                "#",
                "Site",
                "Finding",
                "Criteria fired",
                "AUROC vs ref.",
                "AUROC drop (CI)",
                "Sensitivity drop (CI)",
                "ECE (CI)",
            ),
            w_rows,
            (3, 7, 12, 18, 10, 15, 17, 18),
            caption="Table 6.1 Worst (site, finding) cells, ranked by the evidence of harm.",
        )
        if len(worst)
        else None
    )
    worst_text = (
        f"{len(worst)} cells show harm that the confidence intervals support (a criterion fires "
        "only when its CI excludes no harm). Red marks the criteria that fired."
        if len(worst)
        else "No (site, finding) cell shows harm that its confidence interval supports."
    )
    recal_text, recal_table = _recalibration(worst, recalibration)
    retrain_text, retrain_table = _retraining(retraining, retraining_summary)
    return MitigationSection(
        worst_text=worst_text,
        worst=worst_table,
        recalibration_text=recal_text,
        recalibration=recal_table,
        retraining_text=retrain_text,
        retraining=retrain_table,
    )


def _fired(w: pd.Series, crit: str) -> Cell:
    return Cell(
        fmt_ci(w[crit], w[f"{crit}_ci_low"], w[f"{crit}_ci_high"]),
        "fail" if bool(w[f"{crit}_fired"]) else "",
    )


def _recalibration(
    worst: pd.DataFrame, recalibration: pd.DataFrame | None
) -> tuple[str, Table | None]:
    if recalibration is None:
        return "Site recalibration was not run in this audit.", None
    idx = cell_index(recalibration)
    cells = [(str(g), str(t)) for g, t in worst.sort_values("rank")[["group", "target"]].to_numpy()]
    rows: list[list[str | Cell]] = []
    for c in cells:
        r = idx.get(c)
        if r is None:
            continue
        if r["status"] != "ok":
            n_neg = int(r["n"]) - int(r["n_pos"])
            rows.append([*c, Cell(insufficient(r["n_pos"], n_neg), "muted"), *[""] * 5])
            continue
        rows.append(
            [
                *c,
                f"{fmt_num(r['intended_sensitivity'])} at {fmt_num(r['threshold'], 3)}",
                metric_text(r, "sensitivity_before"),
                metric_text(r, "sensitivity_after"),
                f"{fmt_num(r['site_threshold_raw'], 3)}",
                metric_text(r, "sensitivity_site_threshold"),
                metric_text(r, "specificity_site_threshold"),
            ]
        )
    n_folds = int(recalibration["n_folds"].max())
    text = (
        "For each worst cell: sensitivity at the vendor threshold on the raw score (before) and "
        "on the recalibrated probability (after), and at the site threshold chosen to restore "
        f"the vendor's intended sensitivity. All 'after' numbers are {n_folds}-fold cross-fitted."
    )
    header = (
        "Site",
        "Finding",
        "Intended sens. at thr.",
        "Sens. before",
        "Sens. after",
        "Site thr. (raw)",
        "Sens. at site thr.",
        "Spec. at site thr.",
    )
    widths = (9, 12, 13, 14, 14, 9, 14, 15)
    return text, table(
        header,
        rows,
        widths,
        caption="Table 6.2 Site recalibration at the operating point (95% CI).",
    )


def _retraining(
    retraining: pd.DataFrame | None, summary: Mapping[str, Any] | None
) -> tuple[str, Table | None]:
    if retraining is None or summary is None:
        return "Focused re-training was not run in this audit.", None
    site = str(summary["retrained_site"])
    targeted = {_cell(c, site) for c in summary["cells_targeted"]}
    cells = zip(retraining["group"].astype(str), retraining["target"].astype(str), strict=True)
    is_target = pd.Series([c in targeted for c in cells], index=retraining.index)
    keep = retraining[retraining["regressed"].astype(bool) | is_target]
    rows = []
    for _, r in keep.sort_values(["group", "target", "split"]).iterrows():
        result = (
            Cell("regressed", "fail")
            if bool(r["regressed"])
            else Cell("improved", "pass")
            if bool(r["improved"])
            else Cell("within tolerance")
        )
        rows.append(
            [
                str(r["group"]),
                str(r["target"]),
                str(r["split"]),
                f"{int(r['n_pos'])} / {int(r['n'])}",
                fmt_ci(r["auroc_before"], r["auroc_before_ci_low"], r["auroc_before_ci_high"]),
                fmt_ci(r["auroc_after"], r["auroc_after_ci_low"], r["auroc_after_ci_high"]),
                f"{float(r['auroc_change']):+.3f} (tol. {fmt_num(r['tolerance'], 3)})"
                if finite(r["auroc_change"])
                else "not estimable",
                result,
            ]
        )
    verdict = "ACCEPTED" if summary["accepted"] else "REFUSED"
    others = len(retraining) - len(keep)
    text = (
        f"The model was fine-tuned on {site}'s training split ({summary['epochs']} epochs, "
        f"{float(summary['train_seconds']):.0f} s on {summary['device']}) for "
        f"{len(targeted)} targeted cells. Regression guard: {verdict}; regressions: "
        f"{', '.join(summary['regressions']) or 'none'}. {others} other cells stayed within "
        "tolerance. The re-trained package is evidence only: it would need its own approval."
    )
    pending = list(summary.get("not_evaluated_sites") or ())
    if pending:
        text += (
            " Re-training runs nightly, not on every re-audit: its guard has not yet evaluated "
            f"{', '.join(pending)} (audited after it ran)."
        )
    return text, table(
        ("Site", "Finding", "Split", "Pos / n", "AUROC before", "AUROC after", "Change", "Guard"),
        rows,
        (11, 13, 8, 9, 17, 17, 15, 10),
        caption="Table 6.3 Re-training guard: targeted and regressed cells (95% CI).",
    )


def _cell(spec: str, site: str) -> tuple[str, str]:
    """A targeted cell given as ``"site/finding"`` or as a finding of the re-trained site."""
    site_part, sep, finding = str(spec).rpartition("/")
    return (site_part, finding) if sep else (site, finding)


def site_plans(
    decisions: pd.DataFrame, criteria: pd.DataFrame, monitoring: pd.DataFrame
) -> tuple[SitePlan, ...]:
    """One plan per site: decision, conditions, failed criteria, monitoring and rollback."""
    plans = []
    for _, d in decisions.sort_values("site", kind="stable").iterrows():
        site = str(d["site"])
        css, _ = decision_style(str(d["decision"]), site)
        crit = criteria[(criteria["site"] == site) & ~criteria["passed_before"].astype(bool)]
        mon = monitoring[monitoring["site"] == site]
        watched = mon[mon["kind"] != "deployment"]
        if mon.empty:
            raise AuditInputError(
                "monitoring",
                f"no row for site {site!r}",
                "at least one monitoring-plan row per decided site (a NO-GO site gets its "
                "re-audit entry)",
                "regenerate cxr_monitoring_plan with clinaudit.studies.multisite_cxr.monitoring",
            )
        n_all = int((criteria["site"] == site).sum())
        plans.append(
            SitePlan(
                site=site,
                decision=str(d["decision"]),
                css=css,
                conditions=_conditions(str(d["decision"]), str(d["conditions"])),
                criteria=_criteria_table(crit) if len(crit) else None,
                criteria_text=f"{len(crit)} of {n_all} criteria failed before mitigation.",
                monitoring=_monitoring_table(watched) if len(watched) else None,
                escalation="; ".join(dict.fromkeys(mon["escalation"].astype(str))),
                rollback="; ".join(dict.fromkeys(mon["action"].astype(str))),
            )
        )
    return tuple(plans)


def _conditions(decision: str, conditions: str) -> str:
    """The conditions sentence, never empty (what an empty field means for each decision)."""
    if conditions.strip():
        return conditions.strip().rstrip(".") + "."
    return "not deployed." if decision == Decision.NO_GO else "none."


def _value(x: object) -> str:
    """A criterion or monitoring value: integers plainly, fractions with 3 decimals, text as is."""
    if isinstance(x, str):
        return x or "not set"
    if not finite(x):
        return "not set"
    v = float(x)  # type: ignore[arg-type]
    return str(int(v)) if v.is_integer() and abs(v) >= 1 else f"{v:.3f}"


#: Plain names of the policy's criteria (``decisions.CRITERION_ORDER``).
CRITERION_LABELS = {
    "data_sufficiency": "data sufficiency",
    "auroc": "AUROC",
    "ece": "ECE",
    "sensitivity": "sensitivity",
    "drift_psi": "input drift (PSI)",
    "drift_mmd": "input drift (MMD)",
}


def criterion_label(key: str) -> str:
    """Plain name of a criterion key (unknown keys: underscores become spaces)."""
    return CRITERION_LABELS.get(key, key.replace("_", " "))


def blocking_row(c: pd.Series) -> bool:
    """Whether a failed criterion blocks deployment (column ``blocking``; drift does not)."""
    if "blocking" in c.index and c["blocking"] is not None and not pd.isna(c["blocking"]):
        return bool(c["blocking"])
    return not str(c["criterion"]).startswith("drift")


def _required(c: pd.Series) -> str:
    key = str(c["criterion"])
    if key == "data_sufficiency":
        return "enough positives and negatives"
    if key == "drift_mmd":
        return "no significant MMD"
    if key == "drift_psi":
        return f"at most {int(float(c['limit']))} flagged features"
    cmp = COMPARATORS.get(str(c["comparator"]), str(c["comparator"]))
    return f"{cmp} {_value(c['limit'])}"


def _after(c: pd.Series) -> Cell:
    if not blocking_row(c):
        return Cell("not blocking: monitored", "warn")
    if bool(c["passed_after"]):
        return Cell(f"passes after {c['mitigation']}: {_value(c['value_after'])}", "pass")
    if c["mitigation"] and finite(c["value_after"]):
        return Cell(f"still fails after {c['mitigation']}: {_value(c['value_after'])}", "fail")
    return Cell("no allowed mitigation", "fail")


def _criteria_table(crit: pd.DataFrame) -> Table:
    rows: list[list[str | Cell]] = [
        [
            criterion_label(str(c["criterion"])),
            str(c["finding"]) or "site",
            str(c["evidence"]),
            _required(c),
            _after(c),
        ]
        for _, c in crit.iterrows()
    ]
    return table(
        ("Failed criterion", "Finding", "Evidence at audit", "Required", "After mitigation"),
        rows,
        (14, 12, 36, 17, 21),
        css="compact",
    )


def _monitoring_rows(mon: pd.DataFrame) -> list[list[str | Cell]]:
    """One row per plan item; items that share metric, thresholds and cadence are merged."""
    keys = ["kind", "metric", "warn_threshold", "action_threshold", "cadence"]
    frame = mon.assign(**{k: mon[k].map(_value) for k in keys[2:4]})
    order = list(dict.fromkeys(map(tuple, frame[keys].to_numpy())))
    rows: list[list[str | Cell]] = []
    for key in order:
        part = frame[(frame[keys].apply(tuple, axis=1)) == key]
        kind = str(key[0])
        items = [str(i).removeprefix(f"{kind}: ") for i in part["item"]]
        label = f"{kind}: {', '.join(items)}" if len(items) > 1 else str(part["item"].iloc[0])
        base = [_value(b) for b in part["baseline"]]
        shown = base[0] if len(set(base)) == 1 else f"{len(base)} values, {_range(part)}"
        rows.append([label, _value(key[1]), shown, str(key[2]), str(key[3]), _value(key[4])])
    return rows


def _range(part: pd.DataFrame) -> str:
    vals = [float(v) for v in part["baseline"] if finite(v)]
    return f"{_value(min(vals))}–{_value(max(vals))}" if vals else "not set"


def _monitoring_table(mon: pd.DataFrame) -> Table:
    return table(
        ("Monitored item", "Metric", "Baseline (audit)", "Warn at", "Act at", "Cadence"),
        _monitoring_rows(mon),
        (30, 30, 12, 9, 9, 10),
        css="compact",
    )


def critical_findings(criteria: pd.DataFrame, fallback: Sequence[str]) -> list[str]:
    """Findings named by the policy criteria (in order), or ``fallback`` when none is named."""
    named = [str(f) for f in dict.fromkeys(criteria["finding"].astype(str)) if f]
    return named or list(fallback)
