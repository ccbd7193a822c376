"""Benchmark: training every image + note arm at demo scale on the CPU, one run.

Simulates ``--n`` (default 2,500) PAD-UFES-like pairs here (six lesion classes, prevalences like
the PAD-UFES-20 set; ``--source-px`` RGB photos of a lesion whose colour, size, border and texture
depend on the class with overlap; free-text notes whose words lean to the class; ``--missing``
(30 %) of the notes empty), splits them 70/15/15 into train/validation/test, trains the note
tokenizer on the training notes and then:

* times input preparation, against a named baseline measured in the same run: the **baseline**
  prepares every batch of every epoch from the raw pairs in a per-sample Python loop (Pillow
  resize of each photo to the model size, one tokenizer call per note, stack, normalise), as a
  per-item ``Dataset`` would; the **cached** path decodes, resizes and tokenizes once
  (:func:`~clinaudit.models.multimodal_data.prepare_pairs`) and then only slices tensors per
  batch. It prints seconds per epoch of each and the ratio, and what ``--epochs`` epochs of all
  trained arms would cost each way;
* trains ``--arms`` (default: image-only, text-only, late fusion, early fusion; ``--arms ...,vilt``
  adds the ViLT encoder) with :func:`~clinaudit.models.multimodal_train.train_arms` at the
  :class:`~clinaudit.models.multimodal_train.MultimodalTrainConfig` defaults (same budget for every
  trained arm) on ``--threads`` (default 2) threads, and prints per arm the parameters, the
  seconds in optimiser steps and in the whole call (validation included), training pairs/s and
  the share of the CPUs other processes used meanwhile (Linux ``/proc/stat``; a shared machine
  slows every path);
* evaluates every arm on the test split with 0 / 30 / 70 % of the notes removed: accuracy, macro
  one-vs-rest AUROC and the AUROC of "malignant" (BCC, MEL or SCC; probability summed).

Run: ``.venv/bin/python bench/bench_multimodal_train.py [--n 2500] [--threads 2] [--epochs 10]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from clinaudit.models.multimodal_config import MultimodalConfig, normalise_pixels
from clinaudit.models.multimodal_data import PairedData, batch_inputs, prepare_pairs
from clinaudit.models.multimodal_eval import evaluate_note_removal
from clinaudit.models.multimodal_train import (
    DEFAULT_ARMS,
    MultimodalTrainConfig,
    train_arms,
    training_budget,
)
from clinaudit.models.text_tokenizer import train_note_tokenizer

LABELS = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
MALIGNANT = ("BCC", "MEL", "SCC")
PREVALENCE = (0.25, 0.30, 0.06, 0.12, 0.10, 0.17)
# Lesion colour (RGB), radius (share of the side), border irregularity, texture amplitude.
LOOK = {
    "ACK": ((190, 110, 100), 0.22, 0.15, 0.25),
    "BCC": ((210, 150, 150), 0.26, 0.10, 0.05),
    "MEL": ((70, 40, 30), 0.30, 0.35, 0.15),
    "NEV": ((120, 75, 50), 0.18, 0.05, 0.05),
    "SCC": ((175, 90, 85), 0.28, 0.20, 0.30),
    "SEK": ((130, 95, 60), 0.24, 0.12, 0.35),
}
WORDS = {
    "ACK": ["scaly", "rough", "itch", "sun", "face", "crust"],
    "BCC": ["pearly", "bleed", "nodule", "face", "grew", "ulcer"],
    "MEL": ["changed", "dark", "grew", "bleed", "irregular", "family"],
    "NEV": ["stable", "mole", "young", "symmetric", "since"],
    "SCC": ["bleed", "grew", "pain", "crust", "ulcer", "hurt"],
    "SEK": ["itch", "waxy", "stuck", "elderly", "back", "stable"],
}
FILLER = ["patient", "reports", "lesion", "on", "the", "arm", "for", "months", "noted", "by"]


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


def simulate(
    n: int, size: int, missing: float, seed: int
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``n`` PAD-UFES-like pairs: ``(n, size, size, 3)`` uint8 photos, notes, class indices."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(LABELS), size=n, p=PREVALENCE)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    vocabulary = sorted({w for words in WORDS.values() for w in words})
    images = np.empty((n, size, size, 3), np.uint8)
    notes = []
    for i, c in enumerate(y):
        name = LABELS[c]
        colour, radius, irregular, texture = LOOK[name]
        skin = np.array([225.0, 180.0, 150.0]) + rng.normal(0, 15, 3)
        lesion = np.array(colour, dtype=float) + rng.normal(0, 30, 3)
        cy, cx = rng.normal(0, 0.06, 2)
        r, theta = np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx)
        phase = rng.uniform(0, 2 * np.pi, 3)
        harmonics = zip((0.5, 0.3, 0.2), (3, 5, 7), phase, strict=True)
        wobble = sum(a * np.sin(k * theta + p) for a, k, p in harmonics)
        edge = radius * rng.uniform(0.7, 1.3) * (1 + irregular * rng.uniform(0.5, 1.5) * wobble)
        inside = np.clip((edge - r) / 0.02, 0, 1)[..., None]
        grain = rng.normal(0, 1, (size, size, 1)) * texture * 80
        img = skin * (1 - inside) + (lesion + grain) * inside + rng.normal(0, 6, (size, size, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        if rng.random() < missing:
            notes.append("")
            continue
        words = []
        for _ in range(int(rng.integers(3, 9))):
            u = rng.random()
            pool = WORDS[name] if u < 0.45 else vocabulary if u < 0.6 else FILLER
            words.append(str(rng.choice(pool)))
        age = int(rng.normal(35 if name == "NEV" else 60, 12))
        notes.append(f"{' '.join(words)}, age {age}.")
    return images, notes, y


def baseline_epoch(
    images: np.ndarray, notes: list[str], tokenizer: Any, config: MultimodalConfig, batch: int
) -> float:
    """Seconds to prepare one epoch of batches sample by sample from the raw pairs."""
    t0 = time.perf_counter()
    for s in range(0, len(images), batch):
        pixels, ids, masks = [], [], []
        for img, note in zip(images[s : s + batch], notes[s : s + batch], strict=True):
            small = Image.fromarray(img).resize((config.image_size,) * 2, Image.BILINEAR)
            pixels.append(torch.from_numpy(np.array(small)).permute(2, 0, 1))
            enc = tokenizer(note, padding="max_length", truncation=True,
                            max_length=config.max_length)  # fmt: skip
            ids.append(torch.tensor(enc["input_ids"]))
            masks.append(torch.tensor(enc["attention_mask"]))
        normalise_pixels(torch.stack(pixels), config)
        torch.stack(ids), torch.stack(masks)
    return time.perf_counter() - t0


def cached_epoch(data: PairedData, config: MultimodalConfig, batch: int) -> float:
    """Seconds to slice one epoch of batches from the cached tensors."""
    t0 = time.perf_counter()
    for idx in torch.arange(len(data)).split(batch):
        batch_inputs(data, idx, config, torch.device("cpu"))
    return time.perf_counter() - t0


def malignant_auroc(probs: np.ndarray, y: np.ndarray) -> float:
    """AUROC of malignant vs benign, scoring the summed probability of the malignant classes."""
    cols = [LABELS.index(m) for m in MALIGNANT]
    positive = np.isin(y, cols)
    return float(roc_auc_score(positive, probs[:, cols].sum(axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2500, help="image + note pairs")
    parser.add_argument("--source-px", type=int, default=96, help="side of the simulated photos")
    parser.add_argument("--missing", type=float, default=0.3, help="share of empty notes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=MultimodalTrainConfig.epochs)
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (images, notes, y), sim_s, _ = timed(
        lambda: simulate(args.n, args.source_px, args.missing, args.seed)
    )
    order = np.random.default_rng(args.seed).permutation(args.n)
    n_train, n_val = int(0.7 * args.n), int(0.15 * args.n)
    train_i, val_i, test_i = np.split(order, [n_train, n_train + n_val])
    tokenizer, tok_s, _ = timed(lambda: train_note_tokenizer([notes[i] for i in train_i]))
    config = MultimodalConfig.for_tokenizer(tokenizer, LABELS)
    train_cfg = MultimodalTrainConfig(epochs=args.epochs, num_threads=args.threads, device="cpu")
    print(
        f"{args.n} pairs of {args.source_px} px simulated in {sim_s:.1f} s "
        f"({np.mean([n == '' for n in notes]):.0%} notes empty); train/val/test "
        f"{len(train_i)}/{len(val_i)}/{len(test_i)}; tokenizer trained on the training notes in "
        f"{tok_s:.2f} s ({len(tokenizer)} tokens); model input {config.image_size} px, "
        f"{config.max_length} tokens; torch threads {args.threads}"
    )

    data, prep_s, _ = timed(lambda: prepare_pairs(images, notes, tokenizer, config, labels=y))
    train, val, test = data.subset(train_i), data.subset(val_i), data.subset(test_i)
    batch = train_cfg.batch_size
    raw_train = images[train_i], [notes[i] for i in train_i]
    base_s = min(baseline_epoch(*raw_train, tokenizer, config, batch) for _ in range(2))
    cache_s = min(cached_epoch(train, config, batch) for _ in range(2))
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    trained = [a for a in arms if a != "late_fusion"]
    if "late_fusion" in arms:
        trained = list(dict.fromkeys(["image_only", "text_only", *trained]))
    epochs_all = args.epochs * len(trained)
    print(
        f"\ninput preparation of one training epoch ({len(train_i)} pairs, batches of {batch}):"
        f"\n  per-sample loop (baseline): {base_s:.3f} s/epoch"
        f"\n  cached tensors:             {cache_s:.3f} s/epoch after a one-off "
        f"{prep_s:.2f} s for all {args.n} pairs -> {base_s / cache_s:.1f}x per epoch; over "
        f"{epochs_all} arm-epochs {base_s * epochs_all:.1f} s vs "
        f"{prep_s + cache_s * epochs_all:.1f} s"
    )

    budget = training_budget(len(train), train_cfg)
    print(
        f"\nbudget of every trained arm: {budget.epochs} epochs x {budget.steps // budget.epochs} "
        f"steps of {budget.batch_size} pairs = {budget.steps} AdamW steps, {budget.samples} pairs "
        f"(lr {train_cfg.lr}, OneCycle; note/image dropout {train_cfg.note_dropout}/"
        f"{train_cfg.image_dropout} in the fusion arms)"
    )
    results, wall, others = timed(lambda: train_arms(train, val, config, train_cfg, arms=arms))
    header = f"{'arm':<14}{'params':>9}{'train s':>9}{'total s':>9}{'pairs/s':>9}{'best':>6}"
    print(f"\n{header}   (all arms {wall:.1f} s wall, others used {others:.0%} of the CPUs)")
    for arm, r in results.items():
        rate = "-" if not np.isfinite(r.pairs_per_second) else f"{r.pairs_per_second:.0f}"
        best = f"{r.best_epoch}/{args.epochs}" if r.history else "fit"
        print(
            f"{arm:<14}{r.n_parameters:>9,}{r.train_seconds:>9.1f}{r.total_seconds:>9.1f}"
            f"{rate:>9}{best:>6}"
        )
    print(
        "late_fusion's own time is its L-BFGS fit on the validation split; it reuses the two "
        "single-modality arms (their seconds above)."
    )

    print(f"\ntest split ({len(test_i)} pairs) with 0 / 30 / 70 % of the present notes removed:")
    print(f"{'arm':<14}" + "".join(f"{'acc':>7}{'AUROC':>7}{'malig':>7}  " for _ in range(3)))
    for arm, r in results.items():
        rows = evaluate_note_removal(r.model, test, config, seed=args.seed, device="cpu")
        cells = [
            f"{e.accuracy:>7.3f}{e.macro_auroc:>7.3f}"
            f"{malignant_auroc(e.probabilities, test.labels.numpy()):>7.3f}  "
            for e in rows
        ]
        print(f"{arm:<14}" + "".join(cells))
    print("\nsettings:", dataclasses.asdict(train_cfg))


if __name__ == "__main__":
    main()
