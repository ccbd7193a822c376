"""The group audit flags a planted 10-point accuracy drop for V-VI in >= 80 % of seeds and a
false gap in <= 5 % (fast version; the full one is bench/bench_group_gaps.py)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from clinaudit.audit import group_gaps as module
from clinaudit.audit.group_gaps import GAP_COLUMNS, cases_for_gap, group_gaps

CLASSES = ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
MALIGNANT = ["BCC", "MEL", "SCC"]
#: Cases per Fitzpatrick type (few V-VI, as in practice): 400 V-VI of 3,100.
SIZES = {"I": 500, "II": 900, "III": 800, "IV": 500, "V": 250, "VI": 150}
GROUPED = {"I": "I-II", "II": "I-II", "III": "III-IV", "IV": "III-IV", "V": "V-VI", "VI": "V-VI"}


def _cohort(seed: int, drop: float):
    rng = np.random.default_rng(seed)
    tone = np.repeat(list(SIZES), list(SIZES.values()))
    n = tone.size
    code = rng.integers(0, len(CLASSES), n)
    y = np.array(CLASSES)[code]
    acc = np.where(np.isin(tone, ["V", "VI"]), 0.75 - drop, 0.75)
    right = rng.random(n) < acc
    wrong = np.array(CLASSES)[(code + rng.integers(1, len(CLASSES), n)) % len(CLASSES)]
    pred = np.where(right, y, wrong)
    conf = np.clip(np.where(right, 0.8, 0.5) + rng.normal(0, 0.05, n), 0.2, 1.0)
    deferred = (conf < 0.5).astype(int)
    groups = {"fitzpatrick": tone, "fitzpatrick_group": np.array([GROUPED[t] for t in tone])}
    return y, pred, conf, deferred, groups


def _audit(seed: int, drop: float, n_boot: int = 0):
    y, pred, conf, deferred, groups = _cohort(seed, drop)
    return group_gaps(
        y, pred, conf, deferred, groups, classes=CLASSES, malignant=MALIGNANT, n_boot=n_boot
    )


def _flags_dark(out) -> bool:
    dark = out[out["group"].isin(["V", "VI", "V-VI"])]
    return bool(((dark["verdict"] == "gap") & (dark["accuracy_gap"] < 0)).any())


def test_a_planted_10_point_drop_for_v_vi_is_flagged_in_at_least_80_percent_of_seeds() -> None:
    flagged = [_flags_dark(_audit(seed, 0.10)) for seed in range(200)]
    assert np.mean(flagged) >= 0.80, np.mean(flagged)


def test_without_a_planted_gap_any_false_flag_in_at_most_5_percent_of_seeds() -> None:
    false = [bool((_audit(seed, 0.0)["verdict"] == "gap").any()) for seed in range(1000, 1200)]
    assert np.mean(false) <= 0.05, np.mean(false)


def test_rows_intervals_and_verdicts() -> None:
    out = _audit(7, 0.10, n_boot=200)
    assert list(out.columns) == list(GAP_COLUMNS)
    assert set(out["attribute"]) == {"fitzpatrick", "fitzpatrick_group"} and len(out) == 9
    y, pred, conf, deferred, groups = _cohort(7, 0.10)
    row = out.set_index("group").loc["V-VI"]
    m = groups["fitzpatrick_group"] == "V-VI"
    assert row["n"] == m.sum() and row["accuracy"] == pytest.approx((y[m] == pred[m]).mean())
    assert row["accuracy_ci_low"] < row["accuracy"] < row["accuracy_ci_high"]
    assert row["macro_f1_ci_low"] <= row["macro_f1"] <= row["macro_f1_ci_high"]
    assert row["ece_ci_low"] <= row["ece"] <= row["ece_ci_high"]
    mal = m & np.isin(y, MALIGNANT)
    assert row["n_malignant"] == mal.sum()
    assert row["malignant_sensitivity"] == pytest.approx((pred[mal] == y[mal]).mean())
    big = out.set_index("group").loc["II"]
    assert big["verdict"].startswith("no gap") or big["verdict"] == "gap"


def test_a_small_group_is_insufficient_evidence_never_a_pass() -> None:
    rng = np.random.default_rng(0)
    n = 2030
    tone = np.array(["I-II"] * 2000 + ["V-VI"] * 30)
    y = rng.choice(CLASSES, n)
    pred = np.where(rng.random(n) < 0.75, y, "ACK")
    out = group_gaps(
        y, pred, np.full(n, 0.7), np.zeros(n), {"tone": tone}, classes=CLASSES,
        malignant=MALIGNANT, n_boot=0,
    ).set_index("group")  # fmt: skip
    assert out.loc["V-VI", "verdict"].startswith("insufficient evidence (CI width ")


def test_deferral_that_removes_right_answers_is_marked() -> None:
    y = np.array(["NEV"] * 100)
    pred = np.array(["NEV"] * 80 + ["MEL"] * 20)
    deferred = np.array([1] * 40 + [0] * 60)  # defers only correct outputs
    out = group_gaps(
        y, pred, np.full(100, 0.7), deferred, {"tone": ["V-VI"] * 100}, classes=CLASSES,
        malignant=MALIGNANT, n_boot=0,
    ).iloc[0]  # fmt: skip
    assert out["accepted_accuracy"] == pytest.approx(40 / 60) and out["deferral_lowers_accuracy"]
    assert out["verdict"] == "insufficient evidence (no comparison group)"


def test_cases_needed_matches_the_anchor() -> None:
    # ~300 cases per group to detect a 10-point gap over the nine tone groups (issue anchor).
    assert 250 <= cases_for_gap(0.10, 0.75, n_tests=9) <= 350
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
