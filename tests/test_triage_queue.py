"""Reading-queue simulation: analytic FIFO cases, a slow slot-by-slot reference, the aging-cap
bound, the re-read quota, input errors, and the imputed-truth comparison table."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit.triage_outcomes import compare_policies, queue_outcomes
from clinaudit.audit.triage_queue import (
    POLICIES,
    QueueConfig,
    QueueRun,
    daily_inflow,
    simulate_queue,
)
from clinaudit.audit.triage_schema import TRIAGE_METRICS, TRUTH_METRICS
from clinaudit.audit.types import AuditInputError


# --------------------------------------------------------------------------- slow references
def _slow_queue(arrival, priority, queued, policy, rate, cap):
    """Slot by slot: scan every waiting study, take the aged one that arrived first, else the
    policy's first; idle to the next arrival when none is waiting. O(n^2)."""
    unread = [i for i in range(len(arrival)) if queued[i]]
    order, starts, ends = [], [], []
    t0, j = 0.0, 0
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
        starts.append(s)
        ends.append(t0 + (j + 1) / rate)
        j += 1
    return order, starts, ends


def _slow_outcomes(run: QueueRun, abnormal, critical) -> dict[str, float]:
    """The truth-dependent metrics, study by study."""
    out = {}
    for name, truth in (("abnormal", abnormal), ("critical", critical)):
        ta = [
            run.completion_day[i] - run.arrival_day[i]
            for i in range(truth.size)
            if truth[i] and run.read[i]
        ]
        out[f"{name}_turnaround_mean_days"] = statistics.fmean(ta) if ta else math.nan
        out[f"{name}_turnaround_p90_days"] = float(np.quantile(ta, 0.9)) if ta else math.nan
        out[f"{name}_turnaround_max_days"] = max(ta) if ta else math.nan
        missed = [i for i in range(truth.size) if truth[i] and run.auto_cleared[i]]
        out[f"missed_{name}_pile"] = float(sum(run.arrival_day[i] == 0.0 for i in missed))
        inflow = [i for i in range(truth.size) if run.arrival_day[i] > 0]
        days = math.ceil(max(run.arrival_day[i] for i in inflow)) if inflow else math.nan
        out[f"missed_{name}_inflow_per_day"] = sum(run.arrival_day[i] > 0 for i in missed) / days
    out["abnormal_read_in_first_days"] = float(
        sum(
            1
            for i in range(abnormal.size)
            if abnormal[i] and run.read[i] and run.completion_day[i] <= run.config.first_days
        )
    )
    return out


def _random_case(seed: int, n: int = 70):
    """Pile, tied arrivals and gaps longer than the work (idle spells), tied priorities."""
    rng = np.random.default_rng(seed)
    arrival = np.where(rng.random(n) < 0.3, 0.0, np.round(rng.uniform(0, 30, n) * 2) / 2)
    priority = np.round(rng.random(n), 1)
    bucket = rng.choice(["clear", "uncertain", "flag"], n, p=[0.5, 0.3, 0.2])
    return arrival, priority, bucket


# --------------------------------------------------------------------------- 1. analytic FIFO
def test_fifo_pile_is_analytic():
    n, c = 1000, 1080.0
    run = simulate_queue(
        np.zeros(n),
        np.random.default_rng(0).random(n),
        ["flag"] * n,
        policy="fifo",
        config=QueueConfig(reads_per_day=c),
    )
    assert run.read_order.tolist() == list(range(n))
    assert np.array_equal(run.completion_day, (np.arange(n) + 1) / c)
    assert np.array_equal(run.start_day, np.arange(n) / c)
    out = queue_outcomes(run, np.ones(n), np.zeros(n))
    assert out["days_to_clear_pile"] == n / c
    assert out["max_wait_days"] == (n - 1) / c
    assert out["abnormal_turnaround_mean_days"] == pytest.approx((n + 1) / (2 * c), rel=1e-12)
    assert out["abnormal_turnaround_max_days"] == n / c
    assert out["effective_throughput_multiplier"] == pytest.approx(1.0, rel=1e-12)
    assert out["days_to_clear_pile_ratio_vs_fifo"] == 1.0
    assert out["reads_used"] == n and out["auto_cleared_share"] == 0.0
    assert math.isnan(out["critical_turnaround_mean_days"])  # no critical study
    assert math.isnan(out["missed_abnormal_inflow_per_day"])  # no inflow


def test_fifo_clears_pile_at_n_over_c_under_inflow_below_capacity():
    n, c, per_day, days = 500, 100.0, 80, 10
    inflow = np.array([d + (k + 1) / per_day for d in range(days) for k in range(per_day)])
    arrival = np.concatenate([np.zeros(n), inflow])
    m = arrival.size
    run = simulate_queue(
        arrival, np.zeros(m), ["uncertain"] * m, policy="fifo", config=QueueConfig(reads_per_day=c)
    )
    out = queue_outcomes(run, np.zeros(m), np.zeros(m))
    assert out["days_to_clear_pile"] == n / c
    assert run.read_order.tolist() == list(range(m))  # arrival order
    assert np.all(run.start_day >= run.arrival_day)


def test_idle_reader_starts_at_next_arrival():
    run = simulate_queue(
        [5.0, 0.0, 5.0, 9.25],
        [0, 0, 1, 0],
        ["flag"] * 4,
        policy="priority",
        config=QueueConfig(reads_per_day=2.0, aging_cap_days=None),
    )
    assert run.read_order.tolist() == [1, 2, 0, 3]
    assert run.start_day.tolist() == [5.5, 0.0, 5.0, 9.25]
    assert run.completion_day.tolist() == [6.0, 0.5, 5.5, 9.75]


# --------------------------------------------------------------------------- 2. slow reference
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("cap", [None, 0.0, 1.5])
@pytest.mark.parametrize("seed", range(4))
def test_matches_slow_reference(policy, cap, seed):
    arrival, priority, bucket = _random_case(seed)
    rate = [2.0, 3.0, 1.7, 5.0][seed]
    cfg = QueueConfig(reads_per_day=rate, aging_cap_days=cap, reread_fraction=0.3)
    run = simulate_queue(arrival, priority, bucket, policy=policy, config=cfg, seed=seed)
    order, starts, ends = _slow_queue(arrival, priority, run.read, policy, rate, cap)
    assert run.read_order.tolist() == order
    assert run.start_day[order].tolist() == starts
    assert run.completion_day[order].tolist() == ends
    assert np.isnan(run.completion_day[run.auto_cleared]).all()
    assert np.diff(np.sort(run.start_day[run.read])).min() > 0  # one read at a time
    if cap is not None and policy != "fifo":
        assert not np.array_equal(
            order, _slow_queue(arrival, priority, run.read, policy, rate, None)[0]
        ), "the case should exercise the cap"


# --------------------------------------------------------------------------- 3. aging cap
def _aging_case():
    """1,000 low-priority pile studies, then 30 days of high-priority inflow at 90% capacity."""
    rng = np.random.default_rng(5)
    inflow = daily_inflow(90, 30, seed=1)
    arrival = np.concatenate([np.zeros(1000), inflow])
    priority = np.concatenate([rng.uniform(0, 0.5, 1000), rng.uniform(0.5, 1, inflow.size)])
    return arrival, priority, ["uncertain"] * arrival.size


def test_aging_cap_bounds_every_wait():
    arrival, priority, bucket = _aging_case()
    c, cap = 100.0, 2.0
    capped = simulate_queue(
        arrival,
        priority,
        bucket,
        policy="priority",
        config=QueueConfig(reads_per_day=c, aging_cap_days=cap),
    )
    uncapped = simulate_queue(
        arrival,
        priority,
        bucket,
        policy="priority",
        config=QueueConfig(reads_per_day=c, aging_cap_days=None),
    )
    # Without a cap the pile waits for every inflow study: its last study is read at the end.
    last = np.nanmax(uncapped.completion_day)
    assert np.nanmax(uncapped.wait_days[:1000]) > last - 1.0
    # With the cap: once a study has aged (start > arrival + cap) only studies ahead of it in
    # arrival order are read before it, so wait <= cap + (1 + U) / C with U = studies ahead of
    # it in arrival order not yet started at its aging time.
    key = np.lexsort((np.arange(arrival.size), arrival))
    place = np.empty_like(key)
    place[key] = np.arange(key.size)
    start = capped.start_day
    order = capped.read_order
    for k in range(0, order.size, 7):
        i, before = order[k], order[:k]
        u = np.count_nonzero((place < place[i]) & (start > arrival[i] + cap))
        assert capped.wait_days[i] <= cap + (1 + u) / c + 1e-9
        read_after_aging = before[start[before] > arrival[i] + cap]
        assert (place[read_after_aging] < place[i]).all()
    assert np.count_nonzero(capped.wait_days > cap) > 1000  # the bound's second term matters
    assert np.nanmax(capped.wait_days) < np.nanmax(uncapped.wait_days) / 2


def test_aging_cap_is_a_no_op_for_fifo():
    arrival, priority, bucket = _aging_case()
    runs = [
        simulate_queue(
            arrival, priority, bucket, policy="fifo", config=QueueConfig(aging_cap_days=a)
        )
        for a in (None, 0.0, 2.0)
    ]
    assert all(np.array_equal(r.read_order, runs[0].read_order) for r in runs)


# --------------------------------------------------------------------------- 4. auto-clear
def test_autoclear_only_clears_clear_bucket_with_the_quota():
    arrival, priority, bucket = _random_case(7, n=400)
    cfg = QueueConfig(reads_per_day=4.0, reread_fraction=0.1)
    run = simulate_queue(arrival, priority, bucket, policy="priority_autoclear", config=cfg, seed=3)
    clear = bucket == "clear"
    assert not run.auto_cleared[~clear].any() and run.read[~clear].all()
    assert not (run.reread & ~clear).any()
    assert run.reread.sum() == math.floor(0.1 * clear.sum() + 0.5)  # round half up
    assert (run.auto_cleared == (clear & ~run.reread)).all()
    assert run.read[run.reread].all() and np.isfinite(run.completion_day[run.reread]).all()
    again = simulate_queue(
        arrival, priority, bucket, policy="priority_autoclear", config=cfg, seed=3
    )
    assert np.array_equal(again.reread, run.reread)
    assert np.array_equal(again.read_order, run.read_order)
    other = simulate_queue(
        arrival, priority, bucket, policy="priority_autoclear", config=cfg, seed=4
    )
    assert not np.array_equal(other.reread, run.reread)
    for policy in ("fifo", "priority"):
        plain = simulate_queue(arrival, priority, bucket, policy=policy, config=cfg, seed=3)
        assert plain.read.all() and not plain.reread.any()


def test_reread_quota_rounds_half_up():
    bucket = ["clear"] * 10 + ["flag"]
    for fraction, expected in ((0.05, 1), (0.15, 2), (0.0, 0), (1.0, 10)):
        run = simulate_queue(
            np.zeros(11),
            np.zeros(11),
            bucket,
            policy="priority_autoclear",
            config=QueueConfig(reread_fraction=fraction),
        )
        assert run.reread.sum() == expected


# --------------------------------------------------------------------------- 5. input errors
_GOOD = ([0.0, 1.0, 2.0], [0.5, 0.1, 0.9], ["clear", "flag", "uncertain"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"priority": [0.5, 0.1]}, r"^priority: received an array of shape \(2,\)"),
        ({"bucket": ["clear"]}, r"^bucket: received an array of shape \(1,\)"),
        ({"arrival_day": [0.0, np.nan, 2.0]}, r"^arrival_day: received nan at row 1"),
        ({"arrival_day": [0.0, -1.0, 2.0]}, r"^arrival_day: received -1.0 at row 1.*>= 0"),
        ({"arrival_day": []}, r"^arrival_day: received an array of shape \(0,\)"),
        ({"priority": [0.5, np.inf, 0.1]}, r"^priority: received inf at row 1"),
        ({"bucket": ["clear", "maybe", "flag"]}, r"^bucket: received 'maybe' at row 1.*'clear'"),
        ({"policy": "lifo"}, r"^policy: received 'lifo'; expected one of \['fifo'"),
        ({"seed": -1}, r"^seed: received -1"),
        ({"config": {"reads_per_day": 1}}, r"^config: received dict"),
    ],
)
def test_simulate_rejects_bad_input(change, match):
    args = dict(zip(("arrival_day", "priority", "bucket"), _GOOD, strict=True))
    args.update({"policy": "priority", "config": QueueConfig(), "seed": 0})
    args.update(change)
    with pytest.raises(AuditInputError, match=match):
        simulate_queue(args.pop("arrival_day"), args.pop("priority"), args.pop("bucket"), **args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reads_per_day": 0.0}, r"^reads_per_day: received 0.0"),
        ({"reads_per_day": math.nan}, r"^reads_per_day: received nan"),
        ({"aging_cap_days": -1.0}, r"^aging_cap_days: received -1.0"),
        ({"reread_fraction": 1.5}, r"^reread_fraction: received 1.5; expected a number in"),
        ({"first_days": True}, r"^first_days: received True"),
    ],
)
def test_config_rejects_bad_settings(kwargs, match):
    with pytest.raises(AuditInputError, match=match):
        QueueConfig(**kwargs)


def test_compare_and_outcomes_reject_bad_truth():
    a, p, b = _GOOD
    with pytest.raises(AuditInputError, match=r"^p_critical: received 0.6 > p_abnormal 0.5"):
        compare_policies(a, p, b, [0.5, 0.5, 0.5], [0.6, 0.0, 0.0])
    with pytest.raises(AuditInputError, match=r"^p_abnormal: received 1.5 at row 2"):
        compare_policies(a, p, b, [0.5, 0.5, 1.5], [0.0, 0.0, 0.0])
    with pytest.raises(AuditInputError, match=r"^policies: received 'lifo'"):
        compare_policies(a, p, b, [0.5] * 3, [0.0] * 3, policies=("fifo", "lifo"))
    with pytest.raises(AuditInputError, match=r"^policies: .*each policy once"):
        compare_policies(a, p, b, [0.5] * 3, [0.0] * 3, policies=("fifo", "fifo"))
    run = simulate_queue(a, p, b, policy="fifo")
    with pytest.raises(AuditInputError, match=r"^critical: received a critical study at row 0"):
        queue_outcomes(run, [0, 1, 0], [1, 0, 0])
    with pytest.raises(AuditInputError, match=r"^abnormal: received 0.5 at row 1"):
        queue_outcomes(run, [0, 0.5, 0], [0, 0, 0])
    other = simulate_queue(a, p, b, policy="priority")
    with pytest.raises(AuditInputError, match=r"^fifo: received a 'priority' run of 3 studies"):
        queue_outcomes(run, [0, 1, 0], [0, 0, 0], fifo=other)


# --------------------------------------------------------------------------- outcomes
@pytest.mark.parametrize("policy", POLICIES)
def test_outcomes_match_study_by_study(policy):
    arrival, priority, bucket = _random_case(11, n=300)
    cfg = QueueConfig(reads_per_day=6.0, aging_cap_days=4.0, reread_fraction=0.2, first_days=15)
    run = simulate_queue(arrival, priority, bucket, policy=policy, config=cfg, seed=1)
    rng = np.random.default_rng(2)
    for _ in range(5):
        u = rng.random(arrival.size)
        abnormal, critical = u < 0.4, u < 0.08
        out = queue_outcomes(run, abnormal, critical)
        for metric, value in _slow_outcomes(run, abnormal, critical).items():
            assert out[metric] == pytest.approx(value, rel=1e-12, nan_ok=True), metric
    assert list(out) == list(TRIAGE_METRICS)


def test_throughput_multiplier_of_autoclear_pile():
    n, c = 1000, 100.0
    bucket = np.where(np.arange(n) % 4 == 0, "clear", "flag")  # a quarter cleared, no re-read
    run = simulate_queue(
        np.zeros(n),
        np.zeros(n),
        bucket,
        policy="priority_autoclear",
        config=QueueConfig(reads_per_day=c, reread_fraction=0.0),
    )
    out = queue_outcomes(run, np.zeros(n), np.zeros(n))
    assert out["days_to_clear_pile"] == 750 / c
    assert out["effective_throughput_multiplier"] == pytest.approx(n / 750, rel=1e-12)
    assert out["auto_cleared_share"] == 0.25 and out["reads_used"] == 750
    assert math.isnan(out["abnormal_yield_ratio_vs_fifo"])  # no FIFO run given


def test_daily_inflow():
    t = daily_inflow(50, 4, seed=1, poisson=False)
    assert t.size == 200 and np.all(np.diff(t) >= 0)
    assert np.bincount(np.ceil(t).astype(int) - 1).tolist() == [50] * 4
    assert np.array_equal(t, daily_inflow(50, 4, seed=1, poisson=False))
    p = daily_inflow(1000, 20, seed=2)
    assert 19_000 < p.size < 21_000 and p.min() > 0 and p.max() <= 20
    with pytest.raises(AuditInputError, match=r"^n_per_day: received 2.5"):
        daily_inflow(2.5, 3, poisson=False)
    with pytest.raises(AuditInputError, match=r"^days: received 0"):
        daily_inflow(5, 0)


# --------------------------------------------------------------------------- 6. comparison
def _study_set():
    rng = np.random.default_rng(3)
    arrival = np.concatenate([np.zeros(1500), daily_inflow(60, 10, seed=3)])
    n = arrival.size
    p_abn = rng.beta(0.6, 1.6, n)
    p_crit = p_abn * rng.beta(1.0, 4.0, n)
    bucket = np.where(p_abn < 0.1, "clear", np.where(p_abn > 0.6, "flag", "uncertain"))
    return arrival, p_abn + p_crit, bucket, p_abn, p_crit


def test_compare_policies_table():
    args = _study_set()
    cfg = QueueConfig(reads_per_day=100.0, aging_cap_days=5.0, reread_fraction=0.1, first_days=4)
    table = compare_policies(*args, config=cfg, n_draws=300, seed=4)
    assert list(table["policy"].unique()) == list(POLICIES)
    assert table.groupby("policy")["metric"].apply(list).map(list(TRIAGE_METRICS).__eq__).all()
    finite = table.dropna(subset=["estimate"])
    assert (finite["ci_low"] <= finite["estimate"]).all()
    assert (finite["estimate"] <= finite["ci_high"]).all()
    fixed = table[~table["depends_on_truth"]]
    assert (fixed["ci_low"] == fixed["estimate"]).all() and (
        fixed["ci_high"] == fixed["estimate"]
    ).all()
    assert set(table.loc[table["depends_on_truth"], "metric"]) == set(TRUTH_METRICS)
    fifo = table[table["policy"] == "fifo"].set_index("metric")
    for ratio in ("abnormal_yield_ratio_vs_fifo", "days_to_clear_pile_ratio_vs_fifo"):
        assert fifo.loc[ratio, ["estimate", "ci_low", "ci_high"]].tolist() == [1.0, 1.0, 1.0]
    assert (fifo.loc[["missed_abnormal_pile", "missed_critical_pile"], "ci_high"] == 0).all()
    # The estimate of a count is the mean over draws: it agrees with its expectation.
    run = simulate_queue(*args[:3], policy="priority", config=cfg, seed=4)
    window = run.read & (run.completion_day <= cfg.first_days)
    p = args[3][window]
    prio = table[table["policy"] == "priority"].set_index("metric")
    se = math.sqrt((p * (1 - p)).sum() / 300)
    assert abs(prio.loc["abnormal_read_in_first_days", "estimate"] - p.sum()) < 4 * se
    assert prio.loc["abnormal_yield_ratio_vs_fifo", "ci_low"] > 1.0  # triage finds more, early
    auto = table[table["policy"] == "priority_autoclear"].set_index("metric")
    assert auto.loc["missed_abnormal_pile", "estimate"] > 0
    assert auto.loc["days_to_clear_pile_ratio_vs_fifo", "estimate"] < 1.0
    # settings travel with the table
    settings = table.iloc[0][["reads_per_day", "aging_cap_days", "reread_fraction", "first_days"]]
    assert settings.tolist() == [100.0, 5.0, 0.1, 4.0]
    assert table.iloc[0][["n_draws", "seed", "n_studies", "n_pile"]].tolist() == [
        300,
        4,
        args[0].size,
        1500,
    ]
    again = compare_policies(*args, config=cfg, n_draws=300, seed=4)
    pd.testing.assert_frame_equal(table, again)
    other = compare_policies(*args, config=cfg, n_draws=300, seed=5)
    assert not table["estimate"].equals(other["estimate"])


def test_compare_policies_subset_and_no_cap():
    args = _study_set()
    cfg = QueueConfig(reads_per_day=100.0, aging_cap_days=None)
    table = compare_policies(*args, config=cfg, policies=("priority",), n_draws=20)
    assert set(table["policy"]) == {"priority"}
    assert table["aging_cap_days"].isna().all()
    ratio = table.set_index("metric").loc["abnormal_yield_ratio_vs_fifo"]
    assert ratio["n_valid"] == 20 and ratio["estimate"] > 1.0
