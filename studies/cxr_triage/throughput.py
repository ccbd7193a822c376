"""Throughput of the reading queue with and without the triage rule (study ``cxr_triage``).

The bucketed pile (``certify.TriageCertification.rows``, split ``pile``) becomes the backlog at
day 0, resampled (with replacement, seeded) to the policy's ``simulated_pile`` when fewer studies
landed; the daily inflow of ``workload.daily_inflow`` studies for ``workload.inflow_days`` days is
drawn the same way from the pile. Each study keeps its calibrated P(abnormal), P(critical) (capped
at P(abnormal): a critical finding is an abnormal finding), bucket and reading priority. Then
:func:`clinaudit.audit.triage_outcomes.compare_policies` simulates FIFO, priority and priority +
auto-clear under ``workload.reads_per_day`` with the policy's aging cap and re-read quota, and
imputes the unknown labels from the calibrated probabilities (``workload.n_draws`` draws).

:func:`double_verdict` answers the brief's "double effective radiologist throughput" for two
definitions: the capacity multiplier (studies disposed per reading day over reads per day) and
the abnormal yield of the first ``first_days`` days against FIFO; "double" holds for a definition
only when the lower end of its interval reaches 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from clinaudit.audit.bootstrap import derive_rng
from clinaudit.audit.triage_outcomes import compare_policies
from clinaudit.audit.triage_queue import (
    POLICIES,
    QueueConfig,
    QueueRun,
    daily_inflow,
    simulate_queue,
)
from clinaudit.audit.types import AuditInputError

from .policy import TriagePolicy

__all__ = ["Throughput", "double_verdict", "simulate_throughput"]

_NEEDED = ("p_abnormal", "p_critical", "bucket", "priority")


@dataclass(frozen=True)
class Throughput:
    """The policy comparison and how its backlog was built.

    ``table``: :func:`compare_policies`'s long table; ``curves``: per policy and working day,
    the expected abnormal and critical studies read so far (sum of calibrated probabilities over
    studies read by then) and the backlog still unread; ``n_landed``: pile studies landed;
    ``resampled``: whether the backlog was resampled up to ``n_pile``; ``n_inflow``: simulated
    inflow studies.
    """

    table: pd.DataFrame
    curves: pd.DataFrame
    n_landed: int
    n_pile: int
    resampled: bool
    n_inflow: int
    inflow_days: int


def simulate_throughput(pile: pd.DataFrame, policy: TriagePolicy, *, seed: int = 0) -> Throughput:
    """Backlog + inflow from the bucketed pile, then the three reading policies.

    Raises
    ------
    AuditInputError
        If the pile is empty or lacks a column of :data:`_NEEDED`.
    """
    missing = [c for c in _NEEDED if c not in pile.columns]
    if missing or not len(pile):
        raise AuditInputError(
            "pile",
            f"{len(pile)} rows, missing {missing}",
            f"bucketed pile studies with {list(_NEEDED)}",
            "land a pile batch and certify it first",
        )
    w = policy.workload
    rng = derive_rng(seed, "cxr_triage/backlog")
    n_landed = len(pile)
    resampled = n_landed < w.simulated_pile
    backlog = rng.integers(0, n_landed, w.simulated_pile) if resampled else np.arange(n_landed)
    arrivals = daily_inflow(w.daily_inflow, w.inflow_days, seed=seed)
    inflow = derive_rng(seed, "cxr_triage/inflow").integers(0, n_landed, arrivals.size)
    idx = np.concatenate([backlog, inflow])
    studies = pile.iloc[idx]
    p_abnormal = studies["p_abnormal"].to_numpy(float)
    p_critical = np.minimum(studies["p_critical"].to_numpy(float), p_abnormal)
    arrival = np.concatenate([np.zeros(backlog.size), arrivals])
    priority, bucket = studies["priority"].to_numpy(float), studies["bucket"].to_numpy(str)
    config = QueueConfig(
        reads_per_day=w.reads_per_day,
        aging_cap_days=w.aging_cap_days,
        reread_fraction=policy.monitoring.reread_fraction,
        first_days=float(w.first_days),
    )
    table = compare_policies(
        arrival,
        priority,
        bucket,
        p_abnormal,
        p_critical,
        config=config,
        n_draws=w.n_draws,
        seed=seed,
        ci_level=policy.calibration.ci_level,
    )
    runs = [
        simulate_queue(arrival, priority, bucket, policy=name, config=config, seed=seed)
        for name in POLICIES
    ]
    curves = pd.concat([_curve(run, p_abnormal, p_critical) for run in runs], ignore_index=True)
    return Throughput(
        table, curves, n_landed, int(backlog.size), resampled, int(arrivals.size), w.inflow_days
    )


def _curve(run: QueueRun, p_abnormal: np.ndarray, p_critical: np.ndarray) -> pd.DataFrame:
    """Expected abnormal / critical studies read by the end of each working day, and the
    backlog (pile studies neither read nor auto-cleared) left then."""
    done = np.where(run.read, run.completion_day, np.inf)
    order = np.argsort(done, kind="stable")
    finite = done[np.isfinite(done)]
    days = np.arange(0, int(np.ceil(finite.max())) + 1 if finite.size else 1)
    k = np.searchsorted(done[order], days, side="right")  # studies read by the end of day d
    cum_abn = np.concatenate([[0.0], np.cumsum(np.where(run.read, p_abnormal, 0.0)[order])])
    cum_crit = np.concatenate([[0.0], np.cumsum(np.where(run.read, p_critical, 0.0)[order])])
    pile_read = np.concatenate([[0], np.cumsum((run.in_pile & run.read)[order])])
    cleared = int((run.in_pile & run.auto_cleared).sum())
    return pd.DataFrame(
        {
            "policy": run.policy,
            "day": days,
            "abnormal_read": cum_abn[k],
            "critical_read": cum_crit[k],
            "pile_left": int(run.in_pile.sum()) - cleared - pile_read[k],
        }
    )


def double_verdict(table: pd.DataFrame, *, policy_name: str = "priority_autoclear") -> pd.DataFrame:
    """Whether "double" holds, per definition, for one reading policy.

    Returns one row per definition: ``definition, metric, estimate, ci_low, ci_high, doubles``
    (``doubles``: the interval's lower end is at least 2).

    Examples
    --------
    >>> t = pd.DataFrame({"policy": ["p", "p"], "metric": ["effective_throughput_multiplier",
    ...     "abnormal_yield_ratio_vs_fifo"], "estimate": [1.4, 2.3], "ci_low": [1.4, 2.1],
    ...     "ci_high": [1.4, 2.5]})
    >>> double_verdict(t, policy_name="p")["doubles"].tolist()
    [False, True]
    """
    definitions = {
        "studies disposed per reading day / reads per day": "effective_throughput_multiplier",
        "abnormal studies read in the first days / FIFO's": "abnormal_yield_ratio_vs_fifo",
    }
    rows = table[table["policy"] == policy_name].set_index("metric")
    out = []
    for text, metric in definitions.items():
        r = rows.loc[metric]
        out.append((text, metric, r["estimate"], r["ci_low"], r["ci_high"], bool(r["ci_low"] >= 2)))
    return pd.DataFrame(
        out, columns=["definition", "metric", "estimate", "ci_low", "ci_high", "doubles"]
    )
