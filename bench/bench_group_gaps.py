"""Benchmark: the skin-tone gap flag and the certified deferral rule, at full replicate counts.

1. **Group gaps** (:func:`clinaudit.audit.group_gaps.group_gaps`): a cohort of 3,100 cases over
   Fitzpatrick I-VI (400 in V-VI), accuracy 0.75; with a planted drop of 10 points for V-VI the
   flag must fire on V, VI or V-VI in >= 80 % of replicates, and with none planted any false flag
   must stay <= 5 %. Baseline (same run, same cohorts): the same z-tests without the Holm
   adjustment (what a per-group dashboard does), whose false-flag rate is the price of not
   adjusting. Also printed: cases per group the flag needs (:func:`cases_for_gap`).
2. **Deferral** (:func:`clinaudit.audit.deferral.certify_deferral`): over replicates of a known
   score law, the share whose *true* accepted error rate or malignant miss rate exceeds its
   alpha (the promise: <= delta), against the naive rule that accepts up to the largest
   threshold whose *empirical* risks are within alpha.

Run: ``.venv/bin/python bench/bench_group_gaps.py [replicates]`` (default 1000).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from clinaudit.audit.deferral import certify_deferral
from clinaudit.audit.group_gaps import cases_for_gap, group_gaps
from clinaudit.audit.selective import clopper_pearson

CLASSES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
SIZES = {"I": 500, "II": 900, "III": 800, "IV": 500, "V": 250, "VI": 150}
GROUPED = {"I": "I-II", "II": "I-II", "III": "III-IV", "IV": "III-IV", "V": "V-VI", "VI": "V-VI"}
ALPHA_E, ALPHA_M, DELTA = 0.10, 0.05, 0.05


def _share(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k / n:6.1%} [{float(lo):5.1%}, {float(hi):5.1%}]"


def _cohort(seed: int, drop: float):
    rng = np.random.default_rng(seed)
    tone = np.repeat(list(SIZES), list(SIZES.values()))
    n = tone.size
    code = rng.integers(0, len(CLASSES), n)
    y = np.array(CLASSES)[code]
    right = rng.random(n) < np.where(np.isin(tone, ["V", "VI"]), 0.75 - drop, 0.75)
    pred = np.where(right, y, np.array(CLASSES)[(code + rng.integers(1, 6, n)) % 6])
    conf = np.clip(np.where(right, 0.8, 0.5) + rng.normal(0, 0.05, n), 0.2, 1.0)
    groups = {"fitzpatrick": tone, "fitzpatrick_group": np.array([GROUPED[t] for t in tone])}
    return y, pred, conf, (conf < 0.5).astype(int), groups


def gaps(replicates: int) -> None:
    print(f"== group gaps: {replicates} replicates per scenario, 3,100 cases, 400 in V-VI")
    for drop in (0.10, 0.0):
        flagged = {"holm": 0, "unadjusted": 0}
        seconds = 0.0
        for seed in range(replicates):
            y, pred, conf, deferred, groups = _cohort(seed + (0 if drop else 10**6), drop)
            t0 = time.perf_counter()
            out = group_gaps(
                y, pred, conf, deferred, groups, classes=CLASSES, malignant=("BCC", "MEL", "SCC"),
                n_boot=0,
            )  # fmt: skip
            seconds += time.perf_counter() - t0
            dark = out["group"].isin(["V", "VI", "V-VI"]) if drop else np.ones(len(out), bool)
            big = out["accuracy_gap"].abs() >= 0.05
            holm = (out["verdict"] == "gap") & dark
            raw = (out["p_value"] < 0.05) & big & dark
            flagged["holm"] += bool(holm.any())
            flagged["unadjusted"] += bool(raw.any())
        what = "flagged V/VI/V-VI (goal >= 80 %)" if drop else "any false flag (goal <= 5 %)"
        print(f"drop {drop:.2f} | {what}: Holm {_share(flagged['holm'], replicates)}; "
              f"unadjusted baseline {_share(flagged['unadjusted'], replicates)} | "
              f"{1000 * seconds / replicates:.1f} ms per audit")  # fmt: skip
    for tests in (1, 3, 9):
        print(f"cases a group needs to flag a 10-point drop from 0.75 (80 % power, {tests} "
              f"tests): {cases_for_gap(0.10, 0.75, n_tests=tests)}")  # fmt: skip


def _naive(err, miss, n_mal, s) -> float:
    order = np.argsort(s)
    ce, cm = np.cumsum(err[order]), np.cumsum(miss[order])
    k = np.arange(1, s.size + 1)
    ok = (ce / k <= ALPHA_E) & (cm / max(n_mal, 1) <= ALPHA_M)
    return float(s[order][np.flatnonzero(ok)[-1]] + 1e-12) if ok.any() else 0.0


def deferral(replicates: int) -> None:
    print(f"== deferral: {replicates} replicates of n = 2,000; alpha_error {ALPHA_E}, "
          f"alpha_malignant {ALPHA_M}, delta {DELTA}")  # fmt: skip
    over = {"ltt": 0, "naive": 0}
    coverage = {"ltt": [], "naive": []}
    grid_t = np.linspace(0, 1, 2001)
    for seed in range(replicates):
        rng = np.random.default_rng([7, seed])
        s = rng.random(2000)
        mal = (rng.random(2000) < 0.2).astype(int)
        miss = mal * (rng.random(2000) < 0.3 * s)
        err = np.maximum((rng.random(2000) < 0.3 * s).astype(int), miss)
        rule = certify_deferral(
            err, mal, miss, s, alpha_error=ALPHA_E, alpha_malignant=ALPHA_M, delta=DELTA
        )
        for name, t in (("ltt", min(rule.threshold or 0.0, 1.0)),
                        ("naive", min(_naive(err, miss, mal.sum(), s), 1.0))):  # fmt: skip
            u = grid_t[grid_t <= t]
            true_err = float(np.mean(1 - (1 - 0.3 * u) * (1 - 0.06 * u))) if t > 0 else 0.0
            over[name] += true_err > ALPHA_E or 0.15 * t**2 > ALPHA_M
            coverage[name].append(t)
    for name in ("ltt", "naive"):
        print(f"{name:5} | P(a true risk > its alpha) {_share(over[name], replicates)} | "
              f"mean coverage {np.mean(coverage[name]):.3f}")  # fmt: skip


def main(replicates: int) -> None:
    gaps(replicates)
    deferral(replicates)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
