"""A multi-site audit: every site against the vendor's held-out reference, in one call.

This module assembles the generic statistics (``discrimination``, ``calibration``,
``worst_cells``, ``drift``) into what a site-by-site deployment audit needs:

* the *reference group* is the reference site's held-out split (other patients than any deployment
  site; the training split is never used: in-sample numbers would flatter the model);
* every deployment site is a group; patients (``site`` + pseudonym) are the bootstrap clusters;
* drift compares each site's image-quality features, categorical acquisition metadata and model
  scores with the reference site's development data.

Inputs are plain DataFrames (validated image tables and prediction tables per site), outputs frozen
dataclasses of DataFrames; nothing here knows about Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from .calibration import CalibrationResult, audit_calibration
from .discrimination import DiscriminationResult, audit_discrimination
from .drift import DriftConfig, drift_table
from .multiplicity import PAdjust
from .types import SCORE_PREFIX, AuditInputError
from .worst_cells import WorstCellsConfig, worst_cells

__all__ = [
    "SCORE_PREFIX",
    "SiteAudit",
    "SiteAuditConfig",
    "drift_features",
    "drifted_sites",
    "mean_auroc_by_group",
    "reference_label",
    "run_site_audit",
    "scored_frame",
    "site_drift",
]


@dataclass(frozen=True)
class SiteAuditConfig:
    """Statistical options of the site audit (defaults live here only)."""

    n_boot: int = 1000
    ci_level: float = 0.95
    min_pos: int = 10
    min_neg: int = 10
    n_bins: int = 10
    p_adjust: PAdjust = "holm"
    seed: int = 0
    worst: WorstCellsConfig = field(default_factory=WorstCellsConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)


@dataclass(frozen=True)
class SiteAudit:
    """Discrimination, calibration and worst cells of every (site, target) cell."""

    discrimination: DiscriminationResult
    calibration: CalibrationResult
    worst: pd.DataFrame | None
    reference_group: str | None
    thresholds: dict[str, float]


def reference_label(site: str, split: str = "test") -> str:
    """Group name of the reference sample, e.g. ``"vendor_dev:test"``."""
    return f"{site}:{split}"


def scored_frame(
    labels: Mapping[str, pd.DataFrame],
    predictions: Mapping[str, pd.DataFrame],
    *,
    targets: Sequence[str],
    reference_site: str | None = None,
    reference_split: str = "test",
    model_sha256: str | Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per scored image: ``group``, ``cluster``, the labels and ``score_<target>``.

    Parameters
    ----------
    labels : mapping
        Site -> validated image table (``image_id``, ``patient_pseudonym``, ``split``, targets).
    predictions : mapping
        Site -> predictions (``image_id`` and one probability column per target).
    targets : sequence of str
        Target columns.
    reference_site : str, optional
        Site whose ``reference_split`` rows form the reference group (its other rows are dropped:
        they trained the model). ``None``: every site is just a group.
    reference_split : str
        Split of the reference site used as reference (default ``"test"``).
    model_sha256 : str or mapping, optional
        The audited model's identity (or one per site, e.g. each site's scores file): every
        prediction must carry it, so a stale table or a second model cannot slip into the audit.

    Raises
    ------
    AuditInputError
        If a site has predictions but no labels (or the reverse), the image ids differ, or a
        prediction comes from another model.
    """
    if set(labels) != set(predictions):
        raise AuditInputError(
            "predictions",
            f"sites {sorted(predictions)}",
            f"the labelled sites {sorted(labels)}",
            "materialize predictions for every ingested site (or drop the site)",
        )
    parts = []
    for site in sorted(labels):
        lab = labels[site]
        pred = predictions[site].set_index("image_id")
        missing = sorted(set(lab["image_id"]) - set(pred.index))
        extra = sorted(set(pred.index) - set(lab["image_id"]))
        if missing or extra:
            first = (missing or extra)[0]
            raise AuditInputError(
                f"predictions[{site}]",
                f"{len(missing)} labelled images without a prediction and {len(extra)} "
                f"predictions for images not in the validated table (first {first!r})",
                "exactly one prediction per validated image",
                "re-materialize the site's predictions after its ingest",
            )
        expected = model_sha256.get(site) if isinstance(model_sha256, Mapping) else model_sha256
        if expected is not None and len(pred) and set(pred["model_sha256"]) != {expected}:
            raise AuditInputError(
                f"predictions[{site}]",
                f"model_sha256 {sorted(set(pred['model_sha256']))}",
                f"only the audited model {expected}",
                "re-materialize the site's predictions with the audited model",
            )
        frame = pd.DataFrame(
            {
                "site": site,
                "image_id": lab["image_id"].to_numpy(),
                "cluster": (site + "/" + lab["patient_pseudonym"].astype(str)).to_numpy(),
            }
        )
        if site == reference_site:
            keep = (lab["split"] == reference_split).to_numpy()
            frame = frame[keep]
            lab = lab[keep]
            frame["group"] = reference_label(site, reference_split)
        else:
            frame["group"] = site
        for t in targets:
            frame[t] = lab[t].to_numpy(dtype=float)
            frame[SCORE_PREFIX + t] = pred.loc[lab["image_id"], t].to_numpy(dtype=float)
        parts.append(frame)
    out = pd.concat(parts, ignore_index=True)
    if (
        reference_site is not None
        and not (out["group"] == reference_label(reference_site, reference_split)).any()
    ):
        raise AuditInputError(
            "labels",
            f"no {reference_split!r} rows of reference site {reference_site!r}",
            "the vendor's held-out images",
            f"land {reference_site} with test_list.txt (docs/formats.md)",
        )
    return out


def run_site_audit(
    frame: pd.DataFrame,
    *,
    targets: Sequence[str],
    thresholds: Mapping[str, float],
    reference_group: str | None = None,
    config: SiteAuditConfig | None = None,
) -> SiteAudit:
    """Discrimination + calibration per (group, target) and the worst cells vs the reference.

    Parameters
    ----------
    frame : DataFrame
        Output of :func:`scored_frame`.
    targets : sequence of str
        Targets to audit.
    thresholds : mapping
        Operating threshold per target (``score >= threshold`` is positive).
    reference_group : str, optional
        Group name of the reference sample; without one there are no comparisons and no worst
        cells (``worst`` is ``None``).
    config : SiteAuditConfig, optional
        Options.
    """
    config = config or SiteAuditConfig()
    targets = list(targets)
    y = frame[targets]
    s = frame[[SCORE_PREFIX + t for t in targets]].set_axis(targets, axis=1)
    common = {
        "groups": frame["group"].to_numpy(),
        "clusters": frame["cluster"].to_numpy(),
        "targets": targets,
        "n_boot": config.n_boot,
        "ci_level": config.ci_level,
        "min_pos": config.min_pos,
        "min_neg": config.min_neg,
        "seed": config.seed,
    }
    disc = audit_discrimination(
        y,
        s,
        thresholds={t: float(thresholds[t]) for t in targets},
        reference_group=reference_group,
        p_adjust=config.p_adjust,
        **common,
    )
    cal = audit_calibration(y, s, n_bins=config.n_bins, **common)
    worst = worst_cells(disc, cal, config=config.worst) if reference_group is not None else None
    return SiteAudit(disc, cal, worst, reference_group, {t: float(thresholds[t]) for t in targets})


def drift_features(
    labels: Mapping[str, pd.DataFrame],
    predictions: Mapping[str, pd.DataFrame],
    *,
    features: Sequence[str],
    targets: Sequence[str],
    reference_site: str,
    reference_split: str = "test",
) -> dict[str, pd.DataFrame]:
    """Per site: the feature columns plus ``score_<target>`` when the site has predictions.

    The reference site contributes only its ``reference_split`` rows: scores on the images the
    model was trained on are sharper than on any new image and would make every site "drift".
    Sites without rows are left out.
    """
    out = {}
    for site, table in labels.items():
        if site == reference_site:
            table = table[table["split"] == reference_split]
        if table.empty:
            continue
        frame = table[["image_id", *features]]
        if site in predictions:
            scores = predictions[site].set_index("image_id")[list(targets)]
            scores = scores.add_prefix(SCORE_PREFIX).loc[frame["image_id"]].reset_index(drop=True)
            frame = pd.concat([frame.reset_index(drop=True), scores], axis=1)
        out[site] = frame
    return out


def site_drift(
    features: Mapping[str, pd.DataFrame],
    *,
    reference_site: str,
    numeric: Sequence[str],
    categorical: Sequence[str],
    config: DriftConfig | None = None,
) -> pd.DataFrame:
    """Drift of every other site against the reference site's rows (one row per site x feature).

    Parameters
    ----------
    features : mapping
        Site -> table holding the ``numeric`` and ``categorical`` columns.
    reference_site : str
        The reference site (its held-out sample, from :func:`drift_features`, is the reference).
    numeric, categorical : sequence of str
        Feature columns (model scores are numeric features like any other).
    config : DriftConfig, optional
        Thresholds.
    """
    if reference_site not in features:
        raise AuditInputError(
            "features",
            f"sites {sorted(features)}",
            f"a table for the reference site {reference_site!r}",
            "ingest the reference site first",
        )
    cols = [*numeric, *categorical]
    reference = features[reference_site][cols]
    others = [features[s][cols].assign(site=s) for s in sorted(features) if s != reference_site]
    if not others:
        return pd.DataFrame()
    data = pd.concat(others, ignore_index=True)
    return drift_table(
        data,
        reference,
        groups="site",
        numeric=list(numeric),
        categorical=list(categorical),
        config=config,
    )


def drifted_sites(drift: pd.DataFrame) -> dict[str, list[str]]:
    """Site -> features flagged as drifted (``drifted`` true), MMD included as ``__mmd__``."""
    if drift.empty:
        return {}
    flagged = drift[drift["drifted"].astype(bool)]
    return {
        str(g): sorted(map(str, part["feature"])) for g, part in flagged.groupby("group", sort=True)
    }


def mean_auroc_by_group(table: pd.DataFrame) -> pd.Series:
    """Mean AUROC over the targets with status ``"ok"``, per group (NaN when none is ok)."""
    ok = table[table["status"] == "ok"]
    out = ok.groupby("group")["auroc"].mean()
    return out.reindex(sorted(table["group"].unique())).astype(float)
