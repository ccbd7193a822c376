"""Multivariate two-sample test: unbiased MMD^2 with a Gaussian kernel and a permutation p-value.

The bandwidth is the median heuristic on the pooled sample; every permutation's statistic comes
from one kernel matrix (``K @ P.T`` with ``P`` the 0/1 permutation indicators), so ``n_perm``
permutations cost one matrix product. Used by :func:`clinaudit.audit.drift.drift_table`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import AuditInputError, check_positive_int

__all__ = ["MMDResult", "gaussian_kernel_median", "mmd_permutation_test", "permutation_indicators"]


@dataclass(frozen=True)
class MMDResult:
    """Result of :func:`mmd_permutation_test`."""

    mmd2: float
    p_value: float
    bandwidth: float
    n_x: int
    n_y: int
    n_perm: int


def permutation_indicators(n_x: int, n_y: int, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """0/1 matrix ``(n_perm, n_x + n_y)``: row ``r`` marks the "x" rows of permutation ``r``.

    Examples
    --------
    >>> p = permutation_indicators(2, 3, 4, np.random.default_rng(0))
    >>> p.shape, p.sum(axis=1).tolist()
    ((4, 5), [2.0, 2.0, 2.0, 2.0])
    """
    base = np.concatenate([np.ones(n_x), np.zeros(n_y)])
    return rng.permuted(np.tile(base, (n_perm, 1)), axis=1)


def _mmd2_many(
    kernel: np.ndarray, row_sums: np.ndarray, total: float, ind: np.ndarray, n_x: int
) -> np.ndarray:
    """Unbiased MMD^2 for each indicator row of ``ind`` (Gaussian kernel: diagonal of ones)."""
    n_y = kernel.shape[0] - n_x
    k_a = kernel @ ind.T  # (N, n_perm): the only O(N^2 n_perm) step
    a_k_a = np.einsum("ij,ji->i", ind, k_a)
    a_r = ind @ row_sums
    a_k_b = a_r - a_k_a
    b_k_b = total - 2.0 * a_r + a_k_a
    return (
        (a_k_a - n_x) / (n_x * (n_x - 1))
        + (b_k_b - n_y) / (n_y * (n_y - 1))
        - 2.0 * a_k_b / (n_x * n_y)
    )


def gaussian_kernel_median(pooled: np.ndarray) -> tuple[np.ndarray, float]:
    """Gaussian kernel matrix ``exp(-d^2 / (2 s^2))`` with ``s`` = median pairwise distance.

    Zero distances are left out of the median; when every distance is zero, ``s = 1``.
    """
    sq = np.sum(pooled * pooled, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (pooled @ pooled.T), 0.0)
    np.fill_diagonal(d2, 0.0)
    upper = d2[np.triu_indices(d2.shape[0], k=1)]
    upper = upper[upper > 0]
    bandwidth = float(np.sqrt(np.median(upper))) if upper.size else 1.0
    return np.exp(-d2 / (2.0 * bandwidth * bandwidth)), bandwidth


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, *, n_perm: int = 1000, rng: np.random.Generator
) -> MMDResult:
    """Permutation test of equal distributions with the unbiased MMD^2 (Gaussian kernel).

    Parameters
    ----------
    x : ndarray of shape (n_x, d)
        Sample (e.g. a site), already standardized.
    y : ndarray of shape (n_y, d)
        Reference sample, same columns.
    n_perm : int, keyword-only
        Permutations.
    rng : numpy.random.Generator, keyword-only
        Source of the permutations (:func:`permutation_indicators`).

    Returns
    -------
    MMDResult
        ``p_value = (1 + #{perm >= observed}) / (1 + n_perm)``.

    Examples
    --------
    >>> g = np.random.default_rng(0)
    >>> r = mmd_permutation_test(g.normal(size=(30, 2)), g.normal(2, 1, size=(30, 2)), n_perm=99,
    ...                          rng=np.random.default_rng(1))
    >>> r.p_value
    0.01
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise AuditInputError(
            "x, y",
            f"shapes {x.shape} and {y.shape}",
            "2-D arrays with the same columns",
            "pass (rows, features) arrays",
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise AuditInputError(
            "x, y", f"{x.shape[0]} and {y.shape[0]} rows", "at least 2 rows each", "add rows"
        )
    n_perm = check_positive_int("n_perm", n_perm)
    n_x = x.shape[0]
    kernel, bandwidth = gaussian_kernel_median(np.vstack([x, y]))
    row_sums = kernel.sum(axis=1)
    total = float(row_sums.sum())
    observed_ind = np.concatenate([np.ones(n_x), np.zeros(y.shape[0])])[None, :]
    observed = float(_mmd2_many(kernel, row_sums, total, observed_ind, n_x)[0])
    perms = permutation_indicators(n_x, y.shape[0], n_perm, rng)
    stats = _mmd2_many(kernel, row_sums, total, perms, n_x)
    p = (1.0 + float(np.sum(stats >= observed))) / (1.0 + n_perm)
    return MMDResult(observed, p, bandwidth, n_x, int(y.shape[0]), n_perm)
