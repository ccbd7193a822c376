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

PSI: ``sum_i (a_i - e_i) ln(a_i / e_i)`` with ``e`` the reference and ``a`` the group proportions
(:mod:`clinaudit.audit.psi`). Numeric bins have interior edges at the reference quantiles
``1/k, ..., (k-1)/k`` (duplicates removed), bin ``i`` = ``(e_{i-1}, e_i]``, open-ended at both
ends. An empty bin's proportion is replaced by ``DriftConfig.psi_epsilon`` (default 1e-4) before
the logarithm, so PSI stays finite; proportions are not renormalised afterwards.

PSI levels are calibrated to sample size. The cut-offs ``psi_moderate`` / ``psi_major`` (0.1 /
0.25) are large-sample rules: two samples of a few hundred rows from one distribution often reach
PSI 0.1 by chance. Each row therefore also carries ``psi_noise_bound``, the ``1 - alpha / m``
quantile of the PSI's null distribution at the row's ``n`` and ``n_reference`` (``m`` = features
tested in the group, so the chance that a clean group gets any PSI level is at most ``alpha``),
from a parametric bootstrap of ``psi_noise_draws`` draws of both sides' counts from the
reference's bin proportions (:func:`~clinaudit.audit.psi.psi_noise_bound`, seeded per
(group, feature) from ``seed``). A level counts only when the PSI reaches the cut-off AND exceeds
the bound; otherwise it is ``"none"`` (the raw ``psi`` stays in the table).

Missing values: numeric ``NaN`` rows are dropped per feature (counted in ``n_missing``); a missing
categorical value is its own category ``"<missing>"``. The MMD uses rows complete on all numeric
features and, to stay fast, a random subsample of at most ``mmd_max_rows`` rows from each side.

Multiplicity: the per-feature p-values (KS, chi-square) of all (group, feature) rows form one
family, and the MMD p-values of all groups another; each is Holm/BH-adjusted
(``DriftConfig.p_adjust``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

from .bootstrap import derive_rng
from .drift_schema import DriftTable
from .mmd import MMDResult, gaussian_kernel_median, mmd_permutation_test, permutation_indicators
from .multiplicity import P_ADJUST_METHODS, PAdjust, adjust_pvalues
from .psi import (
    population_stability_index,
    psi_from_proportions,
    psi_noise_bound,
    quantile_bin_proportions,
)
from .schemas import schema_columns, validate_table
from .types import (
    ALL_GROUP,
    STATUS_INSUFFICIENT,
    STATUS_OK,
    AuditInputError,
    as_1d,
    check_option,
    check_positive_int,
)

__all__ = [
    "MISSING_CATEGORY",
    "DriftConfig",
    "DriftTable",
    "MMDResult",
    "drift_table",
    "gaussian_kernel_median",
    "mmd_permutation_test",
    "permutation_indicators",
    "population_stability_index",
    "psi_noise_bound",
]

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
        PSI cut-offs of the levels ``"moderate"`` (>=) and ``"major"`` (>=); a level counts only
        when the PSI also exceeds its noise bound.
    psi_noise_draws : int
        Parametric-bootstrap draws of the PSI noise bound (its ``1 - alpha / m`` quantile, ``m``
        the features tested in the group, needs ``psi_noise_draws >= m / alpha - 1``).
    alpha : float
        Significance level applied to the adjusted p-values, and the per-group false-alarm rate
        of the PSI levels (Bonferroni over the group's features).
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
    psi_noise_draws: int = 2000
    alpha: float = 0.05
    p_adjust: PAdjust = "holm"
    n_perm: int = 1000
    mmd_max_rows: int = 500
    min_rows: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int("psi_bins", self.psi_bins, minimum=2)
        check_positive_int("n_perm", self.n_perm)
        check_positive_int("psi_noise_draws", self.psi_noise_draws)
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


#: Column order of the table (the schema's).
_COLUMNS: tuple[str, ...] = schema_columns(DriftTable)


def _feature_row(
    identity: tuple[str, str, str, str],
    sizes: tuple[int, int, int],
    config: DriftConfig,
    compute: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """One table row: ``identity`` (group, feature, kind, test), ``sizes`` (n, n_reference,
    n_missing), then ``compute()`` when both sides have ``config.min_rows``."""
    row: dict[str, Any] = {c: np.nan for c in _COLUMNS}
    row.update(zip(("group", "feature", "kind", "test"), identity, strict=True))
    row.update(zip(("n", "n_reference", "n_missing"), sizes, strict=True))
    if min(sizes[0], sizes[1]) >= config.min_rows:
        row.update(compute(), status=STATUS_OK)
    else:
        row["status"] = STATUS_INSUFFICIENT
    return row


def _psi_level(psi: float, bound: float, config: DriftConfig) -> str:
    """Cut-off level of a PSI that exceeds its noise bound; ``"none"`` within the bound."""
    if not np.isfinite(psi):
        return "n/a"
    if not psi > bound:
        return "none"
    if psi >= config.psi_major:
        return "major"
    return "moderate" if psi >= config.psi_moderate else "none"


@dataclass(frozen=True)
class _Noise:
    """What the PSI noise bound of one row needs besides the proportions and sizes."""

    quantile: float
    key: str
    config: DriftConfig

    def columns(self, e: np.ndarray, a: np.ndarray, n: int, n_ref: int) -> dict[str, float]:
        c = self.config
        bound = psi_noise_bound(
            e, n, n_ref, quantile=self.quantile, draws=c.psi_noise_draws,
            rng=derive_rng(c.seed, self.key), epsilon=c.psi_epsilon,
        )  # fmt: skip
        return {"psi": float(psi_from_proportions(e, a, c.psi_epsilon)), "psi_noise_bound": bound}


def _numeric_row(site: np.ndarray, ref: np.ndarray, noise: _Noise) -> dict[str, Any]:
    ks = ks_2samp(site, ref, method="asymp")
    ref_sd = float(np.std(ref, ddof=1))
    pooled_sd = float(np.sqrt((np.var(site, ddof=1) + np.var(ref, ddof=1)) / 2.0))
    diff = float(np.mean(site) - np.mean(ref))
    e, a = quantile_bin_proportions(ref, site, n_bins=noise.config.psi_bins)
    return dict(
        test="ks",
        **noise.columns(e, a, site.size, ref.size),
        statistic=float(ks.statistic),
        p_value=float(ks.pvalue),
        wasserstein_norm=float(wasserstein_distance(site, ref)) / ref_sd if ref_sd > 0 else np.nan,
        smd=diff / pooled_sd if pooled_sd > 0 else (0.0 if diff == 0 else np.nan),
        mean=float(np.mean(site)),
        reference_mean=float(np.mean(ref)),
    )


def _categorical_row(site: np.ndarray, ref: np.ndarray, noise: _Noise) -> dict[str, Any]:
    cats = sorted(set(site.tolist()) | set(ref.tolist()))
    site_counts = pd.Series(site).value_counts().reindex(cats, fill_value=0).to_numpy(float)
    ref_counts = pd.Series(ref).value_counts().reindex(cats, fill_value=0).to_numpy(float)
    table = np.vstack([site_counts, ref_counts])
    res = chi2_contingency(table, correction=False)
    n_total = table.sum()
    return dict(
        test="chi2",
        **noise.columns(ref_counts / ref.size, site_counts / site.size, site.size, ref.size),
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
        Columns of :class:`DriftTable` (checked before it is returned); ``kind`` is
        ``"numeric"``, ``"categorical"`` or ``"multivariate"`` (feature ``"__mmd__"``).
        ``psi_noise_bound`` is the PSI that sampling noise alone reaches at the row's sizes;
        ``psi_level`` is ``"moderate"``/``"major"`` only when the PSI reaches the cut-off and
        exceeds that bound. ``drifted`` is true when the PSI level is not ``"none"`` or the
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
        part = data.loc[group_arr == g]
        specs: list[tuple[str, str, tuple[int, int, int], Callable[..., dict[str, Any]]]] = []
        for col in numeric:
            site = part[col].to_numpy(float)
            ok_site, ok_ref = site[~np.isnan(site)], ref_num[col][~np.isnan(ref_num[col])]
            sizes = (ok_site.size, ok_ref.size, int(site.size - ok_site.size))
            specs.append((col, "numeric", sizes, partial(_numeric_row, ok_site, ok_ref)))
        for col in categorical:
            site = _as_categorical(part[col])
            sizes = (site.size, ref_cat[col].size, int(np.sum(site == MISSING_CATEGORY)))
            specs.append((col, "categorical", sizes, partial(_categorical_row, site, ref_cat[col])))
        # PSI noise bounds: Bonferroni over the features tested in this group.
        m = sum(min(sizes[:2]) >= config.min_rows for _, _, sizes, _ in specs)
        quantile = 1.0 - config.alpha / max(m, 1)
        for col, kind, sizes, compute in specs:
            noise = _Noise(quantile, f"psi:{g}:{col}", config)
            test = "ks" if kind == "numeric" else "chi2"
            rows.append(_feature_row((g, col, kind, test), sizes, config, partial(compute, noise)))
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
    psi, bound = table["psi"].to_numpy(float), table["psi_noise_bound"].to_numpy(float)
    table["psi_level"] = [_psi_level(p, b, config) for p, b in zip(psi, bound, strict=True)]
    table["drifted"] = table["significant"] | table["psi_level"].isin(["moderate", "major"])
    table = table.astype({"n": "int64", "n_reference": "int64", "n_missing": "int64"})
    return validate_table(table, DriftTable)


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
    sizes = (site.shape[0], ref.shape[0], int(len(part) - site.shape[0]))
    identity = (group, "__mmd__", "multivariate", "mmd")
    return _feature_row(identity, sizes, config, partial(_mmd_values, group, site, ref, config))


def _mmd_values(
    group: str, site: np.ndarray, ref: np.ndarray, config: DriftConfig
) -> dict[str, Any]:
    """MMD test of complete rows, standardized by the reference, subsampled to mmd_max_rows."""
    mean = ref.mean(axis=0)
    sd = ref.std(axis=0, ddof=1)
    sd = np.where(sd > 0, sd, 1.0)
    rng = derive_rng(config.seed, f"mmd:{group}")
    if site.shape[0] > config.mmd_max_rows:
        site = site[np.sort(rng.choice(site.shape[0], config.mmd_max_rows, replace=False))]
    if ref.shape[0] > config.mmd_max_rows:
        ref = ref[np.sort(rng.choice(ref.shape[0], config.mmd_max_rows, replace=False))]
    res = mmd_permutation_test((site - mean) / sd, (ref - mean) / sd, n_perm=config.n_perm, rng=rng)
    return dict(statistic=res.mmd2, p_value=res.p_value, mmd_bandwidth=res.bandwidth)
