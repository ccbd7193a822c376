"""Study ``multisite_cxr``, stage 4: mitigations and the go / no-go decision per site.

Site recalibration (cross-fitted, so every after-number is out-of-sample), focused re-training of
the model on the site with the most worst cells (guarded against regressions elsewhere), and the
decision of every site under the versioned policy, with its monitoring plan. Bodies wire
``clinaudit.audit`` and ``clinaudit.models``.
"""

import json

import dagster as dg
import pandas as pd

from clinaudit.assets.multisite_cxr import GROUP, OWNERS, STUDY_DIR
from clinaudit.assets.multisite_cxr_audit import (
    REFERENCE_GROUP,
    audited_sites,
    md_table,
    operating_thresholds,
)
from clinaudit.audit.decisions import decide_sites
from clinaudit.audit.monitoring import monitoring_plan
from clinaudit.audit.policy import load_policy
from clinaudit.audit.recalibration import RecalibrationConfig, recalibrate_sites
from clinaudit.audit.site_audit import scored_frame
from clinaudit.models.finetune import FinetuneConfig
from clinaudit.models.retrain import retrain_worst_site
from clinaudit.orchestration.resources import ClinauditHome, table_path
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_sites import REFERENCE_SITE
from clinaudit.sources.landing import sha256_file, tables_simulated

MITIGATION_DIR = "mitigation"


class DecisionPolicy(dg.ConfigurableResource):
    """The go / no-go policy file: the one shipped with clinaudit unless ``path`` names another."""

    path: str | None = None

    def load(self):
        """The parsed, validated policy (strict: unknown keys or missing thresholds raise)."""
        return load_policy(self.path, study="multisite_cxr")


class RecalibrationRunConfig(dg.Config):
    """Options of the cross-fitted site recalibration (defaults: ``RecalibrationConfig``)."""

    n_folds: int = RecalibrationConfig.n_folds
    n_boot: int = RecalibrationConfig.n_boot
    seed: int = RecalibrationConfig.seed


class RetrainRunConfig(dg.Config):
    """Options of the focused re-training (defaults: ``FinetuneConfig``)."""

    epochs: int = FinetuneConfig.epochs
    lr: float = FinetuneConfig.lr
    trainable: str = FinetuneConfig.trainable
    tolerance: float = FinetuneConfig.tolerance
    seed: int = FinetuneConfig.seed
    max_focus: int = 3


@dg.asset(
    group_name=GROUP,
    io_manager_key="table_io",
    owners=OWNERS,
    ins={
        "cxr_validated_images": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "cxr_predictions": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "vendor_model": dg.AssetIn(),
        "cxr_metrics": dg.AssetIn(),
    },
    description="Site-specific recalibration per (site, finding): temperature, Platt or isotonic "
    "chosen by cross-validated log-loss, fitted and evaluated with patient-disjoint cross-fitting "
    "(every after-number is out-of-sample); ECE / Brier / sensitivity before and after with "
    "paired bootstrap CIs, and the site threshold restoring the vendor's intended sensitivity. "
    "The deployable maps are written to artifacts/mitigation/cxr_recalibration_maps.json.",
)
def cxr_recalibration(
    context: dg.AssetExecutionContext,
    config: RecalibrationRunConfig,
    home: ClinauditHome,
    cxr_validated_images: dict[str, pd.DataFrame],
    cxr_predictions: dict[str, pd.DataFrame],
    vendor_model: pd.DataFrame,
    cxr_metrics: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    sites, _, _ = audited_sites(
        context.log, vendor_model, cxr_validated_images, cxr_predictions, "the recalibration"
    )
    frame = scored_frame(
        {s: cxr_validated_images[s] for s in sites},
        {s: cxr_predictions[s] for s in sites},
        targets=FINDINGS,
        reference_site=REFERENCE_SITE if REFERENCE_SITE in sites else None,
    )
    thresholds, source = operating_thresholds(vendor_model)
    # The vendor's intended sensitivity: its sensitivity at the threshold on its held-out set.
    ref = cxr_metrics[cxr_metrics["group"] == REFERENCE_GROUP].set_index("target")
    # A finding the vendor never detects at its threshold (sensitivity 0) has no sensitivity to
    # restore: its site-threshold columns stay empty rather than failing the stage.
    intended = {t: float(ref["sensitivity"].get(t, float("nan"))) for t in FINDINGS}
    intended = {t: v if v > 0 else float("nan") for t, v in intended.items()}
    result = recalibrate_sites(
        frame,
        targets=FINDINGS,
        thresholds=thresholds,
        intended_sensitivity=intended,
        config=RecalibrationConfig(n_folds=config.n_folds, n_boot=config.n_boot, seed=config.seed),
    )
    out_dir = home.artifacts / MITIGATION_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    maps_path = out_dir / "cxr_recalibration_maps.json"
    maps_path.write_text(json.dumps(result.maps, indent=2, sort_keys=True), encoding="utf-8")
    table = result.table
    ok = table[table["status"] == "ok"]
    return dg.Output(
        table,
        metadata={
            "simulated": tables_simulated(cxr_validated_images, home.landing, STUDY_DIR),
            "thresholds_from": source,
            "cells_recalibrated": len(ok),
            "maps": dg.MetadataValue.path(str(maps_path)),
            "maps_sha256": sha256_file(maps_path),
            "mean_ece_before": float(ok["ece_before"].mean()) if len(ok) else float("nan"),
            "mean_ece_after": float(ok["ece_after"].mean()) if len(ok) else float("nan"),
            "largest_ece_changes": dg.MetadataValue.md(
                md_table(
                    ok.assign(drop=ok["ece_before"] - ok["ece_after"]).sort_values(
                        "drop", ascending=False
                    ),
                    ["group", "target", "method", "ece_before", "ece_after", "ece_after_ci_high"],
                    limit=12,
                )
            ),
        },
    )


@dg.multi_asset(
    outs={
        "cxr_retraining": dg.AssetOut(
            io_manager_key="table_io",
            owners=OWNERS,
            description="Regression guard of the focused re-training: every cell's AUROC before "
            "and after on data never used for fine-tuning (other sites, the site's test split, "
            "the vendor held-out set), with the configured tolerance.",
        ),
        "cxr_retrained_model": dg.AssetOut(
            io_manager_key="table_io",
            owners=OWNERS,
            description="The re-trained model package (lineage to the vendor package), whether "
            "the guard accepted it, and the training time. A new model version: it needs its own "
            "approval before any deployment.",
        ),
    },
    ins={
        "cxr_validated_images": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "cxr_worst_cells": dg.AssetIn(),
        "vendor_model": dg.AssetIn(),
    },
    group_name=GROUP,
)
def cxr_retraining(
    context: dg.AssetExecutionContext,
    config: RetrainRunConfig,
    home: ClinauditHome,
    cxr_validated_images: dict[str, pd.DataFrame],
    cxr_worst_cells: pd.DataFrame,
    vendor_model: pd.DataFrame,
):
    """Fine-tune the last block + head on the site with the most worst cells."""
    row = vendor_model.iloc[0]
    if row["mode"] == "scores" or not len(cxr_worst_cells):
        why = (
            "the vendor supplied scores only: there is no model to re-train"
            if row["mode"] == "scores"
            else "no worst cell was flagged"
        )
        context.log.info(f"focused re-training not run: {why}")
        yield dg.Output(pd.DataFrame(), "cxr_retraining", metadata={"not_run": why})
        yield dg.Output(
            pd.DataFrame([{"status": "not run", "reason": why}]),
            "cxr_retrained_model",
            metadata={"not_run": why},
        )
        return
    out_dir = home.artifacts / "models" / "retrained" / f"{row['package_sha256'][:12]}"
    out_dir = out_dir / f"run-{context.run.run_id[:8]}"
    outcome = retrain_worst_site(
        cxr_worst_cells,
        {s: t for s, t in cxr_validated_images.items() if len(t)},
        row["package_dir"],
        out_dir=out_dir,
        landing_root=home.landing,
        config=FinetuneConfig(
            epochs=config.epochs,
            lr=config.lr,
            trainable=config.trainable,
            tolerance=config.tolerance,
            seed=config.seed,
        ),
        max_focus=config.max_focus,
        log=context.log.info,
    )
    summary = outcome.summary
    verdict = "accepted" if summary["accepted"] else "REFUSED (regression)"
    context.log.info(f"re-trained model for {summary['retrained_site']}: {verdict}")
    table = outcome.table
    yield dg.Output(
        table,
        "cxr_retraining",
        metadata={
            "retrained_site": summary["retrained_site"],
            "accepted": summary["accepted"],
            "regressions": dg.MetadataValue.json(summary["regressions"]),
            "guard": dg.MetadataValue.md(
                md_table(
                    table.sort_values("auroc_change"),
                    ["group", "target", "auroc_before", "auroc_after", "auroc_change", "regressed"],
                    limit=20,
                )
            ),
        },
    )
    record = {k: v for k, v in summary.items() if not isinstance(v, dict | list)}
    record.update({k: json.dumps(v, sort_keys=True) for k, v in summary.items() if k not in record})
    yield dg.Output(
        pd.DataFrame([{"status": "run", "reason": "", **record}]),
        "cxr_retrained_model",
        metadata={
            "package_dir": dg.MetadataValue.path(summary["package_dir"]),
            "package_sha256": summary["package_sha256"],
            "parent_package_sha256": summary["parent_package_sha256"],
            "accepted": summary["accepted"],
            "train_seconds": summary["train_seconds"],
            "device": summary["device"],
        },
    )


@dg.multi_asset(
    outs={
        "cxr_decisions": dg.AssetOut(
            io_manager_key="table_io",
            owners=OWNERS,
            description="GO / CONDITIONAL GO / NO-GO per site under the versioned decision "
            "policy, with the criteria that drove each decision and the conditions.",
        ),
        "cxr_decision_criteria": dg.AssetOut(
            io_manager_key="table_io",
            owners=OWNERS,
            description="Every criterion of every site: value with CI, limit, pass/fail before "
            "and after the allowed mitigations, and the mitigation that changed it.",
        ),
        "cxr_monitoring_plan": dg.AssetOut(
            io_manager_key="table_io",
            owners=OWNERS,
            description="Per deployed site: drift features and metrics to watch, warn / action "
            "thresholds from this audit's baselines, cadence and escalation.",
        ),
    },
    ins={
        "cxr_metrics": dg.AssetIn(),
        "cxr_calibration": dg.AssetIn(),
        "cxr_recalibration": dg.AssetIn(),
        "cxr_drift": dg.AssetIn(),
        "cxr_retraining": dg.AssetIn(),
    },
    deps=["cxr_decision_policy_file"],
    group_name=GROUP,
)
def cxr_decisions(
    context: dg.AssetExecutionContext,
    policy: DecisionPolicy,
    cxr_metrics: pd.DataFrame,
    cxr_calibration: pd.DataFrame,
    cxr_recalibration: pd.DataFrame,
    cxr_drift: pd.DataFrame,
    cxr_retraining: pd.DataFrame,
):
    """Apply the policy to the audit evidence of every deployment site."""
    rules = policy.load()
    sites = sorted(g for g in cxr_metrics["group"].unique() if ":" not in str(g))
    decisions = decide_sites(
        rules,
        metrics=cxr_metrics,
        calibration=cxr_calibration,
        recalibration=cxr_recalibration,
        drift=cxr_drift,
        retraining=cxr_retraining if len(cxr_retraining) else None,
        sites=sites,
    )
    plan = monitoring_plan(
        rules,
        decisions,
        drift=cxr_drift,
        metrics=cxr_metrics,
        calibration=cxr_calibration,
        recalibration=cxr_recalibration,
    )
    for r in decisions.table.itertuples():
        context.log.info(f"{r.site}: {r.decision} - {r.reasons}")
    provenance = {
        "policy_id": rules.policy_id,
        "policy_version": rules.version,
        "policy_sha256": rules.sha256,
        "policy_source": str(rules.source),
    }
    yield dg.Output(
        decisions.table,
        "cxr_decisions",
        metadata={
            **provenance,
            "decisions": dg.MetadataValue.md(
                md_table(decisions.table, ["site", "decision", "reasons"], limit=50)
            ),
        },
    )
    yield dg.Output(
        decisions.criteria,
        "cxr_decision_criteria",
        metadata={
            "failed_before_mitigation": int((~decisions.criteria["passed_before"]).sum()),
            "failed_after_mitigation": int((~decisions.criteria["passed_after"]).sum()),
        },
    )
    yield dg.Output(
        plan,
        "cxr_monitoring_plan",
        metadata={"items": len(plan), "sites": dg.MetadataValue.json(sorted(set(plan["site"])))},
    )


def read_decisions(home: ClinauditHome) -> pd.DataFrame | None:
    """The latest materialized decisions table (``None`` before the first decision run)."""
    path = table_path(home, dg.AssetKey("cxr_decisions"), None)
    return pd.read_parquet(path) if path.exists() else None


ASSETS = [cxr_recalibration, cxr_retraining, cxr_decisions]
