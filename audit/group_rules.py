"""Group-aware decision rules at an operating threshold, fitted on one fitting set.

Each rule is fitted on the rows of the groups it serves and returned as ``apply(scores, groups)``
plus one row per group describing it (its raw-score thresholds): fairlearn's
``ThresholdOptimizer`` around a precomputed score (``"threshold_optimizer"``), per-group thresholds
reaching a common TPR/FPR (``"group_thresholds"``), or Platt recalibration per group and one common
threshold on the recalibrated probability (``"group_recalibration"``). Cross-fitting and the
before/after evaluation live in :mod:`clinaudit.audit.fairness_mitigation`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from fairlearn.postprocessing import ThresholdOptimizer
from sklearn.base import BaseEstimator, ClassifierMixin

from .calibration_fit import expit, logistic_recalibration, logit

__all__ = ["Rule", "ScoreAsPrediction", "fit_group_rule"]


class ScoreAsPrediction(ClassifierMixin, BaseEstimator):
    """A 'prefit' estimator whose prediction is the first column of ``X`` (a precomputed score).

    Lets fairlearn's ``ThresholdOptimizer(prefit=True, predict_method="predict")`` post-process
    scores produced elsewhere (a vendor model, a scores CSV) without refitting anything.
    """

    def fit(self, X: Any, y: Any = None) -> ScoreAsPrediction:
        """Nothing to fit (the scores are given)."""
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The score column."""
        return np.asarray(X, dtype=float)[:, 0]

    def __sklearn_is_fitted__(self) -> bool:
        return True


Rule = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _threshold_row(group: str, **values: Any) -> dict[str, Any]:
    keys = ("threshold", "threshold_alt", "p_threshold", "threshold_recalibrated")
    row = dict.fromkeys((*keys, "intercept", "slope"), np.nan)
    row.update(group=group, fallback=False, operator=">=", n_fit=0, n_pos_fit=0)
    row.update(values)
    return row


def _group_threshold(y: np.ndarray, s: np.ndarray, metric: str, target: float) -> float:
    """Highest threshold reaching ``target`` TPR, or lowest keeping FPR at most ``target``."""
    if metric == "tpr":
        pos = np.sort(s[y == 1.0])[::-1]
        k = max(int(np.ceil(target * pos.size - 1e-9)), 1)
        return float(pos[k - 1])
    neg = np.sort(s[y == 0.0])[::-1]
    k = int(np.floor(target * neg.size + 1e-9))
    return 0.0 if k >= neg.size else float(np.nextafter(neg[k], np.inf))


def _recalibrated_cuts(
    y: np.ndarray, s: np.ndarray, g: np.ndarray, fitted: list[str], metric: str, target: float
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Platt per group, one common threshold on the recalibrated probability, as raw cuts."""
    maps, rows = {}, []
    for grp in fitted:
        fit = logistic_recalibration(y[g == grp], s[g == grp])
        ok = fit.converged and fit.slope > 0
        maps.update({grp: (fit.intercept, fit.slope)} if ok else {})
        rows.append(_threshold_row(grp, fallback=not ok, intercept=fit.intercept, slope=fit.slope))
    m = np.isin(g, list(maps))
    a, b = (np.array([maps[v][i] for v in g[m]]) for i in (0, 1))
    common = _group_threshold(y[m], expit(a + b * logit(s[m])), metric, target) if m.any() else 1
    cuts = {grp: float(expit((logit(common) - a_) / b_)) for grp, (a_, b_) in maps.items()}
    for row in rows:
        row.update(threshold=cuts.get(row["group"], np.nan), threshold_recalibrated=common)
    return cuts, rows


def _threshold_optimizer(
    y: np.ndarray, s: np.ndarray, g: np.ndarray, opts: dict[str, Any]
) -> tuple[Rule, list[dict[str, Any]]]:
    opt = ThresholdOptimizer(
        estimator=ScoreAsPrediction(),
        constraints=opts["constraints"],
        objective=opts["objective"],
        prefit=True,
        predict_method="predict",
    ).fit(s[:, None], y.astype(int), sensitive_features=g)
    rows = []
    for grp, ip in sorted(opt.interpolated_thresholder_.interpolation_dict.items()):
        op0, op1 = ip.operation0, ip.operation1
        rows.append(
            _threshold_row(
                str(grp),
                operator=op0.operator,
                threshold=float(op0.threshold),
                threshold_alt=float(op1.threshold),
                p_threshold=float(ip.p0),
            )
        )

    def apply(s_new: np.ndarray, g_new: np.ndarray) -> np.ndarray:
        out = s_new >= opts["threshold"]
        m = np.isin(g_new, list(opt.interpolated_thresholder_.interpolation_dict))
        if m.any():
            rs = opts["random_state"]
            out[m] = opt.predict(s_new[m, None], sensitive_features=g_new[m], random_state=rs) == 1
        return out

    return apply, rows


def fit_group_rule(
    method: str,
    y: np.ndarray,
    s: np.ndarray,
    g: np.ndarray,
    fitted: list[str],
    opts: dict[str, Any],
) -> tuple[Rule, list[dict[str, Any]]]:
    """Fit ``method`` on the fitted groups' rows; return ``apply(s, g)`` and threshold rows.

    Parameters
    ----------
    method : {"threshold_optimizer", "group_thresholds", "group_recalibration"}
        The rule (see :mod:`clinaudit.audit.fairness_mitigation`).
    y, s, g : ndarray of shape (n,)
        Labels, scores and group labels of the fitting rows.
    fitted : list of str
        Groups the rule is fitted for (others keep ``opts["threshold"]``).
    opts : dict
        ``threshold``, ``metric`` (``"tpr"``/``"fpr"``), and for the threshold optimizer
        ``constraints``, ``objective``, ``random_state``.

    Returns
    -------
    apply : callable
        ``apply(scores, groups) -> bool decisions`` for new rows.
    rows : list of dict
        One threshold row per fitted group (``group``, ``threshold``..., ``n_fit``, ``n_pos_fit``).
    """
    thr, metric = opts["threshold"], opts["metric"]
    keep = np.isin(g, fitted)
    y, s, g = y[keep], s[keep], g[keep]
    if method == "threshold_optimizer":
        apply, rows = _threshold_optimizer(y, s, g, opts)
    else:
        # target: the pooled TPR (or FPR) of the fitting rows at the original threshold
        target = float((s >= thr)[y == (1.0 if metric == "tpr" else 0.0)].mean())
        if method == "group_thresholds":
            cuts = {
                grp: _group_threshold(y[g == grp], s[g == grp], metric, target) for grp in fitted
            }
            rows = [_threshold_row(grp, threshold=cut) for grp, cut in cuts.items()]
        else:
            cuts, rows = _recalibrated_cuts(y, s, g, fitted, metric, target)

        def apply(s_new: np.ndarray, g_new: np.ndarray) -> np.ndarray:
            return s_new >= np.array([cuts.get(v, thr) for v in g_new])

    for row in rows:
        row.update(n_fit=int((g == row["group"]).sum()), n_pos_fit=int(y[g == row["group"]].sum()))
    return apply, rows
