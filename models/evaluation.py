"""Evaluation of a multi-label model's probabilities: per-label AUROC, masked binary
cross-entropy, and the operating thresholds that reach a target sensitivity.

Used by training (validation), by the embedded vendor model (held-out AUROC, thresholds written
into the model card) and by focused re-training (its regression guard).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from clinaudit.sources.cxr_labels import FINDINGS


def per_label_auroc(
    y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str]
) -> dict[str, float]:
    """AUROC per label over labelled rows; NaN where a label lacks positives or negatives.

    Parameters
    ----------
    y_true : numpy.ndarray
        ``(n, L)`` 0/1/NaN.
    y_prob : numpy.ndarray
        ``(n, L)`` scores.
    labels : sequence of str
        Label names (dictionary keys).

    Returns
    -------
    dict of str to float
        AUROC per label (NaN = undefined, never a made-up value).
    """
    out = {}
    for j, label in enumerate(labels):
        known = ~np.isnan(y_true[:, j])
        y = y_true[known, j]
        out[label] = float(roc_auc_score(y, y_prob[known, j])) if 0 < y.sum() < y.size else math.nan
    return out


def masked_bce_from_probabilities(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities over the labelled (non-NaN) entries."""
    known = ~np.isnan(y_true)
    if not known.any():
        return math.nan
    p = np.clip(y_prob[known].astype(np.float64), 1e-7, 1 - 1e-7)
    y = y_true[known]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def fit_operating_thresholds(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    *,
    target_sensitivity: float = 0.8,
    labels: Sequence[str] = FINDINGS,
) -> dict[str, float]:
    """Per label, the highest threshold whose sensitivity (``prob >= t``) reaches the target.

    Parameters
    ----------
    y_true : numpy.ndarray
        ``(n, L)`` 0/1 with NaN for unknown labels (ignored).
    y_prob : numpy.ndarray
        ``(n, L)`` probabilities.
    target_sensitivity : float
        Required fraction of positives at or above the threshold, in ``(0, 1]``.
    labels : sequence of str
        Label names, in column order.

    Returns
    -------
    dict of str to float
        Threshold per label.

    Raises
    ------
    ValueError
        If shapes disagree or a label has no labelled positive (its threshold is undefined; the
        message names the labels).

    Examples
    --------
    >>> y = np.array([[1.0], [1.0], [0.0], [1.0]])
    >>> p = np.array([[0.9], [0.4], [0.3], [0.7]])
    >>> fit_operating_thresholds(y, p, target_sensitivity=0.6, labels=["A"])
    {'A': 0.7}
    """
    y_true = np.asarray(y_true, dtype=float)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_true.shape != y_prob.shape or y_true.ndim != 2 or y_true.shape[1] != len(labels):
        raise ValueError(
            f"y_true {y_true.shape} and y_prob {y_prob.shape} must both be (n, {len(labels)})"
        )
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity={target_sensitivity} must lie in (0, 1]")
    thresholds, no_positive = {}, []
    for j, label in enumerate(labels):
        positives = np.sort(y_prob[y_true[:, j] == 1, j])[::-1]
        if positives.size == 0:
            no_positive.append(label)
            continue
        k = math.ceil(target_sensitivity * positives.size - 1e-9)
        thresholds[label] = float(positives[k - 1])
    if no_positive:
        raise ValueError(
            f"no labelled positive image for {no_positive} in the validation data, so no "
            "threshold reaches a sensitivity; enlarge the validation split or set these "
            "thresholds from another source"
        )
    return thresholds
