"""Alert burden at an operating threshold, and the per-group threshold-metric machinery behind it.

:func:`alert_burden` answers the deployment questions of an early-warning score: how many
patients it alerts on (Wong et al. 2021 found the Epic Sepsis Model alerting on 18% of
hospitalisations), how many alerts clinicians must evaluate per 100 stay-days, how many true cases
each alert finds (PPV; number needed to evaluate ``= 1 / PPV``), and how many cases it misses per
1,000 stays, overall and per group, with clustered-bootstrap intervals.

Machinery shared with :mod:`clinaudit.audit.fairness` and
:mod:`clinaudit.audit.fairness_mitigation`: input validation for one labelled target with group
attributes, the cells (overall, each attribute's groups, intersections), and the per-cell linear
sums (rows, positives, alerts, true alerts, exposure) whose ratios are every threshold metric. One
bootstrap over all clusters (stream ``derive_rng(seed, "fairness")``) drives every cell, so the
replicates of different groups, of different functions called with the same data and seed, and of
"before" and "after" decisions are paired.

Alerts are counted once per alerted stay (the score is one per stay). ``exposure_days`` is the
observation window of each stay (an input: e.g. the length of stay, or the fixed prediction window).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .bootstrap import DEFAULT_CHUNK_SIZE, derive_rng, iter_count_chunks, percentile_ci
from .bootstrap import segment_matrix as _segment_matrix
from .burden_schema import AlertBurdenTable
from .schemas import validate_table
from .types import (
    STATUS_INSUFFICIENT,
    STATUS_OK,
    AuditInputError,
    as_1d,
    check_ci_level,
    check_positive_int,
    validate_labelled_scores,
)

__all__ = [
    "BURDEN_METRICS",
    "AlertBurdenTable",
    "BinaryData",
    "GroupCell",
    "alert_burden",
    "bootstrap_sums",
    "build_cells",
    "cell_sums_matrix",
    "check_attributes",
    "check_threshold",
    "decision_rates",
    "paired_change_row",
    "rule_rates",
    "threshold_rule_rates",
    "spread",
    "validate_binary",
]

OVERALL = "overall"
ALL = "all"
CROSS = " x "  # joins attribute names of an intersection
AND = " & "  # joins group labels of an intersection
SEED_KEY = "fairness"


# --------------------------------------------------------------------------- inputs and cells
@dataclass(frozen=True)
class BinaryData:
    """Validated single-target data: labels, scores, cluster codes and attribute labels."""

    y: np.ndarray
    score: np.ndarray
    clusters: np.ndarray
    n_clusters: int
    attributes: dict[str, np.ndarray]
    threshold: float


@dataclass(frozen=True)
class GroupCell:
    """The rows of one (attribute, group) cell."""

    attribute: str
    group: str
    rows: np.ndarray
    is_intersection: bool = False


def check_threshold(threshold: object, name: str = "threshold") -> float:
    """Return ``threshold`` as a float after checking it is a probability in ``[0, 1]``."""
    ok = isinstance(threshold, int | float | np.floating | np.integer) and not isinstance(
        threshold, bool
    )
    if not ok or not 0.0 <= float(threshold) <= 1.0:  # type: ignore[arg-type]
        raise AuditInputError(
            name,
            repr(threshold),
            "a probability in [0, 1] (score >= threshold raises an alert)",
            f"pass e.g. {name}=0.5, on the same probability scale as y_score",
        )
    return float(threshold)  # type: ignore[arg-type]


def check_attributes(groups: Any, n: int) -> dict[str, np.ndarray]:
    """Validate ``groups`` (attribute name -> one label per row); labels become strings."""
    if isinstance(groups, pd.DataFrame):
        groups = {str(c): groups[c] for c in groups.columns}
    if not isinstance(groups, Mapping) or len(groups) == 0:
        raise AuditInputError(
            "groups",
            type(groups).__name__ if not isinstance(groups, Mapping) else "an empty mapping",
            "a mapping attribute name -> one group label per row, e.g. {'sex': sex_array}",
            "pass groups={'sex': ..., 'race': ...} (or a DataFrame with one column per attribute)",
        )
    out: dict[str, np.ndarray] = {}
    for name, values in groups.items():
        if not isinstance(name, str) or not name or CROSS in name or name == OVERALL:
            raise AuditInputError(
                "groups",
                f"attribute name {name!r}",
                f"a non-empty str other than {OVERALL!r} without {CROSS!r}",
                "rename the attribute",
            )
        arr = as_1d(f"groups[{name!r}]", values, n)
        out[name] = np.array([str(v) for v in arr], dtype=object)
    return out


def validate_binary(
    y_true: Any,
    y_score: Any,
    *,
    threshold: object,
    groups: Any,
    clusters: Any,
    require_groups: bool = False,
) -> BinaryData:
    """Validate one fully labelled target with probability scores, attributes and clusters."""
    data = validate_labelled_scores(y_true, y_score, clusters=clusters, require_probabilities=True)
    if data.y_true.shape[1] != 1:
        raise AuditInputError(
            "y_true", f"{data.y_true.shape[1]} columns", "one target", "pass one target column"
        )
    y = data.y_true[:, 0]
    if np.isnan(y).any():
        row = int(np.flatnonzero(np.isnan(y))[0])
        raise AuditInputError(
            "y_true",
            f"an unlabelled (NaN) row {row}",
            "a label for every row",
            "drop unlabelled rows from y_true, y_score, groups and clusters",
        )
    use = groups is not None or require_groups
    attributes = check_attributes(groups, y.size) if use else {}
    return BinaryData(
        y=y,
        score=data.y_score[:, 0],
        clusters=data.clusters,
        n_clusters=int(data.clusters.max()) + 1,
        attributes=attributes,
        threshold=check_threshold(threshold),
    )


def build_cells(
    attributes: Mapping[str, np.ndarray],
    n: int,
    intersections: Sequence[tuple[str, ...]] = (),
) -> list[GroupCell]:
    """Cells: the overall cohort, each attribute's groups (sorted), then intersection cells."""
    cells = [GroupCell(OVERALL, ALL, np.arange(n))]
    levels: list[tuple[str, np.ndarray, bool]] = [(a, v, False) for a, v in attributes.items()]
    for combo in intersections:
        joined = attributes[combo[0]].astype(object)
        for a in combo[1:]:
            joined = joined + AND + attributes[a]
        levels.append((CROSS.join(combo), joined, True))
    for name, labels, inter in levels:
        codes, uniques = pd.factorize(labels, sort=True)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        for k, g in enumerate(uniques):
            cells.append(GroupCell(name, str(g), order[bounds[k] : bounds[k + 1]], inter))
    return cells


# --------------------------------------------------------------------------- linear sums
def cell_sums_matrix(
    cells: Sequence[GroupCell],
    columns: Mapping[str, np.ndarray],
    clusters: np.ndarray,
    n_clusters: int,
) -> Any:
    """Sparse ``(n_cells * n_columns, n_clusters)`` matrix of per-cell, per-cluster column sums.

    ``matrix @ counts`` (counts of shape ``(n_clusters, b)``), reshaped to
    ``(n_cells, n_columns, b)``, gives every column's weighted sum in every cell and replicate.
    """
    k = len(columns)
    values = list(columns.values())
    segs, cls, vals = [], [], []
    for c, cell in enumerate(cells):
        for j, col in enumerate(values):
            segs.append(np.full(cell.rows.size, c * k + j, dtype=np.int64))
            cls.append(clusters[cell.rows])
            vals.append(col[cell.rows])
    return _segment_matrix(
        np.concatenate(segs), np.concatenate(cls), len(cells) * k, n_clusters, np.concatenate(vals)
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)


def decision_rates(sums: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Threshold metrics from weighted sums ``n``, ``pos``, ``pred`` (alerts), ``tp``.

    Returns ``prevalence``, ``tpr`` (sensitivity), ``fpr``, ``specificity``, ``ppv``,
    ``selection_rate`` (alert rate), ``nne`` (alerts per true case found, ``1 / ppv``) and
    ``missed_per_1000`` (false negatives per 1,000 rows); ``NaN`` where undefined. With an
    ``exposure`` sum (days) also ``alerts_per_100_days`` (alerts per 100 stay-days).
    """
    n, pos, pred, tp = sums["n"], sums["pos"], sums["pred"], sums["tp"]
    neg, fp = n - pos, pred - tp
    out = {
        "prevalence": _ratio(pos, n),
        "tpr": _ratio(tp, pos),
        "fpr": _ratio(fp, neg),
        "specificity": _ratio(neg - fp, neg),
        "ppv": _ratio(tp, pred),
        "selection_rate": _ratio(pred, n),
        "nne": _ratio(pred, tp),
        "missed_per_1000": 1000.0 * _ratio(pos - tp, n),
    }
    if "exposure" in sums:
        out["alerts_per_100_days"] = 100.0 * _ratio(pred, sums["exposure"])
    return out


def replicate_sums(
    matrix: Any, names: Sequence[str], n_cells: int, counts: np.ndarray
) -> dict[str, np.ndarray]:
    """``matrix @ counts`` split into one ``(n_cells, b)`` array per column name."""
    arr = np.asarray(matrix @ counts).reshape(n_cells, len(names), counts.shape[1])
    return {name: arr[:, j, :] for j, name in enumerate(names)}


def bootstrap_sums(
    matrix: Any,
    names: Sequence[str],
    n_cells: int,
    n_clusters: int,
    *,
    n_boot: int,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_chunk: Callable[[np.ndarray, int, int], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Point sums ``(n_cells,)`` and bootstrap replicate sums ``(n_cells, n_boot)`` per column.

    ``on_chunk(counts, start, stop)`` is called with each chunk of cluster counts
    (``(n_clusters, stop - start)``), so callers can compute other statistics on the very same
    resamples (paired replicates).
    """
    point = {
        k: v[:, 0]
        for k, v in replicate_sums(matrix, names, n_cells, np.ones((n_clusters, 1))).items()
    }
    reps = {k: np.empty((n_cells, n_boot)) for k in names}
    start = 0
    rng = derive_rng(seed, SEED_KEY)
    for counts in iter_count_chunks(n_clusters, n_boot, rng, chunk_size=chunk_size):
        stop = start + counts.shape[1]
        for k, v in replicate_sums(matrix, names, n_cells, counts).items():
            reps[k][:, start:stop] = v
        if on_chunk is not None:
            on_chunk(counts, start, stop)
        start = stop
    return point, reps


def spread(values: np.ndarray) -> np.ndarray:
    """``max - min`` over axis 0 ignoring ``NaN`` (``NaN`` where fewer than two are finite)."""
    fin = np.isfinite(values)
    hi = np.where(fin, values, -np.inf).max(axis=0)
    lo = np.where(fin, values, np.inf).min(axis=0)
    return np.where(fin.sum(axis=0) >= 2, hi - lo, np.nan)


def with_ci(name: str, point: float, reps: np.ndarray, ci_level: float) -> dict[str, float]:
    """``{name: point, name_ci_low: ..., name_ci_high: ...}`` (percentile interval)."""
    lo, hi = percentile_ci(reps, ci_level) if reps.size else (np.nan, np.nan)
    return {name: float(point), f"{name}_ci_low": lo, f"{name}_ci_high": hi}


Rates = dict[str, np.ndarray]


def rule_rates(
    data: BinaryData,
    cells: Sequence[GroupCell],
    decisions: Mapping[str, np.ndarray],
    *,
    exposure: np.ndarray | None = None,
    n_boot: int,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_chunk: Callable[[np.ndarray, int, int], None] | None = None,
) -> tuple[dict[str, tuple[Rates, Rates]], dict[str, np.ndarray]]:
    """:func:`decision_rates` of each named alert rule in every cell, all on the same resamples.

    Parameters
    ----------
    data : BinaryData
        Labels and cluster codes.
    cells : sequence of GroupCell
        Cells (see :func:`build_cells`).
    decisions : mapping of str to ndarray of bool, shape (n,)
        Alert per row of each rule (e.g. ``{"before": ..., "after": ...}``).
    exposure : ndarray of shape (n,), optional
        Days per row (adds ``alerts_per_100_days``).
    n_boot, seed, chunk_size, on_chunk
        As in :func:`bootstrap_sums`.

    Returns
    -------
    rates : dict
        ``rates[rule] = (point, replicates)``: dicts of metric -> ``(n_cells,)`` and
        ``(n_cells, n_boot)`` arrays.
    counts : dict
        Point sums per cell: ``n``, ``pos``, ``exposure`` (if given) and ``pred:<rule>``.
    """
    cols = {"n": np.ones_like(data.y), "pos": data.y}
    for name, pred in decisions.items():
        cols[f"pred:{name}"], cols[f"tp:{name}"] = pred.astype(float), data.y * pred
    cols.update({"exposure": exposure} if exposure is not None else {})
    matrix = cell_sums_matrix(cells, cols, data.clusters, data.n_clusters)
    sums = bootstrap_sums(
        matrix,
        list(cols),
        len(cells),
        data.n_clusters,
        n_boot=n_boot,
        seed=seed,
        chunk_size=chunk_size,
        on_chunk=on_chunk,
    )
    rates = {}
    for name in decisions:
        keys = {"n": "n", "pos": "pos", "pred": f"pred:{name}", "tp": f"tp:{name}"}
        keys.update({"exposure": "exposure"} if exposure is not None else {})
        rates[name] = tuple(decision_rates({k: x[v] for k, v in keys.items()}) for x in sums)
    return rates, sums[0]  # type: ignore[return-value]


def threshold_rule_rates(
    data: BinaryData, cells: Sequence[GroupCell], **options: Any
) -> tuple[Rates, Rates, dict[str, np.ndarray]]:
    """:func:`rule_rates` (same keyword options) of the one rule ``score >= data.threshold``.

    Returns ``(point, replicates, counts)``; the rule's alert count is ``counts["pred:rule"]``.
    """
    rates, sums = rule_rates(data, cells, {"rule": data.score >= data.threshold}, **options)
    point, reps = rates["rule"]
    return point, reps, sums


def paired_change_row(
    names: Mapping[str, Any],
    before: tuple[Any, np.ndarray] | None,
    after: tuple[Any, np.ndarray] | None,
    ci_level: float,
) -> dict[str, Any]:
    """One before/after row: ``before``, ``after``, ``change`` (after - before), each with CIs.

    ``before``/``after`` are ``(point, replicates)`` from the same resamples (paired), or ``None``
    for an insufficient cell (status ``"insufficient data"``, ``NaN`` values).
    """
    row: dict[str, Any] = dict(names)
    ok = before is not None and after is not None
    row["status"] = STATUS_OK if ok else STATUS_INSUFFICIENT
    empty = (np.nan, np.array([]))
    (p0, r0), (p1, r1) = (before, after) if ok else (empty, empty)  # type: ignore[misc]
    row.update(with_ci("before", p0, r0, ci_level))
    row.update(with_ci("after", p1, r1, ci_level))
    row.update(with_ci("change", p1 - p0, r1 - r0, ci_level))
    lo, hi = row["change_ci_low"], row["change_ci_high"]
    row["change_ci_excludes_zero"] = bool(np.isfinite(lo) and (lo > 0 or hi < 0))
    return row


# --------------------------------------------------------------------------- alert burden
# output column -> key of decision_rates
BURDEN_METRICS: dict[str, str] = {
    "alert_rate": "selection_rate",
    "alerts_per_100_stay_days": "alerts_per_100_days",
    "missed_per_1000_stays": "missed_per_1000",
    "ppv": "ppv",
    "nne": "nne",
    "sensitivity": "tpr",
}


def check_exposure(exposure_days: Any, n: int) -> np.ndarray:
    """Per-row exposure in days (a scalar applies to every row); finite and > 0."""
    arr = np.full(n, exposure_days, dtype=float) if np.ndim(exposure_days) == 0 else None
    if arr is None:
        arr = np.asarray(as_1d("exposure_days", exposure_days, n), dtype=float)
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise AuditInputError(
            "exposure_days",
            f"{arr[row]!r} at row {row}",
            "finite days > 0 (observation window of each stay)",
            "pass the window length in days, e.g. exposure_days=1.0 or the length of stay",
        )
    return arr


def alert_burden(
    y_true: Any,
    y_score: Any,
    threshold: float,
    *,
    exposure_days: Any,
    groups: Mapping[str, Any] | pd.DataFrame | None = None,
    clusters: Any = None,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> pd.DataFrame:
    """Alert rate, alerts per 100 stay-days, missed cases per 1,000 stays, PPV, NNE, with CIs.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Outcome of each stay in ``{0, 1}``.
    y_score : array-like of shape (n,)
        Probabilities in ``[0, 1]``.
    threshold : float
        Operating threshold in ``[0, 1]``; ``score >= threshold`` raises an alert.
    exposure_days : float or array-like of shape (n,), keyword-only
        Days each stay is observed (window length); the denominator of alerts per stay-day.
    groups : mapping of str to array-like, or DataFrame, optional, keyword-only
        Attributes to break the burden down by (rows for every group of every attribute).
    clusters : array-like of shape (n,), optional, keyword-only
        Patient id per stay (bootstrap unit); default each stay.
    n_boot, ci_level, seed, chunk_size : keyword-only
        Bootstrap options, as in :func:`clinaudit.audit.fairness.group_rates` (same seed, same
        resamples: ``alert_rate`` intervals equal its ``selection_rate`` intervals).

    Returns
    -------
    pandas.DataFrame
        :class:`AlertBurdenTable`: one row per cell (first ``attribute="overall"``,
        ``group="all"``) with ``n_stays``, ``n_pos``, ``n_alerts``, ``exposure_days`` and, each
        with ``*_ci_low``/``*_ci_high``: ``alert_rate`` (fraction of stays alerted),
        ``alerts_per_100_stay_days``, ``missed_per_1000_stays``, ``ppv``, ``nne`` (alerts
        evaluated per true case found), ``sensitivity``; then ``n_boot``, ``ci_level``.

    Raises
    ------
    AuditInputError
        On invalid data, threshold, exposure or groups.

    Examples
    --------
    >>> t = alert_burden([0, 1, 0, 1], [0.2, 0.9, 0.7, 0.3], 0.5, exposure_days=2.0, n_boot=0)
    >>> t[["alert_rate", "alerts_per_100_stay_days", "missed_per_1000_stays"]].values.tolist()
    [[0.5, 25.0, 250.0]]
    """
    data = validate_binary(y_true, y_score, threshold=threshold, groups=groups, clusters=clusters)
    exposure = check_exposure(exposure_days, data.y.size)
    n_boot = check_positive_int("n_boot", n_boot, minimum=0)
    ci_level = check_ci_level(ci_level)
    cells = build_cells(data.attributes, data.y.size)
    point, reps, sums = threshold_rule_rates(
        data, cells, exposure=exposure, n_boot=n_boot, seed=seed, chunk_size=chunk_size
    )
    rows = []
    for c, cell in enumerate(cells):
        row: dict[str, Any] = {
            "attribute": cell.attribute,
            "group": cell.group,
            "n_stays": int(sums["n"][c]),
            "n_pos": int(sums["pos"][c]),
            "n_alerts": int(sums["pred:rule"][c]),
            "exposure_days": float(sums["exposure"][c]),
        }
        for out, key in BURDEN_METRICS.items():
            row.update(with_ci(out, point[key][c], reps[key][c], ci_level))
        row.update(n_boot=n_boot, ci_level=ci_level)
        rows.append(row)
    return validate_table(pd.DataFrame(rows), AlertBurdenTable)
