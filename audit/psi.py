"""Population stability index (PSI) and the PSI that sampling noise alone reaches.

PSI: ``sum_i (a_i - e_i) ln(a_i / e_i)`` with ``e`` the reference and ``a`` the sample proportions.
An empty bin's proportion is replaced by ``epsilon`` before the logarithm, so PSI stays finite;
proportions are not renormalised afterwards.

The fixed cut-offs 0.1 ("moderate") and 0.25 ("major") are large-sample rules: two samples of a
few hundred rows from one distribution often reach PSI 0.1 by chance (for ``k`` bins the null PSI
is about ``(1/n + 1/n_ref) * chi2_{k-1}``, plus the epsilon of empty bins).
:func:`psi_noise_bound` is the PSI that noise alone reaches at given sample sizes: an upper
quantile of the PSI's null distribution by a parametric bootstrap from the reference's bin
proportions (both sides drawn from ``e``; the reference side fixed at ``e`` when the reference is
a summary taken as exact). :func:`clinaudit.audit.drift.drift_table` and the sepsis card drift
flag a PSI level only when the PSI also exceeds this bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .types import AuditInputError, check_positive_int

__all__ = [
    "population_stability_index",
    "psi_from_proportions",
    "psi_noise_bound",
    "quantile_bin_proportions",
]


def psi_from_proportions(expected: Any, actual: Any, epsilon: float = 1e-4) -> np.ndarray | float:
    """PSI of ``actual`` against ``expected`` proportions (last axis = bins).

    Parameters
    ----------
    expected, actual : array-like of shape (..., k)
        Proportions of the reference and of the sample; they broadcast against each other (one
        PSI per leading index).
    epsilon : float
        Proportion substituted for an empty bin (0) on either side.

    Returns
    -------
    float or numpy.ndarray
        A float for 1-D inputs, else an array of the leading shape.

    Examples
    --------
    >>> psi_from_proportions([0.5, 0.5], [0.5, 0.5])
    0.0
    """
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    e = np.where(e > 0, e, epsilon)
    a = np.where(a > 0, a, epsilon)
    out = np.sum((a - e) * np.log(a / e), axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def quantile_bin_proportions(
    reference: np.ndarray, sample: np.ndarray, *, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Proportions of the reference and of the sample in the reference's quantile bins.

    Bins are ``(-inf, q_1], (q_1, q_2], ..., (q_last, inf)`` at the reference quantiles
    ``1/k, ..., (k-1)/k`` (duplicates removed). When the reference's minimum is itself a bin edge
    (a point mass at the minimum, e.g. a site's fixed pixel spacing), sample values below that
    minimum get a bin of their own (the reference has none there); otherwise a sample entirely
    below a constant reference would share its bin and score PSI 0. Values above a point mass at
    the maximum already fall in the empty top bin.

    Parameters
    ----------
    reference, sample : numpy.ndarray of shape (n_ref,), (n,)
        Finite values (at least one each).
    n_bins : int, keyword-only
        Quantile bins of the reference (fewer when quantiles coincide).

    Returns
    -------
    expected, actual : numpy.ndarray of shape (k,)
        Reference and sample proportions (each sums to 1).

    Examples
    --------
    >>> e, a = quantile_bin_proportions(np.arange(10.0), np.arange(10.0), n_bins=2)
    >>> e.tolist(), a.tolist()
    ([0.5, 0.5], [0.5, 0.5])
    """
    ref = np.asarray(reference, float)
    smp = np.asarray(sample, float)
    inner = np.unique(np.quantile(ref, np.arange(1, n_bins) / n_bins))
    lo = ref.min()
    split_below = inner.size > 0 and inner[0] == lo
    k = inner.size + 1 + int(split_below)

    def bins(x: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(inner, x, side="left")
        return np.where(x < lo, inner.size + 1, idx) if split_below else idx

    e = np.bincount(bins(ref), minlength=k) / ref.size
    a = np.bincount(bins(smp), minlength=k) / smp.size
    return e, a


def population_stability_index(
    reference: Any, sample: Any, *, n_bins: int = 10, epsilon: float = 1e-4
) -> float:
    """PSI of a numeric sample against a reference, bins from reference quantiles.

    Bins as in :func:`quantile_bin_proportions` (a point mass at the reference's minimum gives
    the sample values below it a bin of their own).

    Parameters
    ----------
    reference, sample : array-like of shape (n_ref,), (n,)
        Finite values.
    n_bins : int, keyword-only
        Quantile bins of the reference (fewer when quantiles coincide).
    epsilon : float, keyword-only
        Proportion used for empty bins.

    Returns
    -------
    float

    Examples
    --------
    >>> x = np.arange(100.0)
    >>> population_stability_index(x, x)
    0.0
    """
    e, a = quantile_bin_proportions(
        np.asarray(reference, float), np.asarray(sample, float), n_bins=n_bins
    )
    return float(psi_from_proportions(e, a, epsilon))


def psi_noise_bound(
    expected: Any,
    n_sample: int,
    n_reference: int | None,
    *,
    quantile: float,
    draws: int = 2000,
    rng: np.random.Generator,
    epsilon: float = 1e-4,
) -> float:
    """The PSI that sampling noise alone reaches: an upper quantile of the PSI's null distribution.

    Parametric bootstrap from the reference's bin proportions ``e``: ``draws`` times, reference
    counts ~ Multinomial(``n_reference``, ``e``) and sample counts ~ Multinomial(``n_sample``,
    ``e``), and the PSI of the two (computed as :func:`psi_from_proportions` computes the real one,
    with the same ``epsilon`` for empty bins). With ``n_reference=None`` (a summary taken as
    exact) the reference side stays at ``e``.

    The bound is the ``r``-th largest of the ``draws`` null PSIs, ``r = floor((draws + 1) *
    (1 - quantile))``: a PSI drawn from the same null exceeds it with probability at most
    ``1 - quantile`` whatever ``draws`` is (the observed PSI and the draws are exchangeable), so
    the Monte Carlo error makes the bound conservative, never liberal; more draws make it tighter.

    Parameters
    ----------
    expected : array-like of shape (k,)
        Reference proportions (non-negative, summing to 1 up to rounding; renormalised).
    n_sample : int
        Rows of the sample (the site).
    n_reference : int or None
        Rows behind the reference proportions; ``None`` when they are exact.
    quantile : float, keyword-only
        Quantile of the null PSI, in (0, 1), e.g. ``1 - alpha / m`` for ``m`` features.
    draws : int, keyword-only
        Bootstrap draws; at least ``1 / (1 - quantile) - 1``.
    rng : numpy.random.Generator, keyword-only
        Source of the draws.
    epsilon : float, keyword-only
        Proportion substituted for empty bins.

    Returns
    -------
    float

    Raises
    ------
    AuditInputError
        If ``expected`` is not a vector of proportions or ``draws`` is too small for ``quantile``.

    Examples
    --------
    >>> e = np.full(10, 0.1)
    >>> b = psi_noise_bound(e, 400, 200, quantile=0.99, rng=np.random.default_rng(0))
    >>> 0.1 < b < 0.2
    True
    """
    e = np.asarray(expected, dtype=float)
    # Proportions built as differences of a CDF may be -1e-17 instead of 0.
    if e.ndim != 1 or e.size < 1 or not np.isfinite(e).all() or (e < -1e-9).any() or e.sum() <= 0:
        raise AuditInputError(
            "expected", repr(e), "a 1-D vector of proportions", "pass the reference's bin shares"
        )
    e = np.clip(e, 0.0, None)
    e = e / e.sum()
    check_positive_int("n_sample", n_sample)
    if n_reference is not None:
        check_positive_int("n_reference", n_reference)
    check_positive_int("draws", draws)
    if not 0.0 < quantile < 1.0:
        raise AuditInputError("quantile", repr(quantile), "a float in (0, 1)", "e.g. 1 - 0.05 / m")
    rank = int(np.floor((draws + 1) * (1.0 - quantile) + 1e-9))
    if rank < 1:
        needed = int(np.ceil(1.0 / (1.0 - quantile) - 1.0 - 1e-9))
        raise AuditInputError(
            "draws",
            f"{draws} for the {quantile:.6g} quantile",
            f"at least {needed} draws",
            "raise the number of noise-bound draws (psi_noise_draws)",
        )
    sample = rng.multinomial(n_sample, e, size=draws) / n_sample
    ref = e if n_reference is None else rng.multinomial(n_reference, e, size=draws) / n_reference
    null = np.asarray(psi_from_proportions(ref, sample, epsilon))
    return float(np.partition(null, draws - rank)[draws - rank])
