"""Focused re-training of a vendor model package on one deployment site's data.

The vendor's network is loaded from its verified package, everything but the configured part
(``"last_block"``: the backbone's last stage and the head; ``"head"``: the head only) is frozen,
BatchNorm layers keep the parent's running statistics (unless ``update_bn_stats``), and the
trainable part is fine-tuned with a small learning rate on the site's training split
(patient-disjoint from its validation and test splits, :func:`split_site_patients`). The epoch
kept is the one with the best mean validation AUROC of the focus findings (the cells the audit
found worst); it is written as a *new* package in the same format, whose card records its lineage
(parent package sha256, site, cells targeted, split sizes, epochs, configuration). Whether it may
replace the parent at the site is decided by
:func:`clinaudit.models.finetune_guard.regression_guard` on data never used here.

Determinism: on the CPU, with the same thread count, the same package, images and seed give
bitwise identical weights (see :mod:`clinaudit.models.training`). On CUDA (bf16 autocast where
supported, through :mod:`clinaudit.models.devices`) results agree to training noise.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from clinaudit.models.devices import DevicePreference, Precision, select_device
from clinaudit.models.evaluation import masked_bce_from_probabilities, per_label_auroc
from clinaudit.models.finetune_data import (
    check_site_frames,
    decode_table,
    selection_findings,
    split_site_patients,
    table_sha256,
)
from clinaudit.models.finetune_layers import (
    TRAINABLE_OPTIONS,
    Trainable,
    freeze_except,
    train_mode_frozen_eval,
    trainable_parameter_names,
)
from clinaudit.models.inference import predict_images
from clinaudit.models.model_card import ModelCard, summarize_training_data
from clinaudit.models.package import LoadedPackage, load_package, save_package
from clinaudit.models.training import (
    TrainConfig,
    labelled_tensors,
    make_optimizer,
    steps_per_epoch,
    train_epoch,
)
from clinaudit.sources.cxr_labels import FINDINGS

METHOD = "focused re-training"
Log = Callable[[str], None]
__all__ = [
    "FinetuneConfig",
    "FinetuneRecord",
    "FinetuneResult",
    "finetune_package",
    "split_site_patients",
    "trainable_parameter_names",
]


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a focused re-training and of its regression guard (one home for defaults).

    Parameters
    ----------
    epochs, batch_size : int
        Passes over the site's training split (the best epoch is kept) and images per step.
    lr, weight_decay : float
        AdamW learning rate (cosine-decayed per step to 0) and weight decay.
    trainable : {"last_block", "head"}
        Part left trainable: the backbone's last stage plus the head, or the head only.
    seed : int
        Seeds batch order and augmentation (and the site split in ``retrain_worst_site``).
    tolerance : float
        Largest AUROC drop accepted on any evaluated cell (regression guard).
    min_pos, min_neg : int
        Evaluated cells with fewer labelled positives/negatives get status "insufficient data".
    n_boot : int
        Bootstrap replicates of the guard's intervals (0: none).
    focus_loss_weight : float
        Loss weight of the focus findings relative to the other labels (1: no up-weighting).
    patience : int, optional
        Stop after this many epochs without a better validation focus AUROC; ``None``: run all.
    update_bn_stats : bool
        Let the trainable stage's BatchNorm layers re-estimate their running statistics from the
        site's batches. Off by default: on the demo (site_b, last_block, lr 1e-4, 3 epochs) it
        made 12 cells of the other sites and the vendor's held-out set drop by more than 0.03.
    augment : bool
        Augmentation as in :class:`~clinaudit.models.training.TrainConfig`.
    num_threads : int, optional
        ``torch.set_num_threads`` while training (restored afterwards).
    load_workers : int
        Processes decoding the images (0: in this process).
    device, precision
        See :func:`clinaudit.models.devices.select_device` (CUDA with bf16 when present).
    """

    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 32
    trainable: Trainable = "last_block"
    weight_decay: float = 1e-4
    seed: int = 0
    tolerance: float = 0.03
    min_pos: int = 10
    min_neg: int = 10
    n_boot: int = 1000
    focus_loss_weight: float = 1.0
    patience: int | None = None
    update_bn_stats: bool = False
    augment: bool = True
    num_threads: int | None = None
    load_workers: int = 0
    device: DevicePreference = "auto"
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        if self.trainable not in TRAINABLE_OPTIONS:
            raise ValueError(
                f"trainable={self.trainable!r} is not one of {list(TRAINABLE_OPTIONS)}: "
                "'last_block' trains the backbone's last stage and the head, 'head' the head only"
            )
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(
                f"epochs={self.epochs} must be >= 1, batch_size={self.batch_size} >= 2"
            )
        if not (self.lr > 0 and self.weight_decay >= 0 and self.focus_loss_weight > 0):
            raise ValueError(
                f"lr={self.lr} and focus_loss_weight={self.focus_loss_weight} must be > 0, "
                f"weight_decay={self.weight_decay} >= 0"
            )
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"tolerance={self.tolerance} must lie in [0, 1) (an AUROC drop)")
        if min(self.min_pos, self.min_neg) < 1 or self.n_boot < 0 or self.load_workers < 0:
            raise ValueError(
                f"min_pos={self.min_pos} and min_neg={self.min_neg} must be >= 1, "
                f"n_boot={self.n_boot} and load_workers={self.load_workers} >= 0"
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience={self.patience} must be >= 1 or None")

    def train_config(self, loaded: LoadedPackage) -> TrainConfig:
        """The :class:`TrainConfig` whose batch size, optimiser and augmentation are used."""
        return TrainConfig(
            adapter=loaded.adapter.name,
            arch=loaded.config.architecture,
            input_size=loaded.config.input_size,
            labels=tuple(loaded.config.labels),
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            schedule="cosine",
            seed=self.seed,
            augment=self.augment,
            num_threads=self.num_threads,
            device=self.device,
        )


@dataclass(frozen=True)
class FinetuneRecord:
    """One epoch: losses, validation mean AUROC of the focus findings and of all labels."""

    epoch: int
    train_loss: float
    val_loss: float
    val_focus_auroc: float
    val_mean_auroc: float
    seconds: float


@dataclass(frozen=True)
class FinetuneResult:
    """The new package and how it was made (``history[0]`` is the parent, epoch 0)."""

    package_dir: Path
    package_sha256: str
    weights_sha256: str
    parent_package_sha256: str
    site: str
    focus_findings: tuple[str, ...]
    selected_epoch: int
    history: tuple[FinetuneRecord, ...]
    val_auroc: dict[str, float]
    n_train: int
    n_val: int
    trainable_parameters: tuple[str, ...]
    train_seconds: float
    device: str


def _focus_auroc(aurocs: Mapping[str, float], focus: Sequence[str]) -> float:
    values = [aurocs[f] for f in focus if math.isfinite(aurocs[f])]
    return float(np.mean(values)) if values else math.nan


def _evaluate(
    model: nn.Module, loaded: LoadedPackage, x: np.ndarray, y: np.ndarray, choice: Any
) -> tuple[float, dict[str, float]]:
    probs = predict_images(model, loaded.config, x, batch_size=64, device=choice)
    return masked_bce_from_probabilities(y, probs), per_label_auroc(y, probs, loaded.config.labels)


def finetune_package(
    package_dir: str | os.PathLike[str],
    train_images: pd.DataFrame,
    val_images: pd.DataFrame,
    *,
    out_dir: str | os.PathLike[str],
    config: FinetuneConfig | None = None,
    focus_findings: Sequence[str] | None = None,
    landing_root: str | os.PathLike[str] | None = None,
    expected_labels: Sequence[str] | None = FINDINGS,
    log: Log | None = None,
) -> FinetuneResult:
    """Fine-tune a verified package on one site's train split and write a new package.

    Parameters
    ----------
    package_dir : path
        The parent (vendor) package; verified on load (weights hash, labels).
    train_images, val_images : pandas.DataFrame
        Patient-disjoint validated-image rows of one site (``site``, ``patient_pseudonym``,
        ``sha256``, label columns, and ``image_path`` or ``batch``/``file``).
    out_dir : path
        New package directory (must not hold a package yet).
    config : FinetuneConfig, optional
        Settings.
    focus_findings : sequence of str, optional
        Findings targeted (default: every label); they select the epoch and may be up-weighted.
    landing_root : path, optional
        Landing root for tables without ``image_path``.
    expected_labels : sequence of str or None
        Labels the parent must have, in order.
    log : callable, optional
        Progress messages.

    Returns
    -------
    FinetuneResult

    Raises
    ------
    ValueError
        On missing columns, shared patients, a focus finding without training positives or
        without any validation cell with positives and negatives, or an unknown finding.
    ModelPackageError
        If the parent does not verify or ``out_dir`` already holds a package.
    """
    config = config or FinetuneConfig()
    log = log or (lambda _msg: None)
    parent = load_package(package_dir, expected_labels=expected_labels)
    labels = tuple(parent.config.labels)
    focus = tuple(focus_findings) if focus_findings is not None else labels
    unknown = [f for f in focus if f not in labels]
    if unknown or not focus:
        raise ValueError(f"focus_findings {list(focus)}: unknown {unknown}; choose from {labels}")
    site = check_site_frames(train_images, val_images, labels, focus)
    y_train = train_images[list(labels)].to_numpy(dtype=np.float32)
    y_val = val_images[list(labels)].to_numpy(dtype=np.float32)
    scored = selection_findings(y_val, labels, focus, site, log)
    size = parent.config.input_size
    log(f"{site}: decoding {len(train_images)} training and {len(val_images)} validation images")
    x_train = decode_table(
        train_images, size, landing_root=landing_root, workers=config.load_workers
    )
    x_val = decode_table(val_images, size, landing_root=landing_root, workers=config.load_workers)
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        model, history, selected, val_aurocs, names, seconds, device = _finetune(
            parent, (x_train, y_train), (x_val, y_val), focus, scored, config, log
        )
    finally:
        torch.set_num_threads(previous_threads)
    card = _child_card(
        parent,
        config,
        train_images,
        val_images,
        focus=focus,
        scored=scored,
        history=history,
        selected=selected,
        trainable={n: p.numel() for n, p in model.named_parameters() if n in set(names)},
        val_aurocs=val_aurocs,
    )
    save_package(out_dir, parent.adapter, model, card)
    written = load_package(out_dir, expected_labels=labels)
    if not history[selected].val_focus_auroc > history[0].val_focus_auroc:
        log(
            f"no epoch beat the parent's validation focus AUROC "
            f"({history[0].val_focus_auroc:.3f}); the package is written but is not expected to "
            "help: consider a larger lr or more epochs"
        )
    log(f"wrote {out_dir} (package {written.sha256[:16]}, parent {parent.sha256[:16]})")
    return FinetuneResult(
        package_dir=Path(out_dir),
        package_sha256=written.sha256,
        weights_sha256=written.weights_sha256,
        parent_package_sha256=parent.sha256,
        site=site,
        focus_findings=focus,
        selected_epoch=selected,
        history=history,
        val_auroc=val_aurocs,
        n_train=len(train_images),
        n_val=len(val_images),
        trainable_parameters=names,
        train_seconds=seconds,
        device=device,
    )


def _child_card(
    parent: LoadedPackage,
    config: FinetuneConfig,
    train_images: pd.DataFrame,
    val_images: pd.DataFrame,
    *,
    focus: Sequence[str],
    scored: Sequence[str],
    history: Sequence[FinetuneRecord],
    selected: int,
    trainable: Mapping[str, int],
    val_aurocs: Mapping[str, float],
) -> ModelCard:
    """The new package's card: the parent's statements plus the lineage of the re-training."""
    labels = tuple(parent.config.labels)
    site = str(train_images["site"].iloc[0])
    lineage = {
        "method": METHOD,
        "parent_package_sha256": parent.sha256,
        "parent_weights_sha256": parent.weights_sha256,
        "site": site,
        "cells_targeted": [f"{site}/{f}" for f in focus],
        "focus_findings": list(focus),
        "split_sizes": {
            name: {"images": len(t), "patients": int(t["patient_pseudonym"].nunique())}
            for name, t in (("train", train_images), ("val", val_images))
        },
        "data_sha256": {
            "train": table_sha256(train_images, labels),
            "val": table_sha256(val_images, labels),
        },
        "epochs": config.epochs,
        "epochs_run": len(history) - 1,
        "selected_epoch": selected,
        "selection": f"best validation mean AUROC of the focus findings {list(scored)}",
        "val_focus_auroc_parent": history[0].val_focus_auroc,
        "val_focus_auroc_selected": history[selected].val_focus_auroc,
        "history": [
            {k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in history
        ],
        "trainable": config.trainable,
        "trainable_tensors": len(trainable),
        "trainable_weights": int(sum(trainable.values())),
        "config": dataclasses.asdict(config),
        "operating_thresholds": "inherited from the parent package, not re-fitted",
        "validation_auroc": "site validation split of the selected epoch (used for selection)",
        "finetune_data": summarize_training_data(train_images, labels=labels).to_dict(),
    }
    return ModelCard(
        vendor=parent.card.vendor,
        intended_use=f"{parent.card.intended_use} Fine-tuned for deployment at {site} only.",
        operating_thresholds=dict(parent.card.operating_thresholds),
        training_data=parent.card.training_data,
        validation_auroc=dict(val_aurocs),
        description=(
            f"Focused re-training of package {parent.sha256[:16]} on the training split of "
            f"{site} ({len(train_images)} images), targeting {list(focus)}; trainable: "
            f"{config.trainable}; epoch {selected} of {config.epochs} kept by validation AUROC. "
            "validation_auroc is on the site's validation split (used for the selection)."
        ),
        lineage=lineage,
    )


def _finetune(
    parent: LoadedPackage,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    focus: Sequence[str],
    scored: Sequence[str],
    config: FinetuneConfig,
    log: Log,
) -> tuple[
    nn.Module, tuple[FinetuneRecord, ...], int, dict[str, float], tuple[str, ...], float, str
]:
    started = time.perf_counter()
    choice = select_device(config.device, config.precision)
    train_cfg = config.train_config(parent)
    labels = list(parent.config.labels)
    model = parent.model.to(choice.device)
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    names = trainable_parameter_names(model, config.trainable)
    freeze_except(model, names)
    data_device = choice.device if choice.device.type == "cuda" else torch.device("cpu")
    data = labelled_tensors(*train, data_device)
    total = max(1, steps_per_epoch(len(train[0]), config.batch_size) * config.epochs)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(trainable, train_cfg, total)
    weights = torch.tensor([config.focus_loss_weight if f in focus else 1.0 for f in labels])
    generator = torch.Generator().manual_seed(config.seed)

    def record(epoch: int, train_loss: float, t0: float) -> tuple[FinetuneRecord, dict]:
        val_loss, aurocs = _evaluate(model, parent, val[0], val[1], choice)
        defined = [v for v in aurocs.values() if math.isfinite(v)]
        rec = FinetuneRecord(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_focus_auroc=_focus_auroc(aurocs, scored),
            val_mean_auroc=float(np.mean(defined)) if defined else math.nan,
            seconds=time.perf_counter() - t0,
        )
        log(
            f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4f}, val loss "
            f"{val_loss:.4f}, val focus AUROC {rec.val_focus_auroc:.3f} ({rec.seconds:.1f} s)"
        )
        return rec, aurocs

    history = [record(0, math.nan, time.perf_counter())[0]]
    best: tuple[float, int, dict[str, torch.Tensor], dict[str, float]] | None = None
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        train_mode_frozen_eval(model, update_bn_stats=config.update_bn_stats)
        loss = train_epoch(
            model,
            data,
            optimizer=optimizer,
            scheduler=scheduler,
            config=train_cfg,
            adapter_config=parent.config,
            choice=choice,
            generator=generator,
            label_weights=weights,
        )
        rec, aurocs = record(epoch, loss, t0)
        history.append(rec)
        if best is None or rec.val_focus_auroc > best[0]:
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            best = (rec.val_focus_auroc, epoch, state, aurocs)
        elif config.patience is not None and epoch - best[1] >= config.patience:
            log(f"early stop after epoch {epoch}: no better validation AUROC for {config.patience}")
            break
    assert best is not None  # epochs >= 1
    model = model.to("cpu").to(memory_format=torch.contiguous_format)
    model.load_state_dict(best[2])
    for param in model.parameters():
        param.requires_grad_(True)
    seconds = time.perf_counter() - started
    return model.eval(), tuple(history), best[1], best[3], names, seconds, choice.describe()
