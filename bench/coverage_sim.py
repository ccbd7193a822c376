"""Coverage of the clustered-bootstrap 95% AUROC interval under a known binormal model.

Model: each patient has a label (prevalence 0.3) and 1-3 images (half of the patients have 2 or 3).
An image's score is ``mu * y + u_patient + e_image`` with ``u ~ N(0, 0.5)``, ``e ~ N(0, 0.5)``, so
images of one patient are correlated (intra-class correlation 0.5). A positive image and a negative
image always come from different patients, so the true image-level AUROC is
``Phi(mu / sqrt(2 * (0.5 + 0.5)))``; ``mu`` is chosen for a true AUROC of 0.80.

Each simulated data set is one group of a single ``audit_discrimination`` call (groups are
bootstrapped independently), so thousands of data sets take seconds. The script prints the
coverage of the clustered percentile bootstrap, of the same bootstrap resampling rows (ignoring
patients), and of the DeLong interval (which also assumes independent rows), each with its
Monte-Carlo standard error ``sqrt(c (1 - c) / n_sims)``. Target for the clustered bootstrap: 93-97%.

Run: ``.venv/bin/python bench/coverage_sim.py [n_sims]`` (default 2000; about a minute).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from scipy.stats import norm

from clinaudit.audit.discrimination import audit_discrimination

TRUE_AUROC = 0.80
VAR_PATIENT = 0.5
VAR_IMAGE = 0.5
MU = float(norm.ppf(TRUE_AUROC) * np.sqrt(2.0 * (VAR_PATIENT + VAR_IMAGE)))


def simulate(
    n_sims: int, n_patients: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stack ``n_sims`` clustered data sets: ``(y, score, dataset id, patient id)`` per image."""
    n_total = n_sims * n_patients
    images = rng.choice([1, 2, 3], size=n_total, p=[0.5, 0.3, 0.2])
    y_patient = (rng.random(n_total) < 0.3).astype(float)
    u = rng.normal(0.0, np.sqrt(VAR_PATIENT), n_total)
    patient = np.repeat(np.arange(n_total), images)
    e = rng.normal(0.0, np.sqrt(VAR_IMAGE), patient.size)
    y = y_patient[patient]
    score = MU * y + u[patient] + e
    dataset = np.array([f"d{i:05d}" for i in range(n_sims)])[patient // n_patients]
    return y, score, dataset, patient


def run_coverage(
    *, n_sims: int, n_patients: int, n_boot: int, seed: int, clustered: bool = True
) -> tuple[int, int]:
    """Number of data sets whose bootstrap interval covers the true AUROC, and ``n_sims``."""
    y, score, dataset, patient = simulate(n_sims, n_patients, np.random.default_rng(seed))
    table = audit_discrimination(
        y,
        score,
        groups=dataset,
        clusters=patient if clustered else None,
        n_boot=n_boot,
        seed=seed,
    ).table
    ok = table["status"] == "ok"
    covered = (table["auroc_ci_low"] <= TRUE_AUROC) & (TRUE_AUROC <= table["auroc_ci_high"])
    return int((covered & ok).sum()), int(ok.sum())


def _delong_coverage(n_sims: int, n_patients: int, seed: int) -> tuple[int, int]:
    y, score, dataset, patient = simulate(n_sims, n_patients, np.random.default_rng(seed))
    table = audit_discrimination(y, score, groups=dataset, n_boot=0).table
    ok = table["status"] == "ok"
    covered = (table["auroc_delong_ci_low"] <= TRUE_AUROC) & (
        TRUE_AUROC <= table["auroc_delong_ci_high"]
    )
    return int((covered & ok).sum()), int(ok.sum())


def _report(label: str, covered: int, n: int) -> None:
    c = covered / n
    se = np.sqrt(c * (1.0 - c) / n)
    print(f"{label:<44} coverage {c:.4f}  (MC s.e. {se:.4f}, {n} data sets)")


def main(n_sims: int = 2000) -> None:
    n_patients, n_boot, seed = 200, 1000, 20240501
    print(
        f"binormal clustered model: true AUROC {TRUE_AUROC}, mu {MU:.4f}, {n_patients} patients "
        f"per data set (1-3 images, ICC 0.5), {n_boot} bootstrap replicates"
    )
    t0 = time.perf_counter()
    _report(
        "clustered percentile bootstrap (patients)",
        *run_coverage(n_sims=n_sims, n_patients=n_patients, n_boot=n_boot, seed=seed),
    )
    _report(
        "row bootstrap (ignores patients)",
        *run_coverage(
            n_sims=n_sims, n_patients=n_patients, n_boot=n_boot, seed=seed, clustered=False
        ),
    )
    _report("DeLong (ignores patients)", *_delong_coverage(n_sims, n_patients, seed))
    print(f"total time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
