"""multisite_cxr: label-free estimates of a site whose images landed before their labels, and the
scoring of those estimates once the labels land.

A site is **unlabelled** when none of its validated images has a finding labelled (its batch
landed with an empty ``Finding Labels``; radiologist reads come weeks later as a ``site_reads``
batch, :mod:`.ingest`). For such a site the evidence stage estimates, per finding and without
labels, AUROC, sensitivity / specificity / accuracy at the operating threshold and prevalence
(:func:`clinaudit.audit.label_free_site.estimate_site`: scores recalibrated on the vendor's
held-out reference split, intervals with the calibrator's uncertainty, the EM prior only when
label shift is identified, ATC as a cross-check). A site whose image-quality features drift past
the policy's drift levels gets no estimate ("not estimable: inputs outside the reference"), and
each finding's score support is gated on its own.

The estimates are attached to the signed package (``label_free.csv``) with the model identity
and the batches they describe. When a later audit finds the site labelled, it reads the newest
*verified* package that froze estimates for it (:func:`clinaudit.reporting.prior_packages.
signed_attachments`) and reports estimate vs realised per cell (error, interval coverage) against
the baseline of carrying the reference value forward.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clinaudit.audit.label_free import ESTIMATE_COLUMNS
from clinaudit.audit.label_free_site import SCORE_COLUMNS, estimate_site, score_estimates
from clinaudit.audit.reference_audit import scored_frame
from clinaudit.reporting.prior_packages import signed_attachments
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.studies.image_ingest import labelled_rows

__all__ = [
    "FROZEN_FILE",
    "LABEL_FREE_COLUMNS",
    "SCORED_COLUMNS",
    "LabelFreeResult",
    "image_drift_failures",
    "label_free_evidence",
    "unlabelled_sites",
]

#: Attachment of the signed package holding the frozen estimates.
FROZEN_FILE = "label_free.csv"
LABEL_FREE_COLUMNS: tuple[str, ...] = (
    "site", "finding", *ESTIMATE_COLUMNS, "ci_level", "model_sha256", "batches",
)  # fmt: skip
SCORED_COLUMNS: tuple[str, ...] = ("site", *SCORE_COLUMNS, "frozen_in", "realised_on")
SUMMARY_COLUMNS: tuple[str, ...] = (
    "site", "metric", "cells", "estimable", "mae", "baseline_mae", "ratio", "bias", "coverage",
    "frozen_in",
)  # fmt: skip


def unlabelled_sites(validated: Mapping[str, pd.DataFrame], sites: Sequence[str]) -> list[str]:
    """The sites of ``sites`` with images and not one finding labelled."""
    return [s for s in sites if len(validated[s]) and not labelled_rows(validated[s]).any()]


def image_drift_failures(
    drift: pd.DataFrame, site: str, *, features: Sequence[str], psi_levels: Sequence[str]
) -> dict[str, str]:
    """Image-quality features of ``site`` whose PSI level is one of ``psi_levels`` (the policy's
    drift rule): ``feature -> "PSI 0.41 (major)"``. Any entry withholds the site's estimates."""
    if not len(drift):
        return {}
    rows = drift[
        (drift["group"] == site)
        & drift["feature"].isin(list(features))
        & drift["psi_level"].isin(list(psi_levels))
    ]
    return {
        f"image drift {r.feature}": f"PSI {r.psi:.2f} ({r.psi_level})"
        for r in rows.itertuples(index=False)
    }


@dataclass(frozen=True)
class LabelFreeResult:
    """The label-free tables of one audit and the facts the report prints."""

    estimates: pd.DataFrame
    scored: pd.DataFrame
    summary: pd.DataFrame
    facts: dict[str, Any]


def _batches(table: pd.DataFrame) -> str:
    return ";".join(sorted(map(str, table["batch"].unique())))


def _estimates(
    frames: Mapping[str, pd.DataFrame],
    reference: pd.DataFrame,
    drift: pd.DataFrame,
    *,
    thresholds: Mapping[str, float],
    identity: Mapping[str, str],
    validated: Mapping[str, pd.DataFrame],
    gate: Mapping[str, Any],
    n_boot: int,
    ci_level: float,
    seed: int,
    min_class: int,
) -> pd.DataFrame:
    parts = []
    for site, frame in sorted(frames.items()):
        failed = image_drift_failures(
            drift, site, features=gate["features"], psi_levels=gate["psi_levels"]
        )
        est = estimate_site(
            reference,
            frame,
            findings=FINDINGS,
            thresholds=thresholds,
            drift=failed,
            n_boot=n_boot,
            ci_level=ci_level,
            seed=seed,
            site=site,
            min_class=min_class,
        )
        parts.append(
            est.assign(
                site=site,
                ci_level=ci_level,
                model_sha256=identity[site],
                batches=_batches(validated[site]),
            )
        )
    if not parts:
        return pd.DataFrame(columns=list(LABEL_FREE_COLUMNS))
    return pd.concat(parts, ignore_index=True)[list(LABEL_FREE_COLUMNS)]


def _read_frozen(data: bytes) -> pd.DataFrame | list[str]:
    """The frozen table, or the columns it lacks (a package of another clinaudit version: it
    is named as refused, never read, and never stops the audit)."""
    frame = pd.read_csv(io.BytesIO(data), dtype={"site": str, "batches": str})
    missing = [c for c in LABEL_FREE_COLUMNS if c not in frame.columns]
    if missing:
        return missing
    return frame.assign(batches=frame["batches"].fillna(""))


def _score_site(
    site: str,
    frozen: pd.DataFrame,
    frame: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    thresholds: Mapping[str, float],
    audit_id: str,
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Score one site's frozen estimates on its labelled images: those of the batches the
    estimates described when they are labelled now, else every labelled image of the site."""
    batches = set(str(frozen["batches"].iloc[0]).split(";")) - {""}
    labelled = frame[labelled_rows(frame).to_numpy()]
    same = labelled[labelled["batch"].astype(str).isin(batches)]
    realised_on = "the estimated images" if len(same) else "later labelled images"
    cells, summary = score_estimates(
        frozen, reference, same if len(same) else labelled, thresholds=thresholds
    )
    cells = cells.assign(site=site, frozen_in=audit_id, realised_on=realised_on)
    summary = summary.assign(site=site, frozen_in=audit_id)
    return cells[list(SCORED_COLUMNS)], summary[list(SUMMARY_COLUMNS)], realised_on


def label_free_evidence(
    validated: Mapping[str, pd.DataFrame],
    predictions: Mapping[str, pd.DataFrame],
    *,
    labelled: Sequence[str],
    unlabelled: Sequence[str],
    reference: pd.DataFrame,
    drift: pd.DataFrame,
    thresholds: Mapping[str, float],
    identity: Mapping[str, str],
    gate: Mapping[str, Any],
    reports: Path | None,
    study: str,
    n_boot: int,
    ci_level: float,
    seed: int,
    min_class: int = 10,
) -> LabelFreeResult:
    """Estimates of the unlabelled sites, and the frozen estimates of labelled ones scored.

    Parameters
    ----------
    validated, predictions : mapping
        Site -> validated images / predictions (sites that passed the audit's consistency check).
    labelled, unlabelled : sequence of str
        The audited sites with labels, and those without any.
    reference : DataFrame
        The reference group's scored rows (``score_<finding>`` and the labels).
    drift : DataFrame
        The evidence's drift table (image-quality features per site against the reference).
    thresholds : mapping
        The operating threshold per finding.
    identity : mapping
        Site -> the audited model's identity for the site (frozen with the estimates; a frozen
        estimate of another model is not scored).
    gate : mapping
        ``features`` and ``psi_levels`` of the policy's drift rule (the image-level gate).
    reports : Path or None
        Root of the signed packages (earlier estimates are read only from verified ones).
    study : str
        The study whose packages are read.
    n_boot, ci_level, seed : int, float, int
        Of the estimates.
    min_class : int
        Fewest reference positives and negatives a finding needs to be estimated.
    """
    frames = {
        s: scored_frame(
            {s: validated[s]},
            {s: predictions[s]},
            targets=FINDINGS,
            model_sha256=identity[s],
        ).assign(batch=validated[s]["batch"].to_numpy())
        for s in [*labelled, *unlabelled]
    }
    estimates = _estimates(
        {s: frames[s] for s in unlabelled},
        reference,
        drift,
        thresholds=thresholds,
        identity=identity,
        validated=validated,
        gate=gate,
        n_boot=n_boot,
        ci_level=ci_level,
        seed=seed,
        min_class=min_class,
    )
    found, refused = signed_attachments(reports, study, FROZEN_FILE) if labelled else ([], [])
    cells, summaries = [], []
    scored_from: dict[str, str] = {}
    not_scored: dict[str, str] = {}
    packages: list[tuple[str, pd.DataFrame]] = []  # newest first, each read once
    for att in found:
        frame = _read_frozen(att.data)
        if isinstance(frame, list):
            refused.append(f"{att.audit_id}: {FROZEN_FILE} lacks columns {frame}")
        else:
            packages.append((att.audit_id, frame))
    for site in labelled:
        for audit_id, frame in packages:
            frozen = frame[frame["site"] == site]
            if not len(frozen):
                continue
            if set(frozen["model_sha256"]) != {identity[site]}:
                not_scored[site] = (
                    f"estimates frozen in {audit_id} are of model "
                    f"{str(frozen['model_sha256'].iloc[0])[:12]}, the audited model is "
                    f"{identity[site][:12]}"
                )
                break
            c, s, _ = _score_site(
                site, frozen, frames[site], reference, thresholds=thresholds,
                audit_id=audit_id,
            )  # fmt: skip
            cells.append(c)
            summaries.append(s)
            scored_from[site] = audit_id
            break
    scored = pd.concat(cells, ignore_index=True) if cells else pd.DataFrame(columns=SCORED_COLUMNS)
    summary = (
        pd.concat(summaries, ignore_index=True)
        if summaries
        else pd.DataFrame(columns=SUMMARY_COLUMNS)
    )
    facts = {
        "unlabelled_sites": list(unlabelled),
        "settings": {
            "n_boot": n_boot,
            "ci_level": ci_level,
            "seed": seed,
            "gate_features": list(gate["features"]),
            "gate_psi_levels": list(gate["psi_levels"]),
            "min_class": min_class,
            "reference": "the vendor's held-out reference split",
        },
        "scored_from": scored_from,
        "not_scored": not_scored,
        "packages_refused": refused,
    }
    return LabelFreeResult(estimates, scored, summary, facts)
