"""Discrete-event simulation of a radiology reading queue under a triage policy.

A model sits in front of a reading queue: each study has a ``priority`` (e.g. calibrated
P(abnormal) x a severity proxy; higher = read sooner) and a ``bucket``: ``"clear"`` (the model
would auto-clear it as normal), ``"uncertain"`` or ``"flag"`` (likely abnormal). Out-of-scope
studies are never cleared: the caller puts them in ``"uncertain"``.

Time model (working-time days). Readers have a capacity of ``reads_per_day`` reads per day at a
constant rate. Reads happen in slots: within a busy period that started at ``t0`` (time 0, or the
arrival that ended an idle spell), the ``j``-th read starts at ``t0 + j / reads_per_day`` and
completes at ``t0 + (j + 1) / reads_per_day``. A study can be picked by a slot only if its
arrival is ``<=`` the slot's start; when no study is waiting the reader idles until the next
arrival, where a new busy period starts. The *pile* (backlog) is every study with arrival ``0.0``.

Policies (:data:`Policy`):

* ``"fifo"``: arrival order, ties by index;
* ``"priority"``: highest ``priority`` first among the arrived studies, ties by arrival, then
  index;
* ``"priority_autoclear"``: like ``"priority"``, but ``"clear"`` studies are not read: they are
  disposed (auto-cleared) at their arrival, except a re-read quota of ``round_half_up(
  reread_fraction * n_clear)`` of them, chosen with ``derive_rng(seed, "reread")``, which stay in
  the reading queue at their priority and use read capacity.

Every policy has an aging cap: a study is *aged* at a slot starting at ``s`` when
``arrival + aging_cap_days < s``; aged studies are read before any other, among themselves in
arrival order (ties by index), so nothing waits for ever. Consequence: once a study has aged, only
studies ahead of it in arrival order are read before it, so its wait is at most
``aging_cap_days + (1 + U) / reads_per_day``, ``U`` = studies ahead of it in arrival order still
unread at its aging time.

The read order depends only on arrivals, priorities, buckets and the re-read choice, never on the
(unknown) truth, so :func:`simulate_queue` computes it once (heaps, ``O(n log n)``); outcomes under
imputed truth are computed from it by :mod:`clinaudit.audit.triage_outcomes`.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from .bootstrap import derive_rng
from .triage_inputs import BUCKETS, check_buckets, check_study_array, is_number
from .types import AuditInputError, check_option

__all__ = [
    "BUCKETS",
    "POLICIES",
    "Policy",
    "QueueConfig",
    "QueueRun",
    "daily_inflow",
    "simulate_queue",
]

Policy = Literal["fifo", "priority", "priority_autoclear"]
POLICIES: tuple[str, ...] = get_args(Policy)


@dataclass(frozen=True)
class QueueConfig:
    """Reading capacity and triage settings of one simulation.

    Attributes
    ----------
    reads_per_day : float
        Reads per working day, ``> 0`` (e.g. 3 radiologists x 6 h x 60 reads/h = 1080).
    aging_cap_days : float or None
        A study waiting longer than this (``arrival + aging_cap_days < slot start``) is read
        before any non-aged study; ``None``: no cap. ``>= 0``.
    reread_fraction : float
        Share of ``"clear"`` studies kept in the reading queue under ``"priority_autoclear"``
        (a random re-read quota), in ``[0, 1]``.
    first_days : float
        Window of the "abnormal studies read in the first days" metric, ``> 0``.

    Examples
    --------
    >>> QueueConfig(reads_per_day=100.0).aging_cap_days
    3.0
    """

    reads_per_day: float = 1080.0
    aging_cap_days: float | None = 3.0
    reread_fraction: float = 0.05
    first_days: float = 10.0

    def __post_init__(self) -> None:
        checks = (
            ("reads_per_day", self.reads_per_day, lambda v: v > 0, "a finite number > 0"),
            ("aging_cap_days", self.aging_cap_days, lambda v: v >= 0, "None or a number >= 0"),
            ("reread_fraction", self.reread_fraction, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
            ("first_days", self.first_days, lambda v: v > 0, "a finite number > 0"),
        )
        for name, value, ok, expected in checks:
            if name == "aging_cap_days" and value is None:
                continue
            if not (is_number(value) and math.isfinite(value) and ok(value)):  # type: ignore[arg-type]
                raise AuditInputError(
                    name, repr(value), expected, f"pass QueueConfig({name}=...) with {expected}"
                )


@dataclass(frozen=True, eq=False)
class QueueRun:
    """The read order of one policy: when each study was read, or that it was auto-cleared.

    Arrays are read-only, one value per study in input order.

    Attributes
    ----------
    policy : str
        The policy simulated.
    config : QueueConfig
        The settings used.
    seed : int
        Seed of the re-read choice.
    arrival_day : ndarray of float
        Arrival time (days).
    in_pile : ndarray of bool
        Part of the backlog (arrival ``== 0.0``).
    start_day, completion_day : ndarray of float
        Start and completion of the read; ``NaN`` when not read (auto-cleared).
    read, auto_cleared, reread : ndarray of bool
        Read; auto-cleared (never read); a ``"clear"`` study kept for reading by the re-read quota.
    read_order : ndarray of int
        Study indices in the order they were read.
    """

    policy: str
    config: QueueConfig
    seed: int
    arrival_day: np.ndarray = field(repr=False)
    in_pile: np.ndarray = field(repr=False)
    start_day: np.ndarray = field(repr=False)
    completion_day: np.ndarray = field(repr=False)
    read: np.ndarray = field(repr=False)
    auto_cleared: np.ndarray = field(repr=False)
    reread: np.ndarray = field(repr=False)
    read_order: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        for value in vars(self).values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)

    @property
    def disposal_day(self) -> np.ndarray:
        """When each study left the queue: its read's completion, or its arrival if auto-cleared."""
        return np.where(self.read, self.completion_day, self.arrival_day)

    @property
    def wait_days(self) -> np.ndarray:
        """Wait before the read started (``start - arrival``); ``NaN`` when not read."""
        return self.start_day - self.arrival_day


def _reread_choice(clear: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mask of the ``round_half_up(fraction * n_clear)`` clear studies kept for reading."""
    idx = np.flatnonzero(clear)
    k = min(int(math.floor(fraction * idx.size + 0.5)), idx.size)
    chosen = np.zeros(clear.size, dtype=bool)
    chosen[derive_rng(seed, "reread").choice(idx, size=k, replace=False)] = True
    return chosen


def _read_slots(
    arrival: np.ndarray, rank: np.ndarray, queued: np.ndarray, rate: float, cap: float | None
) -> tuple[list[int], list[float], list[float]]:
    """Read order, starts and completions of the queued studies (heaps, ``O(n log n)``).

    ``rank[i]`` is study ``i``'s place in the policy's order (0 = read first when all have
    arrived). Aged studies form a prefix of the arrival order (``arrival + cap`` is monotone), so
    one pointer walks them; the priority heap drops studies already read by aging lazily.
    """
    idx = np.flatnonzero(queued)
    by_arrival = idx[np.argsort(arrival[idx], kind="stable")].tolist()
    arrive = arrival[by_arrival].tolist()
    deadline = (arrival[by_arrival] + cap).tolist() if cap is not None else None
    study_of_rank = np.argsort(rank).tolist()
    rank_l = rank.tolist()
    done = bytearray(arrival.size)
    heap: list[int] = []
    order: list[int] = []
    starts: list[float] = []
    ends: list[float] = []
    n_q, p, q, t0, j = len(by_arrival), 0, 0, 0.0, 0
    while len(order) < n_q:
        s = t0 + j / rate
        while p < n_q and arrive[p] <= s:
            heapq.heappush(heap, rank_l[by_arrival[p]])
            p += 1
        pick = -1
        if deadline is not None:
            while q < p and done[by_arrival[q]]:
                q += 1
            if q < p and deadline[q] < s:
                pick = by_arrival[q]
        if pick < 0:
            while heap and done[study_of_rank[heap[0]]]:
                heapq.heappop(heap)
            if not heap:  # nothing waiting: idle until the next arrival
                t0, j = arrive[p], 0
                continue
            pick = study_of_rank[heapq.heappop(heap)]
        done[pick] = 1
        order.append(pick)
        starts.append(s)
        ends.append(t0 + (j + 1) / rate)
        j += 1
    return order, starts, ends


def simulate_queue(
    arrival_day: Any,
    priority: Any,
    bucket: Any,
    *,
    policy: Policy,
    config: QueueConfig = QueueConfig(),
    seed: int = 0,
) -> QueueRun:
    """Simulate the reading queue under one policy (see the module docstring for the rules).

    Parameters
    ----------
    arrival_day : array-like of shape (n,)
        Arrival time of each study in working days, finite, ``>= 0``; ``0.0`` = the pile.
    priority : array-like of shape (n,)
        Finite; higher = read sooner (``"priority"`` policies).
    bucket : array-like of shape (n,)
        ``"clear"``, ``"uncertain"`` or ``"flag"``.
    policy : {"fifo", "priority", "priority_autoclear"}, keyword-only
        The triage policy.
    config : QueueConfig, keyword-only
        Capacity, aging cap and re-read quota.
    seed : int, keyword-only
        Seed of the re-read choice (``derive_rng(seed, "reread")``).

    Returns
    -------
    QueueRun

    Raises
    ------
    AuditInputError
        On mismatched lengths, ``NaN`` or negative arrivals, non-finite priorities, an unknown
        bucket or policy, or an invalid seed.

    Examples
    --------
    >>> run = simulate_queue([0, 0, 0], [0.1, 0.9, 0.5], ["flag"] * 3, policy="priority",
    ...                      config=QueueConfig(reads_per_day=2.0))
    >>> run.read_order.tolist(), run.completion_day.tolist()
    ([1, 2, 0], [1.5, 0.5, 1.0])
    """
    policy = check_option("policy", policy, POLICIES)  # type: ignore[assignment]
    if not isinstance(config, QueueConfig):
        raise AuditInputError(
            "config", type(config).__name__, "a QueueConfig", "pass config=QueueConfig(...)"
        )
    arrival = check_study_array("arrival_day", arrival_day, low=0.0)
    n = arrival.size
    prio = check_study_array("priority", priority, n)
    buckets = check_buckets(bucket, n)
    derive_rng(seed, "reread")  # checks the seed whatever the policy
    index = np.arange(n)
    if policy == "fifo":
        order_key = np.lexsort((index, arrival))
    else:
        order_key = np.lexsort((index, arrival, -prio))
    rank = np.empty(n, dtype=np.int64)
    rank[order_key] = index
    reread = np.zeros(n, dtype=bool)
    auto_cleared = np.zeros(n, dtype=bool)
    if policy == "priority_autoclear":
        clear = buckets == "clear"
        reread = _reread_choice(clear, float(config.reread_fraction), int(seed))
        auto_cleared = clear & ~reread
    cap = None if config.aging_cap_days is None else float(config.aging_cap_days)
    order, starts, ends = _read_slots(
        arrival, rank, ~auto_cleared, float(config.reads_per_day), cap
    )
    read_order = np.array(order, dtype=np.int64)
    start = np.full(n, np.nan)
    completion = np.full(n, np.nan)
    start[read_order] = starts
    completion[read_order] = ends
    return QueueRun(
        policy=policy,
        config=config,
        seed=int(seed),
        arrival_day=arrival,
        in_pile=arrival == 0.0,
        start_day=start,
        completion_day=completion,
        read=~auto_cleared,
        auto_cleared=auto_cleared,
        reread=reread,
        read_order=read_order,
    )


def daily_inflow(n_per_day: float, days: int, *, seed: int = 0, poisson: bool = True) -> np.ndarray:
    """Arrival times of daily inflow, spread uniformly within each day.

    Day ``d`` (``d = 0, ..., days - 1``) receives ``Poisson(n_per_day)`` studies (exactly
    ``n_per_day`` when ``poisson=False``) at times uniform in ``(d, d + 1]``, so no inflow study
    falls on ``0.0`` (the pile). Stream: ``derive_rng(seed, "inflow")``.

    Parameters
    ----------
    n_per_day : float
        Mean studies per day, ``>= 0`` (an integer when ``poisson=False``).
    days : int
        Days of inflow, ``>= 1``.
    seed : int, keyword-only
        Seed.
    poisson : bool, keyword-only
        Poisson daily counts (default) or exactly ``n_per_day`` a day.

    Returns
    -------
    ndarray of float
        Sorted arrival times in days.

    Examples
    --------
    >>> t = daily_inflow(3, 2, poisson=False)
    >>> t.size, bool((t > 0).all() and (t <= 2).all())
    (6, True)
    """
    integral = is_number(n_per_day) and float(n_per_day) == int(n_per_day)
    if not (is_number(n_per_day) and 0 <= n_per_day < math.inf) or (not poisson and not integral):
        raise AuditInputError(
            "n_per_day",
            repr(n_per_day),
            "a number >= 0 (an integer when poisson=False)",
            "pass e.g. n_per_day=1000",
        )
    if isinstance(days, bool) or not isinstance(days, int | np.integer) or days < 1:
        raise AuditInputError("days", repr(days), "an integer >= 1", "pass e.g. days=20")
    rng = derive_rng(seed, "inflow")
    counts = rng.poisson(n_per_day, days) if poisson else np.full(days, int(n_per_day))
    day = np.repeat(np.arange(days, dtype=np.float64), counts)
    return np.sort(day + (1.0 - rng.random(day.size)))
