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
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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


@dataclass(frozen=True)
class CellBootstrap:
    """Bootstrap replicates of one cell and their percentile intervals.

    Attributes
    ----------
    replicates : dict of str to ndarray
        ``replicates[metric]`` = ndarray of shape ``(n_boot,)`` (``NaN`` = degenerate replicate).
    intervals : dict of str to float
        ``"<metric>_ci_low"`` and ``"<metric>_ci_high"`` for every metric, ready for
        ``row.update(...)``.
    """

    replicates: dict[str, np.ndarray] = field(repr=False)
    intervals: dict[str, float]

    @property
    def n_valid(self) -> int:
        """Fewest finite replicates of any metric (the replicates behind the weakest interval)."""
        return int(np.min([np.isfinite(r).sum() for r in self.replicates.values()]))


@dataclass(frozen=True)
class GroupBootstrap(Generic[Plan]):
    """Clustered-bootstrap intervals of the cells of a group: one audit call's settings.

    Build it once per audit call, then :meth:`run` it on each group's cell plans. Each group draws
    from its own stream ``derive_rng(seed, key)``; all plans of a group share its draws
    (:func:`bootstrap_plans`), and each metric's interval is :func:`percentile_ci` of its
    replicates.

    Attributes
    ----------
    statistic : callable
        ``statistic(plan, chunk)`` returns each metric for the ``chunk.shape[1]`` replicates of
        ``chunk`` (counts from :func:`iter_count_chunks`).
    metrics : sequence of str
        Metrics bootstrapped, in the order of the returned dicts.
    n_boot : int
        Replicates (``0``: no intervals).
    ci_level : float
        Interval coverage, in ``(0, 1)``.
    seed : int
        The user's seed; checked by :func:`derive_rng` when something is drawn.
    chunk_size : int
        Replicates per chunk (memory only; results do not depend on it).

    Raises
    ------
    AuditInputError
        On a negative ``n_boot`` or a ``ci_level`` outside ``(0, 1)``.

    Examples
    --------
    >>> mat = segment_matrix(np.zeros(4, int), np.arange(4), 1, 4, np.array([0.0, 1, 1, 0]))
    >>> def mean(plan, chunk):
    ...     return {"mean": np.asarray(plan @ chunk)[0] / 4}
    >>> cells = GroupBootstrap(mean, ("mean",), 200, 0.9, 0).run({0: mat}, n_clusters=4, key="a")
    >>> lo, hi = cells[0].intervals["mean_ci_low"], cells[0].intervals["mean_ci_high"]
    >>> bool(0.0 <= lo < 0.5 < hi <= 1.0), cells[0].n_valid
    (True, 200)
    """

    statistic: Callable[[Plan, np.ndarray], Mapping[str, np.ndarray]]
    metrics: Sequence[str]
    n_boot: int
    ci_level: float
    seed: int
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        check_positive_int("n_boot", self.n_boot, minimum=0)
        check_ci_level(self.ci_level)

    def run(
        self, plans: Mapping[int, Plan], *, n_clusters: int, key: str
    ) -> dict[int, CellBootstrap]:
        """Replicates and percentile intervals of every cell plan of one group.

        Parameters
        ----------
        plans : mapping of int to plan
            Per target index, whatever ``statistic`` needs (e.g. a :func:`segment_matrix`).
        n_clusters : int, keyword-only
            Clusters (patients) of the group.
        key : str, keyword-only
            The group's stream name (e.g. the group label), see :func:`derive_rng`.

        Returns
        -------
        dict of int to CellBootstrap
            Per target index, in the order of ``plans``; ``{}`` when there is no plan or
            ``n_boot == 0`` (then nothing is drawn and ``seed`` is not checked).

        Raises
        ------
        AuditInputError
            On an invalid ``seed`` or ``chunk_size`` when there is something to bootstrap.
        """
        if not plans or self.n_boot == 0:
            return {}
        reps = bootstrap_plans(
            plans,
            self.statistic,
            self.metrics,
            n_clusters=n_clusters,
            n_boot=self.n_boot,
            rng=derive_rng(self.seed, key),
            chunk_size=self.chunk_size,
        )
        cells: dict[int, CellBootstrap] = {}
        for t, per_metric in reps.items():
            intervals: dict[str, float] = {}
            for m in self.metrics:
                intervals[f"{m}_ci_low"], intervals[f"{m}_ci_high"] = percentile_ci(
                    per_metric[m], self.ci_level
                )
            cells[t] = CellBootstrap(replicates=per_metric, intervals=intervals)
        return cells


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
