"""Per-group recalibration on logits: temperature scaling or Platt scaling, one map per group.

Small evaluation sets are often recalibrated per question category (or site) on a validation
split before the test questions are scored. Two maps, both fitted by maximum likelihood on the
model's logits ``z`` (not on clipped probabilities, whose logits lose ranks):

* temperature (Guo et al. 2017, "On calibration of modern neural networks"):
  ``P(y=1) = sigmoid(z / T)``, :func:`clinaudit.audit.selective.fit_temperature`;
* Platt (Platt 1999): ``P(y=1) = sigmoid(a + b z)``, :func:`fit_platt` (Newton fit of
  :func:`clinaudit.audit.recalibration_maps.fit_logistic`, no label smoothing).

Both maps are strictly increasing (``T > 0``, ``b > 0`` are enforced), so ranks (AUROC) within a
group are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .calibration_fit import expit
from .recalibration_maps import fit_logistic
from .selective import TemperatureFit, fit_temperature
from .types import AuditInputError, as_1d, check_option

__all__ = [
    "GroupCalibrator",
    "PlattFit",
    "apply_group_calibrators",
    "fit_group_calibrators",
    "fit_platt",
]


@dataclass(frozen=True)
class PlattFit:
    """``P(y=1) = sigmoid(intercept + slope * logit)``, fitted by maximum likelihood on logits."""

    intercept: float
    slope: float
    n_fit: int

    def apply(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities of ``logits``."""
        return expit(self.intercept + self.slope * np.asarray(logits, dtype=float))


def fit_platt(y_true: Any, logits: Any) -> PlattFit:
    """Platt scaling on logits (Newton fit of ``fit_logistic``, no label smoothing).

    Raises
    ------
    AuditInputError
        One class only, no convergence (e.g. perfectly separated classes), or a slope ``<= 0``
        (the logits rank negatives above positives).

    Examples
    --------
    >>> fit = fit_platt([0, 0, 1, 0, 1, 1], [-2.0, -1.0, -0.5, 0.5, 1.0, 2.0])
    >>> fit.slope > 0
    True
    """
    y = np.asarray(y_true, dtype=float).ravel()
    z = as_1d("logits", np.asarray(logits, dtype=float).ravel(), y.size).astype(float)
    if y.size == 0 or not np.isin(y, (0.0, 1.0)).all() or y.min() == y.max():
        raise AuditInputError(
            "y_true",
            f"{y.size} labels with values {np.unique(y)[:5].tolist()}",
            "labels in {0, 1} with both classes",
            "fit on a labelled split holding both classes",
        )
    if not np.isfinite(z).all():
        raise AuditInputError("logits", "non-finite values", "finite logits", "score every row")
    beta = fit_logistic(z, y, intercept=True)
    if beta is None or not beta[1] > 0.0:
        got = "no convergence" if beta is None else f"slope {beta[1]:.4g}"
        raise AuditInputError(
            "logits",
            got,
            "a converged fit with a positive slope",
            "use a larger calibration split; check the logit is of class 1 and labels code it 1",
        )
    return PlattFit(float(beta[0]), float(beta[1]), int(y.size))


GroupCalibrator = TemperatureFit | PlattFit


def fit_group_calibrators(
    y_true: Any,
    logits: Any,
    groups: Any,
    *,
    method: Literal["temperature", "platt"] = "temperature",
) -> dict[str, GroupCalibrator]:
    """One calibrator per group (keys are the group labels as ``str``), fitted on that group only.

    Examples
    --------
    >>> z = np.array([-2.0, -1.0, 1.0, 2.0, -0.5, 0.5] * 2)
    >>> y = np.array([0, 1, 0, 1, 0, 1] * 2)
    >>> sorted(fit_group_calibrators(y, z, ["a"] * 6 + ["b"] * 6))
    ['a', 'b']
    """
    method = check_option("method", method, ("temperature", "platt"))  # type: ignore[assignment]
    y = np.asarray(y_true, dtype=float).ravel()
    z = as_1d("logits", np.asarray(logits, dtype=float).ravel(), y.size)
    g = as_1d("groups", groups, y.size).astype(str)
    if y.size == 0:
        raise AuditInputError("y_true", "0 rows", "at least one row", "pass non-empty data")
    fit = fit_temperature if method == "temperature" else fit_platt
    return {str(k): fit(y[g == k], z[g == k]) for k in sorted(set(g.tolist()))}


def apply_group_calibrators(
    logits: Any, groups: Any, calibrators: Mapping[str, GroupCalibrator]
) -> np.ndarray:
    """Calibrated probabilities: each row through its group's calibrator.

    Raises
    ------
    AuditInputError
        A group without a calibrator (the known groups are listed).
    """
    z = np.asarray(logits, dtype=float).ravel()
    g = as_1d("groups", groups, z.size).astype(str)
    missing = sorted(set(g.tolist()) - set(calibrators))
    if missing:
        raise AuditInputError(
            "groups",
            f"groups without a calibrator {missing}",
            f"groups among {sorted(calibrators)}",
            "fit a calibrator for every group first",
        )
    out = np.empty(z.size)
    for k, cal in calibrators.items():
        rows = g == k
        out[rows] = cal.apply(z[rows])
    return out
