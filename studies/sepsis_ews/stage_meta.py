"""What the Dagster UI shows for each ``sepsis_ews`` stage, besides the generic facts.

Plain values (markdown text starts with ``"|"`` or ``"#"``); :mod:`clinaudit.assets.stage_meta`
turns them into Dagster metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.validation.ingest_loop import PartitionIngest

__all__ = ["describe"]


def _overall(frame: pd.DataFrame) -> pd.Series | None:
    hit = frame[(frame["attribute"] == "overall") & (frame["group"] == "all")]
    return hit.iloc[0] if len(hit) else None


def _num(value: Any, digits: int = 3) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, digits) if pd.notna(number) else None


def _ingest(value: PartitionIngest) -> dict[str, Any]:
    q = value.quarantine
    checks = q["check"].value_counts().sort_index() if len(q) else pd.Series(dtype=int)
    return {
        "n_stays": len(value.table),
        "n_septic": int(value.table["sepsis"].sum()) if len(value.table) else 0,
        "quarantine_checks": {str(k): int(v) for k, v in checks.items()},
    }


def _model(value: ModelRef) -> dict[str, Any]:
    card = value.card
    validation = card.get("validation") or {}
    return {
        "threshold": value.thresholds.get("sepsis"),
        "vendor": str(card.get("vendor", "vendor scores" if value.mode == "scores" else "")),
        "version": str(card.get("version", "")),
        "vendor_heldout_auroc": _num(validation.get("auroc")),
        "scores_files": sorted(value.scores_files),
    }


def _evidence(value: TableSet) -> dict[str, Any]:
    d, b = _overall(value["discrimination"]), _overall(value["burden"])
    dis = value["disadvantaged"]
    lowest = {
        str(r.attribute): f"{r.group}: TPR {float(r.tpr):.3f} (gap {float(r.max_min_gap):.3f})"
        for r in dis.itertuples()
        if getattr(r, "status", "") == "ok"
    }
    return {
        "hospitals": list(value.facts.get("hospitals", [])),
        "left_out": dict(value.facts.get("left_out", {})),
        "n_stays": value.facts.get("cohort", {}).get("n_stays"),
        "network_auroc": _num(d["auroc"]) if d is not None else None,
        "alert_rate": _num(b["alert_rate"]) if b is not None else None,
        "lowest_sensitivity": lowest,
        "settings": dict(value.facts.get("settings", {})),
    }


def _mitigation(value: TableSet) -> dict[str, Any]:
    f = value.facts
    out = {k: f.get(k) for k in ("status", "reason", "method", "attribute", "metric")}
    eff = value["mitigation_effects"]
    if len(eff) and f.get("attribute") and f.get("metric"):
        hit = eff[(eff["quantity"] == f"{f['metric']}_gap") & (eff["attribute"] == f["attribute"])]
        if len(hit):
            out["gap_before"] = _num(hit["before"].iloc[0])
            out["gap_after_out_of_fold"] = _num(hit["after"].iloc[0])
    return out


def _decisions(value: TableSet) -> dict[str, Any]:
    f = value.facts
    criteria = value["criteria"]
    table = "| criterion | attribute | value | limit | passed | with mitigation |\n"
    table += "|---|---|---|---|---|---|\n"
    table += "\n".join(
        f"| {r.criterion} | {r.attribute} | {_num(r.value)} | {r.comparator} {r.limit} | "
        f"{'pass' if r.passed else 'fail'} | {'pass' if r.passed_after else 'fail'} |"
        for r in criteria.itertuples()
    )
    return {
        "recommendation": f.get("recommendation"),
        "reasons": list(f.get("reasons", [])),
        "conditions": list(f.get("conditions", [])),
        "deployed_rule": f.get("deployed_rule"),
        "criteria": table,
    }


def _monitoring(value: TableSet) -> dict[str, Any]:
    plan = value["monitoring"]
    rows = "\n".join(
        f"| {r.item} | {r.kind} | {r.cadence} | {_num(r.baseline)} | {_num(r.action_threshold)} |"
        for r in plan.itertuples()
    )
    return {
        "items": len(plan),
        "plan": "| item | kind | cadence | baseline | action |\n|---|---|---|---|---|\n" + rows,
    }


def describe(stage: str, value: Any) -> Mapping[str, Any]:
    """Study-specific metadata of ``stage``'s output (empty for stages without any)."""
    if isinstance(value, PartitionIngest):
        return _ingest(value)
    if isinstance(value, ModelRef):
        return _model(value)
    if isinstance(value, TableSet):
        if stage == "evidence":
            return _evidence(value)
        if stage.startswith("mitigation_"):
            return _mitigation(value)
        if stage == "decisions":
            return _decisions(value)
        if stage == "monitoring":
            return _monitoring(value)
    if stage == "cohort" and isinstance(value, pd.DataFrame) and len(value):
        return {"hospitals": value.to_markdown(index=False)}
    return {}
