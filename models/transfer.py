"""Transfer of a pretrained model package to new targets, and its from-scratch baseline.

:func:`transfer_package` takes a verified package (offline, "pretrained" means a package in this
project's format: the multisite vendor CXR backbone, or any timm package a user supplies), builds
the same network (adapter, architecture, input size, normalisation) with a new head for
``config.labels``, copies every parent tensor whose name and shape match outside the head (the
backbone, BatchNorm statistics included), fine-tunes the configured part on the ``train`` rows of
a table and keeps the epoch with the best mean validation AUROC on a patient-disjoint slice of
them. :func:`train_scratch` trains the very same network on the same rows, split, epochs and
selection from random initial weights: the baseline that says what the parent's weights were
worth (:func:`clinaudit.models.transfer_compare.compare_transfer` measures the gain with CIs).

Both write an ordinary package (``save_package``) whose card's ``lineage`` records the parent,
the tensors copied and re-initialised, the trainable part, split sizes, history and
configuration, so the child runs through :mod:`clinaudit.models.inference` unchanged. A package
is keyed by the method, the parent's package sha256, the content of the training rows and the
settings that shape the fit: an unchanged key reuses the package instead of training again.

Determinism: as in :mod:`clinaudit.models.training` (the new head is initialised under
``torch.random.fork_rng`` with ``config.seed``; batch order and augmentation draw from a seeded
``torch.Generator``): on the CPU with the same thread count, bitwise identical weights.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from clinaudit.models.devices import DeviceChoice, select_device
from clinaudit.models.evaluation import masked_bce_from_probabilities, per_label_auroc
from clinaudit.models.finetune_data import has_both_classes
from clinaudit.models.finetune_layers import (
    freeze_except,
    train_mode_frozen_eval,
    trainable_parameter_names,
)
from clinaudit.models.inference import ImageFileLoader, predict_images
from clinaudit.models.package import LoadedPackage, load_package, save_package
from clinaudit.models.registry import ModelAdapter, adapter_from_config
from clinaudit.models.training import (
    labelled_tensors,
    load_images,
    make_optimizer,
    steps_per_epoch,
    train_epoch,
)
from clinaudit.models.transfer_card import fit_thresholds, result_from_package, transfer_card
from clinaudit.models.transfer_compare import compare_transfer
from clinaudit.models.transfer_spec import (
    METHOD_NAMES,
    Method,
    TransferConfig,
    TransferEpoch,
    TransferResult,
    package_key,
    rows_sha256,
    training_rows,
)
from clinaudit.models.vendor_model import _reusable_package, patient_disjoint_split

Log = Callable[[str], None]
__all__ = [
    "TransferConfig",
    "TransferEpoch",
    "TransferResult",
    "child_model",
    "compare_transfer",
    "train_scratch",
    "transfer_package",
]


def transfer_package(
    parent_dir: str | os.PathLike[str],
    table: pd.DataFrame,
    files: Sequence[str | os.PathLike[str]],
    packages_root: str | os.PathLike[str],
    *,
    config: TransferConfig | None = None,
    log: Log = print,
) -> TransferResult:
    """Fine-tune a pretrained package onto ``config.labels`` and write (or reuse) a new package.

    Parameters
    ----------
    parent_dir : path
        The pretrained package; verified on load (any labels).
    table : pandas.DataFrame
        Rows with ``split`` (those equal to ``"train"`` are used), ``patient_pseudonym``,
        ``sha256`` and one 0/1/NaN column per label; ``image_id`` (optional) fixes the order of
        the validation split independently of the pseudonyms.
    files : sequence of path
        Image file of each row of ``table`` (same order); checked against ``sha256`` on decoding.
    packages_root : path
        The package goes to ``<packages_root>/<key>/``.
    config : TransferConfig, optional
        Settings.
    log : callable
        Progress messages.

    Returns
    -------
    TransferResult

    Raises
    ------
    ValueError
        On a table without a ``train`` split, missing columns, labels outside 0/1/NaN, a label
        with one class among the training rows, a validation slice without both classes of any
        label, or an ``input_size`` different from the parent's (each message names the fix).
    ModelPackageError
        If the parent does not verify.

    Examples
    --------
    >>> res = transfer_package("vendor_pkg", table, files, "models/triage")  # doctest: +SKIP
    >>> res.copied[:2], res.reinitialised  # doctest: +SKIP
    (('conv1.0.weight', 'bn1.weight'), ('fc.weight', 'fc.bias'))
    """
    return _derive("transfer", parent_dir, table, files, packages_root, config, log)


def train_scratch(
    parent_dir: str | os.PathLike[str],
    table: pd.DataFrame,
    files: Sequence[str | os.PathLike[str]],
    packages_root: str | os.PathLike[str],
    *,
    config: TransferConfig | None = None,
    log: Log = print,
) -> TransferResult:
    """The baseline of :func:`transfer_package`: the same network trained from random weights.

    Same adapter, architecture, input size, normalisation and labels as the child of
    ``parent_dir``; same training rows, validation split, epochs and epoch selection; every
    weight trainable, initialised with ``config.seed``, at ``config.scratch_lr``. No parent weight
    is used (the card's ``lineage.copied`` is empty). Parameters, result and errors as in
    :func:`transfer_package`.
    """
    return _derive("scratch", parent_dir, table, files, packages_root, config, log)


def _derive(
    method: Method,
    parent_dir: str | os.PathLike[str],
    table: pd.DataFrame,
    files: Sequence[str | os.PathLike[str]],
    packages_root: str | os.PathLike[str],
    config: TransferConfig | None,
    log: Log,
) -> TransferResult:
    config = config or TransferConfig()
    parent = load_package(parent_dir, expected_labels=None)
    _check_input_size(parent, config)
    train_table, train_files = training_rows(table, files, config.labels)
    data_hash = rows_sha256(train_table, config.labels)
    key = package_key(method, parent.sha256, data_hash, config)
    package_dir = Path(packages_root) / key
    what = f"{METHOD_NAMES[method]} package"
    loaded = _reusable_package(package_dir, config.labels, log, what=what)
    if loaded is not None:
        return result_from_package(loaded, reused=True, seconds=None, images_per_second=None)
    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        made = _make(method, parent, train_table, train_files, config, log)
    finally:
        torch.set_num_threads(previous_threads)
    model, adapter, card_fields, seconds, rate = made
    card = transfer_card(method, parent, config, train_table, key, data_hash, **card_fields)
    tmp = package_dir.with_name(package_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_package(tmp, adapter, model, card)
    os.replace(tmp, package_dir)
    loaded = load_package(package_dir, expected_labels=config.labels)
    log(f"wrote {what} {package_dir} (package {loaded.sha256[:16]}, parent {parent.sha256[:16]})")
    return result_from_package(loaded, reused=False, seconds=seconds, images_per_second=rate)


def _check_input_size(parent: LoadedPackage, config: TransferConfig) -> None:
    size = parent.config.input_size
    if config.input_size is not None and config.input_size != size:
        raise ValueError(
            f"config.input_size={config.input_size} but the parent package {parent.path} takes "
            f"{size} px images (its features were learnt at that size, with normalisation mean "
            f"{list(parent.config.mean)} / std {list(parent.config.std)}); pass input_size=None "
            f"(or {size}) to train at the parent's size, or transfer from a parent trained at "
            f"{config.input_size} px"
        )


def child_model(
    parent: LoadedPackage, labels: Sequence[str], *, seed: int, copy_weights: bool
) -> tuple[ModelAdapter, nn.Module, tuple[str, ...], tuple[str, ...]]:
    """The parent's network with outputs ``labels``, and which tensors came from the parent.

    Every tensor is first initialised with ``seed`` (under ``torch.random.fork_rng``); with
    ``copy_weights`` each parent tensor of the same name and shape is then copied, except the
    head's when the labels differ (a head of the same shape for other targets means nothing).

    Returns
    -------
    (ModelAdapter, torch.nn.Module, tuple of str, tuple of str)
        Adapter, network (CPU), names of the ``state_dict`` entries copied and re-initialised.
    """
    config = dataclasses.replace(parent.config, labels=tuple(labels))
    adapter = adapter_from_config(parent.adapter.name, config)
    model = adapter.create_model(seed=seed)
    state = model.state_dict()
    if not copy_weights:
        return adapter, model, (), tuple(state)
    head: set[str] = set()
    if tuple(labels) != tuple(parent.config.labels) and hasattr(model, "get_classifier"):
        prefix = next(n for n, m in model.named_modules() if m is model.get_classifier())
        head = {k for k in state if k.startswith(f"{prefix}.")}
    source = parent.model.state_dict()
    copied = [
        k for k in state if k not in head and k in source and source[k].shape == state[k].shape
    ]
    model.load_state_dict({k: source[k] for k in copied}, strict=False)
    return adapter, model, tuple(copied), tuple(k for k in state if k not in set(copied))


def _make(
    method: Method,
    parent: LoadedPackage,
    train_table: pd.DataFrame,
    train_files: Sequence[Path],
    config: TransferConfig,
    log: Log,
) -> tuple[nn.Module, ModelAdapter, dict[str, Any], float, float]:
    labels = config.labels
    keys = train_table["image_id"].to_numpy() if "image_id" in train_table else None
    rest, held = patient_disjoint_split(
        train_table["patient_pseudonym"].to_numpy(),
        config.val_fraction,
        seed=config.seed,
        keys=keys,
    )
    y = train_table[list(labels)].to_numpy(dtype=np.float32)
    scored = [label for j, label in enumerate(labels) if has_both_classes(y[held, j])]
    if not scored:
        raise ValueError(
            f"the validation slice ({int(held.sum())} rows, val_fraction={config.val_fraction}) "
            f"has no label of {list(labels)} with both classes, so no epoch can be selected; "
            "raise val_fraction or label more training studies"
        )
    size = parent.config.input_size
    log(f"{METHOD_NAMES[method]}: decoding {len(train_files)} training images at {size} px")
    expected = dict(zip(map(str, train_files), train_table["sha256"], strict=True))
    x = load_images(
        train_files, size, ImageFileLoader(size, expected_sha256=expected), config.load_workers
    )
    adapter, model, copied, reinit = child_model(
        parent, labels, seed=config.seed, copy_weights=method == "transfer"
    )
    if method == "transfer":
        log(f"copied {len(copied)} parent tensors; initialised {list(reinit)} (seed {config.seed})")
    fit = _fit(method, model, adapter, (x[rest], y[rest]), (x[held], y[held]), scored, config, log)
    model, history, selected, names, seconds, rate, p_val, device = fit
    thresholds, sources = fit_thresholds(y[held], p_val, labels, config.target_sensitivity)
    card_fields = {
        "history": history,
        "selected": selected,
        "scored": scored,
        "copied": copied,
        "reinit": reinit,
        "trainable": {n: p.numel() for n, p in model.named_parameters() if n in set(names)},
        "thresholds": thresholds,
        "threshold_sources": sources,
        "n_train": int(rest.sum()),
        "split_tables": (train_table[rest], train_table[held]),
        "runtime": {
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "load_workers": config.load_workers,
        },
    }
    return model, adapter, card_fields, seconds, rate


def _fit(
    method: Method,
    model: nn.Module,
    adapter: ModelAdapter,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    scored: Sequence[str],
    config: TransferConfig,
    log: Log,
) -> tuple[
    nn.Module, tuple[TransferEpoch, ...], int, tuple[str, ...], float, float, np.ndarray, str
]:
    """Train, keep the epoch with the best mean validation AUROC over ``scored`` labels."""
    choice = select_device(config.device, config.precision)
    train_cfg = config.train_config(adapter, method)
    model = model.to(choice.device)
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    partial = method == "transfer" and config.trainable != "all"
    names = (
        trainable_parameter_names(model, config.trainable)  # type: ignore[arg-type]
        if partial
        else tuple(n for n, _ in model.named_parameters())
    )
    freeze_except(model, names)
    data_device = choice.device if choice.device.type == "cuda" else torch.device("cpu")
    data = labelled_tensors(*train, data_device)
    total = max(1, steps_per_epoch(len(train[0]), config.batch_size) * config.epochs)
    optimizer, scheduler = make_optimizer(
        [p for p in model.parameters() if p.requires_grad], train_cfg, total
    )
    generator = torch.Generator().manual_seed(config.seed)
    history: list[TransferEpoch] = []
    best: tuple[float, int, dict[str, torch.Tensor], np.ndarray] | None = None
    n = len(train[0])
    # images through optimiser steps per epoch (a last batch of one image is skipped)
    stepped = sum(
        min(config.batch_size, n - s) for s in range(0, n, config.batch_size) if n - s > 1
    )
    train_seconds, seen = 0.0, 0
    for epoch in range(1, config.epochs + 1):
        if partial:  # frozen layers keep the parent's BatchNorm statistics
            train_mode_frozen_eval(model, update_bn_stats=True)
        else:
            model.train()
        t0 = time.perf_counter()
        loss = train_epoch(
            model,
            data,
            optimizer=optimizer,
            scheduler=scheduler,
            config=train_cfg,
            adapter_config=adapter.config,
            choice=choice,
            generator=generator,
        )
        train_seconds += time.perf_counter() - t0
        seen += stepped
        rec, probs = _evaluate(model, adapter, val, scored, epoch, loss, choice)
        history.append(rec)
        log(
            f"{METHOD_NAMES[method]} epoch {epoch}/{config.epochs}: train loss {loss:.4f}, val "
            f"loss {rec.val_loss:.4f}, val mean AUROC {rec.val_mean_auroc:.3f} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        if best is None or rec.val_mean_auroc > best[0]:
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            best = (rec.val_mean_auroc, epoch, state, probs)
        elif config.patience is not None and epoch - best[1] >= config.patience:
            log(f"early stop after epoch {epoch}: no better validation AUROC for {config.patience}")
            break
    assert best is not None  # epochs >= 1
    model = model.to("cpu").to(memory_format=torch.contiguous_format)
    model.load_state_dict(best[2])
    for param in model.parameters():
        param.requires_grad_(True)
    rate = seen / train_seconds if train_seconds > 0 else math.nan
    return (
        model.eval(), tuple(history), best[1], names, train_seconds, rate, best[3],
        choice.describe(),
    )  # fmt: skip


def _evaluate(
    model: nn.Module,
    adapter: ModelAdapter,
    val: tuple[np.ndarray, np.ndarray],
    scored: Sequence[str],
    epoch: int,
    loss: float,
    choice: DeviceChoice,
) -> tuple[TransferEpoch, np.ndarray]:
    probs = predict_images(model, adapter.config, val[0], batch_size=64, device=choice)
    aurocs = per_label_auroc(val[1], probs, adapter.config.labels)
    rec = TransferEpoch(
        epoch=epoch,
        train_loss=loss,
        val_loss=masked_bce_from_probabilities(val[1], probs),
        val_mean_auroc=float(np.mean([aurocs[s] for s in scored])),
        val_auroc=aurocs,
    )
    return rec, probs
