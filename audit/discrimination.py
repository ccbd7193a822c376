"""Discrimination per cell (group x target) with clustered-bootstrap and DeLong intervals.

For every cell: ``n``, ``n_pos``, prevalence, AUROC, AUPRC (average precision, scikit-learn's
step-function definition), sensitivity / specificity / PPV / NPV at the target's operating threshold
(``score >= threshold`` is positive), each with a percentile bootstrap interval that resamples
clusters (patients) within the group; a DeLong interval for the AUROC; and, when a reference group
is named (the vendor's held-out set: other patients), the unpaired DeLong test of each cell against
the reference cell of the same target, Holm/BH-adjusted across cells.

How it is fast
--------------
All metrics are functions of weighted sums over a few *segments* of a cell's rows. With ``J``
distinct scores among the positives (descending ``u_0 > ... > u_{J-1}``) the segments are

* ``G_j`` (``j = 0..J``): negatives with a score strictly between ``u_{j-1}`` and ``u_j``
  (``G_0`` above ``u_0``, ``G_J`` below ``u_{J-1}``);
* ``P_j``: positives with score ``u_j``; ``T_j``: negatives tied at ``u_j``;
* ``TP``/``FP``: positives/negatives with ``score >= threshold``.

With ``NA_j = sum_{k<=j} (G_k + T_k)`` (negative weight at or above ``u_j``), ``N`` and ``P``
the totals: ``AUROC = sum_j P_j (N - NA_j + T_j / 2) / (P N)`` (ties count 1/2) and
``AP = sum_j P_j * TP_j / (TP_j + NA_j) / P`` with ``TP_j = sum_{k<=j} P_k`` (precision at each
distinct threshold, weighted by the recall increment: scikit-learn's definition). The per-segment
sums of every bootstrap replicate come from one sparse product ``S @ counts.T`` (see
``bootstrap.py``), so 1,000 replicates cost about as much as a few passes over the rows.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .bootstrap import (
    DEFAULT_CHUNK_SIZE,
    GroupBootstrap,
    segment_matrix,
)
from .delong import DeLongResult, delong_auroc, delong_unpaired_test
from .discrimination_schema import DiscriminationTable
from .multiplicity import P_ADJUST_METHODS, PAdjust, adjust_pvalues
from .schemas import schema_columns, validate_table
from .serialize import metrics_to_json
from .types import (
    STATUS_INSUFFICIENT,
    STATUS_OK,
    AuditInputError,
    check_ci_level,
    check_option,
    check_positive_int,
    group_key,
    thresholds_per_target,
    validate_labelled_scores,
)

__all__ = [
    "BOOTSTRAP_METRICS",
    "DiscriminationResult",
    "DiscriminationTable",
    "audit_discrimination",
    "discrimination_table",
    "metrics_to_json",
    "weighted_binary_metrics",
]

BOOTSTRAP_METRICS: tuple[str, ...] = (
    "auroc",
    "auprc",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
)


@dataclass(frozen=True)
class _CellPlan:
    """Sparse segment matrix of one cell and the number ``J`` of distinct positive scores."""

    matrix: sp.csr_matrix
    n_blocks: int


def _cell_plan(
    y: np.ndarray, s: np.ndarray, cluster: np.ndarray, n_clusters: int, threshold: float
) -> _CellPlan:
    pos = y == 1.0
    u = np.unique(s[pos])  # ascending distinct positive scores
    n_blocks = u.size
    # j = number of distinct positive scores strictly above the row's score
    j = n_blocks - np.searchsorted(u, s, side="right")
    if n_blocks > 0:
        tied = u[np.minimum(np.searchsorted(u, s, side="left"), n_blocks - 1)] == s
    else:
        tied = np.zeros(s.shape, dtype=bool)
    # positives sit at their own score: j counts blocks above, so block index = j
    seg = np.where(pos, n_blocks + 1 + j, np.where(tied, 2 * n_blocks + 1 + j, j))
    pred = s >= threshold
    base = 3 * n_blocks + 1
    seg_all = np.concatenate(
        [seg, np.where(pos & pred, base, -1), np.where(~pos & pred, base + 1, -1)]
    )
    cl_all = np.concatenate([cluster, cluster, cluster])
    return _CellPlan(segment_matrix(seg_all, cl_all, base + 2, n_clusters), n_blocks)


def _col_total(cum: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Last row of a column-wise cumsum (zeros when there are no rows)."""
    return cum[-1] if cum.shape[0] else np.zeros(like.shape[1])


def _metrics_from_segments(seg: np.ndarray, n_blocks: int) -> dict[str, np.ndarray]:
    """Metrics for every column (replicate) of the segment sums ``seg`` (``(3J + 3, b)``)."""
    jb = n_blocks
    g = seg[: jb + 1]
    p = seg[jb + 1 : 2 * jb + 1]
    t = seg[2 * jb + 1 : 3 * jb + 1]
    tp_thr = seg[3 * jb + 1]
    fp_thr = seg[3 * jb + 2]
    # Column totals through cumsum (a sequential accumulate): numpy's ``sum`` switches to pairwise
    # summation when a chunk has a single column, which would make the last bits of a replicate
    # depend on the chunk size.
    tp_cum = np.cumsum(p, axis=0)
    g_cum = np.cumsum(g, axis=0)
    t_cum = np.cumsum(t, axis=0)
    neg_at_or_above = g_cum[:jb] + t_cum
    p_tot = _col_total(tp_cum, p)
    n_tot = g_cum[-1] + _col_total(t_cum, t)
    auc_num = _col_total(np.cumsum(p * (n_tot - neg_at_or_above + 0.5 * t), axis=0), p)
    denom = tp_cum + neg_at_or_above
    precision = np.divide(tp_cum, denom, out=np.zeros_like(denom), where=denom > 0)
    ap_num = _col_total(np.cumsum(p * precision, axis=0), p)
    both = (p_tot > 0) & (n_tot > 0)
    nan = np.full(p_tot.shape, np.nan)

    def ratio(num: np.ndarray, den: np.ndarray, ok: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=nan.copy(), where=ok & (den > 0))

    tn_thr = n_tot - fp_thr
    fn_thr = p_tot - tp_thr
    return {
        "auroc": ratio(auc_num, p_tot * n_tot, both),
        "auprc": ratio(ap_num, p_tot, both),
        "sensitivity": ratio(tp_thr, p_tot, p_tot > 0),
        "specificity": ratio(tn_thr, n_tot, n_tot > 0),
        "ppv": ratio(tp_thr, tp_thr + fp_thr, tp_thr + fp_thr > 0),
        "npv": ratio(tn_thr, tn_thr + fn_thr, tn_thr + fn_thr > 0),
    }


def _plan_metrics(plan: _CellPlan, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of one cell for every column (replicate) of ``counts``."""
    return _metrics_from_segments(np.asarray(plan.matrix @ counts), plan.n_blocks)


def weighted_binary_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    weights: np.ndarray,
    *,
    clusters: np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """AUROC, AUPRC and threshold metrics for many weight vectors at once.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels in ``{0, 1}``.
    y_score : array-like of shape (n,)
        Finite scores.
    weights : array-like of shape (n_weightings, n_clusters)
        Non-negative weight of each cluster in each weighting (e.g. bootstrap counts). Without
        ``clusters`` each row is its own cluster (``n_clusters == n``).
    clusters : array-like of shape (n,), optional, keyword-only
        Cluster (patient) id of each row; cluster ``k`` is the ``k``-th distinct id in order of
        first appearance (``pandas.factorize``).
    threshold : float, keyword-only
        Operating threshold; ``score >= threshold`` is positive.

    Returns
    -------
    dict of str to ndarray of shape (n_weightings,)
        Keys ``BOOTSTRAP_METRICS``; ``NaN`` where undefined (e.g. no positive weight).

    Examples
    --------
    >>> m = weighted_binary_metrics([0, 1, 1, 0], [0.1, 0.8, 0.4, 0.4], np.ones((1, 4)))
    >>> float(m["auroc"][0]), round(float(m["auprc"][0]), 4)
    (0.875, 0.8333)
    """
    data = validate_labelled_scores(y_true, y_score, clusters=clusters)
    if np.isnan(data.y_true).any() or data.y_true.shape[1] != 1:
        raise AuditInputError(
            "y_true",
            "NaN labels or several columns",
            "one fully labelled target",
            "drop unlabelled rows, pass one target",
        )
    n_clusters = int(data.clusters.max()) + 1
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != n_clusters:
        raise AuditInputError(
            "weights",
            f"shape {w.shape}",
            f"(n_weightings, {n_clusters}) (one column per cluster)",
            "pass a 2-D array with one column per cluster",
        )
    if not np.isfinite(w).all() or (w < 0).any():
        raise AuditInputError(
            "weights", "negative or non-finite weights", "finite weights >= 0", "fix the weights"
        )
    plan = _cell_plan(
        data.y_true[:, 0], data.y_score[:, 0], data.clusters, n_clusters, float(threshold)
    )
    return _plan_metrics(plan, np.ascontiguousarray(w.T))


@dataclass(frozen=True)
class DiscriminationResult:
    """Per-cell discrimination table plus the bootstrap replicates behind its intervals.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (group, target); see :func:`audit_discrimination` for the columns.
    replicates : dict
        ``replicates[(group, target)][metric]`` = ndarray of shape ``(n_boot,)`` for cells with
        status ``"ok"`` (``metric`` in ``BOOTSTRAP_METRICS``).
    reference_group : str or None
        The reference group, when one was named.
    n_boot : int
    ci_level : float
    seed : int
    """

    table: pd.DataFrame
    replicates: dict[tuple[str, str], dict[str, np.ndarray]] = field(repr=False)
    reference_group: str | None
    n_boot: int
    ci_level: float
    seed: int


#: Column order of the table (the schema's).
_COLUMNS: tuple[str, ...] = schema_columns(DiscriminationTable)


def audit_discrimination(
    y_true: Any,
    y_score: Any,
    *,
    groups: Any = None,
    clusters: Any = None,
    targets: Sequence[str] | None = None,
    thresholds: Any = 0.5,
    reference_group: Hashable | None = None,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    min_pos: int = 10,
    min_neg: int = 10,
    p_adjust: PAdjust = "holm",
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> DiscriminationResult:
    """Discrimination per (group, target) cell with clustered-bootstrap and DeLong intervals.

    Parameters
    ----------
    y_true : array-like or DataFrame of shape (n,) or (n, n_targets)
        Labels in ``{0, 1}``; ``NaN`` = not labelled (row excluded from that target only).
    y_score : array-like or DataFrame, same shape
        Finite scores (any scale; thresholds are on the same scale).
    groups : array-like of shape (n,), optional, keyword-only
        Any grouping (site, sex, age band, ...); default one group ``"all"``.
    clusters : array-like of shape (n,), optional, keyword-only
        Patient id of each row; the bootstrap resamples patients within each group. Default: rows.
    targets : sequence of str, optional, keyword-only
        Target names (default: DataFrame columns or ``target_0``...).
    thresholds : float, sequence or mapping, keyword-only
        Operating threshold per target; ``score >= threshold`` is positive.
    reference_group : hashable, optional, keyword-only
        Group holding the reference sample (e.g. the vendor's held-out set, other patients). Every
        other cell's AUROC is compared to the reference cell of the same target (unpaired DeLong).
    n_boot : int, keyword-only
        Bootstrap replicates (0 = no bootstrap intervals).
    ci_level : float, keyword-only
        Interval coverage.
    min_pos, min_neg : int, keyword-only
        Cells with fewer labelled positives / negatives get status ``"insufficient data"`` and
        ``NaN`` for every metric (counts and prevalence are still reported).
    p_adjust : {"holm", "bh", "none"}, keyword-only
        Adjustment of the DeLong p-values across all compared cells.
    seed : int, keyword-only
        Seed; each group draws from its own stream derived from ``(seed, group)``.
    chunk_size : int, keyword-only
        Replicates processed at once (memory only; results do not depend on it).

    Returns
    -------
    DiscriminationResult
        ``table`` has one row per (group, target), sorted by group label then target order, with
        the columns of :class:`DiscriminationTable` (checked before it is returned): counts,
        prevalence, threshold, each metric with ``*_ci_low``/``*_ci_high`` (percentile
        bootstrap), the DeLong SE/interval and the comparison with the reference
        (``auroc_diff_vs_reference`` = cell - reference).

    Raises
    ------
    AuditInputError
        On invalid data or options (see :func:`clinaudit.audit.types.validate_labelled_scores`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 200)
    >>> s = y + rng.normal(size=200)
    >>> res = audit_discrimination(y, s, groups=np.repeat(["a", "b"], 100), n_boot=50)
    >>> res.table[["group", "status"]].values.tolist()
    [['a', 'ok'], ['b', 'ok']]
    """
    data = validate_labelled_scores(
        y_true, y_score, groups=groups, clusters=clusters, targets=targets
    )
    thr = thresholds_per_target(thresholds, data.targets)
    n_boot = check_positive_int("n_boot", n_boot, minimum=0)
    ci_level = check_ci_level(ci_level)
    min_pos = check_positive_int("min_pos", min_pos)
    min_neg = check_positive_int("min_neg", min_neg)
    p_adjust = check_option("p_adjust", p_adjust, P_ADJUST_METHODS)  # type: ignore[assignment]
    bootstrap = GroupBootstrap(_plan_metrics, BOOTSTRAP_METRICS, n_boot, ci_level, seed, chunk_size)
    group_labels = data.group_labels()
    ref = None if reference_group is None else group_key(reference_group)
    if ref is not None and ref not in group_labels:
        raise AuditInputError(
            "reference_group",
            repr(reference_group),
            f"one of the groups {group_labels}",
            "label the reference rows with this group value, or fix the name",
        )

    rows: list[dict[str, Any]] = []
    replicates: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    delong: dict[tuple[str, str], DeLongResult] = {}
    for g in group_labels:
        cells = data.group_cells(g)
        n_clusters = cells.n_clusters
        plans: dict[int, _CellPlan] = {}
        ok_rows: dict[int, dict[str, Any]] = {}
        for cell in cells.cells:
            t, name, y, s = cell.index, cell.target, cell.y, cell.score
            n_pos, n_neg = cell.counts["n_pos"], cell.counts["n_neg"]
            row: dict[str, Any] = {c: np.nan for c in _COLUMNS}
            row.update(
                cell.counts,
                is_reference=g == ref,
                threshold=float(thr[t]),
                n_boot=n_boot,
                n_boot_valid=0,
                ci_level=ci_level,
            )
            if not cell.sufficient(min_pos, min_neg):
                row["status"] = STATUS_INSUFFICIENT
                rows.append(row)
                continue
            row["status"] = STATUS_OK
            plan = _cell_plan(y, s, cell.codes, n_clusters, float(thr[t]))
            plans[t] = plan
            point = _plan_metrics(plan, np.ones((n_clusters, 1)))
            row.update({k: float(v[0]) for k, v in point.items()})
            if n_pos >= 2 and n_neg >= 2:
                d = delong_auroc(y, s, ci_level=ci_level)
                delong[(g, name)] = d
                row.update(
                    auroc_se_delong=d.se,
                    auroc_delong_ci_low=d.ci_low,
                    auroc_delong_ci_high=d.ci_high,
                )
            rows.append(row)
            ok_rows[t] = row
        for t, cell_boot in bootstrap.run(plans, n_clusters=n_clusters, key=g).items():
            replicates[(g, data.targets[t])] = cell_boot.replicates
            ok_rows[t].update(cell_boot.intervals, n_boot_valid=cell_boot.n_valid)

    for row in rows:
        key = (row["group"], row["target"])
        if ref is not None and row["group"] != ref and key in delong:
            ref_d = delong.get((ref, row["target"]))
            if ref_d is not None:
                test = delong_unpaired_test(delong[key], ref_d, ci_level=ci_level)
                row.update(
                    auroc_diff_vs_reference=test.difference,
                    delong_diff_ci_low=test.ci_low,
                    delong_diff_ci_high=test.ci_high,
                    delong_z=test.z,
                    delong_p=test.p_value,
                )
    table = pd.DataFrame(rows, columns=list(_COLUMNS))
    table["delong_p_adj"] = adjust_pvalues(table["delong_p"].to_numpy(float), method=p_adjust)
    table = table.astype({"n": "int64", "n_pos": "int64", "n_neg": "int64", "n_clusters": "int64"})
    return DiscriminationResult(
        table=validate_table(table.reset_index(drop=True), DiscriminationTable),
        replicates=replicates,
        reference_group=ref,
        n_boot=n_boot,
        ci_level=ci_level,
        seed=seed,
    )


def discrimination_table(y_true: Any, y_score: Any, **options: Any) -> pd.DataFrame:
    """The ``table`` of :func:`audit_discrimination` (same arguments, keyword-only options).

    Examples
    --------
    >>> discrimination_table([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], min_pos=1, min_neg=1,
    ...                      n_boot=0)["auroc"].tolist()
    [1.0]
    """
    return audit_discrimination(y_true, y_score, **options).table
