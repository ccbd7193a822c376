"""The evidence tables of the ``sepsis_ews`` audit, from one scored stays table.

Every statistic comes from the shared core: discrimination (:mod:`clinaudit.audit.discrimination`)
with DeLong intervals and the difference from the vendor card's held-out AUROC, calibration
(:mod:`clinaudit.audit.calibration`), and the cohort and composition summaries; each table is
validated against its schema (:mod:`.tables_schema`) before it is returned. The stays table
has no patient identifier, so every bootstrap resamples stays; the alert burden's exposure of a
stay is the time from ICU admission to the end of its prediction window
(``max(window_end_hour, window_hours)`` hours, ``window_hours`` when the end is not recorded).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from clinaudit.audit.calibration import audit_calibration
from clinaudit.audit.discrimination import audit_discrimination
from clinaudit.audit.schemas import require_columns, schema_columns, validate_table
from clinaudit.audit.types import AuditInputError

from .schema import SepsisStays
from .scores import StayScores
from .tables_schema import (
    VENDOR_ATTRIBUTE,
    CalibrationByAttribute,
    CohortTable,
    CompositionTable,
    DiscriminationByAttribute,
    ReliabilityByAttribute,
)

__all__ = [
    "FEATURES",
    "TARGET",
    "AuditSettings",
    "calibration_tables",
    "cohort_table",
    "composition_table",
    "discrimination_table",
    "exposure_days",
    "scored_stays",
    "split_labelled",
    "stays_digest",
]

TARGET = "sepsis"
OVERALL = ("overall", "all")
#: Model features compared with the card (the stays format's feature columns, in order).
FEATURES: tuple[str, ...] = (
    "heart_rate", "resp_rate", "temperature_c", "sbp", "map", "spo2", "wbc", "lactate",
    "creatinine", "bilirubin", "platelets", "gcs", "age", "comorbidity_index",
)  # fmt: skip
#: The stays columns :func:`scored_stays` and the evidence tables read.
_STAY_COLUMNS = ("stay_id", "hospital", "admit_month", "window_hours", "window_end_hour", TARGET)
#: Columns of the discrimination table (its schema's).
DISCRIMINATION_COLUMNS: tuple[str, ...] = schema_columns(DiscriminationByAttribute)
#: How the intervals resample, and what a stay's exposure is (printed in the report).
BOOTSTRAP_UNIT = "stay (the stays table has no patient id)"
EXPOSURE = "ICU admission to the end of the prediction window"


@dataclass(frozen=True)
class AuditSettings:
    """The settings every number of one audit was computed with (stored in the evidence facts).

    ``threshold``/``threshold_source``: the operating threshold (``score >= threshold`` alerts)
    and where it comes from; ``seed``: of every bootstrap, fold split and randomised threshold;
    the rest from the policy's ``analysis`` section (``n_boot`` possibly overridden by the run).
    """

    attributes: tuple[str, ...]
    intersections: bool
    reference_groups: Mapping[str, str]
    n_boot: int
    ci_level: float
    min_pos: int
    min_neg: int
    n_bins: int
    seed: int
    threshold: float
    threshold_source: str
    bootstrap_unit: str = BOOTSTRAP_UNIT
    exposure: str = EXPOSURE
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_facts(self) -> dict[str, Any]:
        """As JSON-able facts (``AuditSettings.from_facts`` reads them back)."""
        doc = asdict(self)
        doc["attributes"] = list(self.attributes)
        doc["reference_groups"] = dict(self.reference_groups)
        return doc

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> AuditSettings:
        """From :meth:`to_facts` output (e.g. the evidence stage's ``facts["settings"]``)."""
        return cls(**{**facts, "attributes": tuple(facts["attributes"])})


def stays_digest(frame: pd.DataFrame) -> str:
    """sha256 of the audited stay ids in order: later stages check they audit the same stays."""
    return hashlib.sha256("\n".join(frame["stay_id"].astype(str)).encode()).hexdigest()


# --------------------------------------------------------------------------- inputs
def split_labelled(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The labelled stays (``sepsis`` 0/1, as integers) and the unlabelled ones (``sepsis``
    ``<NA>``: the outcome is not coded yet), each in ``frame`` order with a fresh index.

    Every labelled metric of the audit is computed on the first table only.

    >>> f = pd.DataFrame({"stay_id": ["a", "b"], "sepsis": pd.array([1, None], dtype="Int64")})
    >>> [t["stay_id"].tolist() for t in split_labelled(f)], split_labelled(f)[0]["sepsis"].dtype
    ([['a'], ['b']], dtype('int64'))
    """
    known = frame[TARGET].notna().to_numpy()
    labelled = frame[known].reset_index(drop=True)
    labelled[TARGET] = labelled[TARGET].astype("int64")
    return labelled, frame[~known].reset_index(drop=True)


def scored_stays(stays: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """The stays with their ``score`` (stays order), after checking the two tables match.

    Raises
    ------
    AuditInputError
        A column is missing, stay ids repeat or differ between the tables, a score is not a
        probability, or the predictions come from several models.
    """
    for name, frame, schema, cols in (
        ("stays", stays, SepsisStays, _STAY_COLUMNS),
        ("predictions", predictions, StayScores, None),
    ):
        fix = f"pass the validated {name} table (schema {schema.__name__}, docs/sepsis_formats.md)"
        require_columns(name, frame, schema, cols, fix=fix)
    if len(stays) == 0:
        raise AuditInputError("stays", "0 rows", "validated stays", "land and validate stays")
    ids, pred_ids = stays["stay_id"].astype(str), predictions["stay_id"].astype(str)
    for name, values in (("stays", ids), ("predictions", pred_ids)):
        if values.duplicated().any():
            dup = sorted(set(values[values.duplicated()]))[:5]
            raise AuditInputError(
                name, f"repeated stay ids {dup}", "one row per stay", "validate the table first"
            )
    if set(ids) != set(pred_ids):
        only = sorted(set(ids) ^ set(pred_ids))[:5]
        raise AuditInputError(
            "predictions", f"stay ids that differ from the stays table (e.g. {only})",
            "exactly one score per validated stay", "re-run the predictions on these stays",
        )  # fmt: skip
    models = sorted(set(predictions["model_sha256"].astype(str)))
    if len(models) != 1:
        raise AuditInputError(
            "predictions", f"scores of {len(models)} models", "scores of one model",
            "score every stay with the same model package",
        )  # fmt: skip
    score = predictions.set_index(pred_ids)["score"].reindex(ids).to_numpy(dtype=float)
    if not np.all(np.isfinite(score) & (score >= 0) & (score <= 1)):
        raise AuditInputError(
            "predictions", "scores outside [0, 1] or missing", "probabilities in [0, 1]",
            "pass probabilities (not percent, not logits)",
        )  # fmt: skip
    out = stays.reset_index(drop=True).copy()
    out["stay_id"] = ids.to_numpy()
    out["score"] = score
    out["model_sha256"] = models[0]
    return out


def exposure_days(stays: pd.DataFrame) -> np.ndarray:
    """Days each stay is observed by the score: ICU admission to the end of its window.

    ``max(window_end_hour, window_hours) / 24``; ``window_hours / 24`` when the end is blank.

    Examples
    --------
    >>> exposure_days(pd.DataFrame({"window_hours": [6.0, 6.0], "window_end_hour": [48.0, None]}))
    array([2.  , 0.25])
    """
    hours = pd.to_numeric(stays["window_hours"], errors="coerce").to_numpy(dtype=float)
    end = pd.to_numeric(stays["window_end_hour"], errors="coerce").to_numpy(dtype=float)
    return np.fmax(np.where(np.isfinite(end), end, hours), hours) / 24.0


# --------------------------------------------------------------------------- tables
def _groupings(frame: pd.DataFrame, attributes: tuple[str, ...]) -> list[tuple[str, Any]]:
    return [("overall", None), ("hospital", frame["hospital"].astype(str).to_numpy())] + [
        (a, frame[a].astype(str).to_numpy()) for a in attributes
    ]


def _hanley_mcneil(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC from its counts (Hanley and McNeil 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)
    return float(np.sqrt(max(var, 0.0) / (n_pos * n_neg)))


def _vendor_row(card: Mapping[str, Any] | None, ci_level: float) -> tuple[dict[str, Any], float]:
    """The card's held-out AUROC as a reference row, and its standard error (NaN if absent)."""
    val = (card or {}).get("validation") or {}
    if not {"auroc", "n", "n_pos"} <= set(val):
        return {}, np.nan
    n, n_pos, auc = int(val["n"]), int(val["n_pos"]), float(val["auroc"])
    se = _hanley_mcneil(auc, n_pos, n - n_pos)
    z = norm.ppf(0.5 + ci_level / 2)
    row = {
        "attribute": VENDOR_ATTRIBUTE, "group": "vendor held-out", "status": "ok", "n": n,
        "n_pos": n_pos, "n_neg": n - n_pos, "prevalence": n_pos / n, "auroc": auc,
        "auroc_se_delong": se, "auroc_delong_ci_low": auc - z * se,
        "auroc_delong_ci_high": min(auc + z * se, 1.0),
        "sensitivity": val.get("sensitivity_at_threshold", np.nan),
        "specificity": val.get("specificity_at_threshold", np.nan),
    }  # fmt: skip
    return row, se


def discrimination_table(
    frame: pd.DataFrame, card: Mapping[str, Any] | None, opts: AuditSettings
) -> pd.DataFrame:
    """AUROC/AUPRC/sensitivity/specificity/PPV/NPV with CIs and DeLong intervals per group
    (``overall``, ``hospital`` and each attribute), the difference from the card's held-out
    AUROC, and the card's row ``vendor_card`` when the card states its validation
    (:class:`.tables_schema.DiscriminationByAttribute`)."""
    threshold = opts.threshold
    y, s, ids = frame[TARGET].to_numpy(float), frame["score"].to_numpy(float), frame["stay_id"]
    parts = []
    for attribute, labels in _groupings(frame, opts.attributes):
        res = audit_discrimination(
            y, s, groups=labels, clusters=ids, targets=[TARGET], thresholds=threshold,
            n_boot=opts.n_boot, ci_level=opts.ci_level, min_pos=opts.min_pos,
            min_neg=opts.min_neg, seed=opts.seed,
        )  # fmt: skip
        parts.append(res.table.assign(attribute=attribute))
    table = pd.concat(parts, ignore_index=True)
    # The core's columns the study keeps (not the target, not the reference-group comparison).
    table = table.drop(columns=[c for c in table.columns if c not in DISCRIMINATION_COLUMNS])
    vendor, se_v = _vendor_row(card, opts.ci_level)
    z = norm.ppf(0.5 + opts.ci_level / 2)
    diff = table["auroc"] - vendor.get("auroc", np.nan)
    se = np.sqrt(table["auroc_se_delong"] ** 2 + se_v**2)
    table["auroc_diff_vs_vendor"] = diff
    table["diff_ci_low"], table["diff_ci_high"] = diff - z * se, diff + z * se
    table["diff_p"] = 2 * norm.sf(np.abs(diff / se))
    if vendor:
        table = pd.concat([table, pd.DataFrame([vendor])], ignore_index=True)
    first = ["attribute", "group"]
    table = table[first + [c for c in table.columns if c not in first]]
    return validate_table(table, DiscriminationByAttribute)


def calibration_tables(
    frame: pd.DataFrame, opts: AuditSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ECE/Brier/slope per group (``overall``, ``hospital``, each attribute) and the bins
    (:class:`.tables_schema.CalibrationByAttribute`,
    :class:`.tables_schema.ReliabilityByAttribute`)."""
    y, s, ids = frame[TARGET].to_numpy(float), frame["score"].to_numpy(float), frame["stay_id"]
    tables, bins = [], []
    for attribute, labels in _groupings(frame, opts.attributes):
        res = audit_calibration(
            y, s, groups=labels, clusters=ids, targets=[TARGET], n_bins=opts.n_bins,
            n_boot=opts.n_boot, ci_level=opts.ci_level, min_pos=opts.min_pos,
            min_neg=opts.min_neg, seed=opts.seed,
        )  # fmt: skip
        tables.append(res.table.assign(attribute=attribute))
        bins.append(res.reliability.assign(attribute=attribute))
    # A grouping without a sufficient cell has no bins: its empty (untyped) table must not turn
    # the integer columns of the others into objects.
    bins = [b for b in bins if len(b)] or bins
    cal, rel = pd.concat(tables, ignore_index=True), pd.concat(bins, ignore_index=True)
    first = ["attribute", "group", "target"]
    cal = cal[first + [c for c in cal.columns if c not in first]]
    rel = rel[first + [c for c in rel.columns if c not in first]]
    return validate_table(cal, CalibrationByAttribute), validate_table(rel, ReliabilityByAttribute)


def cohort_table(frame: pd.DataFrame, unlabelled: pd.DataFrame | None = None) -> pd.DataFrame:
    """The audited stays per hospital and in the network (:class:`.tables_schema.CohortTable`).

    ``frame``: the labelled stays; ``unlabelled``: the audited stays without a sepsis label. Stays,
    months, windows, age and sex describe every audited stay; septic stays and the prevalence
    only the labelled ones (NaN for a hospital without any)."""
    every = frame if unlabelled is None or not len(unlabelled) else pd.concat([frame, unlabelled])

    def row(name: str, part: pd.DataFrame) -> dict[str, Any]:
        months = part["admit_month"].astype(str)
        y = part[TARGET].dropna()
        return {
            "hospital": name, "n_stays": len(part), "n_sepsis": int(y.sum()),
            "prevalence": float(y.mean()) if len(y) else np.nan, "first_month": months.min(),
            "last_month": months.max(), "n_months": int(months.nunique()),
            "window_hours": float(part["window_hours"].median()),
            "age_median": float(part["age"].median()) if "age" in part else np.nan,
            "female_share": float((part["sex"] == "F").mean()) if "sex" in part else np.nan,
        }  # fmt: skip

    rows = [row(str(h), part) for h, part in every.groupby("hospital", sort=True)]
    return validate_table(pd.DataFrame([*rows, row("network", every)]), CohortTable)


def composition_table(
    frame: pd.DataFrame, attributes: tuple[str, ...], card: Mapping[str, Any] | None
) -> pd.DataFrame:
    """Each group's stays here and share in the card's training data
    (:class:`.tables_schema.CompositionTable`)."""
    td = (card or {}).get("training_data") or {}
    shares, prevalence = td.get("groups") or {}, td.get("prevalence_by_group") or {}
    rows = []
    for a in attributes:
        for g, part in frame.groupby(frame[a].astype(str), sort=True):
            rows.append({
                "attribute": a, "group": g, "n_stays": len(part), "share": len(part) / len(frame),
                "n_sepsis": int(part[TARGET].sum()), "prevalence": float(part[TARGET].mean()),
                "card_share": float((shares.get(a) or {}).get(g, 0.0)) if shares else np.nan,
                "card_prevalence": float((prevalence.get(a) or {}).get(g, np.nan)),
            })  # fmt: skip
    return validate_table(pd.DataFrame(rows), CompositionTable)
