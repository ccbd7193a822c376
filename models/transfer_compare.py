"""The gain of a transferred model over its from-scratch baseline: paired AUROC differences.

Both models score the *same* rows, so the comparison is paired: every bootstrap replicate
resamples patients (clusters) with replacement once and evaluates both models on that resample
(:mod:`clinaudit.audit.bootstrap`; AUROC from
:func:`clinaudit.audit.discrimination.weighted_binary_metrics`), and the interval of the
difference is the percentile interval of the per-replicate differences. All labels share the
same patient draws. The paired DeLong interval (:func:`clinaudit.audit.delong.delong_paired_test`)
is reported next to it; it treats rows as independent, so with several images per patient the
bootstrap interval is the one to read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.audit.bootstrap import GroupBootstrap
from clinaudit.audit.delong import delong_paired_test
from clinaudit.audit.discrimination import weighted_binary_metrics
from clinaudit.audit.types import (
    STATUS_INSUFFICIENT,
    STATUS_OK,
    AuditInputError,
    validate_labelled_scores,
)

#: Stream name of the bootstrap draws (:func:`clinaudit.audit.bootstrap.derive_rng`).
SEED_KEY = "compare_transfer"
METRICS: tuple[str, ...] = ("auroc_transfer", "auroc_scratch", "auroc_difference")
COMPARE_COLUMNS: tuple[str, ...] = (
    "label",
    "status",
    "n",
    "n_pos",
    "n_neg",
    "n_clusters",
    *(f"{m}{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high")),
    "difference_ci_excludes_zero",
    "delong_se",
    "delong_ci_low",
    "delong_ci_high",
    "delong_p",
    "n_boot",
    "n_boot_valid",
    "ci_level",
    "seed",
    "interval",
)


def _auroc_pair(plan: tuple[np.ndarray, ...], counts: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC of both scores and their difference for every column (replicate) of ``counts``."""
    y, a, b, local, present = plan
    weights = np.ascontiguousarray(counts[present].T)
    ra = weighted_binary_metrics(y, a, weights, clusters=local)["auroc"]
    rb = weighted_binary_metrics(y, b, weights, clusters=local)["auroc"]
    return {"auroc_transfer": ra, "auroc_scratch": rb, "auroc_difference": ra - rb}


def compare_transfer(
    y_true: Any,
    score_transfer: Any,
    score_scratch: Any,
    clusters: Any,
    *,
    labels: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci_level: float = 0.95,
) -> pd.DataFrame:
    """Per label: AUROC of each model and the paired difference (transfer minus scratch) with CIs.

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, n_labels)
        0/1 labels, NaN = unlabelled (left out of that label).
    score_transfer, score_scratch : array-like, same shape as ``y_true``
        Finite scores (probabilities or logits) of the transferred model and of the baseline on
        the same rows.
    clusters : array-like of shape (n,)
        Patient of each row: the bootstrap resamples patients.
    labels : sequence of str, optional
        Label names; default the DataFrame columns of ``y_true``, else ``target_0``, ...
    n_boot : int, keyword-only
        Bootstrap replicates (0: point estimates and DeLong only).
    seed : int, keyword-only
        Seed of the patient draws (stream ``derive_rng(seed, "compare_transfer")``).
    ci_level : float, keyword-only
        Coverage of every interval.

    Returns
    -------
    pandas.DataFrame
        One row per label, columns :data:`COMPARE_COLUMNS`: counts, ``auroc_transfer``,
        ``auroc_scratch`` and ``auroc_difference`` (exactly their difference) with percentile
        intervals, the paired DeLong interval and p-value of the difference, and the settings
        used (``n_boot``, ``n_boot_valid``: replicates with both classes, ``ci_level``, ``seed``).
        A label without a positive or a negative has status ``"insufficient data"`` and NaN.

    Raises
    ------
    AuditInputError
        On shape mismatches, labels outside 0/1/NaN, non-finite scores, missing clusters, or a
        negative ``n_boot``.

    Examples
    --------
    >>> y = np.array([0, 1, 1, 0, 1, 0, 1, 0])
    >>> t = compare_transfer(y, y + 0.1 * np.arange(8), np.arange(8.0), np.arange(8), n_boot=200)
    >>> float(t.loc[0, "auroc_difference"]), int(t.loc[0, "n_boot"])
    (0.5625, 200)
    """
    if clusters is None:
        raise AuditInputError(
            "clusters", "None", "one patient id per row", "pass the patient pseudonym column"
        )
    a = validate_labelled_scores(y_true, score_transfer, clusters=clusters, targets=labels,
                                 score_name="score_transfer")  # fmt: skip
    b = validate_labelled_scores(y_true, score_scratch, clusters=clusters, targets=labels,
                                 score_name="score_scratch")  # fmt: skip
    boot = GroupBootstrap(_auroc_pair, METRICS, n_boot, ci_level, seed)
    n_clusters = int(a.clusters.max()) + 1
    plans, rows = {}, []
    for t, name in enumerate(a.targets):
        lab = ~np.isnan(a.y_true[:, t])
        y = a.y_true[lab, t]
        local, present = pd.factorize(a.clusters[lab], sort=False)
        n_pos = int((y == 1).sum())
        row: dict[str, Any] = {
            "label": name,
            "n": int(lab.sum()),
            "n_pos": n_pos,
            "n_neg": int(lab.sum()) - n_pos,
            "n_clusters": int(present.size),
        }
        if 0 < n_pos < lab.sum():
            plan = (y, a.y_score[lab, t], b.y_score[lab, t], local, np.asarray(present))
            point = _auroc_pair(plan, np.ones((n_clusters, 1)))
            row |= {m: float(v[0]) for m, v in point.items()}
            row |= _delong(y, plan[1], plan[2], ci_level)
            plans[t] = plan
        rows.append(row)
    cells = boot.run(plans, n_clusters=n_clusters, key=SEED_KEY)
    for t, row in enumerate(rows):
        ok = t in plans
        row["status"] = STATUS_OK if ok else STATUS_INSUFFICIENT
        cell = cells.get(t)
        intervals: Mapping[str, float] = cell.intervals if cell is not None else {}
        for m in METRICS:
            row.setdefault(m, np.nan)
            for side in ("_ci_low", "_ci_high"):
                row[f"{m}{side}"] = intervals.get(f"{m}{side}", np.nan)
        lo, hi = row["auroc_difference_ci_low"], row["auroc_difference_ci_high"]
        row["difference_ci_excludes_zero"] = bool(np.isfinite(lo) and (lo > 0 or hi < 0))
        for k in ("delong_se", "delong_ci_low", "delong_ci_high", "delong_p"):
            row.setdefault(k, np.nan)
        row["n_boot"] = int(n_boot)
        row["n_boot_valid"] = cell.n_valid if cell is not None else 0
        row["ci_level"] = float(ci_level)
        row["seed"] = int(seed)
        row["interval"] = "paired patient-clustered percentile bootstrap; DeLong: paired, rows iid"
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


def _delong(y: np.ndarray, a: np.ndarray, b: np.ndarray, ci_level: float) -> dict[str, float]:
    if min((y == 1).sum(), (y == 0).sum()) < 2:  # DeLong variances need 2 of each
        return {}
    test = delong_paired_test(y, a, b, ci_level=ci_level)
    return {
        "delong_se": test.se,
        "delong_ci_low": test.ci_low,
        "delong_ci_high": test.ci_high,
        "delong_p": test.p_value,
    }
