"""Outcomes of simulated reading queues under imputed truth, and a policy comparison with intervals.

The true labels of the pile are unknown. Each *draw* imputes them from the model's calibrated
probabilities: one uniform ``u`` per study, ``abnormal = u < p_abnormal`` and
``critical = u < p_critical`` (so ``p_critical <= p_abnormal`` is required, a critical study is
always abnormal, and P(critical | abnormal) = ``p_critical / p_abnormal``). The intervals therefore
reflect *label uncertainty given the calibrated probabilities, conditional on this pile* (the
studies, their arrivals and their probabilities are taken as fixed; a miscalibrated model gives
wrong intervals).

The read order does not depend on the truth, so each policy is simulated once
(:func:`~clinaudit.audit.triage_queue.simulate_queue`) and every draw is evaluated from the
completion times at once: draws are rows of a ``(draws, studies)`` boolean matrix, processed in
chunks; all policies see the same draws (paired), so a ratio to FIFO is taken per draw. Metric
definitions: :data:`~clinaudit.audit.triage_schema.TRIAGE_METRICS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .bootstrap import derive_rng, percentile_ci
from .schemas import validate_table
from .triage_inputs import check_study_array
from .triage_queue import POLICIES, Policy, QueueConfig, QueueRun, simulate_queue
from .triage_schema import TRIAGE_METRICS, TRUTH_METRICS, TriageComparisonTable
from .types import AuditInputError, check_ci_level, check_option, check_positive_int

__all__ = ["compare_policies", "queue_outcomes"]

CHUNK_DRAWS = 25
P90 = 0.9


@dataclass(frozen=True)
class _Plan:
    """What every draw needs from one run: read studies sorted by turnaround, index sets."""

    fixed: dict[str, float]
    by_turnaround: np.ndarray  # indices of read studies, ascending turnaround
    turnaround: np.ndarray  # their turnarounds, ascending
    read_in_window: np.ndarray  # indices of studies whose read completed by first_days
    missed_pile: np.ndarray  # auto-cleared pile studies
    missed_inflow: np.ndarray  # auto-cleared inflow studies
    inflow_days: float


def _plan(run: QueueRun) -> _Plan:
    read = np.flatnonzero(run.read)
    turnaround = run.completion_day[read] - run.arrival_day[read]
    order = np.argsort(turnaround, kind="stable")
    pile_days = run.disposal_day[run.in_pile]
    clear_day = float(pile_days.max()) if pile_days.size else math.nan
    disposed = np.count_nonzero(run.read & (run.completion_day <= clear_day))
    disposed += np.count_nonzero(run.auto_cleared & (run.arrival_day <= clear_day))
    rate = float(run.config.reads_per_day)
    inflow = ~run.in_pile
    fixed = {
        "days_to_clear_pile": clear_day,
        "max_wait_days": float(np.max(run.wait_days[read])) if read.size else math.nan,
        "reads_used": float(read.size),
        "auto_cleared_share": float(np.mean(run.auto_cleared)),
        "effective_throughput_multiplier": (
            disposed / clear_day / rate if clear_day > 0 else math.nan
        ),
    }
    return _Plan(
        fixed=fixed,
        by_turnaround=read[order],
        turnaround=turnaround[order],
        read_in_window=np.flatnonzero(run.read & (run.completion_day <= run.config.first_days)),
        missed_pile=np.flatnonzero(run.auto_cleared & run.in_pile),
        missed_inflow=np.flatnonzero(run.auto_cleared & inflow),
        inflow_days=float(np.ceil(run.arrival_day[inflow].max())) if inflow.any() else math.nan,
    )


def _kth_selected(cum: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Column of the ``k``-th (0-based) selected entry of each row, from row-wise cumsums."""
    return np.count_nonzero(cum <= k[:, None], axis=1)


def _turnaround_stats(sel: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, p90 (numpy's linear method) and max of ``values[sel[b]]`` for every row ``b``.

    ``values`` is ascending, so the ``k``-th smallest selected value is at the column where the
    row's cumulative count of selected entries first exceeds ``k``.
    """
    count = np.count_nonzero(sel, axis=1)
    out = {name: np.full(sel.shape[0], np.nan) for name in ("mean", "p90", "max")}
    ok = count > 0
    if not ok.any():
        return out
    sel, count = sel[ok], count[ok]
    cum = np.cumsum(sel, axis=1, dtype=np.int64)
    out["mean"][ok] = (sel @ values) / count
    last = count - 1
    out["max"][ok] = values[_kth_selected(cum, last)]
    h = last * P90
    lo = np.floor(h).astype(np.int64)
    t = h - lo
    a = values[_kth_selected(cum, lo)]
    b = values[_kth_selected(cum, np.minimum(lo + 1, last))]
    out["p90"][ok] = np.where(t >= 0.5, b - (b - a) * (1.0 - t), a + (b - a) * t)
    return out


def _truth_metrics(plan: _Plan, abnormal: np.ndarray, critical: np.ndarray) -> dict[str, Any]:
    """Truth-dependent metrics (except the FIFO ratio) of one run for every draw (row)."""
    out: dict[str, Any] = {}
    for name, truth in (("abnormal", abnormal), ("critical", critical)):
        stats = _turnaround_stats(truth[:, plan.by_turnaround], plan.turnaround)
        for stat, values in stats.items():
            out[f"{name}_turnaround_{stat}_days"] = values
        out[f"missed_{name}_pile"] = np.count_nonzero(truth[:, plan.missed_pile], axis=1) * 1.0
        missed_inflow = np.count_nonzero(truth[:, plan.missed_inflow], axis=1)
        out[f"missed_{name}_inflow_per_day"] = missed_inflow / plan.inflow_days
    out["abnormal_read_in_first_days"] = np.count_nonzero(
        abnormal[:, plan.read_in_window], axis=1
    ).astype(np.float64)
    return out


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(den) > 0, np.asarray(num) / np.asarray(den), np.nan)


def _check_truth(name: str, values: Any, n: int) -> np.ndarray:
    arr = check_study_array(name, values, n, low=0.0, high=1.0)
    bad = (arr != 0.0) & (arr != 1.0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise AuditInputError(
            name, f"{float(arr[row])!r} at row {row}", "0 or 1 per study", f"binarise {name}"
        )
    return arr.astype(bool)


def queue_outcomes(
    run: QueueRun, abnormal: Any, critical: Any, *, fifo: QueueRun | None = None
) -> dict[str, float]:
    """Every metric of one run under one truth realisation.

    Parameters
    ----------
    run : QueueRun
        From :func:`~clinaudit.audit.triage_queue.simulate_queue`.
    abnormal, critical : array-like of shape (n,)
        True labels (0/1) per study; a critical study must be abnormal.
    fifo : QueueRun, optional, keyword-only
        The FIFO run of the same studies, for the ``*_ratio_vs_fifo`` metrics (``NaN`` without
        it, unless ``run`` is itself FIFO).

    Returns
    -------
    dict of str to float
        Metrics in the order of :data:`~clinaudit.audit.triage_schema.TRIAGE_METRICS`.

    Raises
    ------
    AuditInputError
        On labels that are not 0/1, of the wrong length, or a critical study not abnormal.

    Examples
    --------
    >>> from clinaudit.audit.triage_queue import simulate_queue
    >>> run = simulate_queue([0, 0, 0, 0], [0.9, 0.1, 0.8, 0.2], ["flag"] * 4,
    ...                      policy="priority", config=QueueConfig(reads_per_day=2.0))
    >>> out = queue_outcomes(run, [1, 0, 1, 0], [1, 0, 0, 0])
    >>> out["days_to_clear_pile"], out["abnormal_turnaround_mean_days"]
    (2.0, 0.75)
    """
    if not isinstance(run, QueueRun):
        raise AuditInputError(
            "run", type(run).__name__, "a QueueRun", "pass the result of simulate_queue(...)"
        )
    n = run.arrival_day.size
    abn = _check_truth("abnormal", abnormal, n)
    crit = _check_truth("critical", critical, n)
    if (crit & ~abn).any():
        row = int(np.flatnonzero(crit & ~abn)[0])
        raise AuditInputError(
            "critical",
            f"a critical study at row {row} that is not abnormal",
            "critical studies to be abnormal",
            f"set abnormal[{row}] = 1 or critical[{row}] = 0",
        )
    fifo = run if fifo is None and run.policy == "fifo" else fifo
    if fifo is not None and (
        fifo.policy != "fifo" or not np.array_equal(fifo.arrival_day, run.arrival_day)
    ):
        raise AuditInputError(
            "fifo",
            f"a {fifo.policy!r} run of {fifo.arrival_day.size} studies",
            f"the FIFO run of the same {n} studies as run",
            "pass fifo=simulate_queue(<same studies>, policy='fifo', config=run.config)",
        )
    plan = _plan(run)
    truth = _truth_metrics(plan, abn[None, :], crit[None, :])
    values: dict[str, float] = {**plan.fixed, **{k: float(v[0]) for k, v in truth.items()}}
    values["days_to_clear_pile_ratio_vs_fifo"] = math.nan
    values["abnormal_yield_ratio_vs_fifo"] = math.nan
    if fifo is not None:
        base = _plan(fifo)
        base_first = _truth_metrics(base, abn[None, :], crit[None, :])
        ratio = _ratio(values["days_to_clear_pile"], base.fixed["days_to_clear_pile"])
        values["days_to_clear_pile_ratio_vs_fifo"] = float(ratio)
        first = _ratio(
            truth["abnormal_read_in_first_days"], base_first["abnormal_read_in_first_days"]
        )
        values["abnormal_yield_ratio_vs_fifo"] = float(first[0])
    return {m: values[m] for m in TRIAGE_METRICS}


def _check_policies(policies: Any) -> tuple[str, ...]:
    if isinstance(policies, str) or not isinstance(policies, Sequence) or not policies:
        raise AuditInputError(
            "policies",
            repr(policies),
            f"a non-empty sequence of {list(POLICIES)}",
            "pass e.g. policies=('fifo', 'priority')",
        )
    out = tuple(check_option("policies", p, POLICIES) for p in policies)
    if len(set(out)) != len(out):
        raise AuditInputError(
            "policies", repr(policies), "each policy once", "remove the repeated policy"
        )
    return out


def compare_policies(
    arrival_day: Any,
    priority: Any,
    bucket: Any,
    p_abnormal: Any,
    p_critical: Any,
    *,
    config: QueueConfig = QueueConfig(),
    policies: Sequence[Policy] = POLICIES,  # type: ignore[assignment]
    n_draws: int = 200,
    seed: int = 0,
    ci_level: float = 0.95,
) -> pd.DataFrame:
    """Simulate each policy once, then every metric over ``n_draws`` imputed-truth draws.

    The interval of a truth-dependent metric reflects label uncertainty given the calibrated
    probabilities, conditional on the pile (see the module docstring); it is the percentile
    interval of the draws. ``estimate`` is the mean over the draws where the metric is defined
    (the expected value given the probabilities; for a very skewed metric, e.g. the max turnaround
    of a handful of critical studies, the mean can fall outside the percentile interval). Metrics
    fixed by the read order (``depends_on_truth`` False) have ``estimate == ci_low == ci_high``.

    Parameters
    ----------
    arrival_day, priority, bucket : array-like of shape (n,)
        As in :func:`~clinaudit.audit.triage_queue.simulate_queue`.
    p_abnormal, p_critical : array-like of shape (n,)
        Calibrated probabilities in ``[0, 1]``, ``p_critical <= p_abnormal`` per study.
    config : QueueConfig, keyword-only
        Capacity, aging cap, re-read quota, window of the first-days metric.
    policies : sequence of str, keyword-only
        Policies to compare, each once (FIFO is always simulated for the ratios).
    n_draws : int, keyword-only
        Truth draws, ``>= 1``.
    seed : int, keyword-only
        Seeds the re-read choice (``derive_rng(seed, "reread")``) and the draws
        (``derive_rng(seed, "truth")``).
    ci_level : float, keyword-only
        Interval coverage.

    Returns
    -------
    DataFrame
        :class:`~clinaudit.audit.triage_schema.TriageComparisonTable`: one row per (policy,
        metric) with the settings used.

    Raises
    ------
    AuditInputError
        On invalid inputs (see :func:`~clinaudit.audit.triage_queue.simulate_queue`),
        probabilities outside ``[0, 1]`` or ``p_critical > p_abnormal``.

    Examples
    --------
    >>> table = compare_policies([0.0] * 4, [0.9, 0.1, 0.8, 0.2], ["flag", "clear"] * 2,
    ...                          [0.9, 0.1, 0.8, 0.2], [0.5, 0.0, 0.1, 0.0], n_draws=50,
    ...                          config=QueueConfig(reads_per_day=2.0))
    >>> row = table.query("policy == 'fifo' and metric == 'abnormal_yield_ratio_vs_fifo'")
    >>> row[["estimate", "ci_low", "ci_high"]].to_numpy().tolist()
    [[1.0, 1.0, 1.0]]
    """
    chosen = _check_policies(policies)
    n_draws = check_positive_int("n_draws", n_draws)
    ci_level = check_ci_level(ci_level)
    runs = {
        p: simulate_queue(arrival_day, priority, bucket, policy=p, config=config, seed=seed)
        for p in dict.fromkeys(("fifo", *chosen))
    }
    n = runs["fifo"].arrival_day.size
    p_abn = check_study_array("p_abnormal", p_abnormal, n, low=0.0, high=1.0)
    p_crit = check_study_array("p_critical", p_critical, n, low=0.0, high=1.0)
    if (p_crit > p_abn).any():
        row = int(np.flatnonzero(p_crit > p_abn)[0])
        raise AuditInputError(
            "p_critical",
            f"{float(p_crit[row])!r} > p_abnormal {float(p_abn[row])!r} at row {row}",
            "p_critical <= p_abnormal (a critical study is abnormal)",
            "pass P(critical) as a joint probability, not conditional on abnormal",
        )
    plans = {p: _plan(r) for p, r in runs.items()}
    reps = {p: {m: np.empty(n_draws) for m in TRUTH_METRICS} for p in chosen}
    rng = derive_rng(seed, "truth")
    for start in range(0, n_draws, CHUNK_DRAWS):
        stop = min(start + CHUNK_DRAWS, n_draws)
        u = rng.random((stop - start, n))
        abnormal, critical = u < p_abn, u < p_crit
        per = {p: _truth_metrics(plan, abnormal, critical) for p, plan in plans.items()}
        base = per["fifo"]["abnormal_read_in_first_days"]
        for p in chosen:
            per[p]["abnormal_yield_ratio_vs_fifo"] = _ratio(
                per[p]["abnormal_read_in_first_days"], base
            )
            for m in TRUTH_METRICS:
                reps[p][m][start:stop] = per[p][m]
    settings = {
        "n_studies": n,
        "n_pile": int(runs["fifo"].in_pile.sum()),
        "reads_per_day": float(config.reads_per_day),
        "aging_cap_days": math.nan
        if config.aging_cap_days is None
        else float(config.aging_cap_days),
        "reread_fraction": float(config.reread_fraction),
        "first_days": float(config.first_days),
        "n_draws": n_draws,
        "seed": int(seed),
        "ci_level": ci_level,
    }
    fifo_clear = plans["fifo"].fixed["days_to_clear_pile"]
    rows = []
    for p in chosen:
        fixed = dict(plans[p].fixed)
        fixed["days_to_clear_pile_ratio_vs_fifo"] = float(
            _ratio(fixed["days_to_clear_pile"], fifo_clear)
        )
        for m in TRIAGE_METRICS:
            if m in TRUTH_METRICS:
                draws = reps[p][m]
                finite = draws[np.isfinite(draws)]
                estimate = float(finite.mean()) if finite.size else math.nan
                lo, hi = percentile_ci(draws, ci_level)
                n_valid = int(finite.size)
            else:
                estimate = lo = hi = fixed[m]
                n_valid = n_draws if math.isfinite(estimate) else 0
            rows.append(
                {
                    "policy": p,
                    "metric": m,
                    "estimate": estimate,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_valid": n_valid,
                    "depends_on_truth": m in TRUTH_METRICS,
                    **settings,
                }
            )
    return validate_table(pd.DataFrame(rows), TriageComparisonTable)
