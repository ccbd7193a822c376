"""Calibration per cell (group x target): ECE, MCE, Brier, logistic recalibration, reliability data.

Definitions
-----------
* Bins: equal-width edges ``linspace(0, 1, n_bins + 1)``; equal-mass edges are the quantiles
  ``numpy.quantile(p, linspace(0, 1, n_bins + 1))`` of the cell's predictions with duplicate edges
  removed (ties can leave fewer bins). Bin ``i`` is ``[e_i, e_{i+1})``, the last bin is closed.
* ``ECE = sum_b (n_b / n) |mean(y)_b - mean(p)_b|`` over non-empty bins; ``MCE = max_b |...|``.
* ``Brier = mean((p - y)^2)``.
* Logistic recalibration: ``logit P(y=1) = a + b logit(p)`` fitted by maximum likelihood
  (Newton / IRLS, ``p`` clipped to ``[1e-6, 1 - 1e-6]``); calibration-in-the-large is ``a`` with
  ``b`` fixed at 1.
  A fit that does not converge (e.g. perfectly separated data) is reported as ``NaN`` with
  ``recal_converged = False``, never as the last iterate.
* Bootstrap intervals (clustered, percentile) for ECE (both binnings) and Brier. The bin edges are
  those of the observed sample and stay fixed across replicates (only the weights change).
* Reliability data: per bin ``lower``, ``upper``, ``count``, mean predicted, observed rate and its
  Wilson interval (the Wilson interval treats rows as independent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import norm

from .bootstrap import DEFAULT_CHUNK_SIZE, GroupBootstrap, segment_matrix
from .calibration_fit import (
    CLIP_EPS,
    RecalibrationFit,
    check_binary_probs,
    logistic_recalibration,
)
from .calibration_schema import BINNINGS, CalibrationTable, ReliabilityTable
from .schemas import schema_columns, validate_table
from .types import (
    STATUS_INSUFFICIENT,
    STATUS_OK,
    check_ci_level,
    check_option,
    check_positive_int,
    validate_labelled_scores,
)

__all__ = [
    "BINNINGS",
    "CALIBRATION_BOOTSTRAP_METRICS",
    "CLIP_EPS",
    "Binning",
    "CalibrationResult",
    "CalibrationTable",
    "RecalibrationFit",
    "ReliabilityTable",
    "assign_bins",
    "audit_calibration",
    "bin_edges",
    "calibration_table",
    "expected_calibration_error",
    "logistic_recalibration",
    "wilson_interval",
]

Binning = Literal["width", "mass"]
CALIBRATION_BOOTSTRAP_METRICS: tuple[str, ...] = ("ece_width", "ece_mass", "brier")


def bin_edges(y_prob: np.ndarray, *, n_bins: int = 10, binning: Binning = "width") -> np.ndarray:
    """Bin edges for the reliability diagram / ECE.

    Parameters
    ----------
    y_prob : ndarray of shape (n,)
        Predicted probabilities (used only for equal-mass edges).
    n_bins : int, keyword-only
        Number of bins requested.
    binning : {"width", "mass"}, keyword-only
        Equal-width on ``[0, 1]`` or equal-mass (quantiles, duplicates removed).

    Returns
    -------
    ndarray of shape (k + 1,)
        Increasing edges of ``k <= n_bins`` bins (a single degenerate bin ``[c, c]`` when all
        predictions equal ``c`` under equal-mass binning).

    Examples
    --------
    >>> bin_edges(np.array([0.1, 0.2]), n_bins=4).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    n_bins = check_positive_int("n_bins", n_bins)
    binning = check_option("binning", binning, BINNINGS)  # type: ignore[assignment]
    if binning == "width":
        return np.linspace(0.0, 1.0, n_bins + 1)
    edges = np.unique(np.quantile(np.asarray(y_prob, float), np.linspace(0.0, 1.0, n_bins + 1)))
    return edges if edges.size >= 2 else np.repeat(edges, 2)


def assign_bins(y_prob: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each prediction: ``i`` with ``e_i <= p < e_{i+1}`` (last bin closed)."""
    n_bins = edges.size - 1
    return np.clip(np.searchsorted(edges, y_prob, side="right") - 1, 0, n_bins - 1)


def expected_calibration_error(
    y_true: Any, y_prob: Any, *, n_bins: int = 10, binning: Binning = "width"
) -> float:
    """Expected calibration error ``sum_b (n_b / n) |mean(y)_b - mean(p)_b|``.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels in ``{0, 1}``.
    y_prob : array-like of shape (n,)
        Probabilities in ``[0, 1]``.
    n_bins : int, keyword-only
        Number of bins.
    binning : {"width", "mass"}, keyword-only
        Equal-width or equal-mass bins.

    Returns
    -------
    float

    Examples
    --------
    >>> round(expected_calibration_error([0, 1, 1, 0], [0.2, 0.8, 0.6, 0.4], n_bins=2), 12)
    0.3
    """
    y, p = check_binary_probs(y_true, y_prob)
    edges = bin_edges(p, n_bins=n_bins, binning=binning)
    idx = assign_bins(p, edges)
    k = edges.size - 1
    diff = np.bincount(idx, weights=y - p, minlength=k)
    return float(np.abs(diff).sum() / y.size)


def wilson_interval(
    k: np.ndarray, n: np.ndarray, *, ci_level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion ``k / n`` (``NaN`` where ``n == 0``).

    Examples
    --------
    >>> lo, hi = wilson_interval(np.array([5.0]), np.array([10.0]))
    >>> round(float(lo[0]), 4), round(float(hi[0]), 4)
    (0.2366, 0.7634)
    """
    ci_level = check_ci_level(ci_level)
    k = np.asarray(k, float)
    n = np.asarray(n, float)
    z = float(norm.ppf(0.5 + ci_level / 2.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        phat = k / n
        denom = 1.0 + z * z / n
        centre = (phat + z * z / (2.0 * n)) / denom
        half = z * np.sqrt(phat * (1.0 - phat) / n + z * z / (4.0 * n * n)) / denom
        # The interval contains phat exactly; rounding at phat = 0 or 1 can put a bound a few
        # ulps on the wrong side (hi = 1 - 1e-16 at k = n), so the bounds are clamped to it.
        lo = np.where(n > 0, np.minimum(centre - half, phat), np.nan)
        hi = np.where(n > 0, np.maximum(centre + half, phat), np.nan)
    return np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)


@dataclass(frozen=True)
class CalibrationResult:
    """Per-cell calibration table, reliability-diagram data and bootstrap replicates.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (group, target); columns of :class:`CalibrationTable`.
    reliability : pandas.DataFrame
        One row per (group, target, binning, bin) for cells with status ``"ok"``; columns of
        :class:`ReliabilityTable`.
    replicates : dict
        ``replicates[(group, target)][metric]``, metric in ``CALIBRATION_BOOTSTRAP_METRICS``.
    n_boot : int
    ci_level : float
    seed : int
    """

    table: pd.DataFrame
    reliability: pd.DataFrame
    replicates: dict[tuple[str, str], dict[str, np.ndarray]] = field(repr=False)
    n_boot: int
    ci_level: float
    seed: int


#: Column order of the tables (their schemas').
_COLUMNS: tuple[str, ...] = schema_columns(CalibrationTable)
_RELIABILITY_COLUMNS: tuple[str, ...] = schema_columns(ReliabilityTable)


def _calibration_from_sums(sums: np.ndarray, k_w: int, k_m: int) -> dict[str, np.ndarray]:
    """ECE (both binnings) and Brier for every column of the segment sums."""
    n = sums[-1]
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, k in (("ece_width", k_w), ("ece_mass", k_m)):
        sy = sums[start + k : start + 2 * k]
        sp_ = sums[start + 2 * k : start + 3 * k]
        # cumsum's last row, not sum: order-stable whatever the chunk width (see discrimination)
        out[name] = np.cumsum(np.abs(sy - sp_), axis=0)[-1] / n
        start += 3 * k
    out["brier"] = sums[-2] / n
    return out


def _replicate_calibration(plan: tuple[Any, int, int], chunk: np.ndarray) -> dict[str, np.ndarray]:
    mat, k_w, k_m = plan
    with np.errstate(invalid="ignore", divide="ignore"):
        return _calibration_from_sums(np.asarray(mat @ chunk), k_w, k_m)


def audit_calibration(
    y_true: Any,
    y_prob: Any,
    *,
    groups: Any = None,
    clusters: Any = None,
    targets: Sequence[str] | None = None,
    n_bins: int = 10,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    min_pos: int = 10,
    min_neg: int = 10,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> CalibrationResult:
    """Calibration per (group, target) cell with clustered-bootstrap intervals.

    Parameters
    ----------
    y_true : array-like or DataFrame of shape (n,) or (n, n_targets)
        Labels in ``{0, 1}``; ``NaN`` = not labelled (excluded from that target only).
    y_prob : array-like or DataFrame, same shape
        Predicted probabilities in ``[0, 1]``.
    groups, clusters : array-like of shape (n,), optional, keyword-only
        Grouping and patient ids (the bootstrap resamples patients within each group).
    targets : sequence of str, optional, keyword-only
        Target names.
    n_bins : int, keyword-only
        Bins for ECE/MCE and the reliability data (both binnings).
    n_boot, ci_level, min_pos, min_neg, seed, chunk_size : keyword-only
        As in :func:`clinaudit.audit.discrimination.audit_discrimination`.

    Returns
    -------
    CalibrationResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(size=300)
    >>> y = (rng.uniform(size=300) < p).astype(float)
    >>> res = audit_calibration(y, p, n_boot=100)
    >>> bool(res.table["ece_width"].iloc[0] < 0.1)
    True
    """
    data = validate_labelled_scores(
        y_true,
        y_prob,
        groups=groups,
        clusters=clusters,
        targets=targets,
        score_name="y_prob",
        require_probabilities=True,
    )
    n_bins = check_positive_int("n_bins", n_bins)
    n_boot = check_positive_int("n_boot", n_boot, minimum=0)
    ci_level = check_ci_level(ci_level)
    min_pos = check_positive_int("min_pos", min_pos)
    min_neg = check_positive_int("min_neg", min_neg)
    bootstrap = GroupBootstrap(
        _replicate_calibration, CALIBRATION_BOOTSTRAP_METRICS, n_boot, ci_level, seed, chunk_size
    )
    rows: list[dict[str, Any]] = []
    rel_rows: list[dict[str, Any]] = []
    replicates: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for g in data.group_labels():
        cells = data.group_cells(g)
        n_clusters = cells.n_clusters
        plans: dict[int, tuple[Any, int, int]] = {}
        ok_rows: dict[int, dict[str, Any]] = {}
        for cell in cells.cells:
            t, name, y, p = cell.index, cell.target, cell.y, cell.score
            row: dict[str, Any] = {c: np.nan for c in _COLUMNS}
            row.update(
                cell.counts,
                n_bins=n_bins,
                n_boot=n_boot,
                ci_level=ci_level,
                recal_converged=False,
            )
            if not cell.sufficient(min_pos, min_neg):
                row["status"] = STATUS_INSUFFICIENT
                rows.append(row)
                continue
            row["status"] = STATUS_OK
            row["mean_predicted"] = float(p.mean())
            segs: list[np.ndarray] = []
            vals: list[np.ndarray] = []
            offset = 0
            ks = []
            for binning in BINNINGS:
                edges = bin_edges(p, n_bins=n_bins, binning=binning)  # type: ignore[arg-type]
                idx = assign_bins(p, edges)
                k = edges.size - 1
                ks.append(k)
                count = np.bincount(idx, minlength=k).astype(float)
                sum_y = np.bincount(idx, weights=y, minlength=k)
                sum_p = np.bincount(idx, weights=p, minlength=k)
                gap = np.abs(sum_y - sum_p)
                nonempty = count > 0
                row[f"ece_{binning}"] = float(gap.sum() / y.size)
                row[f"mce_{binning}"] = float(np.max(gap[nonempty] / count[nonempty]))
                lo, hi = wilson_interval(sum_y, count, ci_level=ci_level)
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean_p = np.where(nonempty, sum_p / count, np.nan)
                    obs = np.where(nonempty, sum_y / count, np.nan)
                for b in range(k):
                    rel_rows.append(
                        dict(
                            group=g,
                            target=name,
                            binning=binning,
                            bin=b,
                            lower=float(edges[b]),
                            upper=float(edges[b + 1]),
                            count=int(count[b]),
                            mean_predicted=float(mean_p[b]),
                            observed_rate=float(obs[b]),
                            observed_ci_low=float(lo[b]),
                            observed_ci_high=float(hi[b]),
                        )
                    )
                segs += [offset + idx, offset + k + idx, offset + 2 * k + idx]
                vals += [np.ones_like(p), y, p]
                offset += 3 * k
            row["brier"] = float(np.mean((p - y) ** 2))
            fit = logistic_recalibration(y, p)
            row.update(
                cal_intercept=fit.intercept,
                cal_slope=fit.slope,
                citl_intercept=fit.citl_intercept,
                recal_converged=fit.converged,
            )
            rows.append(row)
            ok_rows[t] = row
            segs += [np.full(p.size, offset), np.full(p.size, offset + 1)]
            vals += [(p - y) ** 2, np.ones_like(p)]
            cl = cell.codes
            mat = segment_matrix(
                np.concatenate(segs),
                np.tile(cl, len(segs)),
                offset + 2,
                n_clusters,
                np.concatenate(vals),
            )
            plans[t] = (mat, ks[0], ks[1])
        for t, cell_boot in bootstrap.run(plans, n_clusters=n_clusters, key=g).items():
            replicates[(g, data.targets[t])] = cell_boot.replicates
            ok_rows[t].update(cell_boot.intervals)
    table = pd.DataFrame(rows, columns=list(_COLUMNS))
    table = table.astype({"n": "int64", "n_pos": "int64", "n_neg": "int64", "n_clusters": "int64"})
    reliability = pd.DataFrame(rel_rows, columns=list(_RELIABILITY_COLUMNS))
    return CalibrationResult(
        table=validate_table(table, CalibrationTable),
        reliability=validate_table(reliability, ReliabilityTable),
        replicates=replicates,
        n_boot=n_boot,
        ci_level=ci_level,
        seed=seed,
    )


def calibration_table(y_true: Any, y_prob: Any, **options: Any) -> pd.DataFrame:
    """The ``table`` of :func:`audit_calibration` (same arguments, keyword-only options)."""
    return audit_calibration(y_true, y_prob, **options).table
