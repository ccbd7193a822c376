"""Selective prediction by subgroup, on held-out data, and the labelling arithmetic behind it.

* :func:`recertify_subgroups` re-runs the auto-clear certificate of ``audit/selective.py`` inside
  every subgroup (sex, age band, view, site, ...). With ``multiplicity="bonferroni"`` each
  subgroup is tested at ``delta / m`` (``m`` subgroups), so the guarantee holds for all of them
  at once with probability ``>= 1 - delta``; with ``"none"`` each subgroup has its own
  ``1 - delta`` guarantee (group-conditional, as Mondrian conformal prediction gives), which
  needs fewer labels per group. A subgroup whose own certified threshold is lower than the
  global one gets its own (abstention is widened there); one with no certifiable threshold gets
  none (nothing in it is auto-cleared). A threshold is never raised above the global one.
* :func:`row_thresholds` turns that table into each row's threshold (the lowest over its groups).
* :func:`bucket_outcomes` counts what the buckets did on labelled held-out studies, with exact
  intervals: the miss rate (abnormal studies cleared), the share of normals cleared, the PPV of
  flagged studies and the share of each bucket.
* :func:`labels_needed` is the Clopper-Pearson / Learn-then-Test arithmetic: how many abnormal
  studies (and, at a prevalence, how many studies and radiologist-days) a labelled sample needs
  before a miss rate of at most ``alpha`` can be certified at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from .selective import (
    BUCKETS,
    binomial_p_value,
    certify_clear_threshold,
    clopper_pearson,
)
from .types import AuditInputError, as_1d, check_ci_level, check_option, group_key

__all__ = [
    "LabelPlan",
    "SUBGROUP_COLUMNS",
    "bucket_outcomes",
    "labels_needed",
    "recertify_subgroups",
    "row_thresholds",
]

#: Columns of :func:`recertify_subgroups`'s table.
SUBGROUP_COLUMNS = (
    "attribute",
    "group",
    "n_abnormal",
    "misses_at_global",
    "p_value_at_global",
    "delta_tested",
    "group_threshold",
    "threshold",
    "action",
)


def recertify_subgroups(
    y_true: Any,
    p_abnormal: Any,
    attributes: Mapping[str, Any],
    *,
    threshold: float | None,
    alpha: float,
    delta: float,
    multiplicity: Literal["bonferroni", "none"] = "bonferroni",
    grid: Any = None,
) -> pd.DataFrame:
    """Re-certify the auto-clear threshold in every subgroup; widen abstention where one fails.

    Parameters
    ----------
    y_true, p_abnormal : array-like of shape (n,)
        Calibration labels (1 = abnormal) and calibrated probabilities, in-scope rows only.
    attributes : mapping of str to array-like of shape (n,)
        Subgroup attribute name -> each row's group (``{"sex": [...], "site": [...]}``).
    threshold : float or None
        The global certified threshold (``None``: nothing to re-certify; every action is
        ``"no auto-clear"``).
    alpha, delta : float
        As for :func:`~clinaudit.audit.selective.certify_clear_threshold`.
    multiplicity : {"bonferroni", "none"}
        Each subgroup is tested at ``delta / m`` (all guarantees at once) or at ``delta`` (each
        group's own guarantee).
    grid : array-like, optional
        Candidate thresholds for the subgroup's own certificate.

    Returns
    -------
    pandas.DataFrame
        One row per (attribute, group) with :data:`SUBGROUP_COLUMNS`. ``action`` is ``"keep"``
        (certified at the global threshold), ``"widen"`` (a lower own threshold) or
        ``"no auto-clear"``; ``threshold`` is the one the group uses (``NaN`` for none).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> y = (rng.random(6000) < 0.4).astype(int)
    >>> p = np.where(y == 1, rng.beta(6, 2, 6000), rng.beta(2, 6, 6000))
    >>> sex = np.where(rng.random(6000) < 0.5, "F", "M")
    >>> t = recertify_subgroups(y, p, {"sex": sex}, threshold=0.05, alpha=0.05, delta=0.05)
    >>> t["action"].tolist()
    ['keep', 'keep']
    """
    y = np.asarray(y_true, dtype=float).ravel()
    p = as_1d("p_abnormal", p_abnormal, y.size).astype(float)
    cells = []
    for name, values in attributes.items():
        labels = np.array([group_key(v) for v in as_1d(name, values, y.size)], dtype=object)
        cells += [(name, g, labels == g) for g in sorted(set(labels.tolist()))]
    if not cells:
        raise AuditInputError(
            "attributes", "no subgroup attribute", "at least one", "pass e.g. {'sex': sex}"
        )
    check_option("multiplicity", multiplicity, ("bonferroni", "none"))
    m = len(cells) if multiplicity == "bonferroni" else 1
    rows = []
    for name, group, mask in cells:
        yg, pg = y[mask], p[mask]
        n_pos = int((yg == 1.0).sum())
        if threshold is None:
            rows.append((name, group, n_pos, 0, np.nan, delta / m, np.nan, np.nan, "no auto-clear"))
            continue
        misses = int(((yg == 1.0) & (pg < threshold)).sum())
        p_global = float(binomial_p_value(misses, n_pos, alpha))
        own = certify_clear_threshold(yg, pg, alpha=alpha, delta=delta / m, grid=grid)
        own_t = np.nan if own.threshold is None else own.threshold
        if p_global <= delta / m:
            used, action = threshold, "keep"
        elif own.threshold is not None:
            used, action = min(own.threshold, threshold), "widen"
        else:
            used, action = np.nan, "no auto-clear"
        rows.append((name, group, n_pos, misses, p_global, delta / m, own_t, used, action))
    return pd.DataFrame(rows, columns=list(SUBGROUP_COLUMNS))


def row_thresholds(
    table: pd.DataFrame, attributes: Mapping[str, Any], *, threshold: float | None
) -> np.ndarray:
    """Each row's auto-clear threshold: the lowest over its subgroups (``NaN`` = none).

    A row in a group the table does not hold (unseen at calibration) gets no auto-clear.

    Examples
    --------
    >>> t = pd.DataFrame({"attribute": ["sex", "sex"], "group": ["F", "M"],
    ...                   "threshold": [0.05, 0.02]})
    >>> row_thresholds(t, {"sex": ["F", "M", "X"]}, threshold=0.05).tolist()
    [0.05, 0.02, nan]
    """
    if not attributes:
        raise AuditInputError("attributes", "none", "at least one attribute", "pass the groups")
    cols = []
    for name, values in attributes.items():
        used = table[table["attribute"] == name].set_index("group")["threshold"]
        keys = pd.Series([group_key(v) for v in np.asarray(values, dtype=object)])
        cols.append(keys.map(used).to_numpy(dtype=float))  # unseen group -> NaN
    if threshold is None:
        return np.full(cols[0].size, np.nan)
    return np.minimum(np.vstack(cols).min(axis=0), threshold)  # any NaN group -> NaN


def bucket_outcomes(y_true: Any, buckets: Any, *, ci_level: float = 0.95) -> pd.DataFrame:
    """What the buckets did on labelled held-out studies, with Clopper-Pearson intervals.

    Rows (``metric``): ``miss_rate`` (abnormal cleared / abnormal), ``sensitivity`` (its
    complement), ``normals_cleared`` (normal cleared / normal), ``false_omission`` (abnormal among
    cleared), ``flag_ppv`` (abnormal among flagged) and ``share_<bucket>`` for each bucket;
    columns ``metric, k, n, estimate, ci_low, ci_high, ci_level``.

    Examples
    --------
    >>> out = bucket_outcomes([1, 0, 0, 1], ["flag", "clear", "uncertain", "uncertain"])
    >>> row = out.set_index("metric").loc["miss_rate"]
    >>> int(row["k"]), int(row["n"])
    (0, 2)
    """
    level = check_ci_level(ci_level)
    y = np.asarray(y_true, dtype=float).ravel()
    b = as_1d("buckets", buckets, y.size).astype(str)
    unknown = sorted(set(b.tolist()) - set(BUCKETS))
    if unknown:
        raise AuditInputError("buckets", repr(unknown[0]), f"one of {list(BUCKETS)}", "re-bucket")
    pos, neg = y == 1.0, y == 0.0
    clear, flag = b == "clear", b == "flag"
    counts = {
        "miss_rate": ((pos & clear).sum(), pos.sum()),
        "sensitivity": ((pos & ~clear).sum(), pos.sum()),
        "normals_cleared": ((neg & clear).sum(), neg.sum()),
        "false_omission": ((pos & clear).sum(), clear.sum()),
        "flag_ppv": ((pos & flag).sum(), flag.sum()),
        **{f"share_{name}": ((b == name).sum(), b.size) for name in BUCKETS},
    }
    k = np.array([c[0] for c in counts.values()], dtype=float)
    n = np.array([c[1] for c in counts.values()], dtype=float)
    lo, hi = clopper_pearson(k, n, ci_level=level)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = np.where(n > 0, k / np.maximum(n, 1.0), np.nan)
    return pd.DataFrame(
        {
            "metric": list(counts),
            "k": k.astype(int),
            "n": n.astype(int),
            "estimate": est,
            "ci_low": lo,
            "ci_high": hi,
            "ci_level": level,
        }
    )


@dataclass(frozen=True)
class LabelPlan:
    """How much labelling a certificate needs.

    ``abnormal`` abnormal studies are needed to certify ``alpha`` at ``delta`` when the rule's
    true miss rate is ``expected_miss_rate``; ``studies`` is that many at ``prevalence``, and
    ``radiologist_days`` is ``studies / reads_per_day``.
    """

    alpha: float
    delta: float
    expected_miss_rate: float
    abnormal: int
    prevalence: float
    studies: int
    reads_per_day: float
    radiologist_days: float


def labels_needed(
    alpha: float,
    delta: float,
    *,
    prevalence: float,
    reads_per_day: float,
    expected_miss_rate: float = 0.0,
    max_abnormal: int = 10_000_000,
) -> LabelPlan:
    """Fewest abnormal studies ``n`` with ``P(Bin(n, alpha) <= floor(n * r)) <= delta``.

    ``r`` is ``expected_miss_rate`` (0: the rule misses none in the sample); ``r`` must be below
    ``alpha``, and the closer it is the more labels are needed.

    Examples
    --------
    >>> plan = labels_needed(0.01, 0.05, prevalence=0.46, reads_per_day=1080)
    >>> plan.abnormal, plan.studies
    (299, 650)
    """
    for name, value in (("alpha", alpha), ("delta", delta), ("prevalence", prevalence)):
        if not 0.0 < value < 1.0:
            raise AuditInputError(name, repr(value), "a number in (0, 1)", f"pass {name} in (0, 1)")
    if not 0.0 <= expected_miss_rate < alpha:
        raise AuditInputError(
            "expected_miss_rate",
            repr(expected_miss_rate),
            f"a rate in [0, alpha={alpha})",
            "a rule that misses alpha or more can never be certified",
        )
    if not reads_per_day > 0:
        raise AuditInputError("reads_per_day", repr(reads_per_day), "> 0", "pass e.g. 1080")
    # The p-value is not monotone in n when r > 0 (floor(n r) jumps): scan every n up to a
    # bound that doubles until some n qualifies.
    hi = 1024
    while True:
        cands = np.arange(1, hi + 1)
        ok = binomial_p_value(np.floor(cands * expected_miss_rate), cands, alpha) <= delta
        if ok.any():
            break
        if hi >= max_abnormal:
            raise AuditInputError(
                "expected_miss_rate", repr(expected_miss_rate), f"far enough below {alpha}",
                f"more than {max_abnormal} abnormal studies would be needed",
            )  # fmt: skip
        hi = min(hi * 2, max_abnormal)
    n = int(cands[np.argmax(ok)])
    studies = int(np.ceil(n / prevalence))
    return LabelPlan(
        alpha, delta, expected_miss_rate, n, prevalence, studies, reads_per_day,
        studies / reads_per_day,
    )  # fmt: skip
