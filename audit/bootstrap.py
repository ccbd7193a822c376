"""Vectorised (clustered) bootstrap: all replicates as one count matrix.

The bootstrap resamples *clusters* (patients) with replacement. Replicate ``b`` is fully described
by the count vector ``counts[b, k]`` = how many times cluster ``k`` was drawn; a row's weight is the
count of its cluster. All replicates are generated with one ``rng.integers`` and one
``np.bincount`` over flattened offsets, then processed in chunks of replicates (transposed to
``(n_clusters, chunk)``).

Any statistic that is a function of per-segment weight sums (AUROC, AP, threshold metrics, binned
calibration error, Brier score) is then computed for all replicates at once as
``S @ counts.T``, where ``S`` is a sparse ``(n_segments, n_clusters)`` matrix holding, for each
segment (e.g. "positives with score in block j") and cluster, the sum of the rows' values.

The random stream does not depend on the chunk size: ``rng.integers`` drawn chunk by chunk yields
the same values as one call, so results are identical whatever ``chunk_size`` is.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import numpy as np
import scipy.sparse as sp

from .types import AuditInputError, check_ci_level, check_positive_int

DEFAULT_CHUNK_SIZE = 200
Plan = TypeVar("Plan")


def derive_rng(seed: int, key: str) -> np.random.Generator:
    """Independent generator for one cell family (e.g. one group), stable across runs.

    The stream depends only on ``seed`` and ``key`` (via CRC-32 of the key), so adding or removing
    another group does not change this group's confidence intervals.

    Parameters
    ----------
    seed : int
        The user's seed.
    key : str
        What the stream is for (e.g. the group label).

    Returns
    -------
    numpy.random.Generator

    Examples
    --------
    >>> a = derive_rng(0, "site_a").integers(0, 100, 3)
    >>> b = derive_rng(0, "site_a").integers(0, 100, 3)
    >>> bool((a == b).all())
    True
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise AuditInputError("seed", repr(seed), "a non-negative int", "pass e.g. seed=0")
    return np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])


def bootstrap_counts(n_clusters: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster draw counts of ``n_boot`` bootstrap replicates.

    Parameters
    ----------
    n_clusters : int
        Number of clusters (patients) to resample.
    n_boot : int
        Number of replicates.
    rng : numpy.random.Generator
        Source of randomness (advanced by ``n_boot * n_clusters`` draws).

    Returns
    -------
    ndarray of shape (n_boot, n_clusters), int64
        ``counts[b, k]`` = times cluster ``k`` is drawn in replicate ``b``; each row sums to
        ``n_clusters``.

    Examples
    --------
    >>> c = bootstrap_counts(4, 2, np.random.default_rng(0))
    >>> c.shape, c.sum(axis=1).tolist()
    ((2, 4), [4, 4])
    """
    draws = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    offsets = (np.arange(n_boot, dtype=np.int64) * n_clusters)[:, None]
    flat = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_clusters)
    return flat.reshape(n_boot, n_clusters)


def iter_count_chunks(
    n_clusters: int, n_boot: int, rng: np.random.Generator, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[np.ndarray]:
    """Yield the replicates' counts transposed, ``(n_clusters, chunk)`` float64, chunk by chunk.

    Parameters
    ----------
    n_clusters, n_boot : int
        As in :func:`bootstrap_counts`.
    rng : numpy.random.Generator
        Source of randomness.
    chunk_size : int
        Replicates per chunk (memory: ``8 * n_clusters * chunk_size`` bytes per chunk).

    Yields
    ------
    ndarray of shape (n_clusters, chunk)
        C-contiguous, ready for ``sparse_matrix @ chunk``.
    """
    chunk_size = check_positive_int("chunk_size", chunk_size)
    done = 0
    while done < n_boot:
        b = min(chunk_size, n_boot - done)
        yield np.ascontiguousarray(bootstrap_counts(n_clusters, b, rng).T, dtype=np.float64)
        done += b


def bootstrap_plans(
    plans: Mapping[int, Plan],
    statistic: Callable[[Plan, np.ndarray], Mapping[str, np.ndarray]],
    metrics: Sequence[str],
    *,
    n_clusters: int,
    n_boot: int,
    rng: np.random.Generator,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[int, dict[str, np.ndarray]]:
    """Bootstrap replicates of ``metrics`` for every cell plan of one group, chunk by chunk.

    Parameters
    ----------
    plans : mapping of int to plan
        Per target index, whatever ``statistic`` needs (e.g. a segment matrix).
    statistic : callable
        ``statistic(plan, chunk)`` returns each metric for the ``chunk.shape[1]`` replicates of
        ``chunk`` (counts from :func:`iter_count_chunks`).
    metrics : sequence of str
        Metrics kept from what ``statistic`` returns.
    n_clusters, n_boot, rng, chunk_size
        As in :func:`iter_count_chunks` (all plans share the group's clusters and draws).

    Returns
    -------
    dict
        ``replicates[target index][metric]`` = ndarray of shape ``(n_boot,)``.
    """
    reps = {t: {m: np.empty(n_boot) for m in metrics} for t in plans}
    start = 0
    for chunk in iter_count_chunks(n_clusters, n_boot, rng, chunk_size=chunk_size):
        stop = start + chunk.shape[1]
        for t, plan in plans.items():
            values = statistic(plan, chunk)
            for m in metrics:
                reps[t][m][start:stop] = values[m]
        start = stop
    return reps


def segment_matrix(
    segment: np.ndarray,
    cluster: np.ndarray,
    n_segments: int,
    n_clusters: int,
    values: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Sparse ``(n_segments, n_clusters)`` matrix of per-(segment, cluster) sums of row values.

    ``segment_matrix(...) @ counts_T`` gives, for every replicate, the weighted sum of ``values``
    over the rows of each segment. Rows with a negative segment id are left out.

    Parameters
    ----------
    segment : ndarray of int, shape (m,)
        Segment of each row (``-1`` = none).
    cluster : ndarray of int, shape (m,)
        Cluster code of each row, in ``[0, n_clusters)``.
    n_segments, n_clusters : int
        Matrix shape.
    values : ndarray of shape (m,), optional
        Row values (default 1: row counts).

    Returns
    -------
    scipy.sparse.csr_matrix
    """
    keep = segment >= 0
    data = np.ones(int(keep.sum())) if values is None else np.asarray(values, float)[keep]
    mat = sp.coo_matrix(
        (data, (segment[keep], cluster[keep])), shape=(n_segments, n_clusters)
    ).tocsr()
    mat.sum_duplicates()
    return mat


def percentile_ci(replicates: np.ndarray, ci_level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval, ignoring ``NaN`` (degenerate) replicates.

    Parameters
    ----------
    replicates : ndarray of shape (n_boot,)
        Bootstrap replicates of a statistic.
    ci_level : float
        Coverage, e.g. 0.95.

    Returns
    -------
    (float, float)
        Lower and upper bounds (``numpy.quantile``, linear interpolation); ``(nan, nan)`` when no
        replicate is finite.

    Examples
    --------
    >>> [round(v, 6) for v in percentile_ci(np.arange(101.0), 0.9)]
    [5.0, 95.0]
    """
    ci_level = check_ci_level(ci_level)
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - ci_level
    lo, hi = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)
