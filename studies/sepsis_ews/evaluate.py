"""The whole ``sepsis_ews`` audit from a validated stays table, its scores and the vendor's card.

>>> result = run_sepsis_audit(stays, predictions, card=model.card)   # doctest: +SKIP
>>> result.recommendation, result.tables()["fairness_gaps"].shape    # doctest: +SKIP

Every statistic comes from the shared core: discrimination (:mod:`.discrimination`), calibration
(:mod:`.calibration`), fairness rates and paired gap intervals (:mod:`.fairness`), alert burden
(:mod:`.burden`), the cross-fitted mitigation of the largest gap (:mod:`.fairness_mitigation`),
drift against the card's training-data summary (:mod:`.sepsis_drift`), the recommendation
(:mod:`.sepsis_decision`) and the monitoring plan (:mod:`.sepsis_monitoring`), all under one
versioned policy (:mod:`.sepsis_policy`). The stays table has no patient identifier, so the
bootstrap resamples stays; the alert burden's exposure of a stay is the time from ICU admission to
the end of its prediction window (``max(window_end_hour, window_hours)`` hours, ``window_hours``
when the end is not recorded).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from .burden import alert_burden
from .calibration import audit_calibration
from .discrimination import audit_discrimination
from .fairness import group_rates
from .sepsis_decision import decide, disadvantaged_groups, run_mitigations
from .sepsis_drift import card_drift
from .sepsis_monitoring import monitoring_plan
from .sepsis_policy import SepsisPolicy, load_sepsis_policy
from .types import AuditInputError

__all__ = ["SepsisAuditResult", "exposure_days", "run_sepsis_audit", "scored_stays"]

TARGET = "sepsis"
OVERALL = ("overall", "all")
#: Model features compared with the card (the stays format's feature columns, in order).
FEATURES: tuple[str, ...] = (
    "heart_rate", "resp_rate", "temperature_c", "sbp", "map", "spo2", "wbc", "lactate",
    "creatinine", "bilirubin", "platelets", "gcs", "age", "comorbidity_index",
)  # fmt: skip
_STAY_COLUMNS = ("stay_id", "hospital", "admit_month", "window_hours", "window_end_hour", TARGET)


@dataclass(frozen=True)
class SepsisAuditResult:
    """Every table of the audit (DataFrames with deterministic rows and columns).

    Attributes
    ----------
    cohort : one row per hospital and ``network``: stays, septic stays, prevalence, months.
    composition : one row per (attribute, group): stays, share, prevalence, the card's share.
    discrimination : one row per (attribute, group) incl. ``overall``/``all`` and ``hospital``:
        AUROC/AUPRC/sensitivity/specificity/PPV/NPV with CIs, DeLong interval, and the difference
        from the vendor's held-out AUROC (row ``vendor_card``) with its interval.
    calibration, reliability : ECE/Brier/slope per (attribute, group), and the bins.
    fairness_rates, fairness_gaps : :class:`~clinaudit.audit.fairness.FairnessResult` tables.
    disadvantaged : per attribute, the group with the lowest TPR and its gaps.
    burden : :func:`~clinaudit.audit.burden.alert_burden` by hospital and attribute.
    drift : :func:`~clinaudit.audit.sepsis_drift.card_drift` (empty in scores-only audits).
    mitigation, mitigation_thresholds, mitigation_effects : before/after of each method, the
        per-group thresholds, and the main method's effect on every attribute's TPR/FPR gaps.
    criteria : the recommendation's criteria before and after the mitigation.
    monitoring : the monitoring plan.
    recommendation : ``GO``, ``CONDITIONAL GO`` or ``NO-GO``; ``reasons``, ``conditions``.
    caveats : legal and ethical caveats of using a protected attribute at run time.
    summary : settings and identities (threshold, model sha256, policy sha256, seed, ...).
    """

    cohort: pd.DataFrame
    composition: pd.DataFrame
    discrimination: pd.DataFrame
    calibration: pd.DataFrame
    reliability: pd.DataFrame
    fairness_rates: pd.DataFrame
    fairness_gaps: pd.DataFrame
    disadvantaged: pd.DataFrame
    burden: pd.DataFrame
    drift: pd.DataFrame
    mitigation: pd.DataFrame
    mitigation_thresholds: pd.DataFrame
    mitigation_effects: pd.DataFrame
    criteria: pd.DataFrame
    monitoring: pd.DataFrame
    recommendation: str
    reasons: tuple[str, ...]
    conditions: tuple[str, ...]
    caveats: tuple[str, ...]
    summary: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every DataFrame by name (sorted), for storage and the audit package."""
        return {k: v for k, v in sorted(vars(self).items()) if isinstance(v, pd.DataFrame)}

    def decision_table(self) -> pd.DataFrame:
        """The non-table fields as one row (lists and the summary as JSON text)."""
        return pd.DataFrame(
            [
                {
                    "recommendation": self.recommendation,
                    "reasons": json.dumps(list(self.reasons)),
                    "conditions": json.dumps(list(self.conditions)),
                    "caveats": json.dumps(list(self.caveats)),
                    "summary": json.dumps(self.summary, sort_keys=True, default=_plain),
                }
            ]
        )

    @classmethod
    def from_tables(
        cls, tables: Mapping[str, pd.DataFrame], decision: pd.DataFrame
    ) -> SepsisAuditResult:
        """Rebuild a result from :meth:`tables` and :meth:`decision_table` (e.g. read back)."""
        names = [f.name for f in fields(cls) if f.type in ("pd.DataFrame", pd.DataFrame)]
        missing = [n for n in names if n not in tables]
        if missing or len(decision) != 1:
            raise AuditInputError(
                "tables", f"missing {missing} or {len(decision)} decision rows",
                f"every table {names} and one decision row",
                "pass SepsisAuditResult.tables() and decision_table()",
            )  # fmt: skip
        row = decision.iloc[0]
        return cls(
            **{n: tables[n] for n in names},
            recommendation=str(row["recommendation"]),
            reasons=tuple(json.loads(row["reasons"])),
            conditions=tuple(json.loads(row["conditions"])),
            caveats=tuple(json.loads(row["caveats"])),
            summary=json.loads(row["summary"]),
        )


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars in the summary."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"summary value {value!r} ({type(value).__name__}) is not JSON-serialisable")


# --------------------------------------------------------------------------- inputs
def scored_stays(stays: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """The stays with their ``score`` (stays order), after checking the two tables match.

    Raises
    ------
    AuditInputError
        A column is missing, stay ids repeat or differ between the tables, a score is not a
        probability, or the predictions come from several models.
    """
    for name, frame, cols in (
        ("stays", stays, _STAY_COLUMNS),
        ("predictions", predictions, ("stay_id", "score", "model_sha256")),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise AuditInputError(
                name, f"a table without {missing}", f"columns {list(cols)}",
                f"pass the validated {name} table (docs/sepsis_formats.md)",
            )  # fmt: skip
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
        "attribute": "vendor_card", "group": "vendor held-out", "status": "ok", "n": n,
        "n_pos": n_pos, "n_neg": n - n_pos, "prevalence": n_pos / n, "auroc": auc,
        "auroc_se_delong": se, "auroc_delong_ci_low": auc - z * se,
        "auroc_delong_ci_high": min(auc + z * se, 1.0),
        "sensitivity": val.get("sensitivity_at_threshold", np.nan),
        "specificity": val.get("specificity_at_threshold", np.nan),
    }  # fmt: skip
    return row, se


def _discrimination(
    frame: pd.DataFrame, threshold: float, card: Mapping[str, Any] | None, opts: dict[str, Any]
) -> pd.DataFrame:
    y, s, ids = frame[TARGET].to_numpy(float), frame["score"].to_numpy(float), frame["stay_id"]
    parts = []
    for attribute, labels in _groupings(frame, opts["attributes"]):
        res = audit_discrimination(
            y, s, groups=labels, clusters=ids, targets=[TARGET], thresholds=threshold,
            n_boot=opts["n_boot"], ci_level=opts["ci_level"], min_pos=opts["min_pos"],
            min_neg=opts["min_neg"], seed=opts["seed"],
        )  # fmt: skip
        parts.append(res.table.assign(attribute=attribute))
    table = pd.concat(parts, ignore_index=True)
    table = table.drop(columns=[c for c in table.columns if c.startswith("delong_") or c in (
        "auroc_diff_vs_reference", "is_reference", "target")])  # fmt: skip
    vendor, se_v = _vendor_row(card, opts["ci_level"])
    z = norm.ppf(0.5 + opts["ci_level"] / 2)
    diff = table["auroc"] - vendor.get("auroc", np.nan)
    se = np.sqrt(table["auroc_se_delong"] ** 2 + se_v**2)
    table["auroc_diff_vs_vendor"] = diff
    table["diff_ci_low"], table["diff_ci_high"] = diff - z * se, diff + z * se
    table["diff_p"] = 2 * norm.sf(np.abs(diff / se))
    if vendor:
        table = pd.concat([table, pd.DataFrame([vendor])], ignore_index=True)
    first = ["attribute", "group"]
    return table[first + [c for c in table.columns if c not in first]]


def _calibration(frame: pd.DataFrame, opts: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    y, s, ids = frame[TARGET].to_numpy(float), frame["score"].to_numpy(float), frame["stay_id"]
    tables, bins = [], []
    for attribute, labels in _groupings(frame, opts["attributes"]):
        res = audit_calibration(
            y, s, groups=labels, clusters=ids, targets=[TARGET], n_bins=opts["n_bins"],
            n_boot=opts["n_boot"], ci_level=opts["ci_level"], min_pos=opts["min_pos"],
            min_neg=opts["min_neg"], seed=opts["seed"],
        )  # fmt: skip
        tables.append(res.table.assign(attribute=attribute))
        bins.append(res.reliability.assign(attribute=attribute))
    cal, rel = pd.concat(tables, ignore_index=True), pd.concat(bins, ignore_index=True)
    first = ["attribute", "group", "target"]
    cal = cal[first + [c for c in cal.columns if c not in first]]
    return cal, rel[first + [c for c in rel.columns if c not in first]]


def _cohort(frame: pd.DataFrame) -> pd.DataFrame:
    def row(name: str, part: pd.DataFrame) -> dict[str, Any]:
        months = part["admit_month"].astype(str)
        return {
            "hospital": name, "n_stays": len(part), "n_sepsis": int(part[TARGET].sum()),
            "prevalence": float(part[TARGET].mean()), "first_month": months.min(),
            "last_month": months.max(), "n_months": int(months.nunique()),
            "window_hours": float(part["window_hours"].median()),
            "age_median": float(part["age"].median()) if "age" in part else np.nan,
            "female_share": float((part["sex"] == "F").mean()) if "sex" in part else np.nan,
        }  # fmt: skip

    rows = [row(str(h), part) for h, part in frame.groupby("hospital", sort=True)]
    return pd.DataFrame([*rows, row("network", frame)])


def _composition(
    frame: pd.DataFrame, attributes: tuple[str, ...], card: Mapping[str, Any] | None
) -> pd.DataFrame:
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
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- entry point
def _threshold(card: Mapping[str, Any] | None, threshold: float | None) -> tuple[float, str]:
    if threshold is not None:
        return float(threshold), "configured"
    if card is None or "operating_threshold" not in card:
        raise AuditInputError(
            "threshold", "None and no model card", "the operating threshold of the scores",
            "pass threshold= the vendor's alert threshold for a scores-only audit",
        )  # fmt: skip
    return float(card["operating_threshold"]), "model card"


def run_sepsis_audit(
    stays: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    card: Mapping[str, Any] | None,
    threshold: float | None = None,
    policy: SepsisPolicy | None = None,
    seed: int = 0,
    n_boot: int | None = None,
) -> SepsisAuditResult:
    """Run the whole sepsis audit.

    Parameters
    ----------
    stays : pandas.DataFrame
        Validated stays (:func:`clinaudit.validation.sepsis_schema.validate_stays`).
    predictions : pandas.DataFrame
        ``stay_id, score, model_sha256``: one probability per stay.
    card : mapping or None, keyword-only
        The vendor model card (operating threshold, held-out validation, training-data summary);
        ``None`` for a scores-only audit (no drift, no vendor comparison).
    threshold : float, optional, keyword-only
        Operating threshold (``score >= threshold`` alerts); default the card's.
    policy : SepsisPolicy, optional, keyword-only
        Default: the shipped policy.
    seed : int, keyword-only
        Seed of every bootstrap, fold split and randomised threshold.
    n_boot : int, optional, keyword-only
        Override the policy's bootstrap replicates (tests use few).

    Returns
    -------
    SepsisAuditResult

    Raises
    ------
    AuditInputError
        On mismatched inputs, a missing threshold, or data the core refuses.
    """
    policy = policy or load_sepsis_policy()
    a = policy.analysis
    thr, thr_source = _threshold(card, threshold)
    frame = scored_stays(stays, predictions)
    missing = [c for c in (*a.attributes, *FEATURES) if c not in frame.columns]
    if missing:
        raise AuditInputError(
            "stays", f"no columns {missing}", "the protected attributes and model features",
            "pass the validated stays table",
        )  # fmt: skip
    opts = {
        "attributes": a.attributes, "n_boot": a.n_boot if n_boot is None else n_boot,
        "ci_level": a.ci_level, "min_pos": a.min_pos, "min_neg": a.min_neg, "n_bins": a.n_bins,
        "seed": seed,
    }  # fmt: skip
    y, s, ids = frame[TARGET].to_numpy(float), frame["score"].to_numpy(float), frame["stay_id"]
    exposure = exposure_days(frame)
    groups = {attr: frame[attr].astype(str).to_numpy() for attr in a.attributes}
    present = {k: g for k, g in a.reference_groups.items() if g in set(groups[k])}
    fairness = group_rates(
        y, s, groups=groups, threshold=thr, clusters=ids,
        intersections="pairs" if a.intersections and len(groups) > 1 else None,
        reference=present, n_boot=opts["n_boot"], ci_level=a.ci_level, seed=seed,
        min_pos=a.min_pos, min_neg=a.min_neg,
    )  # fmt: skip
    burden = alert_burden(
        y, s, thr, exposure_days=exposure, clusters=ids, n_boot=opts["n_boot"],
        groups={"hospital": frame["hospital"].astype(str).to_numpy(), **groups},
        ci_level=a.ci_level, seed=seed,
    )  # fmt: skip
    mitigation = run_mitigations(frame, thr, fairness, exposure, policy, opts)
    discrimination = _discrimination(frame, thr, card, opts)
    calibration, reliability = _calibration(frame, opts)
    td = (card or {}).get("training_data")
    drift = (
        card_drift(
            # age_band is a binning of the feature age: comparing its groups with the whole
            # training population would flag age by construction.
            frame, td, features=FEATURES,
            scopes=("hospital", *(x for x in a.attributes if x != "age_band")),
            psi_moderate=policy.drift.psi_moderate, psi_major=policy.drift.psi_major,
            missing_rate_change=policy.drift.missing_rate_change,
        )
        if td
        else pd.DataFrame()
    )  # fmt: skip
    decision = decide(policy, discrimination, calibration, burden, fairness, mitigation)
    plan = monitoring_plan(
        policy, frame, threshold=thr, decision=decision, drift=drift, mitigation=mitigation,
        discrimination=discrimination, calibration=calibration, fairness=fairness,
    )  # fmt: skip
    summary = {
        "study": policy.study, "n_stays": len(frame),
        "n_hospitals": int(frame["hospital"].nunique()),
        "first_month": str(frame["admit_month"].min()),
        "last_month": str(frame["admit_month"].max()),
        "prevalence": float(y.mean()), "threshold": thr, "threshold_source": thr_source,
        "model_sha256": str(frame["model_sha256"].iloc[0]),
        "simulated": bool(frame["simulated"].astype(bool).any()) if "simulated" in frame else False,
        "policy_id": policy.policy_id, "policy_version": policy.version,
        "policy_sha256": policy.sha256, "seed": seed, "n_boot": opts["n_boot"],
        "ci_level": a.ci_level, "bootstrap_unit": "stay (the stays table has no patient id)",
        "exposure": "ICU admission to the end of the prediction window",
        "references": dict(fairness.reference), "card": card is not None,
        "mitigation_attribute": mitigation.attribute, "mitigation_metric": mitigation.metric,
        "mitigation_method": policy.mitigation.method, "deployed_rule": decision.deployed_rule,
    }  # fmt: skip
    return SepsisAuditResult(
        cohort=_cohort(frame),
        composition=_composition(frame, a.attributes, card),
        discrimination=discrimination,
        calibration=calibration,
        reliability=reliability,
        fairness_rates=fairness.rates,
        fairness_gaps=fairness.gaps,
        disadvantaged=disadvantaged_groups(fairness),
        burden=burden,
        drift=drift,
        mitigation=mitigation.table,
        mitigation_thresholds=mitigation.thresholds,
        mitigation_effects=mitigation.effects,
        criteria=decision.criteria,
        monitoring=plan,
        recommendation=decision.recommendation,
        reasons=decision.reasons,
        conditions=decision.conditions,
        caveats=mitigation.caveats,
        summary=summary,
    )
