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
from clinaudit.audit.triage_queue import QueueConfig, daily_inflow
from clinaudit.audit.types import AuditInputError

from .policy import TriagePolicy

__all__ = ["Throughput", "double_verdict", "simulate_throughput"]

_NEEDED = ("p_abnormal", "p_critical", "bucket", "priority")


@dataclass(frozen=True)
class Throughput:
    """The policy comparison and how its backlog was built.

    ``table``: :func:`compare_policies`'s long table; ``n_landed``: pile studies landed;
    ``resampled``: whether the backlog was resampled up to ``n_pile``; ``n_inflow``: simulated
    inflow studies.
    """

    table: pd.DataFrame
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
    table = compare_policies(
        np.concatenate([np.zeros(backlog.size), arrivals]),
        studies["priority"].to_numpy(float),
        studies["bucket"].to_numpy(str),
        p_abnormal,
        np.minimum(studies["p_critical"].to_numpy(float), p_abnormal),
        config=QueueConfig(
            reads_per_day=w.reads_per_day,
            aging_cap_days=w.aging_cap_days,
            reread_fraction=policy.monitoring.reread_fraction,
            first_days=float(w.first_days),
        ),
        n_draws=w.n_draws,
        seed=seed,
        ci_level=policy.calibration.ci_level,
    )
    return Throughput(
        table, n_landed, int(backlog.size), resampled, int(arrivals.size), w.inflow_days
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
