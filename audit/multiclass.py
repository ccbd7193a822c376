"""Multi-class discrimination with clustered-bootstrap intervals, and paired comparisons.

For a classifier over ``K`` categories (e.g. lesion types): accuracy, macro F1 and, per category,
sensitivity (recall: the category's own accuracy), specificity and precision, each with a
percentile interval from a bootstrap over clusters (patients). Every statistic is a function of
the weighted confusion matrix, so all replicates come from one sparse product per chunk
(:mod:`clinaudit.audit.bootstrap`): segment ``true x K + predicted``.

:func:`paired_difference` compares two prediction sets on the *same* cases (e.g. fusion minus the
best single modality) with the same draws for both, so the interval reflects the paired design.

Macro F1 averages over the categories present in the truth or the predictions of the (weighted)
sample, as scikit-learn's ``f1_score(average="macro")`` does with its default labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .bootstrap import derive_rng, iter_count_chunks, percentile_ci, segment_matrix
from .types import AuditInputError, check_ci_level, check_positive_int

__all__ = [
    "MULTICLASS_METRICS",
    "PairedDifference",
    "confusion_metrics",
    "multiclass_audit",
    "paired_difference",
]

#: Metrics of :func:`confusion_metrics` over all categories.
MULTICLASS_METRICS: tuple[str, ...] = ("accuracy", "macro_f1")
_PER_CLASS = ("sensitivity", "specificity", "precision", "f1")


def confusion_metrics(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro F1 and per-category metrics of confusion matrices ``(..., K, K)``.

    ``conf[..., i, j]`` = weight of cases of true category ``i`` predicted ``j``. Per-category
    arrays have shape ``(..., K)``; a metric whose denominator is zero is NaN.

    Examples
    --------
    >>> m = confusion_metrics(np.array([[3.0, 1.0], [0.0, 4.0]]))
    >>> float(m["accuracy"]), round(float(m["macro_f1"]), 4), m["sensitivity"].tolist()
    (0.875, 0.873, [0.75, 1.0])
    """
    conf = np.asarray(conf, dtype=float)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    support = conf.sum(axis=-1)
    predicted = conf.sum(axis=-2)
    total = support.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(support > 0, tp / support, np.nan)
        prec = np.where(predicted > 0, tp / predicted, np.nan)
        negatives = total[..., None] - support
        tn = negatives - (predicted - tp)
        spec = np.where(negatives > 0, tn / negatives, np.nan)
        seen = (support + predicted) > 0
        f1 = np.where(seen, 2.0 * tp / np.where(seen, support + predicted, 1.0), np.nan)
        acc = np.where(total > 0, tp.sum(axis=-1) / total, np.nan)
        n_seen = seen.sum(axis=-1)
        macro = np.where(n_seen > 0, np.nansum(f1, axis=-1) / np.maximum(n_seen, 1), np.nan)
    return {
        "accuracy": acc,
        "macro_f1": macro,
        "sensitivity": sens,
        "specificity": spec,
        "precision": prec,
        "f1": f1,
    }


def _codes(name: str, values: Any, classes: Sequence[Any], n: int | None) -> np.ndarray:
    arr = np.asarray(values, dtype=object).ravel()
    if n is not None and arr.size != n:
        raise AuditInputError(name, f"{arr.size} values", f"{n} (one per case)", "align inputs")
    index = {c: i for i, c in enumerate(classes)}
    codes = np.array([index.get(v, -1) for v in arr], dtype=np.int64)
    if (codes < 0).any():
        bad = arr[codes < 0][0]
        raise AuditInputError(name, repr(bad), f"one of {list(classes)}", "map it to a category")
    return codes


def _clusters(clusters: Any, n: int) -> tuple[np.ndarray, int]:
    if clusters is None:
        return np.arange(n), n
    arr = np.asarray(clusters, dtype=object).ravel()
    if arr.size != n:
        raise AuditInputError("clusters", f"{arr.size} values", f"{n}", "one cluster per case")
    _, codes = np.unique(arr.astype(str), return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1 if n else 0


def _confusions(
    mats: Sequence[Any], k: int, n_clusters: int, n_boot: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Replicate confusion matrices ``(n_boot, K, K)`` of each segment matrix, same draws."""
    out = [np.empty((n_boot, k, k)) for _ in mats]
    start = 0
    for chunk in iter_count_chunks(n_clusters, n_boot, rng):
        stop = start + chunk.shape[1]
        for o, mat in zip(out, mats, strict=True):
            sums = np.asarray(mat @ chunk)  # (K*K, chunk)
            o[start:stop] = sums.T.reshape(-1, k, k)
        start = stop
    return out


def multiclass_audit(
    y_true: Any,
    y_pred: Any,
    *,
    classes: Sequence[Any],
    clusters: Any = None,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    key: str = "multiclass",
) -> pd.DataFrame:
    """Accuracy, macro F1 and per-category metrics with clustered-bootstrap intervals.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        True and predicted categories, each one of ``classes``.
    classes : sequence
        The categories, in report order.
    clusters : array-like of shape (n,), optional
        Resampling unit (patient); default each case.
    n_boot, ci_level, seed, key
        Bootstrap replicates, interval coverage, the user's seed and the stream name
        (:func:`~clinaudit.audit.bootstrap.derive_rng`).

    Returns
    -------
    DataFrame
        ``metric, category, n, estimate, ci_low, ci_high`` (``category`` is ``""`` for
        accuracy and macro F1; ``n`` the cases, or the category's cases).
    """
    check_positive_int("n_boot", n_boot, minimum=0)
    level = check_ci_level(ci_level)
    yt = _codes("y_true", y_true, classes, None)
    yp = _codes("y_pred", y_pred, classes, yt.size)
    k = len(classes)
    cl, n_cl = _clusters(clusters, yt.size)
    point = confusion_metrics(np.bincount(yt * k + yp, minlength=k * k).reshape(k, k))
    reps = None
    if n_boot and yt.size:
        mat = segment_matrix(yt * k + yp, cl, k * k, n_cl)
        conf = _confusions([mat], k, n_cl, n_boot, derive_rng(seed, key))[0]
        reps = confusion_metrics(conf)
    support = np.bincount(yt, minlength=k)
    rows = []
    for metric in MULTICLASS_METRICS:
        lo, hi = percentile_ci(reps[metric], level) if reps else (np.nan, np.nan)
        rows.append((metric, "", int(yt.size), float(point[metric]), lo, hi))
    for metric in _PER_CLASS:
        for j, name in enumerate(classes):
            lo, hi = percentile_ci(reps[metric][:, j], level) if reps else (np.nan, np.nan)
            rows.append((metric, str(name), int(support[j]), float(point[metric][j]), lo, hi))
    return pd.DataFrame(rows, columns=["metric", "category", "n", "estimate", "ci_low", "ci_high"])


@dataclass(frozen=True)
class PairedDifference:
    """``metric(a) - metric(b)`` on the same cases, with a paired bootstrap interval.

    ``share_below_zero``: share of finite replicates with a difference below zero (a one-sided
    bootstrap p-value of "a is better", not a test with exact level).
    """

    metric: str
    estimate_a: float
    estimate_b: float
    difference: float
    ci_low: float
    ci_high: float
    ci_level: float
    n: int
    n_boot: int
    share_below_zero: float


def paired_difference(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    *,
    classes: Sequence[Any],
    metric: str = "macro_f1",
    category: Any = None,
    clusters: Any = None,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    key: str = "paired",
) -> PairedDifference:
    """Paired clustered-bootstrap interval of ``metric(pred_a) - metric(pred_b)``.

    ``metric``: ``accuracy``, ``macro_f1``, or a per-category metric (``sensitivity``,
    ``specificity``, ``precision``, ``f1``) of ``category``. Both prediction sets are
    evaluated on every replicate's *same* resampled cases.

    Examples
    --------
    >>> y = ["a", "b"] * 50
    >>> d = paired_difference(y, y, ["a"] * 100, classes=["a", "b"], n_boot=200)
    >>> d.difference > 0 and d.ci_low > 0
    True
    """
    check_positive_int("n_boot", n_boot, minimum=1)
    level = check_ci_level(ci_level)
    yt = _codes("y_true", y_true, classes, None)
    a = _codes("pred_a", pred_a, classes, yt.size)
    b = _codes("pred_b", pred_b, classes, yt.size)
    k = len(classes)
    if metric in MULTICLASS_METRICS:
        col = None
    elif metric in _PER_CLASS and category in list(classes):
        col = list(classes).index(category)
    else:
        raise AuditInputError(
            "metric", f"{metric!r} (category {category!r})",
            f"one of {list(MULTICLASS_METRICS)}, or one of {list(_PER_CLASS)} with a category",
            "name the metric (and category) to compare",
        )  # fmt: skip

    def pick(values: dict[str, np.ndarray]) -> np.ndarray:
        v = values[metric]
        return v if col is None else v[..., col]

    cl, n_cl = _clusters(clusters, yt.size)
    point = [
        float(pick(confusion_metrics(np.bincount(yt * k + p, minlength=k * k).reshape(k, k))))
        for p in (a, b)
    ]
    mats = [segment_matrix(yt * k + p, cl, k * k, n_cl) for p in (a, b)]
    conf_a, conf_b = _confusions(mats, k, n_cl, n_boot, derive_rng(seed, key))
    diff = pick(confusion_metrics(conf_a)) - pick(confusion_metrics(conf_b))
    lo, hi = percentile_ci(diff, level)
    finite = diff[np.isfinite(diff)]
    return PairedDifference(
        metric=metric if col is None else f"{metric}[{category}]",
        estimate_a=point[0],
        estimate_b=point[1],
        difference=point[0] - point[1],
        ci_low=lo,
        ci_high=hi,
        ci_level=level,
        n=int(yt.size),
        n_boot=int(n_boot),
        share_below_zero=float((finite < 0).mean()) if finite.size else float("nan"),
    )
