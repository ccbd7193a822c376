"""Study ``multisite_cxr``, stage 3: audit statistics per site and across sites.

Discrimination and calibration with clustered-bootstrap CIs, DeLong comparisons with the vendor's
held-out set, drift of inputs and scores, and the worst (site, finding) cells. Bodies wire
``clinaudit.audit``; figures come from ``clinaudit.reporting.figures``.
"""

import hashlib
from typing import Any

import dagster as dg
import pandas as pd

from clinaudit.assets.multisite_cxr import GROUP, OWNERS, STUDY_DIR, cxr_sites
from clinaudit.assets.multisite_cxr_model import scores_file
from clinaudit.audit.drift import DriftConfig
from clinaudit.audit.serialize import metrics_to_json
from clinaudit.audit.site_audit import (
    SCORE_PREFIX,
    SiteAuditConfig,
    drift_features,
    drifted_sites,
    mean_auroc_by_group,
    reference_label,
    run_site_audit,
    scored_frame,
    site_drift,
    usable_sites,
)
from clinaudit.audit.worst_cells import WorstCellsConfig
from clinaudit.models.package import load_package
from clinaudit.orchestration.resources import ClinauditHome
from clinaudit.reporting.figures import (
    auroc_heatmap,
    drift_bars,
    markdown_image,
    reliability_diagrams,
)
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_sites import REFERENCE_SITE
from clinaudit.sources.landing import sha256_file, tables_simulated
from clinaudit.validation.quality import QUALITY_FEATURES

#: Categorical acquisition metadata compared with the reference site.
CATEGORICAL_DRIFT = (
    "view_position",
    "meta_Manufacturer",
    "meta_ManufacturerModelName",
    "meta_PhotometricInterpretation",
    "meta_BitsStored",
)
METRIC_COLUMNS = ["group", "target", "status", "n_pos", "auroc", "auroc_ci_low", "auroc_ci_high"]
REFERENCE_GROUP = reference_label(REFERENCE_SITE)


class CxrAuditConfig(dg.Config):
    """Run configuration of the audit statistics (converted to the core ``SiteAuditConfig``)."""

    n_boot: int = 1000
    min_pos: int = 10
    min_neg: int = 10
    n_bins: int = 10
    seed: int = 0
    top_k: int = 10
    ece_tolerance: float = 0.05
    psi_moderate: float = 0.1
    psi_major: float = 0.25
    alpha: float = 0.05
    n_perm: int = 1000

    def core(self) -> SiteAuditConfig:
        return SiteAuditConfig(
            n_boot=self.n_boot,
            min_pos=self.min_pos,
            min_neg=self.min_neg,
            n_bins=self.n_bins,
            seed=self.seed,
            worst=WorstCellsConfig(top_k=self.top_k, ece_tolerance=self.ece_tolerance),
            drift=DriftConfig(
                psi_moderate=self.psi_moderate,
                psi_major=self.psi_major,
                alpha=self.alpha,
                n_perm=self.n_perm,
                seed=self.seed,
            ),
        )


def operating_thresholds(vendor_model: pd.DataFrame) -> tuple[dict[str, float], str]:
    """Operating thresholds from the audited package's card; 0.5 when only scores were given."""
    row = vendor_model.iloc[0]
    if row["mode"] == "scores":
        return {f: 0.5 for f in FINDINGS}, "0.5: vendor scores came without operating thresholds"
    card = load_package(row["package_dir"], expected_labels=FINDINGS).card
    return {f: float(card.operating_thresholds[f]) for f in FINDINGS}, "the model card"


def audited_identity(vendor_model: pd.DataFrame, sites: list[str]) -> str | dict[str, str]:
    """What every prediction must carry: the package sha256, or each site's scores-file sha256."""
    row = vendor_model.iloc[0]
    if row["mode"] == "scores":
        return {s: sha256_file(scores_file(row["scores_dir"], s)) for s in sites}
    return str(row["package_sha256"])


def audited_sites(
    log: Any,
    vendor_model: pd.DataFrame,
    validated: dict[str, pd.DataFrame],
    predictions: dict[str, pd.DataFrame],
    what: str = "the cross-site audit",
) -> tuple[list[str], dict[str, str], str | dict[str, str]]:
    """Sites whose predictions match their validated table and the audited model, why the others
    are left out of ``what`` (each logged as a warning; one stale site must not stop the others),
    and the audited identity the usable sites were checked against."""
    scored = sorted(s for s in predictions if len(predictions[s]))
    identity = audited_identity(vendor_model, scored)
    sites, left_out = usable_sites(validated, predictions, model_sha256=identity)
    for site, why in left_out.items():
        log.warning(f"{site} left out of {what}: {why}")
    return sites, left_out, identity


def md_table(frame: pd.DataFrame, cols: list[str], limit: int = 40) -> str:
    shown = frame[cols].head(limit)
    return shown.to_markdown(index=False, floatfmt=".3f") if len(shown) else "(none)"


@dg.asset(
    group_name=GROUP,
    io_manager_key="table_io",
    owners=OWNERS,
    partitions_def=cxr_sites,
    ins={
        "cxr_validated_images": dg.AssetIn(),
        "cxr_predictions": dg.AssetIn(),
        "vendor_model": dg.AssetIn(),
    },
    description="One site on its own: discrimination per finding (AUROC, AUPRC, sensitivity / "
    "specificity / PPV / NPV at the operating threshold) and calibration (ECE, Brier, slope), "
    "with clustered-bootstrap CIs. The reference site is measured on its held-out split only.",
)
def cxr_site_metrics(
    context: dg.AssetExecutionContext,
    config: CxrAuditConfig,
    cxr_validated_images: pd.DataFrame,
    cxr_predictions: pd.DataFrame,
    vendor_model: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    site = context.partition_key
    thresholds, source = operating_thresholds(vendor_model)
    frame = scored_frame(
        {site: cxr_validated_images},
        {site: cxr_predictions},
        targets=FINDINGS,
        reference_site=site if site == REFERENCE_SITE else None,
        model_sha256=audited_identity(vendor_model, [site]),
    )
    audit = run_site_audit(frame, targets=FINDINGS, thresholds=thresholds, config=config.core())
    calibration = audit.calibration.table[
        ["group", "target", "ece_width", "ece_width_ci_low", "ece_width_ci_high", "brier"]
    ]
    table = audit.discrimination.table.merge(calibration, on=["group", "target"])
    return dg.Output(
        table,
        metadata={
            "site": site,
            "thresholds_from": source,
            "mean_auroc": float(mean_auroc_by_group(table).iloc[0]),
            "cells_insufficient_data": int((table["status"] != "ok").sum()),
            "metrics": dg.MetadataValue.md(
                md_table(table, [*METRIC_COLUMNS[1:], "sensitivity", "specificity", "ece_width"])
            ),
        },
    )


@dg.multi_asset(
    outs={
        "cxr_metrics": dg.AssetOut(
            io_manager_key="table_io",
            owners=OWNERS,
            description="Cross-site discrimination table: every (site, finding) cell with "
            "clustered-bootstrap and DeLong CIs, and the DeLong test against the vendor's "
            "held-out set (Holm-adjusted across cells). Insufficient cells carry no numbers.",
        ),
        "cxr_calibration": dg.AssetOut(
            io_manager_key="table_io",
            owners=OWNERS,
            description="Cross-site calibration table: ECE (equal width / equal mass), MCE, "
            "Brier, calibration intercept and slope per cell, with bootstrap CIs.",
        ),
        "cxr_reliability": dg.AssetOut(
            io_manager_key="table_io",
            owners=OWNERS,
            description="Reliability-diagram data per cell and bin (count, mean predicted, "
            "observed rate with Wilson CI).",
        ),
        "cxr_worst_cells": dg.AssetOut(
            io_manager_key="table_io",
            owners=OWNERS,
            description="The (site, finding) cells with the strongest evidence of harm versus "
            "the vendor's held-out set, with the criteria that fired and their CIs.",
        ),
    },
    ins={
        "cxr_validated_images": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "cxr_predictions": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "vendor_model": dg.AssetIn(),
    },
    group_name=GROUP,
)
def cxr_audit_metrics(
    context: dg.AssetExecutionContext,
    config: CxrAuditConfig,
    home: ClinauditHome,
    cxr_validated_images: dict[str, pd.DataFrame],
    cxr_predictions: dict[str, pd.DataFrame],
    vendor_model: pd.DataFrame,
):
    """All sites against the vendor's held-out set in one pass (about a second of statistics)."""
    sites, left_out, identity = audited_sites(
        context.log, vendor_model, cxr_validated_images, cxr_predictions
    )
    thresholds, source = operating_thresholds(vendor_model)
    frame = scored_frame(
        {s: cxr_validated_images[s] for s in sites},
        {s: cxr_predictions[s] for s in sites},
        targets=FINDINGS,
        reference_site=REFERENCE_SITE,
        model_sha256=identity,
    )
    audit = run_site_audit(
        frame,
        targets=FINDINGS,
        thresholds=thresholds,
        reference_group=REFERENCE_GROUP,
        config=config.core(),
    )
    disc, cal = audit.discrimination.table, audit.calibration.table
    metrics_json = metrics_to_json(disc)
    out_dir = home.artifacts / "audit"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cxr_metrics.json").write_text(metrics_json, encoding="utf-8")
    simulated = tables_simulated(cxr_validated_images, home.landing, STUDY_DIR)
    heatmap = auroc_heatmap(disc, targets=FINDINGS, simulated=simulated)
    worst = audit.worst
    cells = [(str(g), str(t)) for g, t in worst[["group", "target"]].head(4).to_numpy()]
    by_site = mean_auroc_by_group(disc).rename("mean_auroc").reset_index()
    yield dg.Output(
        disc,
        "cxr_metrics",
        metadata={
            "sites": sites,
            "sites_left_out": dg.MetadataValue.json(left_out),
            "simulated": simulated,
            "reference_group": REFERENCE_GROUP,
            "thresholds_from": source,
            "metrics_json": dg.MetadataValue.path(str(out_dir / "cxr_metrics.json")),
            "metrics_json_sha256": hashlib.sha256(metrics_json.encode()).hexdigest(),
            "mean_auroc_by_site": dg.MetadataValue.md(md_table(by_site, ["group", "mean_auroc"])),
            "auroc_heatmap": dg.MetadataValue.md(markdown_image(heatmap, "AUROC heatmap")),
        },
    )
    yield dg.Output(
        cal,
        "cxr_calibration",
        metadata={
            "ece_by_cell": dg.MetadataValue.md(
                md_table(
                    cal.sort_values("ece_width", ascending=False),
                    ["group", "target", "status", "ece_width", "ece_width_ci_low", "brier"],
                )
            )
        },
    )
    yield dg.Output(
        audit.calibration.reliability,
        "cxr_reliability",
        metadata={
            "worst_cells_reliability": dg.MetadataValue.md(
                markdown_image(
                    reliability_diagrams(audit.calibration.reliability, cells, simulated=simulated),
                    "reliability diagrams",
                )
                if cells
                else "no flagged cell"
            )
        },
    )
    context.log.info(f"worst cells: {len(worst)} flagged of {len(disc)} cells")
    yield dg.Output(
        worst,
        "cxr_worst_cells",
        metadata={
            "n_flagged": len(worst),
            "worst_cells": dg.MetadataValue.md(
                md_table(worst, ["rank", "group", "target", "criteria", "harm_score", "auroc_drop"])
            ),
        },
    )


@dg.asset(
    group_name=GROUP,
    io_manager_key="table_io",
    owners=OWNERS,
    ins={
        "cxr_validated_images": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        "cxr_predictions": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
    },
    description="Drift of every site against the reference site: PSI, KS, normalised "
    "Wasserstein and SMD per image-quality feature and per model score, chi-square + PSI for "
    "acquisition metadata, and a multivariate MMD permutation test; adjusted p-values.",
)
def cxr_drift(
    context: dg.AssetExecutionContext,
    config: CxrAuditConfig,
    home: ClinauditHome,
    cxr_validated_images: dict[str, pd.DataFrame],
    cxr_predictions: dict[str, pd.DataFrame],
) -> dg.Output[pd.DataFrame]:
    # Input drift needs no model; score drift only from predictions that match their images.
    consistent, stale = usable_sites(cxr_validated_images, cxr_predictions)
    for site, why in stale.items():
        context.log.warning(f"{site}: scores left out of drift: {why}")
    features = drift_features(
        cxr_validated_images,
        {s: cxr_predictions[s] for s in consistent},
        features=[*QUALITY_FEATURES, *CATEGORICAL_DRIFT],
        targets=FINDINGS,
        reference_site=REFERENCE_SITE,
    )
    score_cols = [SCORE_PREFIX + f for f in FINDINGS]
    have_scores = all(c in f.columns for f in features.values() for c in score_cols)
    numeric = [*QUALITY_FEATURES, *(score_cols if have_scores else [])]
    drift = site_drift(
        features,
        reference_site=REFERENCE_SITE,
        numeric=numeric,
        categorical=list(CATEGORICAL_DRIFT),
        config=config.core().drift,
    )
    flagged = drifted_sites(drift)
    simulated = tables_simulated(cxr_validated_images, home.landing, STUDY_DIR)
    context.log.info(f"drifted features per site: {flagged}")
    return dg.Output(
        drift,
        metadata={
            "simulated": simulated,
            "features": len(numeric) + len(CATEGORICAL_DRIFT),
            "scores_included": have_scores,
            "drifted": dg.MetadataValue.json({k: v for k, v in flagged.items()}),
            "psi": dg.MetadataValue.md(
                markdown_image(
                    drift_bars(
                        drift,
                        simulated=simulated,
                        psi_moderate=config.psi_moderate,
                        psi_major=config.psi_major,
                    ),
                    "PSI per feature",
                )
                if len(drift)
                else "no site besides the reference"
            ),
        },
    )


ASSETS = [cxr_site_metrics, cxr_audit_metrics, cxr_drift]
