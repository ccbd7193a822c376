"""Settings, inputs and results of a transfer to new targets (:mod:`clinaudit.models.transfer`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from clinaudit.models.devices import DevicePreference, Precision
from clinaudit.models.finetune_data import has_both_classes
from clinaudit.models.registry import ModelAdapter
from clinaudit.models.training import TrainConfig

TransferTrainable = Literal["all", "last_block", "head"]
TRANSFER_TRAINABLE: tuple[str, ...] = get_args(TransferTrainable)
Method = Literal["transfer", "scratch"]
METHOD_NAMES: dict[str, str] = {
    "transfer": "transfer to new targets",
    "scratch": "from-scratch baseline",
}
#: Settings that change how fast a package is made, not what it is: left out of the package key.
RUNTIME_FIELDS: tuple[str, ...] = ("num_threads", "load_workers")


@dataclass(frozen=True)
class TransferConfig:
    """Settings of a transfer and of its from-scratch baseline (one home for their defaults).

    Parameters
    ----------
    labels : tuple of str
        The child's outputs, in order; each a 0/1/NaN column of the table.
    epochs : int
        Passes over the training rows (both methods; the best validation epoch is kept).
    lr : float
        AdamW peak learning rate of the fine-tuning (OneCycle: warm-up, then cosine decay).
    scratch_lr : float
        Peak learning rate of the baseline: a randomly initialised network needs the larger
        rate of :class:`~clinaudit.models.training.TrainConfig`; training it at the fine-tuning
        rate would handicap the baseline and overstate the gain.
    batch_size : int
        Images per step.
    weight_decay : float
        AdamW weight decay.
    trainable : {"all", "last_block", "head"}
        Part of the child fine-tuned: every weight, the backbone's last stage plus the head, or
        the head only (the baseline always trains every weight).
    val_fraction : float
        Share of the training *patients* held out to select the epoch (patient-disjoint).
    patience : int, optional
        Stop after this many epochs without a better validation AUROC; ``None`` runs all.
    input_size : int, optional
        Input side the caller needs; ``None`` takes the parent's. A different size is refused:
        the parent's features were learnt at its size.
    seed : int
        Seeds the validation split, the new head, batch order and augmentation.
    augment : bool
        Augmentation as in :class:`~clinaudit.models.training.TrainConfig`.
    target_sensitivity : float
        Operating thresholds written into the card reach it on the validation slice.
    num_threads : int, optional
        ``torch.set_num_threads`` while decoding and training (restored afterwards).
    load_workers : int
        Processes decoding the images (0: in this process).
    device, precision
        See :func:`clinaudit.models.devices.select_device`.
    """

    labels: tuple[str, ...] = ("abnormal", "critical")
    # resnet10t at 160 px, 2 CPU threads: see docs/model_package.md ("Transfer to new targets")
    # for the measured images/s and the transfer gain these defaults reach.
    epochs: int = 3
    lr: float = 1e-3
    scratch_lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 1e-4
    trainable: TransferTrainable = "last_block"
    val_fraction: float = 0.15
    patience: int | None = None
    input_size: int | None = None
    seed: int = 0
    augment: bool = True
    target_sensitivity: float = 0.8
    num_threads: int | None = None
    load_workers: int = 0
    device: DevicePreference = "auto"
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels={self.labels!r} must be non-empty and unique")
        if self.trainable not in TRANSFER_TRAINABLE:
            raise ValueError(
                f"trainable={self.trainable!r} is not one of {list(TRANSFER_TRAINABLE)}: 'all' "
                "fine-tunes every weight, 'last_block' the last stage and the head, 'head' the head"
            )
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(
                f"epochs={self.epochs} must be >= 1 and batch_size={self.batch_size} >= 2"
            )
        if not (self.lr > 0 and self.scratch_lr > 0 and self.weight_decay >= 0):
            raise ValueError(
                f"lr={self.lr} and scratch_lr={self.scratch_lr} must be > 0, "
                f"weight_decay={self.weight_decay} >= 0"
            )
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(
                f"val_fraction={self.val_fraction} must lie in (0, 0.5): a share of the training "
                "patients held out to select the epoch"
            )
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity={self.target_sensitivity} must lie in (0, 1]")
        for name in ("patience", "num_threads", "input_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be >= 1 or None")
        if self.load_workers < 0:
            raise ValueError(f"load_workers={self.load_workers} must be >= 0")

    def train_config(self, adapter: ModelAdapter, method: Method) -> TrainConfig:
        """The :class:`TrainConfig` whose batch size, optimiser and augmentation are used."""
        return TrainConfig(
            adapter=adapter.name,
            arch=adapter.config.architecture,
            input_size=adapter.config.input_size,
            labels=self.labels,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr if method == "transfer" else self.scratch_lr,
            weight_decay=self.weight_decay,
            schedule="onecycle",
            seed=self.seed,
            augment=self.augment,
            num_threads=self.num_threads,
            device=self.device,
        )

    def key_fields(self, method: Method) -> dict[str, Any]:
        """The settings that shape a ``method`` package (its key and its card's ``config``)."""
        unused = ("lr", "trainable") if method == "scratch" else ("scratch_lr",)
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in RUNTIME_FIELDS and k not in unused
        }


@dataclass(frozen=True)
class TransferEpoch:
    """One epoch: training loss, validation loss, mean and per-label validation AUROC."""

    epoch: int
    train_loss: float
    val_loss: float
    val_mean_auroc: float
    val_auroc: dict[str, float]


@dataclass(frozen=True)
class TransferResult:
    """The package written (or reused) and how it was made, read back from its card.

    ``train_seconds`` and ``train_images_per_second`` (images through optimiser steps per second
    of training, validation excluded) are ``None`` for a reused package.
    """

    package_dir: Path
    package_sha256: str
    weights_sha256: str
    parent_package_sha256: str
    method: Method
    labels: tuple[str, ...]
    reused: bool
    selected_epoch: int
    history: tuple[TransferEpoch, ...]
    val_auroc: dict[str, float]
    n_train: int
    n_val: int
    copied: tuple[str, ...]
    reinitialised: tuple[str, ...]
    trainable: tuple[str, ...]
    train_seconds: float | None
    train_images_per_second: float | None


def training_rows(
    table: pd.DataFrame, files: Sequence[str | os.PathLike[str]], labels: Sequence[str]
) -> tuple[pd.DataFrame, list[Path]]:
    """The ``split == "train"`` rows and their files, after checking what training needs.

    Raises
    ------
    ValueError
        On a length mismatch, missing columns, no ``train`` rows, label values outside
        0/1/NaN, or a label with one class among the labelled training rows.
    """
    if len(files) != len(table):
        raise ValueError(
            f"{len(files)} files for {len(table)} table rows; pass one image file per row, in "
            "the table's order"
        )
    missing = [c for c in ("split", "patient_pseudonym", "sha256", *labels) if c not in table]
    if missing:
        raise ValueError(
            f"the table lacks columns {missing} (it has {list(table.columns)}); pass the study's "
            "validated table with its split, patient, sha256 and label columns"
        )
    rows = (table["split"] == "train").to_numpy()
    if not rows.any():
        raise ValueError(
            f"the table has splits {sorted(map(str, table['split'].unique()))} and no 'train' "
            "rows; assign a patient-disjoint 'train' split (the rows transfer learns from)"
        )
    train = table[rows]
    y = train[list(labels)].to_numpy(dtype=float)
    bad = np.setdiff1d(np.unique(y[~np.isnan(y)]), [0.0, 1.0])
    if bad.size:
        raise ValueError(
            f"label columns {list(labels)} hold values {bad[:5].tolist()}; expected 0, 1 or NaN "
            "(unlabelled); binarise the labels first"
        )
    for j, label in enumerate(labels):
        known = y[~np.isnan(y[:, j]), j]
        if not has_both_classes(known):
            n_pos = int(known.sum())
            raise ValueError(
                f"label {label!r} has {n_pos} positive and {known.size - n_pos} negative "
                f"labelled rows in the train split ({len(train)} rows): a model cannot learn a "
                "target with one class; label more training studies or drop it from "
                "TransferConfig.labels"
            )
    return train, [Path(files[i]) for i in np.flatnonzero(rows)]


def rows_sha256(rows: pd.DataFrame, labels: Sequence[str]) -> str:
    """Order-independent sha256 of the image bytes' hashes, patients, ids and labels of rows."""
    cols = ["sha256", *(["image_id"] if "image_id" in rows.columns else []), "patient_pseudonym"]
    body = rows[[*cols, *labels]].sort_values(cols[:2], kind="stable")
    return hashlib.sha256(body.to_csv(index=False).encode()).hexdigest()


def package_key(method: Method, parent_sha: str, data_hash: str, config: TransferConfig) -> str:
    doc = {
        "method": method,
        "parent": parent_sha,
        "data": data_hash,
        "config": config.key_fields(method),
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return f"{method}-{digest[:16]}"
