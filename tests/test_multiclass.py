"""Multi-class metrics and the paired bootstrap: equal to scikit-learn and to a slow loop."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)

from clinaudit.audit import multiclass
from clinaudit.audit.bootstrap import bootstrap_counts, derive_rng, percentile_ci
from clinaudit.audit.multiclass import confusion_metrics, multiclass_audit, paired_difference
from clinaudit.audit.types import AuditInputError

CLASSES = ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]


def _data(seed: int = 0, n: int = 600):
    rng = np.random.default_rng(seed)
    y = rng.choice(CLASSES, n, p=[0.25, 0.2, 0.05, 0.25, 0.1, 0.15])
    noisy = lambda acc: np.where(rng.random(n) < acc, y, rng.choice(CLASSES, n))  # noqa: E731
    patients = rng.integers(0, n // 3, n)
    return y, noisy(0.8), noisy(0.6), patients


def test_point_estimates_equal_scikit_learn() -> None:
    y, a, _, _ = _data()
    out = multiclass_audit(y, a, classes=CLASSES, n_boot=0).set_index(["metric", "category"])
    assert out.loc[("accuracy", ""), "estimate"] == pytest.approx(accuracy_score(y, a), abs=1e-12)
    assert out.loc[("macro_f1", ""), "estimate"] == pytest.approx(
        f1_score(y, a, average="macro"), abs=1e-12
    )
    rec = recall_score(y, a, labels=CLASSES, average=None)
    prec = precision_score(y, a, labels=CLASSES, average=None)
    cm = confusion_matrix(y, a, labels=CLASSES)
    for j, c in enumerate(CLASSES):
        assert out.loc[("sensitivity", c), "estimate"] == pytest.approx(rec[j], abs=1e-12)
        assert out.loc[("precision", c), "estimate"] == pytest.approx(prec[j], abs=1e-12)
        tn = cm.sum() - cm[j].sum() - cm[:, j].sum() + cm[j, j]
        spec = tn / (cm.sum() - cm[j].sum())
        assert out.loc[("specificity", c), "estimate"] == pytest.approx(spec, abs=1e-12)
        assert out.loc[("sensitivity", c), "n"] == (y == c).sum()


def test_macro_f1_skips_categories_absent_from_truth_and_predictions() -> None:
    y = np.array(["ACK", "BCC", "ACK", "BCC"])
    p = np.array(["ACK", "ACK", "ACK", "BCC"])
    m = multiclass_audit(y, p, classes=CLASSES, n_boot=0).set_index(["metric", "category"])
    assert m.loc[("macro_f1", ""), "estimate"] == pytest.approx(f1_score(y, p, average="macro"))
    assert np.isnan(m.loc[("f1", "MEL"), "estimate"])


def _slow_paired(y, a, b, patients, n_boot, seed, key):
    """The definition, replicate by replicate: weights from the same cluster draws, a weighted
    confusion matrix per model by a Python loop, F1 per category by its formula."""
    codes = {c: i for i, c in enumerate(CLASSES)}
    _, cl = np.unique(patients.astype(str), return_inverse=True)
    counts = bootstrap_counts(int(cl.max()) + 1, n_boot, derive_rng(seed, key))
    diffs = []
    for b_counts in counts:
        w = b_counts[cl]
        scores = []
        for pred in (a, b):
            conf = np.zeros((6, 6))
            for t, p, wi in zip(y, pred, w, strict=True):
                conf[codes[t], codes[p]] += wi
            f1s = []
            for j in range(6):
                denom = conf[j].sum() + conf[:, j].sum()
                if denom > 0:
                    f1s.append(2 * conf[j, j] / denom)
            scores.append(np.mean(f1s))
        diffs.append(scores[0] - scores[1])
    return np.array(diffs)


def test_paired_bootstrap_equals_a_slow_reference() -> None:
    y, a, b, patients = _data(1, n=240)
    fast = paired_difference(
        y, a, b, classes=CLASSES, clusters=patients, n_boot=150, seed=3, key="fusion"
    )
    slow = _slow_paired(y, a, b, patients, 150, 3, "fusion")
    lo, hi = percentile_ci(slow, 0.95)
    assert fast.ci_low == pytest.approx(lo, abs=1e-12) and fast.ci_high == pytest.approx(
        hi, abs=1e-12
    )
    assert fast.difference == pytest.approx(
        f1_score(y, a, average="macro") - f1_score(y, b, average="macro"), abs=1e-12
    )
    assert fast.share_below_zero == pytest.approx((slow < 0).mean(), abs=1e-12)


def test_paired_interval_is_narrower_than_the_unpaired_one_for_correlated_models() -> None:
    y, a, _, patients = _data(2)
    rng = np.random.default_rng(5)
    b = np.where(rng.random(len(y)) < 0.9, a, rng.choice(CLASSES, len(y)))  # a, slightly noisier
    paired = paired_difference(y, a, b, classes=CLASSES, clusters=patients, n_boot=400)
    ca = multiclass_audit(y, a, classes=CLASSES, clusters=patients, n_boot=400, key="x")
    cb = multiclass_audit(y, b, classes=CLASSES, clusters=patients, n_boot=400, key="y")
    width = lambda t: float(t.iloc[1]["ci_high"] - t.iloc[1]["ci_low"])  # noqa: E731
    assert paired.ci_high - paired.ci_low < 0.5 * (width(ca) + width(cb))


def test_per_category_difference_and_bad_inputs() -> None:
    y, a, b, _ = _data(3)
    d = paired_difference(y, a, b, classes=CLASSES, metric="sensitivity", category="MEL", n_boot=50)
    assert d.metric == "sensitivity[MEL]"
    with pytest.raises(AuditInputError, match="name the metric"):
        paired_difference(y, a, b, classes=CLASSES, metric="sensitivity", n_boot=10)
    with pytest.raises(AuditInputError, match="'XYZ'"):
        multiclass_audit(["XYZ"], ["ACK"], classes=CLASSES, n_boot=0)


def test_same_seed_same_intervals_and_docstrings() -> None:
    y, a, _, p = _data(4)
    one = multiclass_audit(y, a, classes=CLASSES, clusters=p, n_boot=100, seed=7)
    two = multiclass_audit(y, a, classes=CLASSES, clusters=p, n_boot=100, seed=7)
    assert one.equals(two)
    assert (
        confusion_metrics(np.zeros((2, 2)))["accuracy"] != confusion_metrics(np.eye(2))["accuracy"]
    )
    result = doctest.testmod(multiclass)
    assert result.attempted > 0 and result.failed == 0
