"""Logistic recalibration fit (calibration intercept, slope, calibration-in-the-large).

``logit P(y=1) = a + b logit(p)`` is fitted by maximum likelihood (Newton / IRLS with step
halving, ``p`` clipped to ``[CLIP_EPS, 1 - CLIP_EPS]`` before the logit); calibration-in-the-large
is ``a`` with ``b`` fixed at 1. A fit that does not converge (e.g. perfectly separated data) is
reported as ``NaN`` with ``converged = False``, never as the last iterate. :func:`logit` and
:func:`expit` are the clipped transforms every recalibration in ``audit/`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .types import AuditInputError, validate_labelled_scores

__all__ = [
    "CLIP_EPS",
    "RecalibrationFit",
    "check_binary_probs",
    "expit",
    "logistic_recalibration",
    "logit",
]

#: Probabilities are clipped to ``[CLIP_EPS, 1 - CLIP_EPS]`` before a logit.
CLIP_EPS = 1e-6


def logit(p: Any) -> np.ndarray:
    """``log(p / (1 - p))`` after clipping ``p`` to ``[1e-6, 1 - 1e-6]``.

    Examples
    --------
    >>> logit([0.5, 0.0]).round(4).tolist()
    [0.0, -13.8155]
    """
    q = np.clip(np.asarray(p, dtype=np.float64), CLIP_EPS, 1.0 - CLIP_EPS)
    return np.log(q) - np.log1p(-q)


def expit(z: Any) -> np.ndarray:
    """``1 / (1 + exp(-z))`` (the logistic function, inverse of :func:`logit`).

    Examples
    --------
    >>> float(expit(0.0))
    0.5
    """
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=float)))


def check_binary_probs(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate one fully labelled binary target and its probabilities; return 1-D float arrays.

    Raises
    ------
    AuditInputError
        On invalid labels or probabilities, NaN labels, or several target columns.
    """
    data = validate_labelled_scores(y_true, y_prob, score_name="y_prob", require_probabilities=True)
    if data.y_true.shape[1] != 1 or np.isnan(data.y_true).any():
        raise AuditInputError(
            "y_true",
            "NaN labels or several columns",
            "one fully labelled target",
            "drop unlabelled rows and pass one target at a time",
        )
    return data.y_true[:, 0], data.y_score[:, 0]


@dataclass(frozen=True)
class RecalibrationFit:
    """Logistic recalibration ``logit P(y=1) = intercept + slope * logit(p)``.

    Attributes
    ----------
    intercept, slope : float
        Maximum-likelihood fit (``NaN`` when it did not converge).
    citl_intercept : float
        Calibration-in-the-large: intercept with the slope fixed at 1 (``NaN`` if not converged).
    converged : bool
        Whether both Newton fits converged.
    """

    intercept: float
    slope: float
    citl_intercept: float
    converged: bool


def _log_lik(y: np.ndarray, eta: np.ndarray) -> float:
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def _newton(
    y: np.ndarray, x: np.ndarray, *, fit_slope: bool, max_iter: int, tol: float
) -> tuple[np.ndarray, bool]:
    beta = np.array([0.0, 1.0])
    design = np.column_stack([np.ones_like(x), x])
    ll = _log_lik(y, design @ beta)
    for _ in range(max_iter):
        mu = expit(design @ beta)
        grad = design.T @ (y - mu)
        w = mu * (1.0 - mu)
        if fit_slope:
            hess = (design * w[:, None]).T @ design
            try:
                step = np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                return beta, False
        else:
            h = float(w.sum())
            if h <= 0.0:
                return beta, False
            step = np.array([grad[0] / h, 0.0])
        scale = 1.0
        while scale > 1e-8:
            cand = beta + scale * step
            ll_new = _log_lik(y, design @ cand)
            if ll_new >= ll - 1e-12 * abs(ll):
                break
            scale /= 2.0
        beta, ll = cand, ll_new
        if np.max(np.abs(step)) < tol:
            return beta, bool(np.all(np.abs(beta) < 1e3))
    return beta, False


def logistic_recalibration(
    y_true: Any, y_prob: Any, *, max_iter: int = 100, tol: float = 1e-10
) -> RecalibrationFit:
    """Fit calibration intercept and slope (and calibration-in-the-large) by Newton/IRLS.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels in ``{0, 1}``.
    y_prob : array-like of shape (n,)
        Probabilities in ``[0, 1]`` (clipped to ``[1e-6, 1 - 1e-6]`` before the logit).
    max_iter : int, keyword-only
        Newton iterations before giving up (``converged=False``).
    tol : float, keyword-only
        Convergence tolerance on the parameter step.

    Returns
    -------
    RecalibrationFit

    Examples
    --------
    >>> p = np.array([0.1, 0.3, 0.5, 0.7, 0.9, 0.2, 0.6, 0.8])
    >>> fit = logistic_recalibration([0, 0, 1, 1, 1, 1, 0, 1], p)
    >>> fit.converged
    True
    """
    y, p = check_binary_probs(y_true, y_prob)
    x = logit(p)
    full, ok_full = _newton(y, x, fit_slope=True, max_iter=max_iter, tol=tol)
    citl, ok_citl = _newton(y, x, fit_slope=False, max_iter=max_iter, tol=tol)
    nan = float("nan")
    return RecalibrationFit(
        intercept=float(full[0]) if ok_full else nan,
        slope=float(full[1]) if ok_full else nan,
        citl_intercept=float(citl[0]) if ok_citl else nan,
        converged=ok_full and ok_citl,
    )
