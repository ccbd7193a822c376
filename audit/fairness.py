"""Subgroup fairness at an operating threshold: per-group rates and gaps with paired bootstrap CIs.

For every attribute (any grouping: sex, race/ethnicity, age band, site, skin tone, ...) and every
group, :func:`group_rates` reports ``n``, ``n_pos``, prevalence, TPR (sensitivity), FPR, PPV,
selection rate (alert rate) at ``score >= threshold``, and AUROC / AUPRC (computed by
:func:`clinaudit.audit.discrimination.weighted_binary_metrics`), with percentile intervals from a
clustered bootstrap. Intersectional cells (e.g. ``sex x race``) get the same metrics.

Pairing
-------
One bootstrap over *all* clusters (patients) of the cohort drives every cell: replicate ``b``
reweights every row by its patient's draw count, so all groups, attributes and intersections of
one replicate come from the same resample. Gap replicates (``max - min`` over groups, or group minus
reference group) are therefore paired, and a patient whose stays fall in several groups (e.g. two
age bands) stays one resampling unit. Group sizes vary between replicates, as they would between
samples of the same population.

Threshold metrics are ratios of per-cell sums (rows, positives, alerts, true alerts) that are linear
in the weights, so all replicates of all cells come from one sparse product
(:func:`clinaudit.audit.bootstrap.segment_matrix`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np
import pandas as pd

from .bootstrap import DEFAULT_CHUNK_SIZE, percentile_ci
from .burden import (
    BinaryData,
    GroupCell,
    build_cells,
    spread,
    threshold_rule_rates,
    validate_binary,
)
from .discrimination import weighted_binary_metrics
from .fairness_schema import GAP_METRICS, FairnessGaps, FairnessRates
from .schemas import validate_table
from .types import (
    STATUS_INSUFFICIENT,
    STATUS_OK,
    AuditInputError,
    check_ci_level,
    check_positive_int,
)

__all__ = [
    "GAP_METRICS",
    "RATE_METRICS",
    "FairnessGaps",
    "FairnessRates",
    "FairnessResult",
    "group_rates",
]

RATE_METRICS: tuple[str, ...] = (
    "prevalence",
    "tpr",
    "fpr",
    "ppv",
    "selection_rate",
    "auroc",
    "auprc",
)


def _intersection_sets(
    intersections: Sequence[Sequence[str]] | Literal["pairs"] | None, names: Sequence[str]
) -> list[tuple[str, ...]]:
    if intersections is None:
        return []
    if isinstance(intersections, str):
        if intersections != "pairs":
            raise AuditInputError(
                "intersections",
                repr(intersections),
                "'pairs', None, or a list of attribute tuples",
                "pass intersections='pairs' or e.g. [('sex', 'race')]",
            )
        return list(combinations(names, 2))
    out = []
    for combo in intersections:
        combo_t = tuple(combo) if not isinstance(combo, str) else (combo,)
        unknown = [a for a in combo_t if a not in names]
        if unknown or len(combo_t) < 2 or len(set(combo_t)) != len(combo_t):
            raise AuditInputError(
                "intersections",
                repr(combo),
                f"two or more distinct attributes among {list(names)}",
                "name attributes present in groups",
            )
        out.append(combo_t)
    return out


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class FairnessResult:
    """Per-group rates and gaps of :func:`group_rates`.

    Attributes
    ----------
    rates : pandas.DataFrame
        :class:`FairnessRates`: one row per (attribute, group); the first row is the whole cohort
        (``attribute="overall"``, ``group="all"``). Columns: ``attribute``, ``group``,
        ``is_intersection``, ``is_reference``, ``status``, ``n``, ``n_pos``, ``n_neg``,
        ``n_clusters``, ``threshold``, then for each of ``RATE_METRICS`` the value and
        ``*_ci_low``/``*_ci_high``, then ``n_boot``, ``n_boot_valid``, ``ci_level``.
    gaps : pandas.DataFrame
        :class:`FairnessGaps`: one row per (attribute, metric, comparison), metrics
        ``GAP_METRICS``.
        ``comparison="max_min"``: ``difference`` = highest minus lowest group (``group`` =
        highest, ``versus`` = lowest; equals fairlearn's ``MetricFrame.difference()``);
        ``comparison="vs_reference"``: ``difference`` = ``group`` minus the reference group
        (``versus``). ``ci_low``/``ci_high``: paired percentile interval of that two-group
        difference; ``ci_excludes_zero``: the interval excludes 0 (a p < 1 - ci_level flag);
        ``ci_excludes_zero_adjusted``: the same with a Bonferroni-adjusted level over
        ``n_comparisons`` (all group pairs for ``max_min``, whose pair was chosen by the data;
        the non-reference groups for ``vs_reference``). ``spread_ci_low``/``spread_ci_high``
        (``max_min`` only): interval of the max-min statistic itself (biased upward, never
        below 0). Also ``n_groups``, ``status`` and ``n_boot_valid``.
    reference : dict of str to str
        Reference group per attribute (given, else the largest group).
    replicates : dict
        ``replicates[(attribute, group)][metric]`` = bootstrap replicates of "ok" cells.
    """

    rates: pd.DataFrame
    gaps: pd.DataFrame
    reference: dict[str, str]
    threshold: float
    n_boot: int
    ci_level: float
    seed: int
    replicates: dict[tuple[str, str], dict[str, np.ndarray]] = field(repr=False)

    def largest_gap(
        self,
        metrics: Sequence[str] = ("tpr", "fpr"),
        *,
        attribute: str | None = None,
        include_intersections: bool = False,
    ) -> pd.Series | None:
        """The ``max_min`` gap row with the largest difference among ``metrics`` (or None).

        Ties go to the first row (attributes in the order given, metrics in ``GAP_METRICS``).
        """
        g = self.gaps
        keep = (g["comparison"] == "max_min") & (g["status"] == STATUS_OK)
        keep &= g["metric"].isin(list(metrics)) & g["difference"].notna()
        if attribute is not None:
            keep &= g["attribute"] == attribute
        if not include_intersections:
            keep &= ~g["is_intersection"]
        if not keep.any():
            return None
        return g.loc[g.loc[keep, "difference"].idxmax()]


# --------------------------------------------------------------------------- group_rates
def _resolve_reference(
    reference: Mapping[str, Hashable] | None, cells: Sequence[GroupCell]
) -> dict[str, str]:
    by_attr: dict[str, dict[str, int]] = {}
    for cell in cells[1:]:
        by_attr.setdefault(cell.attribute, {})[cell.group] = cell.rows.size
    out = {a: max(sorted(sizes), key=lambda g: sizes[g]) for a, sizes in by_attr.items()}
    if reference is not None and not isinstance(reference, Mapping):
        raise AuditInputError(
            "reference",
            type(reference).__name__,
            "a mapping attribute -> group label",
            "pass e.g. reference={'race': 'White'}",
        )
    for attr, group in (reference or {}).items():
        if attr not in by_attr:
            raise AuditInputError(
                "reference",
                f"attribute {attr!r}",
                f"one of {list(by_attr)}",
                "name an attribute of groups (or an intersection such as 'sex x race')",
            )
        if str(group) not in by_attr[attr]:
            raise AuditInputError(
                "reference",
                f"group {group!r} for attribute {attr!r}",
                f"one of {sorted(by_attr[attr])}",
                "fix the reference group label (labels are compared as strings)",
            )
        out[attr] = str(group)
    return out


def _point_and_replicates(
    data: BinaryData, cells: list[GroupCell], ok: np.ndarray, n_boot: int, seed: int, chunk: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Point values ``(n_cells,)`` and replicates ``(n_cells, n_boot)`` of ``RATE_METRICS``."""
    plans = []
    for c in np.flatnonzero(ok):
        rows = cells[c].rows
        cl = data.clusters[rows]
        plans.append((c, data.y[rows], data.score[rows], cl, pd.unique(cl)))
    ranking = {m: np.full((len(cells), n_boot + 1), np.nan) for m in ("auroc", "auprc")}

    def rank_metrics(counts: np.ndarray, start: int, stop: int) -> None:
        for c, y, s, cl, uniq in plans:
            w = counts[uniq].T
            m = weighted_binary_metrics(y, s, w, clusters=cl, threshold=data.threshold)
            ranking["auroc"][c, start:stop] = m["auroc"]
            ranking["auprc"][c, start:stop] = m["auprc"]

    rank_metrics(np.ones((data.n_clusters, 1)), n_boot, n_boot + 1)  # point estimate: last column
    point, reps, _ = threshold_rule_rates(
        data, cells, n_boot=n_boot, seed=seed, chunk_size=chunk, on_chunk=rank_metrics
    )
    for m, values in ranking.items():
        point[m], reps[m] = values[:, n_boot], values[:, :n_boot]
    return point, reps


def _rates_table(
    cells: list[GroupCell],
    data: BinaryData,
    point: dict[str, np.ndarray],
    reps: dict[str, np.ndarray],
    ok: np.ndarray,
    reference: dict[str, str],
    n_boot: int,
    ci_level: float,
) -> pd.DataFrame:
    rows = []
    for c, cell in enumerate(cells):
        y = data.y[cell.rows]
        row: dict[str, Any] = {
            "attribute": cell.attribute,
            "group": cell.group,
            "is_intersection": cell.is_intersection,
            "is_reference": reference.get(cell.attribute) == cell.group,
            "status": STATUS_OK if ok[c] else STATUS_INSUFFICIENT,
            "n": int(cell.rows.size),
            "n_pos": int(y.sum()),
            "n_neg": int(cell.rows.size - y.sum()),
            "n_clusters": int(np.unique(data.clusters[cell.rows]).size),
            "threshold": data.threshold,
        }
        for m in RATE_METRICS:
            keep = ok[c] or m == "prevalence"
            row[m] = float(point[m][c]) if keep else np.nan
            lo, hi = percentile_ci(reps[m][c], ci_level) if ok[c] and n_boot else (np.nan,) * 2
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = lo, hi
        valid = [np.isfinite(reps[m][c]).sum() for m in RATE_METRICS] if ok[c] else [0]
        row.update(n_boot=n_boot, n_boot_valid=int(min(valid)), ci_level=ci_level)
        rows.append(row)
    return pd.DataFrame(rows)


def _gap_row(
    key: tuple[str, bool, str, str],
    group: str,
    versus: str,
    diff: float,
    rep: np.ndarray,
    spread_rep: np.ndarray | None,
    n_groups: int,
    ci_level: float,
    n_comparisons: int,
) -> dict[str, Any]:
    attr, inter, metric, comparison = key
    lo, hi = percentile_ci(rep, ci_level) if rep.size else (np.nan, np.nan)
    adjusted = 1.0 - (1.0 - ci_level) / max(n_comparisons, 1)
    lo_a, hi_a = percentile_ci(rep, adjusted) if rep.size else (np.nan, np.nan)
    s_lo, s_hi = (np.nan, np.nan)
    if spread_rep is not None and spread_rep.size:
        s_lo, s_hi = percentile_ci(spread_rep, ci_level)
    return {
        "attribute": attr,
        "is_intersection": inter,
        "metric": metric,
        "comparison": comparison,
        "group": group,
        "versus": versus,
        "difference": float(diff),
        "ci_low": lo,
        "ci_high": hi,
        "ci_excludes_zero": bool(np.isfinite(lo) and (lo > 0 or hi < 0)),
        "ci_excludes_zero_adjusted": bool(np.isfinite(lo_a) and (lo_a > 0 or hi_a < 0)),
        "n_comparisons": n_comparisons,
        "spread_ci_low": s_lo,
        "spread_ci_high": s_hi,
        "n_groups": n_groups,
        "status": STATUS_OK if np.isfinite(diff) else STATUS_INSUFFICIENT,
        "n_boot_valid": int(np.isfinite(rep).sum()),
    }


def _attribute_gaps(
    cells: list[GroupCell],
    idx: list[int],
    metric: str,
    point: np.ndarray,
    reps: np.ndarray,
    ok: np.ndarray,
    ref_group: str,
    ci_level: float,
) -> list[dict[str, Any]]:
    attr, inter = cells[idx[0]].attribute, cells[idx[0]].is_intersection
    sel = [c for c in idx if ok[c] and np.isfinite(point[c])]
    none = np.full(reps.shape[1], np.nan)
    if len(sel) >= 2:
        hi_c = sel[int(np.argmax(point[sel]))]
        lo_c = sel[int(np.argmin(point[sel]))]
        top = (cells[hi_c].group, cells[lo_c].group, point[hi_c] - point[lo_c])
        rep, spread_rep = reps[hi_c] - reps[lo_c], spread(reps[sel])
    else:
        top, rep, spread_rep = ("", "", np.nan), none, none
    key = (attr, inter, metric, "max_min")
    n_pairs = len(sel) * (len(sel) - 1) // 2
    rows = [_gap_row(key, *top, rep, spread_rep, len(sel), ci_level, n_pairs)]
    ref_c = next((c for c in sel if cells[c].group == ref_group), None)
    key = (attr, inter, metric, "vs_reference")
    n_vs = len(sel) - 1 if ref_c is not None else 0
    for c in idx:
        if cells[c].group == ref_group:
            continue
        both = ref_c is not None and c in sel
        diff = point[c] - point[ref_c] if both else np.nan
        rep = reps[c] - reps[ref_c] if both else none
        n_groups = 2 if both else 0
        rows.append(
            _gap_row(key, cells[c].group, ref_group, diff, rep, None, n_groups, ci_level, n_vs)
        )
    return rows


def _gaps_table(
    cells: list[GroupCell],
    point: dict[str, np.ndarray],
    reps: dict[str, np.ndarray],
    ok: np.ndarray,
    reference: dict[str, str],
    ci_level: float,
) -> pd.DataFrame:
    rows = []
    for attr, ref_group in reference.items():
        idx = [c for c, cell in enumerate(cells) if cell.attribute == attr]
        for m in GAP_METRICS:
            rows += _attribute_gaps(cells, idx, m, point[m], reps[m], ok, ref_group, ci_level)
    return pd.DataFrame(rows)


def group_rates(
    y_true: Any,
    y_score: Any,
    *,
    groups: Mapping[str, Any] | pd.DataFrame,
    threshold: float,
    clusters: Any = None,
    intersections: Sequence[Sequence[str]] | Literal["pairs"] | None = "pairs",
    reference: Mapping[str, Hashable] | None = None,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    min_pos: int = 10,
    min_neg: int = 10,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> FairnessResult:
    """Per-group TPR/FPR/PPV/selection rate/AUROC/AUPRC and group gaps with paired bootstrap CIs.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Labels in ``{0, 1}`` (every row labelled).
    y_score : array-like of shape (n,)
        Probabilities in ``[0, 1]``.
    groups : mapping of str to array-like of shape (n,), or DataFrame, keyword-only
        Attribute name -> group label of each row (e.g. ``{"sex": ..., "race": ...}``).
    threshold : float, keyword-only
        Operating threshold in ``[0, 1]``; ``score >= threshold`` raises an alert.
    clusters : array-like of shape (n,), optional, keyword-only
        Patient id per row (the bootstrap resamples patients); default: each row.
    intersections : "pairs", list of attribute tuples, or None, keyword-only
        Intersectional attributes (``"pairs"``: every pair, named ``"a x b"``, groups ``"u & v"``).
    reference : mapping of str to hashable, optional, keyword-only
        Reference group per attribute; default the largest group (ties: first label).
    n_boot : int, keyword-only
        Bootstrap replicates (0: no intervals).
    ci_level : float, keyword-only
        Interval coverage.
    seed : int, keyword-only
        Seed of the bootstrap (stream ``derive_rng(seed, "fairness")``).
    min_pos, min_neg : int, keyword-only
        Cells with fewer positives / negatives get status ``"insufficient data"``, ``NaN`` metrics
        (counts and prevalence kept) and are left out of the gaps.
    chunk_size : int, keyword-only
        Replicates processed at once (memory only; results do not depend on it).

    Returns
    -------
    FairnessResult

    Raises
    ------
    AuditInputError
        On invalid data, a group array of the wrong length, a threshold outside ``[0, 1]``, an
        unknown attribute or reference group.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 400)
    >>> s = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 400), 0, 1)
    >>> res = group_rates(y, s, groups={"sex": np.repeat(["F", "M"], 200)}, threshold=0.5,
    ...                   n_boot=50)
    >>> res.rates["group"].tolist()
    ['all', 'F', 'M']
    """
    data = validate_binary(
        y_true, y_score, threshold=threshold, groups=groups, clusters=clusters, require_groups=True
    )
    n_boot = check_positive_int("n_boot", n_boot, minimum=0)
    ci_level = check_ci_level(ci_level)
    min_pos = check_positive_int("min_pos", min_pos)
    min_neg = check_positive_int("min_neg", min_neg)
    combos = _intersection_sets(intersections, list(data.attributes))
    cells = build_cells(data.attributes, data.y.size, combos)
    ref = _resolve_reference(reference, cells)
    n_pos = np.array([data.y[c.rows].sum() for c in cells])
    n_neg = np.array([c.rows.size for c in cells]) - n_pos
    ok = (n_pos >= min_pos) & (n_neg >= min_neg)
    point, reps = _point_and_replicates(data, cells, ok, n_boot, seed, chunk_size)
    replicates = {
        (cells[c].attribute, cells[c].group): {m: reps[m][c] for m in RATE_METRICS}
        for c in np.flatnonzero(ok)
    }
    return FairnessResult(
        rates=validate_table(
            _rates_table(cells, data, point, reps, ok, ref, n_boot, ci_level), FairnessRates
        ),
        gaps=validate_table(_gaps_table(cells, point, reps, ok, ref, ci_level), FairnessGaps),
        reference=ref,
        threshold=data.threshold,
        n_boot=n_boot,
        ci_level=ci_level,
        seed=seed,
        replicates=replicates,
    )
