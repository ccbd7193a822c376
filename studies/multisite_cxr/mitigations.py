"""multisite_cxr mitigations: site recalibration (each re-audit) and focused re-training (nightly).

Site recalibration per (site, finding): temperature, Platt or isotonic chosen by cross-validated
log-loss, fitted and evaluated with patient-disjoint cross-fitting (every after-number is
out-of-sample), and the site threshold restoring the vendor's intended sensitivity; the
deployable maps are an evidence file of the stage. Focused re-training fine-tunes the model on the
site with the most worst cells and guards every other cell against regression; it needs minutes
and never changes a decision under the shipped policy, so it runs nightly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from clinaudit.audit.recalibration import RecalibrationConfig, recalibrate_sites
from clinaudit.audit.records import TableSet
from clinaudit.audit.reference_audit import scored_frame
from clinaudit.models.finetune import FinetuneConfig
from clinaudit.models.retrain import retrain_worst_site
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.studies.base import AuditData, RunDirs

from .evaluate import audited_sites

__all__ = ["RecalibrationOptions", "RetrainOptions", "recalibrate", "retrain"]


@dataclass(frozen=True)
class RecalibrationOptions:
    """Options of the cross-fitted site recalibration (defaults: ``RecalibrationConfig``)."""

    n_folds: int = RecalibrationConfig.n_folds
    n_boot: int = RecalibrationConfig.n_boot
    seed: int = RecalibrationConfig.seed


@dataclass(frozen=True)
class RetrainOptions:
    """Options of the focused re-training (defaults: ``FinetuneConfig``)."""

    epochs: int = FinetuneConfig.epochs
    lr: float = FinetuneConfig.lr
    trainable: str = FinetuneConfig.trainable
    tolerance: float = FinetuneConfig.tolerance
    seed: int = FinetuneConfig.seed
    max_focus: int = 3


def recalibrate(
    evidence: TableSet,
    data: AuditData,
    *,
    reference_site: str,
    options: RecalibrationOptions,
    log: Callable[[str], None],
) -> TableSet:
    """Recalibrate every audited (site, finding) cell; the maps are the stage's evidence file."""
    sites, _, _ = audited_sites(data, reference_site)
    frame = scored_frame(
        {s: data.validated[s] for s in sites},
        {s: data.predictions[s] for s in sites},
        targets=FINDINGS,
        reference_site=reference_site if reference_site in sites else None,
    )
    # The vendor's intended sensitivity: its sensitivity at the threshold on its held-out set.
    metrics = evidence["metrics"]
    ref = metrics[metrics["group"] == evidence.fact("reference_group")].set_index("target")
    # A finding the vendor never detects at its threshold (sensitivity 0) has no sensitivity to
    # restore: its site-threshold columns stay empty rather than failing the stage.
    intended = {t: float(ref["sensitivity"].get(t, float("nan"))) for t in FINDINGS}
    intended = {t: v if v > 0 else float("nan") for t, v in intended.items()}
    config = RecalibrationConfig(n_folds=options.n_folds, n_boot=options.n_boot, seed=options.seed)
    result = recalibrate_sites(
        frame,
        targets=FINDINGS,
        thresholds=data.model.thresholds,
        intended_sensitivity=intended,
        config=config,
    )
    ok = result.table[result.table["status"] == "ok"]
    log(f"recalibrated {len(ok)} of {len(result.table)} cells")
    return TableSet(
        tables={"recalibration": result.table},
        facts={
            "settings": {**asdict(config), "thresholds_from": data.model.threshold_source},
            "cells_recalibrated": len(ok),
        },
        files={
            "recalibration_maps.json": json.dumps(result.maps, indent=2, sort_keys=True).encode()
        },
    )


def _not_run(why: str) -> TableSet:
    return TableSet(
        tables={
            "retraining": pd.DataFrame(),
            "retrained_model": pd.DataFrame([{"status": "not run", "reason": why}]),
        },
        facts={"not_run": why},
    )


def retrain(
    evidence: TableSet,
    data: AuditData,
    *,
    options: RetrainOptions,
    dirs: RunDirs,
    log: Callable[[str], None],
    run_id: str,
    simulated: bool,
) -> TableSet:
    """Fine-tune the last block + head on the site with the most worst cells, guarded."""
    worst, model = evidence["worst_cells"], data.model
    if model.mode == "scores":
        return _not_run("the vendor supplied scores only: there is no model to re-train")
    if not len(worst):
        return _not_run("no worst cell was flagged")
    out_dir = dirs.artifacts / "models" / "retrained" / model.identity[:12] / f"run-{run_id[:8]}"
    outcome = retrain_worst_site(
        worst,
        {s: t for s, t in data.validated.items() if len(t)},
        model.source,
        out_dir=out_dir,
        landing_root=dirs.landing,
        config=FinetuneConfig(
            epochs=options.epochs,
            lr=options.lr,
            trainable=options.trainable,
            tolerance=options.tolerance,
            seed=options.seed,
        ),
        max_focus=options.max_focus,
        simulated=simulated,
        log=log,
    )
    summary = outcome.summary
    log(
        f"re-trained model for {summary['retrained_site']}: "
        + ("accepted" if summary["accepted"] else "REFUSED (regression)")
    )
    record: dict[str, Any] = {k: v for k, v in summary.items() if not isinstance(v, dict | list)}
    record.update({k: json.dumps(v, sort_keys=True) for k, v in summary.items() if k not in record})
    return TableSet(
        tables={
            "retraining": outcome.table,
            "retrained_model": pd.DataFrame([{"status": "run", "reason": "", **record}]),
        },
        facts={"settings": asdict(options), "accepted": bool(summary["accepted"])},
    )
