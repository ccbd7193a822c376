"""Multiplicity adjustment of p-values across cells, features or sites (Holm, Benjamini-Hochberg).

``NaN`` p-values (untested cells, e.g. "insufficient data") are left ``NaN`` and do not count in the
family size ``m``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from .types import AuditInputError, check_option

PAdjust = Literal["holm", "bh", "none"]
P_ADJUST_METHODS: tuple[str, ...] = ("holm", "bh", "none")


def _checked(p_values: np.ndarray) -> np.ndarray:
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise AuditInputError(
            "p_values", f"an array of shape {p.shape}", "a 1-D array", "pass a flat array"
        )
    bad = ~np.isnan(p) & ((p < 0.0) | (p > 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AuditInputError(
            "p_values",
            f"{float(p[i])!r} at position {i}",
            "p-values in [0, 1] or NaN",
            "check the test that produced it",
        )
    return p


def _adjust_sorted(p_values: np.ndarray, adjust: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``adjust`` to the non-NaN p-values in ascending (stable) order; NaN stay NaN."""
    p = _checked(p_values)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    if idx.size == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    out[order] = adjust(p[order])
    return out


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (controls the family-wise error rate).

    ``p_adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` over the sorted p-values.

    Parameters
    ----------
    p_values : array-like of shape (k,)
        Raw p-values; ``NaN`` entries are ignored and stay ``NaN``.

    Returns
    -------
    ndarray of shape (k,)

    Examples
    --------
    >>> holm(np.array([0.01, 0.04, 0.03])).round(6).tolist()
    [0.03, 0.06, 0.06]
    """

    def step_down(p_sorted: np.ndarray) -> np.ndarray:
        m = p_sorted.size
        return np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p_sorted))

    return _adjust_sorted(p_values, step_down)


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (controls the false discovery rate).

    ``p_adj_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the sorted p-values.

    Parameters
    ----------
    p_values : array-like of shape (k,)
        Raw p-values; ``NaN`` entries are ignored and stay ``NaN``.

    Returns
    -------
    ndarray of shape (k,)

    Examples
    --------
    >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03])).round(6).tolist()
    [0.03, 0.04, 0.04]
    """

    def step_up(p_sorted: np.ndarray) -> np.ndarray:
        m = p_sorted.size
        scaled = m * p_sorted / np.arange(1, m + 1)
        return np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])

    return _adjust_sorted(p_values, step_up)


def adjust_pvalues(p_values: np.ndarray, *, method: PAdjust = "holm") -> np.ndarray:
    """Adjust p-values for multiplicity.

    Parameters
    ----------
    p_values : array-like of shape (k,)
        Raw p-values, ``NaN`` = not tested.
    method : {"holm", "bh", "none"}, keyword-only
        Holm (family-wise error), Benjamini-Hochberg (false discovery rate) or no adjustment.

    Returns
    -------
    ndarray of shape (k,)

    Examples
    --------
    >>> adjust_pvalues(np.array([0.01, np.nan, 0.04]), method="bh").tolist()
    [0.02, nan, 0.04]
    """
    method = check_option("method", method, P_ADJUST_METHODS)  # type: ignore[assignment]
    if method == "holm":
        return holm(p_values)
    if method == "bh":
        return benjamini_hochberg(p_values)
    return _checked(p_values).copy()
