"""Operating points of a binary score at small n: threshold choice, sensitivity / specificity
with Wilson intervals, per-group tables and criteria judged against intervals.

Why
---
At 25 positives per category a sensitivity of 21/25 = 0.84 has a 95 % Wilson interval of about
0.65-0.94: a target of 0.80 is met by the point estimate but not by the interval. The report
must say which. And the threshold must be fixed on a validation split, never on the questions it
is evaluated on (choosing it on the test questions makes the test sensitivity optimistic).

* :func:`choose_threshold`: on the *validation* split, the threshold maximising sensitivity (or
  Youden's J) subject to specificity ``>= min_specificity``. Rule: predict positive when
  ``p >= threshold``; candidates are the distinct validation scores (each predicts at least one
  question positive). Sensitivity falls and specificity rises with the threshold, so
  ``"max_sensitivity"`` picks the lowest candidate meeting the specificity floor. When no
  candidate meets it the candidate with the highest specificity (then the highest sensitivity)
  is returned with ``met=False``; a caller must report that, not use it silently.
* :func:`sens_spec_at`: confusion counts and sensitivity / specificity / accuracy with Wilson
  score intervals (Wilson 1927; rows treated as independent).
* :func:`per_group_operating_table`: per group, AUROC with its DeLong interval
  (:func:`clinaudit.audit.delong.delong_auroc`) and the operating point at that group's threshold;
  a group too small for DeLong is reported with status ``"insufficient data"``, never dropped.
* :func:`criterion_with_ci`: a target judged on the point estimate (``verdict``) and on the
  interval bound on the unfavourable side (``met_ci_bound``): ``"met (CI lower bound)"`` is
  stronger evidence than ``"met (point)"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandera.typing import Series

from .calibration import wilson_interval
from .delong import MIN_PER_CLASS, delong_auroc
from .schemas import (
    OutputSchema,
    count_field,
    probability_field,
    schema_columns,
    status_field,
    validate_table,
)
from .types import (
    STATUS_INSUFFICIENT,
    STATUS_OK,
    AuditInputError,
    as_1d,
    check_ci_level,
    check_option,
    group_key,
)

__all__ = [
    "MIN_PER_CLASS",
    "CriterionResult",
    "OperatingPoint",
    "OperatingTable",
    "ThresholdChoice",
    "choose_threshold",
    "criterion_with_ci",
    "per_group_operating_table",
    "sens_spec_at",
]

Rule = Literal["max_sensitivity", "youden"]
Direction = Literal[">=", "<="]


def _labels_probs(y_true: Any, y_prob: Any, *, both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float).ravel()
    p = as_1d("y_prob", np.asarray(y_prob, dtype=float).ravel(), y.size)
    if y.size == 0:
        raise AuditInputError("y_true", "0 rows", "at least one row", "pass non-empty data")
    if not np.isin(y, (0.0, 1.0)).all():
        bad = np.unique(y[~np.isin(y, (0.0, 1.0))])[:5].tolist()
        raise AuditInputError("y_true", f"values {bad}", "labels in {0, 1}", "drop unlabelled rows")
    if not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
        i = int(np.flatnonzero(~(np.isfinite(p) & (p >= 0.0) & (p <= 1.0)))[0])
        raise AuditInputError(
            "y_prob", f"{p[i]!r} at row {i}", "probabilities in [0, 1]", "apply the sigmoid first"
        )
    if both and (y.min() == y.max()):
        raise AuditInputError(
            "y_true",
            f"only class {int(y[0])} ({y.size} rows)",
            "both classes (sensitivity needs positives, specificity negatives)",
            "evaluate on a split holding positive and negative questions",
        )
    return y, p


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold fixed on the validation split (predict positive when ``p >= threshold``).

    Attributes
    ----------
    threshold : float
    rule : str
        ``"max_sensitivity"`` or ``"youden"``.
    min_specificity : float
        The specificity floor requested.
    met : bool
        Whether the validation specificity reached the floor (``False``: fallback, see module).
    n, n_pos, n_neg : int
        Validation questions.
    sensitivity, specificity : float
        Achieved on the validation split.
    """

    threshold: float
    rule: str
    min_specificity: float
    met: bool
    n: int
    n_pos: int
    n_neg: int
    sensitivity: float
    specificity: float


def choose_threshold(
    y_val: Any, p_val: Any, *, min_specificity: float, rule: Rule = "max_sensitivity"
) -> ThresholdChoice:
    """Choose the operating threshold on a validation split (never on the test questions).

    Parameters
    ----------
    y_val : array-like of shape (n,)
        Validation labels in ``{0, 1}`` (both classes).
    p_val : array-like of shape (n,)
        Validation probabilities.
    min_specificity : float, keyword-only
        Specificity floor in ``[0, 1]``.
    rule : {"max_sensitivity", "youden"}, keyword-only
        Among thresholds meeting the floor: the highest sensitivity, or the highest
        ``sensitivity + specificity - 1`` (ties: the lower threshold).

    Returns
    -------
    ThresholdChoice

    Examples
    --------
    >>> c = choose_threshold([0, 0, 0, 0, 1, 1, 1, 1], [.1, .2, .3, .6, .4, .7, .8, .9],
    ...                      min_specificity=0.75)
    >>> c.threshold, c.sensitivity, c.specificity, c.met
    (0.4, 1.0, 0.75, True)
    """
    rule = check_option("rule", rule, ("max_sensitivity", "youden"))  # type: ignore[assignment]
    if isinstance(min_specificity, bool) or not (
        isinstance(min_specificity, int | float) and 0.0 <= min_specificity <= 1.0
    ):
        raise AuditInputError(
            "min_specificity", repr(min_specificity), "a number in [0, 1]", "e.g. 0.8"
        )
    y, p = _labels_probs(y_val, p_val)
    cand = np.unique(p)
    pos, neg = np.sort(p[y == 1.0]), np.sort(p[y == 0.0])
    sens = 1.0 - np.searchsorted(pos, cand, side="left") / pos.size
    spec = np.searchsorted(neg, cand, side="left") / neg.size
    ok = spec >= float(min_specificity) - 1e-12
    if ok.any():
        score = sens if rule == "max_sensitivity" else sens + spec - 1.0
        score = np.where(ok, score, -np.inf)
        best = int(np.flatnonzero(score == score.max())[0])
    else:
        top = np.flatnonzero(spec == spec.max())
        best = int(top[np.argmax(sens[top])])
    return ThresholdChoice(
        threshold=float(cand[best]),
        rule=rule,
        min_specificity=float(min_specificity),
        met=bool(ok.any()),
        n=int(y.size),
        n_pos=int(pos.size),
        n_neg=int(neg.size),
        sensitivity=float(sens[best]),
        specificity=float(spec[best]),
    )


@dataclass(frozen=True)
class OperatingPoint:
    """Confusion counts and rates at a threshold, with Wilson intervals.

    Attributes
    ----------
    threshold : float
    tp, fn, tn, fp : int
    sensitivity, sensitivity_ci_low, sensitivity_ci_high : float
    specificity, specificity_ci_low, specificity_ci_high : float
    accuracy, accuracy_ci_low, accuracy_ci_high : float
    ci_level : float
    """

    threshold: float
    tp: int
    fn: int
    tn: int
    fp: int
    sensitivity: float
    sensitivity_ci_low: float
    sensitivity_ci_high: float
    specificity: float
    specificity_ci_low: float
    specificity_ci_high: float
    accuracy: float
    accuracy_ci_low: float
    accuracy_ci_high: float
    ci_level: float

    def to_dict(self) -> dict[str, Any]:
        """Fields as a plain dict (JSON-serialisable)."""
        return asdict(self)


def sens_spec_at(
    y_true: Any, y_prob: Any, threshold: float, *, ci_level: float = 0.95
) -> OperatingPoint:
    """Sensitivity, specificity and accuracy of ``p >= threshold`` with Wilson intervals.

    Examples
    --------
    >>> op = sens_spec_at([1] * 25 + [0] * 25, [0.9] * 21 + [0.1] * 29, 0.5)
    >>> op.tp, op.fn, round(op.sensitivity_ci_low, 2), round(op.sensitivity_ci_high, 2)
    (21, 4, 0.65, 0.94)
    """
    ci_level = check_ci_level(ci_level)
    y, p = _labels_probs(y_true, y_prob)
    return _operating_point(y, p, threshold, ci_level)


def _operating_point(
    y: np.ndarray, p: np.ndarray, threshold: Any, ci_level: float
) -> OperatingPoint:
    """:func:`sens_spec_at` on checked arrays; a rate whose class is absent is ``NaN``."""
    if isinstance(threshold, bool) or not (
        isinstance(threshold, int | float | np.floating) and math.isfinite(threshold)
    ):
        raise AuditInputError("threshold", repr(threshold), "a finite number", "e.g. 0.5")
    pred = p >= float(threshold)
    tp = int((pred & (y == 1.0)).sum())
    fn = int((~pred & (y == 1.0)).sum())
    tn = int((~pred & (y == 0.0)).sum())
    fp = int((pred & (y == 0.0)).sum())
    k = np.array([tp, tn, tp + tn], float)
    n = np.array([tp + fn, tn + fp, y.size], float)
    lo, hi = wilson_interval(k, n, ci_level=ci_level)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(n > 0, k / n, np.nan)
    return OperatingPoint(
        float(threshold), tp, fn, tn, fp,
        float(rate[0]), float(lo[0]), float(hi[0]),
        float(rate[1]), float(lo[1]), float(hi[1]),
        float(rate[2]), float(lo[2]), float(hi[2]),
        ci_level,
    )  # fmt: skip


class OperatingTable(OutputSchema):
    """One row per group: AUROC (DeLong) and the operating point at the group's threshold."""

    group: Series[str]
    threshold: Series[float]
    n: Series[int] = count_field()
    n_pos: Series[int] = count_field()
    n_neg: Series[int] = count_field()
    status: Series[str] = status_field()
    auroc: Series[float] = probability_field()
    auroc_ci_low: Series[float] = probability_field()
    auroc_ci_high: Series[float] = probability_field()
    tp: Series[int] = count_field()
    fn: Series[int] = count_field()
    tn: Series[int] = count_field()
    fp: Series[int] = count_field()
    sensitivity: Series[float] = probability_field()
    sensitivity_ci_low: Series[float] = probability_field()
    sensitivity_ci_high: Series[float] = probability_field()
    specificity: Series[float] = probability_field()
    specificity_ci_low: Series[float] = probability_field()
    specificity_ci_high: Series[float] = probability_field()
    accuracy: Series[float] = probability_field(nullable=False)
    accuracy_ci_low: Series[float] = probability_field(nullable=False)
    accuracy_ci_high: Series[float] = probability_field(nullable=False)
    ci_level: Series[float]


def per_group_operating_table(
    df: pd.DataFrame,
    *,
    group_col: str,
    y_col: str,
    p_col: str,
    thresholds: Mapping[str, float],
    ci_level: float = 0.95,
) -> pd.DataFrame:
    """AUROC with DeLong interval and the operating point per group (columns of
    :class:`OperatingTable`, groups sorted as strings).

    Parameters
    ----------
    df : DataFrame
        One row per question.
    group_col, y_col, p_col : str, keyword-only
        Columns of the group, the label in ``{0, 1}`` and the probability.
    thresholds : mapping of group (as str) to float, keyword-only
        Each group's threshold, fixed on the validation split (:func:`choose_threshold`).
    ci_level : float, keyword-only

    Returns
    -------
    DataFrame
        A group with fewer than :data:`MIN_PER_CLASS` positives or negatives has ``status``
        ``"insufficient data"`` and no AUROC (``NaN``: no DeLong variance); its rates are still
        given where their class is present (``NaN`` where it is absent), so the cell is reported
        rather than dropped or allowed to fail the whole table.

    Raises
    ------
    AuditInputError
        Missing column, a group without a threshold, labels outside ``{0, 1}`` or probabilities
        outside ``[0, 1]``.
    """
    ci_level = check_ci_level(ci_level)
    missing_cols = [c for c in (group_col, y_col, p_col) if c not in df.columns]
    if missing_cols:
        raise AuditInputError(
            "df", f"a table without columns {missing_cols}",
            f"columns {[group_col, y_col, p_col]}", "pass the scored questions table",
        )  # fmt: skip
    keys = df[group_col].map(group_key).to_numpy()
    groups = sorted(set(keys.tolist()))
    no_thr = [g for g in groups if g not in thresholds]
    if no_thr:
        raise AuditInputError(
            "thresholds", f"no threshold for groups {no_thr}",
            f"a threshold for every group {groups}", "choose one per group on the validation split",
        )  # fmt: skip
    rows = []
    for g in groups:
        sub = df[keys == g]
        y, p = _labels_probs(sub[y_col].to_numpy(), sub[p_col].to_numpy(), both=False)
        n_pos = int((y == 1.0).sum())
        n_neg = int(y.size - n_pos)
        enough = min(n_pos, n_neg) >= MIN_PER_CLASS
        auc = delong_auroc(y, p, ci_level=ci_level) if enough else None
        op = _operating_point(y, p, float(thresholds[g]), ci_level)
        rows.append(
            {
                "group": g,
                "n": int(y.size),
                "n_pos": n_pos,
                "n_neg": n_neg,
                "status": STATUS_OK if enough else STATUS_INSUFFICIENT,
                "auroc": auc.auroc if auc else np.nan,
                "auroc_ci_low": auc.ci_low if auc else np.nan,
                "auroc_ci_high": auc.ci_high if auc else np.nan,
                **op.to_dict(),
            }
        )
    cols = list(schema_columns(OperatingTable))
    return validate_table(pd.DataFrame(rows)[cols], OperatingTable)


@dataclass(frozen=True)
class CriterionResult:
    """A target judged on the point estimate and on the interval.

    Attributes
    ----------
    verdict : {"pass", "fail", "inconclusive"}
        ``"pass"``: the point estimate meets the target. ``"inconclusive"``: it does not, but the
        interval still reaches the target (or the estimate is NaN). ``"fail"``: the whole
        interval is on the wrong side.
    evidence : str
        ``"met (CI lower bound)"`` / ``"met (CI upper bound)"`` (the unfavourable bound meets the
        target), ``"met (point)"`` (only the point estimate does), ``"not met"`` or
        ``"not estimable"``.
    met_point, met_ci_bound : bool
    estimate, lower, upper, target : float
    direction : str
        ``">="`` (higher is better, e.g. sensitivity) or ``"<="`` (lower is better, e.g. ECE).
    """

    verdict: str
    evidence: str
    met_point: bool
    met_ci_bound: bool
    estimate: float
    lower: float
    upper: float
    target: float
    direction: str


def criterion_with_ci(
    estimate: float, lower: float, upper: float, *, target: float, direction: Direction = ">="
) -> CriterionResult:
    """Judge ``estimate (lower, upper)`` against ``target``; see :class:`CriterionResult`.

    Examples
    --------
    >>> r = criterion_with_ci(0.84, 0.65, 0.94, target=0.80)
    >>> r.verdict, r.evidence
    ('pass', 'met (point)')
    >>> criterion_with_ci(0.03, 0.01, 0.045, target=0.05, direction="<=").evidence
    'met (CI upper bound)'
    """
    direction = check_option("direction", direction, (">=", "<="))  # type: ignore[assignment]
    est, lo, hi, tgt = (float(v) for v in (estimate, lower, upper, target))
    if not math.isfinite(tgt):
        raise AuditInputError("target", repr(target), "a finite number", "e.g. target=0.8")
    if not (math.isnan(lo) or math.isnan(hi)) and not lo <= hi:
        raise AuditInputError("lower", f"{lo} > upper {hi}", "lower <= upper", "swap the bounds")
    sign = 1.0 if direction == ">=" else -1.0
    bad_bound, good_bound = (lo, hi) if direction == ">=" else (hi, lo)
    if math.isnan(est):
        verdict, met_point, met_ci = "inconclusive", False, False
    else:
        met_point = sign * (est - tgt) >= 0.0
        met_ci = not math.isnan(bad_bound) and sign * (bad_bound - tgt) >= 0.0
        reaches = math.isnan(good_bound) or sign * (good_bound - tgt) >= 0.0
        verdict = "pass" if met_point else ("inconclusive" if reaches else "fail")
    side = "lower" if direction == ">=" else "upper"
    if math.isnan(est):
        evidence = "not estimable"
    else:
        evidence = f"met (CI {side} bound)" if met_ci else "met (point)" if met_point else "not met"
    return CriterionResult(verdict, evidence, met_point, met_ci, est, lo, hi, tgt, direction)
