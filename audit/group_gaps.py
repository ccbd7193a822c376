"""Performance by patient group for a multi-class model with deferral (e.g. by skin tone).

For every group of every attribute (e.g. Fitzpatrick I ... VI and I-II / III-IV / V-VI; the
second annotator's types; ITA bands): ``n``, accuracy, macro F1, malignant sensitivity, top-label
ECE, deferral rate and the accuracy of the accepted (non-deferred) outputs, each with an interval
(exact Clopper-Pearson for shares, a bootstrap over cases for macro F1 and ECE).

**Gap verdict** per group: the accuracy gap to the rest of its attribute (group minus rest,
Agresti-Caffo interval) with a two-sided unpooled z-test, Holm-adjusted over *every* group
tested in the call (one family, so the chance of any false flag is at most ``family_alpha``):

* ``gap`` - the adjusted p-value is below ``family_alpha`` and the gap is at least ``min_gap``;
* ``no gap >= min_gap`` - the interval of the gap lies inside ``(-min_gap, +min_gap)``;
* ``insufficient evidence`` - neither: the group is too small to show or exclude a gap of
  ``min_gap`` (the interval width is reported; never a pass by default).

``deferral_lowers_accuracy`` marks a group whose accepted outputs are *less* accurate than all of
its outputs (selective classification can widen group gaps, Jones et al. 2021).
:func:`cases_for_gap` states how many cases a group needs to show a gap of a given size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from .bootstrap import derive_rng, percentile_ci
from .calibration import expected_calibration_error
from .multiclass import multiclass_audit
from .multiplicity import holm
from .selective import clopper_pearson
from .types import AuditInputError, check_ci_level

__all__ = ["GAP_COLUMNS", "cases_for_gap", "group_gaps"]

GAP_COLUMNS: tuple[str, ...] = (
    "attribute", "group", "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1",
    "macro_f1_ci_low", "macro_f1_ci_high", "n_malignant", "malignant_sensitivity",
    "malignant_sensitivity_ci_low", "malignant_sensitivity_ci_high", "ece", "ece_ci_low",
    "ece_ci_high", "deferral_rate", "deferral_rate_ci_low", "deferral_rate_ci_high",
    "accepted_accuracy", "accepted_accuracy_ci_low", "accepted_accuracy_ci_high",
    "accuracy_gap", "gap_ci_low", "gap_ci_high", "p_value", "p_adjusted", "verdict",
    "deferral_lowers_accuracy",
)  # fmt: skip


def _share(k: float, n: float, level: float) -> tuple[float, float, float]:
    if n <= 0:
        return np.nan, np.nan, np.nan
    lo, hi = clopper_pearson(k, n, ci_level=level)
    return k / n, float(lo), float(hi)


def _ece_ci(
    correct: np.ndarray, conf: np.ndarray, n_boot: int, level: float, rng: np.random.Generator
) -> tuple[float, float]:
    if n_boot == 0 or correct.size == 0:
        return np.nan, np.nan
    idx = rng.integers(0, correct.size, size=(n_boot, correct.size))
    reps = np.array([expected_calibration_error(correct[i], conf[i]) for i in idx])
    return percentile_ci(reps, level)


def _gap_test(k1: float, n1: float, k0: float, n0: float, level: float) -> tuple[float, ...]:
    """Gap ``k1/n1 - k0/n0``, its interval and two-sided unpooled z-test p-value.

    The standard error is Agresti-Caffo's (one success and one failure added to each group):
    the plain Wald error is zero when a small group is all right or all wrong, which would call
    a 2-case group's 0 % accuracy a certain gap.

    >>> gap, lo, hi, p = _gap_test(0, 2, 500, 1000, 0.95)
    >>> gap, bool(lo < -0.6 and hi > 0.1), bool(p > 0.05)
    (-0.5, True, True)
    """
    if n1 == 0 or n0 == 0:
        return np.nan, np.nan, np.nan, np.nan
    gap = k1 / n1 - k0 / n0
    a1, a0 = (k1 + 1) / (n1 + 2), (k0 + 1) / (n0 + 2)
    se = np.sqrt(a1 * (1 - a1) / (n1 + 2) + a0 * (1 - a0) / (n0 + 2))
    center = a1 - a0
    z = norm.ppf(0.5 + level / 2.0)
    return gap, center - z * se, center + z * se, float(2.0 * norm.sf(abs(center) / se))


def group_gaps(
    y_true: Any,
    y_pred: Any,
    confidence: Any,
    deferred: Any,
    groups: Mapping[str, Any],
    *,
    classes: Sequence[Any],
    malignant: Sequence[Any],
    min_gap: float = 0.05,
    family_alpha: float = 0.05,
    n_boot: int = 500,
    ci_level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """The group audit (see the module docstring): one row per (attribute, group).

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        True and predicted categories.
    confidence : array-like of shape (n,)
        The model's probability of its predicted category (top-label ECE).
    deferred : array-like of shape (n,)
        1 when the output is deferred to a clinician.
    groups : mapping of str to array-like
        Attribute name -> group of every case (NaN / "" = unknown: left out of that attribute).
    classes, malignant : sequence
        The categories, and those that are malignant.
    min_gap : float
        Smallest accuracy gap that matters (the verdict's threshold).
    family_alpha : float
        Chance of any false ``gap`` flag over every group of the call (Holm).
    n_boot, ci_level, seed
        Bootstrap replicates (macro F1, ECE), interval coverage, seed.

    Returns
    -------
    DataFrame
        :data:`GAP_COLUMNS`.
    """
    level = check_ci_level(ci_level)
    yt = np.asarray(y_true, dtype=object).ravel()
    n = yt.size
    yp = np.asarray(y_pred, dtype=object).ravel()
    conf = np.asarray(confidence, dtype=float).ravel()
    dfr = np.asarray(deferred, dtype=float).ravel()
    if not (yp.size == conf.size == dfr.size == n):
        raise AuditInputError("inputs", "different lengths", f"{n} per input", "align inputs")
    unknown = set(malignant) - set(classes)
    if unknown:
        raise AuditInputError("malignant", repr(sorted(unknown)), "categories", "fix the list")
    correct = (yt == yp).astype(float)
    is_mal = np.isin(yt, list(malignant))
    rows: list[dict[str, Any]] = []
    for attr, values in groups.items():
        v = pd.Series(np.asarray(values, dtype=object).ravel()).fillna("").astype(str).to_numpy()
        if v.size != n:
            raise AuditInputError(attr, f"{v.size} values", f"{n}", "one group per case")
        known = v != ""
        for name in sorted(set(v[known].tolist())):
            m = v == name
            rest = known & ~m
            k = int(m.sum())
            row: dict[str, Any] = {"attribute": attr, "group": name, "n": k}
            acc = _share(correct[m].sum(), k, level)
            row.update(zip(("accuracy", "accuracy_ci_low", "accuracy_ci_high"), acc, strict=True))
            f1 = multiclass_audit(
                yt[m], yp[m], classes=classes, n_boot=n_boot, ci_level=level, seed=seed,
                key=f"group_gaps/{attr}/{name}",
            ).set_index("metric").loc["macro_f1"]  # fmt: skip
            row.update(macro_f1=f1["estimate"], macro_f1_ci_low=f1["ci_low"],
                       macro_f1_ci_high=f1["ci_high"])  # fmt: skip
            mm = m & is_mal
            sens = _share(float((yp[mm] == yt[mm]).sum()), int(mm.sum()), level)
            row["n_malignant"] = int(mm.sum())
            row.update(zip(("malignant_sensitivity", "malignant_sensitivity_ci_low",
                            "malignant_sensitivity_ci_high"), sens, strict=True))  # fmt: skip
            row["ece"] = expected_calibration_error(correct[m], conf[m]) if k else np.nan
            row["ece_ci_low"], row["ece_ci_high"] = _ece_ci(
                correct[m], conf[m], n_boot, level, derive_rng(seed, f"ece/{attr}/{name}")
            )
            d = _share(dfr[m].sum(), k, level)
            row.update(zip(("deferral_rate", "deferral_rate_ci_low", "deferral_rate_ci_high"), d,
                           strict=True))  # fmt: skip
            acc_m = m & (dfr == 0)
            a = _share(correct[acc_m].sum(), int(acc_m.sum()), level)
            row.update(zip(("accepted_accuracy", "accepted_accuracy_ci_low",
                            "accepted_accuracy_ci_high"), a, strict=True))  # fmt: skip
            gap = _gap_test(correct[m].sum(), k, correct[rest].sum(), int(rest.sum()), level)
            row.update(zip(("accuracy_gap", "gap_ci_low", "gap_ci_high", "p_value"), gap,
                           strict=True))  # fmt: skip
            row["deferral_lowers_accuracy"] = bool(
                acc_m.any() and row["accepted_accuracy"] < row["accuracy"]
            )
            rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in GAP_COLUMNS if c not in ("p_adjusted",
                                                                         "verdict")])  # fmt: skip
    p = out["p_value"].to_numpy(float)
    tested = np.isfinite(p)
    adjusted = np.full(p.size, np.nan)
    if tested.any():
        adjusted[tested] = holm(p[tested])
    out["p_adjusted"] = adjusted
    out["verdict"] = [
        _verdict(r.accuracy_gap, r.gap_ci_low, r.gap_ci_high, r.p_adjusted, min_gap, family_alpha)
        for r in out.itertuples()
    ]
    return out[list(GAP_COLUMNS)]


def _verdict(gap: float, lo: float, hi: float, p_adj: float, min_gap: float, alpha: float) -> str:
    if not np.isfinite(p_adj):
        return "insufficient evidence (no comparison group)"
    if p_adj < alpha and abs(gap) >= min_gap:
        return "gap"
    if -min_gap < lo and hi < min_gap:
        return f"no gap >= {min_gap:g}"
    return f"insufficient evidence (CI width {hi - lo:.3f})"


def cases_for_gap(
    gap: float, accuracy: float, *, n_tests: int = 1, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Cases a group needs (against a much larger rest) to flag an accuracy drop of ``gap``.

    Two-sided z-test at ``alpha / n_tests`` (Holm's first step) with the given power.

    Examples
    --------
    >>> cases_for_gap(0.10, 0.75)
    179
    >>> cases_for_gap(0.10, 0.75, n_tests=9)
    298
    """
    if not (0 < gap < accuracy <= 1) or n_tests < 1:
        raise AuditInputError("gap", repr(gap), "0 < gap < accuracy <= 1", "e.g. 0.10")
    z = norm.ppf(1 - alpha / n_tests / 2) + norm.ppf(power)
    p = accuracy - gap
    return int(np.ceil(z**2 * p * (1 - p) / gap**2))
