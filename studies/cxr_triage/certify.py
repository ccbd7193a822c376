"""The triage evidence of study ``cxr_triage``: calibrate, certify, bucket, check on held-out data.

Input is one scored table (:data:`SCORED_COLUMNS`): every validated study with its split
(``calibration`` and ``test`` are labelled and patient-disjoint from the training data; ``pile``
is the unlabelled backlog), the model's logits, the triage labels, the scope reason and the
subgroup columns. :func:`certify_triage` then, in this order and only on the rows each step may
see:

1. fits the temperature of ``abnormal`` (and of ``critical``, for the reading order) on the
   in-scope calibration studies (``audit/selective.fit_temperature``: ``T > 0`` enforced);
2. certifies the auto-clear threshold on the same rows (Learn-then-Test) and re-certifies it in
   every subgroup of the policy, widening abstention where a subgroup fails;
3. sets the flag threshold (certified PPV);
4. buckets every test and pile study (out-of-scope studies are ``uncertain`` by rule) and orders
   them by the value of a read;
5. checks the rule on the held-out test split: miss rate, normals cleared, flag PPV (exact CIs,
   every test study), and on its in-scope studies: AUROC (clustered bootstrap; unchanged by
   the temperature to 1e-9, which is recorded), and ECE before and after temperature scaling
   (equal-width and equal-mass, bootstrap CIs);
6. states how many labelled studies (radiologist-days) a certificate at the policy's alpha needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.calibration import audit_calibration
from clinaudit.audit.calibration_fit import expit
from clinaudit.audit.discrimination import audit_discrimination
from clinaudit.audit.selective import (
    Certificate,
    FlagRule,
    TemperatureFit,
    assign_buckets,
    certify_clear_threshold,
    fit_temperature,
    flag_threshold,
    temperature_problem,
)
from clinaudit.audit.selective_groups import (
    LabelPlan,
    bucket_outcomes,
    labels_needed,
    recertify_subgroups,
    row_thresholds,
)
from clinaudit.audit.types import AuditInputError

from .labels import reading_priority
from .policy import TriagePolicy

__all__ = ["SCORED_COLUMNS", "SPLITS", "SUBGROUP_COLUMN", "TriageCertification", "certify_triage"]

#: Splits of the scored table: ``train`` is only carried (never used here).
SPLITS: tuple[str, ...] = ("train", "calibration", "test", "pile")
#: Column of each policy subgroup attribute in the scored table.
SUBGROUP_COLUMN: dict[str, str] = {
    "sex": "sex",
    "age_band": "age_band",
    "view": "view_position",
    "site": "site",
}
SCORED_COLUMNS: tuple[str, ...] = (
    "image_id",
    "patient_pseudonym",
    "split",
    "logit_abnormal",
    "logit_critical",
    "abnormal",
    "critical",
    "scope_reason",
    *dict.fromkeys(SUBGROUP_COLUMN.values()),
)


@dataclass(frozen=True)
class TriageCertification:
    """What :func:`certify_triage` found (every table states the settings it used).

    Attributes
    ----------
    temperature, temperature_critical : TemperatureFit or None
        ``None`` when no positive temperature fits (``facts["temperature_not_fitted"]`` says
        why: a finding that fails the audit, not an error); the probabilities are then the
        uncalibrated sigmoid of the logits.
    certificate : Certificate
        The global auto-clear certificate.
    flag : FlagRule
    subgroups : DataFrame
        ``audit.selective_groups.recertify_subgroups``'s table.
    rows : DataFrame
        Every test and pile study: ``image_id, split, p_abnormal, p_critical, clear_below,
        bucket, priority, scope_reason`` (+ ``abnormal``, ``critical``, subgroup columns).
    test_outcomes : DataFrame
        ``bucket_outcomes`` on the labelled test studies.
    discrimination, calibration, reliability : DataFrame
        Test AUROC; ECE / Brier before (``T = 1``) and after temperature scaling, and the
        reliability bins of both.
    label_plan : LabelPlan
    facts : dict
        Settings used and checks made (``auroc_change_from_temperature``, row counts, ...).
    """

    temperature: TemperatureFit | None
    temperature_critical: TemperatureFit | None
    certificate: Certificate
    flag: FlagRule
    subgroups: pd.DataFrame
    rows: pd.DataFrame
    test_outcomes: pd.DataFrame
    discrimination: pd.DataFrame
    calibration: pd.DataFrame
    reliability: pd.DataFrame
    label_plan: LabelPlan
    facts: dict[str, Any]


def _check(scored: pd.DataFrame) -> None:
    missing = [c for c in SCORED_COLUMNS if c not in scored.columns]
    if missing:
        raise AuditInputError(
            "scored", f"no column(s) {missing}", f"columns {list(SCORED_COLUMNS)}", "score first"
        )
    bad = sorted(set(scored["split"].astype(str)) - set(SPLITS))
    if bad:
        raise AuditInputError("scored.split", repr(bad[0]), f"one of {list(SPLITS)}", "re-split")
    for split in ("calibration", "test"):
        rows = scored[(scored["split"] == split) & scored["abnormal"].notna()]
        if rows["abnormal"].nunique() < 2:
            raise AuditInputError(
                "scored",
                f"{len(rows)} labelled {split} studies with {rows['abnormal'].nunique()} class(es)",
                f"normal and abnormal {split} studies",
                "land a labelled development batch with enough patients for both splits",
            )


def _fit(y: pd.Series, z: pd.Series) -> tuple[TemperatureFit | None, str]:
    """The temperature of one head on labelled rows, or why none fits (then ``None``)."""
    labelled = y.notna()
    y, z = y[labelled].to_numpy(float), z[labelled].to_numpy(float)
    if np.unique(y).size < 2:
        return None, f"{len(y)} labelled calibration studies hold one class only"
    problem = temperature_problem(y, z)
    return (None, problem) if problem else (fit_temperature(y, z), "")


def _apply(temp: TemperatureFit | None, logits: pd.Series) -> np.ndarray:
    return temp.apply(logits) if temp else expit(logits.to_numpy(float))


def _calibration(
    test: pd.DataFrame, temp: TemperatureFit | None, policy: TriagePolicy, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    before = "before (T = 1)"
    groups = [before] + ([f"after (T = {temp.temperature:.3f})"] if temp else [])
    both = pd.concat([test.assign(_g=g) for g in groups], ignore_index=True)
    prob = np.where(
        both["_g"] == before, expit(both["logit_abnormal"]), _apply(temp, both["logit_abnormal"])
    )
    cfg = policy.calibration
    res = audit_calibration(
        both["abnormal"].to_numpy(float),
        prob,
        groups=both["_g"],
        clusters=both["patient_pseudonym"],
        targets=["abnormal"],
        n_bins=cfg.n_bins,
        n_boot=cfg.n_boot,
        ci_level=cfg.ci_level,
        seed=seed,
    )
    return res.table, res.reliability


def certify_triage(
    scored: pd.DataFrame, policy: TriagePolicy, *, seed: int = 0
) -> TriageCertification:
    """Calibrate, certify, bucket and check the triage rule (see the module docstring).

    Raises
    ------
    AuditInputError
        On a missing column, an unknown split, or a calibration / test split without both
        classes. A failed certificate is not an error: ``certificate.threshold is None``.
    """
    _check(scored)
    cert_cfg = policy.certificate
    in_scope = scored["scope_reason"].astype(str) == ""
    cal = scored[(scored["split"] == "calibration") & scored["abnormal"].notna() & in_scope]
    temp, temp_note = _fit(cal["abnormal"], cal["logit_abnormal"])
    temp_crit, crit_note = _fit(cal["critical"], cal["logit_critical"])
    p_cal = _apply(temp, cal["logit_abnormal"])
    cert = certify_clear_threshold(
        cal["abnormal"], p_cal, alpha=cert_cfg.alpha, delta=cert_cfg.delta
    )
    flag = flag_threshold(
        cal["abnormal"],
        p_cal,
        ppv=policy.flag.ppv,
        delta=policy.flag.delta,
        min_flagged=policy.flag.min_flagged,
    )
    attrs = {a: SUBGROUP_COLUMN[a] for a in cert_cfg.subgroups}
    subgroups = (
        recertify_subgroups(
            cal["abnormal"],
            p_cal,
            {a: cal[c] for a, c in attrs.items()},
            threshold=cert.threshold,
            alpha=cert_cfg.alpha,
            delta=cert_cfg.delta,
            multiplicity=cert_cfg.subgroup_multiplicity,
        )
        if attrs
        else pd.DataFrame()
    )

    rows = scored[scored["split"].isin(["test", "pile"])].copy()
    rows["p_abnormal"] = _apply(temp, rows["logit_abnormal"])
    rows["p_critical"] = _apply(temp_crit, rows["logit_critical"])
    if attrs:
        rows["clear_below"] = row_thresholds(
            subgroups, {a: rows[c] for a, c in attrs.items()}, threshold=cert.threshold
        )
    else:
        rows["clear_below"] = np.nan if cert.threshold is None else cert.threshold
    rows["bucket"] = assign_buckets(
        rows["p_abnormal"],
        clear_below=rows["clear_below"].to_numpy(float),
        flag_at_or_above=flag.threshold,
        in_scope=(rows["scope_reason"].astype(str) == "").to_numpy(),
    )
    rows["priority"] = reading_priority(
        rows["p_abnormal"], rows["p_critical"], critical_weight=policy.labels.critical_weight
    )

    test_all = rows[(rows["split"] == "test") & rows["abnormal"].notna()]
    # Buckets on every test study (out of scope ones are uncertain by rule); discrimination and
    # calibration on the in-scope ones, the population the temperature was fitted for.
    outcomes = bucket_outcomes(
        test_all["abnormal"], test_all["bucket"], ci_level=policy.calibration.ci_level
    )
    test = test_all[test_all["scope_reason"].astype(str) == ""]
    disc = audit_discrimination(
        test["abnormal"].to_numpy(float),
        test["p_abnormal"].to_numpy(float),
        clusters=test["patient_pseudonym"],
        targets=["abnormal"],
        n_boot=policy.calibration.n_boot,
        ci_level=policy.calibration.ci_level,
        seed=seed,
    ).table
    raw = audit_discrimination(
        test["abnormal"].to_numpy(float), test["logit_abnormal"].to_numpy(float), n_boot=0
    ).table
    calibration, reliability = _calibration(test, temp, policy, seed)
    prevalence = float(cal["abnormal"].mean())
    plan = labels_needed(
        cert_cfg.alpha,
        cert_cfg.delta,
        prevalence=prevalence,
        reads_per_day=policy.workload.reads_per_day,
    )
    facts = {
        "alpha": cert_cfg.alpha,
        "delta": cert_cfg.delta,
        "flag_ppv": policy.flag.ppv,
        "flag_delta": policy.flag.delta,
        "subgroups": list(cert_cfg.subgroups),
        "subgroup_multiplicity": cert_cfg.subgroup_multiplicity,
        "n_boot": policy.calibration.n_boot,
        "ci_level": policy.calibration.ci_level,
        "seed": seed,
        "n_calibration_in_scope": len(cal),
        "n_test": len(test_all),
        "n_test_in_scope": len(test),
        "n_pile": int((rows["split"] == "pile").sum()),
        "out_of_scope": {
            split: int((rows.loc[rows["split"] == split, "scope_reason"] != "").sum())
            for split in ("test", "pile")
        },
        "calibration_prevalence": prevalence,
        "temperature_not_fitted": temp_note,
        "critical_temperature": temp_crit.temperature if temp_crit else None,
        "critical_not_calibrated": crit_note,
        "auroc_change_from_temperature": float(abs(disc["auroc"].iloc[0] - raw["auroc"].iloc[0])),
    }
    return TriageCertification(
        temperature=temp,
        temperature_critical=temp_crit,
        certificate=cert,
        flag=flag,
        subgroups=subgroups,
        rows=rows.reset_index(drop=True),
        test_outcomes=outcomes,
        discrimination=disc,
        calibration=calibration,
        reliability=reliability,
        label_plan=plan,
        facts=facts,
    )
