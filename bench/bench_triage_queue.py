"""Benchmark: reading-queue simulation of a 30,000-study pile + 20 days of ~1,000/day inflow.

Data (simulated): 30,000 pile studies (arrival 0) and ``daily_inflow(1000, 20)`` inflow studies;
P(abnormal) ~ Beta(0.6, 1.6), P(critical) = P(abnormal) x Beta(1, 4); priority = P(abnormal) +
P(critical); buckets "clear" (< 0.1), "flag" (> 0.6), else "uncertain". Capacity 1,080 reads/day,
aging cap 3 days, re-read quota 5%.

Compared, in the same run, for each policy:

* the core: :func:`clinaudit.audit.triage_queue.simulate_queue` (heaps, ``O(n log n)``);
* the baseline: a plain slot-by-slot loop that scans every waiting study at every read (the slow,
  obviously-correct reference of ``tests/test_triage_queue.py``, ``O(n^2)``), on a random
  subsample of ``N_SUB`` studies with the capacity scaled by the same factor (same load). Both are
  timed on that subsample and their read orders compared; the baseline at full size is an
  extrapolation (quadratic), printed as such.

Then the core at full size (studies/s), and :func:`clinaudit.audit.triage_outcomes.
compare_policies` with 200 truth draws, with a few of its figures.

Run: ``.venv/bin/python bench/bench_triage_queue.py``.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd

from clinaudit.audit.triage_outcomes import compare_policies
from clinaudit.audit.triage_queue import POLICIES, QueueConfig, daily_inflow, simulate_queue

PILE = 30_000
INFLOW_PER_DAY = 1_000
INFLOW_DAYS = 20
N_SUB = 3_000
SEED = 0
CONFIG = QueueConfig(reads_per_day=1080.0, aging_cap_days=3.0, reread_fraction=0.05)


def simulate(seed: int = SEED):
    """``(arrival_day, priority, bucket, p_abnormal, p_critical)`` of the pile and the inflow."""
    rng = np.random.default_rng(seed)
    arrival = np.concatenate([np.zeros(PILE), daily_inflow(INFLOW_PER_DAY, INFLOW_DAYS, seed=seed)])
    n = arrival.size
    p_abn = rng.beta(0.6, 1.6, n)
    p_crit = p_abn * rng.beta(1.0, 4.0, n)
    bucket = np.where(p_abn < 0.1, "clear", np.where(p_abn > 0.6, "flag", "uncertain"))
    return arrival, p_abn + p_crit, bucket, p_abn, p_crit


def slow_queue(arrival, priority, queued, policy, rate, cap):
    """Baseline: at every read, scan all unread studies; O(n^2)."""
    arrival, priority = arrival.tolist(), priority.tolist()
    unread = [i for i in range(len(arrival)) if queued[i]]
    order, t0, j = [], 0.0, 0
    while unread:
        s = t0 + j / rate
        waiting = [i for i in unread if arrival[i] <= s]
        if not waiting:
            t0, j = min(arrival[i] for i in unread), 0
            continue
        aged = [i for i in waiting if cap is not None and arrival[i] + cap < s]
        if aged:
            pick = min(aged, key=lambda i: (arrival[i], i))
        elif policy == "fifo":
            pick = min(waiting, key=lambda i: (arrival[i], i))
        else:
            pick = min(waiting, key=lambda i: (-priority[i], arrival[i], i))
        unread.remove(pick)
        order.append(pick)
        j += 1
    return order


def main() -> None:
    arrival, priority, bucket, p_abn, p_crit = simulate()
    n = arrival.size
    print(
        f"data: {PILE} pile + {n - PILE} inflow studies ({INFLOW_DAYS} days of "
        f"~{INFLOW_PER_DAY}/day) = {n}; {CONFIG}"
    )
    sub = np.sort(np.random.default_rng(SEED + 1).choice(n, N_SUB, replace=False))
    sub_cfg = QueueConfig(
        reads_per_day=CONFIG.reads_per_day * N_SUB / n,
        aging_cap_days=CONFIG.aging_cap_days,
        reread_fraction=CONFIG.reread_fraction,
    )
    print(f"subsample: {N_SUB} studies, capacity scaled to {sub_cfg.reads_per_day:.1f} reads/day")
    for policy in POLICIES:
        args = (arrival[sub], priority[sub], bucket[sub])
        t0 = time.perf_counter()
        run = simulate_queue(*args, policy=policy, config=sub_cfg, seed=SEED)
        fast_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        order = slow_queue(
            arrival[sub],
            priority[sub],
            run.read,
            policy,
            sub_cfg.reads_per_day,
            sub_cfg.aging_cap_days,
        )
        slow_s = time.perf_counter() - t0
        same = order == run.read_order.tolist()
        print(
            f"  {policy:<18} core {fast_s * 1e3:7.1f} ms | slot-scan loop {slow_s:6.2f} s | "
            f"speed-up {slow_s / fast_s:5.0f}x | same read order: {same} | "
            f"loop extrapolated (quadratic) to n={n}: {slow_s * (n / N_SUB) ** 2 / 60:.0f} min"
        )
    print(f"full size, n={n}:")
    for policy in POLICIES:
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            simulate_queue(arrival, priority, bucket, policy=policy, config=CONFIG, seed=SEED)
            best = min(best, time.perf_counter() - t0)
        print(f"  {policy:<18} core {best:.3f} s (best of 3) = {n / best:,.0f} studies/s")
    t0 = time.perf_counter()
    table = compare_policies(
        arrival, priority, bucket, p_abn, p_crit, config=CONFIG, n_draws=200, seed=SEED
    )
    print(f"compare_policies (3 policies, 200 truth draws): {time.perf_counter() - t0:.2f} s")
    shown = (
        "days_to_clear_pile",
        "abnormal_yield_ratio_vs_fifo",
        "critical_turnaround_mean_days",
        "missed_abnormal_inflow_per_day",
        "effective_throughput_multiplier",
    )
    uncapped = compare_policies(
        arrival,
        priority,
        bucket,
        p_abn,
        p_crit,
        config=replace(CONFIG, aging_cap_days=None),
        policies=("priority",),
        n_draws=200,
        seed=SEED,
    ).assign(policy="priority, no aging cap")
    both = pd.concat([table, uncapped])
    for _, r in both[both["metric"].isin(shown)].iterrows():
        print(
            f"  {r['policy']:<24} {r['metric']:<32} {r['estimate']:9.3f} "
            f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        )


if __name__ == "__main__":
    main()
