"""Calibration error at small n: a debiased estimator, intervals and the perfect-calibration floor.

Why
---
With a few hundred questions the plug-in binned ECE is dominated by sampling noise: a perfectly
calibrated model answering 200 questions has a 10-bin plug-in ECE of about 0.065 (median), at or
above 0.05 in most samples. Quoting "ECE = 0.06" without that reference reads as miscalibration.
This module therefore gives, for the same questions:

* :func:`debiased_ece`: the debiased L2 calibration error of Kumar, Liang & Ma (2019, "Verified
  uncertainty calibration", NeurIPS, section 5). Per bin ``b`` with ``n_b`` rows, mean prediction
  ``pbar_b`` and observed rate ``ybar_b``::

      e_b = (pbar_b - ybar_b)^2 - ybar_b (1 - ybar_b) / (n_b - 1)     (0 when n_b < 2)
      debiased_ece = sqrt(max(0, sum_b (n_b / n) e_b))

  The subtracted term is the unbiased estimate of ``Var(ybar_b)`` when the rows of a bin share one
  probability, so ``sum_b (n_b / n) e_b`` is unbiased for the binned squared calibration error; the
  square root and the truncation at 0 make the final value slightly biased upwards, far less than
  the plug-in estimator. Bins with fewer than 2 rows contribute 0 (as in the authors'
  ``uncertainty-calibration`` package).
* the plug-in L1 ECE ``sum_b (n_b / n) |ybar_b - pbar_b|``
  (:func:`clinaudit.audit.calibration.expected_calibration_error`, same bins).
* :func:`ece_with_ci`: both with percentile bootstrap intervals over questions, or over clusters
  (images, patients) when several questions share one. The whole estimator, bin edges included,
  is re-applied to every replicate. Caution: a resample adds sampling noise on top of the
  sample's, so the plug-in ECE's percentile interval sits *above* the plug-in estimate (often
  excluding it) at this n; it measures spread, not where the true calibration error lies. Read
  the plug-in value against :func:`perfect_calibration_reference` and the debiased one for size.
* :func:`perfect_calibration_reference`: the distribution of an estimator for a perfectly
  calibrated model with the same predictions: ``y ~ Bernoulli(p)`` drawn from the model's own
  probabilities. The report puts its median and 5-95 % range next to the model's ECE.
* :func:`reliability_table`: per-bin counts, mean prediction and observed rate with Wilson
  intervals.
* :func:`fit_group_calibrators` / :func:`apply_group_calibrators` (defined in
  ``audit/group_calibration.py``, re-exported here): a temperature or Platt map per group.

Bins: ``n_bins`` is an int or ``"sweep"``, the monotonic sweep of Roelofs et al. (2022,
"Mitigating bias in calibration error estimation", AISTATS): the largest number of bins (up to
``MAX_SWEEP_BINS``) for which the observed rates still increase from bin to bin. Bin edges are
those of :func:`clinaudit.audit.calibration.bin_edges` (equal-mass by default here, as Kumar et al.
recommend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandera.typing import Series

from .bootstrap import bootstrap_counts, derive_rng, percentile_ci
from .calibration import assign_bins, bin_edges, expected_calibration_error, wilson_interval
from .calibration_fit import check_binary_probs
from .group_calibration import (
    GroupCalibrator,
    PlattFit,
    apply_group_calibrators,
    fit_group_calibrators,
    fit_platt,
)
from .schemas import OutputSchema, count_field, probability_field, validate_table
from .types import AuditInputError, as_1d, check_ci_level, check_option, check_positive_int

__all__ = [
    "MAX_SWEEP_BINS",
    "CalibrationReference",
    "EceEstimate",
    "GroupCalibrator",
    "PlattFit",
    "SmallSampleReliabilityTable",
    "apply_group_calibrators",
    "debiased_ece",
    "ece_with_ci",
    "fit_group_calibrators",
    "fit_platt",
    "perfect_calibration_reference",
    "plugin_ece",
    "reliability_table",
    "resolve_n_bins",
]

Binning = Literal["width", "mass"]
Estimator = Literal["plugin", "debiased"]
NBins = int | Literal["sweep"]
#: Upper limit of the monotonic sweep.
MAX_SWEEP_BINS = 30


def _binned(y: np.ndarray, p: np.ndarray, k: int, binning: str) -> tuple[np.ndarray, ...]:
    edges = bin_edges(p, n_bins=k, binning=binning)  # type: ignore[arg-type]
    idx = assign_bins(p, edges)
    m = edges.size - 1
    count = np.bincount(idx, minlength=m).astype(float)
    return (
        edges,
        count,
        np.bincount(idx, weights=y, minlength=m),
        np.bincount(idx, weights=p, minlength=m),
    )


def resolve_n_bins(
    y_true: Any, y_prob: Any, *, n_bins: NBins = 10, binning: Binning = "mass"
) -> int:
    """Number of bins: ``n_bins`` itself, or the monotonic sweep's choice for ``"sweep"``.

    The sweep (Roelofs et al. 2022) tries 1, 2, ... bins and keeps the last number whose non-empty
    bins have strictly increasing observed rates (at most ``MAX_SWEEP_BINS`` and ``n``).

    Examples
    --------
    >>> resolve_n_bins([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_bins="sweep")
    2
    """
    if n_bins != "sweep":
        return check_positive_int("n_bins", n_bins)
    y, p = check_binary_probs(y_true, y_prob)
    return _sweep(y, p, binning)


def _sweep(y: np.ndarray, p: np.ndarray, binning: str) -> int:
    best = 1
    for k in range(2, min(MAX_SWEEP_BINS, y.size) + 1):
        _, count, sum_y, _ = _binned(y, p, k, binning)
        rate = sum_y[count > 0] / count[count > 0]
        if not np.all(np.diff(rate) > 0.0):
            break
        best = k
    return best


def _both(y: np.ndarray, p: np.ndarray, n_bins: NBins, binning: str) -> tuple[float, float, int]:
    """(plug-in L1 ECE, debiased L2 ECE, bins used) of validated arrays."""
    k = _sweep(y, p, binning) if n_bins == "sweep" else int(n_bins)
    _, count, sum_y, sum_p = _binned(y, p, k, binning)
    plugin = float(np.abs(sum_y - sum_p).sum() / y.size)
    ok = count >= 2
    ybar = sum_y[ok] / count[ok]
    e = (sum_p[ok] / count[ok] - ybar) ** 2 - ybar * (1.0 - ybar) / (count[ok] - 1.0)
    return plugin, float(np.sqrt(max(0.0, float((count[ok] * e).sum() / y.size)))), k


def debiased_ece(
    y_true: Any, y_prob: Any, *, n_bins: NBins = 10, binning: Binning = "mass"
) -> float:
    """Debiased L2 calibration error (Kumar, Liang & Ma 2019); see the module docstring.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels in ``{0, 1}``.
    y_prob : array-like of shape (n,)
        Probabilities in ``[0, 1]``.
    n_bins : int or "sweep", keyword-only
        Bins, or the monotonic sweep.
    binning : {"mass", "width"}, keyword-only
        Equal-mass (default) or equal-width bins.

    Returns
    -------
    float
        ``sqrt(max(0, sum_b (n_b / n) [(pbar_b - ybar_b)^2 - ybar_b (1 - ybar_b) / (n_b - 1)]))``.

    Examples
    --------
    >>> round(debiased_ece([0, 0, 1, 1], [0.1, 0.1, 0.9, 0.9], n_bins=2), 4)
    0.1
    """
    binning = check_option("binning", binning, ("mass", "width"))  # type: ignore[assignment]
    y, p = check_binary_probs(y_true, y_prob)
    return _both(y, p, n_bins, binning)[1]


@dataclass(frozen=True)
class EceEstimate:
    """Plug-in and debiased calibration error with bootstrap intervals.

    Attributes
    ----------
    plugin_ece, plugin_ci_low, plugin_ci_high : float
        Plug-in L1 ECE and its percentile interval (biased upwards at small n: see the module
        docstring).
    debiased_ece, debiased_ci_low, debiased_ci_high : float
        Debiased L2 calibration error and its percentile interval.
    n, n_clusters : int
        Questions and resampled units (``n_clusters == n`` without ``groups``).
    n_bins : int
        Bins used on the observed sample.
    bins_rule : str
        ``"fixed"`` or ``"sweep"`` (then re-chosen on every replicate).
    binning : str
    n_boot : int
    ci_level : float
    seed : int
    """

    plugin_ece: float
    plugin_ci_low: float
    plugin_ci_high: float
    debiased_ece: float
    debiased_ci_low: float
    debiased_ci_high: float
    n: int
    n_clusters: int
    n_bins: int
    bins_rule: str
    binning: str
    n_boot: int
    ci_level: float
    seed: int


def _cluster_codes(groups: Any, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    codes, _ = pd.factorize(as_1d("groups", groups, n), sort=True)
    return codes


def ece_with_ci(
    y_true: Any,
    y_prob: Any,
    *,
    groups: Any = None,
    n_bins: NBins = 10,
    binning: Binning = "mass",
    n_boot: int = 2000,
    seed: int = 0,
    ci_level: float = 0.95,
) -> EceEstimate:
    """Plug-in and debiased ECE with percentile bootstrap intervals over questions or clusters.

    Parameters
    ----------
    y_true, y_prob : array-like of shape (n,)
        Labels in ``{0, 1}`` and probabilities in ``[0, 1]``.
    groups : array-like of shape (n,), optional, keyword-only
        Cluster of each question (image or patient id): the bootstrap then resamples clusters.
    n_bins, binning : keyword-only
        As in :func:`debiased_ece`.
    n_boot : int, keyword-only
        Replicates.
    seed : int, keyword-only
        Seed of the replicates (stream ``derive_rng(seed, "ece_with_ci")``).
    ci_level : float, keyword-only
        Interval coverage.

    Returns
    -------
    EceEstimate

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(size=200)
    >>> est = ece_with_ci((rng.uniform(size=200) < p).astype(int), p, n_boot=200)
    >>> est.n, est.n_bins, est.debiased_ci_low <= est.debiased_ci_high
    (200, 10, True)
    """
    binning = check_option("binning", binning, ("mass", "width"))  # type: ignore[assignment]
    n_boot = check_positive_int("n_boot", n_boot)
    ci_level = check_ci_level(ci_level)
    y, p = check_binary_probs(y_true, y_prob)
    codes = _cluster_codes(groups, y.size)
    n_clusters = int(codes.max()) + 1
    plugin, debiased, k = _both(y, p, n_bins, binning)
    rng = derive_rng(seed, "ece_with_ci")
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(n_clusters + 1))
    reps = np.empty((n_boot, 2))
    for b, counts in enumerate(bootstrap_counts(n_clusters, n_boot, rng)):
        rows = np.concatenate(
            [np.tile(order[starts[c] : starts[c + 1]], counts[c]) for c in np.flatnonzero(counts)]
        )
        reps[b] = _both(y[rows], p[rows], n_bins, binning)[:2]
    plo, phi = percentile_ci(reps[:, 0], ci_level)
    dlo, dhi = percentile_ci(reps[:, 1], ci_level)
    return EceEstimate(
        plugin_ece=plugin,
        plugin_ci_low=plo,
        plugin_ci_high=phi,
        debiased_ece=debiased,
        debiased_ci_low=dlo,
        debiased_ci_high=dhi,
        n=int(y.size),
        n_clusters=n_clusters,
        n_bins=k,
        bins_rule="sweep" if n_bins == "sweep" else "fixed",
        binning=binning,
        n_boot=n_boot,
        ci_level=ci_level,
        seed=int(seed),
    )


@dataclass(frozen=True)
class CalibrationReference:
    """Distribution of an ECE estimator for a perfectly calibrated model at the same ``n``.

    Attributes
    ----------
    median, p05, p95 : float
        Median and 5th / 95th percentiles of the simulated values.
    n, n_sim : int
        Questions and simulations.
    estimator, binning : str
    n_bins : int or "sweep"
    seed : int
    values : ndarray of shape (n_sim,)
        The simulated values.
    """

    median: float
    p05: float
    p95: float
    n: int
    n_sim: int
    estimator: str
    n_bins: int | str
    binning: str
    seed: int
    values: np.ndarray = field(repr=False, compare=False)

    def share_at_or_above(self, threshold: float) -> float:
        """Share of perfectly calibrated samples whose estimate is ``>= threshold``.

        With ``threshold`` = the model's observed ECE this is a one-sided p-value of "the model is
        perfectly calibrated"; with a policy limit (e.g. 0.05) it is how often a perfect model
        would breach the limit at this ``n``.
        """
        return float(np.mean(self.values >= float(threshold)))

    def to_dict(self) -> dict[str, Any]:
        """Summary without the simulated values (JSON-serialisable)."""
        return {
            "median": self.median,
            "p05": self.p05,
            "p95": self.p95,
            "n": self.n,
            "n_sim": self.n_sim,
            "estimator": self.estimator,
            "n_bins": self.n_bins,
            "binning": self.binning,
            "seed": self.seed,
        }


def perfect_calibration_reference(
    y_prob: Any,
    *,
    n_sim: int = 1000,
    seed: int = 0,
    estimator: Estimator = "plugin",
    n_bins: NBins = 10,
    binning: Binning = "mass",
) -> CalibrationReference:
    """What ``estimator`` gives for a perfectly calibrated model with these predictions.

    Each simulation draws ``y_i ~ Bernoulli(p_i)`` (calibrated by construction) and applies the
    estimator with the same bins; stream ``derive_rng(seed, "perfect_calibration")``.

    Parameters
    ----------
    y_prob : array-like of shape (n,)
        The model's probabilities on the evaluation questions.
    n_sim : int, keyword-only
        Simulations.
    seed : int, keyword-only
    estimator : {"plugin", "debiased"}, keyword-only
    n_bins, binning : keyword-only
        As in :func:`debiased_ece`.

    Returns
    -------
    CalibrationReference

    Examples
    --------
    >>> ref = perfect_calibration_reference(np.linspace(0.01, 0.99, 200), n_sim=200)
    >>> 0.03 < ref.median < 0.1
    True
    """
    estimator = check_option("estimator", estimator, ("plugin", "debiased"))  # type: ignore[assignment]
    binning = check_option("binning", binning, ("mass", "width"))  # type: ignore[assignment]
    n_sim = check_positive_int("n_sim", n_sim)
    if np.asarray(y_prob).size == 0:
        raise AuditInputError("y_prob", "0 values", "the model's probabilities", "pass them")
    _, p = check_binary_probs(np.zeros(np.asarray(y_prob).size), y_prob)
    if n_bins != "sweep":
        check_positive_int("n_bins", n_bins)
    rng = derive_rng(seed, "perfect_calibration")
    which = 0 if estimator == "plugin" else 1
    values = np.array(
        [
            _both((rng.random(p.size) < p).astype(float), p, n_bins, binning)[which]
            for _ in range(n_sim)
        ]
    )
    p05, med, p95 = np.quantile(values, [0.05, 0.5, 0.95])
    return CalibrationReference(
        float(med),
        float(p05),
        float(p95),
        int(p.size),
        n_sim,
        estimator,
        n_bins,
        binning,
        int(seed),
        values,
    )


class SmallSampleReliabilityTable(OutputSchema):
    """Reliability data of :func:`reliability_table`: one row per bin (empty bins have NaN)."""

    bin: Series[int] = count_field()
    lower: Series[float] = probability_field(nullable=False)
    upper: Series[float] = probability_field(nullable=False)
    n: Series[int] = count_field()
    mean_p: Series[float] = probability_field()
    frac_pos: Series[float] = probability_field()
    frac_pos_ci_low: Series[float] = probability_field()
    frac_pos_ci_high: Series[float] = probability_field()


def reliability_table(
    y_true: Any,
    y_prob: Any,
    *,
    n_bins: NBins = 10,
    binning: Binning = "mass",
    ci_level: float = 0.95,
) -> pd.DataFrame:
    """Per-bin count, mean prediction, observed rate and its Wilson interval.

    Columns of :class:`SmallSampleReliabilityTable`. The Wilson interval treats questions as
    independent.

    Examples
    --------
    >>> t = reliability_table([0, 1, 0, 1], [0.2, 0.3, 0.7, 0.8], n_bins=2, binning="width")
    >>> t[["n", "frac_pos"]].values.tolist()
    [[2.0, 0.5], [2.0, 0.5]]
    """
    binning = check_option("binning", binning, ("mass", "width"))  # type: ignore[assignment]
    y, p = check_binary_probs(y_true, y_prob)
    k = resolve_n_bins(y, p, n_bins=n_bins, binning=binning)
    edges, count, sum_y, sum_p = _binned(y, p, k, binning)
    lo, hi = wilson_interval(sum_y, count, ci_level=ci_level)
    with np.errstate(invalid="ignore", divide="ignore"):
        table = pd.DataFrame(
            {
                "bin": np.arange(count.size, dtype="int64"),
                "lower": edges[:-1].astype(float),
                "upper": edges[1:].astype(float),
                "n": count.astype("int64"),
                "mean_p": np.where(count > 0, sum_p / count, np.nan),
                "frac_pos": np.where(count > 0, sum_y / count, np.nan),
                "frac_pos_ci_low": lo,
                "frac_pos_ci_high": hi,
            }
        )
    return validate_table(table, SmallSampleReliabilityTable)


def plugin_ece(y_true: Any, y_prob: Any, *, n_bins: int = 10, binning: Binning = "mass") -> float:
    """Plug-in L1 ECE with this module's default (equal-mass) bins; the shared implementation."""
    return expected_calibration_error(y_true, y_prob, n_bins=n_bins, binning=binning)
