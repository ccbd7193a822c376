"""The evidence stage of ``sepsis_ews``: which stays are audited, and the evidence tables.

:func:`audited_stays` chooses the hospitals whose predictions match their validated stays and
the audited model (a hospital with stale, missing or foreign predictions is left out with the
reason, never silently), leaves out every copy of a stay id landed at several hospitals (each
copy a quarantine-like record naming the other places), and joins stays and scores in a fixed
order (hospitals sorted, then batch and line). :func:`evidence` computes, on that table, the
cohort and composition summaries, discrimination, calibration and reliability, fairness rates
and paired gap intervals (:func:`clinaudit.audit.fairness.group_rates`), the disadvantaged group
of each attribute, the alert burden (:func:`clinaudit.audit.burden.alert_burden`) and drift
against the card's training-data summary (:func:`.drift.card_drift`). Every one of these
tables is computed on the *labelled* stays only (:func:`.tables.split_labelled`): a stay whose
``sepsis`` label is empty (its outcome not coded yet) counts in none of them. The unlabelled
months get PROVISIONAL label-free estimates instead (table ``label_free``,
:mod:`.unlabelled_months`), which no later stage reads. Every bootstrap takes the run's seed;
the settings travel with the tables (``facts["settings"]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clinaudit.audit.burden import alert_burden
from clinaudit.audit.fairness import FairnessResult, group_rates
from clinaudit.audit.partitions import UnitWords, usable_partitions
from clinaudit.audit.records import ModelRef, TableSet
from clinaudit.audit.types import AuditInputError
from clinaudit.studies.base import AuditData

from .decisions import disadvantaged_groups
from .drift import card_drift
from .ingest import INGESTED_COLUMNS, duplicate_stays, quarantine_frame, refused_tables
from .label_free_scoring import score_frozen_estimates
from .policy import SepsisPolicy
from .tables import (
    FEATURES,
    TARGET,
    AuditSettings,
    calibration_tables,
    cohort_table,
    composition_table,
    discrimination_table,
    exposure_days,
    scored_stays,
    split_labelled,
    stays_digest,
)
from .unlabelled_months import (
    SUPPORT_MAX_OUTSIDE,
    LabelFreeSettings,
    label_free_table,
    unlabelled_counts,
    unlabelled_months,
)

__all__ = [
    "EVIDENCE_TABLES",
    "AuditedStays",
    "SepsisEvaluateOptions",
    "audit_settings",
    "audited_stays",
    "check_same_stays",
    "cohort_facts",
    "evidence",
    "fairness_from",
    "usable_hospitals",
]

#: The evidence stage's audit tables (the report attaches each as ``tables/<name>.csv``).
EVIDENCE_TABLES: tuple[str, ...] = (
    "burden", "calibration", "cohort", "composition", "disadvantaged", "discrimination", "drift",
    "fairness_gaps", "fairness_rates", "reliability",
)  # fmt: skip


@dataclass(frozen=True)
class SepsisEvaluateOptions:
    """Run configuration of the evidence stage: the bootstrap seed, ``n_boot`` to override
    the policy's replicates (``None``: the policy's), the PSI noise bound of the drift
    against the card (``psi_noise_draws`` parametric-bootstrap draws; a (scope, group) without
    drift gets any PSI level with probability at most ``psi_noise_alpha``), and the septic and
    non-septic stays a hospital needs for its own labelled stays to be the reference of its
    unlabelled months' label-free estimates (else the network's pooled labelled stays). The
    policy file has no key for these, so their defaults live here and the report states the
    values used."""

    seed: int = 0
    n_boot: int | None = None
    psi_noise_draws: int = 2000
    psi_noise_alpha: float = 0.05
    label_free_min_reference_pos: int = 30
    label_free_min_reference_neg: int = 100


@dataclass(frozen=True)
class AuditedStays:
    """The scored stays of the audit and what was left out of it.

    ``frame``: stays with ``score`` and ``model_sha256`` (hospitals sorted, then batch and line;
    every format column, NaN where a hospital left an optional column out); ``left_out``:
    hospital -> why it is not audited; ``excluded``: quarantine-like records of the stays left
    out of audited hospitals (stay ids landed at several hospitals); ``absent_features``:
    audited hospital -> model features its stays table left out (none: not listed).
    """

    frame: pd.DataFrame
    hospitals: tuple[str, ...]
    left_out: Mapping[str, str] = field(default_factory=dict)
    excluded: pd.DataFrame = field(default_factory=quarantine_frame)
    absent_features: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def usable_hospitals(
    validated: Mapping[str, pd.DataFrame],
    predictions: Mapping[str, pd.DataFrame],
    model: ModelRef,
) -> tuple[list[str], dict[str, str]]:
    """Hospitals whose predictions score exactly their validated stays with the audited model,
    and why each other hospital (in either mapping) is left out."""
    return usable_partitions(
        validated,
        predictions,
        id_column="stay_id",
        identity=model.partition_identity,
        words=UnitWords("stay", "score", "hospital"),
    )


def audited_stays(data: AuditData) -> AuditedStays:
    """The scored stays of every usable hospital (see the module docstring).

    Raises
    ------
    AuditInputError
        If no hospital can be audited (each hospital's reason is in the message).
    """
    hospitals, left_out = usable_hospitals(data.validated, data.predictions, data.model)
    for h, why in left_out.items():
        refused = refused_tables(data.quarantine.get(h))
        if refused and not len(data.validated.get(h, ())):
            left_out[h] = f"{why}: its stays table was refused at ingest: {refused}"
    stays = [data.validated[h] for h in hospitals]
    absent = {
        h: tuple(f for f in FEATURES if f not in data.validated[h].columns) for h in hospitals
    }
    joined = pd.concat(stays, ignore_index=True) if stays else pd.DataFrame()
    if len(joined):  # an optional column one hospital left out is NaN for its stays
        joined = joined.reindex(columns=list(INGESTED_COLUMNS))
    excluded = quarantine_frame()
    if len(joined):
        dup, excluded = duplicate_stays(joined, by="hospital")
        for h in hospitals:
            if dup[joined["hospital"].astype(str) == h].all():
                left_out[h] = "every stay id of it was also landed at another hospital"
        joined = joined[~dup].reset_index(drop=True)
        hospitals = [h for h in hospitals if h not in left_out]
    if not hospitals:
        raise AuditInputError(
            "hospitals", f"none usable ({left_out or 'no hospital landed'})",
            "at least one hospital with validated, scored stays",
            "land and validate stays, then run each hospital's predictions",
        )  # fmt: skip
    keep = set(joined["stay_id"].astype(str))
    preds = pd.concat([data.predictions[h] for h in hospitals], ignore_index=True)
    preds = preds[preds["stay_id"].astype(str).isin(keep)]
    # Each hospital's scores carry its own file's sha256 (checked by usable_hospitals); audited
    # together they are the scores of the audited model (a folder: the hash of its files).
    preds = preds.assign(model_sha256=data.model.identity)
    frame = scored_stays(joined.drop(columns=["batch"]), preds)
    absent = {h: absent[h] for h in hospitals if absent[h]}
    return AuditedStays(frame, tuple(hospitals), dict(sorted(left_out.items())), excluded, absent)


def audit_settings(
    policy: SepsisPolicy,
    *,
    threshold: float,
    threshold_source: str,
    options: SepsisEvaluateOptions | None = None,
) -> AuditSettings:
    """The settings of this audit: the policy's analysis section, the run's seed and replicates,
    and the operating threshold (from the model stage)."""
    a, o = policy.analysis, options or SepsisEvaluateOptions()
    n_boot = a.n_boot if o.n_boot is None else int(o.n_boot)
    label_free = LabelFreeSettings(
        n_boot=n_boot,
        ci_level=a.ci_level,
        seed=int(o.seed),
        min_reference_pos=int(o.label_free_min_reference_pos),
        min_reference_neg=int(o.label_free_min_reference_neg),
        psi_action=policy.monitoring.drift_psi_action,
        psi_noise_draws=int(o.psi_noise_draws),
        psi_noise_alpha=float(o.psi_noise_alpha),
        max_outside=SUPPORT_MAX_OUTSIDE,
    )
    return AuditSettings(
        attributes=a.attributes,
        intersections=a.intersections,
        reference_groups=dict(a.reference_groups),
        n_boot=n_boot,
        ci_level=a.ci_level,
        min_pos=a.min_pos,
        min_neg=a.min_neg,
        n_bins=a.n_bins,
        seed=int(o.seed),
        threshold=float(threshold),
        threshold_source=threshold_source,
        extra={
            "psi_moderate": policy.drift.psi_moderate,
            "psi_major": policy.drift.psi_major,
            "missing_rate_change": policy.drift.missing_rate_change,
            "psi_noise_draws": int(o.psi_noise_draws),
            "psi_noise_alpha": float(o.psi_noise_alpha),
            "label_free": label_free.to_facts(),
        },
    )


def _fairness(frame: pd.DataFrame, s: AuditSettings) -> FairnessResult:
    y, sc, ids = frame[TARGET].to_numpy(float), frame["score"].to_numpy(float), frame["stay_id"]
    groups = {attr: frame[attr].astype(str).to_numpy() for attr in s.attributes}
    present = {k: g for k, g in s.reference_groups.items() if g in set(groups[k])}
    return group_rates(
        y, sc, groups=groups, threshold=s.threshold, clusters=ids,
        intersections="pairs" if s.intersections and len(groups) > 1 else None,
        reference=present, n_boot=s.n_boot, ci_level=s.ci_level, seed=s.seed,
        min_pos=s.min_pos, min_neg=s.min_neg,
    )  # fmt: skip


def _drift(
    frame: pd.DataFrame,
    card: Mapping[str, Any] | None,
    s: AuditSettings,
    absent: Mapping[str, tuple[str, ...]],
) -> pd.DataFrame:
    td = (card or {}).get("training_data")
    if not td:
        return pd.DataFrame()
    # A feature some hospital left out has no drift rows (its NaN are not missing values).
    gone = set().union(*absent.values())
    return card_drift(
        # age_band is a binning of the feature age: comparing its groups with the whole training
        # population would flag age by construction.
        frame, td, features=[f for f in FEATURES if f not in gone],
        scopes=("hospital", *(x for x in s.attributes if x != "age_band")),
        psi_moderate=s.extra["psi_moderate"], psi_major=s.extra["psi_major"],
        missing_rate_change=s.extra["missing_rate_change"],
        psi_noise_draws=s.extra["psi_noise_draws"], alpha=s.extra["psi_noise_alpha"], seed=s.seed,
    )  # fmt: skip


def cohort_facts(
    frame: pd.DataFrame, card: Mapping[str, Any] | None, unlabelled: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Network facts of the audited stays (printed in the report's summary): stays, hospitals
    and months of every audited stay (``frame`` labelled, ``unlabelled`` not), the prevalence of
    the labelled ones, and ``n_unlabelled``."""
    y = frame[TARGET].to_numpy(float)
    every = frame if unlabelled is None or not len(unlabelled) else pd.concat([frame, unlabelled])
    return {
        "n_stays": len(every),
        "n_unlabelled": len(every) - len(frame),
        "n_hospitals": int(every["hospital"].nunique()),
        "first_month": str(every["admit_month"].min()),
        "last_month": str(every["admit_month"].max()),
        "prevalence": float(y.mean()),
        "model_sha256": str(frame["model_sha256"].iloc[0]),
        "simulated": bool(frame["simulated"].astype(bool).any()) if "simulated" in frame else False,
        "card": card is not None,
    }


def evidence(
    audited: AuditedStays,
    *,
    card: Mapping[str, Any] | None,
    settings: AuditSettings,
    unmatched_scores: pd.DataFrame | None = None,
    intake: Mapping[str, Any] | None = None,
    reports: Path | None = None,
    study: str = "sepsis_ews",
) -> TableSet:
    """The evidence tables of the audited stays, with the settings and facts behind them.

    Parameters
    ----------
    audited : AuditedStays
        From :func:`audited_stays` (or one stays table, for the core tests).
    card : mapping or None, keyword-only
        The vendor's model card; ``None`` for scores (no drift, no vendor comparison).
    settings : AuditSettings, keyword-only
        From :func:`audit_settings`.
    unmatched_scores : pandas.DataFrame, optional, keyword-only
        Rows of a network-wide scores file that belong to no validated or quarantined stay.
    intake : mapping, optional, keyword-only
        ``rows_quarantined`` and ``scores_set_aside`` (hospital -> count): rows quarantined at
        ingest and the vendor scores set aside as theirs (recorded in ``facts["intake"]`` with
        the audited hospitals' ``absent_features``).
    reports : Path, optional, keyword-only
        Root of the signed packages: the label-free estimates that verified packages of
        ``study`` froze for months labelled now are scored (:mod:`.label_free_scoring`);
        ``None``: nothing is read.
    study : str, keyword-only
        The study whose packages are read.

    Returns
    -------
    TableSet
        :data:`EVIDENCE_TABLES` (of the labelled stays), ``excluded_stays`` and
        ``unmatched_scores`` (records, possibly empty) and ``label_free`` (PROVISIONAL estimates
        of the unlabelled months, :class:`~.unlabelled_months.LabelFreeEstimates`),
        ``label_free_scored`` and ``label_free_summary`` (estimates frozen in an earlier verified
        package, scored now their month is labelled, :mod:`.label_free_scoring`); facts
        ``settings``, ``left_out``, ``hospitals``, ``cohort``, ``references``, ``stays_digest``
        (of the labelled stays), ``threshold``, ``threshold_source``, ``intake`` and
        ``label_free``.

    Raises
    ------
    AuditInputError
        If a column is missing or no stay is labelled.
    """
    frame, unlabelled = split_labelled(audited.frame)
    s = settings
    if frame.empty:
        raise AuditInputError(
            "stays", f"{len(unlabelled)} stays, none with a sepsis label",
            "labelled stays (sepsis 0/1) to audit", "land the stays once their outcome is coded",
        )  # fmt: skip
    missing = [c for c in (*s.attributes, *FEATURES) if c not in frame.columns]
    if missing:
        raise AuditInputError(
            "stays", f"no columns {missing}", "the protected attributes and model features",
            "pass the validated stays table",
        )  # fmt: skip
    y, sc, ids = frame[TARGET].to_numpy(float), frame["score"].to_numpy(float), frame["stay_id"]
    groups = {attr: frame[attr].astype(str).to_numpy() for attr in s.attributes}
    fairness = _fairness(frame, s)
    burden = alert_burden(
        y, sc, s.threshold, exposure_days=exposure_days(frame), clusters=ids, n_boot=s.n_boot,
        groups={"hospital": frame["hospital"].astype(str).to_numpy(), **groups},
        ci_level=s.ci_level, seed=s.seed,
    )  # fmt: skip
    calibration, reliability = calibration_tables(frame, s)
    tables = {
        "burden": burden,
        "calibration": calibration,
        "cohort": cohort_table(frame, unlabelled),
        "composition": composition_table(frame, s.attributes, card),
        "disadvantaged": disadvantaged_groups(fairness),
        "discrimination": discrimination_table(frame, card, s),
        "drift": _drift(frame, card, s, audited.absent_features),
        "fairness_gaps": fairness.gaps,
        "fairness_rates": fairness.rates,
        "reliability": reliability,
        "excluded_stays": audited.excluded,
        "unmatched_scores": quarantine_frame(unmatched_scores),
        "label_free": _label_free(audited, s),
    }
    frozen = score_frozen_estimates(
        audited.frame, reports=reports, study=study, threshold=s.threshold,
        model_sha256=";".join(sorted(set(audited.frame["model_sha256"].astype(str))))
        if "model_sha256" in audited.frame.columns else "",
    )  # fmt: skip
    tables["label_free_scored"] = frozen.scored
    tables["label_free_summary"] = frozen.summary
    excluded = audited.excluded.groupby("site").size() if len(audited.excluded) else {}
    facts = {
        "settings": s.to_facts(),
        "threshold": s.threshold,
        "threshold_source": s.threshold_source,
        "left_out": dict(audited.left_out),
        "hospitals": list(audited.hospitals),
        "excluded_stays": {str(k): int(v) for k, v in dict(excluded).items()},
        "unmatched_scores": int(len(tables["unmatched_scores"])),
        "cohort": cohort_facts(frame, card, unlabelled),
        "references": dict(fairness.reference),
        "stays_digest": stays_digest(frame),
        "intake": {
            "rows_quarantined": dict((intake or {}).get("rows_quarantined", {})),
            "scores_set_aside": dict((intake or {}).get("scores_set_aside", {})),
            "absent_features": {h: list(f) for h, f in audited.absent_features.items()},
        },
        "label_free": {
            "months": unlabelled_months(audited.frame).to_dict("records"),
            "unlabelled_in_labelled_months": unlabelled_counts(audited.frame),
            "frozen": frozen.facts,
        },
    }
    return TableSet(tables, facts)


def _label_free(audited: AuditedStays, s: AuditSettings) -> pd.DataFrame:
    """PROVISIONAL label-free estimates of every unlabelled month (:mod:`.unlabelled_months`)."""
    gone = set().union(*audited.absent_features.values())
    return label_free_table(
        audited.frame, threshold=s.threshold,
        settings=LabelFreeSettings.from_facts(s.extra["label_free"]),
        features=[f for f in FEATURES if f not in gone],
    )  # fmt: skip


def fairness_from(tables: TableSet) -> FairnessResult:
    """The evidence stage's fairness result, read back (no bootstrap replicates)."""
    s = AuditSettings.from_facts(tables.fact("settings"))
    return FairnessResult(
        rates=tables["fairness_rates"],
        gaps=tables["fairness_gaps"],
        reference=dict(tables.fact("references")),
        threshold=s.threshold,
        n_boot=s.n_boot,
        ci_level=s.ci_level,
        seed=s.seed,
        replicates={},
    )


def check_same_stays(frame: pd.DataFrame, tables: TableSet, stage: str) -> None:
    """Refuse to build ``stage`` on other stays than the evidence stage audited.

    Raises
    ------
    AuditInputError
        Naming the stage to re-materialize.
    """
    if stays_digest(frame) != tables.fact("stays_digest"):
        raise AuditInputError(
            stage, f"{len(frame)} stays that differ from the evidence stage's",
            "the stays the evidence stage audited",
            "re-materialize sepsis_ews/evidence first (new data landed since), then this stage",
        )  # fmt: skip
