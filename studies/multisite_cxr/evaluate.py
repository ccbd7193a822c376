"""multisite_cxr evidence: every site against the vendor's held-out set, and input drift.

Discrimination and calibration with clustered-bootstrap CIs, DeLong comparisons with the vendor's
held-out set (Holm-adjusted), the worst (site, finding) cells, and drift of image-quality
features, acquisition metadata and scores against the reference site. Sites whose predictions are
stale or come from another model are left out with the reason (the signed report names them).
Every setting the numbers used is recorded in the evidence's facts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.calibration import CalibrationTable
from clinaudit.audit.discrimination import DiscriminationTable
from clinaudit.audit.drift import DriftConfig
from clinaudit.audit.partitions import usable_partitions
from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.audit.reference_audit import (
    SCORE_PREFIX,
    SiteAuditConfig,
    drift_features,
    mean_auroc_by_group,
    reference_label,
    run_site_audit,
    scored_frame,
    site_drift,
)
from clinaudit.audit.schemas import OutputSchema, probability_field, validate_table
from clinaudit.audit.serialize import metrics_to_json
from clinaudit.audit.worst_cells import WorstCellsConfig
from clinaudit.models.scores_csv import ID_COLUMN, score_ids
from clinaudit.models.vendor_scores import CXR_IDS, quarantined_image_ids
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.studies.base import AuditData
from clinaudit.validation.quality import QUALITY_FEATURES

from .label_free import label_free_evidence, unlabelled_sites
from .model import scores_files
from .policy import Policy

#: The study name (its packages hold the estimates frozen by earlier audits).
STUDY = "multisite_cxr"

__all__ = [
    "CATEGORICAL_DRIFT",
    "CxrAuditOptions",
    "MeanAuroc",
    "SiteMetrics",
    "audited_sites",
    "evaluate_sites",
    "site_metrics",
]

#: Categorical acquisition metadata compared with the reference site.
CATEGORICAL_DRIFT = (
    "view_position",
    "meta_Manufacturer",
    "meta_ManufacturerModelName",
    "meta_PhotometricInterpretation",
    "meta_BitsStored",
)
#: Calibration columns shown next to a site's discrimination (stage ``partition_metrics``).
CALIBRATION_COLUMNS = ["ece_width", "ece_width_ci_low", "ece_width_ci_high", "brier"]


class SiteMetrics(DiscriminationTable):
    """One site's metrics: its discrimination table, then :data:`CALIBRATION_COLUMNS` of its
    calibration table (checked as :class:`~clinaudit.audit.calibration.CalibrationTable` does)."""

    @classmethod
    def build_schema_(cls, **kwargs: Any) -> pa.DataFrameSchema:
        calibration = CalibrationTable.to_schema().columns
        extra = {c: calibration[c] for c in CALIBRATION_COLUMNS}
        return super().build_schema_(**kwargs).add_columns(extra)


class MeanAuroc(OutputSchema):
    """Mean AUROC over the findings with status ``"ok"``, per group (``NaN`` when none is)."""

    group: Series[str]
    mean_auroc: Series[float] = probability_field()

    class Config:
        ordered = True


@dataclass(frozen=True)
class CxrAuditOptions:
    """Statistical settings of the audit (run config of ``multisite_cxr/evidence``)."""

    n_boot: int = 1000
    min_pos: int = 10
    min_neg: int = 10
    n_bins: int = 10
    seed: int = 0
    top_k: int = 10
    ece_tolerance: float = 0.05
    psi_moderate: float = 0.1
    psi_major: float = 0.25
    psi_noise_draws: int = 2000
    alpha: float = 0.05
    n_perm: int = 1000
    #: Bootstrap replicates of the label-free estimates of a site without labels.
    label_free_n_boot: int = 500

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
                psi_noise_draws=self.psi_noise_draws,
                alpha=self.alpha,
                n_perm=self.n_perm,
                seed=self.seed,
            ),
        )


def settings(config: SiteAuditConfig, model: ModelRef) -> dict[str, Any]:
    """What the evidence was computed with, as recorded facts (the report prints these)."""
    drift = asdict(config.drift)
    return {
        "n_boot": config.n_boot,
        "ci_level": config.ci_level,
        "min_pos": config.min_pos,
        "min_neg": config.min_neg,
        "n_bins": config.n_bins,
        "p_adjust": config.p_adjust,
        "seed": config.seed,
        "worst_cells": asdict(config.worst),
        "drift": drift,
        "thresholds_from": model.threshold_source,
    }


def audited_sites(
    data: AuditData, reference_site: str
) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Sites whose predictions match their validated table and the audited model, why the others
    are left out, and the identity each site's predictions must carry."""
    sites, left_out = usable_partitions(
        data.validated,
        data.predictions,
        id_column="image_id",
        identity=data.model.partition_identity,
    )
    return sites, left_out, {s: data.model.partition_identity(s) for s in sites}


def intake(data: AuditData) -> dict[str, dict[str, int]]:
    """Per site the images quarantined at ingest (image problems and refused label rows) and,
    for vendor scores, how many of the site's score rows were set aside as theirs."""
    model = data.model
    files = scores_files(model.source) if model.mode == "scores" else {}
    quarantined: dict[str, int] = {}
    aside: dict[str, int] = {}
    for site, q in sorted(data.quarantine.items()):
        errors = q[q["severity"] == "error"]
        images = quarantined_image_ids(errors)
        # A label-table row (with its line) or an image file without one counts once.
        lined = errors[errors["row"].notna()]
        unlined = errors[errors["row"].isna() & errors["file"].astype(str).isin(images)]
        n = len(lined.drop_duplicates(["batch", "row"])) + len(
            unlined.drop_duplicates(["batch", "file"])
        )
        if n:
            quarantined[site] = n
        path = files.get(site if site in model.scores_files else "*")
        if images and path is not None:
            n_aside = int(score_ids(path, ID_COLUMN, CXR_IDS.missing_fix).isin(images).sum())
            if n_aside:
                aside[site] = n_aside
    return {"images_quarantined": quarantined, "scores_set_aside": aside}


def evaluate_sites(
    data: AuditData, *, reference_site: str, options: CxrAuditOptions, policy: Policy
) -> TableSet:
    """The cross-site evidence: metrics, calibration, reliability, worst cells and drift; for
    sites without labels the label-free estimates (:mod:`.label_free`), and the estimates an
    earlier package froze for sites now labelled, scored."""
    config = options.core()
    audited, left_out, identity = audited_sites(data, reference_site)
    unlabelled = [s for s in unlabelled_sites(data.validated, audited) if s != reference_site]
    sites = [s for s in audited if s not in unlabelled]
    frame = scored_frame(
        {s: data.validated[s] for s in sites},
        {s: data.predictions[s] for s in sites},
        targets=FINDINGS,
        reference_site=reference_site,
        model_sha256={s: identity[s] for s in sites},
    )
    audit = run_site_audit(
        frame,
        targets=FINDINGS,
        thresholds=data.model.thresholds,
        reference_group=reference_label(reference_site),
        config=config,
    )
    drift = _drift(data, reference_site, config.drift)
    disc = audit.discrimination.table
    by_site = mean_auroc_by_group(disc).rename("mean_auroc").reset_index()
    validate_table(by_site, MeanAuroc)
    reference = frame[frame["group"] == reference_label(reference_site)]
    label_free = label_free_evidence(
        data.validated,
        data.predictions,
        labelled=[s for s in sites if s != reference_site],
        unlabelled=unlabelled,
        reference=reference,
        drift=drift,
        thresholds=data.model.thresholds,
        identity=identity,
        gate={"features": policy.drift.features, "psi_levels": policy.drift.psi_levels},
        reports=data.reports,
        study=STUDY,
        n_boot=options.label_free_n_boot,
        ci_level=policy.unlabelled_sites.ci_level,
        seed=options.seed,
        min_class=min(options.min_pos, options.min_neg),
    )
    return TableSet(
        tables={
            "metrics": disc,
            "calibration": audit.calibration.table,
            "reliability": audit.calibration.reliability,
            "worst_cells": audit.worst,
            "drift": drift,
            "mean_auroc": by_site,
            "label_free": label_free.estimates,
            "label_free_scored": label_free.scored,
            "label_free_summary": label_free.summary,
        },
        facts={
            "sites": sites,
            "label_free": label_free.facts,
            "left_out": left_out,
            "intake": intake(data),
            "reference_group": reference_label(reference_site),
            "simulated": data.simulated,
            "settings": settings(config, data.model),
        },
        files={"metrics.json": metrics_to_json(disc).encode()},
    )


def _drift(data: AuditData, reference_site: str, config: DriftConfig) -> pd.DataFrame:
    """Drift of every site against the reference site (input drift needs no model; score drift
    only from predictions that match their images)."""
    consistent, _ = usable_partitions(data.validated, data.predictions, id_column="image_id")
    features = drift_features(
        data.validated,
        {s: data.predictions[s] for s in consistent},
        features=[*QUALITY_FEATURES, *CATEGORICAL_DRIFT],
        targets=FINDINGS,
        reference_site=reference_site,
    )
    score_cols = [SCORE_PREFIX + f for f in FINDINGS]
    have_scores = all(c in f.columns for f in features.values() for c in score_cols)
    return site_drift(
        features,
        reference_site=reference_site,
        numeric=[*QUALITY_FEATURES, *(score_cols if have_scores else [])],
        categorical=list(CATEGORICAL_DRIFT),
        config=config,
    )


def site_metrics(
    table: pd.DataFrame,
    predictions: pd.DataFrame,
    model: ModelRef,
    *,
    site: str,
    reference_site: str,
) -> pd.DataFrame:
    """One site on its own: discrimination and calibration per finding, with CIs (the reference
    site on its held-out split only)."""
    frame = scored_frame(
        {site: table},
        {site: predictions},
        targets=FINDINGS,
        reference_site=site if site == reference_site else None,
        model_sha256=model.partition_identity(site),
    )
    audit = run_site_audit(
        frame, targets=FINDINGS, thresholds=model.thresholds, config=CxrAuditOptions().core()
    )
    calibration = audit.calibration.table[["group", "target", *CALIBRATION_COLUMNS]]
    table = audit.discrimination.table.merge(calibration, on=["group", "target"])
    return validate_table(table, SiteMetrics)
