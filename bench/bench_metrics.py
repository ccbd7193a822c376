"""Benchmark: clustered bootstrap AUROC + AUPRC, 5 sites x 14 findings x 1,000 replicates.

Data (simulated): 12,000 scored images, about 20% of patients with 2-3 images, 5 sites, 14 findings
with prevalences from 2% to 20%, scores rounded to 3 decimals (ties, like a real model's output).

Compared, in the same run:

* the core: ``audit_discrimination(..., n_boot=1000)`` (which also computes sensitivity/specificity/
  PPV/NPV intervals and DeLong, so it does more than the baseline);
* a straightforward loop calling ``sklearn.metrics.roc_auc_score`` and ``average_precision_score``
  with ``sample_weight`` = the same bootstrap counts, for every cell and replicate. It is timed on a
  subset of replicates per cell and extrapolated linearly to 1,000 (printed as such); the subset's
  values are checked against the core's replicates;
* ``fairlearn.metrics.MetricFrame(..., n_boot=...)`` (row bootstrap; fairlearn cannot resample
  patients), timed per finding on a subset of replicates and extrapolated the same way.

Run: ``.venv/bin/python bench/bench_metrics.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from sklearn.metrics import average_precision_score, roc_auc_score

from clinaudit.audit.bootstrap import bootstrap_counts, derive_rng
from clinaudit.audit.discrimination import audit_discrimination

N_IMAGES = 12_000
N_SITES = 5
N_FINDINGS = 14
N_BOOT = 1000
SEED = 0


def simulate(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(y, score, site, patient)`` for ``N_IMAGES`` images."""
    rng = np.random.default_rng(seed)
    per_patient = rng.choice([1, 2, 3], size=N_IMAGES, p=[0.8, 0.1, 0.1])
    patient = np.repeat(np.arange(N_IMAGES), per_patient)[:N_IMAGES]
    n_patients = int(patient.max()) + 1
    site = np.array([f"site_{k}" for k in range(N_SITES)])[rng.integers(0, N_SITES, n_patients)]
    prevalence = np.linspace(0.02, 0.20, N_FINDINGS)
    y_patient = (rng.random((n_patients, N_FINDINGS)) < prevalence).astype(float)
    y = y_patient[patient]
    logits = -2.0 + 1.8 * y + rng.normal(size=(n_patients, N_FINDINGS))[patient] * 0.6
    logits += rng.normal(size=(N_IMAGES, N_FINDINGS)) * 0.8
    score = np.round(1.0 / (1.0 + np.exp(-logits)), 3)
    return y, score, site[patient], patient


def time_core(y, score, site, patient) -> tuple[float, object]:
    best, result = np.inf, None
    for _ in range(3):
        t0 = time.perf_counter()
        result = audit_discrimination(
            y, score, groups=site, clusters=patient, n_boot=N_BOOT, seed=SEED
        )
        best = min(best, time.perf_counter() - t0)
    return best, result


def time_sklearn_loop(y, score, site, patient, result, n_sub: int) -> tuple[float, float]:
    """Seconds for ``n_sub`` replicates of every cell, and the max |difference| to the core."""
    max_diff = 0.0
    t0 = time.perf_counter()
    for g in sorted(set(site.tolist())):
        rows = np.flatnonzero(site == g)
        codes, _ = pd.factorize(patient[rows], sort=False)
        counts = bootstrap_counts(int(codes.max()) + 1, n_sub, derive_rng(SEED, g))
        for t in range(N_FINDINGS):
            reps = result.replicates[(g, f"target_{t}")]
            yt, st = y[rows, t], score[rows, t]
            for b in range(n_sub):
                w = counts[b, codes]
                auc = roc_auc_score(yt, st, sample_weight=w)
                ap = average_precision_score(yt, st, sample_weight=w)
                max_diff = max(max_diff, abs(auc - reps["auroc"][b]), abs(ap - reps["auprc"][b]))
    return time.perf_counter() - t0, max_diff


def time_fairlearn(y, score, site, n_boot_sub: int) -> float:
    t0 = time.perf_counter()
    for t in range(N_FINDINGS):
        MetricFrame(
            metrics={"auroc": roc_auc_score, "auprc": average_precision_score},
            y_true=y[:, t],
            y_pred=score[:, t],
            sensitive_features=site,
            n_boot=n_boot_sub,
            ci_quantiles=[0.025, 0.975],
            random_state=SEED,
        )
    return time.perf_counter() - t0


def main() -> None:
    y, score, site, patient = simulate()
    n_patients = int(patient.max()) + 1
    multi = np.bincount(patient)
    print(
        f"data: {N_IMAGES} images, {n_patients} patients ({np.mean(multi > 1):.1%} with 2-3 "
        f"images), {N_SITES} sites x {N_FINDINGS} findings, {N_BOOT} bootstrap replicates"
    )
    core_s, result = time_core(y, score, site, patient)
    print(f"core (clustered bootstrap, all metrics, best of 3): {core_s:.3f} s")

    n_sub = 10
    sub_s, max_diff = time_sklearn_loop(y, score, site, patient, result, n_sub)
    sk_s = sub_s * N_BOOT / n_sub
    print(
        f"sklearn loop: {sub_s:.2f} s for {n_sub} replicates/cell -> extrapolated linearly to "
        f"{N_BOOT} replicates: {sk_s:.1f} s (max |core - sklearn| on those replicates: "
        f"{max_diff:.2e})"
    )
    print(f"speed-up core vs sklearn loop: {sk_s / core_s:.0f}x (target >= 50x, core < 3 s)")

    fl_sub = 10
    fl_sub_s = time_fairlearn(y, score, site, fl_sub)
    fl_s = fl_sub_s * N_BOOT / fl_sub
    print(
        f"fairlearn MetricFrame(n_boot={fl_sub}) x {N_FINDINGS} findings: {fl_sub_s:.2f} s -> "
        f"extrapolated to n_boot={N_BOOT}: {fl_s:.1f} s (row bootstrap only; "
        f"speed-up core vs fairlearn: {fl_s / core_s:.0f}x)"
    )


if __name__ == "__main__":
    main()
