"""DeLong variance of the AUROC (Sun & Xu 2014 fast algorithm) and the unpaired DeLong test.

With ``m`` positives ``X`` and ``n`` negatives ``Y``, the placement values are
``V10_i = mean_j psi(X_i, Y_j)`` and ``V01_j = mean_i psi(X_i, Y_j)`` with
``psi(x, y) = 1 if x > y, 1/2 if x == y, 0 otherwise``; ``AUROC = mean(V10)`` and
``Var(AUROC) = var(V10, ddof=1) / m + var(V01, ddof=1) / n`` (DeLong, DeLong & Clarke-Pearson 1988).
Sun & Xu compute the placement values from midranks in ``O((m + n) log(m + n))``:
``V10_i = (Tz_i - Tx_i) / n`` and ``V01_j = 1 - (Tz_{m+j} - Ty_j) / m`` where ``Tz``, ``Tx``,
``Ty`` are midranks (``scipy.stats.rankdata``) in the pooled sample, the positives and the
negatives.

The variance assumes independent rows. When patients contribute several rows, prefer the
clustered bootstrap interval of :func:`clinaudit.audit.discrimination.audit_discrimination`; both
are reported.

The unpaired test compares AUROCs estimated on *different* patients (a site vs the vendor's held-out
set): ``z = (A1 - A2) / sqrt(Var1 + Var2)``, two-sided normal p-value. The paired test compares two
scores of the *same* rows (two models on one test set): the placement values of both scores share
their positives and negatives, so ``Var(A1 - A2) = Var(V10_1 - V10_2) / m + Var(V01_1 - V01_2) / n``
(DeLong et al. 1988, the contrast ``(1, -1)`` of their covariance matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from .types import AuditInputError, check_ci_level

#: Fewest positives and negatives a DeLong variance needs (fewer: report insufficient data).
MIN_PER_CLASS = 2


@dataclass(frozen=True)
class DeLongResult:
    """AUROC with its DeLong variance and Wald interval.

    Attributes
    ----------
    auroc, variance, se : float
        Estimate, variance and standard error.
    ci_low, ci_high : float
        Wald interval ``auroc -/+ z * se``, clipped to ``[0, 1]``.
    n_pos, n_neg : int
        Numbers of positives and negatives.
    """

    auroc: float
    variance: float
    se: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int


@dataclass(frozen=True)
class DeLongTest:
    """Unpaired DeLong comparison ``auroc_a - auroc_b``."""

    difference: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def _split(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise AuditInputError(
            "y_score", f"shape {s.shape}", f"shape {y.shape} like y_true", "pass one score per row"
        )
    if not np.isin(y, (0.0, 1.0)).all():
        raise AuditInputError(
            "y_true",
            f"values {np.unique(y[~np.isin(y, (0.0, 1.0))])[:5].tolist()}",
            "labels in {0, 1}",
            "drop unlabelled rows before calling DeLong",
        )
    if not np.isfinite(s).all():
        raise AuditInputError(
            "y_score",
            f"non-finite score at row {int(np.flatnonzero(~np.isfinite(s))[0])}",
            "finite scores",
            "remove or re-score that row",
        )
    x, yneg = s[y == 1.0], s[y == 0.0]
    if x.size < MIN_PER_CLASS or yneg.size < MIN_PER_CLASS:
        raise AuditInputError(
            "y_true",
            f"{x.size} positives and {yneg.size} negatives",
            f"at least {MIN_PER_CLASS} of each for a DeLong variance",
            "report this cell as insufficient data",
        )
    return x, yneg


def placement_values(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Placement values ``(V10, V01)`` from midranks (Sun & Xu 2014).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels in ``{0, 1}``.
    y_score : array-like of shape (n,)
        Finite scores.

    Returns
    -------
    V10 : ndarray of shape (n_pos,)
        For each positive, the fraction of negatives it outranks (ties count 1/2).
    V01 : ndarray of shape (n_neg,)
        For each negative, the fraction of positives that outrank it (ties count 1/2).

    Examples
    --------
    >>> v10, v01 = placement_values([0, 1, 1, 0], [0.1, 0.8, 0.4, 0.4])
    >>> v10.tolist(), v01.tolist()
    ([1.0, 0.75], [1.0, 0.75])
    """
    x, yneg = _split(np.asarray(y_true), np.asarray(y_score))
    m, n = x.size, yneg.size
    tz = rankdata(np.concatenate([x, yneg]))
    tx = rankdata(x)
    ty = rankdata(yneg)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return v10, v01


def delong_auroc(
    y_true: np.ndarray, y_score: np.ndarray, *, ci_level: float = 0.95
) -> DeLongResult:
    """AUROC with DeLong variance and Wald confidence interval.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels in ``{0, 1}`` (at least 2 of each).
    y_score : array-like of shape (n,)
        Finite scores.
    ci_level : float, keyword-only
        Interval coverage.

    Returns
    -------
    DeLongResult

    Examples
    --------
    >>> r = delong_auroc([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    >>> round(r.auroc, 4), round(r.variance, 5)
    (0.8889, 0.02469)
    """
    ci_level = check_ci_level(ci_level)
    v10, v01 = placement_values(y_true, y_score)
    auc = float(v10.mean())
    var = float(v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size)
    se = float(np.sqrt(var))
    z = float(norm.ppf(0.5 + ci_level / 2.0))
    return DeLongResult(
        auroc=auc,
        variance=var,
        se=se,
        ci_low=max(0.0, auc - z * se),
        ci_high=min(1.0, auc + z * se),
        n_pos=int(v10.size),
        n_neg=int(v01.size),
    )


def delong_unpaired_test(a: DeLongResult, b: DeLongResult, *, ci_level: float = 0.95) -> DeLongTest:
    """Two-sided test of ``AUROC_a == AUROC_b`` for AUROCs from independent samples.

    Parameters
    ----------
    a, b : DeLongResult
        Results of :func:`delong_auroc` on two different sets of patients.
    ci_level : float, keyword-only
        Coverage of the interval for ``auroc_a - auroc_b``.

    Returns
    -------
    DeLongTest
        ``difference = a.auroc - b.auroc``, ``se = sqrt(a.variance + b.variance)``, ``z``, p-value.
        When both variances are 0 and the AUROCs are equal, ``z = 0`` and ``p = 1``; when they
        differ, ``z = +/-inf`` and ``p = 0``.

    Examples
    --------
    >>> a = delong_auroc([0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    >>> t = delong_unpaired_test(a, a)
    >>> t.difference, t.p_value
    (0.0, 1.0)
    """
    ci_level = check_ci_level(ci_level)
    diff = a.auroc - b.auroc
    se = float(np.sqrt(a.variance + b.variance))
    if se > 0.0:
        z = diff / se
    else:
        z = 0.0 if diff == 0.0 else float(np.copysign(np.inf, diff))
    p = float(2.0 * norm.sf(abs(z)))
    q = float(norm.ppf(0.5 + ci_level / 2.0))
    return DeLongTest(
        difference=float(diff),
        se=se,
        z=float(z),
        p_value=min(1.0, p),
        ci_low=float(diff - q * se),
        ci_high=float(diff + q * se),
    )


def delong_paired_test(
    y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, *, ci_level: float = 0.95
) -> DeLongTest:
    """Two-sided test of ``AUROC_a == AUROC_b`` for two scores of the same rows (paired DeLong).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels in ``{0, 1}`` (at least 2 of each).
    score_a, score_b : array-like of shape (n,)
        Finite scores of the same rows (e.g. two models on one test set).
    ci_level : float, keyword-only
        Coverage of the Wald interval for ``auroc_a - auroc_b``.

    Returns
    -------
    DeLongTest
        ``difference = auroc_a - auroc_b`` with ``se = sqrt(Var(V10_a - V10_b) / m +
        Var(V01_a - V01_b) / n)``. Rows are taken as independent; with several rows per patient
        prefer a patient-clustered bootstrap. When ``se`` is 0, ``z`` is 0 (equal AUROCs) or
        ``+/-inf``.

    Examples
    --------
    >>> y = [0, 0, 1, 1, 0, 1]
    >>> t = delong_paired_test(y, [0.1, 0.4, 0.35, 0.8, 0.2, 0.9], [0.2, 0.1, 0.3, 0.4, 0.5, 0.6])
    >>> round(t.difference, 4), round(t.se, 4)
    (0.1111, 0.3143)
    """
    ci_level = check_ci_level(ci_level)
    v10_a, v01_a = placement_values(y_true, score_a)
    v10_b, v01_b = placement_values(y_true, score_b)
    d10, d01 = v10_a - v10_b, v01_a - v01_b
    diff = float(d10.mean())
    se = float(np.sqrt(d10.var(ddof=1) / d10.size + d01.var(ddof=1) / d01.size))
    if se > 0.0:
        z = diff / se
    else:
        z = 0.0 if diff == 0.0 else float(np.copysign(np.inf, diff))
    q = float(norm.ppf(0.5 + ci_level / 2.0))
    return DeLongTest(
        difference=diff,
        se=se,
        z=float(z),
        p_value=min(1.0, float(2.0 * norm.sf(abs(z)))),
        ci_low=float(diff - q * se),
        ci_high=float(diff + q * se),
    )
