"""Monotone recalibration maps of a probability score, and their selection by cross-validation.

Maps (``p`` is the model's probability, ``logit(p)`` taken after clipping ``p`` to
``[1e-6, 1 - 1e-6]``):

* ``temperature``: ``q = sigmoid(logit(p) / T)``, one parameter ``T > 0``;
* ``platt``: ``q = sigmoid(intercept + slope * logit(p))``;
* ``isotonic``: the non-decreasing step/linear fit of scikit-learn's ``IsotonicRegression``
  (``out_of_bounds="clip"``, values clipped to ``[ISOTONIC_EPS, 1 - ISOTONIC_EPS]``), stored as its
  thresholds and applied with ``numpy.interp`` (the same piecewise-linear function).

Temperature and Platt are fitted by Newton's method on the cross-entropy with Platt's (1999) target
smoothing (positives ``(N+ + 1) / (N+ + 2)``, negatives ``1 / (N- + 2)``): the optimum is then
always finite, also for a perfectly separating score, where plain maximum likelihood diverges.
Every map is non-decreasing: a temperature or Platt fit with a non-positive slope (a score that
ranks positives below negatives at this site) is reported as not fitted rather than turned into a
map that reverses the model's ranking; isotonic regression then gives a (nearly) flat map.

Selection: cross-validated log-loss over cluster (patient) disjoint folds, stratified by whether a
cluster holds a positive; the simplest method (``temperature < platt < isotonic``) whose log-loss
is within ``tolerance`` of the best wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import pandas as pd
import sklearn
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression

from .calibration_fit import logit
from .types import SCORE_PREFIX, AuditInputError

Method = Literal["temperature", "platt", "isotonic"]
#: Known methods, simplest first (the order breaks ties in selection).
METHODS: tuple[str, ...] = ("temperature", "platt", "isotonic")
ISOTONIC_EPS = 1e-3
MAPS_VERSION = 1
_LOSS_EPS = 1e-12


def _as_probs(p: Any) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
        bad = np.flatnonzero(~(np.isfinite(arr) & (arr >= 0.0) & (arr <= 1.0)))[0]
        raise AuditInputError(
            "p",
            f"{arr.ravel()[bad]!r} at position {bad}",
            "finite probabilities in [0, 1]",
            "pass model probabilities (apply the sigmoid to logits first)",
        )
    return arr


class _MapDict:
    """``to_dict`` shared by the maps: every field but ``n_fit`` is a parameter."""

    method: str
    n_fit: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; :func:`map_from_dict` inverts it exactly."""
        params = {
            f.name: list(map(float, v)) if isinstance(v, tuple) else float(v)
            for f in fields(self)  # type: ignore[arg-type]
            if f.name != "n_fit"
            for v in [getattr(self, f.name)]
        }
        return {"method": self.method, "params": params, "n_fit": int(self.n_fit)}


@dataclass(frozen=True)
class TemperatureMap(_MapDict):
    """``q = sigmoid(logit(p) / temperature)``; ``n_fit`` rows fitted it."""

    temperature: float
    n_fit: int
    method = "temperature"

    def apply(self, p: Any) -> np.ndarray:
        """Recalibrated probabilities of ``p`` (same shape)."""
        return expit(logit(_as_probs(p)) / self.temperature)


@dataclass(frozen=True)
class PlattMap(_MapDict):
    """``q = sigmoid(intercept + slope * logit(p))``; ``n_fit`` rows fitted it."""

    intercept: float
    slope: float
    n_fit: int
    method = "platt"

    def apply(self, p: Any) -> np.ndarray:
        """Recalibrated probabilities of ``p`` (same shape)."""
        return expit(self.intercept + self.slope * logit(_as_probs(p)))


@dataclass(frozen=True)
class IsotonicMap(_MapDict):
    """Linear interpolation through ``(x[i], y[i])``, constant outside ``[x[0], x[-1]]``."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    n_fit: int
    method = "isotonic"

    def apply(self, p: Any) -> np.ndarray:
        """Recalibrated probabilities of ``p`` (same shape)."""
        return np.interp(_as_probs(p), np.asarray(self.x), np.asarray(self.y))


RecalibrationMap = TemperatureMap | PlattMap | IsotonicMap
_CLASSES = {"temperature": TemperatureMap, "platt": PlattMap, "isotonic": IsotonicMap}


def _bad(received: str, expected: str) -> AuditInputError:
    return AuditInputError("d", received, expected, "pass a dict written by the map's to_dict()")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"{name}={value!r}", "a finite number")
    return float(value)


def map_from_dict(d: Mapping[str, Any]) -> RecalibrationMap:
    """Rebuild a map from its :meth:`to_dict` form (also after a JSON round trip).

    Parameters
    ----------
    d : mapping
        ``{"method": ..., "params": {...}, "n_fit": ...}``.

    Returns
    -------
    TemperatureMap, PlattMap or IsotonicMap

    Raises
    ------
    AuditInputError
        If the method is unknown or a parameter is missing or invalid.

    Examples
    --------
    >>> m = TemperatureMap(temperature=2.0, n_fit=100)
    >>> map_from_dict(m.to_dict()) == m
    True
    """
    method = d.get("method") if isinstance(d, Mapping) else d
    if method not in _CLASSES:
        raise _bad(f"method {method!r}", f"one of {list(METHODS)}")
    cls = _CLASSES[method]
    names = [f.name for f in fields(cls) if f.name != "n_fit"]
    params, n_fit = d.get("params"), d.get("n_fit")
    if not isinstance(params, Mapping) or sorted(params) != sorted(names):
        raise _bad(f"params {params!r}", f"params {names} for method {method!r}")
    if isinstance(n_fit, bool) or not isinstance(n_fit, int) or n_fit < 1:
        raise _bad(f"n_fit={n_fit!r}", "an integer >= 1")
    if any(isinstance(v, list | tuple) != (method == "isotonic") for v in params.values()):
        raise _bad(f"params {params!r}", "lists for isotonic, numbers otherwise")
    values = {
        k: tuple(_number(k, x) for x in v) if isinstance(v, list | tuple) else _number(k, v)
        for k, v in params.items()
    }
    if method == "temperature" and values["temperature"] <= 0.0:
        raise _bad(f"temperature={values['temperature']}", "a temperature > 0")
    if method == "isotonic":
        x, y = (np.asarray(values.get(k, ()), dtype=float) for k in ("x", "y"))
        if not x.size or x.shape != y.shape or (np.diff(x) < 0).any() or (np.diff(y) < 0).any():
            raise _bad(f"{x.size} x and {y.size} y", "as many non-decreasing x as y (>= 1)")
    return cls(**values, n_fit=n_fit)


def _smoothed_targets(y: np.ndarray) -> np.ndarray:
    n_pos = float((y == 1.0).sum())
    n_neg = float(y.size - n_pos)
    return np.where(y == 1.0, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def _objective(t: np.ndarray, eta: np.ndarray) -> float:
    return float(np.sum(t * eta - np.logaddexp(0.0, eta)))


def fit_logistic(
    x: np.ndarray, t: np.ndarray, *, intercept: bool, max_iter: int = 100, tol: float = 1e-10
) -> np.ndarray | None:
    """Newton ascent of ``sum t * eta - log(1 + e^eta)``; ``eta = design @ beta``.

    Returns ``[intercept, slope]`` (``[slope]`` without intercept), ``None`` if not converged.
    """
    design = np.column_stack([np.ones_like(x), x]) if intercept else x[:, None]
    beta = np.array([0.0, 1.0]) if intercept else np.array([1.0])
    value = _objective(t, design @ beta)
    for _ in range(max_iter):
        mu = expit(design @ beta)
        grad = design.T @ (t - mu)
        hess = (design * (mu * (1.0 - mu))[:, None]).T @ design
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        scale = 1.0
        while True:
            cand = beta + scale * step
            cand_value = _objective(t, design @ cand)
            if cand_value >= value - 1e-12 * abs(value) or scale < 1e-8:
                break
            scale /= 2.0
        beta, value = cand, cand_value
        if np.max(np.abs(scale * step)) < tol:
            return beta if np.all(np.isfinite(beta)) else None
    return None


def fit_map(method: str, p: np.ndarray, y: np.ndarray) -> RecalibrationMap | None:
    """Fit one recalibration map on probabilities ``p`` and labels ``y`` in ``{0, 1}``.

    Returns ``None`` when the method cannot be fitted (slope <= 0, singular design).

    Examples
    --------
    >>> p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    >>> fit_map("isotonic", p, np.array([0, 0, 1, 0, 1, 1])).method
    'isotonic'
    """
    p = _as_probs(p)
    y = np.asarray(y, dtype=np.float64)
    n = int(y.size)
    if method == "isotonic":
        iso = IsotonicRegression(
            y_min=ISOTONIC_EPS, y_max=1.0 - ISOTONIC_EPS, increasing=True, out_of_bounds="clip"
        )
        # inputs were checked above: skip sklearn's per-call validation (most of a small fit)
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            iso.fit(p, y)
        xs, ys = iso.X_thresholds_, np.clip(iso.y_thresholds_, ISOTONIC_EPS, 1.0 - ISOTONIC_EPS)
        return IsotonicMap(x=tuple(map(float, xs)), y=tuple(map(float, ys)), n_fit=n)
    t = _smoothed_targets(y)
    if method == "temperature":
        beta = fit_logistic(logit(p), t, intercept=False)
        if beta is None or beta[0] <= 0.0:
            return None
        return TemperatureMap(temperature=float(1.0 / beta[0]), n_fit=n)
    if method == "platt":
        beta = fit_logistic(logit(p), t, intercept=True)
        if beta is None or beta[1] <= 0.0:
            return None
        return PlattMap(intercept=float(beta[0]), slope=float(beta[1]), n_fit=n)
    raise AuditInputError("method", repr(method), f"one of {list(METHODS)}", "pick a known method")


def log_loss(y: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row log-loss of probabilities ``q`` (clipped to ``[1e-12, 1 - 1e-12]``)."""
    q = np.clip(q, _LOSS_EPS, 1.0 - _LOSS_EPS)
    return -(y * np.log(q) + (1.0 - y) * np.log1p(-q))


def cluster_folds(
    codes: np.ndarray, y: np.ndarray, n_folds: int, rng: np.random.Generator
) -> np.ndarray:
    """Fold of each row: clusters (patients) never straddle folds; positives spread evenly.

    Clusters are shuffled, those holding a positive row are dealt round-robin first, then the
    others, continuing the count (so fold sizes differ by at most one cluster per kind).

    Parameters
    ----------
    codes, y : ndarray of shape (n,)
        Cluster code and label (``1`` = positive) of each row.
    n_folds : int
        Number of folds.
    rng : numpy.random.Generator
        Shuffles the clusters.

    Returns
    -------
    ndarray of int, shape (n,)
        Fold ``0 .. n_folds - 1`` of each row.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> f = cluster_folds(np.array([0, 0, 1, 2]), np.array([1, 0, 0, 1]), 2, rng)
    >>> bool(f[0] == f[1])
    True
    """
    uniq, inverse = np.unique(codes, return_inverse=True)
    has_pos = np.bincount(inverse, weights=(y == 1.0).astype(float), minlength=uniq.size) > 0
    perm = rng.permutation(uniq.size)
    order = perm[np.argsort(~has_pos[perm], kind="stable")]
    fold_of = np.empty(uniq.size, dtype=np.int64)
    fold_of[order] = np.arange(uniq.size) % n_folds
    return fold_of[inverse]


def select_map(
    p: np.ndarray,
    y: np.ndarray,
    codes: np.ndarray,
    *,
    methods: Sequence[str],
    inner_folds: int,
    rng: np.random.Generator,
    tolerance: float = 1e-3,
) -> RecalibrationMap | None:
    """Choose among ``methods`` by cluster-disjoint cross-validated log-loss, then fit on all rows.

    Parameters
    ----------
    p, y : ndarray of shape (n,)
        Probabilities and binary labels.
    codes : ndarray of int, shape (n,)
        Cluster (patient) code of each row.
    methods : sequence of str
        Candidates, from :data:`METHODS`.
    inner_folds : int
        Folds of the selection cross-validation (skipped when there is one candidate).
    rng : numpy.random.Generator
        Shuffles the folds.
    tolerance : float
        Mean log-loss margin within which a simpler method counts as tied with the best.

    Returns
    -------
    map or None
        The chosen map fitted on all rows given; ``None`` when no candidate can be fitted.
    """
    candidates = [m for m in METHODS if m in methods]
    if len(candidates) > 1:
        fold = cluster_folds(codes, y, inner_folds, rng)
        total = {m: 0.0 for m in candidates}
        for f in range(inner_folds):
            train, test = fold != f, fold == f
            if not test.any():
                continue
            for m in candidates:
                fitted = fit_map(m, p[train], y[train])
                if fitted is None:
                    total[m] = float("inf")
                else:
                    total[m] += float(log_loss(y[test], fitted.apply(p[test])).sum())
        losses = {m: total[m] / y.size for m in candidates}
        best = min(losses.values())
        tied = [m for m in candidates if losses[m] <= best + tolerance]
        rest = sorted((m for m in candidates if m not in tied), key=lambda m: losses[m])
        candidates = tied + rest
    for m in candidates:
        fitted = fit_map(m, p, y)
        if fitted is not None:
            return fitted
    return None


def sensitivity_threshold(pos_scores: np.ndarray, sensitivity: float) -> float:
    """Highest cut ``t`` with ``mean(pos_scores >= t) >= sensitivity`` (``NaN`` if undefined).

    Examples
    --------
    >>> sensitivity_threshold(np.array([0.9, 0.8, 0.4, 0.2]), 0.5)
    0.8
    """
    if not math.isfinite(sensitivity) or pos_scores.size == 0:
        return float("nan")
    k = min(max(math.ceil(sensitivity * pos_scores.size - 1e-9), 1), pos_scores.size)
    return float(np.sort(pos_scores)[::-1][k - 1])


@dataclass(frozen=True)
class CrossFit:
    """Out-of-fold recalibration of one cell.

    Per row: ``fold``, recalibrated probability ``q``, ``fold_threshold`` (site threshold in raw
    units fitted without the row's fold; ``NaN`` without a sensitivity). Per fold: ``fit_rows``
    (positions its map and threshold were fitted on) and ``maps`` (the map applied to it).
    """

    fold: np.ndarray
    q: np.ndarray
    fold_threshold: np.ndarray
    fit_rows: dict[int, np.ndarray]
    maps: dict[int, RecalibrationMap]


def cross_fit(
    p: np.ndarray,
    y: np.ndarray,
    codes: np.ndarray,
    *,
    sensitivity: float,
    methods: Sequence[str],
    n_folds: int,
    inner_folds: int,
    rng_for: Callable[[str], np.random.Generator],
    tolerance: float = 1e-3,
) -> CrossFit | None:
    """Select, fit and apply a map fold by fold: each fold is scored by a map fitted without it.

    Parameters
    ----------
    p, y, codes : ndarray of shape (n,)
        Probabilities, binary labels and cluster (patient) codes of one cell.
    sensitivity : float
        Sensitivity the fold's site threshold restores (``NaN``: none).
    methods, inner_folds, tolerance
        As in :func:`select_map`.
    n_folds : int
        Cluster-disjoint folds (:func:`cluster_folds`).
    rng_for : callable
        ``rng_for("folds")`` shuffles the folds, ``rng_for(f"select/{fold}")`` the selection.

    Returns
    -------
    CrossFit or None
        ``None`` when some fold has no fittable method.
    """
    fold = cluster_folds(codes, y, n_folds, rng_for("folds"))
    q = np.full(y.size, np.nan)
    cut = np.full(y.size, np.nan)
    fit_rows: dict[int, np.ndarray] = {}
    maps: dict[int, RecalibrationMap] = {}
    for f in range(n_folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        p_fit, y_fit = p[train], y[train]
        chosen = select_map(
            p_fit,
            y_fit,
            codes[train],
            methods=methods,
            inner_folds=inner_folds,
            rng=rng_for(f"select/{f}"),
            tolerance=tolerance,
        )
        if chosen is None:
            return None
        q[test] = chosen.apply(p[test])
        cut[test] = sensitivity_threshold(p_fit[y_fit == 1.0], sensitivity)
        fit_rows[f], maps[f] = train, chosen
    return CrossFit(fold, q, cut, fit_rows, maps)


def apply_site_maps(
    maps: Mapping[str, Any],
    group: str,
    scores: pd.DataFrame,
    *,
    missing: Literal["raise", "keep"] = "raise",
) -> pd.DataFrame:
    """Recalibrate ``score_<target>`` columns with a group's deployment maps.

    Parameters
    ----------
    maps : mapping
        :attr:`RecalibrationResult.maps` (also after a JSON round trip).
    group : str
        The site whose maps to apply.
    scores : DataFrame
        Only ``score_<target>`` columns of probabilities.
    missing : {"raise", "keep"}, keyword-only
        A column without a map (e.g. an "insufficient data" cell): error, or keep the raw score.

    Returns
    -------
    DataFrame
        Same index and columns, recalibrated probabilities.

    Examples
    --------
    >>> m = {"version": 1, "maps": {"a": {"t": {"method": "temperature",
    ...      "params": {"temperature": 2.0}, "n_fit": 10}}}}
    >>> apply_site_maps(m, "a", pd.DataFrame({"score_t": [0.5]}))["score_t"].tolist()
    [0.5]
    """
    if not isinstance(maps, Mapping) or maps.get("version") != MAPS_VERSION:
        raise AuditInputError(
            "maps", "no version-1 maps", '{"version": 1, "maps": {...}}', "pass result.maps"
        )
    per_group = maps.get("maps", {})
    if group not in per_group:
        raise AuditInputError(
            "group", repr(group), f"one of {sorted(per_group)}", "pass a recalibrated group"
        )
    if missing not in ("raise", "keep"):
        raise AuditInputError("missing", repr(missing), "'raise' or 'keep'", "pick one")
    out = scores.copy()
    for col in scores.columns:
        name = str(col)
        target = name[len(SCORE_PREFIX) :]
        if not name.startswith(SCORE_PREFIX):
            raise AuditInputError(
                "scores", f"column {name!r}", "only score_<target> columns", "select score columns"
            )
        entry = per_group[group].get(target)
        if entry is None:
            if missing == "raise":
                raise AuditInputError(
                    "scores",
                    f"column {name!r} without a map for group {group!r}",
                    f"targets with maps {sorted(per_group[group])}",
                    'drop the column or pass missing="keep" to leave it uncalibrated',
                )
            continue
        out[col] = map_from_dict(entry).apply(scores[col].to_numpy(dtype=np.float64))
    return out
