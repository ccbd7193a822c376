"""Shared input checking, error type and status values for the audit statistics core.

Every public function of ``clinaudit.audit`` takes plain arrays (numpy / pandas) and validates them
here on entry, so that all modules raise the same :class:`AuditInputError` with the same wording:
what was received, what was expected, and how to fix it.

Conventions
-----------
* ``y_true`` is ``(n,)`` (one target) or ``(n, n_targets)`` (multi-label), values in ``{0, 1}``;
  ``NaN`` means "not labelled" and excludes that row from that target only.
* ``y_score`` has the same shape and is finite (``NaN`` scores are an error: a missing prediction
  is a pipeline failure, not an unlabelled row).
* ``groups`` (any grouping: site, sex, age band, ...) and ``clusters`` (patient ids; several rows
  per patient) are ``(n,)`` arrays of hashable values. Group labels are reported as strings.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

STATUS_OK = "ok"
STATUS_INSUFFICIENT = "insufficient data"
ALL_GROUP = "all"
#: Prefix of the score column of a target in a scored frame (``score_<target>``).
SCORE_PREFIX = "score_"


class AuditInputError(ValueError):
    """Invalid input to an audit function, with machine-readable fields.

    Attributes
    ----------
    argument : str
        The offending argument (``"y_true"``, ``"groups"``, ...).
    received : str
        What was received (shape, value, row/column).
    expected : str
        What was expected.
    fix : str
        How to fix it.
    """

    def __init__(self, argument: str, received: str, expected: str, fix: str) -> None:
        self.argument = argument
        self.received = received
        self.expected = expected
        self.fix = fix
        super().__init__(f"{argument}: received {received}; expected {expected}. Fix: {fix}")


def check_option(name: str, value: object, options: Sequence[str]) -> str:
    """Check a ``Literal`` string option and return it.

    Parameters
    ----------
    name : str
        Argument name, for the error message.
    value : object
        The value received.
    options : sequence of str
        The allowed values.

    Returns
    -------
    str
        ``value`` when it is one of ``options``.

    Raises
    ------
    AuditInputError
        If ``value`` is not one of ``options``.

    Examples
    --------
    >>> check_option("method", "holm", ("holm", "bh"))
    'holm'
    """
    if not isinstance(value, str) or value not in options:
        raise AuditInputError(
            name, repr(value), f"one of {list(options)}", f"pass {name}= one of {list(options)}"
        )
    return value


def check_ci_level(ci_level: float) -> float:
    """Return ``ci_level`` as a float after checking ``0 < ci_level < 1``."""
    if not (isinstance(ci_level, int | float) and 0.0 < float(ci_level) < 1.0):
        raise AuditInputError(
            "ci_level", repr(ci_level), "a float in (0, 1)", "pass e.g. ci_level=0.95"
        )
    return float(ci_level)


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` as an int after checking it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise AuditInputError(
            name, repr(value), f"an integer >= {minimum}", f"pass {name}= an integer >= {minimum}"
        )
    return int(value)


@dataclass(frozen=True)
class LabelledScores:
    """Validated ``(y_true, y_score)`` with groups and clusters, ready for per-cell statistics.

    Attributes
    ----------
    y_true : ndarray of shape (n, n_targets)
        Float labels in ``{0.0, 1.0}`` or ``NaN`` (unlabelled).
    y_score : ndarray of shape (n, n_targets)
        Finite float scores.
    targets : tuple of str
        Target names, one per column.
    groups : ndarray of shape (n,)
        Group label of each row, as ``str``.
    clusters : ndarray of shape (n,) of int64
        Cluster (patient) code of each row; each row is its own cluster when none were given.
    """

    y_true: np.ndarray
    y_score: np.ndarray
    targets: tuple[str, ...]
    groups: np.ndarray
    clusters: np.ndarray

    def group_labels(self) -> list[str]:
        """Distinct group labels in deterministic (sorted) order."""
        return sorted(set(self.groups.tolist()))

    def group_cells(self, group: str) -> GroupCells:
        """The labelled rows of every target within ``group``, with cluster codes and counts."""
        in_group = np.flatnonzero(self.groups == group)
        codes, _ = pd.factorize(self.clusters[in_group], sort=False)
        cells = []
        for t, name in enumerate(self.targets):
            y_all = self.y_true[in_group, t]
            lab = ~np.isnan(y_all)
            y = y_all[lab]
            n_pos, n_neg = int((y == 1.0).sum()), int((y == 0.0).sum())
            counts = {
                "group": group,
                "target": name,
                "n": int(lab.sum()),
                "n_pos": n_pos,
                "n_neg": n_neg,
                "n_clusters": int(np.unique(codes[lab]).size),
                "prevalence": n_pos / lab.sum() if lab.any() else np.nan,
            }
            cells.append(Cell(t, name, y, self.y_score[in_group, t][lab], codes[lab], counts))
        return GroupCells(group, int(codes.max()) + 1, tuple(cells))


@dataclass(frozen=True)
class Cell:
    """One (group, target) cell: its labelled rows, their cluster codes and the count columns."""

    index: int
    target: str
    y: np.ndarray
    score: np.ndarray
    codes: np.ndarray
    counts: dict[str, Any]

    def sufficient(self, min_pos: int, min_neg: int) -> bool:
        """Enough positives and negatives for metrics (else "insufficient data")."""
        return self.counts["n_pos"] >= min_pos and self.counts["n_neg"] >= min_neg


@dataclass(frozen=True)
class GroupCells:
    """The cells of one group and the number of clusters (patients) in the group."""

    group: str
    n_clusters: int
    cells: tuple[Cell, ...]


def _as_2d(name: str, values: Any) -> tuple[np.ndarray, tuple[str, ...] | None]:
    columns: tuple[str, ...] | None = None
    if isinstance(values, pd.DataFrame):
        columns = tuple(str(c) for c in values.columns)
        arr = values.to_numpy()
    elif isinstance(values, pd.Series):
        columns = (str(values.name),) if values.name is not None else None
        arr = values.to_numpy()
    else:
        arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise AuditInputError(
            name,
            f"an array of shape {arr.shape}",
            "shape (n,) or (n, n_targets)",
            "pass one column per target",
        )
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise AuditInputError(
            name, f"values of dtype {arr.dtype}", "numbers", "convert the column(s) to float"
        ) from err
    return arr, columns


def _first_bad(mask: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows[0]), int(cols[0])


def as_1d(name: str, values: Any, n: int) -> np.ndarray:
    """Return ``values`` as a 1-D object/number array of length ``n`` or raise."""
    arr = values.to_numpy() if isinstance(values, pd.Series | pd.Index) else np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise AuditInputError(
            name,
            f"an array of shape {arr.shape}",
            f"shape ({n},), one value per row of y_true",
            f"pass one {name} value per row",
        )
    if pd.isna(arr).any():
        row = int(np.flatnonzero(pd.isna(arr))[0])
        raise AuditInputError(
            name, f"a missing value at row {row}", "no missing values", f"fill {name} at row {row}"
        )
    return arr


def validate_labelled_scores(
    y_true: Any,
    y_score: Any,
    *,
    groups: Any = None,
    clusters: Any = None,
    targets: Sequence[str] | None = None,
    score_name: str = "y_score",
    require_probabilities: bool = False,
) -> LabelledScores:
    """Validate labels, scores, groups and clusters (see the module docstring for conventions).

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, n_targets)
        Binary labels, ``NaN`` = not labelled.
    y_score : array-like, same shape as ``y_true``
        Finite scores.
    groups, clusters : array-like of shape (n,), optional
        Group label and cluster (patient) id of each row.
    targets : sequence of str, optional
        Target names; default the DataFrame columns, else ``target_0``, ``target_1``, ...
    score_name : str
        Name of the score argument in error messages.
    require_probabilities : bool
        Also require ``0 <= y_score <= 1``.

    Returns
    -------
    LabelledScores

    Raises
    ------
    AuditInputError
        On shape mismatch, labels outside ``{0, 1}``, non-finite scores, bad groups or clusters.

    Examples
    --------
    >>> d = validate_labelled_scores([0, 1, 1], [0.2, 0.9, 0.4])
    >>> d.y_true.shape, d.targets
    ((3, 1), ('target_0',))
    """
    yt, cols_t = _as_2d("y_true", y_true)
    ys, cols_s = _as_2d(score_name, y_score)
    if yt.shape != ys.shape:
        raise AuditInputError(
            score_name,
            f"shape {ys.shape} while y_true has shape {yt.shape}",
            "the same shape as y_true",
            "pass one score per label (same rows, same target columns)",
        )
    n, n_targets = yt.shape
    if n == 0:
        raise AuditInputError("y_true", "0 rows", "at least one row", "pass non-empty data")
    if cols_t is not None and cols_s is not None and cols_t != cols_s and n_targets > 1:
        raise AuditInputError(
            score_name,
            f"columns {list(cols_s)}",
            f"the same columns as y_true {list(cols_t)}",
            "reorder or rename the score columns to match the label columns",
        )
    bad = ~np.isnan(yt) & (yt != 0.0) & (yt != 1.0)
    if bad.any():
        r, c = _first_bad(bad)
        raise AuditInputError(
            "y_true",
            f"label {float(yt[r, c])!r} at row {r}, column {c}",
            "labels in {0, 1} (NaN = not labelled)",
            "binarise the labels (e.g. map CheXpert uncertain -1 to NaN, 0 or 1 explicitly)",
        )
    bad = ~np.isfinite(ys)
    if bad.any():
        r, c = _first_bad(bad)
        raise AuditInputError(
            score_name,
            f"non-finite score {float(ys[r, c])!r} at row {r}, column {c}",
            "finite scores for every row",
            "re-run inference for that row or drop the row from both y_true and y_score",
        )
    if require_probabilities and ((ys < 0.0) | (ys > 1.0)).any():
        r, c = _first_bad((ys < 0.0) | (ys > 1.0))
        raise AuditInputError(
            score_name,
            f"{float(ys[r, c])!r} at row {r}, column {c}",
            "probabilities in [0, 1]",
            "pass calibrated probabilities (apply the sigmoid/softmax), not logits",
        )
    if targets is None:
        names = cols_t if cols_t is not None and len(cols_t) == n_targets else None
        names = names or tuple(f"target_{j}" for j in range(n_targets))
    else:
        names = tuple(str(t) for t in targets)
        if len(names) != n_targets or len(set(names)) != n_targets:
            raise AuditInputError(
                "targets",
                f"{list(names)}",
                f"{n_targets} distinct names (one per column of y_true)",
                "pass one distinct name per target column",
            )
    if groups is None:
        group_arr = np.full(n, ALL_GROUP, dtype=object)
    else:
        group_arr = np.array([str(g) for g in as_1d("groups", groups, n)], dtype=object)
    if clusters is None:
        cluster_codes = np.arange(n, dtype=np.int64)
    else:
        cl = as_1d("clusters", clusters, n)
        cluster_codes = pd.factorize(cl, sort=False)[0].astype(np.int64)
    return LabelledScores(
        y_true=yt, y_score=ys, targets=names, groups=group_arr, clusters=cluster_codes
    )


def thresholds_per_target(thresholds: Any, targets: Sequence[str]) -> np.ndarray:
    """Resolve ``thresholds`` (a float, a sequence or a ``{target: float}`` mapping) per target.

    Examples
    --------
    >>> thresholds_per_target({"a": 0.3, "b": 0.7}, ["a", "b"]).tolist()
    [0.3, 0.7]
    """
    if isinstance(thresholds, Mapping):
        missing = [t for t in targets if t not in thresholds]
        if missing:
            raise AuditInputError(
                "thresholds",
                f"a mapping without {missing}",
                f"a threshold for every target {list(targets)}",
                "add the missing targets to the mapping",
            )
        out = np.array([float(thresholds[t]) for t in targets])
    elif np.ndim(thresholds) == 0:
        out = np.full(len(targets), float(thresholds))
    else:
        out = np.asarray(thresholds, dtype=np.float64).ravel()
        if out.shape[0] != len(targets):
            raise AuditInputError(
                "thresholds",
                f"{out.shape[0]} values",
                f"{len(targets)} (one per target)",
                "pass one threshold per target, a mapping, or a single float",
            )
    if not np.isfinite(out).all():
        raise AuditInputError(
            "thresholds", f"{out.tolist()}", "finite numbers", "pass finite thresholds"
        )
    return out


def group_key(value: Hashable) -> str:
    """Group labels are reported as strings; this is the one conversion used everywhere."""
    return str(value)
