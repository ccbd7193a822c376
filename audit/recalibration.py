"""Site-specific recalibration with cross-fitting: before/after calibration and operating points.

For every (group, target) cell with enough positives and negatives:

1. **Cross-fitting.** The cell's patients (clusters) are dealt into ``n_folds`` folds (seeded,
   positives spread evenly, see :func:`~clinaudit.audit.recalibration_maps.cluster_folds`). For
   each fold a map is selected (cross-validated log-loss inside the other folds, see
   :func:`~clinaudit.audit.recalibration_maps.select_map`) and fitted on the other folds only, then
   applied to the held-out fold. Every "after" number is computed on these out-of-fold
   probabilities, so no row is ever scored by a map that saw it.
2. **Site operating point.** In each training set the threshold restoring ``intended_sensitivity``
   (the vendor's sensitivity on its own held-out set) is the ``k``-th highest positive score with
   ``k = ceil(sensitivity * n_pos)``; it is applied to the held-out fold. The maps are monotone, so
   an operating point on the recalibrated probability is a cut on the raw score: it is chosen and
   applied in raw-score units (``score >= site_threshold_raw``; on an isotonic plateau, rows tied on
   the recalibrated probability are separated by the raw score) and ``site_threshold`` is its
   recalibrated value under the deployment map.
3. **Deployment.** The same selection and threshold fitted on all rows of the cell give the map and
   ``site_threshold_raw`` shipped in :attr:`RecalibrationResult.maps`.
4. **Intervals.** ECE (equal-width bins), Brier, sensitivity and specificity before/after are
   bootstrapped over the out-of-fold predictions by resampling patients within the group, the same
   replicates for "before" and "after" (paired; ``*_change`` is after minus before). The intervals
   hold the fitted maps fixed: they do not include the variability of refitting them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .bootstrap import GroupBootstrap, derive_rng, segment_matrix
from .calibration import assign_bins, bin_edges, expected_calibration_error
from .discrimination import weighted_binary_metrics
from .recalibration_inputs import check_frame, check_groups, check_sensitivity, check_targets
from .recalibration_maps import (
    MAPS_VERSION,
    METHODS,
    CrossFit,
    RecalibrationMap,
    apply_site_maps,
    cross_fit,
    select_map,
    sensitivity_threshold,
)
from .recalibration_schema import RecalibrationContract, RecalibrationTable
from .schemas import validate_table
from .types import (
    SCORE_PREFIX,
    STATUS_INSUFFICIENT,
    STATUS_OK,
    AuditInputError,
    check_ci_level,
    check_positive_int,
    thresholds_per_target,
)

__all__ = [
    "RECALIBRATION_METRICS",
    "RecalibrationConfig",
    "RecalibrationContract",
    "RecalibrationResult",
    "RecalibrationTable",
    "apply_site_maps",
    "recalibrate_sites",
]

#: Bootstrapped metrics (``*_change`` = after - before, paired).
RECALIBRATION_METRICS: tuple[str, ...] = tuple(
    "ece_before ece_after ece_change brier_before brier_after brier_change sensitivity_before "
    "sensitivity_after specificity_before specificity_after sensitivity_site_threshold "
    "specificity_site_threshold".split()
)
_HEAD = (
    "group target status note method fold_methods n n_pos n_neg n_clusters n_folds threshold "
    "intended_sensitivity"
).split()
_COLUMNS: tuple[str, ...] = (
    *_HEAD,
    *(f"{m}{s}" for m in RECALIBRATION_METRICS[:6] for s in ("", "_ci_low", "_ci_high")),
    "auroc_before",
    "auroc_deployed",
    *(f"{m}{s}" for m in RECALIBRATION_METRICS[6:10] for s in ("", "_ci_low", "_ci_high")),
    "site_threshold",
    "site_threshold_raw",
    *(f"{m}{s}" for m in RECALIBRATION_METRICS[10:] for s in ("", "_ci_low", "_ci_high")),
    "n_bins",
    "n_boot",
    "ci_level",
)
_FOLD_COLUMNS = "row group target fold label score recalibrated fold_threshold_raw".split()


@dataclass(frozen=True)
class RecalibrationConfig:
    """Options of :func:`recalibrate_sites` (defaults live here only).

    Attributes
    ----------
    methods : tuple of str
        Candidate maps, from ``("temperature", "platt", "isotonic")``.
    n_folds : int
        Cross-fitting folds (>= 2). A cell needs ``n_folds`` patients with a positive and as many
        with a negative.
    inner_folds : int
        Folds of the method-selection cross-validation inside each training set (>= 2).
    min_pos, min_neg : int
        Smallest positives / negatives for a cell to be recalibrated.
    n_boot, ci_level : int, float
        Clustered-bootstrap replicates (0: no intervals) and interval coverage.
    n_bins : int
        Equal-width bins of the ECE.
    seed : int
        Seed of folds, selection and bootstrap.
    tie_tolerance : float
        Mean log-loss margin within which the simpler method is preferred.
    """

    methods: tuple[str, ...] = METHODS
    n_folds: int = 5
    inner_folds: int = 3
    min_pos: int = 10
    min_neg: int = 10
    n_boot: int = 1000
    ci_level: float = 0.95
    n_bins: int = 10
    seed: int = 0
    tie_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        bad = [m for m in methods if m not in METHODS]
        if not methods or bad or len(set(methods)) != len(methods):
            raise AuditInputError(
                "methods",
                repr(self.methods),
                f"a non-empty subset of {list(METHODS)} without repeats",
                'pass e.g. methods=("temperature", "platt", "isotonic")',
            )
        object.__setattr__(self, "methods", methods)
        check_positive_int("n_folds", self.n_folds, minimum=2)
        check_positive_int("inner_folds", self.inner_folds, minimum=2)
        check_positive_int("min_pos", self.min_pos)
        check_positive_int("min_neg", self.min_neg)
        check_positive_int("n_boot", self.n_boot, minimum=0)
        check_ci_level(self.ci_level)
        check_positive_int("n_bins", self.n_bins)
        check_positive_int("seed", self.seed, minimum=0)
        tol = self.tie_tolerance
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 <= tol < math.inf:
            raise AuditInputError(
                "tie_tolerance", repr(tol), "a finite number >= 0", "pass e.g. tie_tolerance=1e-3"
            )


@dataclass(frozen=True)
class RecalibrationResult:
    """Before/after table, deployment maps and the cross-fitting record.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per (group, target), sorted; columns of :class:`RecalibrationTable` (contract A,
        :class:`RecalibrationContract`, plus ``note``, ``fold_methods``, ``n_neg``, ``n_clusters``,
        ``*_change``, ``auroc_before`` and ``auroc_deployed``: AUROC of the deployment map's
        probabilities on all rows, equal to ``auroc_before`` for temperature and Platt up to ties
        from clipping; isotonic plateaus tie rows, which changes it).
    maps : dict
        ``{"version": 1, "maps": {group: {target: {"method", "params", "n_fit",
        "site_threshold_raw"}}}}`` fitted on all rows of each "ok" cell (JSON-serialisable).
    folds : pandas.DataFrame
        One row per evaluated (frame row, target): ``row`` (frame index label), ``group``,
        ``target``, ``fold``, ``label``, ``score``, ``recalibrated`` (out-of-fold) and
        ``fold_threshold_raw`` (the fold's site threshold, raw units).
    fit_rows : dict
        ``(group, target, fold)`` -> frame index labels the fold's map and threshold were fitted on.
    fold_maps : dict
        ``(group, target, fold)`` -> the map applied to that fold's held-out rows.
    replicates : dict
        ``(group, target)`` -> metric -> bootstrap replicates, metrics in ``RECALIBRATION_METRICS``.
    config : RecalibrationConfig
    """

    table: pd.DataFrame
    maps: dict[str, Any]
    folds: pd.DataFrame
    fit_rows: dict[tuple[str, str, int], np.ndarray] = field(repr=False)
    fold_maps: dict[tuple[str, str, int], RecalibrationMap] = field(repr=False)
    replicates: dict[tuple[str, str], dict[str, np.ndarray]] = field(repr=False)
    config: RecalibrationConfig


@dataclass(frozen=True)
class _Cell:
    group: str
    target: str
    index: np.ndarray  # frame index labels
    y: np.ndarray
    p: np.ndarray
    codes: np.ndarray  # cluster codes within the group


def _plan(cell: _Cell, fit: CrossFit, threshold: float, n_bins: int, n_clusters: int) -> Any:
    """Segment matrix of the bootstrapped sums (layout in :func:`_metrics_from_sums`)."""
    y, p, q = cell.y, cell.p, fit.q
    edges = bin_edges(p, n_bins=n_bins, binning="width")
    pos, neg = y == 1.0, y == 0.0
    site = cell.p >= fit.fold_threshold  # False where the threshold is NaN
    k = n_bins
    segments = [
        (assign_bins(p, edges), y - p),
        (k + assign_bins(q, edges), y - q),
        (np.full(y.size, 2 * k), (p - y) ** 2),
        (np.full(y.size, 2 * k + 1), (q - y) ** 2),
        (np.full(y.size, 2 * k + 2), np.ones_like(y)),
    ]
    flags = [pos, neg, pos & (p >= threshold), neg & (p < threshold)]
    flags += [pos & (q >= threshold), neg & (q < threshold), pos & site, neg & ~site]
    segments += [(np.where(m, 2 * k + 3 + i, -1), np.ones_like(y)) for i, m in enumerate(flags)]
    mat = segment_matrix(
        np.concatenate([s for s, _ in segments]),
        np.tile(cell.codes, len(segments)),
        2 * k + 3 + len(flags),
        n_clusters,
        np.concatenate([v for _, v in segments]),
    )
    return mat, k, bool(np.isfinite(fit.fold_threshold).all())


def _metrics_from_sums(sums: np.ndarray, k: int, has_site: bool) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        n, pos, neg = sums[2 * k + 2], sums[2 * k + 3], sums[2 * k + 4]
        tp_b, tn_b, tp_a, tn_a, tp_s, tn_s = sums[2 * k + 5 : 2 * k + 11]
        # cumsum's last row: the same order of additions whatever the chunk width
        out = {
            "ece_before": np.cumsum(np.abs(sums[:k]), axis=0)[-1] / n,
            "ece_after": np.cumsum(np.abs(sums[k : 2 * k]), axis=0)[-1] / n,
            "brier_before": sums[2 * k] / n,
            "brier_after": sums[2 * k + 1] / n,
            "sensitivity_before": tp_b / pos,
            "sensitivity_after": tp_a / pos,
            "specificity_before": tn_b / neg,
            "specificity_after": tn_a / neg,
            "sensitivity_site_threshold": tp_s / pos if has_site else np.full(n.shape, np.nan),
            "specificity_site_threshold": tn_s / neg if has_site else np.full(n.shape, np.nan),
        }
    out["ece_change"] = out["ece_after"] - out["ece_before"]
    out["brier_change"] = out["brier_after"] - out["brier_before"]
    return out


def _replicate(plan: Any, chunk: np.ndarray) -> dict[str, np.ndarray]:
    mat, k, has_site = plan
    return _metrics_from_sums(np.asarray(mat @ chunk), k, has_site)


def _point(cell: _Cell, fit: CrossFit, plan: Any, n_bins: int) -> dict[str, Any]:
    mat, k, has_site = plan
    values = _metrics_from_sums(np.asarray(mat @ np.ones((mat.shape[1], 1))), k, has_site)
    row = {m: float(v[0]) for m, v in values.items()}
    row["ece_before"] = expected_calibration_error(cell.y, cell.p, n_bins=n_bins)
    row["ece_after"] = expected_calibration_error(cell.y, fit.q, n_bins=n_bins)
    row["ece_change"] = row["ece_after"] - row["ece_before"]
    row["auroc_before"] = _auroc(cell.y, cell.p)
    return row


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    return float(weighted_binary_metrics(y, score, np.ones((1, y.size)))["auroc"][0])


def _why_insufficient(cell: _Cell, config: RecalibrationConfig) -> str:
    n_pos, n_neg = int((cell.y == 1.0).sum()), int((cell.y == 0.0).sum())
    pos_clusters = np.unique(cell.codes[cell.y == 1.0]).size
    neg_clusters = np.unique(cell.codes[cell.y == 0.0]).size
    if n_pos < config.min_pos or n_neg < config.min_neg:
        return f"{n_pos} positives / {n_neg} negatives (need {config.min_pos} / {config.min_neg})"
    if min(pos_clusters, neg_clusters) < config.n_folds:
        return (
            f"{pos_clusters} patients with a positive / {neg_clusters} with a negative "
            f"(need {config.n_folds} each for {config.n_folds}-fold cross-fitting)"
        )
    return ""


def _cells(frame: pd.DataFrame, group: str, targets: Sequence[str]) -> tuple[list[_Cell], int]:
    """The labelled rows of each target in ``group`` and the group's number of patients."""
    in_group = (frame["group"].astype(str) == group).to_numpy()
    sub = frame[in_group]
    codes = pd.factorize(sub["cluster"].to_numpy(), sort=False)[0].astype(np.int64)
    cells = []
    for t in targets:
        y = sub[t].to_numpy(dtype=np.float64)
        lab = ~np.isnan(y)
        p = sub[SCORE_PREFIX + t].to_numpy(dtype=np.float64)
        cells.append(_Cell(group, t, sub.index.to_numpy()[lab], y[lab], p[lab], codes[lab]))
    return cells, int(codes.max()) + 1


def _cell_rows(
    cell: _Cell, threshold: float, sensitivity: float, config: RecalibrationConfig
) -> tuple[dict[str, Any], CrossFit | None, dict[str, Any] | None]:
    """Table row (without intervals), the cross-fit and the deployment map entry of one cell."""
    row: dict[str, Any] = {c: np.nan for c in _COLUMNS}
    row.update(
        group=cell.group,
        target=cell.target,
        status=STATUS_INSUFFICIENT,
        method=None,
        fold_methods="",
        n=int(cell.y.size),
        n_pos=int((cell.y == 1.0).sum()),
        n_neg=int((cell.y == 0.0).sum()),
        n_clusters=int(np.unique(cell.codes).size),
        n_folds=config.n_folds,
        threshold=threshold,
        intended_sensitivity=sensitivity,
        n_bins=config.n_bins,
        n_boot=config.n_boot,
        ci_level=config.ci_level,
        note=_why_insufficient(cell, config),
    )
    if row["note"]:
        return row, None, None
    key = f"recalibration/{cell.group}/{cell.target}"
    fit = cross_fit(
        cell.p,
        cell.y,
        cell.codes,
        sensitivity=sensitivity,
        methods=config.methods,
        n_folds=config.n_folds,
        inner_folds=config.inner_folds,
        rng_for=lambda part: derive_rng(config.seed, f"{key}/{part}"),
        tolerance=config.tie_tolerance,
    )
    deployed = select_map(
        cell.p,
        cell.y,
        cell.codes,
        methods=config.methods,
        inner_folds=config.inner_folds,
        rng=derive_rng(config.seed, f"{key}/select/all"),
        tolerance=config.tie_tolerance,
    )
    if fit is None or deployed is None:
        row["note"] = f"none of {list(config.methods)} could be fitted"
        return row, None, None
    cut = sensitivity_threshold(cell.p[cell.y == 1.0], sensitivity)
    site_q = float(deployed.apply(np.array([cut]))[0]) if math.isfinite(cut) else math.nan
    row.update(
        status=STATUS_OK,
        method=deployed.method,
        fold_methods=",".join(fit.maps[f].method for f in sorted(fit.maps)),
        site_threshold=site_q,
        site_threshold_raw=cut,
        auroc_deployed=_auroc(cell.y, deployed.apply(cell.p)),
    )
    entry = {**deployed.to_dict(), "site_threshold_raw": cut if math.isfinite(cut) else None}
    return row, fit, entry


def recalibrate_sites(
    frame: pd.DataFrame,
    *,
    targets: Sequence[str],
    thresholds: Mapping[str, float] | float,
    intended_sensitivity: Mapping[str, float] | float,
    groups: Sequence[str] | None = None,
    config: RecalibrationConfig | None = None,
) -> RecalibrationResult:
    """Cross-fitted site recalibration of every (group, target) cell, with paired bootstrap CIs.

    Parameters
    ----------
    frame : DataFrame
        :func:`~clinaudit.audit.reference_audit.scored_frame` output: ``group``, ``cluster``, one
        label column per target (``NaN`` = unlabelled) and ``score_<target>`` probabilities;
        unique index.
    targets : sequence of str
        Targets to recalibrate.
    thresholds : mapping or float, keyword-only
        Vendor operating threshold per target (``score >= threshold`` is positive).
    intended_sensitivity : mapping or float, keyword-only
        Sensitivity the site threshold should restore, per target, in ``(0, 1]``; ``NaN`` for a
        target leaves its site-threshold columns ``NaN``.
    groups : sequence of str, optional, keyword-only
        Groups to recalibrate; default every group without ``":"`` (the reference
        ``"vendor_dev:test"`` is the vendor's own held-out set).
    config : RecalibrationConfig, optional, keyword-only
        Options.

    Returns
    -------
    RecalibrationResult

    Raises
    ------
    AuditInputError
        On a missing column, invalid labels or scores, unknown group, bad thresholds or
        sensitivities.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(0.01, 0.99, 400)
    >>> df = pd.DataFrame({"group": "a", "cluster": np.arange(400),
    ...                    "t": (rng.uniform(size=400) < p).astype(float), "score_t": p ** 2})
    >>> res = recalibrate_sites(df, targets=["t"], thresholds=0.5, intended_sensitivity=0.8,
    ...                         config=RecalibrationConfig(n_boot=50))
    >>> bool(res.table["ece_after"].iloc[0] < res.table["ece_before"].iloc[0])
    True
    """
    config = config or RecalibrationConfig()
    targets = check_targets(targets)
    labels = check_groups(frame, groups)
    check_frame(frame, targets, labels)
    thr = thresholds_per_target(thresholds, targets)
    sens = check_sensitivity(intended_sensitivity, targets)
    bootstrap = GroupBootstrap(
        _replicate, RECALIBRATION_METRICS, config.n_boot, config.ci_level, config.seed
    )
    rows, fold_parts = [], []
    fit_rows: dict[tuple[str, str, int], np.ndarray] = {}
    fold_maps: dict[tuple[str, str, int], RecalibrationMap] = {}
    replicates: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    maps: dict[str, dict[str, Any]] = {}
    for g in labels:
        cells, n_clusters = _cells(frame, g, targets)
        plans: dict[int, Any] = {}
        ok_rows: dict[int, dict[str, Any]] = {}
        maps[g] = {}
        for i, cell in enumerate(cells):
            row, fit, entry = _cell_rows(cell, float(thr[i]), float(sens[i]), config)
            rows.append(row)
            if fit is None or entry is None:
                continue
            maps[g][cell.target] = entry
            ok_rows[i] = row
            plans[i] = _plan(cell, fit, float(thr[i]), config.n_bins, n_clusters)
            row.update(_point(cell, fit, plans[i], config.n_bins))
            for f in sorted(fit.maps):
                fit_rows[(g, cell.target, f)] = cell.index[fit.fit_rows[f]]
                fold_maps[(g, cell.target, f)] = fit.maps[f]
            fold_parts.append(_fold_frame(cell, fit))
        boot = bootstrap.run(plans, n_clusters=n_clusters, key=f"recalibration/{g}/bootstrap")
        for i, cell_boot in boot.items():
            replicates[(g, targets[i])] = cell_boot.replicates
            ok_rows[i].update(cell_boot.intervals)
    table = pd.DataFrame(rows, columns=list(_COLUMNS))
    ints = ["n", "n_pos", "n_neg", "n_clusters", "n_folds", "n_bins", "n_boot"]
    table = table.astype({c: "int64" for c in ints})
    table = table.sort_values(["group", "target"], kind="stable").reset_index(drop=True)
    folds = pd.concat(fold_parts, ignore_index=True) if fold_parts else _empty_folds()
    return RecalibrationResult(
        table=validate_table(table, RecalibrationTable),
        maps={"version": MAPS_VERSION, "maps": maps},
        folds=folds,
        fit_rows=fit_rows,
        fold_maps=fold_maps,
        replicates=replicates,
        config=config,
    )


def _fold_frame(cell: _Cell, fit: CrossFit) -> pd.DataFrame:
    values = [cell.index, cell.group, cell.target, fit.fold, cell.y, cell.p, fit.q]
    return pd.DataFrame(dict(zip(_FOLD_COLUMNS, [*values, fit.fold_threshold], strict=True)))


def _empty_folds() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float) for c in _FOLD_COLUMNS})
