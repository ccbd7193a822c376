"""Benchmark: does the certified auto-clear rule keep its promise? LTT vs the naive rule.

Each replicate draws a calibration split (prevalence 46 % abnormal, as NIH ChestX-ray14's
"No Finding" share implies) from a known score law, picks an auto-clear threshold, and computes
the rule's *true* miss rate (share of abnormal studies cleared) from the law's CDF:

* certified: :func:`clinaudit.audit.selective.certify_clear_threshold` (LTT, fixed sequence,
  exact binomial p-values) at alpha, delta;
* baseline (measured in the same run on the same splits): the naive rule that clears below the
  largest threshold whose *empirical* miss rate is at most alpha.

The promise is ``P(true miss rate > alpha) <= delta``. Printed per (n, alpha, delta): the share of
replicates whose true miss rate exceeds alpha, with a 95 % Clopper-Pearson interval, for both
rules, the mean share of normals cleared (the price of the guarantee), and the time per
certificate. Run: ``.venv/bin/python bench/bench_ltt_coverage.py [replicates]`` (default 2000).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from scipy.stats import beta as beta_dist

from clinaudit.audit.selective import certify_clear_threshold, clopper_pearson

POS_LAW, NEG_LAW, PREVALENCE = (4.0, 2.0), (1.5, 5.0), 0.46
SETTINGS = ((1500, 0.05, 0.10), (3000, 0.02, 0.05), (6000, 0.01, 0.05))


def _naive(y: np.ndarray, p: np.ndarray, alpha: float) -> float:
    pos = np.sort(p[y == 1])
    k = int(np.floor(alpha * pos.size))  # clearing below pos[k] misses k abnormal studies
    return float(pos[k])


def _share(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k / n:6.2%} [{float(lo):5.2%}, {float(hi):5.2%}]"


def main(replicates: int) -> None:
    print(
        f"replicates per setting: {replicates}; positives ~ Beta{POS_LAW}, normals ~ Beta{NEG_LAW}"
    )
    header = "n      alpha delta | P(miss > alpha): LTT            naive                 "
    print(header + "| normals cleared LTT / naive | ms per certificate")
    for n, alpha, delta in SETTINGS:
        over = {"ltt": 0, "naive": 0}
        cleared = {"ltt": [], "naive": []}
        seconds = 0.0
        for seed in range(replicates):
            rng = np.random.default_rng([n, seed])
            y = (rng.random(n) < PREVALENCE).astype(int)
            p = np.where(y == 1, rng.beta(*POS_LAW, n), rng.beta(*NEG_LAW, n))
            t0 = time.perf_counter()
            cert = certify_clear_threshold(y, p, alpha=alpha, delta=delta)
            seconds += time.perf_counter() - t0
            rules = {"ltt": cert.threshold or 0.0, "naive": _naive(y, p, alpha)}
            for name, t in rules.items():
                over[name] += beta_dist.cdf(t, *POS_LAW) > alpha
                cleared[name].append(beta_dist.cdf(t, *NEG_LAW))
        print(
            f"{n:<6} {alpha:<5} {delta:<5} | {_share(over['ltt'], replicates)}  "
            f"{_share(over['naive'], replicates)} | "
            f"{np.mean(cleared['ltt']):6.1%} / {np.mean(cleared['naive']):6.1%}          | "
            f"{1000 * seconds / replicates:.2f}"
        )
        if over["ltt"] / replicates > delta:
            print(f"  !! LTT exceeded alpha in more than delta={delta} of replicates")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
