"""Mitigation of the largest gap: out-of-sample gap reduction, disjoint cross-fitting, costs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clinaudit.audit.fairness_mitigation import CAVEATS, cluster_folds, mitigate_largest_gap
from clinaudit.audit.types import STATUS_INSUFFICIENT, AuditInputError

THR = 0.4


def _cohort(n: int = 4000, seed: int = 0, shift: str = "positives") -> pd.DataFrame:
    """Stays with an injected gap for race group B.

    ``shift="positives"``: B's positives score lower (a sensor under-reading severity: TPR gap).
    ``shift="all"``: every B score is shifted down (miscalibration for B: TPR gap too).
    ``shift="negatives"``: B's negatives score higher (false alerts: FPR gap).
    """
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "sex": rng.choice(["F", "M"], n),
            "race": rng.choice(["A", "B", "C"], n, p=[0.5, 0.3, 0.2]),
            "patient": rng.integers(0, int(0.8 * n), n),
        }
    )
    df["y"] = (rng.random(n) < 0.12).astype(int)
    b = (df["race"] == "B").to_numpy()
    y = df["y"].to_numpy()
    mask = {"positives": b & (y == 1), "all": b, "negatives": b & (y == 0)}[shift]
    sign = 1.0 if shift == "negatives" else -1.0
    logit = -1.2 + 2.2 * y + rng.normal(size=n) + sign * 1.2 * mask
    df["score"] = 1.0 / (1.0 + np.exp(-logit))
    return df


def _mitigate(df: pd.DataFrame, **kw: object):
    groups = {"sex": df["sex"], "race": df["race"]}
    kw = {"threshold": THR, "clusters": df["patient"], "n_boot": 200, "groups": groups, **kw}
    return mitigate_largest_gap(df["y"], df["score"], **kw)


def _quantity(table: pd.DataFrame, quantity: str, group: str) -> pd.Series:
    hit = table[(table["quantity"] == quantity) & (table["group"] == group)]
    assert len(hit) == 1, (quantity, group)
    return hit.iloc[0]


@pytest.mark.parametrize("method", ["group_thresholds", "threshold_optimizer"])
def test_mitigation_reduces_injected_tpr_gap_out_of_sample(method: str) -> None:
    df = _cohort()
    res = _mitigate(df, method=method)
    assert (res.attribute, res.metric) == ("race", "tpr")
    gap = _quantity(res.table, "tpr_gap", "max-min")
    assert gap["after"] < gap["before"]
    assert gap["after_ci_high"] < gap["before"]  # robust: the whole after interval is below
    assert gap["change_ci_high"] < 0 and gap["change_ci_excludes_zero"]
    pair = res.table[res.table["quantity"] == "tpr_gap_pair"].iloc[0]
    assert pair["group"].endswith("- B") and pair["after_ci_low"] < 0 < pair["after_ci_high"]
    # what it costs is reported next to what it fixes
    b_tpr = _quantity(res.table, "tpr", "B")
    assert b_tpr["after"] > b_tpr["before"]
    for name in ("sensitivity", "specificity", "alert_rate", "ppv", "nne", "missed_per_1000_stays"):
        row = _quantity(res.table, name, "all")
        assert row["before_ci_low"] <= row["before"] <= row["before_ci_high"]
        assert np.isfinite(row["change_ci_low"]) and np.isfinite(row["after"])
    assert res.caveats == CAVEATS and len(res.caveats) >= 5


def test_group_thresholds_keep_the_operating_point() -> None:
    res = _mitigate(_cohort(), method="group_thresholds", exposure_days=1.0)
    sens = _quantity(res.table, "sensitivity", "all")
    assert abs(sens["change"]) < 0.05 and sens["change_ci_low"] < 0 < sens["change_ci_high"]
    burden = _quantity(res.table, "alerts_per_100_stay_days", "all")
    assert abs(burden["before"] - 100 * _quantity(res.table, "alert_rate", "all")["before"]) < 1e-9


def test_cross_fitting_is_patient_disjoint_and_thresholds_come_from_fit_rows_only() -> None:
    df = _cohort(3000, seed=1)
    res = _mitigate(df, method="group_thresholds", n_folds=4, seed=3)
    folds = res.fold_assignments
    assert folds["row"].tolist() == list(range(len(df)))
    seen = []
    for k, (fit_rows, eval_rows) in res.fold_rows.items():
        assert np.intersect1d(fit_rows, eval_rows).size == 0
        assert np.array_equal(eval_rows, np.flatnonzero(folds["fold"] == k))
        assert np.array_equal(np.union1d(fit_rows, eval_rows), np.arange(len(df)))
        fit_patients = set(df["patient"].iloc[fit_rows])
        assert fit_patients.isdisjoint(df["patient"].iloc[eval_rows])
        seen.append(eval_rows)
        # slow reference: thresholds recomputed from the fitting rows alone reproduce the
        # decisions on the evaluation rows
        fit = df.iloc[fit_rows]
        target = (fit.loc[fit["y"] == 1, "score"] >= THR).mean()
        cuts = {}
        for race, sub in fit.groupby("race"):
            pos = np.sort(sub.loc[sub["y"] == 1, "score"].to_numpy())[::-1]
            cuts[race] = pos[int(np.ceil(target * pos.size - 1e-9)) - 1]
        stored = res.thresholds_by_group.query("fold == @k").set_index("group")["threshold"]
        assert stored.to_dict() == pytest.approx(cuts, abs=0)
        ev = df.iloc[eval_rows]
        expected = ev["score"].to_numpy() >= ev["race"].map(cuts).to_numpy()
        assert np.array_equal(res.decisions_after[eval_rows], expected)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(df)))
    assert set(res.thresholds_by_group["fold"]) == {-1, 0, 1, 2, 3}  # -1: deployment candidate


def test_folds_are_stratified_and_seeded() -> None:
    df = _cohort(3000, seed=2)
    codes = pd.factorize(df["patient"])[0]
    labels = df["race"].to_numpy(dtype=object)
    y = df["y"].to_numpy(float)
    a = cluster_folds(y, codes, labels, 5, 0)
    assert np.array_equal(a, cluster_folds(y, codes, labels, 5, 0))
    assert not np.array_equal(a, cluster_folds(y, codes, labels, 5, 1))
    pos_b = [(y[(a == k) & (labels == "B")]).sum() for k in range(5)]
    assert max(pos_b) - min(pos_b) <= 0.5 * np.mean(pos_b)  # positives of B in every fold


@pytest.mark.parametrize("method", ["threshold_optimizer", "group_recalibration"])
def test_deterministic(method: str) -> None:
    df = _cohort(2500, seed=4)
    a, b = _mitigate(df, method=method, seed=7), _mitigate(df, method=method, seed=7)
    pd.testing.assert_frame_equal(a.table, b.table)
    pd.testing.assert_frame_equal(a.thresholds_by_group, b.thresholds_by_group)
    assert np.array_equal(a.decisions_after, b.decisions_after)


def test_group_recalibration_reduces_a_calibration_gap() -> None:
    res = _mitigate(_cohort(shift="all", seed=5), method="group_recalibration")
    assert (res.attribute, res.metric) == ("race", "tpr")
    gap = _quantity(res.table, "tpr_gap", "max-min")
    assert gap["after"] < gap["before"] and gap["change_ci_high"] < 0
    deploy = res.thresholds_by_group.query("fold == -1").set_index("group")
    assert deploy.loc["B", "threshold"] < deploy.loc["A", "threshold"]  # B's scores read low
    assert (deploy["slope"] > 0).all() and deploy["threshold_recalibrated"].nunique() == 1


def test_fpr_gap_is_targeted_with_fpr_parity() -> None:
    res = _mitigate(_cohort(shift="negatives", seed=6), method="threshold_optimizer")
    assert (res.attribute, res.metric) == ("race", "fpr")
    gap = _quantity(res.table, "fpr_gap", "max-min")
    assert gap["after"] < gap["before"] and gap["change_ci_high"] < 0
    tops = res.thresholds_by_group
    assert tops["p_threshold"].between(0, 1).all() and set(tops["operator"]) == {">"}


def test_small_groups_keep_the_original_threshold() -> None:
    df = _cohort(3000, seed=8)
    df.loc[df.index[:30], "race"] = "D"  # about 4 positives
    res = _mitigate(df, method="group_thresholds")
    assert res.fallback_groups == ("D",)
    d = (df["race"] == "D").to_numpy()
    assert np.array_equal(res.decisions_after[d], res.decisions_before[d])
    assert _quantity(res.table, "tpr", "D")["status"] == STATUS_INSUFFICIENT
    assert "D" not in set(res.thresholds_by_group["group"])


def test_explicit_target() -> None:
    res = _mitigate(_cohort(2500), method="group_thresholds", attribute="sex", metric="tpr")
    assert (res.attribute, res.metric) == ("sex", "tpr")
    assert set(res.table.loc[res.table["quantity"] == "tpr", "group"]) == {"F", "M"}


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"method": "reweighing"}, "method"),
        ({"n_folds": 1}, "n_folds"),
        ({"attribute": "zip"}, "attribute"),
        ({"metric": "ppv"}, "metric"),
        ({"constraints": "demographic_parity"}, "constraints"),
        ({"threshold": 2.0}, "threshold"),
        ({"exposure_days": -1.0}, "exposure_days"),
        ({"min_pos": 10_000}, "groups"),
        ({"groups": None}, "groups"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs: dict, argument: str) -> None:
    df = _cohort(800)
    with pytest.raises(AuditInputError) as err:
        _mitigate(df, n_boot=0, **kwargs)
    assert err.value.argument == argument


def test_group_array_length_mismatch_is_named() -> None:
    df = _cohort(500)
    with pytest.raises(AuditInputError) as err:
        mitigate_largest_gap(df["y"], df["score"], groups={"race": df["race"][:-1]}, threshold=THR)
    assert err.value.argument == "groups['race']"
