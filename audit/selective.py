"""Selective prediction: temperature scaling, a certified auto-clear threshold, three buckets.

A triage model sends each study to one of three buckets: ``clear`` (the model calls it normal and
no radiologist needs to read it first), ``flag`` (likely abnormal: read first) and ``uncertain``
(everything between, and every out-of-scope input, by rule). A deferral model (the fusion study)
uses the same logic with ``uncertain`` meaning "defer to a clinician".

* :func:`fit_temperature` fits ``P(abnormal) = sigmoid(z / T)`` on logits ``z`` by maximum
  likelihood. ``T > 0`` is enforced (a non-positive fit means the score ranks negatives above
  positives and would flip AUROC); the map is strictly increasing, so every rank statistic is
  unchanged.
* :func:`certify_clear_threshold` chooses the auto-clear threshold by Learn-then-Test (Angelopoulos
  et al. 2021) with fixed-sequence testing: candidate thresholds ``lambda`` in increasing order,
  each null hypothesis ``H0: miss rate(lambda) > alpha`` tested with the exact binomial p-value
  ``P(Binomial(n_abnormal, alpha) <= misses)`` at level ``delta``; testing stops at the first
  non-rejection and the largest rejected ``lambda`` is certified. The *miss rate* is the share of
  abnormal studies that the rule clears (one minus the sensitivity of "not cleared"); under
  exchangeability of the calibration and deployment studies, ``P(miss rate <= alpha) >= 1 - delta``.
  The p-value equals MAPIE's Hoeffding-Bentkus p-value for a binary loss (the binomial term is the
  smaller one), so the threshold equals ``BinaryClassificationController(risk="recall",
  fwer_method="fixed_sequence")`` on the same grid (cross-checked in the tests). "No certifiable
  threshold" is a result (``threshold is None``: nothing is auto-cleared), not an error.
* :func:`flag_threshold` chooses the flag-abnormal threshold by the same procedure on
  ``1 - PPV`` among flagged studies (thresholds tested from the top down).
* :func:`assign_buckets` applies the thresholds; out-of-scope rows are always ``uncertain``.

Subgroup re-certification and the audit sample arithmetic are in ``audit/selective_groups.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import beta as beta_dist
from scipy.stats import binom

from .calibration_fit import expit
from .recalibration_maps import fit_logistic
from .types import AuditInputError, as_1d

__all__ = [
    "BUCKETS",
    "Certificate",
    "FlagRule",
    "TemperatureFit",
    "assign_buckets",
    "binomial_p_value",
    "candidate_grid",
    "certify_clear_threshold",
    "clopper_pearson",
    "fit_temperature",
    "flag_threshold",
    "temperature_problem",
]

#: The three triage buckets, in reading order of safety: never read first, read, read first.
BUCKETS: tuple[str, ...] = ("clear", "uncertain", "flag")


def _level(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise AuditInputError(name, repr(value), "a number in (0, 1)", f"pass e.g. {name}=0.05")
    return float(value)


def _labels_scores(y_true: Any, score: Any, score_name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float).ravel()
    s = as_1d(score_name, score, y.size).astype(float)
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AuditInputError(
            "y_true", f"{y[i]!r} at row {i}", "labels in {0, 1}", "drop unlabelled rows first"
        )
    if not np.isfinite(s).all():
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise AuditInputError(
            score_name, f"{s[i]!r} at row {i}", "finite values", "a missing score is an error"
        )
    return y, s


def binomial_p_value(k: Any, n: Any, alpha: float) -> np.ndarray:
    """Exact p-value of ``H0: rate > alpha`` after ``k`` events in ``n`` trials.

    ``P(Binomial(n, alpha) <= k)``; ``1.0`` where ``n == 0`` (no evidence).

    Examples
    --------
    >>> round(float(binomial_p_value(0, 299, 0.01)), 4)
    0.0495
    """
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    return np.where(n > 0, binom.cdf(k, np.maximum(n, 1.0), alpha), 1.0)


def clopper_pearson(k: Any, n: Any, *, ci_level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper-Pearson) two-sided interval of ``k / n``; ``NaN`` where ``n == 0``.

    The one-sided ``1 - delta`` upper bound is the upper end at ``ci_level = 1 - 2 delta``.

    Examples
    --------
    >>> lo, hi = clopper_pearson(0, 299, ci_level=0.90)
    >>> float(lo), round(float(hi), 4)
    (0.0, 0.01)
    """
    level = _level("ci_level", ci_level)
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    a = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, beta_dist.ppf(a, k, n - k + 1.0), 0.0)
        hi = np.where(k < n, beta_dist.ppf(1.0 - a, k + 1.0, n - k), 1.0)
    return np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)


@dataclass(frozen=True)
class TemperatureFit:
    """``P(abnormal) = sigmoid(logit / temperature)``, fitted by maximum likelihood.

    Attributes
    ----------
    temperature : float
        ``T > 0``; ``T > 1`` softens over-confident scores.
    n_fit : int
        Rows it was fitted on.
    nll_before, nll_after : float
        Mean negative log-likelihood at ``T = 1`` and at the fit.
    """

    temperature: float
    n_fit: int
    nll_before: float
    nll_after: float

    def apply(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities of ``logits``."""
        return expit(np.asarray(logits, dtype=float) / self.temperature)


def _nll(y: np.ndarray, z: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _temperature_fit(
    y: np.ndarray, z: np.ndarray
) -> tuple[tuple[str, str, str] | None, np.ndarray | None]:
    """``((received, expected, fix), None)`` when no positive temperature can be fitted, else
    ``(None, [1 / T])``."""
    if y.min() == y.max():
        return (
            f"only class {int(y[0])}",
            "both classes",
            "fit on a labelled calibration split",
        ), None
    if z[y == 0.0].max() < z[y == 1.0].min():
        return (
            "logits that separate the classes perfectly (every abnormal above every normal)",
            "overlapping classes (the likelihood then has a finite maximum)",
            "fit on a larger calibration split; with perfect separation no finite temperature fits",
        ), None
    inverse = fit_logistic(z, y, intercept=False)
    if inverse is None or not inverse[0] > 0.0:
        got = "no convergence" if inverse is None else f"inverse temperature {inverse[0]:.4g}"
        return (
            got,
            "a positive temperature (logits that rank abnormal studies higher)",
            "check that the logit is of the abnormal class and the labels code abnormal as 1",
        ), None
    return None, inverse


def temperature_problem(y_true: Any, logits: Any) -> str:
    """Why no positive temperature can be fitted on these rows (``""``: one can).

    A study reports this as a finding (e.g. a model whose logits rank normal studies above
    abnormal ones) instead of failing; :func:`fit_temperature` raises it.

    Examples
    --------
    >>> temperature_problem([0, 1, 0, 1], [1.0, -1.0, -0.5, 0.2]).startswith(
    ...     "received inverse temperature -")
    True
    """
    y, z = _labels_scores(y_true, logits, "logits")
    problem, _ = _temperature_fit(y, z)
    if problem is None:
        return ""
    return f"received {problem[0]}; expected {problem[1]}. Fix: {problem[2]}"


def fit_temperature(y_true: Any, logits: Any) -> TemperatureFit:
    """Fit a temperature on logits by maximum likelihood (no label smoothing).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels in ``{0, 1}`` (both present).
    logits : array-like of shape (n,)
        The model's logits (not probabilities: a logit of a clipped probability loses ranks).

    Returns
    -------
    TemperatureFit

    Raises
    ------
    AuditInputError
        On invalid input, one class only, perfectly separated classes (no finite maximum), or a
        fit with ``1 / T <= 0`` (the logits rank negatives above positives: check the sign of
        the score and the label coding).

    Examples
    --------
    >>> z = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0, -0.5, 0.5])
    >>> y = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    >>> round(fit_temperature(y, z).temperature, 3)
    1.154
    """
    y, z = _labels_scores(y_true, logits, "logits")
    problem, inverse = _temperature_fit(y, z)
    if problem:
        raise AuditInputError("logits" if y.min() < y.max() else "y_true", *problem)
    assert inverse is not None
    t = float(1.0 / inverse[0])
    return TemperatureFit(t, int(y.size), _nll(y, z), _nll(y, z / t))


def candidate_grid(scores: Any, *, max_size: int = 2000) -> np.ndarray:
    """Candidate thresholds: 0 and the distinct scores (thinned to quantiles past ``max_size``).

    Depends on the scores only, never on labels, so it may be built from the calibration split.
    """
    s = np.unique(np.asarray(scores, dtype=float))
    if s.size > max_size - 1:
        s = np.unique(np.quantile(s, np.linspace(0.0, 1.0, max_size - 1), method="lower"))
    return np.concatenate([[0.0], s[s > 0.0]])


def _grid(grid: Any, scores: np.ndarray) -> np.ndarray:
    g = candidate_grid(scores) if grid is None else np.asarray(grid, dtype=float).ravel()
    if not g.size or not np.isfinite(g).all() or (np.diff(g) <= 0).any():
        raise AuditInputError(
            "grid", f"{g.size} values", "strictly increasing finite thresholds", "sort the grid"
        )
    return g


@dataclass(frozen=True)
class Certificate:
    """The auto-clear rule ``clear if P(abnormal) < threshold`` and its guarantee.

    Attributes
    ----------
    threshold : float or None
        The certified threshold; ``None`` when none could be certified (nothing is cleared).
    alpha, delta : float
        ``P(miss rate <= alpha) >= 1 - delta``; the miss rate is the share of abnormal studies
        cleared.
    n_abnormal, n_normal : int
        Calibration studies.
    misses : int
        Abnormal calibration studies below the threshold.
    miss_rate_upper : float
        One-sided ``1 - delta`` Clopper-Pearson upper bound of the miss rate (< ``alpha`` when
        certified).
    normals_cleared : float
        Share of normal calibration studies cleared (the workload removed).
    p_value : float
        p-value of the certified threshold (of the first one tested when none is certified).
    n_tested : int
        Hypotheses tested before the sequence stopped.
    min_abnormal : int
        Fewest abnormal calibration studies with which any threshold can be certified (zero misses).
    """

    threshold: float | None
    alpha: float
    delta: float
    n_abnormal: int
    n_normal: int
    misses: int
    miss_rate_upper: float
    normals_cleared: float
    p_value: float
    n_tested: int
    min_abnormal: int

    @property
    def certified(self) -> bool:
        """Whether a threshold was certified."""
        return self.threshold is not None


def _zero_miss_n(alpha: float, delta: float) -> int:
    return int(np.ceil(np.log(delta) / np.log1p(-alpha) - 1e-12))


def certify_clear_threshold(
    y_true: Any, p_abnormal: Any, *, alpha: float, delta: float, grid: Any = None
) -> Certificate:
    """Certify the largest auto-clear threshold whose miss rate is at most ``alpha``.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Calibration labels in ``{0, 1}`` (1 = abnormal), in-scope studies only.
    p_abnormal : array-like of shape (n,)
        Calibrated probabilities (or any score; the guarantee does not need calibration).
    alpha : float
        Largest tolerated miss rate, in (0, 1).
    delta : float
        Allowed probability that the certified rule's miss rate exceeds ``alpha``.
    grid : array-like, optional
        Strictly increasing candidate thresholds (default :func:`candidate_grid` of the scores).

    Returns
    -------
    Certificate

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.random(4000) < 0.4
    >>> p = np.where(y, rng.beta(5, 2, 4000), rng.beta(2, 5, 4000))
    >>> cert = certify_clear_threshold(y, p, alpha=0.05, delta=0.05)
    >>> cert.certified, cert.miss_rate_upper < 0.05
    (True, True)
    """
    a, d = _level("alpha", alpha), _level("delta", delta)
    y, s = _labels_scores(y_true, p_abnormal, "p_abnormal")
    g = _grid(grid, s)
    pos = np.sort(s[y == 1.0])
    neg = np.sort(s[y == 0.0])
    misses = np.searchsorted(pos, g, side="left")  # abnormal strictly below each threshold
    p = binomial_p_value(misses, pos.size, a)
    failed = np.flatnonzero(p > d)
    n_ok = int(failed[0]) if failed.size else g.size
    n_tested = min(n_ok + 1, g.size)
    best = n_ok - 1
    k = int(misses[best]) if best >= 0 else 0
    _, upper = clopper_pearson(k, pos.size, ci_level=1.0 - 2.0 * d)
    cleared = np.searchsorted(neg, g[best], side="left") / neg.size if best >= 0 and neg.size else 0
    return Certificate(
        threshold=float(g[best]) if best >= 0 else None,
        alpha=a,
        delta=d,
        n_abnormal=int(pos.size),
        n_normal=int(neg.size),
        misses=k,
        miss_rate_upper=float(upper),
        normals_cleared=float(cleared),
        p_value=float(p[max(best, 0)]),
        n_tested=n_tested,
        min_abnormal=_zero_miss_n(a, d),
    )


@dataclass(frozen=True)
class FlagRule:
    """The flag rule ``flag if P(abnormal) >= threshold`` with ``P(PPV >= ppv) >= 1 - delta``.

    ``threshold`` is ``None`` when no threshold could be certified (nothing is flagged);
    ``n_flagged`` / ``n_false`` are calibration counts at the threshold, ``ppv_lower`` the
    one-sided ``1 - delta`` Clopper-Pearson lower bound of the PPV.
    """

    threshold: float | None
    ppv: float
    delta: float
    n_flagged: int
    n_false: int
    ppv_lower: float
    n_tested: int


def flag_threshold(
    y_true: Any,
    p_abnormal: Any,
    *,
    ppv: float,
    delta: float,
    grid: Any = None,
    min_flagged: int = 30,
) -> FlagRule:
    """The lowest flag threshold whose PPV is at least ``ppv`` (fixed-sequence, from the top).

    Thresholds are tested from the highest down, starting at the first that flags at least
    ``min_flagged`` calibration studies (the order depends on the scores only, never on labels);
    ``H0: 1 - PPV > 1 - ppv`` is tested with the exact binomial p-value on the flagged studies.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.random(4000) < 0.4
    >>> p = np.where(y, rng.beta(5, 2, 4000), rng.beta(2, 5, 4000))
    >>> rule = flag_threshold(y, p, ppv=0.8, delta=0.05)
    >>> rule.ppv_lower >= 0.8
    True
    """
    target, d = _level("ppv", ppv), _level("delta", delta)
    y, s = _labels_scores(y_true, p_abnormal, "p_abnormal")
    g = _grid(grid, s)[::-1]
    order = np.argsort(s)
    sorted_s, sorted_neg = s[order], np.cumsum((y[order] == 0.0)[::-1])[::-1]
    start = np.searchsorted(sorted_s, g, side="left")  # first row flagged at each threshold
    n_flag = s.size - start
    n_false = np.where(start < s.size, sorted_neg[np.minimum(start, s.size - 1)], 0)
    g, n_flag, n_false = (x[n_flag >= min_flagged] for x in (g, n_flag, n_false))
    p = binomial_p_value(n_false, n_flag, 1.0 - target)
    failed = np.flatnonzero(p > d)
    best = (int(failed[0]) if failed.size else g.size) - 1
    if best < 0:
        return FlagRule(None, target, d, 0, 0, float("nan"), min(1, g.size))
    lo, _ = clopper_pearson(n_flag[best] - n_false[best], n_flag[best], ci_level=1.0 - 2.0 * d)
    return FlagRule(
        float(g[best]), target, d, int(n_flag[best]), int(n_false[best]), float(lo), best + 2
    )


def assign_buckets(
    p_abnormal: Any,
    *,
    clear_below: Any,
    flag_at_or_above: float | None,
    in_scope: Any = None,
) -> np.ndarray:
    """Bucket of each study: ``clear`` / ``uncertain`` / ``flag``.

    Parameters
    ----------
    p_abnormal : array-like of shape (n,)
        Calibrated probabilities.
    clear_below : float, None or array-like of shape (n,)
        Auto-clear threshold (per row after subgroup re-certification); ``None`` / ``NaN`` /
        ``0`` clears nothing.
    flag_at_or_above : float or None
        Flag threshold; ``None`` flags nothing. Flag wins over clear where they overlap.
    in_scope : array-like of bool, optional
        Out-of-scope rows (``False``) are never cleared or flagged: they go to ``uncertain``.

    Examples
    --------
    >>> assign_buckets([0.01, 0.5, 0.9, 0.01], clear_below=0.05, flag_at_or_above=0.8,
    ...                in_scope=[True, True, True, False]).tolist()
    ['clear', 'uncertain', 'flag', 'uncertain']
    """
    p = as_1d("p_abnormal", p_abnormal, np.asarray(p_abnormal).size).astype(float)
    if not np.isfinite(p).all():
        raise AuditInputError("p_abnormal", "non-finite values", "probabilities", "score every row")
    clear = np.zeros(p.size) if clear_below is None else np.broadcast_to(clear_below, p.shape)
    clear = np.nan_to_num(np.asarray(clear, dtype=float), nan=0.0)
    scope = np.ones(p.size, bool) if in_scope is None else as_1d("in_scope", in_scope, p.size)
    scope = scope.astype(bool)
    flag = np.inf if flag_at_or_above is None else float(flag_at_or_above)
    out = np.full(p.size, "uncertain", dtype=object)
    out[scope & (p < clear)] = "clear"
    out[scope & (p >= flag)] = "flag"
    return out
