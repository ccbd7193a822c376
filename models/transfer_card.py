"""The card of a transferred (or from-scratch baseline) package, and its result read back."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from clinaudit.models.evaluation import fit_operating_thresholds
from clinaudit.models.model_card import ModelCard, summarize_training_data
from clinaudit.models.package import LoadedPackage
from clinaudit.models.transfer_spec import (
    METHOD_NAMES,
    Method,
    TransferConfig,
    TransferEpoch,
    TransferResult,
)


def fit_thresholds(
    y_val: np.ndarray, p_val: np.ndarray, labels: Sequence[str], target: float
) -> tuple[dict[str, float], dict[str, str]]:
    """Per label, the threshold reaching ``target`` sensitivity on the validation slice."""
    thresholds, sources = {}, {}
    for j, label in enumerate(labels):
        known = ~np.isnan(y_val[:, j])
        if (y_val[known, j] == 1).any():
            fitted = fit_operating_thresholds(
                y_val[known][:, [j]],
                p_val[known][:, [j]],
                target_sensitivity=target,
                labels=[label],
            )
            thresholds[label] = fitted[label]
            sources[label] = f"validation slice, sensitivity >= {target}"
        else:
            thresholds[label] = 0.5
            sources[label] = "no positive in the validation slice: 0.5, not fitted"
    return thresholds, sources


def transfer_card(
    method: Method,
    parent: LoadedPackage,
    config: TransferConfig,
    train_table: pd.DataFrame,
    key: str,
    data_hash: str,
    *,
    history: Sequence[TransferEpoch],
    selected: int,
    scored: Sequence[str],
    copied: Sequence[str],
    reinit: Sequence[str],
    trainable: Mapping[str, int],
    thresholds: Mapping[str, float],
    threshold_sources: Mapping[str, str],
    n_train: int,
    split_tables: tuple[pd.DataFrame, pd.DataFrame],
    runtime: Mapping[str, Any],
) -> ModelCard:
    """The card of a ``method`` package: what it is, where its weights came from, how it was fit.

    ``lineage`` holds the parent's identity and labels, the ``state_dict`` entries ``copied``
    from the parent and ``reinitialised`` (seed ``init_seed``), the trainable part, split sizes,
    the training rows' hash, the epoch history and selection, the settings that shape the fit
    (``config``) and those that only change speed or the last bits (``runtime``).
    """
    labels = config.labels
    parent_state = parent.model.state_dict()
    arch = f"{parent.config.architecture} at {parent.config.input_size} px"
    lineage = {
        "method": METHOD_NAMES[method],
        "package_key": key,
        "parent_package_sha256": parent.sha256,
        "parent_weights_sha256": parent.weights_sha256,
        "parent_labels": list(parent.config.labels),
        "parent_vendor": parent.card.vendor,
        "weights_from_parent": method == "transfer",
        "copied": list(copied),
        "copied_weights": int(sum(parent_state[k].numel() for k in copied)),
        "reinitialised": list(reinit),
        "init_seed": config.seed,
        "trainable": config.trainable if method == "transfer" else "all",
        "trainable_tensors": len(trainable),
        "trainable_weights": int(sum(trainable.values())),
        "trainable_parameters": list(trainable),
        "split_sizes": {
            name: {"images": len(t), "patients": int(t["patient_pseudonym"].nunique())}
            for name, t in zip(("train", "val"), split_tables, strict=True)
        },
        "data_sha256": data_hash,
        "epochs": config.epochs,
        "epochs_run": len(history),
        "selected_epoch": selected,
        "selection": f"best validation mean AUROC of {list(scored)}",
        "history": [dataclasses.asdict(r) for r in history],
        "config": config.key_fields(method),
        "runtime": dict(runtime),
        "operating_thresholds": dict(threshold_sources),
        "validation_auroc": "validation slice, selected epoch (the slice chose the epoch)",
    }
    summary_table = train_table if "site" in train_table else train_table.assign(site="unspecified")
    parent_labels = list(parent.config.labels)
    if method == "transfer":
        what = (
            f"Transfer of package {parent.sha256[:16]} ({arch}, {len(parent_labels)} outputs "
            f"{parent_labels[:3]}{'...' if len(parent_labels) > 3 else ''}) to {list(labels)}: "
            f"{len(copied)} tensors copied, {list(reinit)} initialised with seed {config.seed}, "
            f"trainable: {config.trainable}"
        )
    else:
        what = (
            f"From-scratch baseline: the network of package {parent.sha256[:16]} ({arch}) with "
            f"outputs {list(labels)}, every weight randomly initialised (seed {config.seed}) and "
            "trained; no parent weight used"
        )
    return ModelCard(
        vendor=f"clinaudit {METHOD_NAMES[method]} (parent vendor: {parent.card.vendor})",
        intended_use=(
            f"Research demonstration only. Outputs {list(labels)} on the population of its "
            "training rows (training_data); not for clinical use without its own audit."
        ),
        operating_thresholds=dict(thresholds),
        training_data=summarize_training_data(summary_table, labels=labels),
        validation_auroc=dict(history[selected - 1].val_auroc),
        description=(
            f"{what}; {n_train} training images, epoch {selected} of {config.epochs} kept by "
            "validation AUROC. validation_auroc is on the patient-disjoint validation slice of "
            "the train split (used for the selection)."
        ),
        lineage=lineage,
    )


def result_from_package(
    loaded: LoadedPackage,
    *,
    reused: bool,
    seconds: float | None,
    images_per_second: float | None,
) -> TransferResult:
    """The :class:`TransferResult` of a written or reused package, from its card's lineage."""
    lineage = loaded.card.lineage or {}
    method: Method = "transfer" if lineage.get("weights_from_parent") else "scratch"
    history = tuple(
        TransferEpoch(
            epoch=int(r["epoch"]),
            train_loss=_num(r["train_loss"]),
            val_loss=_num(r["val_loss"]),
            val_mean_auroc=_num(r["val_mean_auroc"]),
            val_auroc={k: _num(v) for k, v in r["val_auroc"].items()},
        )
        for r in lineage["history"]
    )
    return TransferResult(
        package_dir=loaded.path,
        package_sha256=loaded.sha256,
        weights_sha256=loaded.weights_sha256,
        parent_package_sha256=str(lineage["parent_package_sha256"]),
        method=method,
        labels=tuple(loaded.config.labels),
        reused=reused,
        selected_epoch=int(lineage["selected_epoch"]),
        history=history,
        val_auroc=dict(loaded.card.validation_auroc),
        n_train=int(lineage["split_sizes"]["train"]["images"]),
        n_val=int(lineage["split_sizes"]["val"]["images"]),
        copied=tuple(lineage["copied"]),
        reinitialised=tuple(lineage["reinitialised"]),
        trainable=tuple(lineage["trainable_parameters"]),
        train_seconds=seconds,
        train_images_per_second=images_per_second,
    )


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)
