"""Per-site deployment decisions (GO / CONDITIONAL GO / NO-GO) under a versioned policy.

Every (site, critical finding) criterion of the policy is evaluated on the audit tables
(``cxr_metrics``, ``cxr_calibration``, ``cxr_drift``) before any mitigation and, where the policy
allows it, after site recalibration (``cxr_recalibration``, cross-fitted). Per finding the
deployed configuration is either the raw score (when all its criteria pass) or the recalibrated
score with the site threshold; in the latter case every recalibratable criterion of the finding
(ECE, sensitivity) is judged on the recalibrated numbers. AUROC is not changed by a monotone
recalibration and cannot be rescued by it. A re-trained model is evidence only unless the policy
sets ``retrained_model_counts: true``.

In the criteria table ``value`` / ``value_after`` are the numbers compared with ``limit`` (for
AUROC with ``statistic: ci_low`` the lower CI bound), ``estimate`` is the point estimate and
``ci_low`` / ``ci_high`` its interval; drift rows (``blocking`` false) never block by themselves.

Decision rule (see :meth:`~clinaudit.studies.multisite_cxr.policy.Policy.describe`): NO-GO when
a blocking criterion fails after the allowed mitigations; CONDITIONAL GO when a mitigation was
needed or input drift is flagged (drift caps the decision at ``drift.max_decision``); GO
otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.calibration import CalibrationTable
from clinaudit.audit.discrimination import DiscriminationTable
from clinaudit.audit.drift import DriftTable
from clinaudit.audit.policy_base import Criterion
from clinaudit.audit.recalibration import RecalibrationContract
from clinaudit.audit.schemas import require_columns, schema_columns, validate_table
from clinaudit.audit.types import STATUS_OK, AuditInputError
from clinaudit.models.finetune_guard import RetrainingContract

from .decision_rules import LABELS, ci_text, conditions, decide, fmt
from .decisions_schema import (
    CRITERION_ORDER,
    MITIGATION_RECALIBRATION,
    MITIGATION_RETRAINING,
    CriteriaTable,
    DecisionsTable,
)
from .policy import SITE_RECALIBRATION, Policy

#: Column order of the tables (their schemas').
DECISION_COLUMNS: tuple[str, ...] = schema_columns(DecisionsTable)
CRITERIA_COLUMNS: tuple[str, ...] = schema_columns(CriteriaTable)
MMD_FEATURE = "__mmd__"
_STAT_COLUMN = {"ci_low": "_ci_low", "ci_high": "_ci_high", "estimate": ""}


@dataclass(frozen=True)
class Decisions:
    """Per-site decisions and the criteria behind them.

    Attributes
    ----------
    table : DataFrame
        One row per site (:class:`DecisionsTable`), sorted by site.
    criteria : DataFrame
        One row per (site, criterion, finding) (:class:`CriteriaTable`).
    reference : DataFrame
        The reference self-check: the blocking criteria evaluated on the reference group before
        mitigation (:class:`CriteriaTable` columns; empty without a reference group).
    """

    table: pd.DataFrame
    criteria: pd.DataFrame
    reference: pd.DataFrame

    def decision(self, site: str) -> str:
        """The decision of ``site``."""
        row = self.table[self.table["site"] == site]
        if row.empty:
            raise AuditInputError(
                "site", repr(site), f"one of {self.table['site'].tolist()}", "pass a decided site"
            )
        return str(row["decision"].iloc[0])


# ---------------------------------------------------------------- input tables


def _index(name: str, frame: pd.DataFrame, keys: Sequence[str]) -> dict[tuple[str, ...], Any]:
    """Rows of ``frame`` keyed by ``keys``; duplicate keys are an error."""
    out: dict[tuple[str, ...], Any] = {}
    for row in frame.itertuples(index=False):
        key = tuple(str(getattr(row, k)) for k in keys)
        if key in out:
            raise AuditInputError(
                name, f"two rows for {dict(zip(keys, key, strict=True))}", "one row per key",
                f"deduplicate the {name} table",
            )  # fmt: skip
        out[key] = row
    return out


def _cell(name: str, rows: dict[tuple[str, ...], Any], site: str, finding: str) -> Any:
    row = rows.get((site, finding))
    if row is None:
        raise AuditInputError(
            name,
            f"no row for group {site!r}, target {finding!r}",
            "one row per (group, target) for every decided site and critical finding",
            f"audit {finding!r} at {site!r}, or remove it from the policy's critical_findings",
        )
    return row


def _metric_columns(prefix: str) -> list[str]:
    return [prefix, f"{prefix}_ci_low", f"{prefix}_ci_high"]


def _check_inputs(policy: Policy, tables: dict[str, pd.DataFrame | None]) -> bool:
    """Check that every table the policy needs has the columns read from it (columns of its
    producer's schema); return whether site recalibration is used."""
    c = policy.criteria
    key = ["group", "target", "status"]
    metric_cols = key + (_metric_columns("auroc") if c.auroc.enabled else [])
    metric_cols += _metric_columns("sensitivity") if c.sensitivity.enabled else []
    why = "discrimination / sensitivity criteria"
    require_columns("metrics", tables["metrics"], DiscriminationTable, metric_cols, why=why)
    if c.ece.enabled:
        cols, why = [*key, *_metric_columns("ece_width")], "the ECE criterion"
        require_columns("calibration", tables["calibration"], CalibrationTable, cols, why=why)
    cols = ["group", "feature", "psi", "psi_level", "significant"]
    require_columns("drift", tables["drift"], DriftTable, cols, why="the input drift rule")
    recal = policy.allows(SITE_RECALIBRATION) and (c.ece.enabled or c.sensitivity.enabled)
    if recal:
        cols = key + _metric_columns("ece_after") + _metric_columns("sensitivity_site_threshold")
        why = "the policy allows site_recalibration (or remove it from allowed_mitigations)"
        recalibration = tables["recalibration"]
        require_columns("recalibration", recalibration, RecalibrationContract, cols, why=why)
    if policy.retrained_model_counts or tables["retraining"] is not None:
        cols = [*key, "split", *_metric_columns("auroc_after")]
        why = "policy retrained_model_counts / evidence"
        require_columns("retraining", tables["retraining"], RetrainingContract, cols, why=why)
    return recal


# ---------------------------------------------------------------- criterion rows


def _passes(value: float, limit: float, comparator: str) -> bool:
    if not np.isfinite(value):
        return False
    return bool(value >= limit) if comparator == ">=" else bool(value <= limit)


def _threshold_row(
    site: str, key: str, finding: str, crit: Criterion, row: Any, prefix: str
) -> dict[str, Any]:
    estimate, low, high = (float(getattr(row, c)) for c in _metric_columns(prefix))
    value = float(getattr(row, prefix + _STAT_COLUMN[crit.statistic]))
    comparator = "<=" if key == "ece" else ">="
    passed = _passes(value, crit.threshold, comparator)
    return {
        "site": site, "criterion": key, "finding": finding, "value": value, "ci_low": low,
        "ci_high": high, "limit": crit.threshold, "comparator": comparator,
        "passed_before": passed, "value_after": value, "passed_after": passed, "mitigation": "",
        "evidence": f"{LABELS[key]} {ci_text(estimate, low, high)}", "blocking": True,
        "estimate": estimate,
    }  # fmt: skip


def _sufficiency_row(site: str, finding: str, m: Any, c: Any | None) -> dict[str, Any]:
    statuses = {"metrics": str(m.status)} | ({} if c is None else {"calibration": str(c.status)})
    ok = all(s == STATUS_OK for s in statuses.values())
    counts = ""
    if hasattr(m, "n_pos") and hasattr(m, "n_neg"):
        counts = f" ({int(m.n_pos)} positives, {int(m.n_neg)} negatives)"
    evidence = ", ".join(f"{k} status {v!r}" for k, v in statuses.items()) + counts
    return {
        "site": site, "criterion": "data_sufficiency", "finding": finding,
        "value": float(ok), "ci_low": np.nan, "ci_high": np.nan, "limit": 1.0,
        "comparator": "==", "passed_before": ok, "value_after": float(ok), "passed_after": ok,
        "mitigation": "", "evidence": evidence, "blocking": True, "estimate": float(ok),
    }  # fmt: skip


def _apply_recalibration(rows: list[dict[str, Any]], recal: Any, policy: Policy) -> None:
    """Judge the finding's ECE / sensitivity rows on the recalibrated numbers (in place)."""
    usable = str(recal.status) == STATUS_OK
    method = getattr(recal, "method", None)
    for row in rows:
        key = row["criterion"]
        if key not in ("ece", "sensitivity"):
            continue
        crit: Criterion = getattr(policy.criteria, key)
        prefix = "ece_after" if key == "ece" else "sensitivity_site_threshold"
        row["mitigation"] = MITIGATION_RECALIBRATION
        if not usable:
            row["value_after"], row["passed_after"] = np.nan, False
            row["evidence"] += f"; site recalibration not available (status {recal.status!r})"
            continue
        est, low, high = (float(getattr(recal, c)) for c in _metric_columns(prefix))
        row["value_after"] = float(getattr(recal, prefix + _STAT_COLUMN[crit.statistic]))
        row["passed_after"] = _passes(row["value_after"], row["limit"], row["comparator"])
        where = f"{method}, cross-fitted" if method else "cross-fitted"
        raw = float(getattr(recal, "site_threshold_raw", np.nan))
        if key == "sensitivity" and np.isfinite(raw):
            where += f", site threshold {raw:.3g} on the raw score"
        row["evidence"] += f"; after site recalibration ({where}): {ci_text(est, low, high)}"


def _retraining_evidence(row: dict[str, Any], retrained: list[Any], policy: Policy) -> None:
    """Add the re-trained model's AUROC to the AUROC row; rescue only when the policy says so."""
    crit = policy.criteria.auroc
    for r in retrained:
        if str(r.status) != STATUS_OK:
            continue
        ci = ci_text(
            float(r.auroc_after), float(r.auroc_after_ci_low), float(r.auroc_after_ci_high)
        )
        counts = policy.retrained_model_counts and str(r.split) == "test"
        note = "counted" if counts else "evidence only: a new model version needs its own approval"
        row["evidence"] += f"; re-trained model AUROC on split {r.split!r} {ci} ({note})"
        if counts and not row["passed_before"]:
            row["value_after"] = float(getattr(r, "auroc_after" + _STAT_COLUMN[crit.statistic]))
            row["passed_after"] = _passes(row["value_after"], row["limit"], ">=")
            row["mitigation"] = MITIGATION_RETRAINING


def _finding_rows(site: str, finding: str, policy: Policy, idx: dict[str, Any]) -> list[dict]:
    c = policy.criteria
    m = _cell("metrics", idx["metrics"], site, finding)
    cal = _cell("calibration", idx["calibration"], site, finding) if c.ece.enabled else None
    rows = [_sufficiency_row(site, finding, m, cal)]
    sufficient = rows[0]["passed_before"]
    if sufficient or not c.data_sufficiency:
        if c.auroc.enabled:
            rows.append(_threshold_row(site, "auroc", finding, c.auroc, m, "auroc"))
        if c.ece.enabled:
            rows.append(_threshold_row(site, "ece", finding, c.ece, cal, "ece_width"))
        if c.sensitivity.enabled:
            rows.append(
                _threshold_row(site, "sensitivity", finding, c.sensitivity, m, "sensitivity")
            )
    if not c.data_sufficiency:
        rows = rows[1:]
    if idx["recalibration"] is not None and any(
        not r["passed_before"] for r in rows if r["criterion"] in ("ece", "sensitivity")
    ):
        _apply_recalibration(
            rows, _cell("recalibration", idx["recalibration"], site, finding), policy
        )
    if idx["retraining"] is not None:
        for row in (r for r in rows if r["criterion"] == "auroc"):
            _retraining_evidence(row, idx["retraining"].get((site, finding), []), policy)
    return rows


def _drift_rows(site: str, policy: Policy, drift: pd.DataFrame) -> list[dict[str, Any]]:
    rule = policy.drift
    part = drift[drift["group"].astype(str) == site]
    missing = sorted(set(rule.features) - set(part["feature"].astype(str)))
    if rule.mmd and MMD_FEATURE not in set(part["feature"].astype(str)):
        missing.append(MMD_FEATURE)
    if missing:
        raise AuditInputError(
            "drift",
            f"no drift rows for site {site!r}, features {missing}",
            "a row per feature named in the policy's drift.features (and '__mmd__' if drift.mmd)",
            "run the drift audit for this site, or remove the features from drift.features",
        )
    feats = part[part["feature"].isin(rule.features)]
    flagged = feats[feats["psi_level"].isin(rule.psi_levels)].sort_values(
        ["psi", "feature"], ascending=[False, True]
    )
    shown = [
        f"{f} {fmt(float(p))}" for f, p in zip(flagged["feature"], flagged["psi"], strict=True)
    ]
    evidence = "PSI " + "/".join(rule.psi_levels) + ": " + (", ".join(shown) if shown else "none")
    n = float(len(flagged))
    rows = [_site_row(site, "drift_psi", n, 0.0, "<=", evidence)]
    if rule.mmd:
        mmd = part[part["feature"] == MMD_FEATURE].iloc[0]
        significant = bool(mmd["significant"])
        p = mmd["p_adj"] if "p_adj" in mmd.index else mmd.get("p_value", np.nan)
        evidence = f"MMD permutation test adjusted p {float(p):.3g}"
        evidence += " (significant)" if significant else " (not significant)"
        rows.append(_site_row(site, "drift_mmd", float(significant), 0.0, "==", evidence))
    return rows


def _site_row(
    site: str, key: str, value: float, limit: float, comparator: str, evidence: str
) -> dict[str, Any]:
    passed = value <= limit if comparator == "<=" else value == limit
    return {
        "site": site, "criterion": key, "finding": "", "value": value, "ci_low": np.nan,
        "ci_high": np.nan, "limit": limit, "comparator": comparator, "passed_before": passed,
        "value_after": value, "passed_after": passed, "mitigation": "", "evidence": evidence,
        "blocking": False, "estimate": value, "fails_at_reference": False,
    }  # fmt: skip


def _grouped(frame: pd.DataFrame) -> dict[tuple[str, str], list[Any]]:
    out: dict[tuple[str, str], list[Any]] = {}
    for row in frame.sort_values(["group", "target", "split"]).itertuples(index=False):
        out.setdefault((str(row.group), str(row.target)), []).append(row)
    return out


def _check_sites(sites: Sequence[str], metrics: pd.DataFrame) -> list[str]:
    names = [str(s) for s in sites] if not isinstance(sites, str) else []
    if not names or len(set(names)) != len(names):
        raise AuditInputError(
            "sites", repr(sites), "a non-empty sequence of distinct site names",
            "pass sites=[...] (e.g. every audited site except the reference group)",
        )  # fmt: skip
    unknown = sorted(set(names) - set(metrics["group"].astype(str)))
    if unknown:
        raise AuditInputError(
            "sites", f"{unknown}", f"groups of the metrics table {sorted(set(metrics['group']))}",
            "decide only audited sites",
        )  # fmt: skip
    return sorted(names)


def decide_sites(
    policy: Policy,
    *,
    metrics: pd.DataFrame,
    calibration: pd.DataFrame | None,
    recalibration: pd.DataFrame | None,
    drift: pd.DataFrame | None,
    retraining: pd.DataFrame | None = None,
    sites: Sequence[str],
    reference: str | None = None,
    derived_thresholds: bool = False,
) -> Decisions:
    """Decide GO / CONDITIONAL GO / NO-GO for each site under ``policy``.

    Parameters
    ----------
    policy : Policy
        The study's policy (``MultisiteCxr().load_policy()``).
    metrics : DataFrame
        Discrimination table (``group``, ``target``, ``status``, ``auroc`` + CI,
        ``sensitivity`` + CI, optionally ``n_pos``/``n_neg``).
    calibration : DataFrame or None
        Calibration table (``group``, ``target``, ``status``, ``ece_width`` + CI); needed when the
        ECE criterion is enabled.
    recalibration : DataFrame or None
        Site recalibration table (``ece_after`` + CI, ``sensitivity_site_threshold`` + CI, ...);
        needed when the policy allows ``site_recalibration``.
    drift : DataFrame
        Drift table (``group``, ``feature``, ``psi``, ``psi_level``, ``significant``; MMD row
        ``feature == "__mmd__"``).
    retraining : DataFrame, optional
        Focused re-training table; shown as evidence on the AUROC rows (and used as the value
        after mitigation only when ``policy.retrained_model_counts``).
    sites : sequence of str
        Sites to decide (groups of ``metrics``; not the reference group).
    reference : str, optional
        The reference group of ``metrics`` (e.g. ``"vendor_dev:test"``): its blocking criteria
        are evaluated too (before mitigation; :attr:`Decisions.reference`), and a site criterion
        that also fails there is marked ``fails_at_reference`` and said so in the reasons.
    derived_thresholds : bool
        The operating thresholds were derived by the audit (vendor scores without the vendor's):
        sensitivity criteria say "at the derived threshold" in the reasons and evidence.

    Returns
    -------
    Decisions
        ``table`` (one row per site) and ``criteria`` (one row per criterion), sorted by site.

    Raises
    ------
    AuditInputError
        If a table needed by an enabled criterion is missing, lacks columns, has duplicate or
        missing (group, target) rows, or a site is unknown.

    Examples
    --------
    >>> from .policy import load_policy
    >>> d = decide_sites(load_policy(), metrics=m, calibration=c, recalibration=r,
    ...                  drift=dr, sites=["site_a"])  # doctest: +SKIP
    >>> d.table[["site", "decision"]]  # doctest: +SKIP
    """
    tables = {"metrics": metrics, "calibration": calibration, "recalibration": recalibration,
              "drift": drift, "retraining": retraining}  # fmt: skip
    use_recal = _check_inputs(policy, tables)
    keys = ["group", "target"]
    idx = {
        "metrics": _index("metrics", metrics, keys),
        "calibration": _index("calibration", calibration, keys)
        if policy.criteria.ece.enabled
        else None,
        "recalibration": _index("recalibration", recalibration, keys) if use_recal else None,
        "retraining": None if retraining is None else _grouped(retraining),
    }
    ref_rows = _reference_rows(reference, policy, idx, metrics)
    ref_failed = {(r["criterion"], r["finding"]) for r in ref_rows if r["fails_at_reference"]}
    tag = " (at the derived threshold)" if derived_thresholds else ""
    all_rows, decisions = [], []
    for site in _check_sites(sites, metrics):
        rows = [
            r for f in sorted(policy.critical_findings) for r in _finding_rows(site, f, policy, idx)
        ]
        for r in rows:
            r["fails_at_reference"] = (r["criterion"], r["finding"]) in ref_failed
            r["threshold_tag"] = tag
            if tag and r["criterion"] == "sensitivity":
                r["evidence"] += "; at the threshold derived on the reference (not the vendor's)"
        rows += _drift_rows(site, policy, drift)
        rows.sort(key=lambda r: (CRITERION_ORDER.index(r["criterion"]), r["finding"]))
        decision, reasons = decide(rows, policy)
        decisions.append({
            "site": site, "decision": decision, "reasons": reasons,
            "conditions": conditions(decision, rows, policy), "n_criteria": len(rows),
            "n_failed_before": sum(not r["passed_before"] for r in rows),
            "n_failed_after": sum(not r["passed_after"] for r in rows),
            "policy_id": policy.policy_id, "policy_version": policy.version,
            "policy_sha256": policy.sha256,
        })  # fmt: skip
        all_rows += rows
    table = pd.DataFrame(decisions, columns=list(DECISION_COLUMNS))
    criteria = _criteria_frame(all_rows)
    validate_table(table, DecisionsTable)
    return Decisions(table=table, criteria=criteria, reference=_criteria_frame(ref_rows))


def _criteria_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(CRITERIA_COLUMNS))
    flags = {"passed_before": bool, "passed_after": bool, "fails_at_reference": bool}
    return validate_table(frame.astype(flags), CriteriaTable)


def _reference_rows(
    reference: str | None, policy: Policy, idx: dict[str, Any], metrics: pd.DataFrame
) -> list[dict[str, Any]]:
    """The reference self-check: blocking criteria of the reference group, before mitigation
    (``fails_at_reference`` = failed there); none when there is no reference group."""
    if reference is None or reference not in set(metrics["group"].astype(str)):
        return []
    plain = {**idx, "recalibration": None, "retraining": None}
    rows = [
        r
        for f in sorted(policy.critical_findings)
        for r in _finding_rows(reference, f, policy, plain)
    ]
    for r in rows:
        r["fails_at_reference"] = bool(r["blocking"] and not r["passed_before"])
    return rows
