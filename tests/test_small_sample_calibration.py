"""Small-sample calibration (audit/small_sample_calibration.py, audit/group_calibration.py).

Each estimator is checked against a slow, obviously-correct loop; the perfect-calibration reference
against the known behaviour at n = 200 (plug-in 10-bin ECE median about 0.065); the temperature
fit against a simulation with a known temperature.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from clinaudit.audit import group_calibration, small_sample_calibration
from clinaudit.audit.calibration import expected_calibration_error, wilson_interval
from clinaudit.audit.calibration_fit import expit
from clinaudit.audit.small_sample_calibration import (
    SmallSampleReliabilityTable,
    apply_group_calibrators,
    debiased_ece,
    ece_with_ci,
    fit_group_calibrators,
    fit_platt,
    perfect_calibration_reference,
    plugin_ece,
    reliability_table,
    resolve_n_bins,
)
from clinaudit.audit.types import AuditInputError


def _slow_debiased(y: np.ndarray, p: np.ndarray, edges: np.ndarray) -> float:
    total = 0.0
    k = edges.size - 1
    for b in range(k):
        last = b == k - 1
        sel = (p >= edges[b]) & ((p <= edges[b + 1]) if last else (p < edges[b + 1]))
        nb = int(sel.sum())
        if nb < 2:
            continue
        ybar, pbar = y[sel].mean(), p[sel].mean()
        total += nb / y.size * ((pbar - ybar) ** 2 - ybar * (1 - ybar) / (nb - 1))
    return float(np.sqrt(max(total, 0.0)))


def _data(n: int = 200, seed: int = 1, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < np.clip(p + shift, 0, 1)).astype(float)
    return y, p


@pytest.mark.parametrize("binning", ["mass", "width"])
@pytest.mark.parametrize("shift", [0.0, 0.15])
def test_debiased_ece_matches_slow_reference(binning: str, shift: float) -> None:
    y, p = _data(shift=shift)
    if binning == "width":
        edges = np.linspace(0, 1, 11)
    else:
        edges = np.unique(np.quantile(p, np.linspace(0, 1, 11)))
    got = debiased_ece(y, p, n_bins=10, binning=binning)  # type: ignore[arg-type]
    assert got == pytest.approx(_slow_debiased(y, p, edges), abs=1e-12)
    assert plugin_ece(y, p, binning=binning) == pytest.approx(  # type: ignore[arg-type]
        expected_calibration_error(y, p, binning=binning),
        abs=1e-15,  # type: ignore[arg-type]
    )


def test_debiased_ece_detects_miscalibration_and_is_small_when_calibrated() -> None:
    y, p = _data(n=5000, seed=3)
    assert debiased_ece(y, p) < 0.02
    y2, p2 = _data(n=5000, seed=3, shift=0.15)
    assert debiased_ece(y2, p2) > 0.1


def test_perfect_calibration_reference_at_n_200() -> None:
    rng = np.random.default_rng(7)
    p = rng.uniform(0.02, 0.98, size=200)
    plug = perfect_calibration_reference(p, n_sim=1000, seed=0, estimator="plugin", binning="width")
    assert 0.04 <= plug.median <= 0.09
    assert plug.share_at_or_above(0.05) > 0.5
    assert plug.p05 < plug.median < plug.p95
    deb = perfect_calibration_reference(p, n_sim=1000, seed=0, estimator="debiased")
    assert deb.median < plug.median / 2
    again = perfect_calibration_reference(
        p, n_sim=1000, seed=0, estimator="plugin", binning="width"
    )
    assert np.array_equal(again.values, plug.values)
    assert again.to_dict() == plug.to_dict()
    assert plug.to_dict()["n"] == 200 and plug.n_sim == 1000


def test_ece_with_ci_is_reproducible_and_clusters() -> None:
    y, p = _data()
    groups = np.repeat(np.arange(50), 4)
    a = ece_with_ci(y, p, groups=groups, n_boot=300, seed=5)
    b = ece_with_ci(y, p, groups=groups, n_boot=300, seed=5)
    assert a == b
    assert a.n == 200 and a.n_clusters == 50 and a.n_bins == 10 and a.bins_rule == "fixed"
    assert a.plugin_ece == pytest.approx(expected_calibration_error(y, p, binning="mass"))
    assert a.debiased_ece == pytest.approx(debiased_ece(y, p))
    assert 0 <= a.plugin_ci_low <= a.plugin_ci_high <= 1
    assert 0 <= a.debiased_ci_low <= a.debiased_ci_high <= 1
    c = ece_with_ci(y, p, n_boot=300, seed=6)
    assert c.n_clusters == 200 and c.plugin_ci_low != a.plugin_ci_low


def test_sweep_bins() -> None:
    y, p = _data(n=2000, seed=2)
    k = resolve_n_bins(y, p, n_bins="sweep")
    assert 2 <= k <= small_sample_calibration.MAX_SWEEP_BINS
    est = ece_with_ci(y, p, n_bins="sweep", n_boot=20)
    assert est.n_bins == k and est.bins_rule == "sweep"


def test_reliability_table() -> None:
    y, p = _data()
    t = reliability_table(y, p, n_bins=5, binning="width")
    assert list(t.columns) == list(SmallSampleReliabilityTable.to_schema().columns)
    assert t["n"].sum() == 200 and len(t) == 5
    sel = (p >= 0.2) & (p < 0.4)
    row = t.iloc[1]
    assert row["n"] == sel.sum() and row["frac_pos"] == pytest.approx(y[sel].mean())
    lo, hi = wilson_interval(np.array([y[sel].sum()]), np.array([sel.sum()]))
    assert row["frac_pos_ci_low"] == pytest.approx(lo[0])
    assert row["frac_pos_ci_high"] == pytest.approx(hi[0])


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([], [], "y_true"),
        ([0, 1], [0.2, 1.3], "y_prob"),
        ([0, 2], [0.2, 0.3], "y_true"),
    ],
)
def test_bad_input(y: list, p: list, match: str) -> None:
    with pytest.raises(AuditInputError, match=match):
        debiased_ece(y, p)
    with pytest.raises(AuditInputError, match=match):
        ece_with_ci(y, p, n_boot=10)


def test_bad_options() -> None:
    y, p = _data()
    with pytest.raises(AuditInputError, match="binning"):
        debiased_ece(y, p, binning="quantile")  # type: ignore[arg-type]
    with pytest.raises(AuditInputError, match="estimator"):
        perfect_calibration_reference(p, estimator="kde")  # type: ignore[arg-type]
    with pytest.raises(AuditInputError, match="n_bins"):
        perfect_calibration_reference(p, n_bins=0)


def _tempered(t_true: float, n: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z_true = rng.normal(0.0, 2.0, size=n)
    y = (rng.uniform(size=n) < expit(z_true)).astype(float)
    return y, z_true * t_true


def test_temperature_recovered() -> None:
    # fit_temperature models P(y=1) = sigmoid(z / T): logits inflated by T_true give T ~ T_true
    y, z = _tempered(2.5)
    cals = fit_group_calibrators(y, z, np.zeros(y.size, int), method="temperature")
    assert abs(cals["0"].temperature - 2.5) / 2.5 < 0.10


def test_platt_recovered_and_per_group() -> None:
    y1, z1 = _tempered(2.5, seed=1)
    y2, z2 = _tempered(0.5, seed=2)
    y, z = np.concatenate([y1, y2]), np.concatenate([z1, z2])
    g = np.repeat(["wide", "narrow"], 5000)
    cals = fit_group_calibrators(y, z, g, method="platt")
    assert abs(cals["wide"].slope - 0.4) < 0.04 and abs(cals["wide"].intercept) < 0.15
    assert abs(cals["narrow"].slope - 2.0) < 0.2
    q = apply_group_calibrators(z, g, cals)
    assert np.allclose(q[:5000], cals["wide"].apply(z1))
    assert np.allclose(q[5000:], expit(cals["narrow"].intercept + cals["narrow"].slope * z2))
    assert fit_group_calibrators(y, z, g, method="platt") == cals
    with pytest.raises(AuditInputError, match="without a calibrator"):
        apply_group_calibrators(z[:3], ["other"] * 3, cals)


def test_platt_rejects_single_class_and_reversed_scores() -> None:
    with pytest.raises(AuditInputError, match="both classes"):
        fit_platt([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(AuditInputError, match="slope"):
        fit_platt([1, 1, 0, 1, 0, 0], [-2.0, -1.0, -0.5, 0.5, 1.0, 2.0])


@pytest.mark.parametrize("module", [small_sample_calibration, group_calibration])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)  # type: ignore[arg-type]
    assert result.failed == 0 and result.attempted > 0
