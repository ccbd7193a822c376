"""Provisional decisions of sites without labels, from their label-free estimates.

The policy's ``unlabelled_sites`` section says whether label-free estimates may decide at all and
the best decision they may give (never GO). When allowed, a site gets ``max_decision`` (pending
labels) when every critical finding is estimable and its estimated AUROC and sensitivity meet the
policy's criteria (same statistic and floor as for a labelled site); otherwise NO-GO. Calibration
cannot be assessed without labels, so it is always a condition. The table has the columns of the
labelled sites' decisions (:class:`.decisions_schema.DecisionsTable`), kept apart so nothing
downstream mistakes a provisional decision for an audited one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clinaudit.audit.schemas import validate_table

from .decisions_schema import DecisionsTable
from .policy import Policy

__all__ = ["PROVISIONAL_CRITERIA_COLUMNS", "decide_unlabelled"]

PROVISIONAL_CRITERIA_COLUMNS: tuple[str, ...] = (
    "site", "finding", "metric", "statistic", "value", "limit", "passed", "why",
)  # fmt: skip


def _value(estimates: pd.DataFrame, site: str, finding: str, metric: str, stat: str):
    row = estimates[
        (estimates["site"] == site)
        & (estimates["finding"] == finding)
        & (estimates["metric"] == metric)
        & (estimates["method"] == "cbpe")
    ]
    if not len(row):
        return np.nan, "no estimate"
    if not bool(row["estimable"].iloc[0]):
        return np.nan, str(row["reason"].iloc[0])
    return float(row[stat].iloc[0]), ""


def decide_unlabelled(
    policy: Policy, estimates: pd.DataFrame, sites: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Provisional decisions (``DecisionsTable`` columns) and the criteria behind them.

    Parameters
    ----------
    policy : Policy
        Its ``unlabelled_sites`` rule and the AUROC / sensitivity criteria.
    estimates : DataFrame
        The evidence's ``label_free`` table.
    sites : list of str
        The sites without labels.
    """
    rule, c = policy.unlabelled_sites, policy.criteria
    checks = [("auroc", c.auroc), ("sensitivity", c.sensitivity)]
    crit_rows, rows = [], []
    for site in sorted(sites):
        failed: list[str] = []
        n = 0
        for finding in policy.critical_findings:
            withheld = ""
            for metric, k in checks:
                if not k.enabled:
                    continue
                value, why = _value(estimates, site, finding, metric, k.statistic)
                passed = bool(np.isfinite(value) and value >= k.threshold)
                crit_rows.append((site, finding, metric, k.statistic, value, k.threshold,
                                  passed, why))  # fmt: skip
                n += 1
                if why:
                    withheld = why  # the same reason for every metric of the finding
                elif not passed:
                    failed.append(
                        f"estimated {metric} [{finding}]: {k.statistic} {value:.3f} < "
                        f"{k.threshold:.2f}"
                    )
            if withheld:
                failed.append(f"{finding}: {withheld}")
        n_failed = sum(1 for r in crit_rows if r[0] == site and not r[6])
        if not rule.provisional_decision:
            decision = "NO-GO"
            reasons = "PROVISIONAL: no labels yet; this policy allows no decision from label-free "
            reasons += "estimates (shown only)"
        elif failed:
            decision = "NO-GO"
            reasons = "PROVISIONAL (no labels yet): " + "; ".join(failed)
        else:
            decision = rule.max_decision
            reasons = (
                "PROVISIONAL (no labels yet): every critical finding's estimated AUROC and "
                "sensitivity meet the criteria"
            )
        conditions = (
            "pending labels: re-audit when the site's reads land (the estimates are scored "
            "then); calibration not assessed without labels"
            if decision != "NO-GO"
            else ""
        )
        rows.append({
            "site": site, "decision": decision, "reasons": reasons, "conditions": conditions,
            "n_criteria": n, "n_failed_before": n_failed, "n_failed_after": n_failed,
            "policy_id": policy.policy_id, "policy_version": policy.version,
            "policy_sha256": policy.sha256,
        })  # fmt: skip
    table = pd.DataFrame(rows, columns=list(DecisionsTable.to_schema().columns))
    table = table.astype({"n_criteria": int, "n_failed_before": int, "n_failed_after": int})
    criteria = pd.DataFrame(crit_rows, columns=list(PROVISIONAL_CRITERIA_COLUMNS))
    return validate_table(table, DecisionsTable), criteria
