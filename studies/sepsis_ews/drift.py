"""Input drift of local stays against a vendor's training-data *summary* (quantiles, missing rates).

A tabular model card does not ship the training data, only per-feature quantiles at fixed levels
(0.01, 0.05, ..., 0.99), the missing fraction, mean and standard deviation, and the share of each
group of every protected attribute. :func:`card_drift` compares local stays with that summary.

PSI against quantiles
---------------------
Bins are the card's distinct quantile values ``e_1 < ... < e_m`` (bins ``(-inf, e_1], ...,
(e_m, inf)``, right-closed as in :mod:`clinaudit.audit.drift`) plus a *missing* bin. The local side
is exact: ``F_loc(e)`` is the empirical CDF of the non-missing values. The card fixes its CDF only
within bounds: at a value ``e`` that the card lists at levels ``L_e``, ``F(e) >= max L_e`` and
``F(e-) <= min L_e``, and ``F(e)`` stays below the next listed level. For continuous features the
bounds pin ``F(e)`` to the level; for integer-valued ones (SpO2, GCS, comorbidity index) a value
that fills several quantiles is an atom of unknown size. The card CDF is taken as the point of
those bounds closest to the local CDF, assuming the card's atom at ``e`` is no larger than the
local one: ``F_card(e) = clip(F_loc(e), max L_e, min(next level, min L_e + p_loc(e)))``. The
PSI ``sum (a - e) ln(a / e)`` (empty bins at ``epsilon``) is therefore the smallest PSI consistent
with the card: identical distributions give ~0 even for integer features, and a flagged feature
has drifted at least that much. Missingness enters through the missing bin and is also reported
as a rate difference (labs are missing not at random).

PSI levels calibrated to sample size
------------------------------------
The cut-offs ``psi_moderate`` / ``psi_major`` are large-sample rules, and the card's 1% and 5%
tail bins hold only a few stays of a hospital. Each row carries ``psi_noise_bound``: the
``1 - alpha / m`` quantile of the PSI that sampling noise alone gives at the group's ``n`` and
the card's ``n`` (``m`` = features and attributes compared in that (scope, group), so a group
without drift gets any PSI level with probability at most ``alpha``), by a parametric bootstrap
(:func:`clinaudit.audit.psi.psi_noise_bound`) from the card's bin proportions ``e`` above; a card
feature without ``n`` (composition: without ``n_stays``) is taken as exact, so only the local
side is drawn. The null PSI is computed on the drawn bin counts without the atom adjustment,
which can only lower the real PSI, so the bound errs towards not flagging noise. A level counts
only when the PSI reaches the cut-off AND exceeds the bound.

Composition (``kind="composition"``): PSI of the category shares of each protected attribute
against the card's ``groups``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from clinaudit.audit.bootstrap import derive_rng
from clinaudit.audit.psi import psi_from_proportions, psi_noise_bound
from clinaudit.audit.schemas import (
    OutputSchema,
    count_field,
    difference_field,
    probability_field,
    schema_columns,
    status_field,
    validate_table,
)
from clinaudit.audit.types import STATUS_INSUFFICIENT, STATUS_OK, AuditInputError

from .tables_schema import flags

__all__ = [
    "CARD_DRIFT_KINDS",
    "CARD_PSI_LEVELS",
    "DRIFT_COLUMNS",
    "CardDrift",
    "card_drift",
    "psi_against_quantiles",
    "window_bins",
    "window_psi",
]

CARD_DRIFT_KINDS: tuple[str, ...] = ("numeric", "composition")
#: ``"not estimable"`` for a group with too few stays.
CARD_PSI_LEVELS: tuple[str, ...] = ("none", "moderate", "major", "not estimable")


class CardDrift(OutputSchema):
    """The table of :func:`card_drift`: one row per (scope, group, feature).

    A numeric row compares a feature's values with the card's quantiles and missing fraction
    (``missing_rate`` and ``median`` local, ``card_*`` the card's, ``smd`` against the card's mean
    and standard deviation); a ``composition`` row compares an attribute's group shares with the
    card's and has only ``psi`` and ``psi_noise_bound``. ``psi_level`` is ``"none"`` unless the
    PSI exceeds ``psi_noise_bound`` (the PSI that sampling noise alone reaches at the group's and
    the card's sizes). A group with fewer than ``min_rows`` stays has status ``"insufficient
    data"``, PSI level ``"not estimable"`` and no numbers (``card_atoms`` missing too, so that
    column is ``object`` when such a row is present).
    """

    scope: Series[str]
    group: Series[str]
    feature: Series[str]
    kind: Series[str] = pa.Field(isin=list(CARD_DRIFT_KINDS))
    status: Series[str] = status_field()
    n: Series[int] = count_field()
    missing_rate: Series[float] = probability_field()
    card_missing_rate: Series[float] = probability_field()
    missing_rate_change: Series[float] = difference_field()
    median: Series[float] = pa.Field(nullable=True)
    card_median: Series[float] = pa.Field(nullable=True)
    smd: Series[float] = pa.Field(nullable=True)
    # Every term (a - e) ln(a / e) of the PSI is >= 0.
    psi: Series[float] = pa.Field(nullable=True, ge=0.0)
    # The PSI that sampling noise alone reaches at this group's and the card's n.
    psi_noise_bound: Series[float] = pa.Field(nullable=True, ge=0.0)
    psi_level: Series[str] = pa.Field(isin=list(CARD_PSI_LEVELS))
    missing_flag: Series[bool]
    drifted: Series[bool]
    # Whether the card lists a value at several quantiles (the PSI is then a lower bound).
    card_atoms: Series[Any] = pa.Field(nullable=True)

    @pa.check("card_atoms", name="flags")
    @classmethod
    def _card_atoms_are_flags(cls, values: pd.Series) -> bool | pd.Series:
        return flags(values)

    class Config:
        ordered = True


#: Column order of the drift table (its schema's).
DRIFT_COLUMNS: tuple[str, ...] = schema_columns(CardDrift)


def _card_quantiles(summary: Mapping[str, Any], feature: str) -> tuple[np.ndarray, np.ndarray]:
    quantiles = summary.get("quantiles")
    if not isinstance(quantiles, Mapping) or not quantiles:
        raise AuditInputError(
            "training_data",
            f"feature {feature!r} without quantiles",
            "features[<name>] with 'quantiles' (level -> value) and 'missing_fraction'",
            "pass the model card's training_data summary (sources.sepsis_tables.summarize_stays)",
        )
    levels = np.array([float(k) for k in quantiles], dtype=float)
    values = np.array([float(v) for v in quantiles.values()], dtype=float)
    order = np.argsort(levels)
    levels, values = levels[order], values[order]
    if np.any(np.diff(values) < 0) or not np.all((levels > 0) & (levels < 1)):
        raise AuditInputError(
            "training_data",
            f"feature {feature!r} quantiles {dict(zip(levels, values, strict=True))}",
            "levels in (0, 1) with non-decreasing values",
            "re-export the model card",
        )
    return levels, values


def psi_against_quantiles(
    values: Any, summary: Mapping[str, Any], *, feature: str = "feature", epsilon: float = 1e-4
) -> tuple[float, bool]:
    """PSI of local values against a card's quantile summary (see the module docstring).

    Parameters
    ----------
    values : array-like of shape (n,)
        Local values; NaN = missing.
    summary : mapping
        ``quantiles`` (level -> value), ``missing_fraction``.
    feature : str, keyword-only
        Name used in errors.
    epsilon : float, keyword-only
        Proportion substituted for empty bins.

    Returns
    -------
    psi : float
    atoms : bool
        Whether the card lists a value at several levels (an atom: the card's CDF is only
        bounded there, so the PSI is a lower bound).

    Examples
    --------
    >>> card = {"quantiles": {"0.25": 1.0, "0.5": 2.0, "0.75": 3.0}, "missing_fraction": 0.0}
    >>> round(psi_against_quantiles([0.5, 1.5, 2.5, 3.5], card)[0], 6)
    0.0
    """
    expected, actual, atoms = _card_bins(values, summary, feature)
    return float(psi_from_proportions(expected, actual, epsilon)), atoms


def _card_bins(
    values: Any, summary: Mapping[str, Any], feature: str
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Card (``expected``) and local (``actual``) proportions of the quantile bins + the missing
    bin, and whether the card has atoms (see the module docstring)."""
    levels, q = _card_quantiles(summary, feature)
    x = np.asarray(values, dtype=float)
    missing = ~np.isfinite(x)
    ok = np.sort(x[~missing])
    edges = np.unique(q)
    if ok.size:
        f_loc = np.searchsorted(ok, edges, side="right") / ok.size
        atom = f_loc - np.searchsorted(ok, edges, side="left") / ok.size
    else:
        f_loc, atom = np.zeros(edges.size), np.zeros(edges.size)
    low = np.array([levels[q == e].max() for e in edges])
    first = np.array([levels[q == e].min() for e in edges])
    above = np.array([levels[q > e].min() if (q > e).any() else 1.0 for e in edges])
    f_card = np.clip(f_loc, low, np.maximum(low, np.minimum(above, first + atom)))
    miss_card = float(summary.get("missing_fraction", 0.0))
    miss_loc = float(missing.mean()) if x.size else 0.0
    expected = np.append(
        np.diff(np.concatenate([[0.0], f_card, [1.0]])) * (1 - miss_card), miss_card
    )
    actual = np.append(np.diff(np.concatenate([[0.0], f_loc, [1.0]])) * (1 - miss_loc), miss_loc)
    return expected, actual, bool(edges.size < q.size)


def window_bins(reference: Any, window: Any, *, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Bin proportions of a raw reference sample and of a window, the bins of :func:`window_psi`.

    Returns
    -------
    expected, actual : numpy.ndarray
        Proportions of the reference and of the window per bin (the last bin: missing values).

    Examples
    --------
    >>> e, a = window_bins([1.0, 2.0, 3.0, np.nan], [3.0, 3.0], n_bins=2)
    >>> e.tolist(), a.tolist()
    ([0.5, 0.25, 0.25], [0.0, 1.0, 0.0])
    """
    ref, win = np.asarray(reference, dtype=float), np.asarray(window, dtype=float)
    if ref.size == 0 or win.size == 0:
        raise AuditInputError("reference/window", "an empty sample", "values", "pass rows")
    r_ok, w_ok = ref[np.isfinite(ref)], win[np.isfinite(win)]
    inner = np.unique(np.quantile(r_ok, np.arange(1, n_bins) / n_bins)) if r_ok.size else []
    k = len(inner) + 1

    def props(ok: np.ndarray, n: int) -> np.ndarray:
        counts = np.bincount(np.searchsorted(inner, ok, side="left"), minlength=k)
        return np.append(counts, n - ok.size) / n

    return props(r_ok, ref.size), props(w_ok, win.size)


def window_psi(reference: Any, window: Any, *, n_bins: int = 10, epsilon: float = 1e-4) -> float:
    """PSI of a monitoring window against a raw reference sample, with a missing bin.

    Bins: interior edges at the reference quantiles ``1/k, ..., (k-1)/k`` of its non-missing
    values (duplicates removed, right-closed, as in :func:`clinaudit.audit.drift.
    population_stability_index`), plus one bin for missing values (:func:`window_bins`).

    Examples
    --------
    >>> x = np.r_[np.arange(90.0), [np.nan] * 10]
    >>> window_psi(x, x)
    0.0
    """
    expected, actual = window_bins(reference, window, n_bins=n_bins)
    return float(psi_from_proportions(expected, actual, epsilon))


def _card_median(summary: Mapping[str, Any], feature: str) -> float:
    levels, values = _card_quantiles(summary, feature)
    hit = np.flatnonzero(np.isclose(levels, 0.5))
    return float(values[hit[0]]) if hit.size else np.nan


@dataclass(frozen=True)
class _Flagging:
    """The options that turn a PSI into a level: cut-offs, noise-bound draws, alpha, seed."""

    psi_moderate: float
    psi_major: float
    missing_rate_change: float
    psi_noise_draws: int
    alpha: float
    seed: int

    def columns(
        self, psi: float, e: np.ndarray, n: int, n_card: Any, quantile: float, key: str
    ) -> dict[str, Any]:
        """``psi``, ``psi_noise_bound`` and ``psi_level`` of one row (``n_card`` None: exact)."""
        n_ref = int(n_card) if isinstance(n_card, int | float) and n_card >= 1 else None
        bound = psi_noise_bound(
            e, max(n, 1), n_ref, quantile=quantile, draws=self.psi_noise_draws,
            rng=derive_rng(self.seed, key),
        )  # fmt: skip
        level = "none"
        if psi > bound and psi >= self.psi_moderate:
            level = "major" if psi >= self.psi_major else "moderate"
        return {"psi": psi, "psi_noise_bound": bound, "psi_level": level}


def _numeric_rows(
    frame: pd.DataFrame,
    features: Sequence[str],
    card: Mapping[str, Any],
    opts: _Flagging,
    noise: tuple[float, str],
) -> list[dict[str, Any]]:
    quantile, where = noise
    rows = []
    for feature in features:
        summary = card[feature]
        x = pd.to_numeric(frame[feature], errors="coerce").to_numpy(dtype=float)
        ok = x[np.isfinite(x)]
        e, a, atoms = _card_bins(x, summary, feature)
        psi = float(psi_from_proportions(e, a))
        cols = opts.columns(psi, e, x.size, summary.get("n"), quantile, f"psi:{where}:{feature}")
        miss = float(np.mean(~np.isfinite(x)))
        change = miss - float(summary.get("missing_fraction", 0.0))
        std = float(summary.get("std", np.nan))
        mean = float(summary.get("mean", np.nan))
        flag = abs(change) >= opts.missing_rate_change
        rows.append(
            {
                "feature": feature,
                "kind": "numeric",
                "status": STATUS_OK if ok.size else STATUS_INSUFFICIENT,
                "n": int(x.size),
                "missing_rate": miss,
                "card_missing_rate": float(summary.get("missing_fraction", np.nan)),
                "missing_rate_change": change,
                "median": float(np.median(ok)) if ok.size else np.nan,
                "card_median": _card_median(summary, feature),
                "smd": (float(ok.mean()) - mean) / std if ok.size and std > 0 else np.nan,
                **cols,
                "missing_flag": bool(flag),
                "drifted": bool(cols["psi_level"] != "none" or flag),
                "card_atoms": atoms,
            }
        )
    return rows


def _composition_rows(
    frame: pd.DataFrame,
    composition: Mapping[str, Mapping[str, float]],
    n_card: Any,
    opts: _Flagging,
    noise: tuple[float, str],
) -> list[dict[str, Any]]:
    quantile, where = noise
    rows = []
    for attribute, shares in composition.items():
        if attribute not in frame.columns:
            continue
        local = frame[attribute].astype(str).value_counts(normalize=True)
        cats = sorted(set(local.index) | set(map(str, shares)))
        expected = np.array([float(shares.get(c, 0.0)) for c in cats])
        actual = local.reindex(cats, fill_value=0.0).to_numpy(dtype=float)
        psi = float(psi_from_proportions(expected, actual, 1e-4))
        key = f"psi:{where}:{attribute}"
        cols = opts.columns(psi, expected, len(frame), n_card, quantile, key)
        rows.append(
            {
                "feature": attribute,
                "kind": "composition",
                "status": STATUS_OK,
                "n": len(frame),
                **cols,
                "missing_flag": False,
                "drifted": cols["psi_level"] != "none",
                "card_atoms": False,
            }
        )
    return rows


def card_drift(
    stays: pd.DataFrame,
    training_data: Mapping[str, Any],
    *,
    features: Sequence[str],
    scopes: Sequence[str] = (),
    psi_moderate: float = 0.1,
    psi_major: float = 0.25,
    missing_rate_change: float = 0.1,
    min_rows: int = 30,
    psi_noise_draws: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Drift of the stays (all, and each group of each scope column) against a card's summary.

    Parameters
    ----------
    stays : pandas.DataFrame
        Local stays with the feature columns (NaN = not measured) and the scope columns.
    training_data : mapping
        The card's ``training_data``: ``features`` (name -> ``quantiles``, ``missing_fraction``,
        ``mean``, ``std``) and optionally ``groups`` (attribute -> category -> share).
    features : sequence of str, keyword-only
        Features to compare (each must be in the summary).
    scopes : sequence of str, keyword-only
        Columns whose groups are also compared one by one (``hospital``, ``race_ethnicity``).
    psi_moderate, psi_major : float, keyword-only
        PSI cut-offs of the levels ``"moderate"`` / ``"major"`` (>=); a level counts only when the
        PSI also exceeds its noise bound.
    missing_rate_change : float, keyword-only
        Absolute change of the missing rate that flags a feature (``missing_flag``).
    min_rows : int, keyword-only
        Groups with fewer stays get status ``"insufficient data"`` and no PSI.
    psi_noise_draws : int, keyword-only
        Parametric-bootstrap draws of each row's PSI noise bound.
    alpha : float, keyword-only
        Chance that a (scope, group) without drift gets any PSI level (Bonferroni over its rows:
        the noise bound is the ``1 - alpha / m`` quantile).
    seed : int, keyword-only
        Seed of the noise bounds (one stream per scope, group and feature).

    Returns
    -------
    pandas.DataFrame
        :class:`CardDrift` (columns :data:`DRIFT_COLUMNS`), first ``scope="network"``
        (``group="all"``), then each scope's groups in sorted order; composition rows for
        ``network`` and the first scope. ``psi_noise_bound``: the PSI that sampling noise alone
        reaches at the sizes. ``drifted``: PSI level not ``"none"`` or ``missing_flag``.

    Raises
    ------
    AuditInputError
        If a feature or scope column is absent, or the summary lacks a feature's quantiles.
    """
    card = training_data.get("features") if isinstance(training_data, Mapping) else None
    absent = [f for f in features if not isinstance(card, Mapping) or f not in card]
    absent += [f for f in (*features, *scopes) if f not in stays.columns]
    if absent:
        raise AuditInputError(
            "features/scopes",
            f"{sorted(set(absent))} missing from the stays or from training_data['features']",
            "every feature in both, every scope a column of the stays",
            "pass the model card of the audited model and the validated stays table",
        )
    if not 0.0 < alpha < 1.0:
        raise AuditInputError("alpha", repr(alpha), "a float in (0, 1)", "e.g. 0.05")
    opts = _Flagging(psi_moderate, psi_major, missing_rate_change, psi_noise_draws, alpha, seed)
    composition = training_data.get("groups") or {}
    parts = [("network", "all", stays, True)]
    for k, scope in enumerate(scopes):
        for group, frame in stays.groupby(scope, sort=True):
            parts.append((scope, str(group), frame, k == 0))
    rows = []
    for scope, group, frame, with_composition in parts:
        if len(frame) < min_rows:
            found = [
                {"feature": f, "kind": "numeric", "status": STATUS_INSUFFICIENT, "n": len(frame),
                 "psi_level": "not estimable", "missing_flag": False, "drifted": False}
                for f in features
            ]  # fmt: skip
            rows += [{"scope": scope, "group": group, **r} for r in found]
            continue
        m = len(features) + (
            sum(a in frame.columns for a in composition) if with_composition else 0
        )
        noise = (1.0 - alpha / max(m, 1), f"{scope}:{group}")
        found = _numeric_rows(frame, features, card, opts, noise)  # type: ignore[arg-type]
        if with_composition:
            found += _composition_rows(
                frame, composition, training_data.get("n_stays"), opts, noise
            )
        rows += [{"scope": scope, "group": group, **r} for r in found]
    table = pd.DataFrame(rows).reindex(columns=list(DRIFT_COLUMNS)).reset_index(drop=True)
    return validate_table(table, CardDrift)
