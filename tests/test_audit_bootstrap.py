"""GroupBootstrap: per-group replicates and percentile intervals vs a plain resampling loop."""

from __future__ import annotations

import numpy as np
import pytest

from clinaudit.audit.bootstrap import GroupBootstrap, derive_rng, segment_matrix
from clinaudit.audit.types import AuditInputError

# 5 clusters (patients) with 2 rows each; plan 0 sums y, plan 1 sums x (per cluster)
CLUSTER = np.repeat(np.arange(5), 2)
Y = np.array([1.0, 0, 1, 1, 0, 0, 1, 0, 0, 0])
X = np.arange(10.0)


def _plan(values: np.ndarray):
    return segment_matrix(np.zeros(values.size, int), CLUSTER, 1, 5, values)


def _mean(plan, chunk):
    """Mean row value, and the row total (NaN below 2), of each replicate."""
    total = np.asarray(plan @ chunk)[0]
    n = 2.0 * chunk.sum(axis=0)
    return {"mean": total / n, "big": np.where(total >= 2.0, total, np.nan)}


def _plain_mean(values: np.ndarray, n_boot: int, seed: int, key: str) -> np.ndarray:
    """Draw clusters with replacement one replicate at a time, average their rows."""
    rng = derive_rng(seed, key)
    out = []
    for _ in range(n_boot):
        drawn = rng.integers(0, 5, size=5)
        out.append(np.mean(np.concatenate([values[CLUSTER == k] for k in drawn])))
    return np.array(out)


@pytest.mark.parametrize("chunk_size", [1, 7, 200])
def test_run_matches_plain_loop_and_quantiles(chunk_size):
    boot = GroupBootstrap(_mean, ("mean", "big"), 60, 0.9, 3, chunk_size)
    cells = boot.run({0: _plan(Y), 1: _plan(X)}, n_clusters=5, key="site_a")
    assert list(cells) == [0, 1]
    for t, values in ((0, Y), (1, X)):
        reps = cells[t].replicates["mean"]
        np.testing.assert_allclose(reps, _plain_mean(values, 60, 3, "site_a"), rtol=1e-12)
        lo, hi = np.quantile(reps, [0.05, 0.95])
        assert cells[t].intervals["mean_ci_low"] == pytest.approx(lo, rel=1e-12)
        assert cells[t].intervals["mean_ci_high"] == pytest.approx(hi, rel=1e-12)
        assert list(cells[t].intervals) == [
            "mean_ci_low",
            "mean_ci_high",
            "big_ci_low",
            "big_ci_high",
        ]


def test_n_valid_is_fewest_finite_replicates():
    cells = GroupBootstrap(_mean, ("mean", "big"), 80, 0.95, 0).run(
        {0: _plan(Y)}, n_clusters=5, key="g"
    )
    big = cells[0].replicates["big"]
    assert 0 < np.isnan(big).sum() < 80  # some replicates draw fewer than 2 positives
    assert cells[0].n_valid == int(np.isfinite(big).sum())
    finite = big[np.isfinite(big)]
    assert cells[0].intervals["big_ci_low"] == pytest.approx(np.quantile(finite, 0.025))


def test_nothing_drawn_without_plans_or_replicates():
    assert GroupBootstrap(_mean, ("mean",), 50, 0.95, -1).run({}, n_clusters=5, key="g") == {}
    no_boot = GroupBootstrap(_mean, ("mean",), 0, 0.95, -1)
    assert no_boot.run({0: _plan(Y)}, n_clusters=5, key="g") == {}
    with pytest.raises(AuditInputError, match="seed: received -1"):
        GroupBootstrap(_mean, ("mean",), 5, 0.95, -1).run({0: _plan(Y)}, n_clusters=5, key="g")


def test_groups_draw_independent_streams():
    boot = GroupBootstrap(_mean, ("mean",), 40, 0.95, 1)
    a = boot.run({0: _plan(X)}, n_clusters=5, key="a")[0].replicates["mean"]
    b = boot.run({0: _plan(X)}, n_clusters=5, key="b")[0].replicates["mean"]
    again = boot.run({0: _plan(X)}, n_clusters=5, key="a")[0].replicates["mean"]
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    ("n_boot", "ci_level", "match"),
    [(-1, 0.95, "n_boot"), (10, 1.5, "ci_level"), (10, 0.0, "ci_level")],
)
def test_invalid_settings_name_the_argument(n_boot, ci_level, match):
    with pytest.raises(AuditInputError, match=match):
        GroupBootstrap(_mean, ("mean",), n_boot, ci_level, 0)
