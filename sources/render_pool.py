"""Run a simulator's rendering chunks in worker processes (or in this one), results in order.

The simulators render images chunk by chunk with seeds derived per image, so the bytes written do
not depend on how many workers ran them; this module only decides where the chunks run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

__all__ = ["chunk_size", "render_chunks", "worker_count"]

T = TypeVar("T")


def worker_count(workers: int | None) -> int:
    """``workers``, or ``min(cpu_count, 8)`` when ``None``.

    Raises
    ------
    ValueError
        If ``workers`` is below 1.
    """
    n = min(os.cpu_count() or 1, 8) if workers is None else int(workers)
    if n < 1:
        raise ValueError(f"workers={workers}; expected >= 1 or None")
    return n


def chunk_size(n_items: int, n_workers: int, *, largest: int) -> int:
    """Items per chunk: about four chunks per worker, at most ``largest``."""
    return max(1, min(largest, math.ceil(n_items / (n_workers * 4))))


def render_chunks(
    fn: Callable[[Any], Sequence[T]], tasks: Sequence[Any], n_workers: int
) -> list[T]:
    """``fn(task)`` for every task (in this process when ``n_workers == 1``), concatenated in
    task order. ``fn`` must be a module-level function (it is pickled to the workers)."""
    results: list[T] = []
    if n_workers == 1:
        for task in tasks:
            results.extend(fn(task))
        return results
    with ProcessPoolExecutor(max_workers=n_workers) as pool:
        for part in pool.map(fn, tasks):
            results.extend(part)
    return results
