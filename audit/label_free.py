"""Label-free performance estimates of a binary score on a new site, before its labels arrive.

For one (site, finding) cell: the model's scores on a labelled *reference* set and on the
unlabelled *target* set. :func:`estimate_cell` returns the expected AUROC, sensitivity and
specificity at the operating threshold and the prevalence on the target, each with an interval
that is meant to cover the value the target's labels will show when they land.

Method (confidence-based performance estimation, CBPE)
------------------------------------------------------
1. **Calibrate on the reference**: an isotonic map from score to P(positive) (scores are rarely
   calibrated; CBPE assumes they are).
2. **Prevalence shift** (label shift: P(score | label) unchanged, the prior moves): the target
   prior is re-estimated by EM (Saerens et al. 2002) and the calibrated probabilities are
   re-weighted, *only when identified*: (a) the likelihood-ratio test of the EM prior against
   the reference prior rejects at ``prior_alpha`` (its log-likelihood ratio is 0 at the
   reference prior, so ``2 * LL`` is chi-square with 1 df under no shift), and (b) the target's
   scores fit the mixture of the reference's class-conditional score distributions at that prior
   (two-sample Kolmogorov-Smirnov, :func:`mixture_fit`). A moved mean probability whose scores
   are *not* such a mixture is covariate shift, under which the reference calibration already
   transports: re-weighting it would count the shift twice.
3. **Expected metrics**: with probabilities ``p_i``, the expected confusion counts at the
   threshold give sensitivity ``sum_{s_i >= t} p_i / sum p_i``, specificity
   ``sum_{s_i < t} (1 - p_i) / sum (1 - p_i)``, prevalence ``mean p``, and the expected AUROC
   ``sum_{i != j} p_i (1 - p_j) [s_i > s_j] / sum_{i != j} p_i (1 - p_j)`` (ties count 1/2).
4. **Interval**: a bootstrap in which each replicate resamples the reference (and refits the
   calibrator: the calibrator's own uncertainty), resamples the target, draws its labels from the
   replicate's probabilities and computes the *realised* metrics on them. Its percentiles are a
   predictive interval for what the labels will show.

Cross-check (ATC, Garg et al. 2022): the accuracy at the threshold estimated by the share of target
cases whose confidence ``max(p, 1 - p)`` exceeds the reference threshold at which that share equals
the reference accuracy; disagreement with CBPE's accuracy is reported, not hidden.

Gate (:func:`support_gate`): no label-free method works without an assumption on the shift (Garg
et al. 2022). The estimate is withheld (``estimable`` False, with the reason) when the target's
scores leave the reference's support, or when the caller's drift checks (image quality, score
drift) say the inputs are not the kind the reference describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chi2, kstwobign, rankdata
from sklearn.isotonic import IsotonicRegression

from .bootstrap import derive_rng, percentile_ci
from .types import AuditInputError, check_ci_level

__all__ = [
    "ESTIMATE_COLUMNS",
    "GateResult",
    "PriorShift",
    "atc_accuracy",
    "em_prior",
    "estimate_cell",
    "expected_auroc",
    "expected_rates",
    "mixture_fit",
    "support_gate",
]

ESTIMATE_COLUMNS: tuple[str, ...] = (
    "metric", "estimate", "ci_low", "ci_high", "method", "n_target", "n_reference",
    "prior_shift_applied", "estimable", "reason",
)  # fmt: skip
_EPS = 1e-6


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=float), _EPS, 1.0 - _EPS)


def expected_auroc(p: Any, s: Any) -> float:
    """Expected AUROC of scores ``s`` when case ``i`` is positive with probability ``p_i``.

    The ratio of the expected number of correctly ordered (positive, negative) pairs (ties 1/2)
    to the expected number of pairs, over distinct cases.

    >>> expected_auroc([1.0, 1.0, 0.0, 0.0], [0.9, 0.8, 0.2, 0.1])
    1.0
    >>> round(expected_auroc([0.5, 0.5], [0.3, 0.7]), 3)
    0.5
    """
    p = np.asarray(p, dtype=float).ravel()
    s = np.asarray(s, dtype=float).ravel()
    if p.size != s.size:
        raise AuditInputError("p", f"{p.size} values", f"{s.size} (one per score)", "align")
    values, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse, weights=p, minlength=values.size)
    neg = np.bincount(inverse, weights=1.0 - p, minlength=values.size)
    both = np.bincount(inverse, weights=p * (1.0 - p), minlength=values.size)
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    pairs = p.sum() * (1.0 - p).sum() - both.sum()
    if pairs <= 0:
        return float("nan")
    ordered = float(pos @ below) + 0.5 * float((pos * neg - both).sum())
    return float(ordered / pairs)


def expected_rates(p: Any, s: Any, threshold: float) -> dict[str, float]:
    """Expected sensitivity, specificity, accuracy and prevalence at ``score >= threshold``."""
    p = np.asarray(p, dtype=float).ravel()
    flagged = np.asarray(s, dtype=float).ravel() >= threshold
    pos, neg = p.sum(), (1.0 - p).sum()
    return {
        "sensitivity": float(p[flagged].sum() / pos) if pos > 0 else float("nan"),
        "specificity": float((1.0 - p[~flagged]).sum() / neg) if neg > 0 else float("nan"),
        "accuracy": float((p[flagged].sum() + (1.0 - p[~flagged]).sum()) / max(p.size, 1)),
        "prevalence": float(p.mean()) if p.size else float("nan"),
    }


@dataclass(frozen=True)
class PriorShift:
    """The EM re-estimate of the target prior and whether it is applied.

    ``log_lik_ratio``: ``LL(prior) - LL(reference_prior)`` of the target's probabilities;
    ``p_value``: of ``2 * log_lik_ratio`` against chi-square(1); ``applied``: identified at
    the caller's level (then ``p`` holds the re-weighted probabilities).
    """

    reference_prior: float
    prior: float
    log_lik_ratio: float
    p_value: float
    applied: bool
    p: np.ndarray


def _reweight(p: np.ndarray, prior: float, ref: float) -> np.ndarray:
    a = prior / ref * p
    b = (1.0 - prior) / (1.0 - ref) * (1.0 - p)
    return a / (a + b)


def em_prior(
    p: Any, reference_prior: float, *, alpha: float = 0.01, max_iter: int = 500, tol: float = 1e-9
) -> PriorShift:
    """EM re-estimate of the target prior from reference-calibrated probabilities ``p``.

    Parameters
    ----------
    p : array-like
        ``P(positive | score)`` under the reference prior, per target case.
    reference_prior : float
        The reference prevalence the calibrator learnt.
    alpha : float
        The prior is applied only when the likelihood-ratio test rejects "no prior shift" at
        ``alpha`` (identified); otherwise ``p`` is returned unchanged.

    Returns
    -------
    PriorShift

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.random(4000) < 0.5
    >>> s = rng.normal(np.where(y, 1.0, -1.0))
    >>> p_ref = 1 / (1 + np.exp(-2 * s))   # exact posterior at prior 0.5
    >>> shift = em_prior(p_ref[y | (rng.random(4000) < 0.25)], 0.5)
    >>> shift.applied, round(shift.prior, 2)
    (True, 0.81)
    """
    p = _clip(p)
    ref = float(np.clip(reference_prior, _EPS, 1 - _EPS))
    prior = ref
    for _ in range(max_iter):
        new = float(_reweight(p, prior, ref).mean())
        if abs(new - prior) < tol:
            prior = new
            break
        prior = new
    prior = float(np.clip(prior, _EPS, 1 - _EPS))
    terms = prior / ref * p + (1.0 - prior) / (1.0 - ref) * (1.0 - p)
    llr = float(np.log(terms).sum())
    p_value = float(chi2.sf(max(2.0 * llr, 0.0), df=1))
    applied = p_value < alpha
    return PriorShift(ref, prior, llr, p_value, applied, _reweight(p, prior, ref) if applied else p)


def mixture_fit(
    reference_scores: Any, reference_labels: Any, target_scores: Any, prior: float
) -> tuple[float, float]:
    """Kolmogorov-Smirnov distance of the target's scores to ``prior * F1 + (1 - prior) * F0``
    (the reference's class-conditional empirical CDFs), and its asymptotic p-value with the
    two-sample effective size ``n_t * n_r / (n_t + n_r)``.

    >>> rng = np.random.default_rng(0)
    >>> ry = rng.random(3000) < 0.3
    >>> rs = rng.normal(1.5 * ry)
    >>> ty = rng.random(800) < 0.6
    >>> d, p = mixture_fit(rs, ry, rng.normal(1.5 * ty), 0.6)
    >>> bool(p > 0.05)
    True
    >>> d, p = mixture_fit(rs, ry, rng.normal(0.5, 0.5, 800), 0.6)
    >>> bool(p < 0.05)
    True
    """
    rs = np.asarray(reference_scores, dtype=float)
    ry = np.asarray(reference_labels, dtype=bool)
    ts = np.sort(np.asarray(target_scores, dtype=float))
    pos, neg = np.sort(rs[ry]), np.sort(rs[~ry])
    grid = np.unique(np.concatenate([ts, rs]))
    f_mix = prior * np.searchsorted(pos, grid, side="right") / max(pos.size, 1) + (
        1 - prior
    ) * np.searchsorted(neg, grid, side="right") / max(neg.size, 1)
    f_t = np.searchsorted(ts, grid, side="right") / ts.size
    d = float(np.abs(f_t - f_mix).max())
    n_eff = ts.size * rs.size / (ts.size + rs.size)
    return d, float(kstwobign.sf(d * np.sqrt(n_eff)))


def _calibrator(scores: np.ndarray, labels: np.ndarray) -> IsotonicRegression:
    iso = IsotonicRegression(y_min=_EPS, y_max=1 - _EPS, out_of_bounds="clip")
    return iso.fit(scores, labels)


def atc_accuracy(reference_conf: Any, reference_correct: Any, target_conf: Any) -> float:
    """Average-thresholded-confidence estimate of the target's accuracy (Garg et al. 2022).

    ``*_conf``: the calibrated probability of the class the threshold decides (``p`` when
    flagged, ``1 - p`` otherwise). The confidence threshold is the reference quantile at which
    the share above it equals the reference accuracy; the estimate is the target's share above.

    >>> atc_accuracy([0.9, 0.8, 0.6, 0.55], [1, 1, 1, 0], [0.9, 0.9, 0.5, 0.5])
    0.5
    """
    conf_ref = np.asarray(reference_conf, dtype=float)
    acc = float(np.mean(np.asarray(reference_correct, dtype=float)))
    threshold = float(np.quantile(conf_ref, 1.0 - acc)) if 0 < acc < 1 else 0.5
    return float(np.mean(np.asarray(target_conf, dtype=float) > threshold))


@dataclass(frozen=True)
class GateResult:
    """Whether the cell is estimable, and why not."""

    estimable: bool
    reason: str
    outside_support: float


def support_gate(
    reference_scores: Any,
    target_scores: Any,
    *,
    max_outside: float = 0.05,
    quantiles: tuple[float, float] = (0.005, 0.995),
    drift: Mapping[str, str] | None = None,
) -> GateResult:
    """Withhold the estimate when the target leaves the reference's support, or drift says so.

    ``outside_support``: share of target scores outside the reference's ``quantiles`` range
    (widened by the expected reference share outside it); ``drift``: name -> reason of every
    failed drift check of the caller (image quality, score drift); any entry withholds.
    """
    ref = np.asarray(reference_scores, dtype=float)
    tgt = np.asarray(target_scores, dtype=float)
    lo, hi = np.quantile(ref, quantiles)
    expected = quantiles[0] + 1.0 - quantiles[1]
    outside = float(np.mean((tgt < lo) | (tgt > hi))) if tgt.size else 0.0
    excess = outside - expected
    reasons = [f"{k}: {v}" for k, v in sorted((drift or {}).items())]
    if excess > max_outside:
        reasons.append(
            f"{outside:.1%} of target scores outside the reference's "
            f"{quantiles[0]:.1%}-{quantiles[1]:.1%} range (limit {expected + max_outside:.1%})"
        )
    if reasons:
        return GateResult(False, "not estimable: inputs outside the reference (" +
                          "; ".join(reasons) + ")", outside)  # fmt: skip
    return GateResult(True, "", outside)


def _realised(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, ...]:
    n1 = int(y.sum())
    n0 = y.size - n1
    flagged = s >= threshold
    if n1 == 0 or n0 == 0:
        auroc = np.nan
    else:
        ranks = rankdata(s)
        auroc = (ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    sens = flagged[y].mean() if n1 else np.nan
    spec = (~flagged[~y]).mean() if n0 else np.nan
    return auroc, sens, spec, float((flagged == y).mean()), float(y.mean())


_METRICS = ("auroc", "sensitivity", "specificity", "accuracy", "prevalence")


def _withheld(reason: str, n_target: int, n_reference: int) -> pd.DataFrame:
    """Every estimate of a cell withheld (NaN) with ``reason``."""
    nan = np.nan
    rows = [(m, "cbpe") for m in _METRICS] + [("accuracy", "atc")]
    return pd.DataFrame(
        [
            {
                "metric": m,
                "estimate": nan,
                "ci_low": nan,
                "ci_high": nan,
                "method": method,
                "n_target": n_target,
                "n_reference": n_reference,
                "prior_shift_applied": False,
                "estimable": False,
                "reason": reason,
            }  # fmt: skip
            for m, method in rows
        ],
        columns=list(ESTIMATE_COLUMNS),
    )


def estimate_cell(
    reference_scores: Any,
    reference_labels: Any,
    target_scores: Any,
    *,
    threshold: float,
    n_boot: int = 500,
    ci_level: float = 0.90,
    prior_shift: str = "auto",
    prior_alpha: float = 0.01,
    mixture_alpha: float = 0.05,
    gate: GateResult | None = None,
    seed: int = 0,
    key: str = "label_free",
) -> pd.DataFrame:
    """Label-free estimates of one cell (see the module docstring).

    Parameters
    ----------
    reference_scores, reference_labels : array-like
        The labelled reference (labels 0/1).
    target_scores : array-like
        The unlabelled target's scores.
    threshold : float
        The operating threshold (``score >= threshold`` is positive).
    n_boot : int
        Bootstrap replicates of the interval (0: none).
    ci_level : float
        Interval level (0.90 by default: the validation goal's 90 % intervals).
    prior_shift : {"auto", "off", "on"}
        ``auto`` applies the EM prior only when identified (the prior's test rejects at
        ``prior_alpha`` and the mixture fit is not rejected at ``mixture_alpha``); ``on``
        always; ``off`` never.
    gate : GateResult, optional
        The caller's :func:`support_gate`; a closed gate withholds every estimate (NaN) and
        says why.
    seed, key : int, str
        Seed and stream of the bootstrap.

    Returns
    -------
    DataFrame
        :data:`ESTIMATE_COLUMNS`, one row per metric (``auroc``, ``sensitivity``,
        ``specificity``, ``accuracy``, ``prevalence``) for method ``cbpe``, and ``accuracy`` for
        method ``atc``.
    """
    level = check_ci_level(ci_level)
    if prior_shift not in ("auto", "off", "on"):
        raise AuditInputError("prior_shift", repr(prior_shift), "auto, off or on", "pick one")
    rs = np.asarray(reference_scores, dtype=float).ravel()
    ry = np.asarray(reference_labels, dtype=float).ravel()
    ts = np.asarray(target_scores, dtype=float).ravel()
    if gate is not None and not gate.estimable:
        return _withheld(gate.reason, ts.size, rs.size)
    if rs.size != ry.size or not np.isin(ry, (0.0, 1.0)).all():
        raise AuditInputError(
            "reference_labels", f"{ry.size} values for {rs.size} scores", "0/1 per score",
            "pass one binary label per reference score",
        )  # fmt: skip
    if not (0 < ry.sum() < ry.size) or ts.size == 0:
        raise AuditInputError(
            "reference", f"{int(ry.sum())} positives of {ry.size}, {ts.size} target cases",
            "both classes in the reference and a non-empty target", "add cases",
        )  # fmt: skip
    metrics = _METRICS
    base = {"n_target": ts.size, "n_reference": rs.size}

    def row(metric: str, est: float, lo: float, hi: float, method: str, **kw: Any) -> dict:
        return {"metric": metric, "estimate": est, "ci_low": lo, "ci_high": hi, "method": method,
                "prior_shift_applied": kw.get("applied", False), "estimable": kw.get("ok", True),
                "reason": kw.get("reason", ""), **base}  # fmt: skip

    def probs(ref_s: np.ndarray, ref_y: np.ndarray, tgt_s: np.ndarray, use: bool) -> np.ndarray:
        p = _clip(_calibrator(ref_s, ref_y).predict(tgt_s))
        return em_prior(p, float(ref_y.mean()), alpha=1.0).p if use else p

    applied = prior_shift == "on"
    if prior_shift == "auto":
        shift = em_prior(
            _clip(_calibrator(rs, ry).predict(ts)), float(ry.mean()), alpha=prior_alpha
        )
        applied = shift.applied and mixture_fit(rs, ry, ts, shift.prior)[1] >= mixture_alpha
    p = probs(rs, ry, ts, applied)
    point = {"auroc": expected_auroc(p, ts), **expected_rates(p, ts, threshold)}
    reps = np.full((n_boot, len(metrics)), np.nan)
    rng = derive_rng(seed, key)
    for b in range(n_boot):
        ri = rng.integers(0, rs.size, rs.size)
        if not (0 < ry[ri].sum() < rs.size):
            continue
        ti = rng.integers(0, ts.size, ts.size)
        pb = probs(rs[ri], ry[ri], ts[ti], applied)
        y = rng.random(ts.size) < pb
        reps[b] = _realised(y, ts[ti], threshold)
    rows = []
    for j, m in enumerate(metrics):
        lo, hi = percentile_ci(reps[:, j], level) if n_boot else (np.nan, np.nan)
        rows.append(row(m, point[m], lo, hi, "cbpe", applied=applied))
    ref_p, ref_flag, t_flag = (
        _clip(_calibrator(rs, ry).predict(rs)),
        rs >= threshold,
        ts >= threshold,
    )
    atc = atc_accuracy(
        np.where(ref_flag, ref_p, 1 - ref_p), ref_flag == (ry == 1), np.where(t_flag, p, 1 - p)
    )
    rows.append(row("accuracy", atc, np.nan, np.nan, "atc", applied=applied))
    return pd.DataFrame(rows, columns=list(ESTIMATE_COLUMNS))
