"""Benchmark: false alarms and power of the per-site PSI flag, noise-calibrated vs fixed cut-off.

Each replicate draws a fresh reference and a fresh site of ``n`` rows each (5 numeric image
features, one with ties, and one categorical field) and runs :func:`clinaudit.audit.drift.
drift_table` with the default ``DriftConfig`` (``psi_noise_draws=2000``; the MMD test, which plays
no part in the PSI flag, with few permutations to keep the run short). The per-site flag is the
most sensitive one: any feature at a PSI level (moderate or major).

* new rule: ``psi_level`` in (moderate, major), i.e. PSI >= 0.1 AND PSI > its noise bound;
* baseline (the old rule, measured in the same run on the same tables): any PSI >= 0.1.

False alarm = flag on a clean site (same distribution as the reference); power = flag when the
first feature is shifted by 0.5 SD. Intervals are 95% Clopper-Pearson over the replicates.

Run: ``.venv/bin/python bench/bench_drift_noise.py [replicates]`` (default 200 clean and 100
shifted sites per n).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy.stats import beta

from clinaudit.audit.drift import DriftConfig, drift_table

SIZES = (200, 400, 1000, 2000)
SHIFT_SD = 0.5


def _frame(rng: np.random.Generator, n: int, shift: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "mean_intensity": rng.normal(0.5 + 0.1 * shift, 0.1, n),
            "contrast": rng.gamma(4.0, 0.05, n),
            "sharpness": np.round(rng.normal(50.0, 10.0, n)),
            "noise": rng.uniform(0.0, 1.0, n),
            "entropy": rng.lognormal(0.0, 0.5, n),
            "manufacturer": rng.choice(
                ["Agfa", "GE", "Philips", "Siemens"], n, p=[0.1, 0.4, 0.2, 0.3]
            ),
        }
    )


def _interval(k: int, n: int) -> str:
    lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return f"{k / n:6.1%} [{lo:5.1%}, {hi:5.1%}]"


def _flags(rng: np.random.Generator, n: int, shift: float, seed: int, cfg: DriftConfig):
    reference, site = _frame(rng, n, 0.0), _frame(rng, n, shift).assign(site="s")
    table = drift_table(site, reference, groups="site", config=replace(cfg, seed=seed))
    feats = table[table["kind"] != "multivariate"]
    new = bool(feats["psi_level"].isin(["moderate", "major"]).any())
    old = bool((feats["psi"] >= cfg.psi_moderate).any())
    return new, old


def main() -> None:
    n_null = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    n_shift = max(n_null // 2, 1)
    cfg = DriftConfig(n_perm=19, mmd_max_rows=50)
    print(
        f"Per-site PSI flag (any of 6 features at a level), alpha={cfg.alpha}, "
        f"psi_noise_draws={cfg.psi_noise_draws}, cut-off {cfg.psi_moderate}; "
        f"{n_null} clean and {n_shift} shifted ({SHIFT_SD} SD) replicate sites per n"
    )
    header = f"{'n/side':>7} | {'false alarm: new':>24} | {'old (PSI>=0.1)':>24} | "
    print(header + f"{'power: new':>24} | {'old':>24} | seconds")
    rng = np.random.default_rng(0)
    for n in SIZES:
        start = time.perf_counter()
        null = [_flags(rng, n, 0.0, r, cfg) for r in range(n_null)]
        shifted = [_flags(rng, n, SHIFT_SD, r, cfg) for r in range(n_shift)]
        fa_new, fa_old = (sum(f[i] for f in null) for i in (0, 1))
        pw_new, pw_old = (sum(f[i] for f in shifted) for i in (0, 1))
        print(
            f"{n:>7} | {_interval(fa_new, n_null):>24} | {_interval(fa_old, n_null):>24} | "
            f"{_interval(pw_new, n_shift):>24} | {_interval(pw_old, n_shift):>24} | "
            f"{time.perf_counter() - start:.1f}"
        )


if __name__ == "__main__":
    main()
