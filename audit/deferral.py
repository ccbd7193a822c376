"""Deferral to a clinician: a calibrated review score, a certified deferral rule, risk-coverage.

A multi-class model's output is *deferred* (sent for clinician review) when its deferral score is
at or above a threshold; the other outputs are *accepted*. This module provides:

* :func:`fit_deferral_score` / :class:`DeferralScorer`: a calibrated probability that an output
  should be reviewed (that the predicted category is wrong), a logistic regression on per-case
  features (e.g. the top probability, margin, entropy, P(malignant), arm disagreement, a missing
  note). Fit it on cases disjoint from those that certify the rule.
* :func:`certify_deferral`: Learn-then-Test with fixed-sequence testing over increasing
  thresholds, controlling two risks at once with probability ``>= 1 - delta``: the **error rate
  of accepted outputs** (``P(wrong | accepted) <= alpha_error``) and the **malignant miss rate**
  (malignant cases accepted with a benign prediction / malignant cases ``<= alpha_malignant``).
  Each hypothesis is rejected with the larger of the two exact binomial p-values
  (intersection-union), so both guarantees hold jointly. The sequence starts at the first
  threshold accepting ``min_coverage`` of the cases (and at least enough to certify the error
  rate at all): a label-free start, so the guarantee holds, placed where the error rate has
  enough cases that one early error does not end the sequence.
  Conditional on which cases are accepted (a function of the scores only), the errors among them
  are binomial, so the p-value of the error rate is exact.
* :func:`risk_coverage`, :func:`aurc`, :func:`augrc`: the selective risk and the generalized risk
  (errors accepted / all cases, Traub et al. 2024) against coverage, for any score (the
  max-softmax baseline is ``1 - max probability``); ties in the score spread their errors evenly.
* :func:`deferral_by_group`: where deferral fires (rate per group with exact intervals).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .selective import _grid, _level, _zero_miss_n, binomial_p_value, clopper_pearson
from .types import AuditInputError, as_1d

__all__ = [
    "DeferralRule",
    "DeferralScorer",
    "augrc",
    "aurc",
    "certify_deferral",
    "deferral_by_group",
    "fit_deferral_score",
    "risk_coverage",
]


def _binary(name: str, values: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if n is not None and arr.size != n:
        raise AuditInputError(name, f"{arr.size} values", f"{n} (one per case)", "align inputs")
    if not np.isin(arr, (0.0, 1.0)).all():
        raise AuditInputError(name, "values other than 0/1", "0 or 1 per case", "binarise it")
    return arr


@dataclass(frozen=True)
class DeferralScorer:
    """A fitted review score: ``predict(features)`` = calibrated P(output is wrong)."""

    features: tuple[str, ...]
    model: Any

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """P(the output should be reviewed) of every row of ``frame`` (needs :attr:`features`)."""
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise AuditInputError(
                "features", f"missing {missing}", f"columns {list(self.features)}", "add them"
            )
        x = frame[list(self.features)].to_numpy(float)
        return self.model.predict_proba(x)[:, 1]


def fit_deferral_score(
    frame: pd.DataFrame, error: Any, *, features: tuple[str, ...], seed: int = 0
) -> DeferralScorer:
    """Fit the review score on ``frame[features]`` against ``error`` (1 = wrong prediction).

    A standardized L2 logistic regression (scikit-learn, ``C=1``, seeded): its probabilities are
    calibrated in the large by construction; fit it on cases the rule is *not* certified on.

    Raises
    ------
    AuditInputError
        If a feature is missing or not finite, or ``error`` has a single class.
    """
    y = _binary("error", error, len(frame))
    missing = [f for f in features if f not in frame.columns]
    if missing or not features:
        raise AuditInputError("features", f"missing {missing}", "named columns", "add them")
    x = frame[list(features)].to_numpy(float)
    if not np.isfinite(x).all():
        raise AuditInputError("features", "NaN or inf", "finite values", "impute or drop")
    if np.unique(y).size < 2:
        raise AuditInputError(
            "error", f"only {int(y[0]) if y.size else 'no'} values", "both right and wrong "
            "outputs", "fit the score on a sample with errors and correct outputs",
        )  # fmt: skip
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, random_state=seed))
    model.fit(x, y.astype(int))
    return DeferralScorer(tuple(features), model)


@dataclass(frozen=True)
class DeferralRule:
    """``defer if score >= threshold`` and its joint guarantee (see :func:`certify_deferral`).

    ``threshold`` is ``None`` when no threshold is certified (defer every output). Upper bounds
    are one-sided ``1 - delta`` Clopper-Pearson; ``coverage`` is the accepted share;
    ``min_accepted`` the cases the first tested threshold had to accept.
    """

    threshold: float | None
    alpha_error: float
    alpha_malignant: float
    delta: float
    n: int
    n_accepted: int
    errors_accepted: int
    error_rate_upper: float
    n_malignant: int
    malignant_missed: int
    malignant_miss_upper: float
    coverage: float
    p_value: float
    n_tested: int
    min_accepted: int

    @property
    def certified(self) -> bool:
        """Whether a threshold was certified."""
        return self.threshold is not None


def certify_deferral(
    error: Any,
    malignant: Any,
    missed_malignant: Any,
    score: Any,
    *,
    alpha_error: float,
    alpha_malignant: float,
    delta: float,
    min_coverage: float = 0.1,
    grid: Any = None,
) -> DeferralRule:
    """The most permissive ``defer if score >= threshold`` rule certified for both risks.

    Parameters
    ----------
    error : array-like of shape (n,)
        1 when the model's predicted category is wrong.
    malignant : array-like of shape (n,)
        1 when the true category is malignant.
    missed_malignant : array-like of shape (n,)
        1 when a malignant case is predicted benign (a subset of ``malignant``).
    score : array-like of shape (n,)
        Deferral score (higher = defer first), e.g. :meth:`DeferralScorer.predict`.
    alpha_error, alpha_malignant, delta : float
        ``P(error rate of accepted <= alpha_error and malignant miss rate <= alpha_malignant)
        >= 1 - delta``.
    min_coverage : float
        Share of cases the first tested threshold accepts (the start of the fixed sequence).
    grid : array-like, optional
        Strictly increasing candidate thresholds (default: 0 and the distinct scores).

    Returns
    -------
    DeferralRule

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = rng.random(5000)
    >>> err = (rng.random(5000) < 0.3 * s).astype(int)
    >>> mal = (rng.random(5000) < 0.2).astype(int)
    >>> miss = mal * err
    >>> r = certify_deferral(err, mal, miss, s, alpha_error=0.10, alpha_malignant=0.05, delta=0.05)
    >>> r.certified and r.error_rate_upper <= 0.10 and 0.3 < r.coverage < 0.8
    True
    """
    a_e, a_m, d = (_level(n, v) for n, v in (("alpha_error", alpha_error),
                                               ("alpha_malignant", alpha_malignant),
                                               ("delta", delta)))  # fmt: skip
    err = _binary("error", error)
    n = err.size
    mal = _binary("malignant", malignant, n)
    miss = _binary("missed_malignant", missed_malignant, n)
    if (miss > mal).any():
        raise AuditInputError(
            "missed_malignant", "a miss on a case that is not malignant", "a subset of malignant",
            "count a miss only where the true category is malignant",
        )  # fmt: skip
    s = as_1d("score", score, n).astype(float)
    if not np.isfinite(s).all():
        raise AuditInputError("score", "NaN or inf", "finite scores", "score every case")
    g = _grid(grid, np.concatenate([s, [s.max() + 1.0]]) if n else s)
    order = np.argsort(s, kind="stable")
    ss = s[order]
    accepted = np.searchsorted(ss, g, side="left")  # cases with score < threshold
    cum_err = np.concatenate([[0.0], np.cumsum(err[order])])[accepted]
    cum_miss = np.concatenate([[0.0], np.cumsum(miss[order])])[accepted]
    n_mal = int(mal.sum())
    p = np.maximum(binomial_p_value(cum_err, accepted, a_e), binomial_p_value(cum_miss, n_mal, a_m))
    min_acc = _zero_miss_n(a_e, d)
    if not 0.0 <= min_coverage < 1.0:
        raise AuditInputError("min_coverage", repr(min_coverage), "in [0, 1)", "e.g. 0.1")
    first = max(min_acc, int(np.ceil(min_coverage * n)))
    start = int(np.searchsorted(accepted, first, side="left"))
    failed = np.flatnonzero(p[start:] > d)
    n_ok = int(failed[0]) if failed.size else g.size - start
    best = start + n_ok - 1 if n_ok > 0 else -1
    k_e = int(cum_err[best]) if best >= 0 else 0
    k_m = int(cum_miss[best]) if best >= 0 else 0
    n_acc = int(accepted[best]) if best >= 0 else 0
    level = 1.0 - 2.0 * d
    _, up_e = clopper_pearson(k_e, n_acc, ci_level=level)
    _, up_m = clopper_pearson(k_m, n_mal, ci_level=level)
    return DeferralRule(
        threshold=float(g[best]) if best >= 0 else None,
        alpha_error=a_e,
        alpha_malignant=a_m,
        delta=d,
        n=n,
        n_accepted=n_acc,
        errors_accepted=k_e,
        error_rate_upper=float(up_e) if n_acc else float("nan"),
        n_malignant=n_mal,
        malignant_missed=k_m,
        malignant_miss_upper=float(up_m) if n_mal else float("nan"),
        coverage=n_acc / n if n else 0.0,
        p_value=float(p[best]) if best >= 0 else float(p[start]) if start < g.size else 1.0,
        n_tested=min(n_ok + 1, g.size - start),
        min_accepted=first,
    )


def _cumulative(error: Any, score: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Accepted counts ``k = 1..n`` and expected errors among the ``k`` lowest scores."""
    err = _binary("error", error)
    s = as_1d("score", score, err.size).astype(float)
    order = np.argsort(s, kind="stable")
    ss, ee = s[order], err[order]
    _, first, size = np.unique(ss, return_index=True, return_counts=True)
    group_err = np.add.reduceat(ee, first) if ee.size else ee
    before = np.concatenate([[0.0], np.cumsum(group_err)[:-1]])
    k = np.arange(1, err.size + 1)
    g = np.repeat(np.arange(first.size), size)
    within = k - first[g]
    expected = before[g] + within * group_err[g] / size[g]
    return k.astype(float), expected, err.size


def risk_coverage(error: Any, score: Any) -> pd.DataFrame:
    """Coverage, selective risk and generalized risk as the ``k`` lowest-score cases are accepted.

    Examples
    --------
    >>> rc = risk_coverage([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])
    >>> rc["selective_risk"].tolist(), rc["generalized_risk"].tolist()
    ([0.0, 0.0, 0.3333333333333333, 0.5], [0.0, 0.0, 0.25, 0.5])
    """
    k, expected, n = _cumulative(error, score)
    return pd.DataFrame(
        {
            "coverage": k / max(n, 1),
            "selective_risk": expected / k,
            "generalized_risk": expected / max(n, 1),
        }
    )


def aurc(error: Any, score: Any) -> float:
    """Area under the risk-coverage curve (mean selective risk over coverages ``k / n``)."""
    k, expected, n = _cumulative(error, score)
    return float(np.mean(expected / k)) if n else float("nan")


def augrc(error: Any, score: Any) -> float:
    """Area under the generalized risk-coverage curve (mean of errors accepted / ``n``)."""
    _, expected, n = _cumulative(error, score)
    return float(np.mean(expected / n)) if n else float("nan")


def deferral_by_group(
    deferred: Any, groups: Mapping[str, Any], *, ci_level: float = 0.95
) -> pd.DataFrame:
    """Deferral rate per group of each attribute, with exact (Clopper-Pearson) intervals.

    Returns ``attribute, group, n, deferred, rate, ci_low, ci_high``, groups sorted by name.
    """
    dfr = _binary("deferred", deferred)
    rows = []
    for attr, values in groups.items():
        v = np.asarray(values, dtype=object).ravel()
        if v.size != dfr.size:
            raise AuditInputError(attr, f"{v.size} values", f"{dfr.size}", "one per case")
        for name in sorted(set(v.astype(str).tolist())):
            m = v.astype(str) == name
            k, n = int(dfr[m].sum()), int(m.sum())
            lo, hi = clopper_pearson(k, n, ci_level=ci_level)
            rows.append((attr, name, n, k, k / n, float(lo), float(hi)))
    return pd.DataFrame(rows, columns=["attribute", "group", "n", "deferred", "rate",
                                       "ci_low", "ci_high"])  # fmt: skip
