"""Operating points (audit/operating_point.py): threshold choice against a brute-force search,
Wilson intervals against the textbook 21/25 example, the per-group table against DeLong, and the
criterion verdicts on every side of the target."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit import operating_point
from clinaudit.audit.delong import delong_auroc
from clinaudit.audit.operating_point import (
    OperatingTable,
    choose_threshold,
    criterion_with_ci,
    per_group_operating_table,
    sens_spec_at,
)
from clinaudit.audit.types import AuditInputError


def _slow_choice(y: np.ndarray, p: np.ndarray, min_spec: float) -> tuple[float, float, float]:
    best = None
    for t in sorted(set(p.tolist())):
        pred = p >= t
        sens = (pred & (y == 1)).sum() / (y == 1).sum()
        spec = (~pred & (y == 0)).sum() / (y == 0).sum()
        if spec >= min_spec and (best is None or sens > best[1]):
            best = (t, sens, spec)
    assert best is not None
    return best


@pytest.mark.parametrize("min_spec", [0.5, 0.8, 0.95])
def test_choose_threshold_matches_brute_force(min_spec: float) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1).round(2)  # ties on purpose
    got = choose_threshold(y, p, min_specificity=min_spec)
    t, sens, spec = _slow_choice(y, p, min_spec)
    assert (got.threshold, got.sensitivity, got.specificity) == pytest.approx((t, sens, spec))
    assert got.met and got.n == 300 and got.n_pos + got.n_neg == 300
    assert got == choose_threshold(y, p, min_specificity=min_spec)


def test_choose_threshold_fallback_and_youden() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.9, 0.2, 0.3, 0.8, 0.7, 0.6])  # the top score is a negative
    c = choose_threshold(y, p, min_specificity=1.0)
    assert not c.met
    # spec is 2/3 at every threshold in [0.6, 0.9]: the highest sensitivity among them wins
    assert c.threshold == 0.6 and c.sensitivity == 1.0 and c.specificity == pytest.approx(2 / 3)
    j = choose_threshold(y, p, min_specificity=0.0, rule="youden")
    assert j.threshold == 0.6 and j.sensitivity == 1.0 and j.specificity == pytest.approx(2 / 3)


def test_sens_spec_wilson_21_of_25() -> None:
    y = np.array([1] * 25 + [0] * 25)
    p = np.array([0.9] * 21 + [0.2] * 4 + [0.1] * 22 + [0.7] * 3)
    op = sens_spec_at(y, p, 0.5)
    assert (op.tp, op.fn, op.tn, op.fp) == (21, 4, 22, 3)
    assert op.sensitivity == pytest.approx(0.84)
    assert (op.sensitivity_ci_low, op.sensitivity_ci_high) == pytest.approx(
        (0.653, 0.936), abs=1e-3
    )
    assert op.accuracy == pytest.approx(43 / 50)
    assert op.to_dict()["specificity"] == pytest.approx(22 / 25)


@pytest.mark.parametrize(
    ("y", "p", "thr", "match"),
    [
        ([1, 1, 1], [0.2, 0.5, 0.9], 0.5, "both classes"),
        ([0, 1], [0.2, 1.5], 0.5, "y_prob"),
        ([], [], 0.5, "0 rows"),
        ([0, 1], [0.2, 0.6], float("nan"), "threshold"),
    ],
)
def test_sens_spec_bad_input(y: list, p: list, thr: float, match: str) -> None:
    with pytest.raises(AuditInputError, match=match):
        sens_spec_at(y, p, thr)


def test_per_group_table() -> None:
    rng = np.random.default_rng(1)
    cats = np.repeat(["effusion", "pneumonia", "normal", "device"], 50)
    y = np.tile(np.repeat([1, 0], 25), 4)
    p = np.clip(rng.normal(0.4 + 0.25 * y, 0.2), 0, 1)
    df = pd.DataFrame({"cat": cats, "answer": y, "p_yes": p})
    thr = {c: 0.5 for c in set(cats)}
    t = per_group_operating_table(
        df, group_col="cat", y_col="answer", p_col="p_yes", thresholds=thr
    )
    assert list(t.columns) == list(OperatingTable.to_schema().columns)
    assert t["group"].tolist() == sorted(set(cats))
    row = t.set_index("group").loc["pneumonia"]
    sel = cats == "pneumonia"
    d = delong_auroc(y[sel], p[sel])
    assert row["auroc"] == pytest.approx(d.auroc) and row["auroc_ci_low"] == pytest.approx(d.ci_low)
    assert row["n_pos"] == 25 and row["n_neg"] == 25
    assert row["tp"] == int(((p[sel] >= 0.5) & (y[sel] == 1)).sum())
    with pytest.raises(AuditInputError, match="no threshold"):
        per_group_operating_table(
            df, group_col="cat", y_col="answer", p_col="p_yes", thresholds={"device": 0.5}
        )
    with pytest.raises(AuditInputError, match="without columns"):
        per_group_operating_table(df, group_col="x", y_col="answer", p_col="p_yes", thresholds=thr)


def test_a_group_too_small_for_delong_is_reported_not_fatal() -> None:
    """1 positive of 15 (what a fresh home's split once gave a tiny category) and a group with
    no positive at all: both rows are kept with status "insufficient data" and no AUROC; the
    rates whose class is present are still computed, the others are NaN."""
    df = pd.DataFrame(
        {
            "cat": ["big"] * 8 + ["one_pos"] * 15 + ["no_pos"] * 4,
            "answer": [1, 1, 1, 1, 0, 0, 0, 0] + [1] + [0] * 14 + [0] * 4,
            "p_yes": [0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.6, 0.1] + [0.9] + [0.2] * 14 + [0.7] * 4,
        }
    )
    thr = {"big": 0.5, "one_pos": 0.5, "no_pos": 0.5}
    t = per_group_operating_table(
        df, group_col="cat", y_col="answer", p_col="p_yes", thresholds=thr
    ).set_index("group")
    assert t.loc["big", "status"] == "ok" and t.loc["big", "auroc"] == pytest.approx(15 / 16)
    one = t.loc["one_pos"]
    assert one["status"] == "insufficient data" and np.isnan(one["auroc"])
    assert (one["n_pos"], one["n_neg"], one["sensitivity"], one["specificity"]) == (1, 14, 1, 1)
    assert one["sensitivity_ci_low"] < 1.0
    none = t.loc["no_pos"]
    assert none["status"] == "insufficient data" and np.isnan(none["sensitivity"])
    assert none["specificity"] == 0.0 and none["accuracy"] == 0.0


@pytest.mark.parametrize(
    ("args", "direction", "verdict", "evidence"),
    [
        ((0.90, 0.82, 0.96), ">=", "pass", "met (CI lower bound)"),
        ((0.84, 0.65, 0.94), ">=", "pass", "met (point)"),
        ((0.76, 0.60, 0.88), ">=", "inconclusive", "not met"),
        ((0.60, 0.45, 0.74), ">=", "fail", "not met"),
        ((0.03, 0.01, 0.045), "<=", "pass", "met (CI upper bound)"),
        ((0.04, 0.02, 0.07), "<=", "pass", "met (point)"),
        ((0.06, 0.04, 0.09), "<=", "inconclusive", "not met"),
        ((0.12, 0.08, 0.16), "<=", "fail", "not met"),
        ((float("nan"), float("nan"), float("nan")), ">=", "inconclusive", "not estimable"),
    ],
)
def test_criterion_with_ci(args: tuple, direction: str, verdict: str, evidence: str) -> None:
    target = 0.80 if direction == ">=" else 0.05
    r = criterion_with_ci(*args, target=target, direction=direction)  # type: ignore[arg-type]
    assert (r.verdict, r.evidence) == (verdict, evidence)
    assert r.met_point == (verdict == "pass")


def test_criterion_bad_input() -> None:
    with pytest.raises(AuditInputError, match="direction"):
        criterion_with_ci(0.8, 0.7, 0.9, target=0.8, direction=">")  # type: ignore[arg-type]
    with pytest.raises(AuditInputError, match="lower"):
        criterion_with_ci(0.8, 0.9, 0.7, target=0.8)


def test_doctests() -> None:
    result = doctest.testmod(operating_point, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
