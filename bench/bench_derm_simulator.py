"""Benchmark the dermatology pair simulator: pairs per second at demo and full scale.

Usage::

    python bench/bench_derm_simulator.py [--scales demo,full] [--workers 2] [--baseline 200]

For each scale, every clinic is simulated with ``simulate_derm_study`` (population, notes,
rendering across ``--workers`` processes, PNG/JPEG writing, hashing, metadata CSV, manifest,
truth sidecar). The baseline, timed in the same run, is a naive single-process loop over the
first ``--baseline`` pairs of one clinic: for each pair it draws and renders the photo with the
same functions, writes it, and hashes the written file again (no batching, no processes). The
ratio of the two throughputs is printed. Output goes to a temporary directory that is removed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clinaudit.sources.derm_lesions import draw_lesion
from clinaudit.sources.derm_population import sample_clinic_population
from clinaudit.sources.derm_render import draw_acquisition, encode_photo, render_photo, skin_tone
from clinaudit.sources.derm_simulator import simulate_derm_study
from clinaudit.sources.derm_sites import CATEGORY_BY_CODE, DEFAULT_CLINICS, SCALES
from clinaudit.sources.landing import sha256_file


def naive_loop(out: Path, clinic: str, size: int, n: int, seed: int = 0) -> float:
    """Pairs/s of a serial loop: draw, render, encode, write, re-read and hash each photo."""
    profile = DEFAULT_CLINICS[clinic]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    pop = sample_clinic_population(profile, n, rng)
    for i, row in enumerate(pop.itertuples(index=False)):
        skin = skin_tone(float(row.ita_target), rng)
        lesion = draw_lesion(rng, CATEGORY_BY_CODE[row.diagnostic].look, float(row.diameter_mm))
        acq = draw_acquisition(rng, profile, float(row.diameter_mm))
        photo = render_photo(lesion, skin, acq, size=size, rng=rng)
        path = out / f"{i}.{profile.image_format}"
        path.write_bytes(encode_photo(photo.rgb, profile.image_format, profile.jpeg_quality))
        sha256_file(path)
    return n / (time.perf_counter() - t0)


def run(root: Path, scales: list[str], workers: int, baseline: int) -> int:
    for name in scales:
        scale = SCALES[name]
        t0 = time.perf_counter()
        summary = simulate_derm_study(
            root / name / "landing", truth_root=root / name / "truth", scale=scale,
            workers=workers,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        rate = summary.n_pairs / seconds
        print(
            f"{name:<5} {summary.n_pairs:>6} pairs at {scale.image_px} px with {workers} "
            f"workers: {seconds:7.1f} s = {rate:7.1f} pairs/s"
        )
        base = naive_loop(root / name / "naive", "city_clinic", scale.image_px, baseline)
        print(
            f"{'':<5} baseline: naive serial loop on {baseline} city_clinic pairs = "
            f"{base:7.1f} pairs/s; simulate_derm_study is {rate / base:4.1f}x that"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print pairs/s per scale against the naive loop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="demo,full", help="comma-separated scales")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline", type=int, default=200, help="pairs in the naive loop")
    args = parser.parse_args(argv)
    scales = [s.strip() for s in args.scales.split(",") if s.strip()]
    unknown = [s for s in scales if s not in SCALES]
    if unknown:
        parser.error(f"unknown scales {unknown}; expected names from {sorted(SCALES)}")
    with tempfile.TemporaryDirectory(prefix="bench_derm_") as tmp:
        return run(Path(tmp), scales, args.workers, args.baseline)


if __name__ == "__main__":
    sys.exit(main())
