"""The go / no-go of study ``cxr_triage`` under its policy.

Criteria (``criteria`` table, one row each, the statistic and threshold the policy names):

* safety: ``temperature`` (a positive temperature fits the logits), ``certified`` (an
  auto-clear threshold was certified), ``test_miss_rate`` (miss rate of
  the cleared bucket on the held-out test split), ``auroc`` and ``ece`` (after temperature
  scaling, on the test split);
* benefit: ``normals_cleared`` (share of normal test studies the rule clears);
* backlog (once reads land, :mod:`.backlog`): ``backlog_miss_rate`` (miss rate of the cleared
  bucket on the read audit sample of the backlog; *pending*, not failed, while no abnormal
  audit-sample read has landed) is a safety criterion; the re-read monitor is not a criterion
  but a switch (below).

Decision (one row, the deployment of the triage rule in the reporting queue):

* NO-GO when no positive temperature fits, or AUROC or ECE fails: the scores are not good
  enough even to order the queue;
* CONDITIONAL GO, *priority ordering only*, when ordering is sound but auto-clear is not: no
  certificate, the held-out miss rate fails, or too few normals are cleared to be worth it;
* GO, *priority + auto-clear*, when every enabled criterion passes. Subgroups whose certificate
  failed keep auto-clear off (or a lower threshold) and are listed as conditions;
* the automatic fallback: when the re-read monitor has raised its alarm, a GO becomes
  CONDITIONAL GO in the policy's fallback mode (``FIFO fallback``: every study read in arrival
  order, no auto-clear), with the alarm's read date and counts as the reason, until a
  committee re-certifies the rule (a new model version or policy).
"""

from __future__ import annotations

import math

import pandas as pd

from clinaudit.audit.policy_base import COMPARATORS, Criterion, Decision

from .certify import TriageCertification
from .policy import TriagePolicy

__all__ = ["CRITERIA_COLUMNS", "DECISION_COLUMNS", "FALLBACK_MODE", "decide_triage"]

CRITERIA_COLUMNS = (
    "criterion",
    "kind",
    "enabled",
    "statistic",
    "comparator",
    "threshold",
    "value",
    "passed",
    "detail",
)
DECISION_COLUMNS = ("scope", "decision", "mode", "reasons", "conditions", "policy_sha256")
SAFETY = ("temperature", "certified", "test_miss_rate", "auroc", "ece", "backlog_miss_rate")
#: The deployment mode on a re-read monitor alarm.
FALLBACK_MODE = "FIFO fallback"


def _value(row: pd.Series, stat: str, base: str) -> float:
    return float(row[base if stat == "estimate" else f"{base}_{stat}"])


def _outcome(cert: TriageCertification, metric: str, stat: str) -> float:
    row = cert.test_outcomes.set_index("metric").loc[metric]
    return float(row["estimate" if stat == "estimate" else stat])


def _row(name: str, crit: Criterion, cmp: str, value: float, detail: str) -> tuple:
    ok = value >= crit.threshold if cmp == ">=" else value <= crit.threshold
    passed = bool(ok) if crit.enabled and not math.isnan(value) else (not crit.enabled)
    kind = "safety" if name in SAFETY else "benefit"
    return (name, kind, crit.enabled, crit.statistic, cmp, crit.threshold, value, passed, detail)


def _miss_rate_row(cert: TriageCertification, crit: Criterion) -> tuple:
    """The held-out miss rate; when the rule clears no test study there is nothing to miss
    (its interval would only reflect the sample size), and the row says so."""
    cleared = int(cert.test_outcomes.set_index("metric").loc["share_clear", "k"])
    if cleared == 0:
        return (
            "test_miss_rate", "safety", crit.enabled, crit.statistic, "<=", crit.threshold,
            0.0, True, "no test study was cleared: nothing can be missed",
        )  # fmt: skip
    return _row(
        "test_miss_rate", crit, "<=", _outcome(cert, "miss_rate", crit.statistic),
        f"abnormal test studies cleared / abnormal test studies ({cleared} cleared)",
    )  # fmt: skip


def _backlog_row(audit: pd.DataFrame | None, crit: Criterion) -> tuple:
    """The read audit sample's miss rate; pending while no abnormal read has landed."""
    row = None if audit is None else audit.set_index("metric").loc["miss_rate"]
    if row is None or int(row["n"]) == 0:
        return (
            "backlog_miss_rate", "safety", crit.enabled, crit.statistic, "<=", crit.threshold,
            math.nan, True, "pending: no abnormal study among the audit-sample reads landed yet",
        )  # fmt: skip
    share = audit.set_index("metric").loc["share_clear"]
    return _row(
        "backlog_miss_rate", crit, "<=", float(row["estimate" if crit.statistic == "estimate"
                                                   else crit.statistic]),
        f"abnormal read backlog studies the rule clears / abnormal read ({int(row['k'])} of "
        f"{int(row['n'])}; {int(share['n'])} audit-sample reads)",
    )  # fmt: skip


def criteria_table(
    cert: TriageCertification, policy: TriagePolicy, *, backlog: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every criterion with the value it was judged on (see the module docstring).

    ``backlog``: the ``backlog_audit`` evidence table (outcomes on the read audit sample).
    """
    c = policy.criteria
    calibrated = cert.calibration["group"].str.startswith("after" if cert.temperature else "before")
    after = cert.calibration[calibrated].iloc[0]
    note = cert.facts.get("temperature_not_fitted", "")
    disc = cert.discrimination.iloc[0]
    certified = cert.certificate.certified
    rows = [
        (
            "temperature", "safety", True, "fitted", "=", math.nan,
            cert.temperature.temperature if cert.temperature else math.nan,
            cert.temperature is not None,
            f"T = {cert.temperature.temperature:.3f} on the calibration split"
            if cert.temperature
            else "no positive temperature fits the logits ("
            + note.split(";")[0].removeprefix("received ")
            + ")",
        ),
        (
            "certified", "safety", c.certified, "exists", "=", math.nan,
            cert.certificate.threshold if certified else math.nan,
            certified or not c.certified,
            (
                f"clear below {cert.certificate.threshold:.4f}: miss rate <= "
                f"{cert.certificate.alpha:g} with probability >= {1 - cert.certificate.delta:g} "
                f"({cert.certificate.n_abnormal} abnormal calibration studies)"
                if certified
                else f"no threshold certifiable with {cert.certificate.n_abnormal} abnormal "
                f"calibration studies (at least {cert.certificate.min_abnormal} needed)"
            ),
        ),
        _miss_rate_row(cert, c.test_miss_rate),
        _row(
            "auroc", c.auroc, ">=", _value(disc, c.auroc.statistic, "auroc"),
            f"test AUROC of P(abnormal), {int(disc['n'])} studies",
        ),
        _row(
            "ece", c.ece, "<=", _value(after, c.ece.statistic, "ece_width"),
            (
                "equal-width ECE after temperature scaling "
                f"(T = {cert.temperature.temperature:.3f})"
                if cert.temperature
                else "equal-width ECE of the uncalibrated scores (no temperature fits)"
            ),
        ),
        _row(
            "normals_cleared", c.normals_cleared, ">=",
            _outcome(cert, "normals_cleared", c.normals_cleared.statistic),
            "normal test studies cleared / normal test studies",
        ),
        _backlog_row(backlog, c.backlog_miss_rate),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(CRITERIA_COLUMNS))


def _phrase(r: pd.Series) -> str:
    if r["criterion"] in ("certified", "temperature"):
        return str(r["detail"])
    cmp = COMPARATORS.get(r["comparator"], r["comparator"])
    return f"{r['criterion']} {r['statistic']} {r['value']:.3f} (needs {cmp} {r['threshold']:g})"


def _conditions(cert: TriageCertification) -> list[str]:
    if cert.subgroups.empty or not cert.certificate.certified:
        return []
    out = []
    for r in cert.subgroups.itertuples():
        if r.action == "no auto-clear":
            out.append(f"{r.attribute} {r.group}: no auto-clear (certificate failed)")
        elif r.action == "widen":
            out.append(f"{r.attribute} {r.group}: auto-clear below {r.threshold:.4f} only")
    return out


def _alarm_words(monitor: pd.DataFrame | None) -> str | None:
    if monitor is None or not len(monitor) or not bool(monitor["alarm"].iloc[0]):
        return None
    m = monitor.iloc[0]
    return (
        f"re-read monitor alarm on {m['alarm_date']} (re-read {int(m['alarm_at'])} of cleared "
        f"studies; {int(m['n_misses'])} abnormal in {int(m['n_monitored'])} re-reads, e-value "
        f"{float(m['max_e_value']):.1f} >= {1 / float(m['level']):g}; null false-omission rate "
        f"{float(m['null_rate']):.4f})"
    )


def decide_triage(
    cert: TriageCertification,
    policy: TriagePolicy,
    *,
    backlog: pd.DataFrame | None = None,
    monitor: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The decision row and the criteria behind it (see the module docstring).

    ``backlog`` / ``monitor``: the ``backlog_audit`` and ``reread_monitor`` evidence tables.
    """
    criteria = criteria_table(cert, policy, backlog=backlog)
    failed = criteria[criteria["enabled"] & ~criteria["passed"]]
    names = set(failed["criterion"])
    reasons = "; ".join(_phrase(r) for _, r in failed.iterrows())
    conditions = _conditions(cert)
    if names & {"temperature", "auroc", "ece"}:
        decision, mode = Decision.NO_GO, "none"
    elif names:
        decision, mode = Decision.CONDITIONAL_GO, "priority ordering only"
        conditions = ["no auto-clear: every study is read, in order of value", *conditions]
    else:
        decision, mode = Decision.GO, "priority + auto-clear"
        reasons = "every enabled criterion passes"
    reread = f"re-read {policy.monitoring.reread_fraction:.0%} of cleared studies"
    alarm = _alarm_words(monitor)
    if mode == "priority + auto-clear" and alarm:
        decision, mode = Decision.CONDITIONAL_GO, FALLBACK_MODE
        reasons = alarm
        conditions = [
            policy.monitoring.fallback,
            "escalate to " + ", ".join(policy.monitoring.escalation),
            "auto-clear resumes only after a committee re-certifies the rule (new model "
            "version or policy)",
        ]
    elif mode == "priority + auto-clear":
        conditions.append(f"{reread}; on alarm: {policy.monitoring.fallback}")
    table = pd.DataFrame(
        [("all sites", decision.value, mode, reasons, "; ".join(conditions), policy.sha256)],
        columns=list(DECISION_COLUMNS),
    )
    return table, criteria
