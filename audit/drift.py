"""Distribution drift of each group (site) against a reference sample, per feature and jointly.

Numeric features: PSI, two-sample Kolmogorov-Smirnov (asymptotic p-value, exactly
``scipy.stats.ks_2samp(method="asymp")``), Wasserstein-1 divided by the reference standard deviation
(``ddof=1``), and the standardized mean difference
``(mean - mean_ref) / sqrt((var + var_ref) / 2)``.
Categorical features: chi-square test of homogeneity on the 2 x k table
(``scipy.stats.chi2_contingency``, no Yates correction), Cramer's V as effect size, and PSI on the
category frequencies. Multivariate: MMD^2 (unbiased) with a Gaussian kernel on the numeric features
standardized by the reference mean/std, bandwidth by the median heuristic on the pooled sample,
and a permutation test whose permutations all come from one kernel matrix (``K @ P.T``).

PSI: ``sum_i (a_i - e_i) ln(a_i / e_i)`` with ``e`` the reference and ``a`` the group proportions.
Numeric bins have interior edges at the reference quantiles ``1/k, ..., (k-1)/k`` (duplicates
removed), bin ``i`` = ``(e_{i-1}, e_i]``, open-ended at both ends. An empty bin's proportion is
replaced by ``DriftConfig.psi_epsilon`` (default 1e-4) before the logarithm, so PSI stays finite;
proportions are not renormalised afterwards.

Missing values: numeric ``NaN`` rows are dropped per feature (counted in ``n_missing``); a missing
categorical value is its own category ``"<missing>"``. The MMD uses rows complete on all numeric
features and, to stay fast, a random subsample of at most ``mmd_max_rows`` rows from each side.

Multiplicity: the per-feature p-values (KS, chi-square) of all (group, feature) rows form one
family, and the MMD p-values of all groups another; each is Holm/BH-adjusted
(``DriftConfig.p_adjust``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

from .bootstrap import derive_rng
from .multiplicity import P_ADJUST_METHODS, PAdjust, adjust_pvalues
from .types import (
    ALL_GROUP,
    STATUS_INSUFFICIENT,
    STATUS_OK,
    AuditInputError,
    as_1d,
    check_option,
    check_positive_int,
)

MISSING_CATEGORY = "<missing>"


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and options of the drift audit (defaults live here only).

    Attributes
    ----------
    psi_bins : int
        Quantile bins of the reference for numeric PSI.
    psi_epsilon : float
        Proportion substituted for empty bins in PSI.
    psi_moderate, psi_major : float
        PSI levels reported as ``"moderate"`` (>=) and ``"major"`` (>=).
    alpha : float
        Significance level applied to the adjusted p-values.
    p_adjust : {"holm", "bh", "none"}
        Multiplicity adjustment: across all (group, feature) tests, and across the groups' MMD
        tests (two families).
    n_perm : int
        MMD permutations.
    mmd_max_rows : int
        Rows per side used by the MMD test (random subsample beyond this).
    min_rows : int
        Non-missing rows needed on each side to test a feature.
    seed : int
        Seed of the MMD subsampling and permutations (per group stream).
    """

    psi_bins: int = 10
    psi_epsilon: float = 1e-4
    psi_moderate: float = 0.1
    psi_major: float = 0.25
    alpha: float = 0.05
    p_adjust: PAdjust = "holm"
    n_perm: int = 1000
    mmd_max_rows: int = 500
    min_rows: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int("psi_bins", self.psi_bins, minimum=2)
        check_positive_int("n_perm", self.n_perm)
        check_positive_int("mmd_max_rows", self.mmd_max_rows, minimum=2)
        check_positive_int("min_rows", self.min_rows, minimum=2)
        check_option("p_adjust", self.p_adjust, P_ADJUST_METHODS)
        if not 0.0 < self.psi_epsilon < 1.0:
            raise AuditInputError(
                "psi_epsilon", repr(self.psi_epsilon), "a float in (0, 1)", "e.g. 1e-4"
            )
        if not 0.0 < self.psi_moderate < self.psi_major:
            raise AuditInputError(
                "psi_moderate/psi_major",
                f"{self.psi_moderate}/{self.psi_major}",
                "0 < psi_moderate < psi_major",
                "e.g. 0.1 and 0.25",
            )
        if not 0.0 < self.alpha < 1.0:
            raise AuditInputError("alpha", repr(self.alpha), "a float in (0, 1)", "e.g. 0.05")


def _psi_from_props(expected: np.ndarray, actual: np.ndarray, epsilon: float) -> float:
    e = np.where(expected > 0, expected, epsilon)
    a = np.where(actual > 0, actual, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def population_stability_index(
    reference: np.ndarray, sample: np.ndarray, *, n_bins: int = 10, epsilon: float = 1e-4
) -> float:
    """PSI of a numeric sample against a reference, bins from reference quantiles.

    Bins are ``(-inf, q_1], (q_1, q_2], ..., (q_last, inf)``. When the reference's minimum is
    itself a bin edge (a point mass at the minimum, e.g. a site's fixed pixel spacing), sample
    values below that minimum get a bin of their own (the reference has none there: ``epsilon``);
    otherwise a sample entirely below a constant reference would share its bin and score PSI 0.
    Values above a point mass at the maximum already fall in the empty top bin.

    Parameters
    ----------
    reference, sample : array-like of shape (n_ref,), (n,)
        Finite values.
    n_bins : int, keyword-only
        Quantile bins of the reference (fewer when quantiles coincide).
    epsilon : float, keyword-only
        Proportion used for empty bins.

    Returns
    -------
    float

    Examples
    --------
    >>> x = np.arange(100.0)
    >>> population_stability_index(x, x)
    0.0
    """
    ref = np.asarray(reference, float)
    smp = np.asarray(sample, float)
    inner = np.unique(np.quantile(ref, np.arange(1, n_bins) / n_bins))
    lo = ref.min()
    split_below = inner.size > 0 and inner[0] == lo
    k = inner.size + 1 + int(split_below)

    def bins(x: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(inner, x, side="left")
        return np.where(x < lo, inner.size + 1, idx) if split_below else idx

    e = np.bincount(bins(ref), minlength=k) / ref.size
    a = np.bincount(bins(smp), minlength=k) / smp.size
    return _psi_from_props(e, a, epsilon)


@dataclass(frozen=True)
class MMDResult:
    """Result of :func:`mmd_permutation_test`."""

    mmd2: float
    p_value: float
    bandwidth: float
    n_x: int
    n_y: int
    n_perm: int


def permutation_indicators(n_x: int, n_y: int, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """0/1 matrix ``(n_perm, n_x + n_y)``: row ``r`` marks the "x" rows of permutation ``r``.

    Examples
    --------
    >>> p = permutation_indicators(2, 3, 4, np.random.default_rng(0))
    >>> p.shape, p.sum(axis=1).tolist()
    ((4, 5), [2.0, 2.0, 2.0, 2.0])
    """
    base = np.concatenate([np.ones(n_x), np.zeros(n_y)])
    return rng.permuted(np.tile(base, (n_perm, 1)), axis=1)


def _mmd2_many(
    kernel: np.ndarray, row_sums: np.ndarray, total: float, ind: np.ndarray, n_x: int
) -> np.ndarray:
    """Unbiased MMD^2 for each indicator row of ``ind`` (Gaussian kernel: diagonal of ones)."""
    n_y = kernel.shape[0] - n_x
    k_a = kernel @ ind.T  # (N, n_perm): the only O(N^2 n_perm) step
    a_k_a = np.einsum("ij,ji->i", ind, k_a)
    a_r = ind @ row_sums
    a_k_b = a_r - a_k_a
    b_k_b = total - 2.0 * a_r + a_k_a
    return (
        (a_k_a - n_x) / (n_x * (n_x - 1))
        + (b_k_b - n_y) / (n_y * (n_y - 1))
        - 2.0 * a_k_b / (n_x * n_y)
    )


def gaussian_kernel_median(pooled: np.ndarray) -> tuple[np.ndarray, float]:
    """Gaussian kernel matrix ``exp(-d^2 / (2 s^2))`` with ``s`` = median pairwise distance.

    Zero distances are left out of the median; when every distance is zero, ``s = 1``.
    """
    sq = np.sum(pooled * pooled, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (pooled @ pooled.T), 0.0)
    np.fill_diagonal(d2, 0.0)
    upper = d2[np.triu_indices(d2.shape[0], k=1)]
    upper = upper[upper > 0]
    bandwidth = float(np.sqrt(np.median(upper))) if upper.size else 1.0
    return np.exp(-d2 / (2.0 * bandwidth * bandwidth)), bandwidth


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, *, n_perm: int = 1000, rng: np.random.Generator
) -> MMDResult:
    """Permutation test of equal distributions with the unbiased MMD^2 (Gaussian kernel).

    Parameters
    ----------
    x : ndarray of shape (n_x, d)
        Sample (e.g. a site), already standardized.
    y : ndarray of shape (n_y, d)
        Reference sample, same columns.
    n_perm : int, keyword-only
        Permutations.
    rng : numpy.random.Generator, keyword-only
        Source of the permutations (:func:`permutation_indicators`).

    Returns
    -------
    MMDResult
        ``p_value = (1 + #{perm >= observed}) / (1 + n_perm)``.

    Examples
    --------
    >>> g = np.random.default_rng(0)
    >>> r = mmd_permutation_test(g.normal(size=(30, 2)), g.normal(2, 1, size=(30, 2)), n_perm=99,
    ...                          rng=np.random.default_rng(1))
    >>> r.p_value
    0.01
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise AuditInputError(
            "x, y",
            f"shapes {x.shape} and {y.shape}",
            "2-D arrays with the same columns",
            "pass (rows, features) arrays",
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise AuditInputError(
            "x, y", f"{x.shape[0]} and {y.shape[0]} rows", "at least 2 rows each", "add rows"
        )
    n_perm = check_positive_int("n_perm", n_perm)
    n_x = x.shape[0]
    kernel, bandwidth = gaussian_kernel_median(np.vstack([x, y]))
    row_sums = kernel.sum(axis=1)
    total = float(row_sums.sum())
    observed_ind = np.concatenate([np.ones(n_x), np.zeros(y.shape[0])])[None, :]
    observed = float(_mmd2_many(kernel, row_sums, total, observed_ind, n_x)[0])
    perms = permutation_indicators(n_x, y.shape[0], n_perm, rng)
    stats = _mmd2_many(kernel, row_sums, total, perms, n_x)
    p = (1.0 + float(np.sum(stats >= observed))) / (1.0 + n_perm)
    return MMDResult(observed, p, bandwidth, n_x, int(y.shape[0]), n_perm)


_COLUMNS: tuple[str, ...] = (
    "group",
    "feature",
    "kind",
    "test",
    "status",
    "n",
    "n_reference",
    "n_missing",
    "psi",
    "psi_level",
    "statistic",
    "p_value",
    "p_adj",
    "significant",
    "wasserstein_norm",
    "smd",
    "cramers_v",
    "mean",
    "reference_mean",
    "mmd_bandwidth",
    "drifted",
)


def _psi_level(psi: float, config: DriftConfig) -> str:
    if not np.isfinite(psi):
        return "n/a"
    if psi >= config.psi_major:
        return "major"
    return "moderate" if psi >= config.psi_moderate else "none"


def _numeric_row(site: np.ndarray, ref: np.ndarray, config: DriftConfig) -> dict[str, Any]:
    ks = ks_2samp(site, ref, method="asymp")
    ref_sd = float(np.std(ref, ddof=1))
    pooled_sd = float(np.sqrt((np.var(site, ddof=1) + np.var(ref, ddof=1)) / 2.0))
    diff = float(np.mean(site) - np.mean(ref))
    return dict(
        test="ks",
        psi=population_stability_index(
            ref, site, n_bins=config.psi_bins, epsilon=config.psi_epsilon
        ),
        statistic=float(ks.statistic),
        p_value=float(ks.pvalue),
        wasserstein_norm=float(wasserstein_distance(site, ref)) / ref_sd if ref_sd > 0 else np.nan,
        smd=diff / pooled_sd if pooled_sd > 0 else (0.0 if diff == 0 else np.nan),
        mean=float(np.mean(site)),
        reference_mean=float(np.mean(ref)),
    )


def _categorical_row(site: np.ndarray, ref: np.ndarray, config: DriftConfig) -> dict[str, Any]:
    cats = sorted(set(site.tolist()) | set(ref.tolist()))
    site_counts = pd.Series(site).value_counts().reindex(cats, fill_value=0).to_numpy(float)
    ref_counts = pd.Series(ref).value_counts().reindex(cats, fill_value=0).to_numpy(float)
    table = np.vstack([site_counts, ref_counts])
    res = chi2_contingency(table, correction=False)
    n_total = table.sum()
    return dict(
        test="chi2",
        psi=_psi_from_props(ref_counts / ref.size, site_counts / site.size, config.psi_epsilon),
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        cramers_v=float(np.sqrt(res.statistic / n_total)) if len(cats) > 1 else 0.0,
    )


def _as_categorical(values: pd.Series) -> np.ndarray:
    return np.array(
        [MISSING_CATEGORY if pd.isna(v) else str(v) for v in values.to_numpy()], dtype=object
    )


def drift_table(
    data: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    groups: str | Sequence[Any] | np.ndarray | None = None,
    numeric: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    config: DriftConfig | None = None,
) -> pd.DataFrame:
    """Drift of each group of ``data`` against ``reference``: one row per (group, feature) + MMD.

    Parameters
    ----------
    data : pandas.DataFrame
        Rows to audit (e.g. all sites), one column per feature (a model's score is just another
        numeric column).
    reference : pandas.DataFrame
        Reference sample with the same feature columns.
    groups : str or array-like of shape (n,), optional, keyword-only
        A column of ``data`` or one group label per row; default one group ``"all"``.
    numeric, categorical : sequence of str, optional, keyword-only
        Feature columns. When both are omitted, numeric dtypes are numeric, the other columns
        (except the group column) categorical.
    config : DriftConfig, optional, keyword-only
        Thresholds and options (defaults: ``DriftConfig()``).

    Returns
    -------
    pandas.DataFrame
        Columns ``_COLUMNS``; ``kind`` is ``"numeric"``, ``"categorical"`` or ``"multivariate"``
        (feature ``"__mmd__"``). ``drifted`` is true when the PSI level is not ``"none"`` or the
        adjusted p-value is below ``alpha``. Sorted by group, then features in the given order,
        the MMD row last.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ref = pd.DataFrame({"x": rng.normal(size=200)})
    >>> new = pd.DataFrame({"x": rng.normal(1.0, 1.0, size=100), "site": "a"})
    >>> t = drift_table(new, ref, groups="site", config=DriftConfig(n_perm=99))
    >>> t[["feature", "psi_level", "drifted"]].values.tolist()
    [['x', 'major', True], ['__mmd__', 'n/a', True]]
    """
    config = DriftConfig() if config is None else config
    if not isinstance(data, pd.DataFrame) or not isinstance(reference, pd.DataFrame):
        raise AuditInputError(
            "data/reference",
            f"{type(data).__name__} and {type(reference).__name__}",
            "two pandas DataFrames",
            "wrap the feature arrays in DataFrames with named columns",
        )
    group_col = groups if isinstance(groups, str) else None
    if group_col is not None and group_col not in data.columns:
        raise AuditInputError(
            "groups", repr(group_col), f"a column of data {list(data.columns)}", "fix the name"
        )
    if groups is None:
        group_arr = np.full(len(data), ALL_GROUP, dtype=object)
    elif group_col is not None:
        group_arr = np.array([str(g) for g in as_1d("groups", data[group_col], len(data))])
    else:
        group_arr = np.array([str(g) for g in as_1d("groups", groups, len(data))])
    if numeric is None and categorical is None:
        feats = [c for c in data.columns if c != group_col]
        numeric = [
            c
            for c in feats
            if pd.api.types.is_numeric_dtype(data[c]) and not pd.api.types.is_bool_dtype(data[c])
        ]
        categorical = [c for c in feats if c not in numeric]
    numeric = list(numeric or [])
    categorical = list(categorical or [])
    for col in numeric + categorical:
        for name, frame in (("data", data), ("reference", reference)):
            if col not in frame.columns:
                raise AuditInputError(
                    name,
                    f"columns {list(frame.columns)}",
                    f"a column {col!r}",
                    "pass the same feature columns in data and reference",
                )
    for col in numeric:
        for name, frame in (("data", data), ("reference", reference)):
            if not pd.api.types.is_numeric_dtype(frame[col]):
                raise AuditInputError(
                    name,
                    f"column {col!r} of dtype {frame[col].dtype}",
                    "a numeric column",
                    f"convert {col!r} to numbers or list it under categorical=",
                )
            vals = frame[col].to_numpy(float)
            if np.isinf(vals).any():
                raise AuditInputError(
                    name,
                    f"an infinite value in column {col!r} at row "
                    f"{int(np.flatnonzero(np.isinf(vals))[0])}",
                    "finite values or NaN (missing)",
                    "replace infinities",
                )
    rows: list[dict[str, Any]] = []
    ref_num = {c: reference[c].to_numpy(float) for c in numeric}
    ref_cat = {c: _as_categorical(reference[c]) for c in categorical}
    for g in sorted(set(group_arr.tolist())):
        mask = group_arr == g
        part = data.loc[mask]
        for col in numeric:
            site = part[col].to_numpy(float)
            ok_site, ok_ref = site[~np.isnan(site)], ref_num[col][~np.isnan(ref_num[col])]
            row: dict[str, Any] = {c: np.nan for c in _COLUMNS}
            row.update(
                group=g,
                feature=col,
                kind="numeric",
                test="ks",
                n=ok_site.size,
                n_reference=ok_ref.size,
                n_missing=int(site.size - ok_site.size),
            )
            if min(ok_site.size, ok_ref.size) >= config.min_rows:
                row.update(_numeric_row(ok_site, ok_ref, config), status=STATUS_OK)
            else:
                row["status"] = STATUS_INSUFFICIENT
            rows.append(row)
        for col in categorical:
            site = _as_categorical(part[col])
            row = {c: np.nan for c in _COLUMNS}
            row.update(
                group=g,
                feature=col,
                kind="categorical",
                test="chi2",
                n=site.size,
                n_reference=ref_cat[col].size,
                n_missing=int(np.sum(site == MISSING_CATEGORY)),
            )
            if min(site.size, ref_cat[col].size) >= config.min_rows:
                row.update(_categorical_row(site, ref_cat[col], config), status=STATUS_OK)
            else:
                row["status"] = STATUS_INSUFFICIENT
            rows.append(row)
        if numeric:
            rows.append(_mmd_row(g, part, reference, numeric, config))
    table = pd.DataFrame(rows, columns=list(_COLUMNS))
    # Two families: the per-feature tests across all (group, feature), and the MMD tests across
    # groups (one joint test per group; its permutation p-value cannot go below 1 / (1 + n_perm),
    # so pooling it with dozens of feature tests would make it unable to ever reject).
    p_adj = np.full(len(table), np.nan)
    for family in (table["kind"] != "multivariate", table["kind"] == "multivariate"):
        idx = np.flatnonzero(family.to_numpy())
        p_adj[idx] = adjust_pvalues(table["p_value"].to_numpy(float)[idx], method=config.p_adjust)
    table["p_adj"] = p_adj
    table["significant"] = table["p_adj"] < config.alpha
    table["psi_level"] = [_psi_level(v, config) for v in table["psi"].to_numpy(float)]
    table["drifted"] = table["significant"] | table["psi_level"].isin(["moderate", "major"])
    return table.astype({"n": "int64", "n_reference": "int64", "n_missing": "int64"})


def _mmd_row(
    group: str,
    part: pd.DataFrame,
    reference: pd.DataFrame,
    numeric: list[str],
    config: DriftConfig,
) -> dict[str, Any]:
    site = part[numeric].to_numpy(float)
    ref = reference[numeric].to_numpy(float)
    site = site[~np.isnan(site).any(axis=1)]
    ref = ref[~np.isnan(ref).any(axis=1)]
    row: dict[str, Any] = {c: np.nan for c in _COLUMNS}
    row.update(
        group=group,
        feature="__mmd__",
        kind="multivariate",
        test="mmd",
        n=site.shape[0],
        n_reference=ref.shape[0],
        n_missing=int(len(part) - site.shape[0]),
    )
    if min(site.shape[0], ref.shape[0]) < config.min_rows:
        row["status"] = STATUS_INSUFFICIENT
        return row
    mean = ref.mean(axis=0)
    sd = ref.std(axis=0, ddof=1)
    sd = np.where(sd > 0, sd, 1.0)
    rng = derive_rng(config.seed, f"mmd:{group}")
    if site.shape[0] > config.mmd_max_rows:
        site = site[np.sort(rng.choice(site.shape[0], config.mmd_max_rows, replace=False))]
    if ref.shape[0] > config.mmd_max_rows:
        ref = ref[np.sort(rng.choice(ref.shape[0], config.mmd_max_rows, replace=False))]
    res = mmd_permutation_test((site - mean) / sd, (ref - mean) / sd, n_perm=config.n_perm, rng=rng)
    row.update(
        status=STATUS_OK, statistic=res.mmd2, p_value=res.p_value, mmd_bandwidth=res.bandwidth
    )
    return row
