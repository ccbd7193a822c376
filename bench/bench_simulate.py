"""Benchmark the chest X-ray simulator: images per second including DICOM writing and hashing.

Usage::

    python bench/bench_simulate.py [N] [--workers W] [--scale full]

``N`` images are split over the deployment sites in the proportions of the scale (default: the
full scale's 12,000 deployment images). Output goes to a temporary directory that is removed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from clinaudit.sources.cxr_simulator import simulate_site_batch
from clinaudit.sources.cxr_sites import SCALES


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print images/s and total seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=None, help="images in total")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--scale", default="full", choices=sorted(SCALES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    sizes = dict(scale.site_images)
    total = sum(sizes.values())
    n = total if args.n is None else args.n
    per_site = {s: max(1, round(n * k / total)) for s, k in sizes.items()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_cxr_") as tmp:
        for site, k in per_site.items():
            s = simulate_site_batch(
                f"{tmp}/landing",
                truth_root=f"{tmp}/truth",
                site=site,
                n_images=k,
                scale=scale,
                seed=args.seed,
                workers=args.workers,
            )
            print(f"{site:<8} {k:>6} images  {s.seconds:7.2f} s  {s.images_per_second:7.1f} img/s")
        seconds = time.perf_counter() - t0
    done = sum(per_site.values())
    print(f"total {done} images in {seconds:.2f} s: {done / seconds:.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
