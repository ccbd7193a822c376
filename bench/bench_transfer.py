"""Benchmark: transfer of a pretrained package vs training from scratch, same rows, one run.

Lands simulated DICOMs of the vendor site (``vendor_dev``) and of a deployment site (``--site``,
default ``site_b``) at ``--scale`` (default ``tiny``: small native matrices, quick to simulate),
trains a 14-finding parent package on the vendor site (``train_multilabel`` at the
``TrainConfig`` defaults: resnet10t at 160 px; ``--parent DIR`` reuses a package instead), then
on the deployment site's triage labels (``abnormal``: any finding; ``critical``: any of
``--critical``), patient-disjoint train/test split (``--train-fraction`` of the patients):

* :func:`clinaudit.models.transfer.transfer_package` for each ``--trainable`` part;
* :func:`clinaudit.models.transfer.train_scratch`, the baseline (same rows, split, epochs);

all at the ``TransferConfig`` defaults apart from ``--epochs``/``--threads``, on the CPU. It prints
each method's training images/s (optimiser steps only; decoding and validation excluded) and the
share of the CPUs other processes used meanwhile (Linux ``/proc/stat``: a shared machine slows
every path), the ratio to the baseline, the wall seconds of each stage (simulation, decoding +
training + validation, inference of the test rows through ``models.inference.predict``), and the
AUROCs on the test rows with the paired patient-clustered bootstrap CI of the gain
(:func:`clinaudit.models.transfer.compare_transfer`).

Run: ``.venv/bin/python bench/bench_transfer.py [--n 900] [--epochs 3] [--trainable all,head]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clinaudit.models.inference import predict
from clinaudit.models.model_card import ModelCard
from clinaudit.models.package import load_package, save_package
from clinaudit.models.training import TrainConfig, load_images, train_multilabel
from clinaudit.models.transfer import (
    TransferConfig,
    compare_transfer,
    train_scratch,
    transfer_package,
)
from clinaudit.models.vendor_model import patient_disjoint_split
from clinaudit.sources.cxr_labels import FINDINGS
from clinaudit.sources.cxr_simulator import simulate_site_batch


def _cpu_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine so far (Linux ``/proc/stat``), else None."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``'s result, its wall seconds and the CPU share other processes used meanwhile."""
    busy0, own0, t0 = _cpu_busy_s(), time.process_time(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    busy1, own = _cpu_busy_s(), time.process_time() - own0
    others = float("nan")
    if busy0 is not None and busy1 is not None:
        others = max(0.0, busy1 - busy0 - own) / (wall * (os.cpu_count() or 1))
    return out, wall, others


def site_table(root: Path, site: str, n: int, scale: str, seed: int) -> tuple[pd.DataFrame, float]:
    """Landed rows of a simulated site with their written labels, files and sha256."""
    t0 = time.perf_counter()
    summary = simulate_site_batch(
        root / "landing", truth_root=root / "truth", site=site, n_images=n, scale=scale,
        seed=seed, workers=1,
    )  # fmt: skip
    truth = pd.read_csv(root / "truth" / "cxr" / site / f"{summary.batch}.csv")
    table = pd.DataFrame(
        {
            "image_id": truth["Image Index"],
            "patient_pseudonym": truth["Patient ID"].astype(str),
            "split": np.where(truth["split"] == "test", "test", "train"),
            **{f: truth[f"written_{f}"].astype(float) for f in FINDINGS},
        }
    )
    table["image_path"] = [str(summary.batch_dir / "images" / i) for i in table["image_id"]]
    table["sha256"] = [
        hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in table["image_path"]
    ]
    return table, time.perf_counter() - t0


def train_parent(root: Path, args: argparse.Namespace) -> Path:
    """A 14-finding package trained on the vendor site's train split (TrainConfig defaults)."""
    table, sim_s = site_table(root / "vendor", "vendor_dev", args.parent_n, args.scale, args.seed)
    cfg = TrainConfig(epochs=args.parent_epochs, num_threads=args.threads, device="cpu")
    rest, held = patient_disjoint_split(table["patient_pseudonym"], 0.15, seed=0)
    x = load_images(list(table["image_path"]), cfg.input_size)
    y = table[list(FINDINGS)].to_numpy(np.float32)
    result, wall, others = timed(lambda: train_multilabel(x[rest], y[rest], x[held], y[held], cfg))
    print(
        f"parent: {cfg.arch} at {cfg.input_size} px, {int(rest.sum())} images x {cfg.epochs} "
        f"epochs in {wall:.0f} s ({rest.sum() * cfg.epochs / wall:.1f} images/s incl. validation, "
        f"others {others:.0%}); simulated in {sim_s:.0f} s; val mean AUROC "
        f"{result.val_mean_auroc:.3f}"
    )
    card = ModelCard(
        vendor="bench parent (simulated vendor_dev)",
        intended_use="benchmark only",
        operating_thresholds=dict.fromkeys(FINDINGS, 0.5),
    )
    return save_package(root / "parent", result.adapter, result.model, card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent", type=Path, default=None, help="pretrained package dir")
    parser.add_argument("--parent-n", type=int, default=800)
    parser.add_argument("--parent-epochs", type=int, default=4)
    parser.add_argument("--site", default="site_b")
    parser.add_argument("--n", type=int, default=900, help="images of the triage site")
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--train-fraction", type=float, default=0.6)
    parser.add_argument("--critical", default="Pneumothorax,Effusion,Consolidation,Mass")
    parser.add_argument("--trainable", default=TransferConfig.trainable)
    parser.add_argument("--epochs", type=int, default=TransferConfig.epochs)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_transfer_"))
    parent = args.parent or train_parent(root, args)
    pkg = load_package(parent, expected_labels=None)
    print(f"parent package {parent} ({pkg.config.architecture} at {pkg.config.input_size} px)")
    table, sim_s = site_table(root / "triage", args.site, args.n, args.scale, args.seed + 1)
    critical = [c.strip() for c in args.critical.split(",")]
    table["abnormal"] = (table[list(FINDINGS)] == 1).any(axis=1).astype(float)
    table["critical"] = (table[critical] == 1).any(axis=1).astype(float)
    _, test_rows = patient_disjoint_split(
        table["patient_pseudonym"], 1 - args.train_fraction, seed=args.seed
    )
    table["split"] = np.where(test_rows, "test", "train")
    files = list(table["image_path"])
    n_train = int((~test_rows).sum())
    print(
        f"triage site {args.site}: {len(table)} images simulated in {sim_s:.1f} s; train "
        f"{n_train} (abnormal {table.loc[~test_rows, 'abnormal'].mean():.0%}, critical "
        f"{table.loc[~test_rows, 'critical'].mean():.0%}), test {int(test_rows.sum())}"
    )
    runs: dict[str, Any] = {}
    test_files = [f for f, t in zip(files, test_rows, strict=True) if t]
    common = dict(epochs=args.epochs, num_threads=args.threads, device="cpu", seed=args.seed)
    for name in ["scratch", *args.trainable.split(",")]:
        cfg = TransferConfig(**common, **({} if name == "scratch" else {"trainable": name}))
        fn = train_scratch if name == "scratch" else transfer_package
        res, wall, others = timed(
            lambda fn=fn, cfg=cfg: fn(parent, table, files, root / "pkgs", config=cfg, log=print)
        )
        pkg_child = load_package(res.package_dir, expected_labels=cfg.labels)
        logits, infer_s, _ = timed(
            lambda p=pkg_child: predict(
                p.model, p.config, test_files, num_workers=0, device="cpu", output="logits"
            )
        )
        runs[name] = (res, wall, others, logits, infer_s)
    y = table.loc[test_rows, ["abnormal", "critical"]]
    clusters = table.loc[test_rows, "patient_pseudonym"]
    base = runs["scratch"]
    print(
        f"\n{'method':<22}{'train img/s':>12}{'ratio':>7}{'others':>8}{'wall s':>8}{'infer s':>8}"
    )
    for name, (res, wall, others, _, infer_s) in runs.items():
        rate = res.train_images_per_second
        label = "scratch (baseline)" if name == "scratch" else f"transfer ({name})"
        print(
            f"{label:<22}{rate:>12.1f}{rate / base[0].train_images_per_second:>7.2f}"
            f"{others:>8.0%}{wall:>8.0f}{infer_s:>8.1f}"
        )
    for name, (*_, logits, _) in runs.items():
        if name == "scratch":
            continue
        out = compare_transfer(
            y, logits, base[3], clusters, n_boot=args.n_boot, seed=args.seed, ci_level=0.95
        )
        print(f"\ntransfer ({name}) vs scratch on {int(test_rows.sum())} test images:")
        for _, r in out.iterrows():
            print(
                f"  {r['label']:<9} AUROC transfer {r['auroc_transfer']:.3f} scratch "
                f"{r['auroc_scratch']:.3f} gain {r['auroc_difference']:+.3f} "
                f"[{r['auroc_difference_ci_low']:+.3f}, {r['auroc_difference_ci_high']:+.3f}] "
                f"(paired bootstrap, {r['n_boot_valid']}/{r['n_boot']}; DeLong "
                f"[{r['delong_ci_low']:+.3f}, {r['delong_ci_high']:+.3f}])"
            )


if __name__ == "__main__":
    main()
