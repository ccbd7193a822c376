"""What the radiologists' reads of backlog studies say about the certified rule (``cxr_triage``).

The reads land after the audit as reads batches (:mod:`.reads`); the evidence stage re-runs and
checks the *current* rule on them, two ways:

* **Audit sample** (:func:`audit_order`, :func:`backlog_audit`): the evidence stage asks for the
  first ``n`` backlog studies in a keyed-hash order of their image ids (``n`` from the label
  plan). The order does not depend on any label or score, so every prefix is a random sample of
  the backlog, and it is stable as new backlog batches land. The reads with reason
  ``audit_sample`` are bucketed by the current rule and scored by
  :func:`clinaudit.audit.selective_groups.bucket_outcomes` (miss rate of the cleared bucket,
  normals cleared, flag PPV, exact intervals): the certificate checked on the backlog itself.
* **Re-read monitor** (:func:`reread_monitor`): the reads with reason ``reread`` of studies the
  current rule clears, in read-date order (image id within a day: an order fixed before the
  outcomes are known), through :func:`clinaudit.audit.sequential.monitor_stream` at the
  false-omission rate the certificate allows
  (:func:`~clinaudit.studies.cxr_triage.monitoring.null_omission_rate`). Its false-alarm
  probability over the whole stream is at most ``monitoring.level``; an alarm names the read
  date it came on, and the decision falls back to the policy's ``monitoring.fallback`` (FIFO).
  Re-reads of studies the current rule does not clear are counted and not monitored.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.selective_groups import bucket_outcomes
from clinaudit.audit.sequential import monitor_stream

from .certify import TriageCertification
from .monitoring import null_omission_rate
from .policy import TriagePolicy

__all__ = ["MONITOR_COLUMNS", "audit_order", "backlog_audit", "backlog_reads", "reread_monitor"]

MONITOR_COLUMNS: tuple[str, ...] = (
    "status", "null_rate", "level", "n_rereads", "n_not_cleared", "n_monitored", "n_misses",
    "e_value", "max_e_value", "alarm", "alarm_at", "alarm_date", "last_read_date",
)  # fmt: skip
_SALT = "clinaudit/cxr_triage/audit_sample/v1"


def audit_order(sites: Any, image_ids: Any) -> np.ndarray:
    """Rank of every backlog study in the audit-sample order (0 = drawn first).

    The order is the sha256 of a fixed salt, the site and the image id: independent of labels,
    scores and landing order, so any prefix is a random sample of the backlog.

    Examples
    --------
    >>> audit_order(["a", "a", "a"], ["x.png", "y.png", "z.png"]).tolist()
    [0, 2, 1]
    """
    keys = [
        hashlib.sha256(f"{_SALT}/{s}/{i}".encode()).hexdigest()
        for s, i in zip(sites, image_ids, strict=True)
    ]
    rank = np.empty(len(keys), dtype=int)
    rank[np.argsort(np.asarray(keys, dtype=object), kind="stable")] = np.arange(len(keys))
    return rank


def backlog_reads(rows: pd.DataFrame) -> pd.DataFrame:
    """The read backlog studies of the bucketed ``rows`` (``cert.rows``), in monitor order."""
    if "read_reason" not in rows.columns:
        return rows.iloc[:0].assign(read_reason="", read_date="", read_abnormal=np.nan)
    read = rows[(rows["split"] == "pile") & (rows["read_reason"].astype(str) != "")]
    return read.sort_values(["read_date", "site", "image_id"], kind="stable")


def backlog_audit(
    rows: pd.DataFrame, sample: pd.DataFrame, *, ci_level: float
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Outcomes of the current rule on the read audit sample, and how much of it was read.

    ``sample``: the drawn sample (``image_id``, ``site``). Facts: ``n_drawn``, ``n_read``
    (audit-sample reads landed), ``n_read_of_drawn``, ``n_abnormal`` (abnormal among the reads).
    """
    reads = backlog_reads(rows)
    audit = reads[reads["read_reason"] == "audit_sample"]
    drawn = set(zip(sample["site"].astype(str), sample["image_id"].astype(str), strict=True))
    keys = zip(audit["site"].astype(str), audit["image_id"].astype(str), strict=True)
    facts = {
        "n_drawn": len(sample),
        "n_read": len(audit),
        "n_read_of_drawn": int(sum(k in drawn for k in keys)),
        "n_abnormal": int((audit["read_abnormal"] == 1.0).sum()),
    }
    table = bucket_outcomes(audit["read_abnormal"], audit["bucket"], ci_level=ci_level)
    return table, facts


def reread_monitor(
    rows: pd.DataFrame, cert: TriageCertification, policy: TriagePolicy, *, auto_clear: bool
) -> pd.DataFrame:
    """One row (:data:`MONITOR_COLUMNS`): the re-read monitor's state over the landed re-reads.

    ``status`` is ``alarm``, ``no alarm``, ``no re-reads yet`` or ``not running`` (the rule
    clears nothing, or auto-clear is not part of the deployment: ``auto_clear`` false).
    """
    reads = backlog_reads(rows)
    rereads = reads[reads["read_reason"] == "reread"]
    cleared = rereads[rereads["bucket"] == "clear"]
    r0 = null_omission_rate(cert)[0]
    level = policy.monitoring.level
    last = str(rereads["read_date"].max()) if len(rereads) else ""
    base = {
        "null_rate": r0, "level": level, "n_rereads": len(rereads),
        "n_not_cleared": len(rereads) - len(cleared), "n_monitored": len(cleared),
        "n_misses": int((cleared["read_abnormal"] == 1.0).sum()), "e_value": 1.0,
        "max_e_value": 1.0, "alarm": False, "alarm_at": math.nan, "alarm_date": "",
        "last_read_date": last,
    }  # fmt: skip
    if not auto_clear or math.isnan(r0):
        return pd.DataFrame([{**base, "status": "not running"}], columns=list(MONITOR_COLUMNS))
    if not len(cleared):
        return pd.DataFrame([{**base, "status": "no re-reads yet"}], columns=list(MONITOR_COLUMNS))
    outcomes = (cleared["read_abnormal"] == 1.0).to_numpy(float)
    res = monitor_stream(outcomes, null_rate=r0, level=level)
    alarm_date = "" if res.alarm_at is None else str(cleared["read_date"].iloc[res.alarm_at - 1])
    row = {
        **base,
        "status": "alarm" if res.alarm else "no alarm",
        "e_value": res.e_value,
        "max_e_value": res.max_e_value,
        "alarm": res.alarm,
        "alarm_at": math.nan if res.alarm_at is None else res.alarm_at,
        "alarm_date": alarm_date,
    }
    return pd.DataFrame([row], columns=list(MONITOR_COLUMNS))
