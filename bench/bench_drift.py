"""Benchmark: drift of 5 sites x 12 features vs a 2,000-row reference, MMD with 1,000 permutations.

Data (simulated): 10 numeric features (image-quality features and the model's score) and 2
categorical DICOM fields, 2,400 rows per site; two sites carry injected shifts. Each site also gets
one MMD permutation test (1,000 permutations) on the standardized numeric features, on a random
subsample of at most 500 site rows and 500 reference rows (``DriftConfig.mmd_max_rows``): the
kernel matrix is then 1,000 x 1,000 and all permutations are one matrix product.

Run: ``.venv/bin/python bench/bench_drift.py`` (target: < 2 s for the whole table).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from clinaudit.audit.drift import DriftConfig, drift_table

NUMERIC = (
    "brightness",
    "contrast",
    "sharpness",
    "noise",
    "saturation_frac",
    "entropy",
    "width_mm",
    "height_mm",
    "kvp",
    "model_score",
)
CATEGORICAL = ("manufacturer", "view_position")


def _frame(rng: np.random.Generator, n: int, shift: float, site: str | None) -> pd.DataFrame:
    data = {name: rng.normal(shift * (i % 3 == 0), 1.0, n) for i, name in enumerate(NUMERIC)}
    data["model_score"] = 1.0 / (1.0 + np.exp(-rng.normal(-1.0 + shift, 1.0, n)))
    makers = ["GE", "Siemens", "Philips", "Agfa" if shift > 0 else "Fujifilm"]
    data["manufacturer"] = rng.choice(makers, n)
    data["view_position"] = rng.choice(
        ["PA", "AP"], n, p=[0.6 - 0.3 * (shift > 0), 0.4 + 0.3 * (shift > 0)]
    )
    frame = pd.DataFrame(data)
    if site is not None:
        frame["site"] = site
    return frame


def main() -> None:
    rng = np.random.default_rng(0)
    reference = _frame(rng, 2000, 0.0, None)
    shifts = (0.0, 0.0, 0.3, 0.0, 0.6)
    data = pd.concat(
        [_frame(rng, 2400, s, f"site_{k}") for k, s in enumerate(shifts)], ignore_index=True
    )
    cfg = DriftConfig(n_perm=1000, mmd_max_rows=500, seed=0)
    times = []
    table = None
    for _ in range(3):
        t0 = time.perf_counter()
        table = drift_table(
            data, reference, groups="site", numeric=NUMERIC, categorical=CATEGORICAL, config=cfg
        )
        times.append(time.perf_counter() - t0)
    print(
        f"drift: {len(shifts)} sites x {len(NUMERIC) + len(CATEGORICAL)} features "
        f"({len(data)} rows) vs reference of {len(reference)} rows, MMD with {cfg.n_perm} "
        f"permutations on <= {cfg.mmd_max_rows}+{cfg.mmd_max_rows} rows per site"
    )
    print(f"time: best {min(times):.3f} s, first {times[0]:.3f} s (target < 2 s)")
    assert table is not None
    summary = table.groupby("group").agg(drifted=("drifted", "sum"), rows=("feature", "size"))
    print(
        "drifted tests per site (of",
        int(summary["rows"].iloc[0]),
        "):",
        summary["drifted"].to_dict(),
        "| injected shifts:",
        dict(zip(summary.index, shifts, strict=True)),
    )
    mmd = table[table["kind"] == "multivariate"][["group", "statistic", "p_adj"]]
    print(mmd.to_string(index=False))


if __name__ == "__main__":
    main()
