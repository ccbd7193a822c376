"""Benchmark: simulate + ingest the deployment sites of a cohort scale (default: full, 12,000).

Usage::

    python bench/bench_ingest.py [--scale full] [--workers 2] [--with-vendor] [--keep DIR]

Prints, from one run:

* simulator throughput (images/s, DICOM writing and hashing included);
* ingest throughput of the pipeline's per-site ingest (``validation.ingest_loop.ingest_partition``
  with the multisite_cxr study's ``ingest_batch``: manifest check, one read per image: sha256 +
  decode + checks + quality features, label validation, pseudonymisation) with ``--workers``
  processes;
* the baseline: a straightforward serial loop on the first 300 images of one site that reads each
  file twice (``sha256_file`` then ``pydicom.dcmread``) and computes the same quality features,
  and the ratio of the two throughputs;
* the total against the study's target (full cohort simulated + ingested in under 300 s).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from clinaudit.sources.cxr_simulator import simulate_site_batch
from clinaudit.sources.cxr_sites import REFERENCE_SITE, SCALES
from clinaudit.sources.images import decode_image
from clinaudit.sources.landing import sha256_file
from clinaudit.studies import get_study
from clinaudit.validation.ingest_loop import ingest_partition
from clinaudit.validation.quality import quality_features

TARGET_S = 300.0
KEY = b"bench-pseudonym-key-0123456789"


def naive_ingest(batch_dir: Path, n: int) -> float:
    """Images/s of a serial loop that hashes, then re-reads and decodes each file."""
    labels = pd.read_csv(batch_dir / "labels.csv").head(n)
    t0 = time.perf_counter()
    for name in labels["Image Index"]:
        path = batch_dir / "images" / name
        sha256_file(path)
        img = decode_image(path.read_bytes(), name=name)
        quality_features(img)
    return len(labels) / (time.perf_counter() - t0)


def run(root: Path, scale_name: str, workers: int, with_vendor: bool) -> int:
    scale = SCALES[scale_name]
    sites = dict(scale.site_images)
    if with_vendor:
        sites = {REFERENCE_SITE: scale.vendor_train + scale.vendor_test, **sites}
    n_total = sum(sites.values())
    print(f"scale={scale_name} sites={len(sites)} images={n_total} workers={workers}")

    t0 = time.perf_counter()
    for site, n in sites.items():
        simulate_site_batch(
            root / "landing", truth_root=root / "truth", site=site, n_images=n, scale=scale,
            workers=workers,
        )  # fmt: skip
    t_sim = time.perf_counter() - t0
    print(f"simulate: {n_total} images in {t_sim:7.1f} s = {n_total / t_sim:6.1f} images/s")

    t0 = time.perf_counter()
    ingested = 0
    study = get_study("multisite_cxr")
    options = study.ingest_options(workers=workers)
    for site in sites:
        res = ingest_partition(
            root / "landing",
            study.landing_dir,
            site,
            ingest_batch=lambda ref: study.ingest_batch(ref, key=KEY, options=options),
            empty_table=study.empty_table(),
            sort_by=study.sort_by,
        )
        ingested += len(res.table)
    t_ing = time.perf_counter() - t0
    print(f"ingest  : {ingested} images in {t_ing:7.1f} s = {ingested / t_ing:6.1f} images/s")

    first = next(iter(s for s in sites if s != REFERENCE_SITE))
    base = naive_ingest(root / "landing" / "cxr" / first / "b0001", 300)
    print(
        f"baseline: naive serial hash+dcmread+features loop on 300 {first} images = "
        f"{base:6.1f} images/s; ingest_site is {ingested / t_ing / base:4.1f}x that"
    )
    total = t_sim + t_ing
    verdict = "meets" if total < TARGET_S else "MISSES"
    print(f"total   : {total:7.1f} s for simulate + ingest; {verdict} the {TARGET_S:.0f} s target")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full", choices=sorted(SCALES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--with-vendor", action="store_true", help="include the vendor site")
    parser.add_argument("--keep", help="write into this directory and keep it")
    args = parser.parse_args(argv)
    if args.keep:
        return run(Path(args.keep), args.scale, args.workers, args.with_vendor)
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        return run(Path(tmp), args.scale, args.workers, args.with_vendor)


if __name__ == "__main__":
    sys.exit(main())
